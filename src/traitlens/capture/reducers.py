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


class ExactQuantile:
    """Exact per-neuron ``q``-quantile of a stream whose length ``n`` is known up front.

    Keeps only the ``n − ⌊(n − 1) q⌋`` largest values of each neuron (the two order
    statistics numpy's "linear" quantile interpolates between are among them): for the
    95th percentile that is 5 % of the tokens, merged per batch with ``torch.topk``, so
    the result equals ``torch.quantile(all_values, q, dim=0)`` without storing them.
    """

    def __init__(self, width: int, n: int, q: float = 0.95, device: torch.device | str = "cpu"):
        if n < 1:
            raise ValueError(f"an exact quantile needs the stream length n ≥ 1, got {n}")
        self.n, self.q = n, q
        self.k = n - math.floor((n - 1) * q)
        self.top = torch.empty((0, width), dtype=torch.float32, device=device)
        self.seen = 0

    def update(self, values: torch.Tensor) -> None:
        """Add ``values`` of shape ``[n_tokens, width]``."""
        self.seen += values.shape[0]
        merged = torch.cat([self.top, values.detach().float()])
        if merged.shape[0] > self.k:
            merged = torch.topk(merged, self.k, dim=0, sorted=False).values
        self.top = merged

    def quantile(self, q: float | None = None) -> torch.Tensor:
        """The ``q``-quantile per neuron (only the ``q`` given at construction is exact)."""
        if q is not None and q != self.q:
            raise ValueError(f"this reducer keeps what the {self.q} quantile needs, not {q}")
        if self.seen != self.n:
            raise ValueError(f"saw {self.seen} values per neuron, expected {self.n}")
        ordered = torch.sort(self.top.double(), dim=0, descending=True).values
        position = (self.n - 1) * self.q
        low = math.floor(position)
        lower = ordered[self.k - 1]  # ascending index ``low``
        upper = ordered[self.k - 2] if self.k >= 2 else lower  # ascending ``low + 1``
        return (lower + (position - low) * (upper - lower)).cpu()


class StreamingQuantile:
    """Per-neuron quantile estimate from a fixed-size histogram with shared bin edges.

    The range is set from the first batch with head-room; when a later batch
    falls outside it, the range grows and old counts move to the new bin that
    holds their old bin's centre (so nothing is clipped). Error is about one
    bin width of the final range. Memory: width × bins, whatever the token count.
    """

    def __init__(self, width: int, bins: int = 128, device: torch.device | str = "cpu"):
        self.width = width
        self.bins = bins
        self.counts = torch.zeros((width, bins), dtype=torch.int32, device=device)
        self.max = torch.full((width,), -math.inf, dtype=torch.float64, device=device)
        self.min = torch.full((width,), math.inf, dtype=torch.float64, device=device)
        self.edges: torch.Tensor | None = None  # bins + 1 increasing edges, float64
        self._offsets = torch.arange(width, device=device) * bins

    def _set_range(self, lo: float, hi: float) -> None:
        span = max(hi - lo, 1e-3)
        new_edges = torch.linspace(
            lo - 0.05 * span,
            hi + 0.5 * span,
            self.bins + 1,
            dtype=torch.float64,
            device=self.counts.device,
        )
        if self.edges is not None:
            centres = (self.edges[:-1] + self.edges[1:]) / 2
            target = torch.bucketize(centres, new_edges[1:-1]).clamp(0, self.bins - 1)
            moved = torch.zeros_like(self.counts)
            moved.index_add_(1, target, self.counts)
            self.counts = moved
        self.edges = new_edges

    def update(self, values: torch.Tensor) -> None:
        """Add ``values`` of shape ``[n_tokens, width]``."""
        if values.numel() == 0:
            return
        values = values.detach()
        column_max, column_min = values.max(0).values, values.min(0).values
        self.max = torch.maximum(self.max, column_max.double())
        self.min = torch.minimum(self.min, column_min.double())
        lo, hi = float(column_min.min()), float(column_max.max())
        if self.edges is None:
            self._set_range(lo, hi)
        elif lo < self.edges[0] or hi > self.edges[-1]:
            self._set_range(min(lo, float(self.edges[0])), max(hi, float(self.edges[-1])))
        assert self.edges is not None
        # uniform bins: the index is arithmetic (no binary search), and a scatter-add
        # into the persistent int32 buffer is the cheapest count we measured
        start = float(self.edges[0])
        inv_width = self.bins / float(self.edges[-1] - self.edges[0])
        index = ((values - start) * inv_width).long().clamp_(0, self.bins - 1)
        flat = (index + self._offsets).reshape(-1)
        self.counts.view(-1).scatter_add_(0, flat, torch.ones_like(flat, dtype=torch.int32))

    def quantile(self, q: float) -> torch.Tensor:
        """Estimated ``q``-quantile per neuron (linear interpolation inside the bin,
        clipped to the neuron's observed min/max)."""
        if self.edges is None:
            return torch.full((self.width,), float("nan"), dtype=torch.float64)
        counts = self.counts.double()
        n = counts.sum(-1, keepdim=True).clamp(min=1)
        cdf = counts.cumsum(-1) / n
        bin_index = (cdf < q).sum(-1).clamp(max=self.bins - 1)
        rows = torch.arange(self.width, device=counts.device)
        below = torch.where(bin_index > 0, cdf[rows, (bin_index - 1).clamp(min=0)], 0.0)
        inside = counts[rows, bin_index] / n[:, 0]
        frac = ((q - below) / inside.clamp(min=1e-12)).clamp(0, 1)
        lower, upper = self.edges[bin_index], self.edges[bin_index + 1]
        estimate = lower + frac * (upper - lower)
        return torch.minimum(torch.maximum(estimate, self.min), self.max).cpu()
