"""Fingerprint settings and the two named profiles (``quick`` and ``default``).

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

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from traitlens.capture.reducers import POOLINGS
from traitlens.errors import DataError
from traitlens.fingerprint.texts import AXES, SCENARIOS, resolve_axes

# The last tenth of the depth. Chosen by scripts/fingerprint_variants.py on
# SmolLM2-135M (19 questions × 5 axes): held-out paired accuracy rises with depth,
# from ~0.6 at mid-depth to ~0.9 over the last three layers; with mean pooling and
# the instruction in context. Run that script to choose layers for another model.
LAYER_FRACTIONS = (0.9, 0.95, 1.0)


@dataclass(frozen=True)
class FingerprintConfig:
    """Everything that determines a fingerprint; recorded in ``fingerprint.json``."""

    axes: tuple[str, ...] = AXES
    layers: tuple[int, ...] | None = None  # None: LAYER_FRACTIONS of the model's depth
    pooling: str = "mean"  # over answer tokens; "decay" weights the last ones
    decay_half_life: float = 4.0
    trait_questions: int | None = None  # per axis, from that trait's questions; None = all
    neutral_questions: int | None = None  # baseline questions; None = all neutral ones
    calibration_neutral: int = 8  # neutral questions also answered under both instructions
    seeds: int = 3  # baseline sampling seeds (test–retest)
    max_new_tokens: int = 48
    temperature: float = 0.8
    top_p: float = 0.95
    folds: int = 5  # question folds for held-out calibration
    bootstrap: int = 2000
    stability_splits: int = 20
    scenarios: tuple[str, ...] = ("weekend-plans", "team-conflict")
    drift_turns: int | None = None  # None: every scripted turn
    instructed_context: bool = True  # encode calibration answers as generated: instruction in view
    standardize: bool = True  # difference of means in per-dimension standardized coordinates
    regress_length: bool = False
    seed: int = 0
    batch_size: int = 16

    def __post_init__(self) -> None:
        object.__setattr__(self, "axes", resolve_axes(self.axes))
        checks = [
            (self.pooling in POOLINGS, f"pooling must be one of {', '.join(POOLINGS)}"),
            (self.decay_half_life > 0, "decay_half_life must be > 0"),
            (self.seeds >= 1, "seeds must be >= 1"),
            (self.max_new_tokens >= 4, "max_new_tokens must be >= 4"),
            (self.folds >= 2, "folds must be >= 2"),
            (self.bootstrap >= 100, "bootstrap must be >= 100"),
            (self.calibration_neutral >= 0, "calibration_neutral must be >= 0"),
            (
                self.trait_questions is None or self.trait_questions >= 1,
                "trait_questions must be >= 1",
            ),
            (
                self.neutral_questions is None or self.neutral_questions >= 2,
                "neutral_questions must be >= 2",
            ),
            (self.drift_turns is None or self.drift_turns >= 1, "drift_turns must be >= 1"),
            (
                all(s in SCENARIOS for s in self.scenarios),
                f"scenarios must be among {', '.join(SCENARIOS)}",
            ),
            (0 < self.temperature, "temperature must be > 0"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise DataError(f"bad fingerprint setting: {message}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FingerprintConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DataError(f"unknown fingerprint setting(s): {', '.join(unknown)}")
        values: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in data.items()
        }
        return cls(**values)

    def with_overrides(self, **overrides: Any) -> FingerprintConfig:
        """A copy with the non-None overrides applied (CLI flags left unset stay as profiled)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


PROFILES: dict[str, FingerprintConfig] = {
    "quick": FingerprintConfig(
        trait_questions=3,
        neutral_questions=6,
        calibration_neutral=3,
        seeds=2,
        max_new_tokens=24,
        folds=3,
        bootstrap=500,
        stability_splits=10,
        scenarios=("weekend-plans",),
        drift_turns=10,
    ),
    "default": FingerprintConfig(),
}


def profile(name: str) -> FingerprintConfig:
    """A named profile; DataError listing the names for anything else."""
    if name not in PROFILES:
        raise DataError(f"unknown profile {name!r}; use one of {', '.join(PROFILES)}")
    return PROFILES[name]


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
