"""Input keys: a result is reused only when everything it depends on is unchanged.

Every artifact a stage writes (capture, answers, probes, neurons, vectors, each
measured evaluation row, figures, the report) records a :class:`Provenance`: the
stage, a code version for that stage, and the *inputs* it read — model identity,
a digest of the data, the configuration fields it uses and the keys of the
upstream artifacts. The key is a hash of those inputs, so a changed input yields a
new key, and through the upstream keys everything downstream changes too.

A run directory records the key of each stage's current artifact in
``run.json`` (the run manifest). :func:`claim` is the one rule every stage applies
before it writes: the same key → reuse; an artifact made from other inputs that is
still consistent with its run → refuse with the fix (``--force`` or a new
``--out``), never overwrite silently; an artifact whose own upstream was replaced
(it is stale) → recompute, and say so.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, ParamSpec, TypeVar, cast

import numpy as np

from traitlens.artifact_io import (
    Artifact,
    ModelIdentity,
    Record,
    bound_to,
    check_writable,
    jsonable,
    read_json,
    write_json,
)
from traitlens.errors import ArtifactError

__all__ = [
    "STAGE_VERSIONS",
    "Provenance",
    "RunConflictError",
    "RunInUseError",
    "acquire_run",
    "release_run",
    "run_lock",
    "RunManifest",
    "claim",
    "data_digest",
    "describe_changes",
    "provenance",
    "record",
    "persist",
    "Job",
    "keyed_stage",
    "saved_key",
]

# Bump a stage's version when its code changes what it computes: old artifacts then
# stop matching and are recomputed (or refused) instead of being reused.
STAGE_VERSIONS: dict[str, int] = {
    "prompts": 1,
    "capture": 2,
    "answers": 2,
    "probes": 2,
    "neurons": 2,
    "vectors": 2,
    "eval_row": 2,
    "evaluation": 2,
    "figures": 1,
    "fingerprint": 1,
    "concepts": 1,
    "sweep_cell": 1,
}

MANIFEST = "run.json"


class RunConflictError(ArtifactError):
    """A run directory already holds this stage's artifact, made from other inputs."""


class RunInUseError(ArtifactError):
    """Another process is writing into the same run directory."""


LOCK_FILE = ".traitlens.lock"
_HELD: dict[Path, list[int]] = {}  # lock path -> [file descriptor, depth]


def acquire_run(run_dir: str | Path) -> None:
    """Take the run directory's lock for this process (re-entrant; released by
    :func:`release_run`, or by the OS when the process ends).

    Two processes writing into one run (``traitlens probe --run R`` and ``traitlens
    neurons --run R`` at once) would each read ``run.json``, change it and write it back
    whole, so one stage's entry would be lost: the second process is refused instead,
    with the first one's PID. The lock file is opened without following a symlink.
    """
    import os

    run = Path(run_dir)
    path = run.resolve() / LOCK_FILE
    held = _HELD.get(path)
    if held is not None:
        held[1] += 1
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no advisory locks (Windows): no guard
        return
    run.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as exc:
        raise ArtifactError(
            f"cannot open the lock {path} ({exc.strerror}); is {run} writable and "
            f"{LOCK_FILE} a plain file?"
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunInUseError(
            f"run {run} is in use by PID {owner} (another traitlens process is writing "
            "into it); wait for it to finish, or write to another --out"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _HELD[path] = [fd, 1]


def release_run(run_dir: str | Path, *, all_holds: bool = False) -> None:
    """Give back one hold of the run's lock (every hold with ``all_holds``)."""
    import os

    path = Path(run_dir).resolve() / LOCK_FILE
    held = _HELD.get(path)
    if held is None:
        return
    held[1] = 0 if all_holds else held[1] - 1
    if held[1] <= 0:
        import fcntl

        del _HELD[path]
        fcntl.flock(held[0], fcntl.LOCK_UN)
        os.close(held[0])


def release_all_runs() -> None:
    """Give back every run lock this process holds (the CLI does, when a command ends)."""
    for path in list(_HELD):
        release_run(path.parent, all_holds=True)


@contextmanager
def run_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold the run directory's lock for the block (see :func:`acquire_run`)."""
    acquire_run(run_dir)
    try:
        yield
    finally:
        release_run(run_dir)


def data_digest(data: Any = None, tensors: Iterable[Any] = ()) -> str:
    """sha256 (20 hex) of JSON-able ``data`` and the bytes of ``tensors``."""
    hasher = hashlib.sha256()
    hasher.update(json.dumps(jsonable(data), sort_keys=True, ensure_ascii=False).encode())
    for tensor in tensors:
        array = tensor.detach().cpu().numpy() if hasattr(tensor, "detach") else tensor
        hasher.update(np.ascontiguousarray(array).tobytes())
    return hasher.hexdigest()[:20]


@dataclass(frozen=True)
class Provenance(Record):
    """What an artifact was computed from, and the key over it."""

    stage: str
    key: str
    inputs: dict[str, Any] = field(default_factory=dict)

    @property
    def upstream(self) -> dict[str, str]:
        return dict(self.inputs.get("upstream") or {})


def provenance(
    stage: str,
    *,
    model: Any = None,
    config: Mapping[str, Any] | None = None,
    data: Any = None,
    tensors: Iterable[Any] = (),
    upstream: Mapping[str, str | None] | None = None,
) -> Provenance:
    """The :class:`Provenance` of a ``stage`` artifact computed from these inputs.

    ``model``: a ``ModelIdentity`` (its digest, and its dtype unless float32) or a digest
    string;
    ``config``: the configuration fields the stage reads (recorded readably, so a
    refusal can say what changed); ``data``/``tensors``: the data it reads (only a
    digest is recorded); ``upstream``: ``{stage: key}`` of the artifacts it reads.
    """
    kind = stage.split(".")[0]  # "capture.question" is a capture
    if kind not in STAGE_VERSIONS:
        raise KeyError(f"unknown stage {stage!r}; add it to STAGE_VERSIONS")
    digest = getattr(model, "digest", model)
    dtype = getattr(model, "dtype", "")
    if dtype and dtype != "float32":
        # the same weights run in another precision give other activations: a result
        # computed in bfloat16 is not the float32 one (float32 keys are the keys of old runs)
        digest = f"{digest}@{dtype}"
    inputs: dict[str, Any] = {
        "version": STAGE_VERSIONS[kind],
        "model": digest,
        "config": jsonable(dict(config or {})),
        "data": data_digest(data, tensors) if data is not None or tensors else None,
        "upstream": {k: v for k, v in sorted((upstream or {}).items())},
    }
    text = json.dumps({"stage": stage, **inputs}, sort_keys=True, ensure_ascii=False)
    return Provenance(stage, hashlib.sha256(text.encode()).hexdigest()[:20], inputs)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): value}


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "…"


def describe_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Readable differences between two ``inputs`` dicts ("strength 2.0 → 1.0")."""
    before, after = _flatten(old), _flatten(new)
    changes = []
    for name in sorted(set(before) | set(after)):
        if before.get(name) == after.get(name):
            continue
        label = name.removeprefix("config.")
        if name == "data":
            changes.append("data changed")
        elif name.endswith("held_out_material"):
            changes.append("held-out material changed")
        elif name == "version":
            changes.append(f"code version {before.get(name)} → {after.get(name)}")
        elif name.startswith("upstream."):
            changes.append(f"{label.removeprefix('upstream.')} artifact changed")
        elif name == "model":
            changes.append(f"model {before.get(name)} → {after.get(name)}")
        else:
            changes.append(f"{label} {_short(before.get(name))} → {_short(after.get(name))}")
    return changes or ["inputs changed"]


class RunManifest:
    """``run.json``: the current key of every stage artifact in a run directory."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run = Path(run_dir)
        self.path = self.run / MANIFEST
        self.stages: dict[str, Provenance] = {}
        if self.path.exists():
            data = read_json(self.path)
            try:
                self.stages = {k: Provenance.from_dict(v) for k, v in data["stages"].items()}
            except (KeyError, TypeError, AttributeError) as exc:
                raise ArtifactError(
                    f"{self.path} is not a traitlens run manifest; delete it (and re-run with "
                    "--force) or use a new --out"
                ) from exc

    def get(self, stage: str) -> Provenance | None:
        return self.stages.get(stage)

    def record(self, stage: str, prov: Provenance) -> None:
        self.stages[stage] = prov
        write_json(self.path, {"stages": {k: v.to_dict() for k, v in self.stages.items()}})

    def is_stale(self, prov: Provenance) -> bool:
        """True when an upstream artifact ``prov`` was made from is no longer current."""
        for stage, key in prov.upstream.items():
            current = self.stages.get(stage)
            if current is not None and current.key != key:
                return True
        return False


def claim(
    run_dir: str | Path,
    stage: str,
    new: Provenance,
    existing_key: str | None,
    *,
    exists: bool,
    force: bool = False,
    what: str | None = None,
    log: Callable[[str], None] | None = None,
    existing_inputs: Mapping[str, Any] | None = None,
) -> bool:
    """Decide whether ``stage`` may reuse (True) or must (re)write (False) its artifact.

    ``exists``: an artifact of this stage is on disk; ``existing_key``: the key it
    records (None when it records none, e.g. made by an older traitlens). Raises
    :class:`RunConflictError` instead of replacing an artifact made from other inputs
    that is still consistent with the run — unless ``force``; ``existing_inputs``
    (when known) lets the message say what differs. Call :func:`record` after writing.
    """
    manifest = RunManifest(run_dir)
    name = what or stage
    if not exists:
        return False
    if existing_key == new.key:
        if manifest.get(stage) is None or manifest.get(stage).key != new.key:  # type: ignore[union-attr]
            manifest.record(stage, new)
        return True
    old = manifest.get(stage)
    if force:
        if log:
            log(f"  {name}: replacing the artifact in {run_dir} (--force)")
        return False
    if old is not None and old.key == existing_key and manifest.is_stale(old):
        if log:
            log(f"  {name}: its upstream artifact was replaced — recomputing")
        return False
    if old is not None and old.key == existing_key:
        existing_inputs = old.inputs
    if existing_inputs is not None:
        changes = "; ".join(describe_changes(existing_inputs, new.inputs))
        reason = f"made from other inputs ({changes})"
    elif existing_key is None:
        reason = "with no input key on record (made by an older traitlens or by hand)"
    else:
        reason = "made from other inputs"
    raise RunConflictError(
        f"{run_dir} already holds a {name} {reason}; nothing was changed. Write to a new "
        "--out, or pass --force to replace it (what depends on it is then recomputed)"
    )


def saved_key(path: str | Path) -> tuple[bool, str | None]:
    """``(exists, key)`` of the artifact whose JSON is ``path``: whether a readable one is
    there, and the input key it records (None when it records none). An unreadable file
    counts as absent: it holds nothing worth keeping and is recomputed."""
    path = Path(path)
    if not path.exists():
        return False, None
    try:
        meta = read_json(path)
    except ArtifactError:
        return False, None

    if not bound_to(path, meta):  # tensors of another write beside it: nothing to reuse
        return False, None
    raw_config = meta.get("config")
    config: dict[str, Any] = raw_config if isinstance(raw_config, dict) else {}
    for holder in (meta.get("provenance"), config.get("provenance")):
        if isinstance(holder, dict) and holder.get("key"):
            return True, str(holder["key"])
    key = meta.get("key") or config.get("inputs_key") or config.get("cache_key")
    return True, None if key is None else str(key)


# where each stage's artifact records its key, relative to the run directory
STAGE_FILES: dict[str, str] = {
    "prompts": "prompts.jsonl",
    "capture.question": "activations/question/activations.json",
    "answers": "answers.json",
    "capture.answer": "activations/answer/activations.json",
    "probes": "probes.json",
    "neurons": "neurons.json",
    "vectors": "vectors.json",
    "evaluation": "eval.json",
    "concepts.items": "concepts/items.json",
    "concepts.capture": "concepts/activations/item_activations.json",
    "concepts.probes": "concepts/probes.json",
    "concepts.neurons": "concepts/neurons.json",
    "concepts.evaluation": "concepts/eval.json",
}


def record(run_dir: str | Path, stage: str, prov: Provenance) -> None:
    """Record ``prov`` as the current artifact of ``stage`` in the run manifest."""
    RunManifest(run_dir).record(stage, prov)


def keyed_stage(
    run_dir: str | Path,
    stage: str,
    prov: Provenance,
    json_path: str | Path,
    *,
    load: Callable[[], Any],
    compute: Callable[[], Any],
    force: bool = False,
    what: str | None = None,
    log: Callable[[str], None] | None = None,
) -> Any:
    """The one claim-or-compute step of every stage: reuse the artifact at ``json_path``
    when its key is ``prov.key`` (``load()``), else check it may be replaced
    (:func:`claim`), ``compute()`` (which writes it) and record ``prov`` in the manifest."""
    # claim -> compute -> record under the run's lock: run.json is read and rewritten
    # whole, so two processes interleaving here would lose one stage's entry
    with run_lock(run_dir):
        exists, saved = saved_key(json_path)
        if claim(run_dir, stage, prov, saved, exists=exists, force=force, what=what, log=log):
            return load()
        result = compute()
        record(run_dir, stage, prov)
        return result


ArtifactT = TypeVar("ArtifactT", bound="Artifact")


@dataclass(frozen=True)
class Job(Generic[ArtifactT]):
    """One artifact to make: its type, its stage, the key over everything it reads and
    how to compute it. The library builds jobs and computes them (``fit_probes(...)``
    is ``probes_job(...).compute()``); only a stage or a CLI command persists one
    (:func:`persist`), so no library function takes an output folder."""

    artifact: type[ArtifactT]
    stage: str
    provenance: Provenance
    compute: Callable[[], ArtifactT]
    expect: ModelIdentity
    what: str | None = None


def persist(
    job: Job[ArtifactT],
    out_dir: str | Path,
    *,
    run_dir: str | Path | None = None,
    force: bool = False,
) -> ArtifactT:
    """The job's artifact from ``out_dir/{stem}`` when it was made from the same inputs,
    else computed and saved there; one made from other inputs is refused unless ``force``
    (:func:`keyed_stage`; the manifest is ``run_dir``, default ``out_dir``)."""
    out = Path(out_dir)
    check_writable(out)
    artifact = job.artifact

    def make() -> ArtifactT:
        made = job.compute()
        made.save(out)
        return made

    result = keyed_stage(
        out if run_dir is None else run_dir,
        job.stage,
        job.provenance,
        out / f"{artifact.stem}.json",
        load=lambda: artifact.load(out, expect=job.expect),
        compute=make,
        force=force,
        what=job.what or artifact.what,
    )
    return cast(ArtifactT, result)


P = ParamSpec("P")


def computed(make_job: Callable[P, Job[ArtifactT]], name: str) -> Callable[P, ArtifactT]:
    """The compute-only library function of a job builder: the same parameters, and it
    returns the artifact (the builder's docstring documents both)."""

    def compute(*args: P.args, **kwargs: P.kwargs) -> ArtifactT:
        return make_job(*args, **kwargs).compute()

    compute.__name__ = compute.__qualname__ = name
    compute.__doc__ = (
        f"``{make_job.__name__}(...).compute()``: the same parameters, the artifact itself "
        f"(nothing is saved).\n\n{make_job.__doc__ or ''}"
    )
    compute.__module__ = make_job.__module__
    return compute
