"""The whole experiment in one call: capture → probes → neurons → vectors →
interventions → evaluation → report.html, resumable at every step."""

from traitlens.study.config import PROFILES, StudyConfig, resolve_config
from traitlens.study.persona import PERSONA_STAGES, PersonaEvaluation, PersonaRun, run_persona
from traitlens.study.pipeline import run_study

__all__ = [
    "PERSONA_STAGES",
    "PersonaRun",
    "run_persona",
    "PROFILES",
    "PersonaEvaluation",
    "StudyConfig",
    "resolve_config",
    "run_study",
]
