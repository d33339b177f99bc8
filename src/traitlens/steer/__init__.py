"""Which directions move a trait, and what happens when we push them?

Trait vectors (mean difference, paired PCA, intensity regression, probe normal)
with strengths in model-independent spread units and repeng-style algebra;
NPTI neuron edits, ablation and clamping; all applied as composable
interventions through a context manager that always removes its hooks; export
to and import from llama.cpp control-vector GGUF files.
"""

from traitlens.steer.apply import (
    compare_steering,
    compile_interventions,
    generate_steered,
    steering,
)
from traitlens.steer.directions import (
    logistic_direction,
    mean_difference,
    pair_indices,
    pca_direction,
    projection_spread,
    ridge_direction,
)
from traitlens.steer.gguf_io import export_gguf, import_gguf, read_gguf
from traitlens.steer.interventions import (
    MAX_GAMMA,
    MAX_STRENGTH,
    Ablate,
    AblateDirection,
    AddDirection,
    Clamp,
    Intervention,
    NeuronEdit,
    npti_edit,
    npti_factor,
)
from traitlens.steer.vectors import METHODS, TraitVector, VectorSet, trait_vector, trait_vectors
from traitlens.steer.workflow import (
    default_run_dir,
    middle_layers,
    parse_layers,
    run_neuron_edit,
    run_vector,
)

__all__ = [
    "MAX_GAMMA",
    "MAX_STRENGTH",
    "METHODS",
    "Ablate",
    "AblateDirection",
    "AddDirection",
    "Clamp",
    "Intervention",
    "NeuronEdit",
    "TraitVector",
    "VectorSet",
    "compare_steering",
    "compile_interventions",
    "default_run_dir",
    "export_gguf",
    "generate_steered",
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
    "ridge_direction",
    "run_neuron_edit",
    "run_vector",
    "steering",
    "trait_vector",
    "trait_vectors",
]
