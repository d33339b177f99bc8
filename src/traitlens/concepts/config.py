"""Settings of the concept design (one pydantic model, validated before the model loads)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from traitlens.capture.reducers import POOLINGS

ITEM_TEMPLATES: dict[str, str] = {
    "bare": "{text}",
    "statement": "Statement: {text}",
    "self_report": 'Someone describes themselves like this: "{text}"',
}
"""How an item is shown to the model. Capture pools the *statement's* tokens only, so a
template changes the context the statement is read in, never what is pooled."""


INSTRUCTED = "instructed"
"""The capture/evaluation template of the instructed context: each item inside the label
question (after the k-shot turns), so probe, neurons, edits and label share one context."""

LABEL_INSTRUCTION = (
    "Which personality domain does this statement describe? Answer with one word: "
    '{options}.\nStatement: "{text}"'
)
"""The label question (first user turn of the label conversation): ``{options}`` is the
domain names in this item's order, ``{text}`` the statement. Override it with
``instruction``; it must contain both fields."""


def check_instruction(value: str) -> str:
    """Refuse an instruction the label question cannot be built from (before the model
    loads): it must name ``{options}`` and contain the item as ``{text}``, once each."""
    import string

    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(value) if f is not None]
    except ValueError as exc:
        raise ValueError(
            f"instruction {value[:60]!r} is not a valid template ({exc}); write literal braces "
            "as {{ and }}"
        ) from None
    if (
        fields.count("text") != 1
        or fields.count("options") != 1
        or set(fields) - {"text", "options"}
    ):
        raise ValueError(
            f"instruction {value[:60]!r} must contain the item as {{text}} and the domain names "
            f"as {{options}}, once each (found fields {fields}); e.g. "
            "'Which domain does this describe? {options}\\n\"{text}\"'"
        )
    return value


EditKind = Literal["boost", "suppress", "direction", "dpn"]
EDIT_KINDS: tuple[EditKind, ...] = ("boost", "suppress", "direction", "dpn")
"""``boost``/``suppress``: NPTI's neuron edits; ``direction``: the domain's centroid
direction; ``dpn``: DPN-LE's additive γ·Δ on its own neuron set (opt-in: it adds a
row and its control draws per domain, band and γ)."""
DEFAULT_EDITS: tuple[EditKind, ...] = ("boost", "suppress", "direction")


class ConceptConfig(BaseModel):
    """Everything the concept design reads; each stage's key covers its own slice.

    Sizes and defaults follow the hand trial the design came from (a 5-way domain
    probe per layer, NPTI's |δ| threshold one-vs-rest, fractions of the selected
    neurons boosted strongest-first) and are sized for 2 CPU cores.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    items_file: str | None = None
    traits: list[str] = Field(default_factory=lambda: ["O", "C", "E", "A", "N"])
    items_per_domain: int | None = Field(None, ge=4)
    templates: list[str] = Field(default_factory=lambda: list(ITEM_TEMPLATES))
    poolings: list[str] = Field(default_factory=lambda: ["mean", "last", "decay"])
    probe_pooling: str = "mean"
    held_out: float = Field(0.25, gt=0.0, lt=0.9)
    # "item": held-out items spread over every facet; "facet": whole facets held out
    held_out_unit: Literal["item", "facet"] = "item"
    folds: int = Field(5, ge=2, le=20)
    probe_c: float = Field(0.05, gt=0.0)
    layer_stride: int = Field(1, ge=1)
    threshold: float = Field(0.1, gt=0.0, lt=1.0)
    fdr: float = Field(0.05, gt=0.0, lt=1.0)
    # NPTI and the concept study edit the neurons their δ rule selects; the FDR-controlled
    # subset is reported beside it ("fdr" edits only that subset, "auto" falls back to δ
    # when fewer than min_fdr_neurons survive FDR)
    neuron_rule: Literal["npti", "npti_top", "fdr", "dpn", "auto"] = "npti"
    min_fdr_neurons: int = Field(20, ge=1)
    # permutations of the domain labels (whole facets) for the selection null; 0 = none
    null_permutations: int = Field(20, ge=0, le=1000)
    steer_band: tuple[float, float] = (1 / 3, 1 / 2)
    # where neuron edits act: every layer by default, as NPTI and the study do; a list
    # makes the band a factor of the design (each band is its own row, keyed)
    edit_bands: list[str] = Field(default_factory=lambda: ["all"])
    # which edits to run per domain (each with its control draws)
    edits: list[EditKind] = Field(default_factory=lambda: list(DEFAULT_EDITS), min_length=1)
    fractions: list[float] = Field(default_factory=lambda: [0.25, 1.0])
    gammas: list[float] = Field(default_factory=lambda: [2.0])
    # NPTI silences the domain's opposite neurons (those firing less for it) with
    # min(0, n) while boosting; off only to separate the two halves of the edit
    silence_opposite: bool = True
    # DPN-LE's selection: |Cohen's d| ≥ dpn_min_d and |mean difference| above the layer's
    # dpn_percentile-th percentile (the edit "dpn" and the rule "dpn" use it)
    dpn_min_d: float = Field(0.8, gt=0.0, le=10.0)
    dpn_percentile: float = Field(99.5, gt=0.0, lt=100.0)
    # NPTI's random mask: the share of boosted neurons kept on each forward pass (NPTI
    # 0.9, drawn afresh per pass, seeded); 1.0 boosts every selected neuron every pass
    edit_keep: float = Field(1.0, gt=0.0, le=1.0)
    suppress: Literal["clip", "zero"] = "clip"
    control_draws: int = Field(20, ge=2, le=200)
    # the generated label is read on the real edit and on the first label_draws control
    # draws (None: all of them); the probe readout is read on every draw. The label pass
    # costs 3-4x the probe pass, so by default the label level has 5 draws (its p-value
    # cannot go below 1/6) while the probe level has all of them; the report says so.
    label_draws: int | None = Field(5, ge=2)
    direction_strength: float = Field(1.0, gt=0.0, le=50.0)
    # labelled examples per domain, shown as earlier chat turns (balanced by construction)
    shots_per_domain: int = Field(1, ge=0, le=8)
    counterbalance_options: bool = True
    label_calibration: bool = False
    eval_template: str = "bare"
    # "bare": items read on their own (templates above) and the label asked separately;
    # "instructed": every stage reads each item inside the label question (k-shot turns,
    # rotated options), so the probe and the label come from one forward pass
    context: Literal["bare", "instructed"] = "bare"
    instruction: str = LABEL_INSTRUCTION
    eval_items_per_domain: int | None = Field(None, ge=2)
    likert_templates: int = Field(1, ge=0, le=3)
    seed: int = Field(0, ge=0)
    batch_size: int = Field(16, ge=1, le=1024)

    @field_validator("traits")
    @classmethod
    def _traits(cls, value: list[str]) -> list[str]:
        from traitlens.data import parse_traits

        traits = parse_traits(value)
        if len(traits) < 2:
            raise ValueError("the concept design decodes which domain an item is about: use ≥ 2")
        return traits

    @model_validator(mode="before")
    @classmethod
    def _instructed(cls, data: object) -> object:
        """The instructed context has one template, the label question itself."""
        if not isinstance(data, dict) or data.get("context") != INSTRUCTED:
            return data
        for name, single in (("templates", [INSTRUCTED]), ("eval_template", INSTRUCTED)):
            given = data.get(name)
            if given not in (None, single, INSTRUCTED):
                raise ValueError(
                    f"context 'instructed' reads every item inside the label question, so "
                    f"{name}={given!r} does not apply: leave {name} out (or use "
                    "context: bare to compare item templates)"
                )
            data = {**data, name: single}
        return data

    @field_validator("instruction")
    @classmethod
    def _instruction(cls, value: str) -> str:
        return check_instruction(value)

    @field_validator("templates", "poolings")
    @classmethod
    def _known(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if info.field_name == "templates" and value == [INSTRUCTED]:
            return value
        allowed = {"templates": list(ITEM_TEMPLATES), "poolings": list(POOLINGS)}[
            str(info.field_name)
        ]
        bad = [v for v in value if v not in allowed]
        if bad or not value:
            what = "item templates" if info.field_name == "templates" else "poolings"
            raise ValueError(f"unknown {what} {bad}; use some of {allowed}")
        return list(dict.fromkeys(value))

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, value: list[float]) -> list[float]:
        bad = [f for f in value if not 0.0 < f <= 1.0]
        if bad or not value:
            raise ValueError(
                f"fractions {bad} are outside (0, 1]: a fraction is the share of a domain's "
                "selected neurons edited, strongest first (e.g. 0.1, 0.25, 0.5, 1)"
            )
        return sorted(set(value))

    @field_validator("steer_band")
    @classmethod
    def _band(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 <= value[0] < value[1] <= 1.0:
            raise ValueError(
                "steer_band is (start, stop) as fractions of depth, 0 ≤ start < stop ≤ 1"
            )
        return value

    @field_validator("edit_bands")
    @classmethod
    def _edit_bands(cls, value: list[str]) -> list[str]:
        from traitlens.steer.layers import check_edit_band

        if not value:
            raise ValueError(
                "edit_bands is empty: name at least one band (all, early, middle, late or "
                "a layer list such as '10-14,20')"
            )
        for band in value:
            check_edit_band(band)
        return list(dict.fromkeys(b.strip() for b in value))

    @field_validator("gammas")
    @classmethod
    def _gammas(cls, value: list[float]) -> list[float]:
        from traitlens.limits import MAX_GAMMA

        bad = [g for g in value if not 0.0 < g <= MAX_GAMMA]
        if bad or not value:
            raise ValueError(
                f"gammas {bad} are outside (0, {MAX_GAMMA:g}]: γ multiplies each neuron's "
                "95th-percentile activation (NPTI uses 0.6-1.5), e.g. [1.0, 2.0]"
            )
        return sorted(set(value))

    @model_validator(mode="after")
    def _consistent(self) -> ConceptConfig:
        if self.probe_pooling not in self.poolings:
            raise ValueError(f"probe_pooling {self.probe_pooling!r} is not among poolings")
        if (self.context == INSTRUCTED) != (self.templates == [INSTRUCTED]):
            raise ValueError(
                "template 'instructed' is the instructed context: set context: instructed "
                "instead of naming the template"
            )
        if self.eval_template not in self.templates:
            raise ValueError(f"eval_template {self.eval_template!r} is not among templates")
        return self


CONCEPT_PROFILES: dict[str, dict[str, object]] = {
    # the demo's profile (4 minutes on 2 CPU cores): every claim, the boost and the
    # direction it is compared with, each with 20 draws; the suppression (a third of the
    # rows, and no claim rests on it) runs in the default profile
    "quick": {
        "items_per_domain": 24,
        "templates": ["bare", "statement"],
        "poolings": ["mean", "last"],
        "layer_stride": 3,
        "folds": 4,
        "fractions": [1.0],
        "edits": ["boost", "direction"],
        "likert_templates": 1,
    },
    # the smallest design whose outputs are still worth asserting on (the test suite's
    # one shared study): every stage and edit kind, two draws, one template, every 5th layer
    "test": {
        "items_per_domain": 24,
        "templates": ["bare"],
        "poolings": ["mean"],
        "layer_stride": 5,
        "folds": 2,
        "fractions": [1.0],
        "control_draws": 2,
        "label_draws": 2,
        "likert_templates": 0,
        "null_permutations": 2,
        "eval_items_per_domain": 2,
    },
    "default": {},
}
