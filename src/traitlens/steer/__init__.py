"""Which directions move a trait, and what happens when we push them?

Trait vectors (mean difference, paired PCA, intensity regression, probe normal,
or any estimator registered with :func:`register_method`) with strengths in
model-independent spread units and repeng-style algebra; NPTI neuron edits
(neurons picked by a registered selection rule), ablation and clamping; all
applied as composable interventions through a context manager that always
removes its hooks; the default steering band; export to and import from
llama.cpp control-vector GGUF files.
"""

from traitlens.steer.apply import (
    SteeringPlan,
    compare_steering,
    compile_interventions,
    generate_steered,
    register_intervention,
    steering,
)
from traitlens.steer.artifact import TraitVector
from traitlens.steer.directions import (
    logistic_direction,
    mean_difference,
    pair_indices,
    pca_direction,
    projection_spread,
    ridge_direction,
)
from traitlens.steer.estimators import trait_vector, trait_vectors
from traitlens.steer.gguf_io import export_gguf, import_gguf, read_gguf
from traitlens.steer.interventions import (
    MAX_GAMMA,
    MAX_STRENGTH,
    Ablate,
    AblateDirection,
    AddDirection,
    AddPerRow,
    Clamp,
    Intervention,
    NeuronEdit,
    ShiftNeurons,
    npti_edit,
    npti_factor,
)
from traitlens.steer.layers import band_layers, middle_layers, parse_layers
from traitlens.steer.registry import (
    METHODS,
    DirectionContext,
    get_method,
    register_method,
)
from traitlens.steer.spec import SteeringSpec
from traitlens.steer.vector_set import VectorSet
from traitlens.steer.workflow import default_run_dir, run_neuron_edit, run_vector

__all__ = [
    "MAX_GAMMA",
    "MAX_STRENGTH",
    "METHODS",
    "Ablate",
    "AblateDirection",
    "AddDirection",
    "AddPerRow",
    "Clamp",
    "DirectionContext",
    "Intervention",
    "NeuronEdit",
    "ShiftNeurons",
    "SteeringPlan",
    "SteeringSpec",
    "TraitVector",
    "VectorSet",
    "band_layers",
    "compare_steering",
    "compile_interventions",
    "default_run_dir",
    "export_gguf",
    "generate_steered",
    "get_method",
    "import_gguf",
    "logistic_direction",
    "mean_difference",
    "middle_layers",
    "npti_edit",
    "npti_factor",
    "pair_indices",
    "parse_layers",
    "pca_direction",
    "projection_spread",
    "read_gguf",
    "register_intervention",
    "register_method",
    "ridge_direction",
    "run_neuron_edit",
    "run_vector",
    "steering",
    "trait_vector",
    "trait_vectors",
]
