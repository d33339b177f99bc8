"""Per-request trait mixes and the per-row steering table that applies them in one batch.

A request's mix ``{"E": 1.0, "N": -0.5}`` becomes the core's direction additions, and
:func:`traitlens.steer.apply.direction_rows` compiles them to one ``[d_model]`` row per
steered layer, ``Σ_t strength_t · vector_t[l]`` (strength in spread units per layer, see
:mod:`traitlens.steer.artifact`); this module only validates the request. A batch
stacks its rows into a ``[batch, d_model]`` table per layer (zeros for unsteered rows),
and the core's per-row addition (:class:`~traitlens.steer.AddPerRow`, installed with
:func:`~traitlens.steer.steering`) adds ``table[:, None, :]`` to the block output — every
row gets its own vector, never a global one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from traitlens.data.schema import TRAIT_NAMES, normalize_trait
from traitlens.errors import DataError
from traitlens.models.loading import TraitModel
from traitlens.steer.apply import direction_rows, steering
from traitlens.steer.interventions import AddDirection, AddPerRow
from traitlens.steer.layers import middle_layers, parse_layers
from traitlens.steer.vector_set import VectorSet

DEFAULT_METHOD = "mean_diff"
SAFE_STRENGTH = 3.0
"""Largest |strength| per trait a request may ask for: beyond ~3 spread units per layer
the embedded model loses fluency (README, Steering)."""
UNITS = "spread units per layer"


class SteeringError(DataError):
    """A request's ``steering`` field cannot be applied; ``param`` names the bad part."""

    def __init__(self, message: str, param: str = "steering"):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class AppliedSteering:
    """What one request gets: strengths per trait, the method, the layers, and the
    resulting rows ``{hook point: [d_model] float32}``, e.g. ``{"resid[10]": ...}``
    (empty when unsteered)."""

    traits: dict[str, float] = field(default_factory=dict)
    method: str | None = None
    layers: tuple[int, ...] = ()
    rows: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def active(self) -> bool:
        return bool(self.rows)

    def describe(self) -> dict[str, Any] | None:
        """The echo in responses (``steering`` field and ``X-Traitlens-Steering`` header)."""
        if not self.active:
            return None
        return {
            "traits": dict(self.traits),
            "method": self.method,
            "layers": list(self.layers),
            "units": UNITS,
        }

    def header(self) -> str:
        described = self.describe()
        return "none" if described is None else json.dumps(described, separators=(",", ":"))


UNSTEERED = AppliedSteering()


MAX_MIX_TRAITS = 16
"""Most keys a request's trait mix may have (the Big Five, aliases refused, plus room for
vectors of other traits)."""


class SteeringCatalog:
    """What the loaded vectors offer, and the validation of a request's mix against it."""

    def __init__(self, tm: TraitModel, vectors: VectorSet, *, max_strength: float = SAFE_STRENGTH):
        vectors.identity.check_matches(tm.identity, "vector set")
        if not len(vectors):
            raise DataError("the vector set is empty; build vectors with `traitlens steer`")
        self.tm = tm
        self.vectors = vectors
        self.max_strength = float(max_strength)
        self.n_layers = tm.n_layers

    @property
    def traits(self) -> list[str]:
        return sorted({t for t, _ in self.vectors.vectors}, key=_ocean_order)

    @property
    def methods(self) -> list[str]:
        return sorted({m for _, m in self.vectors.vectors})

    def default_method(self) -> str:
        methods = self.methods
        return DEFAULT_METHOD if DEFAULT_METHOD in methods else methods[0]

    def covered(self, method: str, traits: Sequence[str] | None = None) -> list[int]:
        """Layers every vector of ``method`` (for ``traits``, default all) has a step at."""
        chosen = [
            v for v in self.vectors if v.method == method and (not traits or v.trait in traits)
        ]
        if not chosen:
            return []
        common = set(chosen[0].layers)
        for vector in chosen[1:]:
            common &= set(vector.layers)
        return sorted(common)

    def default_layers(self, method: str, traits: Sequence[str] | None = None) -> list[int]:
        """The model's middle band (:func:`~traitlens.steer.workflow.middle_layers`) where
        the vectors cover it, else the middle third of the layers they cover; for
        calibrated vectors (``traitlens calibrate``) the band the sweep chose."""
        covered = self.covered(method, traits)
        if method == "calibrated":  # a sweep chose the band: steer all of it
            return covered
        band = [layer for layer in middle_layers(self.n_layers) if layer in covered]
        if band or not covered:
            return band
        third = max(1, len(covered) // 3)
        start = (len(covered) - third) // 2
        return covered[start : start + third]

    def describe(self) -> dict[str, Any]:
        """The body of ``GET /v1/traits``."""
        method = self.default_method()
        return {
            "object": "traitlens.traits",
            "model": self.tm.identity.name,
            "n_layers": self.n_layers,
            "units": UNITS,
            "safe_range": [-self.max_strength, self.max_strength],
            "default_method": method,
            "default_layers": self.default_layers(method),
            "traits": [
                {
                    "code": trait,
                    "name": TRAIT_NAMES.get(trait, trait),
                    "methods": {
                        v.method: {"layers": list(v.layers), "pole": v.pole}
                        for v in self.vectors
                        if v.trait == trait
                    },
                }
                for trait in self.traits
            ],
        }

    def resolve(
        self,
        traits: Mapping[str, float] | None,
        method: str | None = None,
        layers: str | Sequence[int] | None = None,
    ) -> AppliedSteering:
        """Validate a mix and build its per-layer rows; SteeringError names the bad part."""
        method = method or self.default_method()
        if method not in self.methods:
            raise SteeringError(
                f"unknown steering method {method!r}; the loaded vectors offer "
                f"{', '.join(self.methods)}",
                "steering.method",
            )
        strengths: dict[str, float] = {}
        named: dict[str, str] = {}
        if traits and len(traits) > MAX_MIX_TRAITS:
            raise SteeringError(
                f"the mix names {len(traits)} traits; at most {MAX_MIX_TRAITS} are accepted",
                "steering.traits",
            )
        for name, strength in (traits or {}).items():
            try:
                code = normalize_trait(name)
            except ValueError:
                code = name
            if code in named:  # "E", "e", " E" and "extraversion" are one trait
                raise SteeringError(
                    f"trait {code} is named twice in the mix ({named[code]!r} and {name!r}); "
                    "give each trait once",
                    f"steering.traits.{name}",
                )
            named[code] = name
            if (code, method) not in self.vectors:
                offered = ", ".join(t for t in self.traits if (t, method) in self.vectors)
                raise SteeringError(
                    f"unknown trait {name!r} for method {method}: the loaded vectors offer "
                    f"{offered or 'none'}",
                    f"steering.traits.{name}",
                )
            value = float(strength)
            unit = self.vectors.get(code, method).strength_unit
            if not math.isfinite(value) or abs(value * unit) > self.max_strength:
                scaled = (
                    f" (a {method} vector's strength 1 is {unit:g} {UNITS}, so this is "
                    f"{value * unit:g})"
                    if unit != 1.0 and math.isfinite(value)
                    else ""
                )
                raise SteeringError(
                    f"strength {strength} for trait {code} is outside the safe range "
                    f"-{self.max_strength:g}..+{self.max_strength:g} ({UNITS}){scaled}",
                    f"steering.traits.{name}",
                )
            strengths[code] = value
        strengths = {code: value for code, value in strengths.items() if value != 0.0}
        if not strengths:
            return UNSTEERED
        chosen = tuple(self.select_layers(layers, method, list(strengths)))
        directions = [
            AddDirection(self.vectors.get(code, method), value, layers=chosen)
            for code, value in strengths.items()
        ]
        return AppliedSteering(strengths, method, chosen, direction_rows(self.tm, directions))

    def select_layers(
        self, layers: str | Sequence[int] | None, method: str, traits: list[str]
    ) -> list[int]:
        covered = self.covered(method, traits)
        if layers is None or (isinstance(layers, str) and not layers.strip()):
            chosen = self.default_layers(method, traits)
        elif isinstance(layers, str):
            try:
                chosen = parse_layers(layers, self.n_layers)
            except DataError as exc:
                raise SteeringError(str(exc), "steering.layers") from None
        else:
            chosen = sorted({int(layer) for layer in layers})
            outside = [layer for layer in chosen if not 0 <= layer < self.n_layers]
            if outside or not chosen:
                raise SteeringError(
                    f"layers {outside or '[]'} are outside this model's layers "
                    f"0..{self.n_layers - 1}",
                    "steering.layers",
                )
        missing = [layer for layer in chosen if layer not in covered]
        if missing or not chosen:
            raise SteeringError(
                f"the {'/'.join(traits)} {method} vectors have no step at layer(s) "
                f"{missing or chosen}; they cover {_layer_text(covered)}",
                "steering.layers",
            )
        return chosen


def _ocean_order(trait: str) -> tuple[int, str]:
    order = list(TRAIT_NAMES)
    return (order.index(trait) if trait in order else len(order), trait)


def _layer_text(layers: Sequence[int]) -> str:
    if not layers:
        return "no layer"
    if list(layers) == list(range(layers[0], layers[-1] + 1)):
        return f"layers {layers[0]}-{layers[-1]}"
    return "layers " + ",".join(str(layer) for layer in layers)


class RowTable:
    """Per-hook-point ``[batch, d_model]`` steering tables for one decoding batch.

    Row ``i`` of ``tables["resid[l]"]`` is request ``i``'s row there (zeros when that
    request does not steer it). :meth:`keep` drops the rows of retired requests and
    :meth:`admit` appends the rows of requests that join, so the tables stay aligned
    with the batch.
    """

    def __init__(self, steerings: Sequence[AppliedSteering], tm: TraitModel):
        self.tm = tm
        self.size = len(steerings)
        self.tables: dict[str, torch.Tensor] = {}
        self._stack: ExitStack | None = None
        self._paused = False
        for point in sorted({point for s in steerings for point in s.rows}):
            self.tables[point] = self._rows(point, steerings)

    def _rows(self, point: str, steerings: Sequence[AppliedSteering]) -> torch.Tensor:
        """``[len(steerings), d_model]`` on the device and in the dtype of the hooked block."""
        device, dtype = self.tm.placement(self.tm.adapter.resolve(point).layer)
        zero = torch.zeros(self.tm.identity.d_model)
        table = torch.stack([s.rows.get(point, zero) for s in steerings]) if steerings else None
        if table is None:
            table = torch.zeros(0, self.tm.identity.d_model)
        return table.to(device=device, dtype=dtype)

    def keep(self, rows: torch.Tensor) -> None:
        for point, table in self.tables.items():
            self.tables[point] = table[rows.to(table.device)]
        self.size = len(rows)

    @contextmanager
    def admit(self, steerings: Sequence[AppliedSteering]) -> Iterator[None]:
        """Inside the block the tables hold only the joining rows (for their prefill);
        afterwards those rows are appended after the running ones."""
        fresh = sorted({p for s in steerings for p in s.rows} - set(self.tables))
        for point in fresh:
            self.tables[point] = self._rows(point, [UNSTEERED] * self.size)
        self._hook(fresh)
        running = self.tables
        self.tables = {point: self._rows(point, steerings) for point in running}
        try:
            yield
        finally:
            joining = self.tables
            self.tables = {point: torch.cat([running[point], joining[point]]) for point in running}
            self.size += len(steerings)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Inside the block the hooks add nothing: other model work (a readout between
        two decoding steps) sees the plain model, never this batch's steering."""
        self._paused = True
        try:
            yield
        finally:
            self._paused = False

    def table(self, point: str) -> torch.Tensor | None:
        """What the core's per-row addition (:class:`~traitlens.steer.AddPerRow`) adds at
        ``point`` now: this batch's table, or nothing while paused."""
        return None if self._paused else self.tables[point]

    def _hook(self, points: Sequence[str]) -> None:
        if points and self._stack is not None:
            edit = AddPerRow(self, tuple(points))
            self._stack.enter_context(steering(self.tm, edit))

    @contextmanager
    def installed(self) -> Iterator[None]:
        """One forward hook per steered hook point (points that join later get theirs
        when they join), all removed on exit, even after an error."""
        with ExitStack() as stack:
            self._stack = stack
            try:
                self._hook(sorted(self.tables))
                yield
            finally:
                self._stack = None
