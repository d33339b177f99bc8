"""Batched generation: left padding, KV cache on, greedy or seeded sampling.

Steering wraps this in an intervention context; capture-on-generated-text
calls it first and then captures over the answer tokens (as NPTI and
hidden-state fingerprinting do). Multi-turn callers format the conversation
so far (:meth:`~traitlens.models.chat.ChatFormatter.format_conversation`) and
pass the formatted prompts to :func:`generate_formatted`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, TypedDict

import torch

from traitlens.errors import DataError
from traitlens.models.batching import left_pad, length_sorted_batches
from traitlens.models.chat import FormattedPrompt
from traitlens.models.loading import TraitModel
from traitlens.progress import track

if sys.version_info >= (3, 11):
    from typing import Unpack
else:  # pragma: no cover - Python 3.10
    from typing_extensions import Unpack


class GenerateOptions(TypedDict, total=False):
    """The decoding options of :func:`generate_formatted` (its defaults apply), which
    :func:`generate_answers` and the steering helpers pass on unchanged."""

    max_new_tokens: int
    do_sample: bool
    seed: int
    temperature: float
    top_p: float
    batch_size: int
    progress: bool


def generate_answers(
    tm: TraitModel, prompts: Sequence[Any], **options: Unpack[GenerateOptions]
) -> list[str]:
    """Answer each prompt (anything with ``system`` and ``user``); returns the texts.

    ``options`` are :func:`generate_formatted`'s, which does the work. Sampling is
    seeded per batch, so a fixed seed and batch size reproduce the same answers.
    Prompts are batched by length to keep padding small; the KV cache is used
    (``use_cache=True``).
    """
    if not prompts:
        raise DataError("generate_answers got no prompts")
    return generate_formatted(tm, [tm.format(p.system, p.user) for p in prompts], **options)


def generate_formatted(
    tm: TraitModel,
    formatted: Sequence[FormattedPrompt],
    *,
    max_new_tokens: int = 48,
    do_sample: bool = False,
    seed: int = 0,
    temperature: float = 0.8,
    top_p: float = 0.95,
    batch_size: int = 16,
    keep_order: bool = False,
    progress: bool = True,
) -> list[str]:
    """Continue already-formatted prompts (e.g. multi-turn conversations); returns the
    new text of each, decoded without special tokens and stripped.

    Batch ``b`` is sampled after ``torch.manual_seed(seed + b)``, its rows drawing
    the random stream in batch order. By default prompts are grouped by length
    (little padding); ``keep_order=True`` batches them in the given order instead,
    so which random draws a prompt gets does not depend on the other prompts'
    lengths — for callers whose prompts grow at different rates (conversations,
    turn by turn) and whose cached answers must match a fresh run.
    """
    if not formatted:
        raise DataError("generate_formatted got no prompts")
    if max_new_tokens < 1:
        raise DataError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    answers: list[str] = [""] * len(formatted)
    if keep_order:
        order = list(range(len(formatted)))
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    else:
        batches = length_sorted_batches([len(f.input_ids) for f in formatted], batch_size)
    kwargs = _generate_kwargs(tm, max_new_tokens, do_sample, temperature, top_p)
    with torch.inference_mode():
        for number, batch in enumerate(track(batches, len(batches), "generating", progress)):
            ids, attn, _ = left_pad(
                [formatted[i].input_ids for i in batch], tm.tokenizer.pad_token_id, tm.device
            )
            if do_sample:
                torch.manual_seed(seed + number)
            out = tm.model.generate(input_ids=ids, attention_mask=attn, **kwargs)
            for row, index in enumerate(batch):
                answers[index] = tm.tokenizer.decode(
                    out[row, ids.shape[1] :], skip_special_tokens=True
                ).strip()
    return answers


def _generate_kwargs(
    tm: TraitModel, max_new_tokens: int, do_sample: bool, temperature: float, top_p: float
) -> dict[str, Any]:
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
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    return kwargs
