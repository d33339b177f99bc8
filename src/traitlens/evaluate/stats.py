"""Small statistics for judging measurements and interventions.

Pure numpy functions tested against hand-computed values: Cronbach's α for
questionnaire reliability and standardized effect sizes (Cohen's d with pooled SD,
Cohen's d_z for paired designs). Undefined values (zero variance, too few
observations) come back as NaN rather than raising, because they describe the data,
not a misuse. The bootstrap confidence intervals (plain and paired) live in
:mod:`traitlens.stats` with every other shared statistic and are re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from traitlens.errors import DataError

# re-exported: the evaluate stage's public API has always offered them from here
from traitlens.stats import ConfidenceInterval as ConfidenceInterval
from traitlens.stats import bootstrap_ci as bootstrap_ci
from traitlens.stats import finite_vector
from traitlens.stats import paired_bootstrap_ci as paired_bootstrap_ci


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


def cohens_d(a: ArrayLike, b: ArrayLike) -> float:
    """Cohen's d for independent samples: (mean a − mean b) / pooled SD (ddof=1).

    NaN when the pooled SD is zero or either sample has fewer than 2 values.
    """
    first, second = finite_vector(a, "a"), finite_vector(b, "b")
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
    first, second = finite_vector(a, "a"), finite_vector(b, "b")
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
