"""Which prompts operationalize each trait pole?

This stage owns the text that every experiment runs on: Big Five trait definitions,
persona system prompts for the high and low pole of each trait, everyday situational
questions, questionnaire statements and forced-choice items, plus the loaders that
validate user-supplied versions of them and the builder that crosses personas with
questions into labelled contrastive prompts.
"""

from __future__ import annotations

from traitlens.data.contrastive import (
    NEUTRAL_PERSONA_ID,
    NEUTRAL_SYSTEM,
    build_contrastive_set,
    prompt_id,
)
from traitlens.data.loaders import (
    SUPPORTED_SUFFIXES,
    load_answers,
    load_forced_choices,
    load_personas,
    load_prompts,
    load_questions,
    load_statements,
    load_traits,
    save_jsonl,
    save_prompts,
    shipped_file,
)
from traitlens.data.schema import (
    NEUTRAL_INTENSITY,
    NEUTRAL_POLE,
    POLE_INTENSITIES,
    POLES,
    TRAIT_NAMES,
    TRAITS,
    AnswerRecord,
    ContrastivePrompt,
    ForcedChoice,
    Persona,
    Pole,
    PromptPole,
    Question,
    Statement,
    TraitInfo,
    normalize_trait,
    parse_traits,
)

__all__ = [
    "TRAITS",
    "TRAIT_NAMES",
    "POLES",
    "POLE_INTENSITIES",
    "NEUTRAL_POLE",
    "NEUTRAL_INTENSITY",
    "NEUTRAL_SYSTEM",
    "NEUTRAL_PERSONA_ID",
    "SUPPORTED_SUFFIXES",
    "Pole",
    "PromptPole",
    "TraitInfo",
    "Persona",
    "Question",
    "Statement",
    "ForcedChoice",
    "AnswerRecord",
    "ContrastivePrompt",
    "normalize_trait",
    "parse_traits",
    "load_traits",
    "load_personas",
    "load_questions",
    "load_statements",
    "load_answers",
    "load_forced_choices",
    "load_prompts",
    "save_jsonl",
    "save_prompts",
    "shipped_file",
    "build_contrastive_set",
    "prompt_id",
]
