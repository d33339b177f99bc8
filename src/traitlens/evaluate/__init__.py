"""Did behaviour move, and what did it cost? Measured locally, without a remote service.

- questionnaire "label generation": 1–5 ratings read from next-token log-probs,
  across templates and both option orders (:func:`run_questionnaire`);
- forced choice between one option per pole (:func:`run_forced_choice`);
- open-ended answers scored by the model's own probes (:func:`probe_scores`), by
  similarity to keyed-statement prototypes (:func:`fit_embedding_judge`), or
  any OpenAI-compatible judge endpoint (:class:`HttpJudge`);
- cost: perplexity of a neutral reference text, distinct-n and repetition;
- statistics: Cronbach's α, bootstrap CIs, effect sizes.

Measurement functions call ``tm.model(...)`` plainly, so wrapping them in an
intervention context measures the steered model.
"""

from traitlens.evaluate.cost import (
    PerplexityResult,
    TextCost,
    distinct_n,
    perplexity,
    repetition_rate,
    text_cost,
)
from traitlens.evaluate.embedding import (
    EmbeddingJudge,
    embedding_scores,
    fit_embedding_judge,
    model_embedder,
)
from traitlens.evaluate.forced_choice import (
    ChoiceResponse,
    ChoiceTraitSummary,
    ForcedChoiceResult,
    run_forced_choice,
)
from traitlens.evaluate.judge import (
    HttpJudge,
    JudgeError,
    JudgeReplyWarning,
    JudgeUnavailableError,
    parse_rating,
)
from traitlens.evaluate.logprobs import LabelDistribution, LabelTokens, label_distribution
from traitlens.evaluate.openended import OpenEndedScores, endpoint_scores, probe_scores
from traitlens.evaluate.questionnaire import (
    ORDERS,
    TEMPLATES,
    ItemResponse,
    LikertTemplate,
    QuestionnaireResult,
    TraitSummary,
    run_questionnaire,
)
from traitlens.evaluate.reference import NEUTRAL_TEXT
from traitlens.evaluate.results import (
    Effect,
    EvalBaseline,
    Interval,
    Measurement,
    PersonaResult,
    Shift,
    Success,
)
from traitlens.evaluate.stats import (
    ConfidenceInterval,
    bootstrap_ci,
    cohens_d,
    cronbach_alpha,
    paired_bootstrap_ci,
    paired_effect_size,
)

__all__ = [
    "NEUTRAL_TEXT",
    "Effect",
    "EvalBaseline",
    "Interval",
    "Measurement",
    "PersonaResult",
    "Shift",
    "Success",
    "ORDERS",
    "TEMPLATES",
    "ChoiceResponse",
    "ChoiceTraitSummary",
    "ConfidenceInterval",
    "EmbeddingJudge",
    "ForcedChoiceResult",
    "HttpJudge",
    "ItemResponse",
    "JudgeError",
    "JudgeReplyWarning",
    "JudgeUnavailableError",
    "LabelDistribution",
    "LabelTokens",
    "LikertTemplate",
    "OpenEndedScores",
    "PerplexityResult",
    "QuestionnaireResult",
    "TextCost",
    "TraitSummary",
    "bootstrap_ci",
    "cohens_d",
    "cronbach_alpha",
    "distinct_n",
    "embedding_scores",
    "endpoint_scores",
    "fit_embedding_judge",
    "label_distribution",
    "model_embedder",
    "paired_bootstrap_ci",
    "paired_effect_size",
    "parse_rating",
    "perplexity",
    "probe_scores",
    "repetition_rate",
    "run_forced_choice",
    "run_questionnaire",
    "text_cost",
]
