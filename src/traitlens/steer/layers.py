"""Which layers to steer: the default band, user layer selections, and how to print them."""

from __future__ import annotations

import re
from collections.abc import Sequence

from traitlens.errors import DataError

DEFAULT_BAND = (1 / 3, 1 / 2)
"""Early-middle window, as fractions of the depth: CAA and repeng both find trait
directions steer best there."""


def band_layers(n_layers: int, band: tuple[float, float] = DEFAULT_BAND) -> list[int]:
    """The layers from ``band[0]`` to ``band[1]`` of the depth where steering is applied.

    Kept narrow because additions accumulate in the residual stream: k layers at
    strength s push about k·s standard deviations in total. The band starts at
    layer 1 or later (layer 0 holds little more than token identity), holds at
    least one layer, and stops before ``n_layers - 2``, so that a layer more than
    one step after the band is left for reading the effect out. For the embedded
    30-layer model and the default band: layers 10–14. Models of three layers or
    fewer get the single layer 1 (layer 0 for a one-layer model): there is no
    room for a readout layer after it.
    """
    low, high = band
    if n_layers < 1:
        raise DataError(f"a model needs at least one layer to steer, got n_layers={n_layers}")
    if not 0.0 <= low < high <= 1.0:
        raise DataError(
            f"steering band {band!r} must be two depth fractions with 0 <= start < stop <= 1, "
            "e.g. (1/3, 1/2)"
        )
    start = min(max(1, round(n_layers * low)), n_layers - 1)
    stop = min(max(start + 1, round(n_layers * high)), n_layers - 2)
    return list(range(start, max(stop, start + 1)))


def middle_layers(n_layers: int) -> list[int]:
    """:func:`band_layers` with the default band (the ``traitlens steer`` default).

    Before the band had one definition this window could end at the last layer;
    it now stops before ``n_layers - 2`` like the study's. With the default band
    that changes nothing for models of two or more layers; a one-layer model
    now gets layer 0 instead of no layer at all.
    """
    return band_layers(n_layers)


MAX_LAYER_SPEC = 512
"""Longest layer selection accepted (a list of every layer of a 100-layer model fits)."""


def parse_layers(spec: str, n_layers: int) -> list[int]:
    """``"10-20"`` (inclusive), ``"8,10,12"``, ``"10-14,20"`` or ``"-1"`` → sorted layer list.

    Raises DataError naming the valid range when a layer does not exist. Every bound is
    checked against the model *before* a range is expanded, and the spec's length is
    capped, so ``"0-2000000000"`` is refused at once instead of building a 2-billion
    element set (5.6 s and 2 GB before, and a server's worker with it).
    """
    text = f"{spec[:40]!r}{'…' if len(spec) > 40 else ''}"
    if len(spec) > MAX_LAYER_SPEC:
        raise DataError(
            f"layer selection {text} is {len(spec)} characters long; write ranges like '10-20' "
            f"(at most {MAX_LAYER_SPEC} characters)"
        )
    bad_range = DataError(
        f"layer selection {text} is outside this model's layers 0..{n_layers - 1}"
    )

    def resolve(value: int) -> int:
        layer = value + n_layers if value < 0 else value
        if not 0 <= layer < n_layers:
            raise bad_range
        return layer

    layers: set[int] = set()
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        try:
            if "-" in part[1:]:
                cut = part.index("-", 1)
                first, last = int(part[:cut]), int(part[cut + 1 :])
                if first > last:
                    raise ValueError
            else:
                first = last = int(part)
        except ValueError:
            raise DataError(
                f"bad layer selection {text}: write ranges and lists like '10-20' or "
                "'8,10,12' (ranges are inclusive)"
            ) from None
        low, high = resolve(first), resolve(last)  # bounds first, then the range
        if low > high:
            raise DataError(f"layer range {part!r} ends before it starts; write e.g. '10-20'")
        layers.update(range(low, high + 1))
    if not layers:
        raise bad_range
    return sorted(layers)


def layer_text(layers: Sequence[int]) -> str:
    """``"10-14"`` for a contiguous run, ``"8,10,12"`` otherwise, ``"none"`` when empty."""
    if not layers:
        return "none"
    if list(layers) == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}" if len(layers) > 1 else str(layers[0])
    return ",".join(str(layer) for layer in layers)


EDIT_BANDS: tuple[str, ...] = ("all", "early", "middle", "late")
"""Named bands for neuron edits: every layer, or one third of the depth."""


def check_edit_band(band: str) -> None:
    """Refuse a band that cannot name layers on any model (checked before a model loads)."""
    text = band.strip() if isinstance(band, str) else ""
    if not text:
        raise DataError(
            "an edit band is empty: use all, early, middle, late or a layer list such as '10-14,20'"
        )
    if text in EDIT_BANDS:
        return
    # syntax only (the model's depth is checked once it loads): '10-14', '8,10,12', '-1'
    if not re.fullmatch(r"-?\d+(-\d+)?(,\s*-?\d+(-\d+)?)*", text):
        raise DataError(
            f"edit band {band!r} is neither one of {', '.join(EDIT_BANDS)} nor a layer list "
            "such as '10-14,20'"
        )


def edit_band_layers(n_layers: int, band: str) -> list[int]:
    """The layers a named band (or a layer list) covers on a model of ``n_layers``.

    ``all`` is every layer 0 … n_layers − 1 (NPTI edits every selected neuron at any
    depth); ``early``/``middle``/``late`` are the thirds of the depth, split as evenly as
    possible. A layer list is taken as written and refused if a layer does not exist,
    never clipped.
    """
    check_edit_band(band)
    text = band.strip()
    if text == "all":
        return list(range(n_layers))
    if text in EDIT_BANDS:
        thirds = [
            list(range(n_layers))[k * n_layers // 3 : (k + 1) * n_layers // 3] for k in range(3)
        ]
        layers = thirds[EDIT_BANDS.index(text) - 1]
        if not layers:
            raise DataError(f"a {n_layers}-layer model has no {text} third; use 'all'")
        return layers
    return parse_layers(text, n_layers)
