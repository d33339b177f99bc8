"""Which of a neuron set's neurons an edit touches: the neuron selection rules, registered
here (built-in ones and any a user adds).

- ``fdr``: NPTI's δ rule and the set's false-discovery-rate control (q ≤ fdr);
  the set's own rule, and NPTI's rule alone when the set was selected without FDR;
- ``npti``: NPTI's δ rule alone (|δ| ≥ threshold on the pole's side; Deng et al.
  2024), what the NPTI paper edits — with few answers per persona group nothing
  survives the FDR test, and this is the fallback;
- ``npti_top``: as NPTI's released code selects: the top 2000 neurons by δ, then
  onward while δ ≥ threshold (a superset of ``npti`` when fewer than 2000 pass);
- ``dpn``: DPN-LE's selection (Dual Personality Neuron Localization and Editing):
  |Cohen's d| of the mean activation ≥ a threshold and |mean difference| above the
  layer's 99.5th percentile, for sets that carry those statistics (the concept design).

A new rule is a function ``(neurons, trait, pole) -> bool [n_layers, d_mlp]``
registered with :func:`register_rule`;
``NeuronSet.select(trait, pole, rule)`` applies any registered rule (and checks the
mask a user's rule returns).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from traitlens.errors import DataError
from traitlens.registry import Names, check_name, lookup

if TYPE_CHECKING:
    from traitlens.neurons.artifact import NeuronSet

NeuronRuleFn = Callable[["NeuronSet", str, str], torch.Tensor]
"""``(neurons, trait, pole) -> bool [n_layers, d_mlp]`` mask of the selected neurons."""


@dataclass(frozen=True)
class NeuronRule:
    """A registered neuron selection rule."""

    name: str
    mask: NeuronRuleFn
    doc: str


NEURON_RULES: dict[str, NeuronRule] = {}
"""Neuron selection rules by name, in registration order (the built-in ones below)."""

RULES = Names(NEURON_RULES)
"""Names of the registered neuron selection rules (``fdr``, ``npti``, …)."""


def register_rule(name: str, *, doc: str = "") -> Callable[[NeuronRuleFn], NeuronRuleFn]:
    """Decorator: register a neuron selection rule under ``name`` (twice raises)."""
    check_name(NEURON_RULES, name, "neuron selection rule")

    def decorator(mask: NeuronRuleFn) -> NeuronRuleFn:
        NEURON_RULES[name] = NeuronRule(name, mask, doc)
        return mask

    return decorator


def get_rule(name: str) -> NeuronRule:
    """The registered neuron rule ``name``; DataError listing the registered ones."""
    return lookup(NEURON_RULES, name, "neuron selection rule")


@register_rule("fdr", doc="NPTI's δ rule and the set's FDR control (q ≤ fdr)")
def fdr_rule(neurons: NeuronSet, trait: str, pole: str) -> torch.Tensor:
    return neurons.mask(trait, pole)


@register_rule("npti", doc="NPTI's δ rule alone (|δ| ≥ threshold on the pole's side)")
def npti_rule(neurons: NeuronSet, trait: str, pole: str) -> torch.Tensor:
    return neurons.npti_mask(trait, pole)


def fdr_or_npti(
    neurons: NeuronSet,
    trait: str,
    *,
    poles: Sequence[str] = ("high", "low"),
    layers: Iterable[int] | None = None,
    minimum: int = 1,
) -> str:
    """The one "FDR set, else NPTI's δ rule" choice every design makes: ``"fdr"`` when
    the FDR-controlled set holds at least ``minimum`` neurons of ``trait`` on ``poles``
    (inside ``layers`` when given), else ``"npti"``. With few answers or items per group
    the test is too weak for anything to survive, and NPTI itself uses the δ rule alone."""
    count = 0
    for pole in poles:
        chosen = neurons.select(trait, pole, "fdr")
        count += len(chosen if layers is None else chosen.in_layers(layers))
    return "fdr" if count >= minimum else "npti"


NPTI_TOP = 2000
"""How many of the strongest neurons NPTI's code keeps whatever their δ."""


@register_rule(
    "npti_top",
    doc=f"NPTI's selection as its code does it: the top {NPTI_TOP} by δ, then onward while "
    "δ ≥ threshold",
)
def npti_top_rule(neurons: NeuronSet, trait: str, pole: str) -> torch.Tensor:
    """The ``NPTI_TOP`` neurons with the largest δ on the pole's side (whatever their δ,
    as long as it points to the pole) together with every neuron the δ rule selects."""
    delta = neurons.delta[neurons.traits.index(trait.strip().upper())]
    signed = (delta if pole == "high" else -delta).reshape(-1)
    top = torch.zeros_like(signed, dtype=torch.bool)
    order = torch.argsort(signed, descending=True, stable=True)[:NPTI_TOP]
    top[order[signed[order] > 0]] = True
    return top.reshape(delta.shape) | neurons.npti_mask(trait, pole)


@register_rule(
    "dpn",
    doc="DPN-LE: |Cohen's d| ≥ min_d and |mean difference| above the layer's 99.5th percentile",
)
def dpn_mask(neuron_set: NeuronSet, trait: str, pole: str) -> torch.Tensor:
    """DPN-LE's selection, bool ``[L, d_mlp]``: |Cohen's d| ≥ ``min_d`` and |mean
    difference| above the layer's ``percentile``-th percentile of |mean difference|, on
    the pole's side (``high``: more active for the domain's items; ``low``: less)."""
    if neuron_set.effect is None or neuron_set.mean_diff is None:
        raise DataError(
            "this neuron set has no DPN-LE statistics (its capture has no per-item mean "
            "activations); rerun the concept capture and neuron stages with this traitlens"
        )
    settings = neuron_set.config.get("dpn") or {}
    t = neuron_set.traits.index(trait.strip().upper())
    d, diff = neuron_set.effect[t], neuron_set.mean_diff[t]
    cut = torch.quantile(diff.abs().double(), float(settings["percentile"]) / 100.0, dim=-1)
    large = diff.abs() > cut[:, None].float()
    side = (
        (d >= settings["min_d"]) & (diff > 0)
        if pole == "high"
        else ((d <= -settings["min_d"]) & (diff < 0))
    )
    return large & side
