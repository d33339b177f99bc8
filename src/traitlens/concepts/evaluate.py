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
from traitlens.errors import ArtifactError
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


@dataclass(frozen=True)
class Estimate(Record):
    """A mean over items with its bootstrap CI (NaN ends with fewer than two items)."""

    mean: float
    low: float
    high: float


def _ci(values: np.ndarray, seed: int) -> Estimate:
    if values.size < 2:
        value = float(values.mean()) if values.size else float("nan")
        return Estimate(value, float("nan"), float("nan"))
    ci = bootstrap_ci(values, seed=seed)
    return Estimate(float(ci.estimate), float(ci.low), float(ci.high))


@dataclass(frozen=True)
class RepresentationEffect(Record):
    """The probe level, on the other domains' held-out items (``retention``: the target's
    own items still read as the target)."""

    tsr: float
    tsr_baseline: float
    retention: float
    retention_baseline: float
    shares: list[float]
    shares_baseline: list[float]
    log_odds_shift: Estimate
    n_items: int

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RepresentationEffect:
        return cls(**{**data, "log_odds_shift": Estimate(**data["log_odds_shift"])})


@dataclass(frozen=True)
class LabelEffect(Record):
    """The generated-label level: the same success rate on the domain name the model
    gives, the change of P(target label), and how much mass the labels hold at all."""

    tsr: float
    tsr_baseline: float
    accuracy: float
    accuracy_baseline: float
    delta_p_target: Estimate
    delta_p: list[float]
    label_mass: float
    label_mass_baseline: float

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LabelEffect:
        return cls(**{**data, "delta_p_target": Estimate(**data["delta_p_target"])})


@dataclass(frozen=True)
class ConceptCost(Record):
    perplexity: float
    perplexity_ratio: float


@dataclass(frozen=True)
class ConceptEffect(Record):
    """One condition against the baseline, at both levels, with the self-report shift
    per domain and the cost."""

    representation: RepresentationEffect
    labels: LabelEffect
    likert: dict[str, float]
    cost: ConceptCost


@dataclass(frozen=True)
class ConceptResult:
    """One row of ``concepts/eval.json``: the condition (its configured size in ``size``),
    its :class:`ConceptEffect` and the key it was measured under. ``to_dict`` is the flat
    JSON the file has always held."""

    name: str
    trait: str
    kind: str
    control: bool
    fraction: float | None
    size: dict[str, Any]
    effect: ConceptEffect
    row_key: str

    DESCRIPTIVE = ("name", "trait", "kind", "control", "fraction")
    EFFECT = ("representation", "labels", "likert", "cost")

    @property
    def representation(self) -> RepresentationEffect:
        return self.effect.representation

    @property
    def labels(self) -> LabelEffect:
        return self.effect.labels

    @property
    def cost(self) -> ConceptCost:
        return self.effect.cost

    def to_dict(self) -> dict[str, Any]:
        head = {k: getattr(self, k) for k in self.DESCRIPTIVE}
        return {**head, **self.size, **self.effect.to_dict(), "row_key": self.row_key}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConceptResult:
        missing = [k for k in (*cls.DESCRIPTIVE, *cls.EFFECT, "row_key") if k not in data]
        if missing:
            raise ArtifactError(
                f"a concept evaluation row lacks {', '.join(missing)}: it was written by "
                "another version; rerun `traitlens study` (measured rows are reused)"
            )
        effect = ConceptEffect(
            RepresentationEffect.from_dict(data["representation"]),
            LabelEffect.from_dict(data["labels"]),
            dict(data["likert"]),
            ConceptCost(**data["cost"]),
        )
        skip = {*cls.DESCRIPTIVE, *cls.EFFECT, "row_key"}
        return cls(
            name=data["name"],
            trait=data["trait"],
            kind=data["kind"],
            control=bool(data["control"]),
            fraction=data["fraction"],
            size={k: v for k, v in data.items() if k not in skip},
            effect=effect,
            row_key=data["row_key"],
        )


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
) -> ConceptEffect:
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
    return ConceptEffect(
        representation=RepresentationEffect(
            tsr=float((new_p[other].argmax(1) == t).mean()),
            tsr_baseline=float((base_p[other].argmax(1) == t).mean()),
            retention=float((new_p[own].argmax(1) == t).mean()) if own.any() else float("nan"),
            retention_baseline=float((base_p[own].argmax(1) == t).mean())
            if own.any()
            else float("nan"),
            shares=_shares(new_p[other]),
            shares_baseline=_shares(base_p[other]),
            log_odds_shift=_ci(shift, seed),
            n_items=int(other.sum()),
        ),
        labels=LabelEffect(
            tsr=float((new_l[other].argmax(1) == t).mean()),
            tsr_baseline=float((base_l[other].argmax(1) == t).mean()),
            accuracy=float((new_l.argmax(1) == truth).mean()),
            accuracy_baseline=float((base_l.argmax(1) == truth).mean()),
            delta_p_target=_ci(label_shift, seed + 1),
            delta_p=(new_l[other] - base_l[other]).mean(0).tolist(),
            label_mass=float(np.mean(steered.label_mass)),
            label_mass_baseline=float(np.mean(baseline.label_mass)),
        ),
        likert={
            trait: float(np.nanmean(new_likert[truth == k] - base_likert[truth == k]))
            if (truth == k).any() and np.isfinite(new_likert[truth == k]).any()
            else float("nan")
            for k, trait in enumerate(traits)
        },
        cost=ConceptCost(
            perplexity=steered.perplexity,
            perplexity_ratio=steered.perplexity / baseline.perplexity,
        ),
    )
