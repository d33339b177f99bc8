"""Cross personas with questions into labelled prompts for finding trait directions.

A trait direction is estimated from the *difference* between activations under high-pole
and low-pole personas answering the *same* questions, so every selected question is paired
with every selected persona of both poles. The persona goes only into the system message
and the question only into the user message; nothing else differs between the two sides.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from traitlens.data.loaders import load_personas, load_questions
from traitlens.data.schema import (
    NEUTRAL_INTENSITY,
    NEUTRAL_POLE,
    POLES,
    TRAIT_NAMES,
    ContrastivePrompt,
    Persona,
    PromptPole,
    Question,
    normalize_trait,
    parse_traits,
)
from traitlens.errors import DataError

__all__ = ["NEUTRAL_SYSTEM", "NEUTRAL_PERSONA_ID", "build_contrastive_set", "prompt_id"]

NEUTRAL_SYSTEM = "You are a helpful assistant."
"""System text of baseline prompts: a generic assistant with no personality cue."""

NEUTRAL_PERSONA_ID = "neutral"
"""persona_id of baseline prompts."""

T = TypeVar("T")
R = TypeVar("R", Persona, Question)


def prompt_id(trait: str, pole: str, persona_id: str, question_id: str) -> str:
    """The id of a contrastive prompt; readable and unique per (trait, pole, persona, question)."""
    return f"{trait}|{pole}|{persona_id}|{question_id}"


def _check_count(name: str, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataError(f"{name}={value!r} is invalid — use a whole number >= 1, or None for all")


def _subsample(items: Sequence[T], n: int | None, rng_key: str) -> list[T]:
    """Pick ``n`` items at random but keep them in file order, so output order is stable."""
    if n is None or n >= len(items):
        return list(items)
    # A string seed is hashed with SHA-512 by random.Random: stable across runs/processes.
    rng = random.Random(rng_key)
    keep = sorted(rng.sample(range(len(items)), n))
    return [items[i] for i in keep]


def _category(value: str | None) -> str | None:
    if value is None:
        return None
    if value.strip().lower() == NEUTRAL_POLE:
        return NEUTRAL_POLE
    try:
        return normalize_trait(value)
    except ValueError as exc:
        raise DataError(
            f"question_category {value!r}: {exc}; or use 'neutral', or None for all questions"
        ) from None


def build_contrastive_set(
    traits: str | Sequence[str] | None = None,
    personas: Sequence[Persona] | str | os.PathLike[str] | None = None,
    questions: Sequence[Question] | str | os.PathLike[str] | None = None,
    *,
    n_personas_per_pole: int | None = None,
    n_questions: int | None = None,
    question_category: str | None = None,
    include_neutral: bool = False,
    seed: int = 0,
) -> list[ContrastivePrompt]:
    """Build labelled (persona x question) prompts for each requested trait and pole.

    Args:
        traits: codes or names ("O,C" or ["openness", "C"]); None = all five.
        personas: persona records or a file path; None = the shipped personas.
        questions: question records or a file path; None = the shipped questions.
        n_personas_per_pole: randomly keep at most this many personas per trait and pole
            (None = all). Chosen independently per (trait, pole) from ``seed``, so adding
            a trait does not change the personas picked for the others.
        n_questions: randomly keep at most this many questions (None = all). The same
            questions are used for every trait and pole, which keeps the contrast paired.
        question_category: keep only questions of this category ("neutral" or a trait);
            None keeps all.
        include_neutral: also add one baseline prompt per trait and question with
            :data:`NEUTRAL_SYSTEM` (pole "neutral", intensity 3, persona_id "neutral").
        seed: makes subsampling reproducible; the same arguments always give the same set.

    Returns:
        Prompts ordered by trait, then pole (high, low, neutral), persona, question.

    Raises:
        DataError: unknown trait or category, no questions left after filtering, a trait
            with no personas for a pole, invalid counts, or duplicate prompt ids.
    """
    codes = parse_traits(traits)
    _check_count("n_personas_per_pole", n_personas_per_pole)
    _check_count("n_questions", n_questions)
    category = _category(question_category)
    persona_list = _records(personas, load_personas)
    chosen_questions = _chosen_questions(
        _records(questions, load_questions), category, n_questions, seed
    )

    prompts: list[ContrastivePrompt] = []
    for trait in codes:
        for pole in POLES:
            pool = [p for p in persona_list if p.trait == trait and p.pole == pole]
            if not pool:
                raise DataError(
                    f"no '{pole}' personas for trait {trait} ({TRAIT_NAMES[trait]}) — add "
                    f"records with trait '{trait}' and pole '{pole}' to your personas file, "
                    "or leave this trait out of the selection"
                )
            key = f"traitlens|personas|{seed}|{trait}|{pole}"
            for persona in _subsample(pool, n_personas_per_pole, key):
                prompts += _crossed(
                    trait, pole, persona.id, persona.intensity, persona.text, chosen_questions
                )
        if include_neutral:
            prompts += _crossed(
                trait,
                NEUTRAL_POLE,
                NEUTRAL_PERSONA_ID,
                NEUTRAL_INTENSITY,
                NEUTRAL_SYSTEM,
                chosen_questions,
            )
    _check_unique(prompts)
    return prompts


def _records(
    value: Sequence[R] | str | os.PathLike[str] | None, load: Callable[[Any], list[R]]
) -> list[R]:
    """Records given as such, or loaded from a file path (None: the shipped file)."""
    if value is None or isinstance(value, str | os.PathLike):
        return load(value)
    return list(value)


def _chosen_questions(
    questions: list[Question], category: str | None, n_questions: int | None, seed: int
) -> list[Question]:
    """The questions of ``category`` (all when None), subsampled to ``n_questions``."""
    if category is not None:
        questions = [q for q in questions if q.category == category]
    if not questions:
        where = f" with category '{category}'" if category else ""
        raise DataError(
            f"no questions{where} to build prompts from — add questions{where} to your "
            "questions file, or choose another question_category (None = all)"
        )
    return _subsample(questions, n_questions, f"traitlens|questions|{seed}")


def _crossed(
    trait: str,
    pole: PromptPole,
    persona_id: str,
    intensity: int,
    system: str,
    questions: Sequence[Question],
) -> list[ContrastivePrompt]:
    """One persona (its id, intensity and system text) crossed with every question."""
    return [
        ContrastivePrompt(
            id=prompt_id(trait, pole, persona_id, question.id),
            trait=trait,
            pole=pole,
            intensity=intensity,
            persona_id=persona_id,
            question_id=question.id,
            system=system,
            user=question.text,
        )
        for question in questions
    ]


def _check_unique(prompts: Sequence[ContrastivePrompt]) -> None:
    seen: set[str] = set()
    for prompt in prompts:
        if prompt.id in seen:
            raise DataError(
                f"duplicate prompt id '{prompt.id}' — persona and question ids must be unique "
                "within their files"
            )
        seen.add(prompt.id)
