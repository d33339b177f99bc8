"""Orchestration: calibrate → baseline → reliability → drift → structure, per model; then compare.

Kept thin on purpose: the maths is in :mod:`~traitlens.fingerprint.stats`,
:mod:`~traitlens.fingerprint.axes` and :mod:`~traitlens.fingerprint.reliability`;
generation, chat formatting and pooling are the shared stages'
(:mod:`traitlens.models`, :mod:`traitlens.capture`). This module decides which
answers feed which statistic. One model is a plan of stages (:data:`FINGERPRINT`, on
:mod:`traitlens.design.stages`: calibration, baseline, axes, statistics, drift,
summary) over compute-only functions (calibrate_axes, measure_length,
baseline_profile, calibration_quality, reliability_and_dead_zones,
instruction_asymmetry, answer_structure); :func:`fingerprint_model` runs it and
:func:`run_fingerprint` runs it per model. The artifacts:

- ``RUN/fingerprint/<model>/axes.{safetensors,json}`` — the calibrated axes
- ``RUN/fingerprint/<model>/scores.jsonl`` — every answer with its scores
- ``RUN/fingerprint/<model>/summary.json`` — that model's results
- ``RUN/fingerprint.json`` — all models plus the comparison

Generated answers are keyed rows (:mod:`traitlens.rows`: model digest, prompts and
sampling settings) and activations persisted capture jobs
(``persist(capture_job(...))``), so a rerun after an interruption resamples nothing.
"""

from __future__ import annotations

import gc
import json
import math
import re
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import numpy as np

from traitlens import __version__
from traitlens.artifact_io import (
    ModelIdentity,
    Record,
    atomic_write,
    jsonable,
    require_identity,
    write_json,
)
from traitlens.capture.capture import Prompt, capture_job
from traitlens.data.schema import POLES
from traitlens.design.stages import Plan, StageContext, run_plan
from traitlens.errors import ArtifactError, DataError
from traitlens.fingerprint.axes import (
    AxisFit,
    CrossFit,
    Standardizer,
    TraitAxes,
    crossfit,
    fit_axis,
    paired_accuracy,
    split_half_stability,
)
from traitlens.fingerprint.config import FingerprintConfig, resolve_layers
from traitlens.fingerprint.conversation import (
    CLEAN_VERSION,
    ConversationRun,
    clean_answer,
    run_conversations,
)
from traitlens.fingerprint.reliability import asymmetry, dead_zone, seed_noise
from traitlens.fingerprint.stats import (
    FloatArray,
    bootstrap_median_ci,
    bootstrap_median_difference,
    components_for,
    cosine,
    d_prime,
    icc,
    length_slope,
    partial_correlation,
    participation_ratio,
    pca_explained_variance,
    pearson,
)
from traitlens.fingerprint.texts import (
    AXIS_NAMES,
    POLE_INSTRUCTIONS,
    QuestionItem,
    Scenario,
    default_questions,
    resolve_scenarios,
)
from traitlens.models.generation import generate_answers
from traitlens.models.loading import TraitModel
from traitlens.provenance import Provenance, describe_changes, persist, provenance
from traitlens.rows import load_row, measured_row
from traitlens.stats import separation_auc

Log = Callable[[str], None]
FINGERPRINT = Plan()
SEED_STRIDE = 10_007  # generate_answers seeds batch b with seed + b: keep seeds' ranges apart


@dataclass(frozen=True)
class _Item:
    """One prompt to answer: ``system`` is the pole instruction (None at baseline)."""

    id: str
    question_id: str
    user: str
    system: str | None = None
    axis: str | None = None
    pole: str | None = None
    seed: int = 0


@dataclass
class ModelFingerprint:
    """One model's results: ``summary`` is JSON-ready; the arrays feed the comparison."""

    summary: dict[str, Any]
    baseline_scores: FloatArray  # [n_baseline_answers, T]
    baseline_questions: list[str]
    axes: TraitAxes


def _quiet(message: str) -> None:
    del message


def slugify(name: str) -> str:
    """A directory-safe model name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"


def select_questions(
    questions: Sequence[QuestionItem], config: FingerprintConfig
) -> tuple[list[QuestionItem], list[QuestionItem], dict[str, list[QuestionItem]]]:
    """``(baseline, calibration_neutral, trait_questions_by_axis)``, shuffled by the seed.

    The neutral questions answered under instructions are a subset of the baseline
    ones, so each has a paired baseline answer for the asymmetry check.
    """
    rng = np.random.default_rng(config.seed)

    def shuffled(items: list[QuestionItem], limit: int | None) -> list[QuestionItem]:
        ordered = sorted(items, key=lambda q: q.id)
        picked = [ordered[i] for i in rng.permutation(len(ordered))]
        return picked if limit is None else picked[:limit]

    neutral = shuffled([q for q in questions if q.category == "neutral"], config.neutral_questions)
    if len(neutral) < 2:
        raise DataError(
            f"the baseline needs at least 2 neutral questions (category 'neutral'), got "
            f"{len(neutral)}; add some to the question file"
        )
    calibration_neutral = neutral[: config.calibration_neutral]
    by_axis = {}
    for axis in config.axes:
        own = shuffled([q for q in questions if q.category == axis], config.trait_questions)
        if len(own) + len(calibration_neutral) < 2:
            raise DataError(
                f"axis {axis} ({AXIS_NAMES[axis]}) has {len(own)} trait questions and "
                f"{len(calibration_neutral)} neutral calibration questions; it needs at least 2 "
                "distinct questions to hold one out"
            )
        by_axis[axis] = own
    return neutral, calibration_neutral, by_axis


@dataclass(frozen=True)
class _Answers(Record):
    """Generated answers (a batch, or ``[conversation][turn]``), the data of a keyed row
    (see :mod:`traitlens.rows`)."""

    answers: list[Any]


def _answers_key(tm: TraitModel, settings: dict[str, Any], data: Any = None) -> Provenance:
    return provenance(
        "fingerprint", model=tm.identity, config={**settings, "chat": tm.formatter.mode}, data=data
    )


def _generate_cached(ctx: StageContext, items: Sequence[_Item], seed: int, name: str) -> list[str]:
    """Sampled answers, cleaned; a keyed row ``RUN/NAME--KEY.json``, so the same request
    made again is read back, not resampled."""
    config: FingerprintConfig = ctx.config
    tm = ctx.tm
    settings = {
        "seed": seed,
        "max_new_tokens": config.max_new_tokens,
        "temperature": config.temperature,
        "top_p": config.top_p,
        "batch_size": config.batch_size,
    }

    def sample() -> _Answers:
        raw = generate_answers(
            tm,
            list(items),
            max_new_tokens=config.max_new_tokens,
            do_sample=True,
            seed=seed,
            temperature=config.temperature,
            top_p=config.top_p,
            batch_size=config.batch_size,
            progress=ctx.progress,
        )
        return _Answers([clean_answer(a, tm.formatter.mode) for a in raw])

    prov = _answers_key(tm, settings, [[item.id, item.system, item.user] for item in items])
    saved = measured_row(ctx.run, name, prov, sample, _Answers).answers
    # re-cleaned: the rule may have improved since (it is idempotent)
    return [clean_answer(str(a), tm.formatter.mode) for a in saved]


def _require_answers(
    ctx: StageContext, items: Sequence[_Item], answers: Sequence[str], what: str
) -> list[int]:
    """Indices of non-empty answers; DataError when too few are left to measure anything."""
    config: FingerprintConfig = ctx.config
    keep = [i for i, a in enumerate(answers) if a.strip()]
    empty = len(items) - len(keep)
    hint = (
        f"model {ctx.tm.identity.name!r} (chat format: {ctx.tm.formatter.mode}) produced empty "
        f"answers for {empty} of {len(items)} {what} prompts; check that it can answer questions "
        f"in this format (an instruction-tuned model, or a base model in plain format), or raise "
        f"--max-new-tokens (now {config.max_new_tokens})"
    )
    if what == "calibration":
        for axis in config.axes:
            for pole in ("high", "low"):
                usable = sum(1 for i in keep if items[i].axis == axis and items[i].pole == pole)
                if usable < 2:
                    raise DataError(f"{hint}: axis {axis}, pole {pole} has {usable} usable answers")
    elif len(keep) < 2:
        raise DataError(f"{hint}: fewer than 2 usable answers remain")
    return keep


# ---------------------------------------------------------------- answers


@dataclass
class AnswerSet:
    """Answered prompts (empty answers dropped) with their pooled states and lengths."""

    items: list[_Item]
    answers: list[str]
    pooled: FloatArray  # [n, L, d] residual stream pooled over each answer's tokens
    lengths: FloatArray  # [n] answer tokens
    asked: int  # prompts before empty answers were dropped

    @property
    def question_ids(self) -> list[str]:
        return [it.question_id for it in self.items]

    def on_axis(self, axis: str) -> np.ndarray:
        """[n] bool: which answers were written under one of ``axis``' instructions."""
        return np.array([it.axis == axis for it in self.items])

    def is_high(self, axis: str) -> np.ndarray:
        """[answers on ``axis``] bool: written under the high-pole instruction."""
        return np.array([it.pole == POLES[0] for it in self.items if it.axis == axis])


def _answer_set(
    ctx: StageContext,
    items: Sequence[_Item],
    answers: Sequence[str],
    what: str,
    with_instruction: bool,
) -> AnswerSet:
    """Drop empty answers (refusing when too few are left), then pool the rest over their
    tokens: the residual stream ``[n, L, d]``, a persisted capture job in
    ``RUN/activations/WHAT``.

    By default the instruction is left *out* of the encoded context: the axis then
    reads what the model said, not what it was told, and baseline answers (which
    never saw an instruction) are encoded exactly like calibration answers.
    """
    config: FingerprintConfig = ctx.config
    keep = _require_answers(ctx, items, answers, what)
    kept = [items[i] for i in keep]
    texts = [answers[i] for i in keep]
    prompts = [
        Prompt(user=it.user, system=it.system if with_instruction else None, id=it.id)
        for it in kept
    ]
    job = capture_job(
        ctx.tm,
        prompts,
        answers=texts,
        span="answer",
        poolings=(config.pooling,),
        layers=list(ctx["questions"].layers),
        neuron_stats=False,
        decay_half_life=config.decay_half_life,
        batch_size=config.batch_size,
        progress=ctx.progress,
    )
    activations = persist(job, ctx.run / "activations" / what, force=ctx.force)
    pooled = activations.get("resid", config.pooling).double().numpy()
    lengths = np.array(
        [len(ctx.tm.tokenizer(a, add_special_tokens=False)["input_ids"]) for a in texts],
        dtype=np.float64,
    )
    return AnswerSet(kept, texts, pooled, lengths, len(items))


@dataclass(frozen=True)
class _Questions:
    """What every stage of one model reads besides the configuration: the questions
    (:func:`select_questions`) and the layers the axes pool."""

    baseline: list[QuestionItem]
    neutral: list[QuestionItem]  # the neutral ones also answered under instructions
    by_axis: dict[str, list[QuestionItem]]
    layers: list[int]


@FINGERPRINT.stage("calibration", "each axis' questions answered under both pole instructions")
def stage_calibration(ctx: StageContext) -> AnswerSet:
    """Each axis' questions (its own plus the neutral calibration ones) answered under
    both pole instructions, then pooled."""
    config: FingerprintConfig = ctx.config
    questions: _Questions = ctx["questions"]
    items = [
        _Item(f"cal:{axis}:{pole}:{q.id}", q.id, q.text, POLE_INSTRUCTIONS[axis][p], axis, pole)
        for axis in config.axes
        for q in questions.by_axis[axis] + questions.neutral
        for p, pole in enumerate(POLES)
    ]
    ctx.log(
        f"  {len(items)} instructed answers ({len(config.axes)} axes × 2 poles), "
        f"layers {questions.layers}, pooling {config.pooling}"
    )
    answers = _generate_cached(ctx, items, config.seed, "answers_calibration")
    return _answer_set(ctx, items, answers, "calibration", config.instructed_context)


@FINGERPRINT.stage("baseline", "neutral questions, no system prompt, once per sampling seed")
def stage_baseline(ctx: StageContext) -> AnswerSet:
    config: FingerprintConfig = ctx.config
    questions = ctx["questions"].baseline
    ctx.log(f"  {len(questions)} neutral questions × {config.seeds} seeds")
    items: list[_Item] = []
    answers: list[str] = []
    for s in range(config.seeds):
        rows = [_Item(f"base:{s}:{q.id}", q.id, q.text, None, seed=s) for q in questions]
        seed = config.seed + SEED_STRIDE * (s + 1)
        answers += _generate_cached(ctx, rows, seed, f"answers_baseline_{s}")
        items += rows
    return _answer_set(ctx, items, answers, "baseline", False)


# ---------------------------------------------------------------- axes and length


@dataclass(frozen=True)
class Calibration:
    """Stage 3 — the fitted axes and, per axis, the held-out evidence for them.

    ``heldout[axis]`` scores each calibration answer on that axis with the fold
    axis that never saw its question; ``masks[axis]`` selects those answers.
    ``slopes``/``mean_length`` describe the length confound (``regressed``: it is
    subtracted from every score, ``axes`` included).
    """

    axes: TraitAxes
    fits: dict[str, AxisFit]
    crossfits: dict[str, CrossFit]
    heldout: dict[str, FloatArray]
    stability: dict[str, FloatArray]
    masks: dict[str, np.ndarray]
    slopes: FloatArray
    mean_length: float
    regressed: bool = False

    def correct(self, scores: FloatArray, lengths: FloatArray, t: int) -> FloatArray:
        """``scores`` on axis ``t`` with the length confound removed, if it is regressed."""
        if not self.regressed:
            return scores
        return scores - self.slopes[t] * (lengths - self.mean_length)


def calibrate_axes(
    tm: TraitModel, config: FingerprintConfig, layers: Sequence[int], cal: AnswerSet
) -> Calibration:
    """Full fit, held-out (by question) scores and split-half stability, per axis."""
    standardizer = Standardizer.fit(cal.pooled) if config.standardize else None
    fits: dict[str, AxisFit] = {}
    crossfits: dict[str, CrossFit] = {}
    stability: dict[str, FloatArray] = {}
    masks: dict[str, np.ndarray] = {}
    for axis in config.axes:
        masks[axis] = cal.on_axis(axis)
        is_high = cal.is_high(axis)
        groups = [it.question_id for it in cal.items if it.axis == axis]
        pooled = cal.pooled[masks[axis]]
        fits[axis] = fit_axis(pooled[is_high], pooled[~is_high], standardizer)
        crossfits[axis] = crossfit(pooled, is_high, groups, config.folds, config.seed, standardizer)
        stability[axis] = split_half_stability(
            pooled, is_high, groups, config.stability_splits, config.seed, standardizer
        )
    axes = TraitAxes.from_fits(
        tm.identity, fits, layers, config.pooling, config.decay_half_life, config.to_dict()
    )
    heldout = {axis: crossfits[axis].scores for axis in config.axes}
    slopes = np.zeros(len(config.axes))
    return Calibration(
        axes, fits, crossfits, heldout, stability, masks, slopes, float(cal.lengths.mean())
    )


def measure_length(
    config: FingerprintConfig, calibration: Calibration, cal: AnswerSet, base: AnswerSet
) -> tuple[Calibration, dict[str, Any]]:
    """Stage 4 — the length confound: always measured; regressed out (pole as
    covariate) when ``config.regress_length``. Returns the calibration to score with."""
    slopes = np.zeros(len(config.axes))
    raw_base_scores = calibration.axes.score(base.pooled)
    report: dict[str, Any] = {
        "regressed": config.regress_length,
        "mean_length_calibration": calibration.mean_length,
    }
    for t, axis in enumerate(config.axes):
        is_high = cal.is_high(axis)
        lengths = cal.lengths[calibration.masks[axis]]
        held = calibration.heldout[axis]
        slopes[t] = length_slope(held, lengths, is_high)
        report[axis] = {
            "r_baseline": pearson(raw_base_scores[:, t], base.lengths),
            "r_calibration_within_pole": partial_correlation(held, lengths, is_high),
            "slope_per_token": slopes[t],
            "mean_tokens_high": float(lengths[is_high].mean()),
            "mean_tokens_low": float(lengths[~is_high].mean()),
            "mean_tokens_baseline": float(base.lengths.mean()),
        }
    measured = replace(calibration, slopes=slopes)
    if not config.regress_length:
        return measured, report
    corrected = replace(
        measured,
        axes=calibration.axes.with_length_correction(slopes, calibration.mean_length),
        regressed=True,
    )
    heldout = {
        axis: corrected.correct(calibration.heldout[axis], cal.lengths[calibration.masks[axis]], t)
        for t, axis in enumerate(config.axes)
    }
    return replace(corrected, heldout=heldout), report


# ---------------------------------------------------------------- per-axis statistics


def baseline_profile(
    config: FingerprintConfig, base: AnswerSet, scores: FloatArray
) -> tuple[dict[str, Any], FloatArray]:
    """Stage 5a — median baseline score per axis with a cluster-bootstrap CI over
    questions, and the median per seed (``[T, seeds]``, for the profile ICC)."""
    seeds = np.array([it.seed for it in base.items])
    per_seed = np.full((len(config.axes), config.seeds), np.nan)
    profile: dict[str, Any] = {}
    for t, axis in enumerate(config.axes):
        median, lower, upper = bootstrap_median_ci(
            scores[:, t], base.question_ids, n_boot=config.bootstrap, seed=config.seed + t
        )
        for s in range(config.seeds):
            chosen = seeds == s
            per_seed[t, s] = np.median(scores[chosen, t]) if chosen.any() else np.nan
        profile[axis] = {
            "median": median,
            "ci": [lower, upper],
            "per_seed": per_seed[t].tolist(),
            "seed_sd": float(np.nanstd(per_seed[t], ddof=1)) if config.seeds > 1 else None,
        }
    return profile, per_seed


def calibration_quality(
    config: FingerprintConfig, calibration: Calibration, cal: AnswerSet
) -> dict[str, Any]:
    """Stage 5b — how well each axis separates the poles on held-out questions."""
    quality: dict[str, Any] = {}
    for t, axis in enumerate(config.axes):
        mask = calibration.masks[axis]
        is_high = cal.is_high(axis)
        held = calibration.heldout[axis]
        in_sample = calibration.correct(
            calibration.fits[axis].score(cal.pooled[mask]), cal.lengths[mask], t
        )
        question_ids = [it.question_id for it in cal.items if it.axis == axis]
        stab = calibration.stability[axis]
        quality[axis] = {
            "accuracy": float(np.mean((held > 0) == is_high)),
            "paired_accuracy": paired_accuracy(held, is_high, question_ids),
            "auc": separation_auc(held[is_high], held[~is_high]),
            "d_prime": d_prime(held[is_high], held[~is_high]),
            "d_prime_in_sample": d_prime(in_sample[is_high], in_sample[~is_high]),
            "stability": float(stab.mean()) if stab.size else None,
            "stability_min": float(stab.min()) if stab.size else None,
            "pole_medians": [float(np.median(held[is_high])), float(np.median(held[~is_high]))],
            "n_answers": int(len(held)),
            "n_questions": len(set(question_ids)),
        }
    return quality


def reliability_and_dead_zones(
    config: FingerprintConfig,
    base: AnswerSet,
    scores: FloatArray,
    question_order: Sequence[str],
    quality: dict[str, Any],
    per_seed: FloatArray,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Stage 5c — test–retest ICC over seeds, SNR and the dead-zone verdict per axis;
    returns ``({"per_axis": ..., "profile": ...}, dead_zones)``."""
    seeds = np.array([it.seed for it in base.items])
    qids = np.array(base.question_ids)
    complete = [
        q
        for q in question_order
        if all(((seeds == s) & (qids == q)).any() for s in range(config.seeds))
    ]
    has_table = config.seeds >= 2 and len(complete) >= 2
    per_axis: dict[str, Any] = {}
    dead: dict[str, Any] = {}
    for t, axis in enumerate(config.axes):
        table = np.array(
            [
                [scores[(seeds == s) & (qids == q), t][0] for s in range(config.seeds)]
                for q in complete
            ]
        )
        noise = seed_noise(table) if has_table else float("nan")
        signal = quality[axis]["pole_medians"][0] - quality[axis]["pole_medians"][1]
        snr = signal / noise if noise and math.isfinite(noise) and noise > 0 else float("nan")
        per_axis[axis] = {
            "icc2_1": icc(table, "2,1") if has_table else None,
            "icc3_1": icc(table, "3,1") if has_table else None,
            "n_questions": len(complete),
            "seed_noise_sd": noise,
            "snr": snr,
        }
        q = quality[axis]
        dead[axis] = dead_zone(q["accuracy"], q["d_prime"], q["stability"], snr)
    profile_icc: dict[str, Any] = {"icc2_1": None, "icc3_1": None}
    if len(config.axes) >= 2 and config.seeds >= 2 and np.all(np.isfinite(per_seed)):
        profile_icc = {"icc2_1": icc(per_seed, "2,1"), "icc3_1": icc(per_seed, "3,1")}
    return {"per_axis": per_axis, "profile": profile_icc}, dead


def instruction_asymmetry(
    config: FingerprintConfig,
    calibration: Calibration,
    cal: AnswerSet,
    base: AnswerSet,
    neutral: Sequence[QuestionItem],
) -> dict[str, Any]:
    """Stage 5d — does the model follow 'more X' and 'less X' alike? Paired per
    neutral calibration question, all scored by the fold axis that never saw it."""
    result: dict[str, Any] = {}
    for t, axis in enumerate(config.axes):
        fold_scores = calibration.crossfits[axis].score_for(
            base.question_ids, base.pooled, calibration.fits[axis]
        )
        heldout_base = calibration.correct(fold_scores, base.lengths, t)
        axis_items = [it for it in cal.items if it.axis == axis]
        held = calibration.heldout[axis]
        highs, lows, bases = [], [], []
        for q in neutral:
            h = [
                held[i]
                for i, it in enumerate(axis_items)
                if (it.question_id, it.pole) == (q.id, POLES[0])
            ]
            lo = [
                held[i]
                for i, it in enumerate(axis_items)
                if (it.question_id, it.pole) == (q.id, POLES[1])
            ]
            b = heldout_base[np.array(base.question_ids) == q.id]
            if h and lo and b.size:
                highs.append(h[0])
                lows.append(lo[0])
                bases.append(float(np.median(b)))
        result[axis] = asymmetry(highs, lows, bases, n_boot=config.bootstrap, seed=config.seed + t)
    return result


def answer_structure(
    config: FingerprintConfig, axes: TraitAxes, scores: FloatArray
) -> dict[str, Any]:
    """Stage 7 — how many dimensions do the answers use (``scores [n_answers, T]``),
    and how entangled are the axes (direction cosine vs projection correlation)?"""
    structure: dict[str, Any] = {"n_answers": int(len(scores))}
    n = len(config.axes)
    if n < 2:
        return structure
    ratios = pca_explained_variance(scores)
    correlation = [[pearson(scores[:, i], scores[:, j]) for j in range(n)] for i in range(n)]
    axis_cosine = [
        [
            float(
                np.mean(
                    [
                        cosine(a, b)
                        for a, b in zip(axes.directions[i], axes.directions[j], strict=True)
                    ]
                )
            )
            for j in range(n)
        ]
        for i in range(n)
    ]
    structure.update(
        {
            "pca_explained_variance": ratios.tolist(),
            "components_90": components_for(ratios, 0.9),
            "participation_ratio": participation_ratio(ratios),
            "axis_cosine": axis_cosine,
            "projection_correlation": correlation,
        }
    )
    return structure


# ---------------------------------------------------------------- one model


@dataclass(frozen=True)
class ScoredAxes:
    """The axes stage's artifact: the calibration to score with, the length report, and
    every answer scored once on the final axes (``[n_answers, T]``)."""

    calibration: Calibration
    length: dict[str, Any]
    calibration_scores: FloatArray
    baseline_scores: FloatArray

    @property
    def axes(self) -> TraitAxes:
        return self.calibration.axes


@FINGERPRINT.stage("axes", "axis fits, held-out scores and stability; the length confound")
def stage_axes(ctx: StageContext) -> ScoredAxes:
    """Fit the axes (:func:`calibrate_axes`), measure the length confound
    (:func:`measure_length`, which may correct the axes), then score every answer."""
    cal, base = ctx["calibration"], ctx["baseline"]
    fitted = calibrate_axes(ctx.tm, ctx.config, ctx["questions"].layers, cal)
    calibration, length = measure_length(ctx.config, fitted, cal, base)
    axes = calibration.axes
    return ScoredAxes(
        calibration,
        length,
        axes.score(cal.pooled, lengths=cal.lengths),
        axes.score(base.pooled, lengths=base.lengths),
    )


@FINGERPRINT.stage("statistics", "profile, calibration quality, reliability, dead zones")
def stage_statistics(ctx: StageContext) -> dict[str, Any]:
    """The per-axis statistics of ``summary.json``, in its order."""
    config: FingerprintConfig = ctx.config
    cal, base, questions = ctx["calibration"], ctx["baseline"], ctx["questions"]
    scored: ScoredAxes = ctx["axes"]
    calibration, scores = scored.calibration, scored.baseline_scores
    profile, per_seed = baseline_profile(config, base, scores)
    quality = calibration_quality(config, calibration, cal)
    order = [q.id for q in questions.baseline]
    reliability, dead = reliability_and_dead_zones(config, base, scores, order, quality, per_seed)
    return {
        "profile": profile,
        "calibration": quality,
        "reliability": reliability,
        "dead_zones": dead,
        "asymmetry": instruction_asymmetry(config, calibration, cal, base, questions.neutral),
    }


@FINGERPRINT.stage("drift", "per-turn profile along scripted conversations")
def stage_drift(ctx: StageContext) -> dict[str, Any]:
    """Per-turn profile along each scripted conversation (the model writes its own
    turns); the answers are a keyed row ``answers_drift--KEY.json``, replayed on a rerun
    (the activations are always captured again)."""
    config: FingerprintConfig = ctx.config
    scenarios = resolve_scenarios(config.scenarios)
    if not scenarios:
        return {}
    axes = ctx["axes"].axes
    turns = [list(s.turns[: config.drift_turns]) for s in scenarios]
    ctx.log(f"  {len(scenarios)} conversation(s) × up to {max(len(t) for t in turns)} turns")
    settings = {
        "seed": config.seed,
        "max_new_tokens": config.max_new_tokens,
        "temperature": config.temperature,
        "top_p": config.top_p,
        "turns": turns,
        "clean": CLEAN_VERSION,
    }
    prov = _answers_key(ctx.tm, settings)
    saved = load_row(ctx.run, "answers_drift", prov, _Answers)
    run = run_conversations(
        ctx.tm,
        turns,
        layers=ctx["questions"].layers,
        pooling=config.pooling,
        decay_half_life=config.decay_half_life,
        max_new_tokens=config.max_new_tokens,
        seed=config.seed,
        temperature=config.temperature,
        top_p=config.top_p,
        batch_size=config.batch_size,
        replay=None if saved is None else saved.answers,
        progress=ctx.progress,
    )
    if saved is None:
        measured_row(ctx.run, "answers_drift", prov, lambda: _Answers(run.answers), _Answers)
    return {
        scenario.name: _drift_scenario(axes, scenario, run, c)
        for c, scenario in enumerate(scenarios)
    }


@FINGERPRINT.stage("summary", "answer structure; axes, scores and summary written")
def stage_summary(ctx: StageContext) -> ModelFingerprint:
    """``axes.*``, ``scores.jsonl`` (calibration then baseline) and ``summary.json``."""
    config: FingerprintConfig = ctx.config
    tm, cal, base = ctx.tm, ctx["calibration"], ctx["baseline"]
    scored: ScoredAxes = ctx["axes"]
    axes, base_scores, cal_scores = scored.axes, scored.baseline_scores, scored.calibration_scores
    summary: dict[str, Any] = {
        "model": tm.identity.to_dict(),
        "chat_format": tm.formatter.mode,
        "axes": list(config.axes),
        "layers": list(ctx["questions"].layers),
        "pooling": config.pooling,
        "n_answers": {"calibration": len(cal.items), "baseline": len(base.items)},
        "empty_answers": {
            "calibration": cal.asked - len(cal.items),
            "baseline": base.asked - len(base.items),
        },
        **ctx["statistics"],
        "drift": ctx["drift"],
        "structure": answer_structure(config, axes, np.concatenate([cal_scores, base_scores])),
        "length": scored.length,
        "examples": _examples(config, cal, base),
    }
    axes.save(ctx.run)
    rows = [
        (kind, it, a, n, sc)
        for kind, answers, scores in (
            ("calibration", cal, cal_scores),
            ("baseline", base, base_scores),
        )
        for it, a, n, sc in zip(
            answers.items, answers.answers, answers.lengths, scores, strict=True
        )
    ]
    _write_scores(ctx.run / "scores.jsonl", config.axes, rows)
    write_json(ctx.run / "summary.json", summary)
    return ModelFingerprint(summary, base_scores, base.question_ids, axes)


def fingerprint_model(
    tm: TraitModel,
    config: FingerprintConfig,
    questions: Sequence[QuestionItem] | None = None,
    out_dir: str | Path | None = None,
    *,
    progress: bool = True,
    log: Log = _quiet,
    force: bool = False,
) -> ModelFingerprint:
    """Calibrate axes, measure the baseline profile, its reliability, dead zones and drift:
    the stages of :data:`FINGERPRINT`, run into ``out_dir``.

    ``questions`` default to the data stage's shipped set. In ``out_dir`` the axes,
    per-answer scores and summary are written, and the answers and activations are
    keyed by their inputs, so a rerun resamples nothing; activations made there from
    other inputs are refused unless ``force``. Without ``out_dir`` the stages run in a
    temporary folder that is removed afterwards.
    """
    questions = list(questions) if questions is not None else default_questions()
    layers = resolve_layers(config, tm.n_layers)
    baseline, neutral, by_axis = select_questions(questions, config)
    with ExitStack() as scratch:
        if out_dir is None:
            out_dir = scratch.enter_context(TemporaryDirectory(prefix="traitlens-fingerprint-"))
        context = StageContext.open(tm, out_dir, config, log, progress=progress, force=force)
        context.artifacts["questions"] = _Questions(baseline, neutral, by_axis, list(layers))
        result: ModelFingerprint = run_plan(FINGERPRINT.stages, context, "fingerprint ")["summary"]
    return result


def _examples(config: FingerprintConfig, cal: AnswerSet, base: AnswerSet) -> dict[str, Any]:
    """The first three baseline answers and the first answer per axis and pole."""
    examples: dict[str, Any] = {
        "baseline": [
            {"question": it.user, "answer": a}
            for it, a in list(zip(base.items, base.answers, strict=True))[:3]
        ],
    }
    for axis in config.axes:
        for pole in POLES:
            first = next(
                (
                    a
                    for it, a in zip(cal.items, cal.answers, strict=True)
                    if it.axis == axis and it.pole == pole
                ),
                "",
            )
            examples.setdefault(axis, {})[pole] = first
    return examples


def _write_scores(path: Path, axes: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> None:
    """One JSON line per answer: what was asked, what was said, its length and scores."""
    lines = []
    for kind, item, answer, length, scores in rows:
        lines.append(
            json.dumps(
                jsonable(
                    {
                        "set": kind,
                        "id": item.id,
                        "question_id": item.question_id,
                        "axis": item.axis,
                        "pole": item.pole,
                        "seed": item.seed,
                        "question": item.user,
                        "answer": answer,
                        "tokens": int(length),
                        "scores": dict(zip(axes, scores, strict=True)),
                    }
                )
            )
        )
    atomic_write(path, "\n".join(lines) + "\n")


# ---------------------------------------------------------------- drift


def _drift_scenario(
    axes: TraitAxes, scenario: Scenario, run: ConversationRun, c: int
) -> dict[str, Any]:
    """One conversation's per-turn scores, their trend and the shift on conflict turns."""
    n = len(run.answers[c])
    lengths = np.array(run.lengths[c], dtype=np.float64)
    scores = axes.score(run.pooled[c, :n], lengths=lengths)
    scores[np.array([not a.strip() for a in run.answers[c]])] = np.nan
    conflict = np.array([(i + 1) in scenario.conflict_turns for i in range(n)])
    per_axis: dict[str, Any] = {}
    for t, axis in enumerate(axes.axes):
        series = scores[:, t]
        finite = np.isfinite(series)
        slope = (
            float(np.polyfit(np.arange(n)[finite] + 1, series[finite], 1)[0])
            if finite.sum() >= 3
            else None
        )
        shift = None
        if (finite & conflict).any() and (finite & ~conflict).any():
            shift = float(series[finite & conflict].mean() - series[finite & ~conflict].mean())
        per_axis[axis] = {
            "scores": series.tolist(),
            "slope_per_turn": slope,
            "conflict_shift": shift,
            "range": float(np.nanmax(series) - np.nanmin(series)) if finite.any() else None,
        }
    return {
        "user_turns": list(scenario.turns[:n]),
        "answers": run.answers[c],
        "tokens": run.lengths[c],
        "conflict_turns": [t for t in scenario.conflict_turns if t <= n],
        "axes": per_axis,
    }


# ---------------------------------------------------------------- several models


def compare(fingerprints: Sequence[ModelFingerprint], config: FingerprintConfig) -> dict[str, Any]:
    """Side-by-side profiles and each model's difference from the first, with bootstrap CIs."""
    names = [f.summary["model"]["name"] for f in fingerprints]
    result: dict[str, Any] = {"models": names, "profiles": {}, "differences": [], "dimensions": []}
    axes = list(config.axes)
    for axis in axes:
        result["profiles"][axis] = [f.summary["profile"][axis] for f in fingerprints]
    reference = fingerprints[0]
    for other in fingerprints[1:]:
        row: dict[str, Any] = {"model": other.summary["model"]["name"], "minus": names[0]}
        for t, axis in enumerate(axes):
            diff, lower, upper = bootstrap_median_difference(
                other.baseline_scores[:, t],
                other.baseline_questions,
                reference.baseline_scores[:, t],
                reference.baseline_questions,
                n_boot=config.bootstrap,
                seed=config.seed + t,
            )
            row[axis] = {
                "difference": diff,
                "ci": [lower, upper],
                "credible": bool(lower > 0 or upper < 0),
            }
        result["differences"].append(row)
    for f in fingerprints:
        structure = f.summary["structure"]
        result["dimensions"].append(
            {
                "model": f.summary["model"]["name"],
                "components_90": structure.get("components_90"),
                "participation_ratio": structure.get("participation_ratio"),
            }
        )
    return result


def run_fingerprint(
    models: Sequence[str | None],
    run_dir: str | Path,
    config: FingerprintConfig,
    *,
    device: str = "auto",
    dtype: str = "auto",
    questions: Sequence[QuestionItem] | None = None,
    progress: bool = True,
    log: Log = _quiet,
    loader: Callable[[str | None], TraitModel] | None = None,
    force: bool = False,
) -> Path:
    """Fingerprint each model in turn (one in memory at a time) and write ``RUN/fingerprint.json``.

    ``loader`` overrides model loading (tests pass tiny models); by default
    :func:`traitlens.models.loading.load_model` with ``device``/``dtype``.
    """
    from traitlens.models.loading import load_model

    if not models:
        models = [None]
    run = Path(run_dir)
    questions = list(questions) if questions is not None else default_questions()
    _log_config_changes(run / "fingerprint.json", config, log)
    results: list[ModelFingerprint] = []
    slugs: list[str] = []
    for name in models:
        tm = loader(name) if loader is not None else load_model(name, device=device, dtype=dtype)
        slug = slugify(tm.identity.name)
        if slug in slugs:
            raise DataError(f"model {tm.identity.name!r} was given twice; name each model once")
        slugs.append(slug)
        log(f"{tm.identity.name} ({tm.n_layers} layers, chat format {tm.formatter.mode})")
        result = fingerprint_model(
            tm,
            config,
            questions,
            run / "fingerprint" / slug,
            progress=progress,
            log=log,
            force=force,
        )
        result.summary["artifacts"] = {
            "axes": f"fingerprint/{slug}/axes.json",
            "scores": f"fingerprint/{slug}/scores.jsonl",
            "summary": f"fingerprint/{slug}/summary.json",
        }
        results.append(result)
        del tm
        gc.collect()
    document = {
        "kind": "fingerprint",
        "traitlens_version": __version__,
        "config": config.to_dict(),
        "axis_names": {a: AXIS_NAMES[a] for a in config.axes},
        "models": [r.summary for r in results],
        "comparison": compare(results, config) if len(results) > 1 else None,
    }
    path = run / "fingerprint.json"
    write_json(path, document)
    return path


def _log_config_changes(previous: Path, config: FingerprintConfig, log: Log) -> None:
    """Say so when ``previous`` (this folder's last fingerprint) was made with other
    settings: its summaries are about to be replaced (answers and activations of both
    stay, keyed by their inputs)."""
    try:
        old = json.loads(previous.read_text())["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    changes = describe_changes({"config": old}, {"config": config.to_dict()})
    if changes != ["inputs changed"]:  # its answer when no field differs
        log("settings changed since this folder's last fingerprint: " + "; ".join(changes))


def load_fingerprint(run_dir: str | Path, expect: ModelIdentity | None = None) -> dict[str, Any]:
    """Read ``RUN/fingerprint.json`` with clear errors for a missing or foreign file.

    With ``expect``, the file must hold a fingerprint of that model (same digest).
    """
    path = Path(run_dir) / "fingerprint.json"
    if not path.exists():
        raise ArtifactError(f"{path} not found; run `traitlens fingerprint --out {run_dir}` first")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}); rerun the fingerprint") from exc
    if not isinstance(data, dict) or data.get("kind") != "fingerprint" or not data.get("models"):
        raise ArtifactError(f"{path} is not a traitlens fingerprint; rerun the fingerprint")
    if expect is not None:
        identities = [require_identity(m, path) for m in data["models"]]
        if not any(i.digest == expect.digest for i in identities):
            identities[0].check_matches(expect, "fingerprint")
    return data
