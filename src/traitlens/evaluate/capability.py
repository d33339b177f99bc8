"""What does steering cost in capability? Multiple-choice accuracy, steered vs not.

Perplexity of one paragraph says whether language modelling broke; it does not
say whether the model still answers questions. This module scores a
multiple-choice set (the project's own 200 items, or the user's file) exactly
the way lm-evaluation-harness scores a ``multiple_choice`` task, so the number
here and ``lm_eval --model steered … --tasks traitlens_mc`` agree item by item
(``tests/test_lmeval.py`` checks that against lm-eval itself):

- context ``"Question: {question}\\nAnswer:"``, continuation ``" {choice}"``;
- tokens of the continuation are those of ``encode(context + continuation)``
  beyond ``encode(context)`` (lm-eval's ``_encode_pair``), with the tokenizer's
  own special-token default;
- ``acc``: the choice with the highest summed log-prob; ``acc_norm``: the highest
  log-prob per character of the choice.

The steered-minus-unsteered difference gets a paired BCa bootstrap CI over
items (the same items under both conditions, so item difficulty cancels).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from traitlens.artifact_io import Record
from traitlens.data.schema import MCItem
from traitlens.errors import DataError
from traitlens.models.loading import TraitModel
from traitlens.stats import ConfidenceInterval, paired_bootstrap_ci

CONTEXT = "Question: {question}\nAnswer:"
DELIMITER = " "


@dataclass(frozen=True)
class MCScore(Record):
    """One item under one condition: the log-likelihood of every choice and the verdicts."""

    id: str
    topic: str
    answer: int
    loglik: tuple[float, ...]
    correct: bool
    correct_norm: bool


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's causal ``_encode_pair``: trailing context spaces move to the continuation,
    and the continuation's tokens are those of the whole string beyond the context's."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        continuation = context[-spaces:] + continuation
        context = context[:-spaces]
    whole = list(tokenizer.encode(context + continuation))
    head = list(tokenizer.encode(context))
    return head, whole[len(head) :]


def balanced_subset(items: Sequence[MCItem], n: int) -> list[MCItem]:
    """The first ``n`` items taking topics in turn (file order within a topic), so a
    small subset still covers every topic evenly. ``n >= len(items)``: all of them."""
    by_topic: dict[str, list[MCItem]] = defaultdict(list)
    for item in items:
        by_topic[item.topic].append(item)
    queues = list(by_topic.values())
    chosen: list[MCItem] = []
    depth = 0
    while len(chosen) < min(n, len(items)):
        for queue in queues:
            if depth < len(queue) and len(chosen) < n:
                chosen.append(queue[depth])
        depth += 1
    return chosen


@torch.inference_mode()
def score_mc(tm: TraitModel, items: Sequence[MCItem], batch_size: int = 32) -> list[MCScore]:
    """Score ``items`` under whatever ``tm.model`` currently computes (wrap the call in
    :func:`traitlens.steer.steering` to score a steered model)."""
    if not items:
        raise DataError("no multiple-choice items to score; pass a non-empty item file")
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    requests: list[tuple[int, int, list[int], int]] = []  # item, choice, ids, n_context
    for i, item in enumerate(items):
        context = CONTEXT.format(question=item.question)
        for c, choice in enumerate(item.choices):
            head, tail = encode_pair(tm.tokenizer, context, DELIMITER + choice)
            if not tail:
                raise DataError(f"item {item.id}: choice {choice!r} encodes to no tokens")
            requests.append((i, c, head + tail, len(head)))
    logliks = np.zeros((len(items), max(len(item.choices) for item in items)))
    pad = tm.tokenizer.pad_token_id or 0
    order = sorted(range(len(requests)), key=lambda r: -len(requests[r][2]))
    for start in range(0, len(order), batch_size):
        chunk = [requests[r] for r in order[start : start + batch_size]]
        width = max(len(ids) for _, _, ids, _ in chunk) - 1
        inputs = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (_, _, ids, _) in enumerate(chunk):
            inputs[row, : len(ids) - 1] = torch.tensor(ids[:-1])
            mask[row, : len(ids) - 1] = 1
        logits = tm.model(
            input_ids=inputs.to(tm.device), attention_mask=mask.to(tm.device), use_cache=False
        ).logits.float()
        log_probs = torch.log_softmax(logits, dim=-1).cpu()
        for row, (i, c, ids, n_context) in enumerate(chunk):
            targets = torch.tensor(ids[n_context:])
            positions = torch.arange(n_context - 1, len(ids) - 1)
            logliks[i, c] = float(log_probs[row, positions, targets].double().sum())
    scores = []
    for i, item in enumerate(items):
        values = logliks[i, : len(item.choices)]
        lengths = np.array([float(len(choice)) for choice in item.choices])
        scores.append(
            MCScore(
                id=item.id,
                topic=item.topic,
                answer=item.answer,
                loglik=tuple(float(v) for v in values),
                correct=int(np.argmax(values)) == item.answer,
                correct_norm=int(np.argmax(values / lengths)) == item.answer,
            )
        )
    return scores


@dataclass(frozen=True)
class CapabilityResult(Record):
    """Accuracy on the same items unsteered and steered, with a paired CI of the change."""

    n_items: int
    chance: float
    accuracy_plain: float
    accuracy_steered: float
    accuracy_norm_plain: float
    accuracy_norm_steered: float
    change: ConfidenceInterval
    """steered − unsteered accuracy (``acc``), paired BCa bootstrap over items."""
    change_norm: ConfidenceInterval
    by_topic: dict[str, tuple[float, float]]
    """topic → (unsteered, steered) accuracy."""
    flipped_to_wrong: int
    flipped_to_right: int


def compare_capability(
    plain: Sequence[MCScore], steered: Sequence[MCScore], *, n_boot: int = 2000, seed: int = 0
) -> CapabilityResult:
    """Paired comparison of two scorings of the same items."""
    if [s.id for s in plain] != [s.id for s in steered]:
        raise DataError("the two scorings are not of the same items in the same order")
    a = np.array([s.correct for s in steered], dtype=float)
    b = np.array([s.correct for s in plain], dtype=float)
    a_norm = np.array([s.correct_norm for s in steered], dtype=float)
    b_norm = np.array([s.correct_norm for s in plain], dtype=float)
    topics: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for p, s in zip(plain, steered, strict=True):
        topics[p.topic].append((float(p.correct), float(s.correct)))
    return CapabilityResult(
        n_items=len(plain),
        chance=float(np.mean([1.0 / len(s.loglik) for s in plain])),
        accuracy_plain=float(b.mean()),
        accuracy_steered=float(a.mean()),
        accuracy_norm_plain=float(b_norm.mean()),
        accuracy_norm_steered=float(a_norm.mean()),
        change=paired_bootstrap_ci(a, b, n_boot=n_boot, seed=seed),
        change_norm=paired_bootstrap_ci(a_norm, b_norm, n_boot=n_boot, seed=seed),
        by_topic={
            topic: (float(np.mean([p for p, _ in rows])), float(np.mean([s for _, s in rows])))
            for topic, rows in sorted(topics.items())
        },
        flipped_to_wrong=int(((b == 1) & (a == 0)).sum()),
        flipped_to_right=int(((b == 0) & (a == 1)).sum()),
    )


def capability(
    tm: TraitModel,
    interventions: Any,
    items: Sequence[MCItem] | None = None,
    *,
    plain: Sequence[MCScore] | None = None,
    batch_size: int = 32,
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[CapabilityResult, list[MCScore], list[MCScore]]:
    """Accuracy of ``tm`` on ``items`` (default: the shipped set) with and without
    ``interventions``; returns the comparison, the unsteered and the steered scores.
    Pass ``plain`` (the unsteered scores of the same items) to skip re-scoring them."""
    from traitlens.data import load_mc_items
    from traitlens.steer.apply import steering

    chosen = list(items) if items is not None else load_mc_items()
    baseline = list(plain) if plain is not None else score_mc(tm, chosen, batch_size)
    context = steering(tm, interventions) if interventions else nullcontext()
    with context:
        steered = score_mc(tm, chosen, batch_size)
    return compare_capability(baseline, steered, n_boot=n_boot, seed=seed), baseline, steered
