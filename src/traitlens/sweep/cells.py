"""Sweep cells: one measured intervention each, named by what it is, keyed by its inputs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from traitlens.artifact_io import Record
from traitlens.provenance import data_digest
from traitlens.sweep.config import SweepConfig


@dataclass(frozen=True)
class Cell(Record):
    """One point of the grid. ``strength``/``gamma`` are unsigned; the pole gives the sign."""

    model: str
    trait: str
    pole: str
    method: str
    control: bool = False
    band: str | None = None
    strength: float | None = None
    gamma: float | None = None

    @property
    def name(self) -> str:
        size = (
            f"s{self.strength:g}"
            if self.strength is not None
            else f"g{self.gamma:g}"
            if self.gamma is not None
            else "-"
        )
        parts = [self.trait, self.pole, self.method, self.band or "-", size]
        return "__".join(parts) + ("__control" if self.control else "")

    @property
    def sign(self) -> float:
        return 1.0 if self.pole == "high" else -1.0

    def key(self, material: dict[str, Any]) -> str:
        """Digest of the cell and of what it is measured with (``material``: the model's
        stage keys and the evaluation settings): equal keys ⇔ the same measurement."""
        return data_digest({"cell": self.to_dict(), "material": material})


def expand(config: SweepConfig) -> list[Cell]:
    """Every cell of the grid, in a stable order (model, trait, pole, method, band, size);
    each edit followed by its control when ``config.controls``."""
    cells: list[Cell] = []
    for model in config.models:
        for trait in config.traits:
            for pole in config.poles:
                for method in config.methods:
                    if method == "prompt":
                        cells.append(Cell(model, trait, pole, "prompt"))
                        continue
                    sizes: list[dict[str, float]] = (
                        [{"gamma": g} for g in config.gammas]
                        if method == "neurons"
                        else [{"strength": s} for s in config.strengths]
                    )
                    for band in config.bands:
                        for size in sizes:
                            cells.append(Cell(model, trait, pole, method, False, band, **size))
                            if config.controls:
                                cells.append(Cell(model, trait, pole, method, True, band, **size))
    return cells
