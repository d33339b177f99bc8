"""One exception family so callers (and the CLI) can tell user errors from bugs.

Every message names what was wrong *and* the fix; the CLI prints it without a
traceback.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


class TraitlensError(Exception):
    """Base class for every error traitlens raises on purpose."""


class DataError(TraitlensError, ValueError):
    """A user-supplied (or shipped) data file is empty, malformed or inconsistent."""


class ModelError(TraitlensError):
    """A model cannot be loaded, or its layout is not one traitlens understands."""


class HookPointError(TraitlensError, KeyError):
    """A hook point name or layer index does not exist on this model."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


class ArtifactError(TraitlensError):
    """An artifact is missing, corrupt, or was made for another model / hook point."""


class EngineError(TraitlensError):
    """An external engine (llama.cpp, lm-evaluation-harness, Ray) is missing or failed."""


class InterventionError(TraitlensError, ValueError):
    """An intervention is invalid: NaN/inf values, absurd strength, wrong shape."""


def index_of(values: Sequence[T], value: T, missing: Callable[[], TraitlensError]) -> int:
    """``values.index(value)``, or raise ``missing()`` — the error that says what there
    is and the fix — when ``value`` is not among them."""
    if value not in values:
        raise missing()
    return values.index(value)
