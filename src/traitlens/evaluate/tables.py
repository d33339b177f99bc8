"""CSV + JSON writing for result tables, with no pandas/pyarrow dependency.

JSON has no NaN, so non-finite floats are written as ``null``; both files are
written through a temporary sibling and renamed, so an interrupted run never
leaves a half-written table that looks finished.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar


def restore_floats(row: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON row with every ``null`` (a NaN on the way out) turned back into NaN."""
    return {key: math.nan if value is None else value for key, value in row.items()}


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """One row per mapping; columns are the union of keys in first-seen order
    (rows may differ, e.g. neuron-edit rows carry γ, direction rows a strength)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(v) for k, v in row.items()})
    tmp.replace(path)
    return path


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return "" if not math.isfinite(value) else repr(value)
    return value


class _HasTrait(Protocol):
    @property
    def trait(self) -> str: ...
    @property
    def score(self) -> float: ...


S = TypeVar("S", bound=_HasTrait)


class TraitLookup(Generic[S]):
    """Per-trait access shared by result objects that hold one summary per trait."""

    traits: tuple[S, ...]

    def trait(self, code: str) -> S:
        """The summary for trait ``code``; a clear error names the traits measured."""
        for summary in self.traits:
            if summary.trait == code:
                return summary
        from traitlens.errors import DataError

        raise DataError(f"trait {code!r} was not measured (have {[t.trait for t in self.traits]})")

    @property
    def scores(self) -> dict[str, float]:
        """Trait code → score (the summary's ``score``)."""
        return {t.trait: t.score for t in self.traits}
