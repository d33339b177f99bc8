"""The limits every entry point shares (CLI flags, configs, interventions, the server),
in one light module: a config refuses an out-of-range value when it is built, before any
stage runs, with the same bound the intervention would apply later."""

from __future__ import annotations

import math

from traitlens.errors import InterventionError

MAX_STRENGTH = 50.0
"""Largest |strength| accepted, in spread units. Useful steering sits at 1–15σ;
beyond ~50σ the residual stream is dominated by the vector and the model emits
noise, so such a value is almost certainly a unit mistake (e.g. a raw-norm
coefficient from another tool)."""

MAX_GAMMA = 10.0
"""Largest |γ| accepted for NPTI edits: γ multiplies a neuron's own 95th-percentile
activation, so γ = 10 already drives it ten times past its usual range."""


STRENGTH_FIX = (
    "strength is in standard deviations of the residual stream along the trait axis "
    "(useful values are about 1-15); pass e.g. strength=4"
)
"""What a refused steering strength's message tells the user to do."""

STRENGTH_HINT = "strengths are in standard deviations; useful ones lie around 1-15"
"""The hint after a CLI flag's or a mix's out-of-range strength."""


def checked_size(name: str, value: float, limit: float, fix: str) -> float:
    """``value`` as a float when it is a finite number with ``|value| <= limit``; else an
    :class:`~traitlens.errors.InterventionError` naming ``fix`` (every intervention, and
    every export of one, checks its size here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InterventionError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise InterventionError(f"{name}={value} is not finite; {fix}")
    if abs(value) > limit:
        raise InterventionError(
            f"{name}={value:g} is outside the allowed range [-{limit:g}, {limit:g}]; {fix}"
        )
    return value


def out_of_range(
    option: str,
    value: float,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    absolute: bool = False,
    hint: str = "",
) -> str | None:
    """Why ``value`` is not a finite number within ``low``..``high`` (open ends exclude
    the bound; with ``absolute`` the bounds apply to ``|value|``), or None when it is.
    The CLI's flags and the configs' fields word a refusal the same way."""
    tail = f"; {hint}" if hint else ""
    if not math.isfinite(value):
        return f"{option} {value} is not a finite number: give a real number{tail}"
    checked = abs(value) if absolute else value
    too_low = low is not None and (checked <= low if low_open else checked < low)
    too_high = high is not None and (checked >= high if high_open else checked > high)
    if too_low or too_high:
        left = "" if low is None else f"{low:g} {'<' if low_open else '<='} "
        right = "" if high is None else f" {'<' if high_open else '<='} {high:g}"
        what = f"|{option}|" if absolute else option
        return f"{option} {value:g} is out of range: need {left}{what}{right}{tail}"
    return None
