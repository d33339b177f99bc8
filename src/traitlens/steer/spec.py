"""One trait mix, parsed in one place: what the CLI's ``--mix``, the serve request's
``steering`` field, a calibrated vector and the exports (bake, GGUF, lm-eval) all mean
by "steer with these traits at these strengths".

A :class:`SteeringSpec` is data only — traits → strength (spread units per layer),
the direction method, the layer band and the positions — so it validates before any
model loads. :meth:`SteeringSpec.directions` turns it into the core's
:class:`~traitlens.steer.interventions.AddDirection` interventions against a vector
set; everything after that (fusion, placement, hooks) is :mod:`traitlens.steer.apply`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from traitlens.data.schema import normalize_trait
from traitlens.errors import DataError
from traitlens.limits import MAX_STRENGTH, STRENGTH_HINT, out_of_range
from traitlens.steer.interventions import AddDirection, Positions
from traitlens.steer.layers import band_layers, parse_layers

DEFAULT_METHOD = "mean_diff"
MIX_EXAMPLE = "E=+1,N=-0.5"


class SteeringSpec(BaseModel):
    """``{"traits": {"E": 1.0, "N": -0.5}, "method": "mean_diff", "layers": "10-14"}``:
    strength per trait in spread units per layer (a negative one pushes toward the low
    pole); ``method`` and ``layers`` default to the consumer's default method and band;
    ``positions`` is ``all``, ``prompt`` or ``generated``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    traits: dict[str, float] = Field(default_factory=dict)
    method: str | None = None
    layers: str | list[int] | None = None
    positions: Positions = "all"

    @classmethod
    def parse(
        cls,
        text: str,
        *,
        method: str | None = None,
        layers: str | None = None,
        option: str = "--mix",
    ) -> SteeringSpec:
        """``"E=+1,N=-0.5"`` (full trait names accepted) as a spec; every refusal names
        ``option`` and an example."""
        traits: dict[str, float] = {}
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            name, sep, value = part.partition("=")
            if not sep:
                raise DataError(
                    f"{option} entry {part!r} is not TRAIT=STRENGTH; e.g. {option} '{MIX_EXAMPLE}'"
                )
            try:
                strength = float(value)
            except ValueError as exc:
                raise DataError(f"{option} strength {value!r} for {name} is not a number") from exc
            problem = out_of_range(
                f"{option} {name}", strength, high=MAX_STRENGTH, absolute=True, hint=STRENGTH_HINT
            )
            if problem:
                raise DataError(problem)
            code = normalize_trait(name)
            if code in traits:  # as the server: "E", "e" and "extraversion" are one trait
                raise DataError(f"{option} names trait {code} twice; give each trait once")
            traits[code] = strength
        if not traits or not any(traits.values()):
            raise DataError(f"{option} is empty or all zero; e.g. {option} '{MIX_EXAMPLE}'")
        return cls(traits=traits, method=method, layers=layers)

    def band(self, n_layers: int) -> list[int]:
        """The layers to steer: ``layers`` as given (checked against ``n_layers``), else
        :func:`~traitlens.steer.layers.band_layers`."""
        if self.layers is None or (isinstance(self.layers, str) and not self.layers.strip()):
            return band_layers(n_layers)
        if isinstance(self.layers, str):
            return parse_layers(self.layers, n_layers)
        chosen = sorted(set(self.layers))
        outside = [layer for layer in chosen if not 0 <= layer < n_layers]
        if outside or not chosen:
            raise DataError(
                f"layers {outside or '[]'} are outside this model's layers 0..{n_layers - 1}"
            )
        return chosen

    def directions(self, vectors: Any) -> list[AddDirection]:
        """The ``method`` vector of each trait (``vectors.get(trait, method)``, e.g. a
        :class:`~traitlens.steer.vector_set.VectorSet`) at its strength on :meth:`band`;
        zero strengths are left out."""
        if not self.traits:
            raise DataError(f"the mix is empty; e.g. {{'E': 1.0, 'N': -0.5}} or '{MIX_EXAMPLE}'")
        method = self.method or DEFAULT_METHOD
        strengths: dict[str, float] = {}
        for name, strength in self.traits.items():
            try:
                code = normalize_trait(name)
            except ValueError:
                code = name  # a vector of a trait beyond the Big Five, named as saved
            if code in strengths:
                raise DataError(f"the mix names trait {code} twice; give each trait once")
            strengths[code] = strength
        chosen = {trait: vectors.get(trait, method) for trait in strengths}
        band = tuple(self.band(next(iter(chosen.values())).identity.n_layers))
        return [
            AddDirection(chosen[t], s, layers=band, positions=self.positions)
            for t, s in strengths.items()
            if s
        ]

    @staticmethod
    def describe(directions: list[AddDirection]) -> str:
        """``"E +1, N -0.5 at layers 10–14"`` for the directions a spec resolved to."""
        layers = directions[0].layers or ()
        where = f" at layers {layers[0]}–{layers[-1]}" if layers else ""
        return ", ".join(f"{d.vector.trait} {d.strength:+g}" for d in directions) + where
