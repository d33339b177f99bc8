"""Calibrated contrastive axes: one direction per trait and layer, in calibration-IQR units.

An axis is the mean difference of the model's pooled hidden states on answers it
gave under the high-pole instruction and under the low-pole instruction
("difference of means", as in contrastive activation addition and the
hidden-state fingerprinting work this stage follows), taken after standardizing
each hidden dimension over the calibration answers. Standardizing matters: the
residual stream of small LMs has a few "massive activation" dimensions whose
sampling noise otherwise dominates a raw mean difference (on SmolLM2 it raises
held-out accuracy from 0.72 to 0.79 at the same layer); it makes the axis a
diagonal-covariance LDA direction. A pooled answer
``h [L, d]`` is scored by projecting each layer onto its unit direction,
normalizing each layer's projection by the calibration median and IQR (so deep
layers with large norms do not dominate), averaging over the layer set and
normalizing once more by the calibration median/IQR of that average. The score's
unit is therefore "one calibration interquartile range", comparable across models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray

from traitlens.artifact_io import Artifact, ModelIdentity, Saved, fields_of
from traitlens.errors import ArtifactError, DataError, index_of
from traitlens.fingerprint.stats import FloatArray, cosine, robust_scale
from traitlens.fingerprint.texts import AXES, resolve_axes
from traitlens.probe.folds import assign_folds


def as_array(pooled: Any) -> FloatArray:
    """Pooled activations (tensor or array, ``[n, L, d]``) as float64 NumPy."""
    if isinstance(pooled, torch.Tensor):
        pooled = pooled.detach().float().cpu().numpy()
    array = np.asarray(pooled, dtype=np.float64)
    if array.ndim != 3:
        raise DataError(f"pooled activations must be [n, layers, d_model], got shape {array.shape}")
    return array


@dataclass(frozen=True, eq=False)
class Standardizer:
    """Per-layer, per-dimension centring and scaling ``(h − mean) / scale``, each ``[L, d]``."""

    mean: FloatArray
    scale: FloatArray

    @classmethod
    def fit(cls, pooled: Any) -> Standardizer:
        """Mean and standard deviation over answers; tiny deviations are floored so a
        dimension that never varies cannot turn rounding noise into a huge z-score."""
        array = as_array(pooled)
        if len(array) < 2:
            raise DataError("standardizing needs at least 2 answers")
        std = array.std(axis=0)
        floor = 1e-3 * np.median(std, axis=1, keepdims=True) + 1e-12
        return cls(array.mean(axis=0), np.maximum(std, floor))

    def apply(self, pooled: Any) -> FloatArray:
        return (as_array(pooled) - self.mean) / self.scale


@dataclass(frozen=True, eq=False)
class AxisFit:
    """One fitted axis. ``directions [L, d]`` unit vectors; the rest normalize projections."""

    directions: FloatArray
    layer_centers: FloatArray
    layer_scales: FloatArray
    center: float
    scale: float
    standardizer: Standardizer | None = None

    def raw(self, pooled: Any) -> FloatArray:
        """Mean over layers of per-layer IQR-normalized projections, ``[n]``."""
        array = as_array(pooled) if self.standardizer is None else self.standardizer.apply(pooled)
        projections = np.einsum("nld,ld->nl", array, self.directions)
        return np.asarray(
            ((projections - self.layer_centers) / self.layer_scales).mean(axis=1),
            dtype=np.float64,
        )

    def score(self, pooled: Any) -> FloatArray:
        """Scores in calibration-IQR units, ``[n]`` (0 = middle of the calibrated range)."""
        return (self.raw(pooled) - self.center) / self.scale


def fit_axis(high: Any, low: Any, standardizer: Standardizer | None = None) -> AxisFit:
    """Difference-of-means axis from high-pole ``[n, L, d]`` and low-pole ``[m, L, d]`` answers.

    With a ``standardizer`` the difference is taken in standardized coordinates.
    The normalization reference is the union of both poles, so the centre lies
    between them and the IQR spans roughly the distance between typical answers
    of the two poles.
    """
    convert = as_array if standardizer is None else standardizer.apply
    high_array, low_array = convert(high), convert(low)
    if len(high_array) < 2 or len(low_array) < 2:
        raise DataError(
            f"an axis needs at least 2 answers per pole, got {len(high_array)} high and "
            f"{len(low_array)} low; use more calibration questions"
        )
    difference = high_array.mean(axis=0) - low_array.mean(axis=0)  # [L, d]
    norms = np.linalg.norm(difference, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise DataError("the two poles have identical mean activations at some layer: no axis")
    directions = difference / norms
    reference = np.concatenate([high_array, low_array])
    projections = np.einsum("nld,ld->nl", reference, directions)
    per_layer = [robust_scale(projections[:, j]) for j in range(projections.shape[1])]
    layer_centers = np.array([c for c, _ in per_layer])
    layer_scales = np.array([s for _, s in per_layer])
    raw = ((projections - layer_centers) / layer_scales).mean(axis=1)
    center, scale = robust_scale(raw)
    return AxisFit(directions, layer_centers, layer_scales, center, scale, standardizer)


def question_folds(groups: Sequence[str], n_folds: int, seed: int) -> dict[str, int]:
    """Assign each distinct question to one of ``n_folds`` folds (shuffled, balanced)."""
    unique = sorted(set(groups))
    if len(unique) < 2:
        raise DataError(
            f"held-out calibration needs at least 2 distinct questions, got {len(unique)}"
        )
    # one stratum: questions are shuffled with the seed and dealt out round-robin
    folds = assign_folds(unique, ["question"] * len(unique), min(n_folds, len(unique)), seed)
    return {str(question): fold for question, fold in folds.items()}


@dataclass
class CrossFit:
    """Held-out (split-by-question) scores of calibration answers plus the fold axes."""

    scores: FloatArray  # [n] each answer scored by the axis fitted without its question
    fold_of: dict[str, int]
    fits: list[AxisFit]

    def score_for(self, question_ids: Sequence[str], pooled: Any, fallback: AxisFit) -> FloatArray:
        """Score other answers with the fold axis that excluded their question (else fallback)."""
        array = as_array(pooled)
        out = np.empty(len(array))
        for row, qid in enumerate(question_ids):
            fit = self.fits[self.fold_of[qid]] if qid in self.fold_of else fallback
            out[row] = fit.score(array[row : row + 1])[0]
        return out


def crossfit(
    pooled: Any,
    is_high: ArrayLike,
    groups: Sequence[str],
    n_folds: int,
    seed: int,
    standardizer: Standardizer | None = None,
) -> CrossFit:
    """Fit one axis per question fold and score each answer with the axis that never saw
    its question — held-out accuracy then measures generalization to new questions,
    not memorization of question content."""
    array = as_array(pooled)
    labels = np.asarray(is_high, dtype=bool)
    fold_of = question_folds(groups, n_folds, seed)
    fold = np.array([fold_of[g] for g in groups])
    scores = np.empty(len(array))
    fits: list[AxisFit] = []
    for index in range(max(fold_of.values()) + 1):
        train = fold != index
        fit = fit_axis(array[train & labels], array[train & ~labels], standardizer)
        fits.append(fit)
        scores[~train] = fit.score(array[~train])
    return CrossFit(scores, fold_of, fits)


def split_half_stability(
    pooled: Any,
    is_high: ArrayLike,
    groups: Sequence[str],
    n_splits: int,
    seed: int,
    standardizer: Standardizer | None = None,
) -> FloatArray:
    """Cosine between axes fitted on two disjoint random halves of the questions.

    One value per split (averaged over the layer set): near 1 means the direction
    does not depend on which questions calibrated it; near 0 means it is noise.
    """
    array = as_array(pooled)
    labels = np.asarray(is_high, dtype=bool)
    unique = sorted(set(groups))
    group_array = np.asarray(groups)
    rng = np.random.default_rng(seed)
    cosines: list[float] = []
    if len(unique) < 4:
        return np.asarray(cosines, dtype=np.float64)
    for _ in range(n_splits):
        half = set(rng.permutation(unique)[: len(unique) // 2].tolist())
        in_first = np.array([g in half for g in group_array])
        try:
            first = fit_axis(array[in_first & labels], array[in_first & ~labels], standardizer)
            second = fit_axis(array[~in_first & labels], array[~in_first & ~labels], standardizer)
        except DataError:
            continue  # a half without two answers per pole: skip this split
        cosines.append(
            float(
                np.mean(
                    [cosine(a, b) for a, b in zip(first.directions, second.directions, strict=True)]
                )
            )
        )
    return np.asarray(cosines, dtype=np.float64)


def paired_accuracy(scores: ArrayLike, is_high: ArrayLike, questions: Sequence[str]) -> float:
    """Fraction of questions whose high-instructed answer outscores its low-instructed one.

    Unlike plain accuracy it ignores where a question sits on the axis as a whole
    (topic content shifts both answers alike), so it isolates the direction's quality.
    """
    values, high = np.asarray(scores, dtype=np.float64), np.asarray(is_high, dtype=bool)
    ids = np.asarray(questions)
    wins = [
        float(values[(ids == q) & high].mean() > values[(ids == q) & ~high].mean())
        for q in np.unique(ids)
        if ((ids == q) & high).any() and ((ids == q) & ~high).any()
    ]
    return float(np.mean(wins)) if wins else float("nan")


@dataclass(frozen=True, eq=False)
class TraitAxes(Artifact):
    """The calibrated axes of one model: an artifact (``axes.safetensors`` + ``axes.json``).

    ``directions [T, L, d]``; ``layer_centers``/``layer_scales [T, L]``;
    ``centers``/``scales [T]``; ``feature_mean``/``feature_scale [L, d]`` (the
    standardization shared by all axes, if any). With ``length_slopes`` non-zero,
    scores are residualized on answer length (tokens) around ``length_mean``.
    """

    identity: ModelIdentity
    axes: tuple[str, ...]
    layers: tuple[int, ...]
    pooling: str
    decay_half_life: float
    directions: NDArray[np.float64]
    layer_centers: NDArray[np.float64]
    layer_scales: NDArray[np.float64]
    centers: NDArray[np.float64]
    scales: NDArray[np.float64]
    feature_mean: NDArray[np.float64] | None = None
    feature_scale: NDArray[np.float64] | None = None
    length_slopes: NDArray[np.float64] | None = None
    length_mean: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)

    stem = "axes"
    kind_name = "fingerprint_axes"
    what = "fingerprint axes file"
    missing = "run `traitlens fingerprint` first"
    check_kind = True

    @classmethod
    def from_fits(
        cls,
        identity: ModelIdentity,
        fits: dict[str, AxisFit],
        layers: Sequence[int],
        pooling: str,
        decay_half_life: float,
        config: dict[str, Any] | None = None,
    ) -> TraitAxes:
        names = tuple(fits)
        standardizer = fits[names[0]].standardizer
        if any(fits[n].standardizer is not standardizer for n in names):
            raise DataError("all axes of one artifact must share one standardization")
        return cls(
            identity=identity,
            axes=names,
            layers=tuple(layers),
            pooling=pooling,
            decay_half_life=decay_half_life,
            directions=np.stack([fits[n].directions for n in names]),
            layer_centers=np.stack([fits[n].layer_centers for n in names]),
            layer_scales=np.stack([fits[n].layer_scales for n in names]),
            centers=np.array([fits[n].center for n in names]),
            scales=np.array([fits[n].scale for n in names]),
            feature_mean=None if standardizer is None else standardizer.mean,
            feature_scale=None if standardizer is None else standardizer.scale,
            config=dict(config or {}),
        )

    def index(self, name: str) -> int:
        """Position of an axis given its code or full name; DataError if absent."""
        (code,) = resolve_axes([name])
        return index_of(
            self.axes,
            code,
            lambda: DataError(
                f"axis {name!r} was not calibrated in this file (have: {', '.join(self.axes)}); "
                "recalibrate with that trait included"
            ),
        )

    def axis(self, name: str) -> AxisFit:
        """One axis as an :class:`AxisFit` (without any length correction)."""
        i = self.index(name)
        standardizer = None
        if self.feature_mean is not None and self.feature_scale is not None:
            standardizer = Standardizer(self.feature_mean, self.feature_scale)
        return AxisFit(
            self.directions[i],
            self.layer_centers[i],
            self.layer_scales[i],
            float(self.centers[i]),
            float(self.scales[i]),
            standardizer,
        )

    def with_length_correction(self, slopes: ArrayLike, mean_length: float) -> TraitAxes:
        """A copy whose scores subtract ``slope · (length − mean_length)`` per axis."""
        return replace(
            self, length_slopes=np.asarray(slopes, dtype=np.float64), length_mean=float(mean_length)
        )

    def score(
        self, pooled: Any, lengths: ArrayLike | None = None, axes: Sequence[str] | None = None
    ) -> FloatArray:
        """``[n, T]`` scores of pooled answers ``[n, L, d]`` (same layers and pooling).

        ``lengths`` (answer tokens) are required when the axes carry a length correction.
        """
        array = as_array(pooled)
        expected = (len(self.layers), self.directions.shape[-1])
        if array.shape[1:] != expected:
            raise ArtifactError(
                f"activations have shape [n, {array.shape[1]}, {array.shape[2]}] but these axes "
                f"expect [n, {expected[0]}, {expected[1]}] (layers {list(self.layers)}); "
                "capture the same layers of the same model"
            )
        names = self.axes if axes is None else tuple(self.axes[self.index(a)] for a in axes)
        columns = [self.axis(name).score(array) for name in names]
        scores = np.stack(columns, axis=1)
        if self.length_slopes is not None and np.any(self.length_slopes != 0):
            if lengths is None:
                raise DataError("these axes regress out answer length; pass lengths=")
            slopes = np.array([self.length_slopes[self.axes.index(n)] for n in names])
            offset = np.asarray(lengths, dtype=np.float64)[:, None] - self.length_mean
            scores = scores - offset * slopes[None, :]
        return np.asarray(scores, dtype=np.float64)

    @classmethod
    def _from_saved(cls, saved: Saved) -> TraitAxes:
        meta, identity, tensors = saved.meta, saved.identity, saved.tensors
        names = tuple(str(a) for a in meta["axes"])
        layers = tuple(int(x) for x in meta["layers"])
        directions = tensors["directions"].double().numpy()
        arrays = {
            k: tensors[k].double().numpy()
            for k in ("layer_centers", "layer_scales", "centers", "scales")
        }
        unknown = [a for a in names if a not in AXES]
        expected = (len(names), len(layers), identity.d_model)
        features = {
            k: tensors[k].double().numpy()
            for k in ("feature_mean", "feature_scale")
            if k in tensors
        }
        if (
            unknown
            or len(features) == 1
            or any(f.shape != expected[1:] for f in features.values())
            or directions.shape != expected
            or arrays["layer_centers"].shape != expected[:2]
            or arrays["layer_scales"].shape != expected[:2]
            or arrays["centers"].shape != expected[:1]
            or arrays["scales"].shape != expected[:1]
        ):
            raise saved.mismatch(
                f"directions {tuple(directions.shape)} for axes {list(names)}, layers "
                f"{list(layers)} and d_model {identity.d_model} (expected {expected})"
            )
        slopes = tensors.get("length_slopes")
        return cls(
            identity=identity,
            axes=names,
            layers=layers,
            pooling=str(meta["pooling"]),
            decay_half_life=float(meta["decay_half_life"]),
            directions=directions,
            **arrays,
            **features,  # both or neither (checked above); absent: no standardization
            length_slopes=None if slopes is None else slopes.double().numpy(),
            length_mean=float(meta.get("length_mean", 0.0)),
            config=dict(meta.get("config", {})),
        )

    def _meta(self) -> dict[str, Any]:
        return {
            "hook": "resid",
            "axes": list(self.axes),
            "layers": list(self.layers),
            **fields_of(self, ("pooling", "decay_half_life", "length_mean", "config")),
        }

    def _tensors(self) -> dict[str, torch.Tensor]:
        arrays = {
            "directions": np.asarray(self.directions, np.float32),
            **fields_of(self, ("layer_centers", "layer_scales", "centers", "scales")),
        }
        if self.feature_mean is not None and self.feature_scale is not None:
            arrays["feature_mean"] = self.feature_mean
            arrays["feature_scale"] = self.feature_scale
        if self.length_slopes is not None:
            arrays["length_slopes"] = self.length_slopes
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
