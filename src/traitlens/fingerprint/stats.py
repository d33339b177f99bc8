"""Small pure functions for the fingerprint statistics, each tested against hand-computed values.

Everything takes and returns NumPy arrays (float64) so the maths is independent of
torch and of any model; orchestration lives in :mod:`traitlens.fingerprint.pipeline`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from traitlens.errors import DataError

FloatArray = NDArray[np.float64]

# An IQR below this (in projection units) means every calibration answer projects to
# the same value: normalizing by it would blow noise up to huge scores.
_MIN_SPREAD = 1e-9


def iqr(values: ArrayLike) -> float:
    """Interquartile range (75th − 25th percentile, linear interpolation as NumPy's default)."""
    array = np.asarray(values, dtype=np.float64)
    q75, q25 = np.percentile(array, [75.0, 25.0])
    return float(q75 - q25)


def robust_scale(reference: ArrayLike) -> tuple[float, float]:
    """``(median, IQR)`` of a reference sample, refusing a reference with no spread."""
    ref = np.asarray(reference, dtype=np.float64)
    if ref.size < 2:
        raise DataError(f"IQR normalization needs at least 2 reference values, got {ref.size}")
    spread = iqr(ref)
    if not np.isfinite(spread) or spread < _MIN_SPREAD:
        raise DataError(
            f"the calibration projections have no spread (IQR={spread:.3g}): the model's "
            "answers under opposite instructions are indistinguishable on this axis; use more "
            "calibration questions, longer answers or another layer"
        )
    return float(np.median(ref)), spread


def iqr_normalize(values: ArrayLike, reference: ArrayLike) -> FloatArray:
    """``(values − median(reference)) / IQR(reference)``.

    The robust analogue of a z-score: with the reference being the calibration
    projections of both poles, 0 is the middle of the calibrated range and ±0.5
    is roughly where typical pole answers sit, whatever the model's hidden-state
    scale — which is what makes profiles of different models comparable.
    """
    center, spread = robust_scale(reference)
    return (np.asarray(values, dtype=np.float64) - center) / spread


def icc(ratings: ArrayLike, kind: str = "2,1") -> float:
    """Intraclass correlation of an ``[n_targets, k_raters]`` matrix (Shrout & Fleiss 1979).

    ``"2,1"``: two-way random effects, absolute agreement, single measurement —
    a rater (here: a sampling seed) that shifts every score counts as disagreement.
    ``"3,1"``: two-way mixed, consistency — such shifts are forgiven.
    From the two-way ANOVA mean squares MSR (targets), MSC (raters), MSE (residual):
    ICC(2,1) = (MSR − MSE) / (MSR + (k−1)·MSE + k·(MSC − MSE)/n),
    ICC(3,1) = (MSR − MSE) / (MSR + (k−1)·MSE).
    Returns NaN when the denominator is 0 (all ratings identical).
    """
    table = np.asarray(ratings, dtype=np.float64)
    if table.ndim != 2 or table.shape[0] < 2 or table.shape[1] < 2:
        raise DataError(
            f"ICC needs an [n_targets >= 2, k_raters >= 2] matrix, got shape {table.shape}"
        )
    if not np.all(np.isfinite(table)):
        raise DataError("ICC got NaN/inf ratings; drop incomplete targets first")
    if kind not in ("2,1", "3,1"):
        raise DataError(f"unknown ICC kind {kind!r}; use '2,1' or '3,1'")
    n, k = table.shape
    grand = table.mean()
    ss_rows = k * np.sum((table.mean(axis=1) - grand) ** 2)
    ss_cols = n * np.sum((table.mean(axis=0) - grand) ** 2)
    ss_error = np.sum((table - grand) ** 2) - ss_rows - ss_cols
    ms_rows = ss_rows / (n - 1)
    ms_cols = ss_cols / (k - 1)
    ms_error = ss_error / ((n - 1) * (k - 1))
    if kind == "3,1":
        denominator = ms_rows + (k - 1) * ms_error
    else:
        denominator = ms_rows + (k - 1) * ms_error + k * (ms_cols - ms_error) / n
    if abs(denominator) < 1e-15:
        return float("nan")
    return float((ms_rows - ms_error) / denominator)


def d_prime(high: ArrayLike, low: ArrayLike) -> float:
    """Sensitivity index d′ = (mean_high − mean_low) / sqrt((var_high + var_low) / 2).

    Signal-detection separation of the two poles in units of their average
    standard deviation (sample variances, ddof=1); ±inf when both are constant.
    """
    a = np.asarray(high, dtype=np.float64)
    b = np.asarray(low, dtype=np.float64)
    if a.size < 2 or b.size < 2:
        raise DataError(f"d′ needs at least 2 values per pole, got {a.size} and {b.size}")
    pooled = np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2.0)
    diff = float(a.mean() - b.mean())
    if pooled == 0:
        return float("nan") if diff == 0 else float(np.sign(diff) * np.inf)
    return diff / float(pooled)


def auc(high: ArrayLike, low: ArrayLike) -> float:
    """Area under the ROC curve: P(score_high > score_low), ties counted half (Mann–Whitney)."""
    a = np.asarray(high, dtype=np.float64)[:, None]
    b = np.asarray(low, dtype=np.float64)[None, :]
    return float(np.mean((a > b) + 0.5 * (a == b)))


def bootstrap_median_ci(
    values: ArrayLike,
    clusters: Sequence[str] | None = None,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Median and a percentile bootstrap CI, resampling whole clusters.

    Answers to the same question (different seeds) are not independent, so the
    cluster bootstrap resamples questions, keeping all their answers together;
    resampling single answers would give CIs that are too narrow.
    Returns ``(median, lower, upper)``.
    """
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        raise DataError("bootstrap_median_ci got no values")
    labels = np.asarray(clusters if clusters is not None else np.arange(array.size))
    if labels.shape[0] != array.size:
        raise DataError(f"got {labels.shape[0]} cluster labels for {array.size} values")
    unique = np.unique(labels)
    members = [array[labels == u] for u in unique]
    rng = np.random.default_rng(seed)
    medians = np.empty(n_boot)
    for b in range(n_boot):
        picks = rng.integers(0, len(members), size=len(members))
        medians[b] = np.median(np.concatenate([members[i] for i in picks]))
    alpha = (1.0 - level) / 2.0
    lower, upper = np.quantile(medians, [alpha, 1.0 - alpha])
    return float(np.median(array)), float(lower), float(upper)


def cosine(a: ArrayLike, b: ArrayLike) -> float:
    """Cosine similarity of two vectors (0 if either is zero)."""
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    denominator = float(np.linalg.norm(x) * np.linalg.norm(y))
    return 0.0 if denominator == 0 else float(x @ y) / denominator


def pearson(x: ArrayLike, y: ArrayLike) -> float:
    """Pearson correlation; NaN when either variable is constant."""
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    if a.size < 3 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def pca_explained_variance(matrix: ArrayLike) -> FloatArray:
    """Explained-variance ratio of each principal component of ``[n_samples, n_features]``.

    Columns are centred (not scaled: all axes share the calibration-IQR unit).
    """
    data = np.asarray(matrix, dtype=np.float64)
    if data.ndim != 2 or data.shape[0] < 2:
        raise DataError(f"PCA needs an [n >= 2, features] matrix, got shape {data.shape}")
    centred = data - data.mean(axis=0, keepdims=True)
    singular = np.linalg.svd(centred, compute_uv=False)
    variance = singular**2
    total = variance.sum()
    ratios = np.zeros(data.shape[1])
    if total > 0:
        ratios[: variance.size] = variance / total
    return ratios


def participation_ratio(ratios: ArrayLike) -> float:
    """Effective number of dimensions (Σλ)² / Σλ²: 1 if one component explains all, d if even."""
    lam = np.asarray(ratios, dtype=np.float64)
    denominator = float(np.sum(lam**2))
    return float(np.sum(lam) ** 2 / denominator) if denominator > 0 else float("nan")


def components_for(ratios: ArrayLike, fraction: float = 0.9) -> int:
    """Smallest number of leading components whose explained variance reaches ``fraction``."""
    cumulative = np.cumsum(np.asarray(ratios, dtype=np.float64))
    return int(min(np.searchsorted(cumulative, fraction - 1e-12) + 1, cumulative.size))


def length_slope(scores: ArrayLike, lengths: ArrayLike, labels: ArrayLike | None = None) -> float:
    """Slope of score on answer length, with the pole label as a covariate.

    Least squares ``score ~ a + b·label + c·length``; returns ``c``. Partialling out
    the label matters: an extraverted persona may legitimately talk longer, and
    regressing length out *without* the label would also remove real trait signal.
    """
    y = np.asarray(scores, dtype=np.float64)
    length = np.asarray(lengths, dtype=np.float64)
    columns = [np.ones_like(length), length]
    if labels is not None:
        columns.insert(1, np.asarray(labels, dtype=np.float64))
    design = np.stack(columns, axis=1)
    if y.size < design.shape[1] + 1 or length.std() == 0:
        return 0.0
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    return float(coef[-1])


def partial_correlation(x: ArrayLike, y: ArrayLike, control: ArrayLike) -> float:
    """Pearson correlation of x and y after regressing ``control`` out of both."""
    c = np.asarray(control, dtype=np.float64)
    design = np.stack([np.ones_like(c), c], axis=1)

    def residual(v: ArrayLike) -> FloatArray:
        target = np.asarray(v, dtype=np.float64)
        coef, *_ = np.linalg.lstsq(design, target, rcond=None)
        return np.asarray(target - design @ coef, dtype=np.float64)

    return pearson(residual(x), residual(y))


def bootstrap_median_difference(
    a: ArrayLike,
    a_clusters: Sequence[str],
    b: ArrayLike,
    b_clusters: Sequence[str],
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """median(a) − median(b) with a CI from independent cluster bootstraps of a and b."""
    first = np.asarray(a, dtype=np.float64)
    second = np.asarray(b, dtype=np.float64)
    groups_a = [first[np.asarray(a_clusters) == u] for u in np.unique(a_clusters)]
    groups_b = [second[np.asarray(b_clusters) == u] for u in np.unique(b_clusters)]
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_boot)
    for i in range(n_boot):
        pick_a = rng.integers(0, len(groups_a), size=len(groups_a))
        pick_b = rng.integers(0, len(groups_b), size=len(groups_b))
        diffs[i] = np.median(np.concatenate([groups_a[j] for j in pick_a])) - np.median(
            np.concatenate([groups_b[j] for j in pick_b])
        )
    alpha = (1.0 - level) / 2.0
    lower, upper = np.quantile(diffs, [alpha, 1.0 - alpha])
    return float(np.median(first) - np.median(second)), float(lower), float(upper)
