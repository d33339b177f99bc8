"""The concept study's four claims, each tested on a finished run with a verdict.

The study this design implements claims that (a) domain information is decodable
from early layers through the last, (b) concept neurons are most common at middle
depth and overlap little between domains, (c) boosting them moves the probe readout
to the target (targeted success rate above 0.8 for some domains, above matched
controls) and (d) the label the model generates moves less, depending on the
concept, with spillover onto other domains. :func:`study_claims` measures each on
this run's artifacts and says *reproduced*, *not reproduced* or *not testable on this
model*, with the quantity and its interval, so a null result reads as one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from traitlens.artifact_io import Record
from traitlens.stats import wilson_ci

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
NOT_TESTABLE = "not testable on this model"
ALPHA = 0.05
TSR_CLAIM = 0.8
OVERLAP_CLAIM = 0.1


@dataclass(frozen=True)
class Claim(Record):
    """One claim: what the study says, what this run measured, its interval, the verdict."""

    name: str
    statement: str
    measured: str
    interval: str
    verdict: str
    detail: str


def _decodable(probes: Any) -> Claim:
    """(a): the best accuracy in the first third of the probed layers, and at the last
    layer, each with a Wilson CI over training items, above the control task and chance."""
    layers = list(probes.layers)
    early = np.array_split(np.arange(len(layers)), 3)[0]
    k = int(early[int(np.argmax([probes.accuracy[j] for j in early]))])
    n = int(probes.n_train_items)
    parts, ok = [], True
    for name, j in (("early", k), ("last", len(layers) - 1)):
        acc, control = float(probes.accuracy[j]), float(probes.control[j])
        low, high = wilson_ci(round(acc * n), n)
        ok &= low > max(control, probes.chance)
        parts.append((name, layers[j], acc, low, high, control))
    measured = "; ".join(
        f"{name} L{layer} {acc:.2f} (control {control:.2f})"
        for name, layer, acc, _, _, control in parts
    )
    interval = "; ".join(f"[{low:.2f}, {high:.2f}]" for _, _, _, low, high, _ in parts)
    return Claim(
        "a",
        "domain information is decodable from early layers through the last",
        measured,
        interval,
        REPRODUCED if ok else NOT_REPRODUCED,
        f"5-way probe, folds by {probes.fold_unit}, Wilson CI over {n} training items; "
        f"chance {probes.chance:.2f}",
    )


def _mid_depth(neurons: Any, rule: str) -> Claim:
    """(b): where the edited set lies (summed over domains) against the permutation null,
    and the mean Jaccard overlap between domains."""
    from traitlens.concepts.neurons import depth_thirds, overlap

    thirds = np.sum([depth_thirds(neurons, t, rule=rule) for t in neurons.traits], axis=0)
    jac = overlap(neurons, rule=rule)
    mean_overlap = float(np.nanmean(jac[~np.eye(len(neurons.traits), dtype=bool)]))
    null = neurons.config.get("null") or {}
    null_mid, how = None, ""
    if null.get("null_total"):
        null_mid = float(np.percentile(np.asarray(null["null_total"])[:, 1], 95))
        how = "95th percentile"
    elif null.get("null_p95"):  # runs before the per-permutation totals were kept
        null_mid = float(sum(v[1] for v in null["null_p95"].values()))
        how = "sum of the domains' 95th percentiles"
    where = ("early", "middle", "late")[int(np.argmax(thirds))]
    beats_null = null_mid is None or thirds[1] > null_mid
    ok = where == "middle" and beats_null and mean_overlap < OVERLAP_CLAIM
    detail = f"{rule} set; mean Jaccard {mean_overlap:.3f}"
    if null_mid is not None:
        detail += (
            f"; {null['permutations']} label permutations give a middle-third count of "
            f"{sum(v[1] for v in null['null_mean'].values()):.0f} on average "
            f"({how} {null_mid:.0f})"
        )
    return Claim(
        "b",
        "concept neurons are most common at middle depth, with limited overlap",
        f"early/middle/late {thirds.tolist()}; most in the {where} third",
        "–" if null_mid is None else f"null middle third: {how} {null_mid:.0f}",
        REPRODUCED if ok else NOT_REPRODUCED,
        detail,
    )


@dataclass(frozen=True)
class _Reading:
    """One boost read at one layer: success, controls' mean, gain CI and p."""

    row: Any
    layer: int
    success: float
    control: float
    gain: Any
    p: float

    @property
    def significant(self) -> bool:
        return bool(self.p < ALPHA and self.gain.low > 0)


def _readings(evaluation: Any, row: Any) -> list[_Reading]:
    vs = row.vs_controls
    return [
        _Reading(row, vs.headline_layer, vs.success.mean, vs.control.mean, vs.gain, vs.p_value),
        _Reading(
            row,
            vs.layers[-1],
            vs.success_last.mean,
            vs.control_by_layer[-1],
            vs.gain_last,
            vs.p_last,
        ),
    ]


def _best_boosts(evaluation: Any) -> dict[str, _Reading]:
    """Per domain, the strongest boost reading (any fraction, band and γ; at the best
    probe layer or the last layer), preferring readings above their controls."""
    best: dict[str, _Reading] = {}
    for row in evaluation.real:
        if row.kind != "boost" or row.vs_controls is None:
            continue
        for reading in _readings(evaluation, row):
            rank = (reading.significant, reading.success)
            held = best.get(row.trait)
            if held is None or rank > (held.significant, held.success):
                best[row.trait] = reading
    return best


def _boosts_move_probe(evaluation: Any) -> Claim:
    best = _best_boosts(evaluation)
    if not best:
        return Claim("c", "boosts shift probe readouts to the target", "–", "–", NOT_TESTABLE, "")
    above = [t for t, r in best.items() if r.significant]
    high = [t for t in above if best[t].success > TSR_CLAIM]
    measured = ", ".join(
        f"{t} {r.success:.2f} vs {r.control:.2f} (L{r.layer})" for t, r in best.items()
    )
    interval = ", ".join(
        f"{t} gain [{r.gain.low:+.2f}, {r.gain.high:+.2f}] p={r.p:.3f}" for t, r in best.items()
    )
    verdict = REPRODUCED if high else NOT_REPRODUCED
    detail = (
        f"strongest boost per domain, read at the best probe layer "
        f"({evaluation.headline_layer}) or the last layer, vs {evaluation.control_draws} "
        f"matched random draws; above control (p < {ALPHA}, gain CI > 0): "
        f"{', '.join(above) or 'none'}; TSR > {TSR_CLAIM}: {', '.join(high) or 'none'}"
    )
    return Claim(
        "c",
        f"boosts shift probe readouts to the target (TSR > {TSR_CLAIM} for some domains, "
        "above control)",
        measured,
        interval,
        verdict,
        detail,
    )


def _labels_move_less(evaluation: Any) -> Claim:
    base = evaluation.baseline
    statement = "generated labels move less than the readout, concept-dependently, with spillover"
    low, high = (base.label_accuracy_ci or [float("nan")] * 2)[:2]
    accuracy = f"unsteered label accuracy {base.label_accuracy:.2f} (chance {base.chance:.2f})"
    if not base.labels_interpretable:
        return Claim(
            "d",
            statement,
            accuracy,
            f"[{low:.2f}, {high:.2f}]",
            NOT_TESTABLE,
            "the unsteered label readout is not above chance, so label shifts cannot be read "
            "as the model relabelling the item",
        )
    best = _best_boosts(evaluation)
    gaps = {
        t: r.row.vs_controls.gain.mean - r.row.vs_controls.label_gain.mean for t, r in best.items()
    }
    less = [t for t, g in gaps.items() if g > 0]
    spread = float(np.ptp(list(gaps.values()))) if gaps else float("nan")
    ok = len(less) > len(gaps) / 2
    return Claim(
        "d",
        statement,
        accuracy
        + "; probe gain − label gain: "
        + ", ".join(f"{t} {g:+.2f}" for t, g in gaps.items()),
        f"[{low:.2f}, {high:.2f}]",
        REPRODUCED if ok else NOT_REPRODUCED,
        f"labels move less for {', '.join(less) or 'no domain'}; spread across domains "
        f"{spread:.2f}",
    )


def study_claims(probes: Any, neurons: Any, evaluation: Any, rule: str = "npti") -> list[Claim]:
    """The four claims measured on one run (``rule``: the neuron set that was edited)."""
    return [
        _decodable(probes),
        _mid_depth(neurons, rule),
        _boosts_move_probe(evaluation),
        _labels_move_less(evaluation),
    ]


def edited_rule(evaluation: Any) -> str:
    """The neuron rule the run's boosts used (``npti`` if none is recorded)."""
    rules = {r.size.get("neuron_rule") for r in evaluation.real if r.kind == "boost"}
    rules.discard(None)
    return "npti" if not rules or "npti" in rules else str(sorted(rules)[0])
