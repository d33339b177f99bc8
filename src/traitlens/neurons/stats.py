"""The maths of neuron selection as small pure functions: δ, the z-test, BH, Jaccard.

- δ (NPTI; Deng et al. 2024, "Neuron-based Personality Trait Induction"):
  ``δ_i = P(act_i > 0 | high) − P(act_i > 0 | low)`` over answer tokens.
- Two-proportion z-test with pooled variance, two-sided.
- Benjamini–Hochberg (1995) step-up adjusted p-values ("q-values") are
  :func:`traitlens.stats.fdr_bh` (scipy's ``false_discovery_control``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from scipy.special import ndtr

FloatArray = NDArray[np.float64]


def firing_delta(rate_high: torch.Tensor, rate_low: torch.Tensor) -> torch.Tensor:
    """NPTI's selectivity δ = P(act > 0 | high) − P(act > 0 | low), elementwise."""
    return rate_high - rate_low


def two_proportion_z_test(
    rate_a: ArrayLike, n_a: float, rate_b: ArrayLike, n_b: float
) -> tuple[FloatArray, FloatArray]:
    """z statistic and two-sided p-value for H0: the two firing probabilities are equal.

    Pooled-variance test: ``p̂ = (n_a·rate_a + n_b·rate_b) / (n_a + n_b)``,
    ``z = (rate_a − rate_b) / sqrt(p̂ (1 − p̂) (1/n_a + 1/n_b))``. Where a
    neuron never (or always) fires in both groups the variance is 0 and the
    difference is 0 too: z = 0, p = 1 (no evidence) rather than NaN.
    """
    a = np.asarray(rate_a, dtype=np.float64)
    b = np.asarray(rate_b, dtype=np.float64)
    pooled = (n_a * a + n_b * b) / (n_a + n_b)
    se = np.sqrt(pooled * (1.0 - pooled) * (1.0 / n_a + 1.0 / n_b))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, (a - b) / np.where(se > 0, se, 1.0), 0.0)
    pvalue = 2.0 * ndtr(-np.abs(z))  # survival function of |z|, accurate far in the tail
    return z, np.minimum(pvalue, 1.0)


def jaccard_matrix(masks: Sequence[torch.Tensor]) -> FloatArray:
    """Pairwise Jaccard index |A ∩ B| / |A ∪ B| of boolean masks (same shape).

    0/0 (both sets empty) is NaN: "no overlap" and "nothing to compare" differ.
    """
    flat = torch.stack([m.reshape(-1).to(torch.float64) for m in masks])
    intersection = (flat @ flat.T).numpy()
    sizes = flat.sum(1).numpy()
    union = sizes[:, None] + sizes[None, :] - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, intersection / np.where(union > 0, union, 1.0), np.nan)


def matched_random_neurons(
    counts: torch.Tensor, exclude: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random neurons, ``counts[l]`` of them in layer column ``l``, avoiding ``exclude``.

    ``exclude``: bool ``[L, d_mlp]``. Returns (layer column, neuron index) long
    tensors sorted by column then index. A layer with fewer eligible neurons
    than requested contributes all of them (only possible on toy widths).
    """
    columns, indices = [], []
    for column in range(exclude.shape[0]):
        wanted = int(counts[column])
        if wanted == 0:
            continue
        eligible = torch.nonzero(~exclude[column]).reshape(-1)
        pick = torch.randperm(eligible.numel(), generator=generator)[:wanted]
        chosen = eligible[pick].sort().values
        columns.append(torch.full_like(chosen, column))
        indices.append(chosen)
    if not columns:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty.clone()
    return torch.cat(columns), torch.cat(indices)
