"""Study configuration: defaults < profile < YAML file < CLI flags, resolved here only."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from traitlens.concepts.config import CONCEPT_PROFILES, ConceptConfig
from traitlens.errors import DataError
from traitlens.limits import MAX_GAMMA, MAX_STRENGTH, out_of_range
from traitlens.settings import read_yaml_mapping

DESIGNS = ("persona", "concept", "both")
"""How a study operationalizes a trait: system-prompt personas at both poles, questionnaire
items labelled by domain (concepts), or both in one run."""


class StudyConfig(BaseModel):
    """Every knob of a study. Sizes are per trait unless said otherwise."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    profile: str = "default"
    design: Literal["persona", "concept", "both"] = "both"
    traits: list[str] = Field(default_factory=lambda: ["O", "C", "E", "A", "N"])
    seed: int = 0
    batch_size: int = 16
    # capture
    n_questions: int = Field(24, ge=2)
    n_personas: int = Field(6, ge=1)
    max_new_tokens: int = Field(40, ge=4)
    # probes / neurons
    folds: int = Field(5, ge=2)
    threshold: float = Field(0.1, gt=0, lt=1)
    fdr: float = Field(0.05, gt=0, lt=1)
    # steering: the direction methods to build (any registered with
    # traitlens.steer.register_method) and those to evaluate, plus "neurons" (NPTI's edit)
    vector_methods: list[str] = Field(
        default_factory=lambda: ["mean_diff", "pca", "regression", "probe"]
    )
    eval_methods: list[str] = Field(default_factory=lambda: ["mean_diff", "neurons"])
    # per steered layer; a first quick study at 4 (×5 layers) cost ×6 to ×18,000 perplexity
    # bounded by the interventions' own limits, when the config is built (γ used to be
    # bounded by 50 here and by 10 in the edit, so gamma=20 ran every stage before the
    # evaluation and failed there)
    strength: float = 2.0
    gamma: float = 2.0
    # neuron edits use the FDR set when it has this many neurons in the band, else NPTI's rule
    min_fdr_neurons: int = Field(20, ge=0)
    # which selected neurons an edit touches: all of them (as NPTI does) or only those
    # inside the direction band
    neuron_layers: Literal["all", "band"] = "all"
    # early-middle window (CAA and repeng steer best there); narrow, because additions
    # accumulate in the residual stream: k layers at strength s push about k·s sd in total
    steer_band: tuple[float, float] = (1 / 3, 1 / 2)
    # evaluation
    eval_questions: int = Field(12, ge=2)
    eval_personas: int = Field(3, ge=1)
    statements_per_trait: int = Field(8, ge=2)
    forced_per_trait: int = Field(6, ge=1)
    templates: int = Field(3, ge=1)
    generation_prompts: int = Field(4, ge=0)
    statements_file: str | None = None  # e.g. an IPIP inventory CSV you supply
    forced_choice_file: str | None = None
    # capability cost: multiple-choice accuracy (lm-eval's scoring) of every steered row,
    # on this many items balanced over topics (0: off); your own set in capability_file
    capability_items: int = Field(100, ge=0)
    capability_file: str | None = None
    judge_url: str | None = None  # OpenAI-compatible endpoint rating open-ended answers
    judge_model: str = "default"
    dose_traits: list[str] = Field(default_factory=lambda: ["O", "C", "E", "A", "N"])
    dose_strengths: list[float] = Field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0, 8.0])
    dose_gammas: list[float] = Field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0, 8.0])
    # the concept design (questionnaire items → domain probes → concept neurons); its
    # traits, seed and batch size follow the study's
    items_file: str | None = None  # your own item bank (CSV/JSONL, IPIP column layouts too)
    concept: ConceptConfig = Field(default_factory=lambda: ConceptConfig.model_validate({}))

    def concept_config(self) -> ConceptConfig:
        """The concept design's settings with the study-wide ones applied."""
        update: dict[str, Any] = {
            "traits": self.traits,
            "seed": self.seed,
            "batch_size": self.batch_size,
        }
        if self.items_file is not None:
            update["items_file"] = self.items_file
        try:
            return ConceptConfig(**{**self.concept.model_dump(), **update})
        except ValidationError as exc:
            raise config_error(exc, "concept design configuration") from exc

    @field_validator("strength", "gamma", "dose_strengths", "dose_gammas")
    @classmethod
    def _sizes(cls, value: Any, info: ValidationInfo) -> Any:
        name = str(info.field_name)
        limit = MAX_GAMMA if "gamma" in name else MAX_STRENGTH
        for size in value if isinstance(value, list) else [value]:
            problem = out_of_range(name, size, 0.0, limit, low_open=True)
            if problem is not None:
                raise ValueError(problem)
        return value

    @field_validator("traits", "dose_traits")
    @classmethod
    def _traits(cls, value: list[str]) -> list[str]:
        from traitlens.data import parse_traits

        return parse_traits(value) if value else []

    @field_validator("vector_methods", "eval_methods")
    @classmethod
    def _methods(cls, value: list[str], info: ValidationInfo) -> list[str]:
        # the direction-method registry (plus NPTI's edit for evaluation), read now so a
        # method registered in Python is accepted like a built-in one
        from traitlens.steer import METHODS

        allowed = [*METHODS, "neurons"] if info.field_name == "eval_methods" else list(METHODS)
        bad = [m for m in value if m not in allowed]
        if bad:
            raise ValueError(f"unknown methods {bad}; use some of {allowed}")
        return value


PROFILES: dict[str, dict[str, Any]] = {
    # sized to finish on 2 CPU cores in well under 10 minutes (used by a CI test)
    "quick": {
        "n_questions": 4,
        "n_personas": 2,
        "max_new_tokens": 16,
        "folds": 2,
        "vector_methods": ["mean_diff", "probe"],
        "eval_questions": 4,
        "eval_personas": 1,
        "statements_per_trait": 2,
        "forced_per_trait": 2,
        "templates": 3,
        "generation_prompts": 0,
        "capability_items": 16,
        "dose_traits": ["E"],
        "dose_strengths": [1.0, 4.0],
        "dose_gammas": [4.0],
        "concept": CONCEPT_PROFILES["quick"],
    },
    # the test suite's shared study (tests/conftest.py::study_run): both designs, every
    # stage and report section, all five traits, at the smallest useful size
    "test": {
        "n_questions": 3,
        "n_personas": 2,  # grouped CV needs two personas per pole
        "max_new_tokens": 8,
        "folds": 2,
        "vector_methods": ["mean_diff"],
        "eval_questions": 2,
        "eval_personas": 1,
        "statements_per_trait": 2,
        "forced_per_trait": 1,
        "templates": 1,
        "generation_prompts": 0,
        "capability_items": 8,
        "dose_traits": ["E"],
        "dose_strengths": [4.0],
        "dose_gammas": [4.0],
        "concept": CONCEPT_PROFILES["test"],
    },
    "default": {},
}


def resolve_config(
    profile: str = "default",
    yaml_path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    concept_overrides: dict[str, Any] | None = None,
) -> StudyConfig:
    """Merge defaults < profile < YAML < overrides (``None`` overrides are ignored).

    ``concept_overrides`` (e.g. ``--fractions``) merge into the ``concept`` section the
    same way, so one YAML file serves ``traitlens study`` and ``traitlens concepts``."""
    if profile not in PROFILES:
        raise DataError(f"unknown profile {profile!r}; use one of {', '.join(PROFILES)}")
    values: dict[str, Any] = {"profile": profile, **PROFILES[profile]}
    if yaml_path is not None:
        loaded = read_yaml_mapping(yaml_path)
        if isinstance(loaded.get("concept"), dict):  # merged into the profile's, not replacing it
            loaded["concept"] = {**values.get("concept", {}), **loaded["concept"]}
        values.update(loaded)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    concept = {k: v for k, v in (concept_overrides or {}).items() if v is not None}
    if concept:
        values["concept"] = {**values.get("concept", {}), **concept}
    _drop_profile_templates(values, PROFILES[profile].get("concept") or {})
    try:
        return StudyConfig(**values)
    except ValidationError as exc:
        raise config_error(exc, "study configuration") from exc


def _drop_profile_templates(values: dict[str, Any], profile_concept: Any) -> None:
    """The instructed context has one template (the label question): a profile's item
    templates give way to it, while templates a user named still conflict (refused)."""
    concept = values.get("concept")
    if not isinstance(concept, dict) or concept.get("context") != "instructed":
        return
    for name in ("templates", "eval_template"):
        if name in concept and concept[name] is profile_concept.get(name):
            values["concept"] = concept = {k: v for k, v in concept.items() if k != name}


def config_error(exc: ValidationError, what: str) -> DataError:
    """One readable line per invalid setting, named by its path (e.g. concept.fractions)."""
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
    )
    return DataError(f"invalid {what} — {problems}")
