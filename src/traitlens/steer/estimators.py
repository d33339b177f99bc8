"""Direction estimators: which way does the residual stream move from a trait's low pole
to its high pole?

:func:`trait_vector` runs one registered estimator (:mod:`traitlens.steer.registry`)
at every captured layer and turns its directions into a :class:`TraitVector` in
spread units. The built-in estimators are registered here, each a few lines over
the maths in :mod:`traitlens.steer.directions`:

- ``mean_diff``: difference of pole means (ActAdd / CAA);
- ``pca``: first PC of paired high − low differences on the same question
  (repeng's ``pca_diff``, uncentred — see :func:`~traitlens.steer.directions.pca_direction`);
- ``regression``: ridge of intensity (1–5) on activations, normalised;
- ``probe``: the logistic probe normal — from the probe stage when given, else
  fitted here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from traitlens.artifact_io import ModelIdentity
from traitlens.data.schema import LabelledPrompt
from traitlens.errors import DataError
from traitlens.steer import directions as dirs
from traitlens.steer.artifact import ProbeWeights, TraitVector
from traitlens.steer.registry import DirectionContext, DirectionMethod, get_method, register_method
from traitlens.steer.vector_set import VectorSet

if TYPE_CHECKING:
    from traitlens.capture.artifacts import Activations

# --------------------------------------------------------------- built-in estimators


@register_method("mean_diff", doc="difference of pole means (ActAdd / CAA)")
def mean_diff(
    x_high: torch.Tensor, x_low: torch.Tensor, context: DirectionContext
) -> tuple[torch.Tensor, float]:
    """ActAdd / CAA: ``mean(high) − mean(low)``; its norm is the centroid distance."""
    raw = dirs.mean_difference(x_high, x_low)
    return dirs.unit(raw), float(raw.norm())


@register_method("pca", needs=("pairs",), doc="first PC of paired high − low differences")
def paired_pca(
    x_high: torch.Tensor, x_low: torch.Tensor, context: DirectionContext
) -> tuple[torch.Tensor, float]:
    """repeng's ``pca_diff`` (uncentred): the axis the pairs differ along; its norm is the
    RMS paired difference along that axis."""
    diffs = x_high[[i for i, _ in context.pairs]] - x_low[[j for _, j in context.pairs]]
    direction = dirs.pca_direction(diffs)
    return direction, float((diffs @ direction).pow(2).mean().sqrt())


@register_method("regression", params=("ridge_alpha",), doc="ridge of intensity (1-5)")
def intensity_regression(
    x_high: torch.Tensor, x_low: torch.Tensor, context: DirectionContext
) -> tuple[torch.Tensor, float]:
    """Ridge regression of the 1–5 intensity on every prompt of the trait (neutral ones
    included); its norm is ‖ridge weights‖."""
    raw = dirs.ridge_direction(context.x_trait, context.intensities, alpha=context.ridge_alpha)
    return dirs.unit(raw), float(raw.norm())


@register_method(
    "probe", needs=("probe",), params=("probe_c",), doc="logistic probe normal (ITI-style)"
)
def probe_normal(
    x_high: torch.Tensor, x_low: torch.Tensor, context: DirectionContext
) -> tuple[torch.Tensor, float]:
    """The probe stage's logistic normal at this layer when given, else an L2 logistic
    probe fitted here on the two poles; its norm is ‖probe weights‖."""
    if context.probe_row is None:
        labels = torch.tensor([True] * len(x_high) + [False] * len(x_low))
        raw = dirs.logistic_direction(torch.cat([x_high, x_low]), labels, c=context.probe_c)
    else:
        raw = context.probe_row
        # a foreign matrix may use the other sign convention; vectors point high-ward
        if float(raw @ dirs.mean_difference(x_high, x_low)) < 0:
            raw = -raw
    return dirs.unit(raw), float(raw.norm())


# ---------------------------------------------------------------------- building


def _prompt_hash(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]


def _probe_rows(
    probes: ProbeWeights | torch.Tensor | np.ndarray,
    trait: str,
    layers: Sequence[int],
    identity: ModelIdentity,
    captured: Sequence[int],
) -> dict[int, torch.Tensor]:
    """Per-layer probe normals from a ProbeSet-like object or a ``[n_layers, d_model]`` matrix
    (rows = every model layer, or the captured layers in order)."""
    if not isinstance(probes, torch.Tensor | np.ndarray):
        probes.identity.check_matches(identity, "probe set")
        code = trait.strip().upper()
        if code not in probes.traits:
            raise DataError(
                f"the probe set has no {trait!r} probe (it has {', '.join(probes.traits)}); "
                "fit probes with that trait, or omit probes to fit a logistic probe here"
            )
        matrix = torch.as_tensor(probes.binary_weight)[probes.traits.index(code)]
        layer_of = list(probes.layers)
    else:
        matrix = torch.as_tensor(np.asarray(probes))
        if matrix.ndim != 2:
            raise DataError(f"probe weights must be [n_layers, d_model], got {list(matrix.shape)}")
        layer_of = (
            list(range(identity.n_layers))
            if matrix.shape[0] == identity.n_layers
            else list(captured)
        )
        if matrix.shape[0] != len(layer_of):
            raise DataError(
                f"probe weights have {matrix.shape[0]} rows; pass one per model layer "
                f"({identity.n_layers}) or per captured layer ({len(captured)})"
            )
    if matrix.shape[-1] != identity.d_model:
        raise DataError(
            f"probe weights have width {matrix.shape[-1]}, the model d_model={identity.d_model}"
        )
    missing = [layer for layer in layers if layer not in layer_of]
    if missing:
        raise DataError(f"no probe weights for layer(s) {missing}; probes cover {layer_of}")
    return {layer: matrix[layer_of.index(layer)].double() for layer in layers}


@dataclass(frozen=True)
class _TraitRows:
    """Where one trait's prompts sit among the captured rows."""

    high: list[int]
    low: list[int]
    trait_rows: tuple[int, ...]  # every pole, neutral included
    intensities: torch.Tensor  # float64 [len(trait_rows)]
    pairs: tuple[tuple[int, int], ...]  # (index into high, index into low)
    prompt_ids: list[str]


def _trait_rows(
    activations: Activations, prompts: Sequence[LabelledPrompt], trait: str
) -> _TraitRows:
    """The trait's rows, matched to ``prompts`` by id; DataError unless both poles are there."""
    by_id = {str(p.id): p for p in prompts}
    mine = [
        (row, by_id[pid])
        for row, pid in enumerate(activations.prompt_ids)
        if pid in by_id and by_id[pid].trait == trait
    ]
    high = [r for r, p in mine if p.pole == "high"]
    low = [r for r, p in mine if p.pole == "low"]
    if not high or not low:
        raise DataError(
            f"trait {trait!r} needs captured prompts of both poles to get a direction (found "
            f"{len(high)} high, {len(low)} low among {len(activations.prompt_ids)} captured "
            "rows); capture a contrastive set that includes this trait"
        )
    pole_of = dict(mine)
    pairs = dirs.pair_indices(
        [(pole_of[r].question_id, pole_of[r].intensity) for r in high],
        [(pole_of[r].question_id, pole_of[r].intensity) for r in low],
    )
    return _TraitRows(
        high=high,
        low=low,
        trait_rows=tuple(r for r, _ in mine),
        intensities=torch.tensor([float(p.intensity) for _, p in mine], dtype=torch.float64),
        pairs=tuple(pairs),
        prompt_ids=[activations.prompt_ids[r] for r, _ in mine],
    )


def _estimate_layers(
    method: DirectionMethod,
    activations: Activations,
    rows: _TraitRows,
    layers: Sequence[int],
    *,
    kind: str,
    pooling: str,
    probe_rows: Mapping[int, torch.Tensor],
    ridge_alpha: float,
    probe_c: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(steps [n_layers, d_model], spread [n_layers], norms [n_layers])``: the estimator's
    unit direction at each layer, scaled to the spread of every captured row along it."""
    steps, spreads, norms = [], [], []
    for layer in layers:
        x = activations.layer(layer, kind=kind, pooling=pooling).double()
        context = DirectionContext(
            layer=layer,
            x=x,
            trait_rows=rows.trait_rows,
            intensities=rows.intensities,
            pairs=rows.pairs,
            probe_row=probe_rows.get(layer),
            ridge_alpha=ridge_alpha,
            probe_c=probe_c,
        )
        raw, norm = method.estimate(x[rows.high], x[rows.low], context)
        raw = torch.as_tensor(raw).double()
        if raw.shape != (x.shape[1],):
            raise DataError(
                f"direction method {method.name!r} returned a {list(raw.shape)} tensor at layer "
                f"{layer}; an estimator returns a [d_model={x.shape[1]}] direction and a norm"
            )
        direction = dirs.unit(raw)
        spread = dirs.projection_spread(x, direction)
        steps.append(direction * spread)
        spreads.append(spread)
        norms.append(float(norm))
    return torch.stack(steps), torch.tensor(spreads), torch.tensor(norms)


def _source_info(
    method: DirectionMethod,
    activations: Activations,
    rows: _TraitRows,
    *,
    kind: str,
    pooling: str,
    settings: Mapping[str, float],
    probe_stage: bool,
) -> dict[str, Any]:
    """What the vector was estimated from, and the settings its method read."""
    info: dict[str, Any] = {
        "n_prompts": len(rows.trait_rows),
        "n_high": len(rows.high),
        "n_low": len(rows.low),
        "n_pairs": len(rows.pairs),
        "n_spread_rows": len(activations.prompt_ids),
        "prompt_hash": _prompt_hash(rows.prompt_ids),
        "kind": kind,
        "pooling": pooling,
        "span": activations.config.get("span"),
        "activations_key": activations.config.get("cache_key"),
    }
    info.update({name: settings[name] for name in method.params})
    if "probe" in method.needs:
        info["probe"] = "probe stage" if probe_stage else "fitted here"
    return info


def trait_vector(
    activations: Activations,
    prompts: Sequence[LabelledPrompt],
    trait: str,
    method: str = "mean_diff",
    *,
    layers: Sequence[int] | None = None,
    kind: str = "resid",
    pooling: str = "mean",
    probes: ProbeWeights | torch.Tensor | np.ndarray | None = None,
    ridge_alpha: float = 1.0,
    probe_c: float = 1.0,
    source: Mapping[str, Any] | None = None,
) -> TraitVector:
    """Estimate one trait's direction at every layer from captured contrastive activations.

    ``activations`` rows are matched to ``prompts`` by id; the trait's high- and
    low-pole prompts feed the registered estimator ``method`` (see the module
    docstring for the built-ins; ``regression`` also uses neutral prompts), and
    every captured row measures the spread. ``probes`` (the probe stage's
    ``ProbeSet`` or a ``[n_layers, d_model]`` matrix) go to methods that need
    ``"probe"``; ``ridge_alpha`` and ``probe_c`` to those that read them.
    """
    spec = get_method(method)
    rows = _trait_rows(activations, prompts, trait)
    if "pairs" in spec.needs and not rows.pairs:
        raise DataError(
            f"no question has both a high and a low {trait} prompt, so {method} (a method on "
            "paired differences) has nothing to pair; use mean_diff or capture paired prompts"
        )
    layer_list = list(activations.layers) if layers is None else [int(x) for x in layers]
    probe_rows = (
        _probe_rows(probes, trait, layer_list, activations.identity, activations.layers)
        if "probe" in spec.needs and probes is not None
        else {}
    )
    vectors, spread, norms = _estimate_layers(
        spec,
        activations,
        rows,
        layer_list,
        kind=kind,
        pooling=pooling,
        probe_rows=probe_rows,
        ridge_alpha=ridge_alpha,
        probe_c=probe_c,
    )
    info = _source_info(
        spec,
        activations,
        rows,
        kind=kind,
        pooling=pooling,
        settings={"ridge_alpha": ridge_alpha, "probe_c": probe_c},
        probe_stage=bool(probe_rows),
    )
    info.update(source or {})
    return TraitVector(
        identity=activations.identity,
        trait=trait,
        method=method,
        layers=tuple(layer_list),
        vectors=vectors,
        spread=spread,
        norms=norms,
        hook=kind,
        pole="high",
        source=info,
    )


def trait_vectors(
    activations: Activations,
    prompts: Sequence[LabelledPrompt],
    traits: Sequence[str] | None = None,
    methods: Sequence[str] = ("mean_diff",),
    **kwargs: Any,
) -> VectorSet:
    """:func:`trait_vector` for every trait (default: all traits present) and method."""
    present = sorted({p.trait for p in prompts})
    out = VectorSet(activations.identity)
    for trait in traits or present:
        for method in methods:
            out.add(trait_vector(activations, prompts, trait, method, **kwargs))
    return out
