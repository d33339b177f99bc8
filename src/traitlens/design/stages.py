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
from typing import Any, TypeVar

from traitlens.artifact_io import check_writable
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

    @classmethod
    def open(
        cls,
        tm: TraitModel,
        out: str | Path,
        config: Any,
        log: Log,
        *,
        progress: bool = True,
        force: bool = False,
    ) -> StageContext:
        """A context for a run into ``out``, refusing an unwritable folder before any
        stage loads or computes anything."""
        run = Path(out)
        check_writable(run)
        return cls(tm, run, config, log, progress=progress, force=force)


@dataclass(frozen=True)
class Stage:
    """One step: ``name`` (the artifact's name in the context), what it does, and ``run``."""

    name: str
    title: str
    run: Callable[[StageContext], Any]


StageFn = TypeVar("StageFn", bound=Callable[[StageContext], Any])


class Plan:
    """A design's ordered stages, each declared where its function is defined::

        PERSONA = Plan()

        @PERSONA.stage("capture", "contrastive prompts, question and answer activations")
        def stage_capture(ctx: StageContext) -> CaptureRun: ...

    The order of declaration is the order of the run; ``plan.stages`` is the list a
    sweep or a CLI ``--until`` slices. A new design is a new ``Plan``; a new step is one
    decorated function, with no list elsewhere to keep in sync.
    """

    def __init__(self) -> None:
        self._stages: list[Stage] = []

    def stage(self, name: str, title: str) -> Callable[[StageFn], StageFn]:
        def register(run: StageFn) -> StageFn:
            if any(s.name == name for s in self._stages):
                raise ValueError(f"stage {name!r} is declared twice in this plan")
            self._stages.append(Stage(name, title, run))
            return run

        return register

    @property
    def stages(self) -> tuple[Stage, ...]:
        return tuple(self._stages)


def run_plan(stages: Sequence[Stage], context: StageContext, prefix: str = "") -> StageContext:
    """Run each stage in order, storing its artifact under its name."""
    for number, stage in enumerate(stages, start=1):
        context.log(f"[{prefix}{number}/{len(stages)}] {stage.name}: {stage.title}")
        context.artifacts[stage.name] = stage.run(context)
    return context
