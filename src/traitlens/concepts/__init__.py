"""The concept design: questionnaire items → where each Big Five domain lives → concept
neurons → does steering them move the probe read-out and the generated label?

Stages (each a function of earlier artifacts and its config slice, see
:data:`CONCEPT_STAGES`): items and held-out split → capture over item tokens →
domain probes per layer → concept neurons → boost / suppress / direction edits
against matched controls, read at both levels. Its figures are drawn by the report
(:func:`traitlens.report.concept_figures.draw_run_figures` on the context
:func:`run_concepts` returns; ``traitlens study`` and ``traitlens concepts evaluate`` do it).
"""

from traitlens.concepts.capture import (
    ItemActivations,
    capture_items,
    format_items,
    items_capture_job,
)
from traitlens.concepts.claims import Claim, study_claims
from traitlens.concepts.config import CONCEPT_PROFILES, ITEM_TEMPLATES, ConceptConfig
from traitlens.concepts.evaluate import (
    ConceptMeasurement,
    ConceptSets,
    ControlComparison,
    compare_with_controls,
    concept_effect,
    measure_condition,
)
from traitlens.concepts.items import ItemSplit, choose_items
from traitlens.concepts.labels import (
    LabelPrompt,
    domain_labels,
    label_prompt,
    resolve_domain_tokens,
)
from traitlens.concepts.neurons import (
    concept_neurons_job,
    depth_thirds,
    matched_random,
    overlap,
    select_concept_neurons,
    strongest,
)
from traitlens.concepts.pipeline import (
    CONCEPT_STAGES,
    ConceptEvaluation,
    ConceptItems,
    run_concepts,
    summarize,
)
from traitlens.concepts.probes import DomainProbes, facet_folds, fit_domain_probes

__all__ = [
    "CONCEPT_PROFILES",
    "CONCEPT_STAGES",
    "ITEM_TEMPLATES",
    "Claim",
    "ConceptConfig",
    "ConceptEvaluation",
    "ConceptItems",
    "ConceptMeasurement",
    "ConceptSets",
    "ControlComparison",
    "DomainProbes",
    "ItemActivations",
    "ItemSplit",
    "LabelPrompt",
    "capture_items",
    "items_capture_job",
    "concept_neurons_job",
    "choose_items",
    "compare_with_controls",
    "concept_effect",
    "depth_thirds",
    "domain_labels",
    "facet_folds",
    "fit_domain_probes",
    "format_items",
    "label_prompt",
    "matched_random",
    "measure_condition",
    "overlap",
    "resolve_domain_tokens",
    "run_concepts",
    "select_concept_neurons",
    "strongest",
    "study_claims",
    "summarize",
]
