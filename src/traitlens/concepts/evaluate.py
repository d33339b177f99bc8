"""Both levels of a concept edit, on held-out items, each against its own baseline.

:func:`measure_condition` reads, under whatever steering is active:

- *representation*: the domain probe's probabilities at *every* probed layer, from
  one forward pass (each layer read by the probe cross-validated at that layer), so
  the targeted success rate is a curve over depth; the headline layer is the best
  probe layer, and the last layer is reported beside it;
- *label generation*: the next-token distribution over the five domain names
  when the model is asked which domain the statement measures;
- *self-report*: the Likert answer to the statement itself (keyed score);
- *cost*: perplexity of the neutral reference text.

:func:`concept_effect` turns a measurement and the baseline into the row's
numbers: targeted success rate (share of other domains' items the probe now
assigns to the target), its baseline, the predicted-domain shares (one row of the
5×5 spillover matrix), the log-odds shift with a bootstrap CI, the label-level
counterparts, and the perplexity ratio. :func:`compare_with_controls` judges a real
edit against its matched random draws: success rate with a Wilson CI, the gain over
the controls' mean with a bootstrap CI over items, and a Monte Carlo p-value, at the
headline layer, the last layer and every layer, for both levels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from traitlens.artifact_io import Record
from traitlens.capture.capture import pool_formatted
from traitlens.concepts.capture import format_items
from traitlens.concepts.config import INSTRUCTED
from traitlens.concepts.items import ItemLike
from traitlens.concepts.labels import (
    LabelPrompt,
    asked,
    label_probs,
    normalized,
)
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
    readout_layers: tuple[int, ...]
    headline_layer: int
    label_prompt: LabelPrompt
    likert_templates: tuple[str, ...]
    batch_size: int = 16

    def describe(self) -> dict[str, Any]:
        """What a row's key covers besides its edit: the material and the read-out."""
        return {
            "items": [[i.id, i.trait, i.keyed, i.text] for i in self.items],
            "template": self.template,
            "readout_layers": list(self.readout_layers),
            "headline_layer": self.headline_layer,
            "label_prompt": self.label_prompt.describe(),
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
    layers: list[int] = field(default_factory=list)
    layer_probs: list[list[list[float]]] = field(default_factory=list)  # [L, n, T]


def measure_condition(
    tm: TraitModel,
    sets: ConceptSets,
    probes: DomainProbes,
    tokens: LabelTokens,
    *,
    full: bool = True,
    labels: bool = True,
) -> ConceptMeasurement:
    """Read every level once under whatever intervention context is active.

    The probe is read at every layer of ``sets.readout_layers`` from one forward pass.
    ``full=False`` (extra random-control draws) skips the Likert answers and the
    perplexity (left NaN), which only the first draw needs for the cost column;
    ``labels=False`` skips the label readout too (rows of NaN).
    """
    from traitlens.evaluate.cost import perplexity
    from traitlens.evaluate.questionnaire import run_questionnaire

    items = list(sets.items)
    layers = list(sets.readout_layers)
    label_p = np.full((len(items), len(sets.traits)), np.nan)
    mass = np.full(len(items), np.nan)
    if sets.template == INSTRUCTED:
        states, read = instructed_pass(tm, sets, probes.pooling, tokens, labels=labels)
        if read is not None:
            label_p, mass = read
    else:
        pooled = pool_formatted(
            tm,
            format_items(tm, items, sets.template),
            span="item",
            poolings=(probes.pooling,),
            layers=layers,
            batch_size=sets.batch_size,
            share_prefix=True,
        )
        states = pooled[f"resid.{probes.pooling}"]
        if labels:
            label_p, mass = label_probs(
                tm, items, sets.label_prompt, tokens, batch_size=sets.batch_size
            )
    layer_probs = [probes.probs(layer, states[:, k]) for k, layer in enumerate(layers)]
    probs = layer_probs[layers.index(sets.headline_layer)]
    likert = [float("nan")] * len(items)
    if sets.likert_templates and full:
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
        label_p.tolist(),
        mass.tolist(),
        likert,
        perplexity(tm).perplexity if full else float("nan"),
        layers=layers,
        layer_probs=[np.round(p, 6).tolist() for p in layer_probs],
    )


def instructed_pass(
    tm: TraitModel, sets: ConceptSets, pooling: str, tokens: LabelTokens, *, labels: bool = True
) -> tuple[Any, tuple[np.ndarray, np.ndarray] | None]:
    """The instructed context: each held-out item inside the label conversation, its
    statement pooled at every readout layer and (``labels``) the answer's first token read,
    from one forward pass (the k-shot turns are a prefix shared by every item whatever its
    option order, computed once). Returns ``(states [n, L, d], (probs, mass) | None)``.
    """
    import torch

    prompt, items = sets.label_prompt, list(sets.items)
    rows = asked(prompt, [i.text for i in items])[: None if labels else len(items)]
    formatted = []
    for text, rotation in rows:
        question = prompt.formatted(tm, text, rotation)
        formatted.append(replace(question, input_ids=question.input_ids + list(tokens.lead)))
    pooled = pool_formatted(
        tm,
        formatted,
        span="item",
        poolings=(pooling,),
        layers=list(sets.readout_layers),
        batch_size=sets.batch_size,
        share_prefix=True,
        next_token_ids=tokens.ids if labels else None,
    )
    states = pooled[f"resid.{pooling}"][: len(items)]
    if not labels:
        return states, None
    read = pooled["next.logprobs"].double()
    probs = normalized(torch.softmax(read, -1).numpy(), prompt, len(items))
    mass = torch.logsumexp(read, -1).exp().numpy()[: len(items)]
    return states, (probs, mass)


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
    tsr_last: float = float("nan")
    tsr_by_layer: list[float] = field(default_factory=list)
    tsr_by_layer_baseline: list[float] = field(default_factory=list)
    shares_last: list[float] = field(default_factory=list)
    shares_last_baseline: list[float] = field(default_factory=list)


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
    def unread(cls, n_labels: int) -> LabelEffect:
        """A control draw on which the label was not read (``label_draws``)."""
        nan = float("nan")
        return cls(nan, nan, nan, nan, Estimate(nan, nan, nan), [nan] * n_labels, nan, nan)


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
class ControlComparison(Record):
    """A real edit against its ``n_draws`` matched random controls, at both levels.

    ``success`` is the edit's own goal per item: for a boost or a direction, an item of
    another domain read as the target; for a suppression, an item of the target's own
    domain no longer read as it. ``success`` / ``success_last`` carry Wilson CIs (at the
    headline and the last layer); ``control`` is the draws' mean with the 2.5-97.5 %
    range of the draws; ``gain`` is success − mean control, with a bootstrap CI over
    items (each item's real outcome minus its mean outcome over the draws); ``p_value``
    the Monte Carlo p of the real rate against the draws (``gain_last``/``p_last``: the
    same at the last layer). The label level is the same
    on the generated domain name, plus ``delta_p_gain``: the change of P(target label)
    beyond the controls' (signed so that a success is positive).
    """

    metric: str
    n_draws: int
    n_label_draws: int
    n_items: int
    layers: list[int]
    headline_layer: int
    success: Estimate
    success_last: Estimate
    control: Estimate
    gain: Estimate
    p_value: float
    gain_last: Estimate
    p_last: float
    success_by_layer: list[float]
    control_by_layer: list[float]
    control_by_layer_high: list[float]
    p_by_layer: list[float]
    label_success: Estimate
    label_control: Estimate
    label_gain: Estimate
    label_p_value: float
    delta_p_gain: Estimate
    delta_p_p_value: float


def _outcomes(
    measurement: ConceptMeasurement, truth: np.ndarray, t: int, kind: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per item, whether the edit reached its goal: probe ``[L, n]``, label ``[n]``, and
    P(target label) ``[n]``, on the items the edit is judged on (see ControlComparison)."""
    judged = truth == t if kind == "suppress" else truth != t
    layer_probs = np.asarray(measurement.layer_probs)[:, judged]
    labels = np.asarray(measurement.label_probs)[judged]
    if kind == "suppress":
        return layer_probs.argmax(-1) != t, labels.argmax(-1) != t, labels[:, t]
    return layer_probs.argmax(-1) == t, labels.argmax(-1) == t, labels[:, t]


def _wilson(hits: np.ndarray) -> Estimate:
    from traitlens.stats import wilson_ci

    low, high = wilson_ci(int(hits.sum()), int(hits.size))
    return Estimate(float(hits.mean()) if hits.size else float("nan"), low, high)


def _draws(rates: np.ndarray) -> Estimate:
    return Estimate(
        float(rates.mean()), float(np.percentile(rates, 2.5)), float(np.percentile(rates, 97.5))
    )


def compare_with_controls(
    baseline: ConceptMeasurement,
    real: ConceptMeasurement,
    controls: Sequence[ConceptMeasurement],
    items: Sequence[ItemLike],
    traits: Sequence[str],
    target: str,
    kind: str,
    headline_layer: int,
    *,
    seed: int = 0,
) -> ControlComparison:
    """One real edit against its random draws (see :class:`ControlComparison`)."""
    from traitlens.stats import null_p_value

    if len(controls) < 2:
        raise ValueError("a comparison with controls needs ≥ 2 random draws")
    if any(c.item_ids != real.item_ids for c in controls) or baseline.item_ids != real.item_ids:
        raise ValueError("real and control rows were measured on different items")
    t = list(traits).index(target)
    truth = np.array([list(traits).index(i.trait) for i in items])
    sign = -1.0 if kind == "suppress" else 1.0
    probe, label, p_target = _outcomes(real, truth, t, kind)
    _, _, p_base = _outcomes(baseline, truth, t, kind)
    drawn = [_outcomes(c, truth, t, kind) for c in controls]
    c_probe = np.stack([d[0] for d in drawn]).astype(float)  # [K, L, n]
    # the label level over the draws whose labels were read (see ConceptConfig.label_draws)
    read = [d for d in drawn if np.isfinite(d[2]).all()]
    if len(read) < 2:
        raise ValueError("the label level needs ≥ 2 control draws with labels read")
    c_label = np.stack([d[1] for d in read]).astype(float)  # [K', n]
    c_p = np.stack([d[2] for d in read])  # [K', n]
    k = list(real.layers).index(headline_layer)
    probe_rates, label_rates = c_probe[:, k].mean(1), c_label.mean(1)
    layer_rates = c_probe.mean(2)  # [K, L]
    delta_real = sign * (p_target - p_base)
    delta_controls = sign * (c_p - p_base[None])
    return ControlComparison(
        metric="own items no longer read as the target"
        if kind == "suppress"
        else "other domains' items read as the target",
        n_draws=len(controls),
        n_label_draws=len(read),
        n_items=int(probe.shape[1]),
        layers=list(real.layers),
        headline_layer=headline_layer,
        success=_wilson(probe[k]),
        success_last=_wilson(probe[-1]),
        control=_draws(probe_rates),
        gain=_ci(probe[k] - c_probe[:, k].mean(0), seed),
        p_value=null_p_value(float(probe[k].mean()), probe_rates),
        gain_last=_ci(probe[-1] - c_probe[:, -1].mean(0), seed),
        p_last=null_p_value(float(probe[-1].mean()), c_probe[:, -1].mean(1)),
        success_by_layer=probe.mean(1).tolist(),
        control_by_layer=layer_rates.mean(0).tolist(),
        control_by_layer_high=np.percentile(layer_rates, 97.5, axis=0).tolist(),
        p_by_layer=[
            null_p_value(float(probe[j].mean()), layer_rates[:, j]) for j in range(len(probe))
        ],
        label_success=_wilson(label),
        label_control=_draws(label_rates),
        label_gain=_ci(label - c_label.mean(0), seed + 1),
        label_p_value=null_p_value(float(label.mean()), label_rates),
        delta_p_gain=_ci(delta_real - delta_controls.mean(0), seed + 2),
        delta_p_p_value=null_p_value(float(delta_real.mean()), delta_controls.mean(1)),
    )


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
    vs_controls: ControlComparison | None = None

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
        tail = {} if self.vs_controls is None else {"vs_controls": self.vs_controls.to_dict()}
        return {**head, **self.size, **self.effect.to_dict(), "row_key": self.row_key, **tail}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConceptResult:
        missing = [k for k in (*cls.DESCRIPTIVE, *cls.EFFECT, "row_key") if k not in data]
        if missing:
            raise ArtifactError(
                f"a concept evaluation row lacks {', '.join(missing)}: it was written by "
                "another version; rerun `traitlens study` (measured rows are reused)"
            )
        effect = ConceptEffect.from_dict({k: data[k] for k in cls.EFFECT})
        skip = {*cls.DESCRIPTIVE, *cls.EFFECT, "row_key", "vs_controls"}
        vs = data.get("vs_controls")
        return cls(
            name=data["name"],
            trait=data["trait"],
            kind=data["kind"],
            control=bool(data["control"]),
            fraction=data["fraction"],
            size={k: v for k, v in data.items() if k not in skip},
            effect=effect,
            row_key=data["row_key"],
            vs_controls=None if vs is None else ControlComparison.from_dict(vs),
        )

    @property
    def condition(self) -> tuple[Any, ...]:
        """What identifies the edit apart from real/control: domain, kind, fraction,
        edit band and γ (its control draws share it)."""
        return (
            self.trait,
            self.kind,
            self.fraction,
            self.size.get("band"),
            self.size.get("gamma"),
        )


def _label_effect(
    base_l: np.ndarray,
    new_l: np.ndarray,
    baseline: ConceptMeasurement,
    steered: ConceptMeasurement,
    other: np.ndarray,
    truth: np.ndarray,
    t: int,
    seed: int,
) -> LabelEffect:
    return LabelEffect(
        tsr=float((new_l[other].argmax(1) == t).mean()),
        tsr_baseline=float((base_l[other].argmax(1) == t).mean()),
        accuracy=float((new_l.argmax(1) == truth).mean()),
        accuracy_baseline=float((base_l.argmax(1) == truth).mean()),
        delta_p_target=_ci(new_l[other, t] - base_l[other, t], seed + 1),
        delta_p=(new_l[other] - base_l[other]).mean(0).tolist(),
        label_mass=float(np.mean(steered.label_mass)),
        label_mass_baseline=float(np.mean(baseline.label_mass)),
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
    base_layers, new_layers = np.asarray(baseline.layer_probs), np.asarray(steered.layer_probs)
    base_l, new_l = np.asarray(baseline.label_probs), np.asarray(steered.label_probs)
    shift = _logit(new_p[other, t]) - _logit(base_p[other, t])
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
            tsr_last=float((new_layers[-1][other].argmax(1) == t).mean())
            if new_layers.size
            else float("nan"),
            tsr_by_layer=[float((p[other].argmax(1) == t).mean()) for p in new_layers],
            tsr_by_layer_baseline=[float((p[other].argmax(1) == t).mean()) for p in base_layers],
            shares_last=_shares(new_layers[-1][other]) if new_layers.size else [],
            shares_last_baseline=_shares(base_layers[-1][other]) if base_layers.size else [],
        ),
        labels=_label_effect(base_l, new_l, baseline, steered, other, truth, t, seed)
        if np.isfinite(new_l).all()
        else LabelEffect.unread(len(traits)),
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
