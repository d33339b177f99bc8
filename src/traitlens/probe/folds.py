"""Cross-validation folds grouped by question *and* persona, and control-task labels.

A probe tested on a prompt whose question or persona text it saw in training
can score well by recognising that text instead of the trait. So each
question and each persona is assigned to one of ``k`` folds; fold ``k`` tests
on prompts whose question *and* persona are in fold ``k`` and trains on
prompts whose question *and* persona are both outside it. Mixed prompts
(question in the fold, persona not, or the reverse) are used by neither side
of that split. Personas are assigned round-robin within their (trait, pole)
stratum so every test fold holds both poles of every trait.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from traitlens.errors import DataError

IntArray = NDArray[np.int64]


@dataclass(frozen=True)
class Fold:
    """Row indices of one split (into the prompt list the folds were built from)."""

    train: IntArray
    test: IntArray


def assign_folds(
    keys: Sequence[Hashable], strata: Sequence[Hashable], n_folds: int, seed: int
) -> dict[Hashable, int]:
    """Assign each distinct key a fold in ``0..n_folds-1``, round-robin within its stratum.

    ``strata[i]`` is the stratum of ``keys[i]`` (the first one seen counts).
    Members of a stratum are shuffled with ``seed`` and dealt out in turn; the
    dealing position carries over between strata so fold sizes stay balanced.
    """
    stratum_of: dict[Hashable, Hashable] = {}
    for key, stratum in zip(keys, strata, strict=True):
        stratum_of.setdefault(key, stratum)
    members: dict[Hashable, list[Hashable]] = {}
    for key, stratum in stratum_of.items():
        members.setdefault(stratum, []).append(key)
    rng = np.random.default_rng(seed)
    folds: dict[Hashable, int] = {}
    position = 0
    for stratum in sorted(members, key=str):
        group = sorted(members[stratum], key=str)
        for index in rng.permutation(len(group)):
            folds[group[index]] = position % n_folds
            position += 1
    return folds


@dataclass(frozen=True)
class GroupedFolds:
    """The splits plus, per prompt, the fold of its question and of its persona."""

    splits: list[Fold]
    question_fold: IntArray
    persona_fold: IntArray


def grouped_folds(
    question_ids: Sequence[str],
    persona_ids: Sequence[str],
    persona_strata: Sequence[Hashable],
    n_folds: int,
    seed: int = 0,
) -> GroupedFolds:
    """Folds in which no test prompt shares its question or persona with a training prompt.

    One entry per prompt in each sequence; ``persona_strata`` is typically the
    prompt's (trait, pole). Returns ``n_folds`` splits; with ``k`` folds each
    test fold holds about ``1/k²`` of the prompts and each training fold about
    ``(1 - 1/k)²`` — the price of excluding both kinds of overlap.
    """
    if n_folds < 2:
        raise DataError(f"grouped cross-validation needs at least 2 folds, got {n_folds}")
    question_of = assign_folds(question_ids, ["q"] * len(question_ids), n_folds, seed)
    persona_of = assign_folds(persona_ids, persona_strata, n_folds, seed + 1)
    q = np.array([question_of[k] for k in question_ids], dtype=np.int64)
    p = np.array([persona_of[k] for k in persona_ids], dtype=np.int64)
    splits = [
        Fold(
            train=np.flatnonzero((q != k) & (p != k)).astype(np.int64),
            test=np.flatnonzero((q == k) & (p == k)).astype(np.int64),
        )
        for k in range(n_folds)
    ]
    return GroupedFolds(splits, q, p)


def control_labels(
    labels: Sequence[float],
    questions: Sequence[Hashable],
    question_blocks: Sequence[Hashable],
    seed: int,
) -> list[float]:
    """Control-task labels: each label cyclically shifted by a random per-question amount.

    With ``values`` the sorted distinct labels (``m`` of them), a prompt with
    label ``values[r]`` on question ``q`` gets ``values[(r + s_q) mod m]``. The
    shifts ``s_q`` are dealt 0, 1, …, m−1 in random order within each question
    fold (``question_blocks``), so every union of folds — every training set —
    holds each shift equally often. Then, inside every training set, the
    control label is independent of the real one (for each real label all
    shifted values are equally common), and predicting it needs ``s_q``:
    memorised for training questions, unknowable for the unseen test
    questions. Its held-out score is what the probe and the CV design yield
    without trait information, and score − control is the selectivity
    (Hewitt & Liang 2019, "Designing and Interpreting Probes with Control
    Tasks"). Shifting the real label, rather than drawing a fresh one per
    question, keeps each test fold's label spread like the real one's, so R²
    (which is relative to the test fold's own variance) stays comparable.

    Why not simply permute the real labels between personas: with a few
    personas per fold, a permutation that keeps folds balanced can only keep
    or swap each fold's personas, so training labels end up (anti-)correlated
    with the true pole; with a strong signal the control probe then learns
    the true direction with the wrong sign for the held-out fold and scores
    far *below* chance (0.1–0.3 on planted synthetic data), inflating
    selectivity.
    """
    values = sorted(set(labels))
    if not values:
        return []
    rank = {value: index for index, value in enumerate(values)}
    block_of: dict[Hashable, Hashable] = {}
    for question, block in zip(questions, question_blocks, strict=True):
        block_of.setdefault(question, block)
    rng = np.random.default_rng(seed)
    shift_of: dict[Hashable, int] = {}
    for block in sorted(set(block_of.values()), key=str):
        members = sorted((q for q in block_of if block_of[q] == block), key=str)
        shifts = rng.permutation(len(values))
        for position, index in enumerate(rng.permutation(len(members))):
            shift_of[members[index]] = int(shifts[position % len(values)])
    return [
        values[(rank[label] + shift_of[question]) % len(values)]
        for label, question in zip(labels, questions, strict=True)
    ]
