"""CSV + JSON writing for result tables, with no pandas/pyarrow dependency.

JSON has no NaN, so non-finite floats are written as ``null``; both files are
written through a temporary sibling and renamed, so an interrupted run never
leaves a half-written table that looks finished.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from traitlens.artifact_io import Record, atomic_path, read_json, write_json


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """One row per mapping; columns are the union of keys in first-seen order
    (rows may differ, e.g. neuron-edit rows carry γ, direction rows a strength)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(v) for k, v in row.items()})
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


class _Summary(_HasTrait, Protocol):
    def to_dict(self) -> dict[str, Any]: ...

    def row(self) -> dict[str, Any]: ...


RowT = TypeVar("RowT", bound="TableRow")
ItemT = TypeVar("ItemT", bound="TableRow")
SummaryT = TypeVar("SummaryT", bound=_Summary)
TableT = TypeVar("TableT", bound="ItemTable[Any, Any]")


class TableRow(Record):
    """A frozen-dataclass result row: ``to_dict`` for JSON, ``row`` for its flat CSV line
    (the same unless a field holds a list or mapping), ``from_dict`` to read it back."""

    def row(self) -> dict[str, Any]:
        return self.to_dict()


@dataclass(frozen=True)
class ItemTable(TraitLookup[SummaryT], Generic[ItemT, SummaryT]):
    """Item-level rows and per-trait summaries of one behavioural measurement, plus the
    run's configuration, saved as ``{kind}.json`` (everything) beside
    ``{kind}_items.csv`` and ``{kind}_traits.csv``.

    Subclasses name their ``kind`` and row types, and put run-level numbers (an order
    bias, say) in :meth:`headline`.
    """

    items: tuple[ItemT, ...]
    traits: tuple[SummaryT, ...]
    config: Mapping[str, Any] = field(default_factory=dict)

    kind: ClassVar[str]
    item_type: ClassVar[type[TableRow]]
    summary_type: ClassVar[type[TableRow]]

    def headline(self) -> dict[str, float]:
        """Run-level numbers written between the config and the rows."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "config": dict(self.config),
            **self.headline(),
            "traits": [t.to_dict() for t in self.traits],
            "items": [i.to_dict() for i in self.items],
        }

    def save(self, directory: str | Path) -> Path:
        """Write ``{kind}.json`` plus ``{kind}_items.csv`` and ``{kind}_traits.csv``;
        returns the directory."""
        out = Path(directory)
        write_csv([i.row() for i in self.items], out / f"{self.kind}_items.csv")
        write_csv([t.row() for t in self.traits], out / f"{self.kind}_traits.csv")
        write_json(out / f"{self.kind}.json", self.to_dict())
        return out

    @classmethod
    def load(cls: type[TableT], directory: str | Path) -> TableT:
        data = read_json(
            Path(directory) / f"{cls.kind}.json", "run the evaluation that writes it first"
        )
        return cls(
            tuple(cls.item_type.from_dict(row) for row in data["items"]),
            tuple(cls.summary_type.from_dict(row) for row in data["traits"]),
            data.get("config", {}),
        )
