"""At which depth is each trait linearly decodable? Layer-wise probes (pole, intensity,
which-trait) with question- and persona-grouped cross-validation, a control task and
selectivity, saved as a ``ProbeSet`` that reads traits off hidden states."""

from traitlens.probe.artifact import (
    TASKS,
    WHICH_TRAIT,
    CurveScores,
    ProbeSet,
    first_layer_reaching,
)
from traitlens.probe.estimators import LinearProbe, RidgeProbe
from traitlens.probe.fit import fit_probes, probes_job
from traitlens.probe.folds import (
    Fold,
    GroupedFolds,
    assign_folds,
    control_labels,
    grouped_folds,
)

__all__ = [
    "TASKS",
    "WHICH_TRAIT",
    "CurveScores",
    "Fold",
    "GroupedFolds",
    "LinearProbe",
    "ProbeSet",
    "RidgeProbe",
    "assign_folds",
    "control_labels",
    "first_layer_reaching",
    "fit_probes",
    "probes_job",
    "grouped_folds",
]
