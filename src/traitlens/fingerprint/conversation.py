"""Multi-turn conversations: generate each assistant turn, then pool its hidden states.

Drift needs the whole conversation so far in context, so each turn is formatted
with :meth:`~traitlens.models.chat.ChatFormatter.format_conversation` (the
model's chat template, or the ``plain`` Question/Answer format for base models),
answered with :func:`~traitlens.models.generation.generate_formatted` and pooled
over that answer's tokens only with the shared capture engine
(:func:`~traitlens.capture.capture.pool_formatted`) — the same batching, hooks
and pooling weights as every other capture.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from traitlens.capture.capture import pool_formatted
from traitlens.models.chat import Turn
from traitlens.models.generation import generate_formatted
from traitlens.models.loading import TraitModel
from traitlens.progress import track

# Base models in the plain format keep going after their answer: a new "Question:",
# another "Answer:" line, or a blank line and something else. Everything from
# there on is not the model's answer to *this* question. Bump the version when
# the rule changes: cached multi-turn answers were generated with the old one.
_PLAIN_STOPS = ("\nQuestion:", "\nAnswer:", "\n\n")
CLEAN_VERSION = 2


def clean_answer(text: str, chat_format: str) -> str:
    """The answer proper: for plain-format (base) models, cut where the model starts
    writing the next exchange itself. Idempotent."""
    text = text.strip()
    if chat_format == "plain":
        for stop in _PLAIN_STOPS:
            text = text.split(stop, 1)[0]
    return text.strip()


@dataclass
class ConversationRun:
    """Per-turn answers, answer lengths (tokens) and pooled states of one or more conversations."""

    answers: list[list[str]]  # [conversation][turn]
    lengths: list[list[int]]
    pooled: np.ndarray  # [conversation, turn, L, d]


def _so_far(users: Sequence[str], answers: Sequence[str], last: str | None) -> list[Turn]:
    """The turns up to the next unanswered user turn, ``last`` as its answer (None: ask)."""
    turn = len(answers)
    return [*zip(users[:turn], answers, strict=True), (users[turn], last)]


def run_conversations(
    tm: TraitModel,
    conversations: Sequence[Sequence[str]],
    *,
    layers: Sequence[int],
    pooling: str,
    decay_half_life: float,
    max_new_tokens: int,
    seed: int,
    temperature: float = 0.8,
    top_p: float = 0.95,
    batch_size: int = 16,
    replay: Sequence[Sequence[str]] | None = None,
    progress: bool = True,
) -> ConversationRun:
    """Play scripted user turns against the model, all conversations batched turn by turn.

    The model answers every turn itself (its earlier answers stay in context), so
    the drift measured is the model's own, not an artifact of a fixed transcript.
    Turn ``t`` of every conversation is sampled in one batch, in the given order,
    with seed ``seed + t``, so the answers do not depend on ``batch_size`` (which
    only sizes the pooling passes) and cached answers match a fresh run.
    ``replay`` (answers of an earlier run, same shape) skips generation and only
    re-encodes — how an interrupted fingerprint resumes without resampling.
    """
    n_turns = max(len(c) for c in conversations)
    answers: list[list[str]] = [[] for _ in conversations]
    lengths: list[list[int]] = [[] for _ in conversations]
    pooled = np.zeros((len(conversations), n_turns, len(layers), tm.identity.d_model))
    for turn in track(range(n_turns), n_turns, "conversation turns", progress):
        active = [i for i, c in enumerate(conversations) if turn < len(c)]

        if replay is not None:
            new = [replay[i][turn] for i in active]
        else:
            asked = [
                tm.formatter.format_conversation(_so_far(conversations[i], answers[i], None))
                for i in active
            ]
            generated = generate_formatted(
                tm,
                asked,
                max_new_tokens=max_new_tokens,
                do_sample=True,
                seed=seed + turn,
                temperature=temperature,
                top_p=top_p,
                batch_size=len(asked),
                keep_order=True,
                progress=False,
            )
            new = [clean_answer(text, tm.formatter.mode) for text in generated]
        answered = [
            tm.formatter.format_conversation(_so_far(conversations[i], answers[i], a))
            for i, a in zip(active, new, strict=True)
        ]
        states = pool_formatted(
            tm,
            answered,
            span="answer",
            poolings=(pooling,),
            layers=layers,
            decay_half_life=decay_half_life,
            batch_size=batch_size,
        )[f"resid.{pooling}"]
        for row, index in enumerate(active):
            answers[index].append(new[row])
            start, end = answered[row].span("answer")
            lengths[index].append(end - start)
            pooled[index, turn] = states[row].double().numpy()
    return ConversationRun(answers, lengths, pooled)
