"""A study is a plan: an ordered list of stages, each ``(context) → artifact``.

Each stage reads the artifacts of earlier stages from ``context.artifacts`` (by
stage name) and its own slice of the configuration, and returns what it makes. A
stage that makes one typed artifact returns its :class:`~traitlens.provenance.Job`
(type, stage name, input key, how to compute it) and declares where it is saved
(``saves_in``); :func:`run_plan` alone then does key → claim → load-or-compute-and-save
(:func:`~traitlens.provenance.persist`) and the stage's declared follow-ups (figures,
log lines), so no stage function touches the disk for it. A design (persona,
concept) is its list of stages; a sweep or a new design plugs in by adding stages,
not by editing a long function.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from traitlens.artifact_io import check_writable
from traitlens.models.loading import TraitModel
from traitlens.provenance import Job, persist

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


Then = Callable[[StageContext, Any], None]


@dataclass(frozen=True)
class Stage:
    """One step: ``name`` (the artifact's name in the context), what it does, ``run``;
    where a returned :class:`~traitlens.provenance.Job` is saved (``saves_in``, below the
    run folder) and what follows once the artifact is there (``then``: figures, log
    lines), each called with the context and the artifact."""

    name: str
    title: str
    run: Callable[[StageContext], Any]
    saves_in: str = "."
    then: tuple[Then, ...] = ()

    def make(self, context: StageContext) -> Any:
        """The stage's artifact: a returned job is loaded when saved from the same inputs,
        else computed and saved (refused, unless ``force``, over one made from others)."""
        made = self.run(context)
        if isinstance(made, Job):
            out = context.run / self.saves_in
            made = persist(made, out, run_dir=context.run, force=context.force)
        for step in self.then:
            step(context, made)
        return made


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

    def __init__(self, saves_in: str = ".") -> None:
        self._stages: list[Stage] = []
        self.saves_in = saves_in

    def stage(
        self, name: str, title: str, *, saves_in: str | None = None, then: Sequence[Then] = ()
    ) -> Callable[[StageFn], StageFn]:
        """Declare the decorated function as the next stage; its job is saved in
        ``saves_in`` (default: the plan's folder, below the run folder)."""

        def register(run: StageFn) -> StageFn:
            if any(s.name == name for s in self._stages):
                raise ValueError(f"stage {name!r} is declared twice in this plan")
            folder = self.saves_in if saves_in is None else saves_in
            self._stages.append(Stage(name, title, run, folder, tuple(then)))
            return run

        return register

    @property
    def stages(self) -> tuple[Stage, ...]:
        return tuple(self._stages)


def run_plan(stages: Sequence[Stage], context: StageContext, prefix: str = "") -> StageContext:
    """Make each stage's artifact in order (:meth:`Stage.make`), storing it under its name."""
    for number, stage in enumerate(stages, start=1):
        context.log(f"[{prefix}{number}/{len(stages)}] {stage.name}: {stage.title}")
        context.artifacts[stage.name] = stage.make(context)
    return context
