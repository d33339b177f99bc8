"""A study is a plan: an ordered list of stages, each ``(context) → artifact``.

Each stage reads the artifacts of earlier stages from ``context.artifacts`` (by
stage name) and its own slice of the configuration, claims its output path by
input key (:func:`traitlens.provenance.claim`) and returns a typed artifact. A
design (persona, concept) is its list of stages; a sweep or a new design plugs in
by adding stages, not by editing a long function.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from traitlens.models.loading import TraitModel

Log = Callable[[str], None]


@dataclass
class StageContext:
    """What every stage may read: the model, the run folder, the configuration, the
    artifacts made so far, and how to report."""

    tm: TraitModel
    run: Path
    config: Any
    log: Log
    progress: bool = True
    force: bool = False
    artifacts: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        return self.artifacts[name]


@dataclass(frozen=True)
class Stage:
    """One step: ``name`` (the artifact's name in the context), what it does, and ``run``."""

    name: str
    title: str
    run: Callable[[StageContext], Any]


def run_plan(stages: Sequence[Stage], context: StageContext, prefix: str = "") -> StageContext:
    """Run each stage in order, storing its artifact under its name."""
    for number, stage in enumerate(stages, start=1):
        context.log(f"[{prefix}{number}/{len(stages)}] {stage.name}: {stage.title}")
        context.artifacts[stage.name] = stage.run(context)
    return context
