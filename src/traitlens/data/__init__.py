"""Which prompts operationalize each trait pole?

This stage owns the text that every experiment runs on: Big Five trait definitions,
persona system prompts for the high and low pole of each trait, everyday situational
questions, questionnaire statements and forced-choice items, the concept item bank
(questionnaire items labelled by domain, facet and key), plus the loaders that
validate user-supplied versions of them and the builder that crosses personas with
questions into labelled contrastive prompts.
"""

from __future__ import annotations

# Each module's ``__all__`` is its public API; the package re-exports exactly those names.
from traitlens.data import contrastive, loaders, schema
from traitlens.data.contrastive import *  # noqa: F403
from traitlens.data.loaders import *  # noqa: F403
from traitlens.data.schema import *  # noqa: F403

__all__ = [*schema.__all__, *contrastive.__all__, *loaders.__all__]
