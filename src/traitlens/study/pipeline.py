"""``run_study``: the whole experiment on one model, resumable at every step.

A study runs one or both designs, each a plan of stages
(:data:`traitlens.study.persona.PERSONA_STAGES`,
:data:`traitlens.concepts.CONCEPT_STAGES`), into one run directory, then builds
``report.html``. Each stage loads its artifact when it exists for the same
inputs, so an interrupted study continues where it stopped: nothing finished is
recomputed and nothing is lost (each file is written atomically).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

from traitlens.artifact_io import read_json, write_json
from traitlens.design.stages import StageContext
from traitlens.errors import TraitlensError
from traitlens.models.loading import TraitModel
from traitlens.provenance import describe_changes
from traitlens.study.config import StudyConfig

Log = Callable[[str], None]


def _log_default(message: str) -> None:
    print(message, flush=True)


def _log_config_changes(run: Path, config: StudyConfig, log: Log) -> None:
    previous = run / "study_config.json"
    if not previous.exists():
        return
    try:
        old = read_json(previous)
    except TraitlensError:
        return
    old.pop("model", None)
    changes = describe_changes(old, config.model_dump(mode="json"))
    if changes != ["inputs changed"]:
        log("study configuration changed since the last run: " + "; ".join(changes))


def run_study(
    tm: TraitModel,
    out: str | Path,
    config: StudyConfig,
    *,
    log: Log = _log_default,
    progress: bool = True,
    force: bool = False,
) -> Path:
    """Run (or resume) the study's design(s) into ``out``; returns the report's path.

    Every artifact and every measured row is keyed by its inputs
    (:mod:`traitlens.provenance`): a rerun reuses exactly what is unchanged, measures
    what changed (and logs why), and refuses — unless ``force`` — to replace a stage
    artifact made from other inputs. Measured rows are stored under their key, so rows
    of another configuration are kept, never relabelled.
    """
    from traitlens.concepts import run_concepts
    from traitlens.report.concept_figures import draw_run_figures
    from traitlens.report.study_report import build_report
    from traitlens.study.persona import run_persona

    context = StageContext.open(tm, out, config, log, progress=progress, force=force)
    run = context.run
    _log_config_changes(run, config, log)
    started = time.perf_counter()
    if config.design in ("persona", "both"):
        run_persona(context)
    if config.design in ("concept", "both"):
        concept = run_concepts(
            tm, run, config.concept_config(), log=log, progress=progress, force=force
        )
        log("[concept] figures")
        draw_run_figures(concept)
    # written once every stage claim has passed, so it always describes the artifacts
    write_json(
        run / "study_config.json", {**config.model_dump(mode="json"), "model": tm.describe()}
    )
    log("[report] report.html")
    report = build_report(run)
    record: dict[str, object] = {
        "seconds_this_session": time.perf_counter() - started,
        "design": config.design,
    }
    for name in ("eval.json", "concepts/eval.json"):
        if (run / name).exists():
            record[f"hash:{name}"] = _digest(run / name)
    write_json(run / "study_done.json", record)
    return report


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


__all__ = ["run_study"]
