"""The statistics every stage shares: bootstrap CIs, FDR control, ROC AUC and ICC.

One module so that a method is implemented (and tested) once; each function is a thin,
validated layer over a well-kept library — :func:`scipy.stats.bootstrap`,
:func:`scipy.stats.false_discovery_control`, :func:`sklearn.metrics.roc_auc_score` —
except ICC, whose ANOVA form is short enough to keep here (Shrout & Fleiss 1979).

Bootstrap intervals are BCa by default (Efron & Tibshirani 1993, ch. 14): unlike the
percentile interval they correct for a skewed or biased statistic. BCa is undefined
when the data are degenerate — fewer than 3 observations (its jackknife acceleration
needs some), every resample equal to the estimate (constant data) or all on one side
of it — and scipy then answers NaN; here the interval falls back to the percentile
interval of the *same* resamples, so an answer is always finite for finite data, and
:attr:`ConfidenceInterval.method` says which one it is. Resampling is seeded through
:func:`numpy.random.default_rng`, so the same call gives the same interval.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from traitlens.artifact_io import Record
from traitlens.errors import DataError

__all__ = [
    "ConfidenceInterval",
    "Statistic",
    "auc",
    "bootstrap_ci",
    "bootstrap_median_ci",
    "bootstrap_median_difference",
    "fdr_bh",
    "finite_vector",
    "icc",
    "null_p_value",
    "paired_bootstrap_ci",
    "separation_auc",
    "wilson_ci",
]

FloatArray = NDArray[np.float64]
Statistic = Callable[..., Any]

METHODS = ("BCa", "percentile", "basic")
# BCa's jackknife needs a few observations to estimate the acceleration at all.
_MIN_BCA_N = 3
# Resamples are evaluated in batches of at most this many array elements (≈32 MB of
# float64), so a large sample cannot exhaust memory; typical samples fit in one batch.
_BATCH_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class ConfidenceInterval(Record):
    """A point estimate with its ``level`` confidence interval ``[low, high]``.

    ``method`` is the interval actually computed: ``"BCa"``, or ``"percentile"`` where
    BCa was asked for but is undefined on these data (see the module docstring).
    """

    estimate: float
    low: float
    high: float
    level: float
    n: int
    method: str

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


def finite_vector(values: ArrayLike, name: str) -> FloatArray:
    """``values`` as a flat float64 array, refusing an empty one or one with NaN/inf."""
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise DataError(f"{name} is empty; pass at least one value")
    if not np.all(np.isfinite(array)):
        raise DataError(f"{name} contains NaN or inf; drop or fix those values first")
    return array


def _check_options(level: float, n_boot: int, method: str) -> str:
    if not 0.0 < level < 1.0:
        raise DataError(f"confidence level must lie strictly between 0 and 1, got {level}")
    if n_boot < 1:
        raise DataError(f"n_boot must be >= 1, got {n_boot}")
    chosen = {m.lower(): m for m in METHODS}.get(method.lower())
    if chosen is None:
        raise DataError(f"unknown bootstrap method {method!r}; use one of {', '.join(METHODS)}")
    return chosen


def _interval(
    data: tuple[np.ndarray, ...],
    statistic: Statistic,
    *,
    paired: bool = False,
    n_boot: int,
    seed: int,
    level: float,
    method: str,
    vectorized: bool | None = None,
    work_per_resample: int | None = None,
) -> tuple[float, float, str]:
    """``(low, high, method used)`` from :func:`scipy.stats.bootstrap`, with the
    percentile fallback for degenerate BCa. ``work_per_resample`` is the number of array
    elements ``statistic`` touches per resample (default: the sample size), for batching."""
    from scipy import stats as scipy_stats

    n = min(sample.shape[-1] for sample in data)
    if n < 2:
        # scipy refuses a single observation; every resample of it is the estimate.
        value = float(statistic(*data))
        return value, value, "percentile"
    if method == "BCa" and n < _MIN_BCA_N:
        method = "percentile"
    options: dict[str, Any] = {
        "paired": paired,
        "vectorized": vectorized,
        "confidence_level": level,
        "batch": max(1, min(n_boot, _BATCH_ELEMENTS // max(1, work_per_resample or n))),
    }
    # scipy >= 1.15 names the generator ``rng``; older releases call it ``random_state``.
    rng_name = (
        "rng" if "rng" in inspect.signature(scipy_stats.bootstrap).parameters else "random_state"
    )
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        # degenerate BCa warns and answers NaN; that case is handled just below
        warnings.simplefilter("ignore", scipy_stats.DegenerateDataWarning)
        result = scipy_stats.bootstrap(
            data,
            statistic,
            n_resamples=n_boot,
            method=method,
            **{rng_name: np.random.default_rng(seed)},
            **options,
        )
        low, high = result.confidence_interval
        if method == "BCa" and not (np.isfinite(low) and np.isfinite(high)):
            method = "percentile"
            result = scipy_stats.bootstrap(
                data, statistic, n_resamples=0, method=method, bootstrap_result=result, **options
            )
            low, high = result.confidence_interval
    return float(low), float(high), method


def bootstrap_ci(
    *samples: ArrayLike,
    stat: Statistic = np.mean,
    paired: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    method: str = "BCa",
) -> ConfidenceInterval:
    """Bootstrap CI of ``stat(*samples)`` over :func:`scipy.stats.bootstrap`.

    One sample: ``stat(x)``. Several: ``stat(x, y, ...)``, each sample resampled on its
    own, or — ``paired=True``, samples of equal length — the observations resampled
    *jointly* (before/after on the same items). ``stat`` taking an ``axis`` argument
    (``np.mean``, ``np.median``) is evaluated on all resamples at once. ``method`` is
    ``"BCa"`` (default; percentile fallback where it is undefined, see the module
    docstring), ``"percentile"`` or ``"basic"``; ``n_boot`` is scipy's ``n_resamples``.
    The estimate is ``stat`` on the original samples; ``n`` the number of observations
    (of pairs when paired, of the smallest sample otherwise). A single observation has
    no resampling spread: its interval is the estimate itself.
    """
    method = _check_options(level, n_boot, method)
    if not samples:
        raise DataError("bootstrap_ci needs at least one sample")
    names = ["values"] if len(samples) == 1 else [f"sample {i + 1}" for i in range(len(samples))]
    data = tuple(finite_vector(s, name) for s, name in zip(samples, names, strict=True))
    sizes = {d.size for d in data}
    if paired and len(sizes) > 1:
        raise DataError(f"paired samples differ in length ({' vs '.join(map(str, sizes))})")
    if len(data) > 1 and min(sizes) < 2:
        raise DataError("each of several samples needs at least 2 values to resample")
    low, high, used = _interval(
        data, stat, paired=paired, n_boot=n_boot, seed=seed, level=level, method=method
    )
    return ConfidenceInterval(float(stat(*data)), low, high, level, min(sizes), used)


def paired_bootstrap_ci(
    a: ArrayLike,
    b: ArrayLike,
    stat: Statistic = np.mean,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    method: str = "BCa",
) -> ConfidenceInterval:
    """Bootstrap CI of ``stat(a − b)`` resampling *pairs* jointly.

    For before/after measurements on the same items (steered vs. unsteered), the
    pairing removes item difficulty from the noise; resampling the pairs keeps it.
    Resampling pairs is resampling their differences, so this is :func:`bootstrap_ci`
    on ``a − b`` (the same intervals as ``paired=True`` with ``stat(a − b)``).
    """
    first, second = finite_vector(a, "a"), finite_vector(b, "b")
    if first.size != second.size:
        raise DataError(f"paired samples differ in length ({first.size} vs {second.size})")
    return bootstrap_ci(
        first - second, stat=stat, n_boot=n_boot, seed=seed, level=level, method=method
    )


# ------------------------------------------------------------ cluster bootstrap


class _ClusterMedian:
    """Median of the values of a multiset of clusters, for many multisets at once.

    Called with cluster indices ``[..., g]`` (a resample of clusters), it returns the
    median of all member values of those clusters, a cluster drawn twice counting twice
    — ``np.median`` of their concatenation, computed as a weighted median over the
    sorted values so that ragged clusters vectorize.
    """

    def __init__(self, values: FloatArray, labels: np.ndarray) -> None:
        _, inverse = np.unique(labels, return_inverse=True)
        order = np.argsort(values, kind="stable")
        self.sorted_values = values[order]
        self.sorted_cluster = inverse.reshape(-1)[order]
        self.n_clusters = int(inverse.max()) + 1

    @property
    def clusters(self) -> np.ndarray:
        """The sample scipy resamples: one index per cluster."""
        return np.arange(self.n_clusters, dtype=np.float64)

    def __call__(self, picks: ArrayLike, axis: int = -1) -> FloatArray:
        chosen = np.moveaxis(np.asarray(picks), axis, -1)
        batch_shape = chosen.shape[:-1]
        flat = np.rint(chosen.reshape(-1, chosen.shape[-1])).astype(np.intp)
        rows = flat.shape[0]
        offsets = np.arange(rows)[:, None] * self.n_clusters
        counts = np.bincount((flat + offsets).ravel(), minlength=rows * self.n_clusters)
        weights = counts.reshape(rows, self.n_clusters)[:, self.sorted_cluster]
        cumulative = np.cumsum(weights, axis=1)
        total = cumulative[:, -1:]
        # 0-based ranks of the two middle elements (equal for an odd count); the element
        # of rank r is the first sorted value whose cumulative weight exceeds r
        lower = (cumulative <= (total - 1) // 2).sum(axis=1)
        upper = (cumulative <= total // 2).sum(axis=1)
        medians = (self.sorted_values[lower] + self.sorted_values[upper]) / 2.0
        return np.asarray(medians.reshape(batch_shape), dtype=np.float64)


def _cluster_median(values: ArrayLike, clusters: Sequence[Any] | None, name: str) -> _ClusterMedian:
    array = finite_vector(values, name)
    labels = np.asarray(clusters if clusters is not None else np.arange(array.size))
    if labels.shape[0] != array.size:
        raise DataError(f"got {labels.shape[0]} cluster labels for {array.size} values of {name}")
    return _ClusterMedian(array, labels)


def bootstrap_median_ci(
    values: ArrayLike,
    clusters: Sequence[Any] | None = None,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    method: str = "BCa",
) -> tuple[float, float, float]:
    """Median and a bootstrap CI, resampling whole clusters: ``(median, lower, upper)``.

    Answers to the same question (different seeds) are not independent, so the
    cluster bootstrap resamples questions, keeping all their answers together;
    resampling single answers would give CIs that are too narrow. ``clusters=None``:
    every value is its own cluster. BCa with the percentile fallback, as
    :func:`bootstrap_ci` (the count that matters is the number of clusters).
    """
    method = _check_options(level, n_boot, method)
    median = _cluster_median(values, clusters, "values")
    low, high, _ = _interval(
        (median.clusters,),
        median,
        n_boot=n_boot,
        seed=seed,
        level=level,
        method=method,
        vectorized=True,
        work_per_resample=median.sorted_values.size,
    )
    return float(np.median(median.sorted_values)), low, high


def bootstrap_median_difference(
    a: ArrayLike,
    a_clusters: Sequence[Any],
    b: ArrayLike,
    b_clusters: Sequence[Any],
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    method: str = "BCa",
) -> tuple[float, float, float]:
    """``median(a) − median(b)`` with a CI from independent cluster bootstraps of a and b:
    ``(difference, lower, upper)``; clusters as in :func:`bootstrap_median_ci`."""
    method = _check_options(level, n_boot, method)
    first = _cluster_median(a, a_clusters, "a")
    second = _cluster_median(b, b_clusters, "b")
    if min(first.n_clusters, second.n_clusters) < 2:
        raise DataError(
            "a median difference needs at least 2 clusters (questions) on each side, got "
            f"{first.n_clusters} and {second.n_clusters}; answer more questions"
        )

    def difference(picks_a: ArrayLike, picks_b: ArrayLike, axis: int = -1) -> FloatArray:
        return first(picks_a, axis) - second(picks_b, axis)

    low, high, _ = _interval(
        (first.clusters, second.clusters),
        difference,
        n_boot=n_boot,
        seed=seed,
        level=level,
        method=method,
        vectorized=True,
        work_per_resample=first.sorted_values.size + second.sorted_values.size,
    )
    estimate = float(np.median(first.sorted_values) - np.median(second.sorted_values))
    return estimate, low, high


# ------------------------------------------------------------ tests and ranking


def fdr_bh(pvalues: ArrayLike) -> FloatArray:
    """Benjamini–Hochberg (1995) adjusted p-values ("q-values"), same shape as the input.

    ``q_(i) = min_{j ≥ i} p_(j) · m / j`` over the ascending order, capped at 1, computed
    by :func:`scipy.stats.false_discovery_control` over *all* entries (any shape);
    rejecting ``q ≤ α`` controls the false discovery rate at α for independent (or
    positively dependent) tests. A NaN or out-of-range p-value is refused: it is a bug
    upstream, and silently dropping it would change ``m`` and so every q-value.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    if p.size == 0:
        return p.copy()
    if np.any(np.isnan(p)) or np.any((p < 0) | (p > 1)):
        raise DataError("p-values must lie in [0, 1] and not be NaN; fix the test that made them")
    from scipy.stats import false_discovery_control

    adjusted = false_discovery_control(p.reshape(-1), method="bh")
    return np.asarray(adjusted, dtype=np.float64).reshape(p.shape)


def auc(y_true: ArrayLike, score: ArrayLike) -> float:
    """ROC AUC of ``score`` for binary labels ``y_true`` (:func:`sklearn.metrics.roc_auc_score`).

    The larger label (``1`` / ``True``) is the positive class; ties count half, so the
    AUC equals P(score of a positive > score of a negative), the Mann–Whitney U / (n₊n₋).
    With a single class (or no labels) the AUC is undefined: NaN, with a
    ``RuntimeWarning`` that says so, rather than an exception — one pole missing in one
    axis should not stop a whole run.
    """
    labels = np.asarray(y_true).reshape(-1)
    scores = np.asarray(score, dtype=np.float64).reshape(-1)
    if labels.size != scores.size:
        raise DataError(f"auc got {labels.size} labels for {scores.size} scores")
    if not np.all(np.isfinite(scores)):
        raise DataError("auc got NaN or inf scores; drop or fix those values first")
    classes = np.unique(labels)
    if classes.size > 2:
        raise DataError(f"auc needs binary labels, got {classes.size} classes")
    if classes.size < 2:
        present = "no labels" if classes.size == 0 else f"only class {classes[0]!r}"
        warnings.warn(
            f"ROC AUC is undefined with {present}: both classes are needed; returning NaN",
            RuntimeWarning,
            stacklevel=2,
        )
        return math.nan
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def separation_auc(high: ArrayLike, low: ArrayLike) -> float:
    """AUC of scores meant to be higher for ``high`` than for ``low``: :func:`auc` with
    ``high`` as the positive class (NaN, with a warning, when either group is empty)."""
    first = np.asarray(high, dtype=np.float64).reshape(-1)
    second = np.asarray(low, dtype=np.float64).reshape(-1)
    labels = np.concatenate([np.ones(first.size), np.zeros(second.size)])
    return auc(labels, np.concatenate([first, second]))


# ------------------------------------------------------------ reliability


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


def wilson_ci(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (:meth:`scipy.stats.binomtest.proportion_ci`);
    ``(nan, nan)`` with no trials."""
    from scipy.stats import binomtest

    if n <= 0:
        return float("nan"), float("nan")
    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def null_p_value(observed: float, null: ArrayLike) -> float:
    """One-sided Monte Carlo p-value of ``observed`` against draws from the null:
    ``(1 + #{null ≥ observed}) / (1 + n)`` (Phipson & Smyth 2010; never 0)."""
    draws = np.asarray(null, dtype=float)
    return float((1 + np.sum(draws >= observed - 1e-12)) / (1 + draws.size))
