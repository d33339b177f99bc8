"""Whether a run's artifacts belong together: every stage artifact on disk is the one its
manifest records, made from the current artifacts of the stages it read (what
``traitlens report`` checks before it draws anything).

It lives with the report rather than in :mod:`traitlens.provenance` because it reads
the persona design's prompt file back (the core must not import the library)."""

from __future__ import annotations

from pathlib import Path

from traitlens.artifact_io import read_json
from traitlens.errors import ArtifactError, TraitlensError
from traitlens.provenance import MANIFEST, STAGE_FILES, RunManifest, saved_key


def _artifact_key(run: Path, stage: str) -> tuple[bool, str | None]:
    path = run / STAGE_FILES[stage]
    if stage == "prompts":
        if not path.exists():
            return False, None
        from traitlens.capture.pipeline import prompts_provenance
        from traitlens.data import load_prompts

        try:
            return True, prompts_provenance(load_prompts(path)).key
        except TraitlensError:
            return False, None
    return saved_key(path)


def verify_run(run_dir: str | Path) -> list[str]:
    """Every inconsistency in a run's chain of keys (empty when it is consistent).

    Each stage artifact on disk must be the one the manifest records, and each must
    have been made from the current artifacts of the stages it read; eval.json must
    name the current stage artifacts and only rows that exist under their keys.
    """
    run = Path(run_dir)
    manifest = RunManifest(run)
    if not manifest.stages:
        return [
            f"{run} has no run manifest ({MANIFEST}): made by an older traitlens, so its "
            "keys cannot be verified"
        ]
    problems = []
    for stage, prov in manifest.stages.items():
        if stage in STAGE_FILES:
            exists, key = _artifact_key(run, stage)
            if not exists:
                problems.append(f"{stage}: {STAGE_FILES[stage]} is missing or unreadable")
            elif key != prov.key:
                problems.append(
                    f"{stage}: {STAGE_FILES[stage]} is not the artifact the run recorded "
                    f"(key {key} ≠ {prov.key}) — replaced by another command"
                )
        for name, key in prov.upstream.items():
            current = manifest.get(name)
            if key is not None and current is not None and current.key != key:
                problems.append(f"{stage} was made from an older {name} artifact (since replaced)")
    for name, rows in (("eval.json", "eval/rows"), ("concepts/eval.json", "concepts/eval/rows")):
        problems += _evaluation_problems(run, manifest, name, rows)
    return problems


def _evaluation_problems(run: Path, manifest: RunManifest, name: str, rows: str) -> list[str]:
    """An evaluation must name the current stage artifacts and only rows saved under their key."""
    path = run / name
    if not path.exists():
        return []
    try:
        recorded = read_json(path).get("provenance") or {}
    except ArtifactError as exc:
        return [str(exc)]
    problems = []
    for stage, key in (recorded.get("upstream") or {}).items():
        current = manifest.get(stage)
        if current is None or current.key != key:
            problems.append(f"{name} was computed from an older {stage} artifact")
    for row, key in (recorded.get("rows") or {}).items():
        if not (run / rows / f"{row}--{key[:16]}.json").exists():
            problems.append(f"{name} row {row} (key {key[:16]}) has no saved measurement")
    return problems
