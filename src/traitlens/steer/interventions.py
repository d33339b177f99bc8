"""Interventions: small frozen values saying *what* to change; :mod:`.apply` says how.

Each one is validated when it is made (NaN/inf, absurd strengths, bad shapes)
so that a mistake fails at the call site with a message naming the fix, never
halfway through a generation. They compose freely: pass several to
:func:`traitlens.steer.steering` (several traits, each with its own strength,
layers and token positions).

- :class:`AddDirection` — add a trait vector to the residual stream (ActAdd,
  Turner et al. 2023; CAA, Panickssery et al. 2024; repeng's control vectors);
- :class:`AblateDirection` — project a direction out (directional ablation,
  Arditi et al. 2024), the "is it necessary?" counterpart;
- :class:`NeuronEdit` — NPTI's neuron-level trait induction (Deng et al. 2024);
- :class:`ShiftNeurons` — add a given amount to each of a neuron set (DPN-LE's
  additive edit γ·Δ, Δ the neuron's mean activation difference);
- :class:`Ablate` / :class:`Clamp` — zero- / mean-ablate or pin any neuron set
  (including the matched random-neuron control, which is just another set).

``positions``: ``"all"`` tokens, only the ``"prompt"`` or only the
``"generated"`` ones. During ``generate`` with a KV cache the prompt is the
first forward call (several tokens) and each generated token comes alone, so a
hook tells them apart by sequence length; a plain forward pass over several
tokens counts as prompt. Consequence worth knowing: with ``"generated"`` the
*first* new token is still predicted from the unsteered prompt pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, cast

import torch

from traitlens.errors import InterventionError
from traitlens.limits import MAX_GAMMA, MAX_STRENGTH, STRENGTH_FIX, checked_size
from traitlens.neurons.selected import SelectedNeurons
from traitlens.steer.artifact import TraitVector

Positions = Literal["all", "prompt", "generated"]
POSITIONS: tuple[str, ...] = ("all", "prompt", "generated")


def _check_positions(positions: str) -> Positions:
    if positions not in POSITIONS:
        raise InterventionError(
            f"positions={positions!r} is not one of {', '.join(POSITIONS)}: use 'all' (every "
            "token), 'prompt' (the prompt pass) or 'generated' (tokens produced by generate)"
        )
    return cast(Positions, positions)


def npti_factor(delta: torch.Tensor) -> torch.Tensor:
    """NPTI's gate ``f(δ) = 1 / (1 + exp(−10 (|δ| − 0.15)))``.

    Deng et al. (2024) scale a neuron's boost by how selective it is: at
    |δ| = 0.15 (a 15-point gap in firing probability between the poles) the
    boost is half strength; clearly selective neurons get nearly all of it.
    """
    return torch.sigmoid(10.0 * (delta.abs() - 0.15))


def _check_neurons(name: str, neurons: SelectedNeurons) -> None:
    if not isinstance(neurons, SelectedNeurons):
        raise InterventionError(
            f"{name} must be a SelectedNeurons (from NeuronSet.select or random_control), got "
            f"{type(neurons).__name__}"
        )
    for field_name in ("delta", "a95"):
        values = getattr(neurons, field_name)
        if not bool(torch.isfinite(values).all()):
            raise InterventionError(
                f"{name}.{field_name} contains NaN or inf; recompute the neuron statistics "
                "(a NaN a95 means the neuron's layer saw no tokens during capture)"
            )
    if len(neurons) and int(neurons.indices.min()) < 0:
        raise InterventionError(f"{name} has negative neuron indices; indices count from 0")


def _vector_layers(
    what: str, vector: Any, layers: Sequence[int] | None, hint: str = ""
) -> tuple[int, ...]:
    """The layers a direction intervention acts at (default: every layer ``vector``
    covers), each checked to be covered; ``vector`` must be a :class:`TraitVector`."""
    if not isinstance(vector, TraitVector):
        raise InterventionError(f"{what} needs a TraitVector, got {type(vector).__name__}{hint}")
    chosen = vector.layers if layers is None else tuple(int(x) for x in layers)
    for layer in chosen:
        if layer >= 0:
            vector.layer_index(layer)  # raises InterventionError naming the covered layers
    return chosen


@dataclass(frozen=True, eq=False)
class AddDirection:
    """Add ``strength`` spread units of ``vector`` at each of ``layers``.

    Activation addition (ActAdd, Turner et al. 2023; CAA, Panickssery et al.
    2024): ``h[l] ← h[l] + strength · spread[l] · û[l]``. A negative strength
    pushes toward the opposite pole. ``layers=None`` uses every layer the vector
    covers.
    """

    vector: TraitVector
    strength: float = 1.0
    layers: Sequence[int] | None = None
    positions: Positions = "all"

    def __post_init__(self) -> None:
        layers = _vector_layers(
            "AddDirection",
            self.vector,
            self.layers,
            "; wrap raw tensors with TraitVector.from_directions(tm.identity, {layer: tensor})",
        )
        strength = checked_size("strength", self.strength, MAX_STRENGTH, STRENGTH_FIX)
        object.__setattr__(self, "strength", strength)
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "positions", _check_positions(self.positions))


@dataclass(frozen=True, eq=False)
class AblateDirection:
    """Remove the component along ``vector``'s direction: ``h ← h − (h·û) û``.

    Directional ablation (Arditi et al. 2024): if a behaviour needs the trait
    direction, it should disappear when the direction is projected out.
    """

    vector: TraitVector
    layers: Sequence[int] | None = None
    positions: Positions = "all"

    def __post_init__(self) -> None:
        layers = _vector_layers("AblateDirection", self.vector, self.layers)
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "positions", _check_positions(self.positions))


@dataclass(frozen=True, eq=False)
class NeuronEdit:
    """NPTI's neuron edit (Deng et al. 2024) at ``mlp_act[layer]`` hook points.

    Neurons selective for the target pole (``target``) are boosted,
    ``n ← n + γ · a95 · f(δ)`` with :func:`npti_factor`; neurons selective for
    the opposite pole (``opposite``) are silenced where they fire,
    ``n ← min(0, n)``; every other neuron is untouched. For the matched
    random-neuron control pass a random set (``NeuronSet.random_control``) as
    ``target``.

    ``keep`` < 1 is NPTI's random mask: on every forward pass only a random ``keep``
    share of the boosted neurons (NPTI: 0.9) gets its boost, drawn afresh per pass
    from a generator seeded with ``mask_seed`` (so a rerun draws the same masks);
    silencing is not masked. The default (1.0) boosts every target neuron every pass.
    """

    target: SelectedNeurons
    opposite: SelectedNeurons = field(default_factory=SelectedNeurons.empty)
    gamma: float = 1.0
    positions: Positions = "all"
    keep: float = 1.0
    mask_seed: int = 0

    def __post_init__(self) -> None:
        _check_neurons("target", self.target)
        _check_neurons("opposite", self.opposite)
        keep = self.keep
        if isinstance(keep, bool) or not isinstance(keep, int | float) or not 0.0 < keep <= 1.0:
            raise InterventionError(
                f"keep={keep!r} must be a share in (0, 1]: the share of boosted neurons kept "
                "on each forward pass (1.0 = all, NPTI's random mask = 0.9)"
            )
        object.__setattr__(self, "keep", float(keep))
        gamma = checked_size(
            "gamma",
            self.gamma,
            MAX_GAMMA,
            "gamma multiplies each neuron's 95th-percentile activation (NPTI uses values "
            "around 1); pass e.g. gamma=1.0",
        )
        object.__setattr__(self, "gamma", gamma)
        object.__setattr__(self, "positions", _check_positions(self.positions))


@dataclass(frozen=True, eq=False)
class Ablate:
    """Set ``neurons`` to zero (``mode="zero"``) or to their mean activation (``"mean"``).

    ``means``: for mean ablation, either ``[n_layers, d_mlp]`` (per-layer,
    per-neuron means, e.g. ``NeuronStats.mean_activation(group)`` over all model
    layers) or ``[len(neurons)]`` aligned with ``neurons``.
    """

    neurons: SelectedNeurons
    mode: Literal["zero", "mean"] = "zero"
    means: torch.Tensor | None = None
    positions: Positions = "all"

    def __post_init__(self) -> None:
        _check_neurons("neurons", self.neurons)
        if self.mode not in ("zero", "mean"):
            raise InterventionError(f"Ablate mode must be 'zero' or 'mean', got {self.mode!r}")
        if self.mode == "mean":
            if self.means is None:
                raise InterventionError(
                    "mean ablation needs per-neuron means: pass means=[n_layers, d_mlp] (e.g. "
                    "NeuronStats.mean_activation(group)) or one value per selected neuron"
                )
            if not bool(torch.isfinite(self.means).all()):
                raise InterventionError("Ablate means contain NaN or inf; recompute them")
            if self.means.ndim not in (1, 2) or (
                self.means.ndim == 1 and self.means.numel() != len(self.neurons)
            ):
                raise InterventionError(
                    f"means must be [n_layers, d_mlp] or [{len(self.neurons)}] (one per "
                    f"selected neuron), got {list(self.means.shape)}"
                )
        object.__setattr__(self, "positions", _check_positions(self.positions))

    def values(self) -> torch.Tensor:
        """``[len(neurons)]``: the value each selected neuron is set to."""
        if self.mode == "zero" or self.means is None:
            return torch.zeros(len(self.neurons))
        if self.means.ndim == 1:
            return self.means.float()
        if len(self.neurons) and int(self.neurons.layers.max()) >= len(self.means):
            raise InterventionError(
                f"means has {len(self.means)} layers but neurons reach layer "
                f"{int(self.neurons.layers.max())}; pass means for every model layer"
            )
        return self.means[self.neurons.layers, self.neurons.indices].float()


@dataclass(frozen=True, eq=False)
class Clamp:
    """Pin ``neurons`` to ``value`` (a scalar, or one value per selected neuron)."""

    neurons: SelectedNeurons
    value: float | torch.Tensor = 0.0
    positions: Positions = "all"

    def __post_init__(self) -> None:
        _check_neurons("neurons", self.neurons)
        value = torch.as_tensor(self.value, dtype=torch.float32)
        if not bool(torch.isfinite(value).all()):
            raise InterventionError("Clamp value contains NaN or inf; pass finite values")
        if value.ndim > 1 or (value.ndim == 1 and value.numel() != len(self.neurons)):
            raise InterventionError(
                f"Clamp value must be a scalar or [{len(self.neurons)}] (one per neuron), got "
                f"{list(value.shape)}"
            )
        object.__setattr__(self, "positions", _check_positions(self.positions))

    def values(self) -> torch.Tensor:
        value = torch.as_tensor(self.value, dtype=torch.float32)
        return value.expand(len(self.neurons)).clone() if value.ndim == 0 else value


@dataclass(frozen=True, eq=False)
class ShiftNeurons:
    """Add ``gamma · shift[k]`` to neuron k of ``neurons`` at its ``mlp_act`` hook point.

    DPN-LE's edit: ``shift`` is each neuron's mean activation difference Δ (the trait's
    inputs minus the rest), so neurons more active for the trait are raised and the ones
    less active lowered, by γ times their own gap. Any per-neuron amount works (its
    matched random control carries the same amounts on random neurons).
    """

    neurons: SelectedNeurons
    shift: torch.Tensor
    gamma: float = 1.0
    positions: Positions = "all"

    def __post_init__(self) -> None:
        _check_neurons("neurons", self.neurons)
        if not isinstance(self.shift, torch.Tensor) or self.shift.shape != (len(self.neurons),):
            got = list(self.shift.shape) if isinstance(self.shift, torch.Tensor) else self.shift
            raise InterventionError(
                f"shift must be a tensor of one amount per neuron ({len(self.neurons)}), got {got}"
            )
        if not bool(torch.isfinite(self.shift).all()):
            raise InterventionError("shift contains NaN or inf; recompute the neuron statistics")
        gamma = checked_size(
            "gamma", self.gamma, MAX_GAMMA, "gamma multiplies each neuron's shift, e.g. 1.0"
        )
        object.__setattr__(self, "gamma", gamma)
        object.__setattr__(self, "positions", _check_positions(self.positions))


class RowSource(Protocol):
    """What :class:`AddPerRow` reads at every forward call: the ``[batch, d_model]``
    table to add at a hook point (row ``i`` for sequence ``i``), or None to add nothing."""

    def table(self, point: str) -> torch.Tensor | None: ...


@dataclass(frozen=True, eq=False)
class AddPerRow:
    """Add a different ``[d_model]`` row to each sequence of the batch at each of
    ``points`` (``"resid[10]"``, …): per-row strength, for a server whose batch mixes
    requests with different trait mixes. The table is read from ``source`` at every call,
    so its owner may retire and admit rows between decoding steps. Adding to pad
    positions is harmless (they are masked out of attention)."""

    source: RowSource
    points: tuple[str, ...]


Intervention = (
    AddDirection | AblateDirection | NeuronEdit | ShiftNeurons | Ablate | Clamp | AddPerRow
)
"""Anything :func:`traitlens.steer.steering` accepts."""


def npti_edit(
    neuron_set: object,
    trait: str,
    pole: str = "high",
    gamma: float = 1.0,
    positions: Positions = "all",
) -> NeuronEdit:
    """The NPTI edit inducing ``pole`` of ``trait`` from a neuron stage ``NeuronSet``.

    Boosts ``neuron_set.select(trait, pole)`` and silences
    ``neuron_set.select(trait, <other pole>)``.
    """
    if pole not in ("high", "low"):
        raise InterventionError(f"pole must be 'high' or 'low', got {pole!r}")
    select = getattr(neuron_set, "select", None)
    if select is None:
        raise InterventionError(
            f"npti_edit needs a NeuronSet with select(trait, pole), got {type(neuron_set).__name__}"
        )
    other = "low" if pole == "high" else "high"
    return NeuronEdit(select(trait, pole), select(trait, other), gamma, positions)
