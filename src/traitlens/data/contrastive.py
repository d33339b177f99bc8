"""Cross personas with questions into labelled prompts for finding trait directions.

A trait direction is estimated from the *difference* between activations under high-pole
and low-pole personas answering the *same* questions, so every selected question is paired
with every selected persona of both poles. The persona goes only into the system message
and the question only into the user message; nothing else differs between the two sides.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from typing import TypeVar

from traitlens.data.loaders import load_personas, load_questions
from traitlens.data.schema import (
    NEUTRAL_INTENSITY,
    NEUTRAL_POLE,
    POLES,
    TRAIT_NAMES,
    ContrastivePrompt,
    Persona,
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

    if personas is None or isinstance(personas, str | os.PathLike):
        persona_list = load_personas(personas)
    else:
        persona_list = list(personas)
    if questions is None or isinstance(questions, str | os.PathLike):
        question_list = load_questions(questions)
    else:
        question_list = list(questions)

    if category is not None:
        question_list = [q for q in question_list if q.category == category]
    if not question_list:
        where = f" with category '{category}'" if category else ""
        raise DataError(
            f"no questions{where} to build prompts from — add questions{where} to your "
            "questions file, or choose another question_category (None = all)"
        )
    chosen_questions = _subsample(question_list, n_questions, f"traitlens|questions|{seed}")

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
                for question in chosen_questions:
                    prompts.append(
                        ContrastivePrompt(
                            id=prompt_id(trait, pole, persona.id, question.id),
                            trait=trait,
                            pole=pole,
                            intensity=persona.intensity,
                            persona_id=persona.id,
                            question_id=question.id,
                            system=persona.text,
                            user=question.text,
                        )
                    )
        if include_neutral:
            for question in chosen_questions:
                prompts.append(
                    ContrastivePrompt(
                        id=prompt_id(trait, NEUTRAL_POLE, NEUTRAL_PERSONA_ID, question.id),
                        trait=trait,
                        pole=NEUTRAL_POLE,
                        intensity=NEUTRAL_INTENSITY,
                        persona_id=NEUTRAL_PERSONA_ID,
                        question_id=question.id,
                        system=NEUTRAL_SYSTEM,
                        user=question.text,
                    )
                )

    seen: set[str] = set()
    for prompt in prompts:
        if prompt.id in seen:
            raise DataError(
                f"duplicate prompt id '{prompt.id}' — persona and question ids must be unique "
                "within their files"
            )
        seen.add(prompt.id)
    return prompts
