"""Did an intervention move the representation, the behaviour — and at what cost?

For one set of interventions (applied with :func:`traitlens.steer.steering`)
:func:`measure` records raw, per-prompt / per-item numbers:

- **representation**: probe readouts (``ProbeSet.readout``, logit units) of every
  trait on held-out neutral prompts, and of the target trait on held-out prompts
  whose persona is the *opposite* pole;
- **behaviour**: questionnaire item scores (log-prob Likert, reverse-keyed) and
  forced-choice P(high option) for all five traits;
- **cost**: perplexity of a neutral reference text, multiple-choice accuracy on
  held-out knowledge/reasoning items (:mod:`traitlens.evaluate.capability`, scored
  as lm-evaluation-harness scores them), distinct-n and repetition of a few
  generated answers.

:func:`effect` then compares a measurement with the unsteered baseline:
targeted success rate (held-out prompts whose readout crosses from the
opposite pole's side to the target's), readout shifts (the 5×5 spillover row),
questionnaire / forced-choice shifts with paired bootstrap CIs and effect
sizes, and the cost deltas. Raw measurements are JSON so a study can resume
and re-analyse them without recomputation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from traitlens.capture.capture import ChatPrompt, Prompt, capture_activations
from traitlens.data.schema import ContrastivePrompt, ForcedChoice, MCItem, Statement
from traitlens.evaluate.capability import score_mc
from traitlens.evaluate.cost import perplexity, text_cost
from traitlens.evaluate.forced_choice import run_forced_choice
from traitlens.evaluate.questionnaire import run_questionnaire
from traitlens.evaluate.results import Effect, Interval, Measurement, Shift, Success
from traitlens.evaluate.stats import bootstrap_ci, paired_bootstrap_ci, paired_effect_size
from traitlens.models.generation import generate_answers
from traitlens.models.loading import TraitModel

if TYPE_CHECKING:
    from traitlens.probe.artifact import ProbeSet


@dataclass
class EvalSets:
    """Held-out material every intervention is measured on (never used for fitting)."""

    traits: list[str]
    opposite: dict[str, list[ContrastivePrompt]]  # "T|pole" -> prompts, opposite persona
    target_persona: dict[str, str]  # "T|pole" -> a held-out persona text (prompt baseline)
    neutral: list[Prompt]
    statements: list[Statement]
    forced: list[ForcedChoice]
    templates: list[str] | None = None
    generation: list[Prompt] = field(default_factory=list)
    max_new_tokens: int = 32
    capability: list[MCItem] = field(default_factory=list)
    """Multiple-choice items for the capability cost (empty: not measured)."""


@dataclass
class ReadoutSpec:
    """Where traits are read: probe set, one layer per trait (downstream of steering)."""

    probes: ProbeSet
    layers: dict[str, int]
    pooling: str = "mean"
    batch_size: int = 16


def readouts(
    tm: TraitModel, prompts: Sequence[Any], spec: ReadoutSpec, traits: Sequence[str]
) -> np.ndarray:
    """``[n_prompts, len(traits)]`` probe readouts, each trait at its own layer.

    Runs whatever ``tm.model`` currently computes, so call it inside ``steering``.
    """
    layers = sorted({spec.layers[t] for t in traits})
    kind = spec.probes.kind  # read the hook point the probes were fitted on
    act = capture_activations(
        tm,
        prompts,
        span="question",
        layers=layers,
        kinds=(kind,),
        poolings=(spec.pooling,),
        neuron_stats=False,
        batch_size=spec.batch_size,
        progress=False,
    )
    columns = []
    for trait in traits:
        layer = spec.layers[trait]
        read = spec.probes.readout(act.layer(layer, kind, spec.pooling), layer)
        columns.append(read[:, spec.probes.traits.index(trait)].cpu().numpy())
    return np.stack(columns, axis=1)


def _item_scores(result: Any) -> dict[str, dict[str, float]]:
    """trait -> item id -> mean reverse-keyed score over templates and orders."""
    collected: dict[str, dict[str, list[float]]] = {}
    for item in result.items:
        collected.setdefault(item.trait, {}).setdefault(item.item_id, []).append(item.score)
    return {t: {i: float(np.mean(v)) for i, v in items.items()} for t, items in collected.items()}


def _choice_scores(result: Any) -> dict[str, dict[str, float]]:
    """trait -> item id -> mean P(high option) over both option orders."""
    collected: dict[str, dict[str, list[float]]] = {}
    for item in result.items:
        collected.setdefault(item.trait, {}).setdefault(item.item_id, []).append(item.p_high)
    return {t: {i: float(np.mean(v)) for i, v in items.items()} for t, items in collected.items()}


def measure(
    tm: TraitModel,
    sets: EvalSets,
    spec: ReadoutSpec,
    *,
    opposite_keys: Sequence[str] = (),
    system: str | None = None,
    opposite_system: str | None = None,
    with_generation: bool = True,
) -> Measurement:
    """Raw measurements of whatever the model currently computes.

    ``system`` replaces the (absent) system prompt of neutral prompts and
    questionnaires — the prompt-based baseline; ``opposite_system`` replaces
    the persona of the opposite-pole prompts (so the baseline's success rate is
    "swap the persona for a target-pole one").
    """
    neutral = [Prompt(p.user, system, p.id) for p in sets.neutral] if system else sets.neutral
    neutral_readout = readouts(tm, neutral, spec, sets.traits).tolist()
    opposite = {}
    for key in opposite_keys:
        trait = key.split("|")[0]
        prompts: Sequence[ChatPrompt] = sets.opposite[key]
        if opposite_system is not None:
            prompts = [Prompt(p.user, opposite_system, p.id) for p in sets.opposite[key]]
        opposite[key] = readouts(tm, prompts, spec, [trait])[:, 0].tolist()
    questionnaire = run_questionnaire(tm, sets.statements, templates=sets.templates, system=system)
    out = Measurement(
        neutral_readout=neutral_readout,
        opposite_readout=opposite,
        questionnaire=_item_scores(questionnaire),
        questionnaire_label_mass=float(np.mean([i.label_mass for i in questionnaire.items])),
        forced_choice=_choice_scores(run_forced_choice(tm, sets.forced, system=system)),
        perplexity=float(perplexity(tm).perplexity),
    )
    if sets.capability and system is None:  # a system prompt leaves the weights alone
        scores = score_mc(tm, sets.capability, batch_size=spec.batch_size)
        out.capability = [int(s.correct) for s in scores]
        out.capability_norm = [int(s.correct_norm) for s in scores]
    if with_generation and sets.generation:
        gen_prompts = (
            [Prompt(p.user, system, p.id) for p in sets.generation] if system else sets.generation
        )
        answers = generate_answers(
            tm, gen_prompts, max_new_tokens=sets.max_new_tokens, progress=False
        )
        cost = text_cost(answers)
        out.answers = answers
        out.distinct_2 = float(cost.distinct_2)
        out.repetition = float(cost.repetition_rate)
    return out


def _interval(ci: Any) -> Interval:
    return Interval(float(ci.low), float(ci.high)) if ci is not None else Interval()


def success_rate(
    baseline: Sequence[float],
    steered: Sequence[float],
    sign: float,
    boundary: float = 0.0,
    n_boot: int = 1000,
    seed: int = 0,
    boundary_source: str | None = None,
) -> Success:
    """Targeted success rate: among prompts whose baseline readout sits on the
    opposite pole's side of ``boundary`` (``sign · (readout − boundary) < 0``), the
    fraction whose steered readout crosses to the target side; bootstrap CI
    over those prompts."""
    base = (np.asarray(baseline) - boundary) * sign
    new = (np.asarray(steered) - boundary) * sign
    eligible = base < 0
    n = int(eligible.sum())
    if n == 0:
        return Success(math.nan, Interval(), 0, len(base), boundary, boundary_source)
    crossed = (new[eligible] > 0).astype(float)
    ci = bootstrap_ci(crossed, n_boot=n_boot, seed=seed) if n > 1 else None
    return Success(float(crossed.mean()), _interval(ci), n, len(base), boundary, boundary_source)


def held_out_boundary(baseline: Measurement, trait: str) -> float | None:
    """The pole boundary of ``trait``'s probe on held-out data: the midpoint between
    the unsteered mean readouts of held-out high-persona and low-persona prompts.

    The probe's own zero is fitted on training questions; on unseen questions its
    intercept drifts (on small runs every held-out prompt can read "low"), so
    crossing is judged against this calibrated boundary instead. ``None`` when the
    baseline lacks either set (then :func:`effect` falls back to the probe's zero and
    says so in the row).
    """
    low_persona = baseline.opposite_readout.get(f"{trait}|high")  # pushed high: low personas
    high_persona = baseline.opposite_readout.get(f"{trait}|low")
    if not low_persona or not high_persona:
        return None
    return float((np.mean(low_persona) + np.mean(high_persona)) / 2)


def _paired(base: Mapping[str, float], new: Mapping[str, float], seed: int) -> Shift:
    ids = sorted(set(base) & set(new))
    a = np.array([base[i] for i in ids])
    b = np.array([new[i] for i in ids])
    shift = float(np.mean(b - a)) if ids else math.nan
    if len(ids) < 2:
        return Shift(shift, Interval(), math.nan, len(ids))
    ci = paired_bootstrap_ci(b, a, seed=seed)  # CI of (steered − baseline)
    return Shift(shift, _interval(ci), float(paired_effect_size(b, a)), len(ids))


def _answer_shift(
    measured: dict[str, list[float]] | None,
    baseline: dict[str, list[float]] | None,
    traits: Sequence[str],
) -> dict[str, float] | None:
    if measured is None or baseline is None:
        return None
    return {
        t: float(np.nanmean(measured[t]) - np.nanmean(baseline[t]))
        for t in traits
        if t in measured and t in baseline
    }


HELD_OUT_SOURCE = "held-out midpoint of unsteered high- and low-persona readouts"
ZERO_SOURCE = (
    "probe zero: the baseline lacks held-out readouts of one pole, so the "
    "held-out boundary cannot be computed"
)


def effect(
    baseline: Measurement,
    measured: Measurement,
    traits: Sequence[str],
    target: str | None = None,
    pole: str | None = None,
    seed: int = 0,
) -> Effect:
    """Compare a measurement with the unsteered baseline (see module docstring)."""
    base_read = np.asarray(baseline.neutral_readout)
    new_read = np.asarray(measured.neutral_readout)
    readout_shift = {}
    for j, trait in enumerate(traits):
        diff = new_read[:, j] - base_read[:, j]
        ci = bootstrap_ci(diff, seed=seed) if len(diff) > 1 else None
        readout_shift[trait] = Shift(float(diff.mean()), _interval(ci))
    result = Effect(
        readout_shift=readout_shift,
        questionnaire_shift={
            t: _paired(baseline.questionnaire.get(t, {}), measured.questionnaire.get(t, {}), seed)
            for t in traits
        },
        forced_choice_shift={
            t: _paired(baseline.forced_choice.get(t, {}), measured.forced_choice.get(t, {}), seed)
            for t in traits
        },
        perplexity=measured.perplexity,
        perplexity_ratio=measured.perplexity / baseline.perplexity,
        label_mass=measured.questionnaire_label_mass,
    )
    if measured.capability and baseline.capability:
        steered = np.asarray(measured.capability, dtype=float)
        plain = np.asarray(baseline.capability, dtype=float)
        ci = paired_bootstrap_ci(steered, plain, seed=seed)
        result.capability = float(steered.mean())
        result.capability_change = Shift(ci.estimate, _interval(ci), n=int(ci.n))
    if measured.distinct_2 is not None and baseline.distinct_2 is not None:
        result.distinct_2 = measured.distinct_2
        result.distinct_2_delta = measured.distinct_2 - baseline.distinct_2
        result.repetition = measured.repetition
    result.answer_probe_shift = _answer_shift(
        measured.answer_probe_scores, baseline.answer_probe_scores, traits
    )
    result.judge_shift = _answer_shift(measured.judge_scores, baseline.judge_scores, traits)
    if target is not None and pole is not None:
        key = f"{target}|{pole}"
        sign = 1.0 if pole == "high" else -1.0
        if key in measured.opposite_readout and key in baseline.opposite_readout:
            boundary = held_out_boundary(baseline, target)
            result.success = success_rate(
                baseline.opposite_readout[key],
                measured.opposite_readout[key],
                sign,
                boundary=0.0 if boundary is None else boundary,
                seed=seed,
                boundary_source=HELD_OUT_SOURCE if boundary is not None else ZERO_SOURCE,
            )
        result.target_readout_shift = sign * readout_shift[target].shift
        result.target_questionnaire_shift = sign * result.questionnaire_shift[target].shift
        result.target_forced_choice_shift = sign * result.forced_choice_shift[target].shift
    return result
