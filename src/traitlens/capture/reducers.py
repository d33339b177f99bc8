"""Streaming reducers: pooling weights, per-neuron firing counts and a streaming a95.

Everything here reduces over tokens as batches arrive, so memory grows with
layers × width, never with the number of tokens.
"""

from __future__ import annotations

import math

import torch

POOLINGS = ("mean", "last", "decay")


def pooling_weights(
    span_mask: torch.Tensor, poolings: tuple[str, ...], decay_half_life: float = 4.0
) -> torch.Tensor:
    """Per-token weights ``[n_poolings, batch, seq]`` that sum to 1 over each row's span.

    - ``mean``: uniform over the span;
    - ``last``: all weight on the span's last token;
    - ``decay``: exponential weights growing toward the end of the span,
      halving every ``decay_half_life`` tokens back (the "decay-weighted last
      answer tokens" aggregation of hidden-state fingerprinting work).
    Rows with an empty span get all-zero weights.
    """
    mask = span_mask.float()
    counts = mask.sum(-1, keepdim=True)
    rows = []
    for name in poolings:
        if name == "mean":
            rows.append(mask / counts.clamp(min=1))
        elif name == "last":
            # position of the last True per row: argmax over a ramp restricted to the mask
            ramp = torch.arange(1, mask.shape[-1] + 1, device=mask.device, dtype=mask.dtype)
            last = (mask * ramp).argmax(-1)
            onehot = torch.zeros_like(mask)
            onehot[torch.arange(mask.shape[0]), last] = 1.0
            rows.append(onehot * (counts > 0))
        elif name == "decay":
            # distance (in span tokens) from the span's last token
            from_end = mask.flip(-1).cumsum(-1).flip(-1) - 1
            weights = torch.pow(0.5, from_end / decay_half_life) * mask
            rows.append(weights / weights.sum(-1, keepdim=True).clamp(min=1e-12))
        else:
            raise ValueError(f"unknown pooling {name!r}; use one of {', '.join(POOLINGS)}")
    return torch.stack(rows)


class StreamingQuantile:
    """Per-neuron quantile estimate from a fixed-size histogram.

    The bin range is set from the first batch (with head-room); values outside
    land in the edge bins and the per-neuron running max/min replace the outer
    edges at read-out, so the estimate degrades gracefully rather than clipping.
    Error is bounded by one bin width inside the range. Memory: width × bins.
    """

    def __init__(self, width: int, bins: int = 256, device: torch.device | str = "cpu"):
        self.width = width
        self.bins = bins
        self.counts = torch.zeros(width * bins, dtype=torch.float64, device=device)
        self.max = torch.full((width,), -math.inf, dtype=torch.float64, device=device)
        self.min = torch.full((width,), math.inf, dtype=torch.float64, device=device)
        self.edges: torch.Tensor | None = None
        self._offsets = torch.arange(width, device=device) * bins

    def update(self, values: torch.Tensor) -> None:
        """Add ``values`` of shape ``[n_tokens, width]``."""
        if values.numel() == 0:
            return
        values = values.detach()
        if self.edges is None:
            lo, hi = float(values.min()), float(values.max())
            span = max(hi - lo, 1e-6)
            self.edges = torch.linspace(
                lo - 0.05 * span, hi + 1.0 * span, self.bins - 1, device=values.device,
                dtype=values.dtype,
            )
        index = torch.bucketize(values, self.edges.to(values.dtype))  # 0..bins-1
        flat = (index + self._offsets).reshape(-1)
        self.counts.index_add_(0, flat, torch.ones_like(flat, dtype=torch.float64))
        self.max = torch.maximum(self.max, values.max(0).values.double())
        self.min = torch.minimum(self.min, values.min(0).values.double())

    def quantile(self, q: float) -> torch.Tensor:
        """Estimated ``q``-quantile per neuron (linear interpolation inside the bin)."""
        if self.edges is None:
            return torch.full((self.width,), float("nan"), dtype=torch.float64)
        counts = self.counts.view(self.width, self.bins)
        cdf = counts.cumsum(-1) / counts.sum(-1, keepdim=True).clamp(min=1)
        bin_index = (cdf < q).sum(-1).clamp(max=self.bins - 1)
        edges = self.edges.double()
        lower = torch.cat([edges.new_tensor([-math.inf]), edges])[bin_index]
        upper = torch.cat([edges, edges.new_tensor([math.inf])])[bin_index]
        lower = torch.where(torch.isinf(lower), self.min, lower)
        upper = torch.where(torch.isinf(upper), self.max, upper)
        rows = torch.arange(self.width, device=counts.device)
        below = torch.where(bin_index > 0, cdf[rows, (bin_index - 1).clamp(min=0)], 0.0)
        inside = counts[rows, bin_index] / counts.sum(-1).clamp(min=1)
        frac = ((q - below) / inside.clamp(min=1e-12)).clamp(0, 1)
        return (lower + frac * (upper - lower)).cpu()
