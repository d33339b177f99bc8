"""Which MLP neurons are trait-selective, where, and how overlapping?"""

from traitlens.neurons.artifact import NeuronSet
from traitlens.neurons.rules import RULES, get_rule, register_rule
from traitlens.neurons.select import neurons_job, prompts_per_group, select_neurons
from traitlens.neurons.selected import SelectedNeurons
from traitlens.neurons.stats import (
    firing_delta,
    jaccard_matrix,
    matched_random_neurons,
    two_proportion_z_test,
)

__all__ = [
    "RULES",
    "NeuronSet",
    "SelectedNeurons",
    "firing_delta",
    "get_rule",
    "jaccard_matrix",
    "matched_random_neurons",
    "prompts_per_group",
    "register_rule",
    "neurons_job",
    "select_neurons",
    "two_proportion_z_test",
]
