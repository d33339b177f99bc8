"""Typed records for every data file, so bad input fails at load time, not mid-experiment.

The Big Five are referred to everywhere by a one-letter code (O, C, E, A, N); users may
type full names in any case and :func:`normalize_trait` maps them to codes. The pydantic
models are frozen so a prompt set cannot be mutated after it has been labelled.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    field_validator,
    model_validator,
)

from traitlens.errors import DataError

__all__ = [
    "TRAITS",
    "TRAIT_NAMES",
    "FACETS",
    "POLES",
    "NEUTRAL_POLE",
    "NEUTRAL_INTENSITY",
    "POLE_INTENSITIES",
    "Pole",
    "PromptPole",
    "normalize_trait",
    "parse_traits",
    "TraitInfo",
    "Persona",
    "Question",
    "Statement",
    "ConceptItem",
    "ForcedChoice",
    "MCItem",
    "ContrastivePrompt",
    "AnswerRecord",
    "TraitTagged",
    "StatementLike",
    "LabelledPrompt",
]

Pole = Literal["high", "low"]
PromptPole = Literal["high", "low", "neutral"]

TRAITS: tuple[str, ...] = ("O", "C", "E", "A", "N")
"""The Big Five codes, in the conventional OCEAN order used for every table and plot."""

TRAIT_NAMES: dict[str, str] = {
    "O": "openness",
    "C": "conscientiousness",
    "E": "extraversion",
    "A": "agreeableness",
    "N": "neuroticism",
}
"""Code -> full lowercase name."""

FACETS: dict[str, tuple[str, ...]] = {
    "O": (
        "imagination",
        "artistic_interests",
        "emotionality",
        "adventurousness",
        "intellect",
        "liberalism",
    ),
    "C": (
        "self_efficacy",
        "orderliness",
        "dutifulness",
        "achievement_striving",
        "self_discipline",
        "cautiousness",
    ),
    "E": (
        "friendliness",
        "gregariousness",
        "assertiveness",
        "activity_level",
        "excitement_seeking",
        "cheerfulness",
    ),
    "A": ("trust", "morality", "altruism", "cooperation", "modesty", "sympathy"),
    "N": (
        "anxiety",
        "anger",
        "depression",
        "self_consciousness",
        "immoderation",
        "vulnerability",
    ),
}
"""Code -> the six facet labels (snake_case) the shipped concept item bank is written for.

Six narrow facets per domain let cross-validation hold out whole facets, so a probe must
decode the domain rather than memorize one facet's vocabulary. User banks may use any
facet labels; these are only the shipped bank's.
"""

POLES: tuple[Pole, ...] = ("high", "low")
"""The two ends of each trait that personas and prompts are labelled with."""

NEUTRAL_POLE: Literal["neutral"] = "neutral"
"""Pole label for baseline prompts that carry no persona."""

NEUTRAL_INTENSITY = 3
"""Intensity of a neutral prompt: the midpoint of the 1-5 scale."""

POLE_INTENSITIES: dict[str, tuple[int, ...]] = {"high": (4, 5), "low": (1, 2), "neutral": (3,)}
"""Allowed intensities per pole: 5/1 = extreme, 4/2 = moderate, 3 = neutral."""

# Common alternative spellings people type; mapped silently because the intent is clear.
_TRAIT_ALIASES: dict[str, str] = {
    "extroversion": "E",
    "open": "O",
    "conscientious": "C",
    "extravert": "E",
    "extrovert": "E",
    "agreeable": "A",
    "neurotic": "N",
}

_TRAIT_FIX = (
    "use one of O, C, E, A, N (or the full names "
    "openness, conscientiousness, extraversion, agreeableness, neuroticism)"
)

_KEYED_PLUS = {"+", "1", "+1", "plus", "pos", "positive", "forward", "f"}
_KEYED_MINUS = {"-", "-1", "r", "reverse", "reversed", "minus", "neg", "negative"}


def normalize_trait(value: str) -> str:
    """Map a trait code or name (any case, surrounding spaces ignored) to its code.

    Accepting both forms lets users write ``--traits openness,E`` on the CLI or
    ``Extraversion`` in a CSV without caring which convention the library uses.

    Raises:
        ValueError: ``value`` is not a Big Five trait; the message lists the valid values.
    """
    if not isinstance(value, str):
        raise ValueError(f"unknown trait {value!r} — {_TRAIT_FIX}")
    key = value.strip()
    if key.upper() in TRAITS:
        return key.upper()
    low = key.lower()
    for code, name in TRAIT_NAMES.items():
        if low == name:
            return code
    if low in _TRAIT_ALIASES:
        return _TRAIT_ALIASES[low]
    raise ValueError(f"unknown trait {value!r} — {_TRAIT_FIX}")


def parse_traits(spec: str | Sequence[str] | None) -> list[str]:
    """Turn a user trait selection into an ordered, de-duplicated list of codes.

    ``None`` means all five (the common case); a string is split on commas, so
    ``"O,C,E"`` and ``"openness, extraversion"`` both work. Order is preserved as given.

    Raises:
        DataError: the selection is empty or names an unknown trait.
    """
    if spec is None:
        return list(TRAITS)
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    items = [str(item).strip() for item in items if str(item).strip()]
    if not items:
        raise DataError(
            f"empty trait selection {spec!r} — name at least one trait, e.g. 'O,C,E', "
            "or omit the option to use all five"
        )
    codes: list[str] = []
    for item in items:
        try:
            code = normalize_trait(item)
        except ValueError as exc:
            raise DataError(f"in trait selection {spec!r}: {exc}") from None
        if code not in codes:
            codes.append(code)
    return codes


# Domain labels some public inventories use that are *not* one of the five as named here.
# Mapping them silently would hide a decision (Emotional Stability is neuroticism with
# every key flipped), so they are refused with the mapping spelled out.
_UNMAPPED_DOMAINS: dict[str, str] = {
    "emotional stability": (
        "it is the low pole of neuroticism: relabel those items N and flip each key (+ <-> -)"
    ),
    "stability": (
        "it is the low pole of neuroticism: relabel those items N and flip each key (+ <-> -)"
    ),
    "intellect": "it is IPIP's name for its openness domain: relabel those items O",
    "intellect/imagination": "it is IPIP's name for its openness domain: relabel those items O",
}


def _parse_domain(value: Any) -> str:
    if isinstance(value, str):
        label = " ".join(value.lower().split())
        if label in _UNMAPPED_DOMAINS:
            raise ValueError(
                f"domain {value!r} is not mapped automatically — {_UNMAPPED_DOMAINS[label]}"
            )
        numeric = label.lstrip("+-").isdigit()
    else:
        numeric = isinstance(value, int) and not isinstance(value, bool)
    if numeric:
        raise ValueError(
            f"domain {value!r} is a factor number, and inventories number their factors "
            f"differently — replace it with the domain: {_TRAIT_FIX}"
        )
    return normalize_trait(value)


def _int_to_str(value: Any) -> Any:
    # JSON files often number items and facets; an id 7 means the same as "7".
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _snake_case(value: str) -> str:
    _non_empty(value)
    snake = re.sub(r"[\W_]+", "_", value.lower()).strip("_")
    if not snake:
        raise ValueError(
            f"{value!r} has no letters or digits — name the facet, e.g. 'anxiety' or "
            "'self_discipline'"
        )
    return snake


def _non_empty(value: str) -> str:
    if not value:
        raise ValueError("is empty — fill it in (whitespace-only text counts as empty)")
    return value


def _check_intensity(pole: str, intensity: int) -> None:
    allowed = POLE_INTENSITIES[pole]
    if intensity not in allowed:
        shown = " or ".join(str(i) for i in allowed)
        raise ValueError(
            f"intensity {intensity} does not fit pole '{pole}' — use {shown} for '{pole}' "
            "(scale: 1 extremely low, 2 moderately low, 4 moderately high, 5 extremely high)"
        )


def _pole_parser(allowed: tuple[str, ...], fix: str) -> BeforeValidator:
    def parse(value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in allowed:
            return value.strip().lower()
        raise ValueError(f"unknown pole {value!r} — use {fix}")

    return BeforeValidator(parse)


def _parse_keyed(value: Any) -> str:
    key = str(value).strip().lower() if not isinstance(value, bool) else ""
    if key in _KEYED_PLUS:
        return "+"
    if key in _KEYED_MINUS:
        return "-"
    raise ValueError(
        f"unknown keying {value!r} — use '+' (agreeing means high) or '-' "
        "(reverse-keyed: agreeing means low); '1', '-1', 'R' and 'reverse' also work"
    )


def _json_list(value: Any) -> Any:
    """A CSV cell holding a JSON list (``["3", "4"]``) becomes that list."""
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"is not a JSON list of strings ({exc.msg})") from exc
    return value


def _parse_category(value: Any) -> str:
    if isinstance(value, str) and value.strip().lower() == NEUTRAL_POLE:
        return NEUTRAL_POLE
    try:
        return normalize_trait(value)
    except ValueError:
        raise ValueError(
            f"unknown category {value!r} — use 'neutral' or a trait: {_TRAIT_FIX}"
        ) from None


# Field types carrying their own parsing, so every record validates a trait, a pole or a
# piece of text the same way (and says the same fix) without repeating validators.
TraitCode = Annotated[str, BeforeValidator(normalize_trait)]
Text = Annotated[str, AfterValidator(_non_empty)]
Keyed = Annotated[Literal["+", "-"], BeforeValidator(_parse_keyed)]
Label = Annotated[str, BeforeValidator(_int_to_str), AfterValidator(_non_empty)]
PoleField = Annotated[Pole, _pole_parser(POLES, "'high' or 'low'")]
PromptPoleField = Annotated[
    PromptPole, _pole_parser((*POLES, NEUTRAL_POLE), "'high', 'low' or 'neutral'")
]


class _Record(BaseModel):
    """Shared config: frozen, trims whitespace, ignores extra columns users may keep."""

    model_config = ConfigDict(frozen=True, str_strip_whitespace=True, extra="ignore")


class TraitInfo(_Record):
    """What a trait means at each pole; used for labels in reports and judge rubrics."""

    code: TraitCode
    name: Text
    high_label: Text
    low_label: Text
    facets: tuple[str, ...]
    description_high: Text
    description_low: Text

    @field_validator("facets", mode="before")
    @classmethod
    def _facets(cls, value: Any) -> Any:
        # CSV cells cannot hold lists; allow "a; b; c".
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(";") if part.strip())
        return value

    @model_validator(mode="after")
    def _name_matches(self) -> TraitInfo:
        if self.name.lower() != TRAIT_NAMES[self.code]:
            raise ValueError(
                f"name '{self.name}' does not match code '{self.code}' — "
                f"use name '{TRAIT_NAMES[self.code]}' for code '{self.code}'"
            )
        return self


PolarT = TypeVar("PolarT", bound="_Polar")


class _Polar(_Record):
    """A record labelled with a pole and an intensity, which must agree (a high-pole
    persona is 4 or 5 on the 1–5 scale, a neutral prompt 3)."""

    if TYPE_CHECKING:  # declared by each subclass, in its own field order
        pole: str
        intensity: int

    @model_validator(mode="after")
    def _coherent(self: PolarT) -> PolarT:
        _check_intensity(self.pole, self.intensity)
        return self


class Persona(_Polar):
    """A system-prompt persona that pushes a model toward one pole of one trait."""

    id: Text
    trait: TraitCode
    pole: PoleField
    intensity: int
    text: Text


class Question(_Record):
    """An everyday situational question a persona-prompted model answers.

    ``category`` is the trait code the question most touches, or ``"neutral"``; it lets
    experiments check that a direction is not just "trait-relevant topic".
    """

    id: Text
    text: Text
    category: Annotated[str, BeforeValidator(_parse_category)] = NEUTRAL_POLE


class Statement(_Record):
    """A first-person questionnaire statement rated for agreement.

    ``keyed`` is ``"+"`` when agreeing indicates the high pole and ``"-"`` when it
    indicates the low pole (a reverse-keyed item).
    """

    id: Text
    trait: TraitCode
    text: Text
    keyed: Keyed


class ConceptItem(_Record):
    """A questionnaire item labelled with the Big Five domain and facet it measures.

    The concept design shows the model the item text itself and asks which domain it is
    about, so unlike :class:`Statement` the labels are the point: ``trait`` is the domain
    code, ``facet`` a snake_case label (``"Self-Consciousness"`` becomes
    ``"self_consciousness"``) that cross-validation groups by, and ``keyed`` says whether
    agreeing indicates the high (``"+"``) or low (``"-"``) pole. Domain labels that are a
    flipped or renamed domain ("Emotional Stability", "Intellect") and factor numbers are
    refused rather than guessed.
    """

    id: Label
    trait: Annotated[str, BeforeValidator(_parse_domain)]
    facet: Annotated[str, BeforeValidator(_int_to_str), AfterValidator(_snake_case)]
    keyed: Keyed
    text: Text


class ForcedChoice(_Record):
    """A situation with one high-pole and one low-pole answer, for choice-based scoring."""

    id: Text
    trait: TraitCode
    situation: Text
    high_option: Text
    low_option: Text


class MCItem(_Record):
    """A multiple-choice knowledge/reasoning question, for the capability cost of steering.

    Scored the way lm-evaluation-harness scores ``multiple_choice`` tasks: the
    model sees ``"Question: {question}\nAnswer:"`` and each choice is a
    continuation ``" {choice}"``; ``answer`` is the 0-based index of the right one.
    """

    id: Label
    topic: Text
    question: Text
    choices: Annotated[list[Text], BeforeValidator(_json_list)]
    answer: int

    @model_validator(mode="after")
    def _check_choices(self) -> MCItem:
        if len(self.choices) < 2:
            raise ValueError(f"needs at least 2 choices, got {len(self.choices)}")
        if len(set(self.choices)) != len(self.choices):
            raise ValueError(
                "choices must be distinct (two identical choices cannot be told apart)"
            )
        if not 0 <= self.answer < len(self.choices):
            raise ValueError(
                f"answer {self.answer} is not an index into its {len(self.choices)} choices "
                f"(0..{len(self.choices) - 1})"
            )
        return self


class ContrastivePrompt(_Polar):
    """One labelled chat prompt: persona as ``system``, question as ``user``.

    The persona text lives only in ``system`` and the question only in ``user`` so that
    activations read at the answer position can be attributed to the persona, not to
    different user text.
    """

    id: Text
    trait: TraitCode
    pole: PromptPoleField
    intensity: int
    persona_id: Text
    question_id: Text
    system: Text
    user: Text


class AnswerRecord(_Record):
    """One open-ended answer to score (``question`` optional; an empty answer scores NaN)."""

    answer: str
    question: str = ""
    id: str = ""


class TraitTagged(Protocol):
    """What every labelled record shares: its ``id`` and the ``trait`` code it belongs
    to. Structural types, so users' own objects (a dataclass, a named tuple) work wherever
    a traitlens record does; the protocols below add what each stage reads."""

    @property
    def id(self) -> str: ...

    @property
    def trait(self) -> str: ...


class StatementLike(TraitTagged, Protocol):
    """A keyed questionnaire item: :class:`Statement`, :class:`ConceptItem` or anything
    shaped like them."""

    @property
    def text(self) -> str: ...

    @property
    def keyed(self) -> str: ...


class LabelledPrompt(TraitTagged, Protocol):
    """What later stages need to know about a prompt; :class:`ContrastivePrompt` has it all
    (a structural type, so users' own prompt objects work too)."""

    @property
    def pole(self) -> str: ...

    @property
    def intensity(self) -> int: ...

    @property
    def persona_id(self) -> str: ...

    @property
    def question_id(self) -> str: ...
