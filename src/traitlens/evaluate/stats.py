"""Small statistics for judging measurements and interventions.

Pure numpy functions tested against hand-computed values: Cronbach's α for
questionnaire reliability, percentile-bootstrap confidence intervals (plain and
paired), and standardized effect sizes (Cohen's d with pooled SD, Cohen's d_z
for paired designs). Undefined values (zero variance, too few observations) come
back as NaN rather than raising, because they describe the data, not a misuse.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from traitlens.errors import DataError

Statistic = Callable[[np.ndarray], Any]


@dataclass(frozen=True)
class ConfidenceInterval:
    """A point estimate with its ``level`` confidence interval ``[low, high]``."""

    estimate: float
    low: float
    high: float
    level: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


def _vector(values: ArrayLike, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise DataError(f"{name} is empty; pass at least one value")
    if not np.all(np.isfinite(array)):
        raise DataError(f"{name} contains NaN or inf; drop or fix those values first")
    return array


def cronbach_alpha(scores: ArrayLike) -> float:
    """Cronbach's α of a ``[n_respondents, n_items]`` score matrix.

    α = k/(k−1) · (1 − Σ var(item) / var(total)), sample variances (ddof=1).
    NaN when there are fewer than 2 items or respondents, or the totals do not
    vary (α is undefined then, not zero).
    """
    matrix = np.asarray(scores, dtype=np.float64)
    if matrix.ndim != 2:
        raise DataError(f"cronbach_alpha needs a [respondents, items] matrix, got {matrix.shape}")
    n_respondents, n_items = matrix.shape
    if n_items < 2 or n_respondents < 2:
        return math.nan
    item_variance = matrix.var(axis=0, ddof=1).sum()
    total_variance = matrix.sum(axis=1).var(ddof=1)
    if total_variance <= 0:
        return math.nan
    return float(n_items / (n_items - 1) * (1.0 - item_variance / total_variance))


def _percentile_ci(
    estimate: float, replicates: np.ndarray, level: float, n: int
) -> ConfidenceInterval:
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(replicates, [tail, 100.0 - tail])
    return ConfidenceInterval(float(estimate), float(low), float(high), level, n)


def _check_level(level: float, n_boot: int) -> None:
    if not 0.0 < level < 1.0:
        raise DataError(f"confidence level must lie strictly between 0 and 1, got {level}")
    if n_boot < 1:
        raise DataError(f"n_boot must be >= 1, got {n_boot}")


def bootstrap_ci(
    values: ArrayLike,
    stat: Statistic = np.mean,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> ConfidenceInterval:
    """Percentile bootstrap CI of ``stat(values)`` (Efron & Tibshirani 1993, ch. 13).

    Resamples with replacement from a seeded generator, so the interval is
    reproducible; the estimate is ``stat`` on the original sample.
    """
    _check_level(level, n_boot)
    sample = _vector(values, "values")
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, sample.size, size=(n_boot, sample.size))
    replicates = np.array([float(stat(sample[row])) for row in indices])
    return _percentile_ci(float(stat(sample)), replicates, level, sample.size)


def paired_bootstrap_ci(
    a: ArrayLike,
    b: ArrayLike,
    stat: Statistic = np.mean,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> ConfidenceInterval:
    """Percentile bootstrap CI of ``stat(a − b)`` resampling *pairs* jointly.

    For before/after measurements on the same items (steered vs. unsteered), the
    pairing removes item difficulty from the noise; resampling the pairs keeps it.
    """
    first, second = _vector(a, "a"), _vector(b, "b")
    if first.size != second.size:
        raise DataError(f"paired samples differ in length ({first.size} vs {second.size})")
    return bootstrap_ci(first - second, stat=stat, n_boot=n_boot, seed=seed, level=level)


def cohens_d(a: ArrayLike, b: ArrayLike) -> float:
    """Cohen's d for independent samples: (mean a − mean b) / pooled SD (ddof=1).

    NaN when the pooled SD is zero or either sample has fewer than 2 values.
    """
    first, second = _vector(a, "a"), _vector(b, "b")
    if first.size < 2 or second.size < 2:
        return math.nan
    pooled = ((first.size - 1) * first.var(ddof=1) + (second.size - 1) * second.var(ddof=1)) / (
        first.size + second.size - 2
    )
    if pooled <= 0:
        return math.nan
    return float((first.mean() - second.mean()) / math.sqrt(pooled))


def paired_effect_size(a: ArrayLike, b: ArrayLike) -> float:
    """Cohen's d_z for paired samples: mean(a − b) / SD(a − b) (ddof=1).

    NaN when the differences do not vary or there are fewer than 2 pairs.
    """
    first, second = _vector(a, "a"), _vector(b, "b")
    if first.size != second.size:
        raise DataError(f"paired samples differ in length ({first.size} vs {second.size})")
    diff = first - second
    if diff.size < 2:
        return math.nan
    sd = diff.std(ddof=1)
    if sd <= 0:
        return math.nan
    return float(diff.mean() / sd)


def sample_sd(values: Sequence[float]) -> float:
    """SD with ddof=1; 0.0 for a single value (one template has no spread to report)."""
    array = np.asarray(values, dtype=np.float64)
    if array.size < 2:
        return 0.0
    return float(array.std(ddof=1))
