"""traitlens: find where an open-weight LLM keeps the Big Five traits, then measure and steer them.

The public API is re-exported here and nothing else is promised. Exports are
resolved lazily (PEP 562) so ``import traitlens`` and ``traitlens --help`` do
not pay for importing torch and transformers.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # models
    "load_model": "traitlens.models.loading",
    "TraitModel": "traitlens.models.loading",
    "ModelIdentity": "traitlens.artifact_io",
    "HookPoint": "traitlens.models.adapter",
    "hooks_installed": "traitlens.models.hooks",
    "generate_answers": "traitlens.models.generation",
    # data
    "build_contrastive_set": "traitlens.data",
    "load_personas": "traitlens.data",
    "load_questions": "traitlens.data",
    "load_statements": "traitlens.data",
    "load_forced_choices": "traitlens.data",
    "TRAITS": "traitlens.data",
    "TRAIT_NAMES": "traitlens.data",
    "ConceptItem": "traitlens.data",
    "FACETS": "traitlens.data",
    "load_items": "traitlens.data",
    "check_item_bank": "traitlens.data",
    # capture
    "capture": "traitlens.capture",
    "capture_run": "traitlens.capture",
    "Activations": "traitlens.capture",
    "NeuronStats": "traitlens.capture",
    "Prompt": "traitlens.capture",
    # probes and neurons
    "fit_probes": "traitlens.probe",
    "ProbeSet": "traitlens.probe",
    "select_neurons": "traitlens.neurons",
    "NeuronSet": "traitlens.neurons",
    "SelectedNeurons": "traitlens.neurons",
    # steering
    "TraitVector": "traitlens.steer",
    "VectorSet": "traitlens.steer",
    "trait_vector": "traitlens.steer",
    "trait_vectors": "traitlens.steer",
    "AddDirection": "traitlens.steer",
    "NeuronEdit": "traitlens.steer",
    "Ablate": "traitlens.steer",
    "Clamp": "traitlens.steer",
    "steering": "traitlens.steer",
    "generate_steered": "traitlens.steer",
    # evaluation and study
    "run_questionnaire": "traitlens.evaluate",
    "run_forced_choice": "traitlens.evaluate",
    "perplexity": "traitlens.evaluate",
    "probe_scores": "traitlens.evaluate",
    "fit_embedding_judge": "traitlens.evaluate",
    "model_embedder": "traitlens.evaluate",
    "embedding_scores": "traitlens.evaluate",
    "run_study": "traitlens.study",
    # the concept design
    "ConceptConfig": "traitlens.concepts",
    "run_concepts": "traitlens.concepts",
    "capture_items": "traitlens.concepts",
    "fit_domain_probes": "traitlens.concepts",
    "select_concept_neurons": "traitlens.concepts",
    "DomainProbes": "traitlens.concepts",
    # registries
    "register_method": "traitlens.steer",
    "register_rule": "traitlens.neurons",
    "resolve_config": "traitlens.study",
    # errors
    "TraitlensError": "traitlens.errors",
    "DataError": "traitlens.errors",
    "ModelError": "traitlens.errors",
    "HookPointError": "traitlens.errors",
    "ArtifactError": "traitlens.errors",
    "InterventionError": "traitlens.errors",
}

__all__ = ["__version__", *_EXPORTS]


class _Package(types.ModuleType):
    """The package module, guarding its public names against submodule imports.

    Importing ``traitlens.capture`` (the subpackage) makes Python bind the attribute
    ``traitlens.capture`` to that module, which would shadow the exported
    ``capture()`` function depending on import order. Submodules stay reachable
    through ``sys.modules`` and ``from traitlens.capture import ...``.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'traitlens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
