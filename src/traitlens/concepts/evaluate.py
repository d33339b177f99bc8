"""Both levels of a concept edit, on held-out items, each against its own baseline.

:func:`measure_condition` reads, under whatever steering is active:

- *representation*: the domain probe's probabilities at the readout layer
  (downstream of every edited layer, so a shift is propagated, not read back);
- *label generation*: the next-token distribution over the five domain names
  when the model is asked which domain the statement measures;
- *self-report*: the Likert answer to the statement itself (keyed score);
- *cost*: perplexity of the neutral reference text.

:func:`concept_effect` turns a measurement and the baseline into the row's
numbers: targeted success rate (share of other domains' items the probe now
assigns to the target), its baseline, the predicted-domain shares (one row of the
5×5 spillover matrix), the log-odds shift with a bootstrap CI, the label-level
counterparts, and the perplexity ratio.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from traitlens.artifact_io import Record
from traitlens.capture.capture import pool_formatted
from traitlens.concepts.capture import format_items
from traitlens.concepts.items import ItemLike
from traitlens.concepts.labels import LabelPrompt, label_probs
from traitlens.concepts.probes import DomainProbes
from traitlens.evaluate.logprobs import LabelTokens
from traitlens.evaluate.stats import bootstrap_ci
from traitlens.models.loading import TraitModel

_EPS = 1e-6


@dataclass(frozen=True)
class ConceptSets:
    """The held-out material every condition is measured on, and how it is read."""

    traits: tuple[str, ...]
    items: tuple[ItemLike, ...]
    template: str
    readout_layer: int
    label_prompt: LabelPrompt
    likert_templates: tuple[str, ...]
    batch_size: int = 16

    def describe(self) -> dict[str, Any]:
        """What a row's key covers besides its edit: the material and the read-out."""
        return {
            "items": [[i.id, i.trait, i.keyed, i.text] for i in self.items],
            "template": self.template,
            "readout_layer": self.readout_layer,
            "label_prompt": asdict(self.label_prompt),
            "likert_templates": list(self.likert_templates),
        }


@dataclass
class ConceptMeasurement(Record):
    """Per-item readings of one condition (JSON-able; one saved row)."""

    item_ids: list[str]
    probe_probs: list[list[float]]
    label_probs: list[list[float]]
    label_mass: list[float]
    likert: list[float]
    perplexity: float
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConceptMeasurement:
        return cls(
            **{
                k: data[k]
                for k in (
                    "item_ids",
                    "probe_probs",
                    "label_probs",
                    "label_mass",
                    "likert",
                    "perplexity",
                )
            },
            extra=dict(data.get("extra") or {}),
        )


def measure_condition(
    tm: TraitModel, sets: ConceptSets, probes: DomainProbes, tokens: LabelTokens
) -> ConceptMeasurement:
    """Read all four levels once under whatever intervention context is active."""
    from traitlens.evaluate.cost import perplexity
    from traitlens.evaluate.questionnaire import run_questionnaire

    items = list(sets.items)
    pooled = pool_formatted(
        tm,
        format_items(tm, items, sets.template),
        span="item",
        poolings=(probes.pooling,),
        layers=[sets.readout_layer],
        batch_size=sets.batch_size,
    )
    probs = probes.probs(sets.readout_layer, pooled[f"resid.{probes.pooling}"][:, 0])
    labels, mass = label_probs(tm, items, sets.label_prompt, tokens, batch_size=sets.batch_size)
    likert = [float("nan")] * len(items)
    if sets.likert_templates:
        result = run_questionnaire(
            tm,
            items,
            templates=list(sets.likert_templates),
            orders=("ascending",),
            batch_size=sets.batch_size,
        )
        scores: dict[str, list[float]] = {}
        for response in result.items:
            scores.setdefault(response.item_id, []).append(response.score)
        likert = [float(np.mean(scores[i.id])) for i in items]
    return ConceptMeasurement(
        [i.id for i in items],
        probs.tolist(),
        labels.tolist(),
        mass.tolist(),
        likert,
        perplexity(tm).perplexity,
    )


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def _ci(values: np.ndarray, seed: int) -> dict[str, float]:
    if values.size < 2:
        value = float(values.mean()) if values.size else float("nan")
        return {"mean": value, "low": float("nan"), "high": float("nan")}
    ci = bootstrap_ci(values, seed=seed)
    return {"mean": float(ci.estimate), "low": float(ci.low), "high": float(ci.high)}


def _shares(probs: np.ndarray) -> list[float]:
    """Share of items whose argmax is each domain."""
    return (
        np.bincount(probs.argmax(1), minlength=probs.shape[1])
        .astype(float)
        .__truediv__(max(len(probs), 1))
        .tolist()
    )


def concept_effect(
    baseline: ConceptMeasurement,
    steered: ConceptMeasurement,
    items: Sequence[ItemLike],
    traits: Sequence[str],
    target: str,
    *,
    seed: int = 0,
) -> dict[str, Any]:
    """The row's numbers for an edit toward ``target`` (see module docstring).

    ``other``: held-out items of the other domains (where success is judged);
    ``own``: the target's own held-out items (where a suppression should show).
    """
    if baseline.item_ids != steered.item_ids:
        raise ValueError("baseline and steered rows were measured on different items")
    t = list(traits).index(target)
    truth = np.array([list(traits).index(i.trait) for i in items])
    other, own = truth != t, truth == t
    base_p, new_p = np.asarray(baseline.probe_probs), np.asarray(steered.probe_probs)
    base_l, new_l = np.asarray(baseline.label_probs), np.asarray(steered.label_probs)
    shift = _logit(new_p[other, t]) - _logit(base_p[other, t])
    label_shift = new_l[other, t] - base_l[other, t]
    base_likert, new_likert = np.asarray(baseline.likert), np.asarray(steered.likert)
    return {
        "representation": {
            "tsr": float((new_p[other].argmax(1) == t).mean()),
            "tsr_baseline": float((base_p[other].argmax(1) == t).mean()),
            "retention": float((new_p[own].argmax(1) == t).mean()) if own.any() else float("nan"),
            "retention_baseline": float((base_p[own].argmax(1) == t).mean())
            if own.any()
            else float("nan"),
            "shares": _shares(new_p[other]),
            "shares_baseline": _shares(base_p[other]),
            "log_odds_shift": _ci(shift, seed),
            "n_items": int(other.sum()),
        },
        "labels": {
            "tsr": float((new_l[other].argmax(1) == t).mean()),
            "tsr_baseline": float((base_l[other].argmax(1) == t).mean()),
            "accuracy": float((new_l.argmax(1) == truth).mean()),
            "accuracy_baseline": float((base_l.argmax(1) == truth).mean()),
            "delta_p_target": _ci(label_shift, seed + 1),
            "delta_p": (new_l[other] - base_l[other]).mean(0).tolist(),
            "label_mass": float(np.mean(steered.label_mass)),
            "label_mass_baseline": float(np.mean(baseline.label_mass)),
        },
        "likert": {
            trait: float(np.nanmean(new_likert[truth == k] - base_likert[truth == k]))
            if (truth == k).any() and np.isfinite(new_likert[truth == k]).any()
            else float("nan")
            for k, trait in enumerate(traits)
        },
        "cost": {
            "perplexity": steered.perplexity,
            "perplexity_ratio": steered.perplexity / baseline.perplexity,
        },
    }
