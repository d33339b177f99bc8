"""A set of (layer, neuron) pairs with the statistics neuron edits need.

This is the contract between neuron selection (which produces it) and
steering (``NeuronEdit`` consumes it), so it lives apart from both.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SelectedNeurons:
    """Flat arrays, one entry per selected neuron (all 1-D, same length).

    ``delta``: P(act>0 | target pole) − P(act>0 | other pole) as selected
    (positive means selective for the pole this set was selected for);
    ``a95``: that neuron's 95th-percentile activation.
    """

    layers: torch.Tensor  # long [n]
    indices: torch.Tensor  # long [n]
    delta: torch.Tensor  # float [n]
    a95: torch.Tensor  # float [n]

    def __post_init__(self) -> None:
        sizes = {t.shape for t in (self.layers, self.indices, self.delta, self.a95)}
        if len(sizes) != 1 or len(next(iter(sizes))) != 1:
            raise ValueError(f"SelectedNeurons arrays must be 1-D and equal length, got {sizes}")

    def __len__(self) -> int:
        return int(self.layers.numel())

    def in_layers(self, layers: Iterable[int]) -> SelectedNeurons:
        """The neurons that sit in one of ``layers`` (order kept)."""
        wanted = torch.tensor(sorted({int(layer) for layer in layers}), dtype=self.layers.dtype)
        keep = torch.isin(self.layers, wanted)
        return SelectedNeurons(
            self.layers[keep], self.indices[keep], self.delta[keep], self.a95[keep]
        )

    @staticmethod
    def from_mask(
        mask: torch.Tensor, layers: Sequence[int], delta: torch.Tensor, a95: torch.Tensor
    ) -> SelectedNeurons:
        """The neurons where the bool ``mask`` ``[n_columns, d_mlp]`` is True, ordered by
        column then index; ``layers[j]`` is the model layer of column j, and ``delta`` /
        ``a95`` (same shape as ``mask``) give each neuron's values."""
        columns, indices = torch.nonzero(mask, as_tuple=True)
        layer_of = torch.tensor(list(layers), dtype=torch.long)
        return SelectedNeurons(
            layer_of[columns], indices.long(), delta[columns, indices], a95[columns, indices]
        )

    def per_layer_counts(self, n_layers: int) -> torch.Tensor:
        return torch.bincount(self.layers, minlength=n_layers)

    @staticmethod
    def empty() -> SelectedNeurons:
        z = torch.zeros(0)
        return SelectedNeurons(z.long(), z.long(), z, z)
