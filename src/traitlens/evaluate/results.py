"""Typed results of the persona evaluation: what :func:`~traitlens.evaluate.interventions.measure`
records, what :func:`~traitlens.evaluate.interventions.effect` concludes from it.

Why dataclasses and not dicts: a measurement is written to a keyed row file and read
back by a later run (or by a sweep worker on another machine), and the summary feeds
the study table, the sweep ledger and the report. With a fixed set of named fields a
renamed or missing key fails at the boundary with a readable message instead of as a
``KeyError`` three modules later. ``to_dict`` writes exactly the JSON the rows and
``eval.json`` have always held (optional parts left out when absent), so rows measured
before the types existed are reused, and ``eval.json`` is byte-identical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from traitlens.artifact_io import Record
from traitlens.errors import ArtifactError


def _require(cls: type, data: Any, required: tuple[str, ...]) -> None:
    if not isinstance(data, dict):
        raise ArtifactError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
    missing = [k for k in required if k not in data]
    if missing:
        raise ArtifactError(
            f"{cls.__name__} lacks {', '.join(missing)}; the row was written by another "
            "version: delete it (or the run's eval/rows folder) and measure again"
        )


@dataclass(frozen=True)
class Interval(Record):
    """A confidence interval (NaN ends: not defined, e.g. fewer than two units)."""

    low: float = math.nan
    high: float = math.nan


@dataclass(frozen=True)
class Shift(Record):
    """Steered − baseline for one trait: mean shift, its CI, and (paired measures) the
    paired effect size and the number of matched units."""

    shift: float
    ci: Interval = field(default_factory=Interval)
    effect_size: float | None = None
    n: int | None = None

    OMIT_NONE = True


@dataclass(frozen=True)
class Success(Record):
    """Targeted success rate: of the held-out prompts that start on the opposite pole's
    side of ``boundary``, the fraction the intervention carried across."""

    rate: float
    ci: Interval
    n_eligible: int
    n_prompts: int
    boundary: float
    boundary_source: str | None = None

    OMIT_NONE = True


@dataclass
class Measurement(Record):
    """Raw per-prompt / per-item numbers of one model state (one row file's ``data``).

    ``neutral_readout`` is ``[prompt][trait]`` in the study's trait order;
    ``opposite_readout`` maps ``"T|pole"`` to that trait's readout on held-out prompts of
    the opposite persona; ``questionnaire`` / ``forced_choice`` map trait → item id →
    score. The optional parts are present only when measured (capability with
    ``EvalSets.capability`` and no system prompt; generation-based cost and answer scores
    when generation ran).
    """

    neutral_readout: list[list[float]]
    opposite_readout: dict[str, list[float]]
    questionnaire: dict[str, dict[str, float]]
    questionnaire_label_mass: float
    forced_choice: dict[str, dict[str, float]]
    perplexity: float
    capability: list[int] | None = None
    capability_norm: list[int] | None = None
    answers: list[str] | None = None
    distinct_2: float | None = None
    repetition: float | None = None
    answer_probe_scores: dict[str, list[float]] | None = None
    judge_scores: dict[str, list[float]] | None = None

    OMIT_NONE = True
    DEFAULTS = {"questionnaire_label_mass": math.nan}  # rows measured before it existed


@dataclass
class Effect(Record):
    """One measurement against the unsteered baseline (see ``interventions.effect``).

    The ``target_*`` fields and ``success`` are signed toward the row's target pole and
    present only when the row has a target; ``capability*``, ``distinct_2*``,
    ``repetition`` and the answer shifts only when both sides measured them.
    """

    readout_shift: dict[str, Shift]
    questionnaire_shift: dict[str, Shift]
    forced_choice_shift: dict[str, Shift]
    perplexity: float
    perplexity_ratio: float
    label_mass: float
    capability: float | None = None
    capability_change: Shift | None = None
    distinct_2: float | None = None
    distinct_2_delta: float | None = None
    repetition: float | None = None
    answer_probe_shift: dict[str, float] | None = None
    judge_shift: dict[str, float] | None = None
    success: Success | None = None
    target_readout_shift: float | None = None
    target_questionnaire_shift: float | None = None
    target_forced_choice_shift: float | None = None

    OMIT_NONE = True
    DEFAULTS = {"label_mass": math.nan}  # rows measured before it existed

    @classmethod
    def keys(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    def target_success(self) -> tuple[float, Interval]:
        """The success rate and its CI (NaN when the row has no target)."""
        if self.success is None:
            return math.nan, Interval()
        return self.success.rate, self.success.ci


def or_nan(value: float | None) -> float:
    """A figure that may be absent, as a float (NaN: not measured), for tables."""
    return math.nan if value is None else value


def row_columns(
    trait: str,
    pole: str,
    method: str,
    control: bool,
    size: dict[str, Any],
    dose: bool = False,
    system: str | None = None,
) -> dict[str, Any]:
    """A persona row's descriptive columns in ``eval.json`` order (also what its key
    records besides the edit)."""
    out: dict[str, Any] = {"trait": trait, "pole": pole, "method": method, "control": control}
    if dose:
        out["dose"] = True
    out.update(size)
    if system is not None:
        out["system"] = system
    return out


@dataclass
class PersonaResult:
    """One row of ``eval.json``: what was done (descriptive columns and the configured
    size), the key it was measured under, and its :class:`Effect`."""

    name: str
    trait: str
    pole: str
    method: str
    control: bool
    effect: Effect
    row_key: str
    size: dict[str, Any] = field(default_factory=dict)
    dose: bool = False
    system: str | None = None

    DESCRIPTIVE = ("name", "trait", "pole", "method", "control", "dose", "system", "row_key")

    def to_dict(self) -> dict[str, Any]:
        """Flat, as ``eval.json`` has always listed a row."""
        columns = row_columns(
            self.trait, self.pole, self.method, self.control, self.size, self.dose, self.system
        )
        return {"name": self.name, **columns, "row_key": self.row_key} | self.effect.to_dict()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PersonaResult:
        _require(cls, data, ("name", "trait", "pole", "method", "control", "row_key"))
        effect_keys = Effect.keys()
        size = {k: v for k, v in data.items() if k not in effect_keys and k not in cls.DESCRIPTIVE}
        return cls(
            data["name"],
            data["trait"],
            data["pole"],
            data["method"],
            bool(data["control"]),
            Effect.from_dict({k: v for k, v in data.items() if k in effect_keys}),
            data["row_key"],
            size,
            bool(data.get("dose", False)),
            data.get("system"),
        )


@dataclass
class EvalBaseline(Record):
    """The unsteered model's summary figures in ``eval.json``."""

    questionnaire: dict[str, float]
    forced_choice: dict[str, float]
    perplexity: float
    capability: float | None = None
    label_mass: float | None = None
