"""Measured rows keyed by their inputs: the store every design's evaluation and the
fingerprint's answer caches share.

A row is one measured value (a condition of an evaluation, the baseline, or a batch of
generated answers). It is stored at ``DIR/NAME--KEY16.json`` as ``{"provenance",
"data"}``: a changed input gives a new key and so a new file; rows of other
configurations are kept, never relabelled, and going back reuses them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from traitlens.artifact_io import read_json, write_json
from traitlens.errors import TraitlensError
from traitlens.provenance import Provenance, describe_changes

Log = Callable[[str], None]


def row_path(rows_dir: Path, name: str, prov: Provenance) -> Path:
    return rows_dir / f"{name}--{prov.key[:16]}.json"


def previous_row(rows_dir: Path, name: str) -> Provenance | None:
    """The most recent saved row of this name under any key (to say what changed)."""
    best = None
    for path in rows_dir.glob(f"{name}--*.json"):
        if best is None or path.stat().st_mtime > best.stat().st_mtime:
            best = path
    if best is None:
        return None
    try:
        return Provenance.from_dict(read_json(best)["provenance"])
    except (TraitlensError, KeyError, TypeError):
        return None


class RowData(Protocol):
    """What a design measures per row: a value that writes and reads its JSON form."""

    def to_dict(self) -> dict[str, Any]: ...


R = TypeVar("R", bound=RowData)


def load_row(rows_dir: Path, name: str, prov: Provenance, kind: type[R]) -> R | None:
    """The saved data of this row under this key as ``kind``, or None (absent or
    unreadable: measured again)."""
    path = row_path(rows_dir, name, prov)
    if not path.exists():
        return None
    try:
        saved = read_json(path)
        if saved.get("provenance", {}).get("key") == prov.key:
            return kind.from_dict(dict(saved["data"]))  # type: ignore[attr-defined,no-any-return]
    except (TraitlensError, KeyError, TypeError):
        pass  # unreadable row: measure it again
    return None


def measured_row(
    rows_dir: Path, name: str, prov: Provenance, compute: Callable[[], R], kind: type[R]
) -> R:
    """The row's data: reused when saved under this key, else computed and saved."""
    data = load_row(rows_dir, name, prov, kind)
    if data is None:
        data = compute()
        write_json(
            row_path(rows_dir, name, prov),
            {"provenance": prov.to_dict(), "data": data.to_dict()},
            allow_nan=True,
        )
    return data


def log_plan(rows_dir: Path, plan: Sequence[tuple[str, Provenance]], log: Log) -> set[str]:
    """Say how many rows are reused and why the others are measured; returns the names to do."""
    todo = [(n, p) for n, p in plan if not row_path(rows_dir, n, p).exists()]
    reasons: Counter[str] = Counter()
    for name, prov in todo:
        before = previous_row(rows_dir, name)
        changes = ["new"] if before is None else describe_changes(before.inputs, prov.inputs)
        if len(changes) > 1:  # a changed size explains the changed edit ("data")
            changes = [c for c in changes if c != "data changed"]
        reasons["; ".join(changes)] += 1
    for reason, count in reasons.most_common():
        log(f"  {count} row(s) to measure: {reason}")
    log(f"  {len(plan) - len(todo)} of {len(plan)} rows reused (same inputs)")
    return {n for n, _ in todo}


def evaluate_rows(
    rows_dir: Path,
    baseline: tuple[Provenance, Callable[[], R]],
    rows: Sequence[tuple[str, Provenance, Callable[[], R]]],
    kind: type[R],
    log: Log,
    *,
    say: Callable[[int], bool] = lambda number: True,
) -> tuple[R, dict[str, R], dict[str, str]]:
    """The evaluation loop every design shares: say what is reused and why the rest is
    measured, then the baseline and each row (``name, key, compute``) through
    :func:`measured_row`. Returns the baseline, each row's data and every row's key
    (the baseline's as ``"baseline"``); ``say(number)`` picks the rows logged."""
    base_prov, base_compute = baseline
    todo = log_plan(rows_dir, [("baseline", base_prov), *((n, p) for n, p, _ in rows)], log)
    base = measured_row(rows_dir, "baseline", base_prov, base_compute, kind)
    measured: dict[str, R] = {}
    keys = {"baseline": base_prov.key}
    for number, (name, prov, compute) in enumerate(rows, start=1):
        if say(number):
            log(f"  [{number}/{len(rows)}] {name}" + ("" if name in todo else " (reused)"))
        measured[name] = measured_row(rows_dir, name, prov, compute, kind)
        keys[name] = prov.key
    return base, measured, keys
