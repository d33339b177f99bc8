"""Batched generation: left padding, KV cache on, greedy or seeded sampling.

Steering wraps this in an intervention context; capture-on-generated-text
calls it first and then captures over the answer tokens (as NPTI and
hidden-state fingerprinting do).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from traitlens.errors import DataError
from traitlens.models.batching import left_pad, length_sorted_batches
from traitlens.models.loading import TraitModel
from traitlens.progress import track


def generate_answers(
    tm: TraitModel,
    prompts: Sequence[Any],
    *,
    max_new_tokens: int = 48,
    do_sample: bool = False,
    seed: int = 0,
    temperature: float = 0.8,
    top_p: float = 0.95,
    batch_size: int = 16,
    progress: bool = True,
) -> list[str]:
    """Answer each prompt (anything with ``system`` and ``user``); returns the texts.

    Sampling is seeded per batch, so a fixed seed and batch size reproduce the
    same answers. Prompts are batched by length to keep padding small; the KV
    cache is used (``use_cache=True``).
    """
    if not prompts:
        raise DataError("generate_answers got no prompts")
    if max_new_tokens < 1:
        raise DataError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    formatted = [tm.format(p.system, p.user) for p in prompts]
    answers: list[str] = [""] * len(prompts)
    batches = length_sorted_batches([len(f.input_ids) for f in formatted], batch_size)
    eos = tm.tokenizer.eos_token_id
    kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        "pad_token_id": tm.tokenizer.pad_token_id,
        "use_cache": True,
    }
    if eos is not None:
        kwargs["eos_token_id"] = eos
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
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
