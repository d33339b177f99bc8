"""Multi-turn conversations: generate each assistant turn, then pool its hidden states.

``capture()`` formats one (system, user, answer) exchange; drift needs the whole
conversation so far in context, so this module renders it with the model's own
chat template (or the ``plain`` Question/Answer format for base models, the
same one :mod:`traitlens.models.chat` uses), generates the next answer, and
pools the residual stream over that answer's tokens only, through the shared
hook API (``resid[L]``) and the same pooling weights as capture.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from traitlens.capture.reducers import pooling_weights
from traitlens.models.batching import left_pad
from traitlens.models.hooks import HookFn, hooks_installed
from traitlens.models.loading import TraitModel

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


@dataclass(frozen=True)
class RenderedTurn:
    """Token ids of a conversation up to and including one assistant answer."""

    input_ids: list[int]
    answer_span: tuple[int, int]


def render_prompt(tm: TraitModel, users: Sequence[str], answers: Sequence[str]) -> str:
    """The conversation text that asks for the answer to ``users[-1]``.

    ``answers`` are the assistant's earlier answers (``len(users) - 1`` of them).
    """
    if tm.formatter.mode == "plain":
        history = "".join(
            f"Question: {u}\nAnswer: {a}\n\n" for u, a in zip(users[:-1], answers, strict=True)
        )
        return f"{history}Question: {users[-1]}\nAnswer:"
    messages: list[dict[str, str]] = []
    for user, answer in zip(users[:-1], answers, strict=True):
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    messages.append({"role": "user", "content": users[-1]})
    rendered = tm.tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    return str(rendered)


def _encode(tm: TraitModel, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    # chat templates already contain the BOS/special tokens; plain text does not
    encoding = tm.tokenizer(
        text, add_special_tokens=tm.formatter.mode == "plain", return_offsets_mapping=True
    )
    return list(encoding["input_ids"]), [(int(a), int(b)) for a, b in encoding["offset_mapping"]]


def render_turn(tm: TraitModel, prompt: str, answer: str) -> RenderedTurn:
    """Append ``answer`` to ``prompt`` verbatim (as the model produced it) and locate its tokens."""
    separator = " " if tm.formatter.mode == "plain" else ""
    start_char = len(prompt) + len(separator)
    ids, offsets = _encode(tm, prompt + separator + answer)
    inside = [i for i, (a, b) in enumerate(offsets) if b > start_char and b > a]
    span = (inside[0], inside[-1] + 1) if inside and answer else (len(ids), len(ids))
    return RenderedTurn(ids, span)


def generate_from_texts(
    tm: TraitModel,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    seed: int,
    do_sample: bool = True,
    temperature: float = 0.8,
    top_p: float = 0.95,
) -> list[str]:
    """Answer already-rendered prompt texts in one left-padded batch (seeded sampling)."""
    encoded = [_encode(tm, text)[0] for text in prompts]
    ids, attn, _ = left_pad(encoded, tm.tokenizer.pad_token_id, tm.device)
    kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        "pad_token_id": tm.tokenizer.pad_token_id,
        "use_cache": True,
    }
    if tm.tokenizer.eos_token_id is not None:
        kwargs["eos_token_id"] = tm.tokenizer.eos_token_id
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p)
        torch.manual_seed(seed)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    with torch.inference_mode():
        out = tm.model.generate(input_ids=ids, attention_mask=attn, **kwargs)
    texts = [tm.tokenizer.decode(row[ids.shape[1] :], skip_special_tokens=True) for row in out]
    return [clean_answer(text, tm.formatter.mode) for text in texts]


def pool_turns(
    tm: TraitModel,
    turns: Sequence[RenderedTurn],
    layers: Sequence[int],
    pooling: str,
    decay_half_life: float,
) -> np.ndarray:
    """Pooled residual stream over each turn's answer tokens, ``[n, len(layers), d_model]``.

    Rows whose answer is empty come back as zeros; callers mark them missing.
    """
    ids, attn, pos = left_pad([t.input_ids for t in turns], tm.tokenizer.pad_token_id, tm.device)
    width = ids.shape[1]
    mask = torch.zeros((len(turns), width), dtype=torch.bool)
    for row, turn in enumerate(turns):
        offset = width - len(turn.input_ids)
        mask[row, offset + turn.answer_span[0] : offset + turn.answer_span[1]] = True
    weights = pooling_weights(mask, (pooling,), decay_half_life)[0].to(tm.device)
    pooled = torch.zeros((len(turns), len(layers), tm.identity.d_model))

    def hook_for(column: int) -> HookFn:
        def hook(hidden: torch.Tensor) -> None:
            pooled[:, column] = (
                torch.einsum("bs,bsd->bd", weights.to(hidden.dtype), hidden).float().cpu()
            )

        return hook

    hooks = [(f"resid[{layer}]", hook_for(column)) for column, layer in enumerate(layers)]
    with torch.inference_mode(), hooks_installed(tm.adapter, hooks):
        # only the hidden states are needed: skip all but one position of the LM head,
        # which for a large vocabulary (Gemma: 262k) costs more than the layers
        tm.model(
            input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False, logits_to_keep=1
        )
    return pooled.double().numpy()


@dataclass
class ConversationRun:
    """Per-turn answers, answer lengths (tokens) and pooled states of one or more conversations."""

    answers: list[list[str]]  # [conversation][turn]
    lengths: list[list[int]]
    pooled: np.ndarray  # [conversation, turn, L, d]


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
    replay: Sequence[Sequence[str]] | None = None,
    progress: bool = True,
) -> ConversationRun:
    """Play scripted user turns against the model, all conversations batched turn by turn.

    The model answers every turn itself (its earlier answers stay in context), so
    the drift measured is the model's own, not an artifact of a fixed transcript.
    ``replay`` (answers of an earlier run, same shape) skips generation and only
    re-encodes — how an interrupted fingerprint resumes without resampling.
    """
    from traitlens.progress import track

    n_turns = max(len(c) for c in conversations)
    answers: list[list[str]] = [[] for _ in conversations]
    lengths: list[list[int]] = [[] for _ in conversations]
    pooled = np.zeros((len(conversations), n_turns, len(layers), tm.identity.d_model))
    for turn in track(range(n_turns), n_turns, "conversation turns", progress):
        active = [i for i, c in enumerate(conversations) if turn < len(c)]
        prompts = [render_prompt(tm, conversations[i][: turn + 1], answers[i]) for i in active]
        if replay is not None:
            new = [replay[i][turn] for i in active]
        else:
            new = generate_from_texts(
                tm,
                prompts,
                max_new_tokens=max_new_tokens,
                seed=seed + turn,
                temperature=temperature,
                top_p=top_p,
            )
        rendered = [render_turn(tm, p, a) for p, a in zip(prompts, new, strict=True)]
        states = pool_turns(tm, rendered, layers, pooling, decay_half_life)
        for row, index in enumerate(active):
            answers[index].append(new[row])
            span = rendered[row].answer_span
            lengths[index].append(span[1] - span[0])
            pooled[index, turn] = states[row]
    return ConversationRun(answers, lengths, pooled)
