"""What the designs' evaluation rows are made of: an intervention's key description,
row names, the controls (random directions, matched random neurons) and flat CSV rows.
The keyed row store itself is :mod:`traitlens.rows`."""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from typing import Any

import torch

from traitlens.neurons.selected import SelectedNeurons
from traitlens.provenance import data_digest


def describe_intervention(intervention: Any) -> dict[str, Any]:
    """A JSON-able description of an intervention value, tensors as digests: what an
    evaluation row's key is computed over (same edit ⇔ same description)."""

    def value(item: Any) -> Any:
        if isinstance(item, torch.Tensor):
            return data_digest(tensors=[item])
        if is_dataclass(item) and not isinstance(item, type):
            return {
                "type": type(item).__name__,
                **{
                    f.name: value(getattr(item, f.name))
                    for f in fields(item)
                    if f.name not in ("identity", "source")
                },
            }
        if isinstance(item, (list, tuple)):
            return [value(v) for v in item]
        return item

    return dict(value(intervention))


def row_name(*parts: Any) -> str:
    text = "__".join(str(p) for p in parts)
    return text.replace("|", "-").replace("/", "-").replace(" ", "")


def control_seed(seed: int, trait: str) -> int:
    """Seed of a trait's random-direction control: stable, and different per trait."""
    return zlib.crc32(f"{trait.strip().upper()}|{seed}|random-direction".encode())


def random_vector_like(vector: Any, seed: int) -> Any:
    """A TraitVector with random unit directions and the same per-layer spread."""
    from traitlens.steer import TraitVector

    generator = torch.Generator().manual_seed(seed)
    directions = {
        layer: torch.randn(vector.d_model, generator=generator, dtype=torch.float64)
        for layer in vector.layers
    }
    spread = {layer: float(vector.spread[i]) for i, layer in enumerate(vector.layers)}
    return TraitVector.from_directions(
        vector.identity,
        directions,
        spread=spread,
        trait=vector.trait,
        method="random",
        source={"control_for": vector.method, "seed": seed},
    )


def matched_control(real: SelectedNeurons, random: SelectedNeurons) -> SelectedNeurons:
    """Random neurons (same count per layer) carrying the real set's δ values, so an
    NPTI boost of the control has the same magnitude as the real edit."""
    order_real = torch.argsort(real.layers, stable=True)
    order_random = torch.argsort(random.layers, stable=True)
    if not torch.equal(real.layers[order_real], random.layers[order_random]):
        raise ValueError("random control is not matched layer by layer")
    return SelectedNeurons(
        random.layers[order_random],
        random.indices[order_random],
        real.delta[order_real],
        random.a95[order_random],
    )


def flat_row(row: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts flattened to ``a.b`` columns (lists dropped), for CSV."""
    flat: dict[str, Any] = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flat_row(value, name + "."))
        elif isinstance(value, list):
            continue
        else:
            flat[name] = value
    return flat
