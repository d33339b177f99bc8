"""What a sweep covers: models × traits × poles × methods × layer bands × strengths/γ.

A sweep YAML names the grid; everything a cell is measured with (the contrastive
material, probes, vectors, neurons and held-out evaluation sets) comes from the
persona design's own stages, sized by a study profile (``quick`` by default) plus
``study:`` overrides, so a sweep cell is measured exactly like a study row.

Methods: any registered direction method (``mean_diff``, ``pca``, …), ``neurons``
(NPTI's edit, sized by γ), ``prompt`` (the held-out target-pole persona as system
prompt; one cell, no band or strength) and ``hybrid`` (that persona prompt *plus*
``hybrid_method``'s direction, which recent work finds beats either alone).
Strengths are in spread units per steered layer (model-independent); the pole
gives the sign.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from traitlens.errors import DataError
from traitlens.study.config import StudyConfig, config_error, resolve_config

PSEUDO_METHODS = ("neurons", "prompt", "hybrid")
Pole = Literal["high", "low"]
DEFAULT_POLES: tuple[Pole, ...] = ("high",)
SWEEP_STUDY_DEFAULTS: dict[str, Any] = {"generation_prompts": 2, "capability_items": 0}
"""Measurement sizes a sweep changes from its profile: two generated answers per cell
(for distinct-2) and no capability items (``study: {capability_items: 40}`` adds them)."""


class SweepConfig(BaseModel):
    """The grid and the measurement profile of one sweep."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    models: list[str] = Field(default_factory=lambda: ["embedded"], min_length=1)
    traits: list[str] = Field(default_factory=lambda: ["O", "C", "E", "A", "N"], min_length=1)
    poles: list[Pole] = Field(default_factory=lambda: list(DEFAULT_POLES), min_length=1)
    methods: list[str] = Field(
        default_factory=lambda: ["mean_diff", "neurons", "prompt", "hybrid"], min_length=1
    )
    hybrid_method: str = "mean_diff"
    bands: list[str] = Field(default_factory=lambda: ["7-9", "10-14", "15-19"])
    strengths: list[float] = Field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0, 8.0])
    gammas: list[float] = Field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0, 8.0])
    controls: bool = True
    """Each edit gets a control cell of the same size (random direction / random neurons)."""
    profile: str = "quick"
    study: dict[str, Any] = Field(default_factory=dict)
    # how each worker loads its models: --device on the command line picks the device;
    # bf16 and accelerate's device_map ("auto") for models bigger than one GPU
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    device_map: str | None = None
    seed: int = 0

    @field_validator("traits")
    @classmethod
    def _traits(cls, value: list[str]) -> list[str]:
        from traitlens.data import parse_traits

        return list(dict.fromkeys(parse_traits(value)))

    @field_validator("models", "poles")
    @classmethod
    def _unique(cls, value: list[Any]) -> list[Any]:
        return list(dict.fromkeys(value))  # a repeated entry would measure its cells twice

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: list[str]) -> list[str]:
        from traitlens.steer import METHODS

        allowed = [*METHODS, *PSEUDO_METHODS]
        bad = [m for m in value if m not in allowed]
        if bad:
            raise ValueError(f"unknown methods {bad}; use some of {allowed}")
        return list(dict.fromkeys(value))

    @field_validator("hybrid_method")
    @classmethod
    def _hybrid(cls, value: str) -> str:
        from traitlens.steer import METHODS

        if value not in METHODS:
            raise ValueError(f"unknown direction method {value!r}; use one of {list(METHODS)}")
        return value

    @field_validator("strengths", "gammas")
    @classmethod
    def _sizes(cls, value: list[float], info: ValidationInfo) -> list[float]:
        import math

        from traitlens.limits import MAX_GAMMA, MAX_STRENGTH

        # γ has the NPTI edit's own bound (it used to be checked against the strength's)
        limit = MAX_GAMMA if info.field_name == "gammas" else MAX_STRENGTH
        bad = [v for v in value if not (math.isfinite(v) and 0 < v <= limit)]
        if bad:
            raise ValueError(
                f"{bad} out of range: sizes are positive (the pole gives the sign) and at "
                f"most {limit:g}"
            )
        return sorted(set(value))

    @field_validator("bands")
    @classmethod
    def _bands(cls, value: list[str]) -> list[str]:
        from traitlens.steer.layers import parse_layers

        for band in value:
            if band != "auto":
                parse_layers(band, 10_000)  # syntax now; the range once the model is known
        return list(dict.fromkeys(value))

    # ---------------------------------------------------------------- derived

    def edits(self) -> list[str]:
        """The methods that need a band (all but the persona prompt)."""
        return [m for m in self.methods if m != "prompt"]

    def check_grid(self) -> None:
        """Refuse a grid with no cell in it, naming the empty axis."""
        needs_strength = [m for m in self.methods if m not in ("neurons", "prompt")]
        empty = []
        if self.edits() and not self.bands:
            empty.append("bands")
        if needs_strength and not self.strengths:
            empty.append(f"strengths (needed by {', '.join(needs_strength)})")
        if "neurons" in self.methods and not self.gammas:
            empty.append("gammas (needed by neurons)")
        if empty:
            raise DataError(f"the sweep grid is empty: no {' and no '.join(empty)} given")

    def study_config(self) -> StudyConfig:
        """The study settings cells are measured with (persona design, this grid's traits
        and the direction methods it steers with)."""
        from traitlens.steer import METHODS

        directions = [m for m in self.methods if m in METHODS]
        if "hybrid" in self.methods and self.hybrid_method not in directions:
            directions.append(self.hybrid_method)
        overrides = {
            **SWEEP_STUDY_DEFAULTS,
            **self.study,
            "design": "persona",
            "traits": self.traits,
            "seed": self.seed,
            "vector_methods": directions or ["mean_diff"],
        }
        return resolve_config(self.profile, overrides=overrides)


def load_sweep_config(path: str | Path) -> SweepConfig:
    """Read and validate a sweep YAML; one DataError naming every bad setting."""
    from traitlens.settings import read_yaml_mapping

    values = read_yaml_mapping(path)
    try:
        config = SweepConfig(**values)
    except ValidationError as exc:
        raise config_error(exc, f"sweep configuration {path}") from exc
    config.check_grid()
    config.study_config()  # a bad study: section fails now, not in a worker
    return config
