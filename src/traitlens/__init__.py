"""traitlens: find where an open-weight LLM keeps the Big Five traits, then measure and steer them.

The public API is re-exported here and nothing else is promised. Exports are
resolved lazily (PEP 562) so ``import traitlens`` and ``traitlens --help`` do
not pay for importing torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # the model
    "load_model": "traitlens.models.loading",
    "TraitModel": "traitlens.models.loading",
    # data
    "TRAITS": "traitlens.data",
    "build_contrastive_set": "traitlens.data",
    "load_items": "traitlens.data",
    # capture, probes, neurons
    "capture_activations": "traitlens.capture",
    "capture_run": "traitlens.capture",
    "fit_probes": "traitlens.probe",
    "select_neurons": "traitlens.neurons",
    # steering
    "trait_vector": "traitlens.steer",
    "TraitVector": "traitlens.steer",
    "VectorSet": "traitlens.steer",
    "AddDirection": "traitlens.steer",
    "NeuronEdit": "traitlens.steer",
    "SteeringSpec": "traitlens.steer",
    "steering": "traitlens.steer",
    "generate_steered": "traitlens.steer",
    # measurement and the two designs
    "run_questionnaire": "traitlens.evaluate",
    "run_forced_choice": "traitlens.evaluate",
    "run_study": "traitlens.study",
    "run_concepts": "traitlens.concepts",
    "ConceptConfig": "traitlens.concepts",
    # extension points and the one error type to catch
    "register_method": "traitlens.steer",
    "register_rule": "traitlens.neurons",
    "TraitlensError": "traitlens.errors",
}
"""The 25 names most users need; everything else is imported from its subpackage
(``traitlens.evaluate``, ``traitlens.steer``, …), as the docs show."""

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'traitlens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
