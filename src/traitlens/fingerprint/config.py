"""Fingerprint settings and the two named profiles (``quick`` and ``default``).

Resolved like the study's configuration (:mod:`traitlens.study.config`), in one
place: defaults < profile < YAML file < CLI flags (:func:`resolve_fingerprint_config`).

``quick`` is sized to finish in a few minutes on two CPU cores with the embedded
135M model (a smoke test with wide CIs); ``default`` is sized for a result worth
reading: every trait question, 8 neutral questions answered under both
instructions, 26 baseline questions × 3 sampling seeds, two 12-turn conversations.

Defaults follow a sweep on SmolLM2-135M (``scripts/fingerprint_variants.py``):
mean pooling beat decay and last-token pooling (held-out paired accuracy 0.88
vs 0.76 vs 0.6 at the best layer: 48-token answers end mid-sentence, so their
last tokens mostly carry local syntax), and encoding answers with the
instruction in view — the hidden states the model actually had while writing
them — beat re-encoding them without it (0.88 vs 0.65): a 135M model follows
persona instructions only loosely in *what* it writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from traitlens.capture.reducers import POOLINGS
from traitlens.errors import DataError
from traitlens.fingerprint.texts import AXES, SCENARIOS, resolve_axes
from traitlens.settings import read_yaml_mapping

# The last tenth of the depth. Chosen by scripts/fingerprint_variants.py on
# SmolLM2-135M (19 questions × 5 axes): held-out paired accuracy rises with depth,
# from ~0.6 at mid-depth to ~0.9 over the last three layers; with mean pooling and
# the instruction in context. Run that script to choose layers for another model.
LAYER_FRACTIONS = (0.9, 0.95, 1.0)


class FingerprintConfig(BaseModel):
    """Everything that determines a fingerprint; recorded in ``fingerprint.json``.

    Invalid values raise :class:`~traitlens.errors.DataError` naming each bad
    setting, whether the config comes from Python, a profile, a file or flags.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    axes: tuple[str, ...] = AXES
    layers: tuple[int, ...] | None = None  # None: LAYER_FRACTIONS of the model's depth
    pooling: str = "mean"  # over answer tokens; "decay" weights the last ones
    decay_half_life: float = Field(4.0, gt=0)
    trait_questions: int | None = Field(None, ge=1)  # per axis; None = all of that trait's
    neutral_questions: int | None = Field(None, ge=2)  # baseline questions; None = all neutral
    calibration_neutral: int = Field(8, ge=0)  # neutral questions also answered instructed
    seeds: int = Field(3, ge=1)  # baseline sampling seeds (test–retest)
    max_new_tokens: int = Field(48, ge=4)
    temperature: float = Field(0.8, gt=0)
    top_p: float = 0.95
    folds: int = Field(5, ge=2)  # question folds for held-out calibration
    bootstrap: int = Field(2000, ge=100)
    stability_splits: int = 20
    scenarios: tuple[str, ...] = ("weekend-plans", "team-conflict")
    drift_turns: int | None = Field(None, ge=1)  # None: every scripted turn
    instructed_context: bool = True  # encode calibration answers as generated: instruction in view
    standardize: bool = True  # difference of means in per-dimension standardized coordinates
    regress_length: bool = False
    seed: int = 0
    batch_size: int = Field(16, ge=1)

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise DataError(f"bad fingerprint setting — {_problems(exc)}") from None

    @field_validator("axes", mode="before")
    @classmethod
    def _axes(cls, value: Any) -> tuple[str, ...]:
        return resolve_axes(value)

    @field_validator("pooling")
    @classmethod
    def _pooling(cls, value: str) -> str:
        if value not in POOLINGS:
            raise ValueError(f"must be one of {', '.join(POOLINGS)}, not {value!r}")
        return value

    @field_validator("scenarios")
    @classmethod
    def _scenarios(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [name for name in value if name not in SCENARIOS]
        if unknown:
            raise ValueError(f"unknown {', '.join(unknown)}; use some of {', '.join(SCENARIOS)}")
        return value

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (tuples as lists), in field order."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FingerprintConfig:
        """The inverse of :meth:`to_dict`; unknown keys are refused."""
        return cls(**data)

    def with_overrides(self, **overrides: Any) -> FingerprintConfig:
        """A validated copy with the non-None overrides applied (unset CLI flags stay)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return FingerprintConfig(**{**self.model_dump(), **given})


def _problems(exc: ValidationError) -> str:
    """One line per bad setting: ``name: what is wrong`` (pydantic's prefixes dropped)."""
    problems = []
    for err in exc.errors():
        name = ".".join(str(part) for part in err["loc"]) or "config"
        message = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = f"unknown setting; known: {', '.join(FingerprintConfig.model_fields)}"
        problems.append(f"{name}: {message}")
    return "; ".join(problems)


PROFILES: dict[str, dict[str, Any]] = {
    "quick": {
        "trait_questions": 3,
        "neutral_questions": 6,
        "calibration_neutral": 3,
        "seeds": 2,
        "max_new_tokens": 24,
        "folds": 3,
        "bootstrap": 500,
        "stability_splits": 10,
        "scenarios": ("weekend-plans",),
        "drift_turns": 10,
    },
    "default": {},
}


def profile(name: str) -> FingerprintConfig:
    """A named profile; DataError listing the names for anything else."""
    return resolve_fingerprint_config(name)


def resolve_fingerprint_config(
    profile: str = "default",
    yaml_path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> FingerprintConfig:
    """Merge defaults < profile < YAML file < overrides (``None`` overrides are ignored)."""
    if profile not in PROFILES:
        raise DataError(f"unknown profile {profile!r}; use one of {', '.join(PROFILES)}")
    values: dict[str, Any] = dict(PROFILES[profile])
    if yaml_path is not None:
        values.update(read_yaml_mapping(yaml_path))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return FingerprintConfig(**values)


def resolve_layers(config: FingerprintConfig, n_layers: int) -> tuple[int, ...]:
    """The layer set for a model: explicit (negative counts from the end) or by depth fraction."""
    if config.layers is None:
        chosen = sorted(
            {min(n_layers - 1, int(round(f * (n_layers - 1)))) for f in LAYER_FRACTIONS}
        )
        return tuple(chosen)
    resolved = []
    for layer in config.layers:
        index = layer + n_layers if layer < 0 else layer
        if not 0 <= index < n_layers:
            raise DataError(
                f"layer {layer} is out of range: this model has {n_layers} layers "
                f"(valid: 0..{n_layers - 1}, or negative from the end)"
            )
        resolved.append(index)
    return tuple(sorted(set(resolved)))
