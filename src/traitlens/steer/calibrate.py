"""Calibration: the layer band and strength that steer hardest within a fluency budget.

From a sweep's rows for one (model, trait, pole, method) the candidates are the real
(non-control) cells whose perplexity ratio is within ``max_ppl_ratio``; the chosen
cell maximizes the target effect (``readout``: the target trait's probe readout
shift toward the pole, the default; ``success``: targeted success rate;
``questionnaire``: the self-report shift), ties broken by the lower perplexity. The
effect is also reported net of the same-size control cell, and a choice whose net
effect is not positive is flagged (it moves no more than a random edit would).

A :class:`CalibratedVector` keeps the choice, the budget, the whole effect/cost curve
and its Pareto front, and the trait vector itself, so ``traitlens steer
--calibrated FILE`` and ``traitlens serve --calibrated FILE`` steer "E high" at a
strength that works on *this* model without the sweep or the run at hand.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from traitlens.artifact_io import Record, atomic_path, read_json
from traitlens.errors import ArtifactError, DataError
from traitlens.steer.interventions import Positions

OBJECTIVES = {
    "readout": "target_readout_shift",
    "success": "success_rate",
    "questionnaire": "target_questionnaire_shift",
}


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(float(value))


def pareto_front(points: list[dict[str, Any]], effect: str) -> list[dict[str, Any]]:
    """Points not dominated in (higher ``effect``, lower perplexity ratio), by cost."""
    ordered = sorted(
        (p for p in points if finite(p.get(effect)) and finite(p.get("perplexity_ratio"))),
        key=lambda p: (p["perplexity_ratio"], -p[effect]),
    )
    front, best = [], -math.inf
    for point in ordered:
        if point[effect] > best:
            front.append(point)
            best = point[effect]
    return front


@dataclass(frozen=True)
class Calibration(Record):
    model: str
    trait: str
    pole: str
    method: str
    objective: str
    max_ppl_ratio: float
    band: str
    layers: tuple[int, ...]
    strength: float | None
    """Signed spread units per layer (directions, hybrid); ``None`` for neuron edits."""
    gamma: float | None
    effect: float
    control_effect: float
    perplexity_ratio: float
    beats_control: bool
    curve: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    front: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    cell_key: str = ""


def _check_request(max_ppl_ratio: float, objective: str, method: str) -> None:
    if not (finite(max_ppl_ratio) and max_ppl_ratio >= 1.0):
        raise DataError(
            f"--max-ppl-ratio must be a number >= 1 (1 = no fluency cost allowed), got "
            f"{max_ppl_ratio}"
        )
    if objective not in OBJECTIVES:
        raise DataError(f"unknown objective {objective!r}; use one of {', '.join(OBJECTIVES)}")
    if method == "prompt":
        raise DataError("the persona prompt has no band or strength to calibrate")


def _cells_of(
    rows: list[dict[str, Any]], trait: str, pole: str, method: str, model: str | None
) -> tuple[str, list[dict[str, Any]]]:
    """The model calibrated for and its ``ok`` cells of this trait, pole and method
    (real and control); DataError when the model is ambiguous or no real cell exists."""
    ok = [r for r in rows if r.get("status") == "ok"]
    models = sorted({r["model"] for r in ok})
    if model is None:
        if len(models) > 1:
            raise DataError(f"the sweep covers several models ({models}); pass --model")
        model = models[0] if models else ""
    mine = [
        r
        for r in ok
        if r["model"] == model
        and r["trait"] == trait
        and r["pole"] == pole
        and r["method"] == method
    ]
    if not any(not r["control"] for r in mine):
        have = sorted({(r["trait"], r["pole"], r["method"]) for r in ok if r["model"] == model})
        raise DataError(
            f"the sweep has no measured {trait} {pole} {method} cells for {model!r}; it has: "
            + (", ".join(f"{t} {p} {m}" for t, p, m in have) or "none")
        )
    return model, mine


def _curve(cells: list[dict[str, Any]], effect: str) -> list[dict[str, Any]]:
    """One point per real cell, with its same-size control's effect beside it."""
    controls = {(r["band"], r.get("strength"), r.get("gamma")): r for r in cells if r["control"]}

    def point(r: dict[str, Any]) -> dict[str, Any]:
        control = controls.get((r["band"], r.get("strength"), r.get("gamma")), {})
        return {
            "band": r["band"],
            "layers": r.get("layers"),
            "strength": r.get("strength"),
            "gamma": r.get("gamma"),
            effect: r.get(effect),
            "control_effect": control.get(effect, math.nan),
            "perplexity_ratio": r.get("perplexity_ratio"),
            "key": r.get("key", ""),
        }

    return [point(r) for r in cells if not r["control"]]


def _choose(curve: list[dict[str, Any]], effect: str, budget: float, what: str) -> dict[str, Any]:
    """The largest effect within the perplexity budget, ties to the cheaper cell."""
    fits = [
        p
        for p in curve
        if finite(p["perplexity_ratio"]) and p["perplexity_ratio"] <= budget and finite(p[effect])
    ]
    if not fits:
        cheapest = min(
            (p["perplexity_ratio"] for p in curve if finite(p["perplexity_ratio"])),
            default=math.nan,
        )
        raise DataError(
            f"no {what} cell stays within perplexity ×{budget:g} (the cheapest costs "
            f"×{cheapest:.2f}); raise --max-ppl-ratio or add smaller strengths to the sweep"
        )
    return max(fits, key=lambda p: (p[effect], -p["perplexity_ratio"]))


def calibrate(
    rows: list[dict[str, Any]],
    trait: str,
    pole: str = "high",
    *,
    method: str = "mean_diff",
    max_ppl_ratio: float = 1.5,
    objective: str = "readout",
    model: str | None = None,
) -> Calibration:
    """Pick the cell (see the module docstring); DataError when nothing fits the budget."""
    _check_request(max_ppl_ratio, objective, method)
    effect = OBJECTIVES[objective]
    model, cells = _cells_of(rows, trait, pole, method, model)
    curve = _curve(cells, effect)
    chosen = _choose(curve, effect, max_ppl_ratio, f"{trait} {pole} {method}")
    sign = 1.0 if pole == "high" else -1.0
    net = chosen[effect] - chosen["control_effect"]
    return Calibration(
        model=model,
        trait=trait,
        pole=pole,
        method=method,
        objective=objective,
        max_ppl_ratio=float(max_ppl_ratio),
        band=str(chosen["band"]),
        layers=tuple(int(x) for x in (chosen["layers"] or [])),
        strength=None if chosen["strength"] is None else sign * float(chosen["strength"]),
        gamma=chosen["gamma"],
        effect=float(chosen[effect]),
        control_effect=float(chosen["control_effect"]),
        perplexity_ratio=float(chosen["perplexity_ratio"]),
        beats_control=bool(finite(net) and net > 0),
        curve=tuple(curve),
        front=tuple(pareto_front(curve, effect)),
        cell_key=str(chosen["key"]),
    )


@dataclass(frozen=True)
class CalibratedVector:
    """A trait vector with the band and strength a sweep chose for it.

    ``as_vector()`` is the vector restricted to the band and scaled so that strength 1
    is the calibrated strength — what ``steer``/``serve``/``bake`` take as an ordinary
    vector (method ``calibrated``).
    """

    calibration: Calibration
    vector: Any  # TraitVector

    def as_vector(self) -> Any:
        from dataclasses import replace

        strength = self.calibration.strength
        if strength is None:
            raise DataError("a neuron-edit calibration has no vector; use its γ and band")
        chosen = self.vector.select(self.calibration.layers) * abs(strength)
        if strength < 0:
            chosen = -chosen
        return replace(
            chosen,
            method="calibrated",
            source={**chosen.source, "calibration": self.calibration.to_dict()},
        )

    def directions(self, positions: Positions = "all") -> list[Any]:
        """The calibrated steering as a :class:`~traitlens.steer.spec.SteeringSpec` —
        strength 1 of :meth:`as_vector` on the calibrated band — resolved to its
        direction addition."""
        from traitlens.steer.spec import SteeringSpec
        from traitlens.steer.vector_set import VectorSet

        vector = self.as_vector()
        vectors = VectorSet(vector.identity)
        vectors.add(vector)
        spec = SteeringSpec(
            traits={vector.trait: 1.0},
            method="calibrated",
            layers=list(self.calibration.layers),
            positions=positions,
        )
        return spec.directions(vectors)

    def save(self, path: str | Path) -> Path:
        """``PATH.json`` (the calibration) + ``PATH-vector.{json,safetensors}`` (the vector)."""
        stem = _stem(path)
        self.vector.save(_vector_stem(stem))
        with atomic_path(_json(stem)) as tmp:
            tmp.write_text(
                json.dumps(
                    {
                        "kind": "calibrated_vector",
                        "calibration": self.calibration.to_dict(),
                        "vector": _vector_stem(stem).name,
                    },
                    indent=2,
                    allow_nan=True,
                )
            )
        return _json(stem)

    @classmethod
    def load(cls, path: str | Path, expect: Any = None) -> CalibratedVector:
        from traitlens.steer.artifact import TraitVector

        stem = _stem(path)
        data = read_json(_json(stem), "write one with `traitlens calibrate`")
        if data.get("kind") != "calibrated_vector":
            raise ArtifactError(f"{_json(stem)} is not a calibrated vector")
        try:
            raw = dict(data["calibration"])
            raw["layers"] = tuple(raw["layers"])
            raw["curve"], raw["front"] = tuple(raw["curve"]), tuple(raw["front"])
            calibration = Calibration(**raw)
        except (KeyError, TypeError) as exc:
            raise ArtifactError(f"{_json(stem)} is incomplete ({exc})") from exc
        vector = TraitVector.load(_vector_stem(stem), expect=expect)
        return cls(calibration, vector)


def _json(stem: Path) -> Path:
    return stem.with_name(stem.name + ".json")


def _stem(path: str | Path) -> Path:
    """``e-1.5.json`` → ``e-1.5`` (only a literal ``.json`` is dropped: names may hold dots)."""
    given = Path(path)
    return given.with_name(given.name[: -len(".json")]) if given.suffix == ".json" else given


def _vector_stem(stem: Path) -> Path:
    # no dot: TraitVector.save treats a suffix after the last dot as its own
    return stem.with_name(stem.name + "-vector")
