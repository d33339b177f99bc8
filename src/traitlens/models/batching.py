"""Left-padded batches with explicit position ids.

With left padding, a model that derives positions from ``arange(seq)`` gives a
padded prompt different positions than the same prompt alone; passing
``position_ids = cumsum(mask) - 1`` makes a prompt's activations identical
alone and inside a padded batch (tested).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch


def left_pad(
    sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``input_ids``, ``attention_mask`` and ``position_ids``, each [batch, seq]."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if len(seq):
            input_ids[row, width - len(seq) :] = torch.as_tensor(seq, dtype=torch.long)
            attention_mask[row, width - len(seq) :] = 1
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return input_ids.to(device), attention_mask.to(device), position_ids.to(device)


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, so little compute goes to padding."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def forward_accepts(model: Any, name: str) -> bool:
    """Whether ``model.forward`` takes keyword ``name`` (argument names vary by version)."""
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def last_logits_kwargs(model: Any) -> dict[str, Any]:
    """Ask the model for the last position's logits only, where it supports that
    (``logits_to_keep`` in current transformers, ``num_logits_to_keep`` before):
    the vocabulary projection over every position would otherwise cost as much as
    several decoder layers (SmolLM2: 49k × 576 per token) and is never used."""
    for name in ("logits_to_keep", "num_logits_to_keep"):
        if forward_accepts(model, name):
            return {name: 1}
    return {}


MIN_SHARED_PREFIX = 8
"""Below this many shared tokens, the cache bookkeeping costs more than it saves."""


def common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """How many leading tokens every sequence shares."""
    first = sequences[0]
    length = min(len(s) for s in sequences)
    for position in range(length):
        token = first[position]
        if any(s[position] != token for s in sequences):
            return position
    return length


def returned_cache(output: Any) -> Any:
    """The KV cache a forward pass returned (its attribute name varies by version)."""
    from traitlens.errors import ModelError

    for name in ("cache", "past_key_values"):
        value = output.get(name) if hasattr(output, "get") else getattr(output, name, None)
        if value is not None:
            return value
    raise ModelError("the model returned no KV cache; call with share_prefix=False")


class SharedPrefix:
    """The KV cache of a prefix every prompt of a pass shares, computed once.

    ``run(ids, attn, pos)`` runs a left-padded batch of *suffixes* after the prefix:
    each row gets its own copy of the cache, the mask covers prefix + suffix (the
    suffix's left padding stays masked between the two) and positions continue
    from the prefix. Hooks see the prefix pass like any other forward pass of
    several tokens, so an intervention acting on every (or every prompt) position
    edits the prefix exactly as a full pass would. An empty prefix is no cache: ``run``
    is then a plain forward pass of the whole prompts (callers need no second branch).
    """

    def __init__(self, tm: Any, prefix: Sequence[int], extra: dict[str, Any]):
        self.tm, self.length, self.extra = tm, len(prefix), extra
        if not self.length:
            return
        # transformers 5.x renamed past_key_values to cache (the old name warns)
        self.cache_name = "cache" if forward_accepts(tm.model, "cache") else "past_key_values"
        ids = torch.tensor([list(prefix)], device=tm.device)
        out = tm.model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            position_ids=torch.arange(self.length, device=tm.device)[None],
            use_cache=True,
            **extra,
        )
        self.cache = returned_cache(out)

    def run(self, ids: torch.Tensor, attn: torch.Tensor, pos: torch.Tensor) -> Any:
        import copy

        if not self.length:
            return self.tm.model(
                input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False, **self.extra
            )
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(len(ids))
        attn = torch.cat([attn.new_ones((len(ids), self.length)), attn], dim=1)
        return self.tm.model(
            input_ids=ids,
            attention_mask=attn,
            position_ids=pos + self.length,
            use_cache=True,
            **{self.cache_name: cache},
            **self.extra,
        )
