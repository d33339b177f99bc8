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
