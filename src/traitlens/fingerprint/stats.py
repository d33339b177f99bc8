"""Small pure functions for the fingerprint statistics, each tested against hand-computed values.

Everything takes and returns NumPy arrays (float64) so the maths is independent of
torch and of any model; orchestration lives in :mod:`traitlens.fingerprint.pipeline`.
The statistics other stages share too (ICC, AUC, cluster-bootstrap CIs) live in
:mod:`traitlens.stats` and are re-exported here under the names the pipeline uses.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from traitlens.errors import DataError

# re-exported for the pipeline
from traitlens.stats import bootstrap_median_ci as bootstrap_median_ci
from traitlens.stats import bootstrap_median_difference as bootstrap_median_difference
from traitlens.stats import icc as icc

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
