"""A trait mix — ``"E=+1,N=-0.5"`` — as the direction additions every exporter shares.

Baking, the lm-eval export and the capability check all take a run's vectors, a
strength per trait (spread units) and one layer band, and need the same checks
before the model loads: a trait the run lacks, a strength out of range, a layer
the model does not have.
"""

from __future__ import annotations

from pathlib import Path

from traitlens.errors import DataError
from traitlens.steer.interventions import AddDirection
from traitlens.steer.layers import band_layers, parse_layers
from traitlens.steer.vector_set import VectorSet

__all__ = ["mix_interventions", "describe_mix"]


def mix_interventions(
    run: str | Path,
    mix: dict[str, float],
    method: str = "mean_diff",
    layers: str | None = None,
) -> list[AddDirection]:
    """The run's ``method`` vector of each trait in ``mix`` at its strength, all on one
    layer band (``layers`` like ``"10-14"``; default: :func:`band_layers`). Reads only
    the vector files, so it runs — and fails clearly — before any model loads."""
    if not mix:
        raise DataError("the mix is empty; e.g. {'E': 1.0, 'N': -0.5}")
    vectors = VectorSet.load(Path(run))
    chosen = {trait: vectors.get(trait, method) for trait in mix}
    n_layers = next(iter(chosen.values())).identity.n_layers
    band = parse_layers(layers, n_layers) if layers else band_layers(n_layers)
    return [AddDirection(chosen[t], s, layers=tuple(band)) for t, s in mix.items() if s]


def describe_mix(interventions: list[AddDirection]) -> str:
    """``"E +1, N -0.5 at layers 10–14"``."""
    layers = interventions[0].layers or ()
    where = f" at layers {layers[0]}–{layers[-1]}" if layers else ""
    return ", ".join(f"{i.vector.trait} {i.strength:+g}" for i in interventions) + where
