"""What the registries of traitlens share (direction methods in :mod:`traitlens.steer.registry`,
neuron selection rules in :mod:`traitlens.neurons.rules`): a live view of a registry's
names, and the checks of a name on registration and on lookup."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar, overload

from traitlens.errors import DataError


class Names(Sequence[str]):
    """The names in a registry, read when asked (never a stale copy): a method
    registered after import is listed, offered and accepted everywhere at once."""

    def __init__(self, table: Mapping[str, object]) -> None:
        self._table = table

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...

    def __getitem__(self, index: int | slice) -> str | Sequence[str]:
        return tuple(self._table)[index]

    def __len__(self) -> int:
        return len(self._table)

    def __contains__(self, name: object) -> bool:
        return name in self._table

    def __repr__(self) -> str:
        return repr(tuple(self._table))


_Entry = TypeVar("_Entry")


def check_name(table: Mapping[str, object], name: str, what: str) -> None:
    if not name or name != name.strip() or any(c in name for c in ", \t\n"):
        raise DataError(f"a {what} name must be one word without commas, got {name!r}")
    if name in table:
        raise DataError(
            f"a {what} named {name!r} is already registered; pick another name (registered: "
            f"{', '.join(table)})"
        )


def lookup(table: Mapping[str, _Entry], name: str, what: str) -> _Entry:
    if name not in table:
        raise DataError(f"unknown {what} {name!r}; use one of {', '.join(table)}")
    return table[name]
