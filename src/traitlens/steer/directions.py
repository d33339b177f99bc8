"""The maths of trait directions: small pure functions on ``[n, d_model]`` tensors.

Each estimator answers "which way does the residual stream move from the low
pole to the high pole?" in a different way; all return a ``[d_model]`` vector
pointing toward the *high* pole (or toward higher intensity):

- :func:`mean_difference` — difference of class means, the estimator behind
  ActAdd (Turner et al. 2023) and Contrastive Activation Addition (CAA,
  Panickssery et al. 2024);
- :func:`pca_direction` — first principal component of *paired* differences
  (high and low answers to the same question), as repeng's ``pca_diff`` does
  (Vogel 2024, after Zou et al. 2023's RepE);
- :func:`ridge_direction` — ridge regression of the 1–5 intensity on the
  activations: the direction along which intensity grows, using every pole;
- :func:`logistic_direction` — the normal of a logistic-regression probe
  separating the poles (probe-as-steering-vector, e.g. Li et al. 2023's ITI).

:func:`projection_spread` measures how much the residual stream naturally
varies along a direction; it is the unit steering strengths are expressed in.
Everything is computed in float64 on the CPU (tiny matrices; no precision traps).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import torch

from traitlens.errors import DataError


def unit(vector: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``vector / ‖vector‖``; an all-zero vector stays zero instead of becoming NaN."""
    return vector / vector.norm().clamp(min=eps)


def mean_difference(high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    """``mean(high) − mean(low)`` for ``high`` ``[n_high, d]`` and ``low`` ``[n_low, d]``.

    The ActAdd / CAA estimator: unbiased, needs no pairing, and its norm is the
    distance between the pole centroids (kept in the artifact as ``norms``).
    """
    if len(high) == 0 or len(low) == 0:
        raise DataError(
            f"mean difference needs prompts of both poles (got {len(high)} high, {len(low)} "
            "low); capture a contrastive set that contains both"
        )
    return high.double().mean(0) - low.double().mean(0)


def pair_indices(
    high_keys: Sequence[tuple[Hashable, float]], low_keys: Sequence[tuple[Hashable, float]]
) -> list[tuple[int, int]]:
    """Pair high with low rows that answer the same question.

    ``*_keys[i] = (question_id, intensity)``. Within a question the most extreme
    high persona is paired with the most extreme low one, the next with the next,
    and so on (zip, not cross product: memory stays O(prompts), and an intense
    persona is never contrasted with a mild one of the other pole when a matching
    one exists). Unpaired rows are dropped.
    """
    by_question: dict[Hashable, tuple[list[int], list[int]]] = {}
    for index, (question, _) in enumerate(high_keys):
        by_question.setdefault(question, ([], []))[0].append(index)
    for index, (question, _) in enumerate(low_keys):
        by_question.setdefault(question, ([], []))[1].append(index)
    pairs: list[tuple[int, int]] = []
    for highs, lows in by_question.values():
        highs = sorted(highs, key=lambda i: -high_keys[i][1])
        lows = sorted(lows, key=lambda i: low_keys[i][1])
        pairs.extend(zip(highs, lows, strict=False))
    return pairs


def pca_direction(differences: torch.Tensor) -> torch.Tensor:
    """Unit first principal direction of paired differences ``[n_pairs, d]``.

    repeng fits sklearn's PCA to the differences, which *centres* them first; when
    every pair differs by roughly the same vector that removes exactly the signal
    and leaves the noise's main axis. We take the first right singular vector of
    the *uncentred* differences instead — the direction carrying most of the
    squared difference, which is what "the axis the pairs differ along" means —
    and, like repeng, orient it so that high-pole rows project higher (here: so
    it agrees with the mean difference).
    """
    if len(differences) < 1:
        raise DataError(
            "PCA of paired differences needs at least one (high, low) pair answering the "
            "same question; capture both poles on shared questions, or use mean_diff"
        )
    diffs = differences.double()
    _, _, vh = torch.linalg.svd(diffs, full_matrices=False)
    first = vh[0]
    if float(first @ diffs.mean(0)) < 0:
        first = -first
    return first


def ridge_direction(x: torch.Tensor, y: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Coefficients of ridge regression ``y ≈ x·w + b`` (``x`` ``[n, d]``, ``y`` ``[n]``).

    ``alpha`` is relative: the penalty is ``alpha`` times the mean eigenvalue of
    the centred Gram matrix, so the same ``alpha`` means the same amount of
    shrinkage on every model and layer (raw hidden-state scales differ by orders
    of magnitude). Solved in the dual when ``n < d`` (the usual case: few prompts,
    wide residual stream). Returns the unnormalised ``w`` (higher ``y`` along +w).
    """
    if len(x) < 2 or float(y.double().std()) == 0.0:
        raise DataError(
            "regression on intensity needs at least two prompts with different intensities; "
            "capture prompts of both poles (intensities 1-2 and 4-5)"
        )
    xc = x.double() - x.double().mean(0)
    yc = y.double() - y.double().mean()
    n, d = xc.shape
    penalty = alpha * float((xc * xc).sum()) / max(min(n, d), 1)
    penalty = max(penalty, 1e-12)
    if n < d:
        gram = xc @ xc.T
        gram.diagonal().add_(penalty)
        return xc.T @ torch.linalg.solve(gram, yc)
    cov = xc.T @ xc
    cov.diagonal().add_(penalty)
    return torch.linalg.solve(cov, xc.T @ yc)


def logistic_direction(
    x: torch.Tensor, labels: torch.Tensor, c: float = 1.0, seed: int = 0
) -> torch.Tensor:
    """Normal of an L2 logistic-regression probe separating ``labels`` (True = high pole).

    Features are centred and divided by one global scale (not per feature: a
    per-feature rescale would change which direction is "normal" in activation
    space), so ``c`` means the same on every model. Returns the unnormalised
    normal in activation coordinates, pointing toward the high pole.
    """
    from sklearn.linear_model import LogisticRegression

    y = labels.bool().numpy()
    if y.all() or not y.any():
        raise DataError(
            "a probe direction needs prompts of both poles; capture a contrastive set with "
            "high and low personas"
        )
    xd = x.double()
    xc = xd - xd.mean(0)
    scale = float(xc.pow(2).mean().sqrt()) or 1.0
    probe = LogisticRegression(C=c, max_iter=2000, random_state=seed)
    probe.fit((xc / scale).numpy(), y)
    return torch.from_numpy(np.asarray(probe.coef_[0], dtype=np.float64)) / scale


def projection_spread(x: torch.Tensor, direction: torch.Tensor) -> float:
    """Standard deviation of ``x`` ``[n, d]`` projected on the unit ``direction``.

    This is the unit of steering strength: ``strength=1`` adds one standard
    deviation of the residual stream along the trait axis, which makes a
    strength mean the same on a 135M and a 70B model (raw norms do not).
    """
    if len(x) < 2:
        raise DataError("the spread along a direction needs at least two captured prompts")
    projections = x.double() @ unit(direction.double())
    return float(projections.std())
