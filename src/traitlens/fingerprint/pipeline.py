"""Orchestration: calibrate → baseline → reliability → drift → structure, per model; then compare.

Kept thin on purpose: the maths is in :mod:`~traitlens.fingerprint.stats`,
:mod:`~traitlens.fingerprint.axes` and :mod:`~traitlens.fingerprint.reliability`;
this module decides which answers feed which statistic and writes the artifacts:

- ``RUN/fingerprint/<model>/axes.{safetensors,json}`` — the calibrated axes
- ``RUN/fingerprint/<model>/scores.jsonl`` — every answer with its scores
- ``RUN/fingerprint/<model>/summary.json`` — that model's results
- ``RUN/fingerprint.json`` — all models plus the comparison

Generated answers are cached per model (keyed by model digest, prompts and
sampling settings) and activations through ``capture(out_dir=...)``, so a rerun
after an interruption resamples nothing.
"""

from __future__ import annotations

import gc
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from traitlens import __version__
from traitlens.artifact_io import jsonable, write_json
from traitlens.capture.capture import Prompt, capture
from traitlens.errors import ArtifactError, DataError
from traitlens.fingerprint.axes import (
    AxisFit,
    Standardizer,
    TraitAxes,
    crossfit,
    fit_axis,
    split_half_stability,
)
from traitlens.fingerprint.config import FingerprintConfig, resolve_layers
from traitlens.fingerprint.conversation import CLEAN_VERSION, clean_answer, run_conversations
from traitlens.fingerprint.reliability import asymmetry, dead_zone, seed_noise
from traitlens.fingerprint.stats import (
    FloatArray,
    auc,
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
    default_questions,
    resolve_scenarios,
)
from traitlens.models.generation import generate_answers
from traitlens.models.loading import ModelIdentity, TraitModel, require_identity
from traitlens.provenance import provenance

Log = Callable[[str], None]
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


def _cache_key(tm: TraitModel, items: Sequence[_Item], settings: dict[str, Any]) -> str:
    data = [[item.id, item.system, item.user] for item in items]
    return provenance(
        "fingerprint", model=tm.identity, config={**settings, "chat": tm.formatter.mode}, data=data
    ).key


def _generate_cached(
    tm: TraitModel,
    items: Sequence[_Item],
    seed: int,
    config: FingerprintConfig,
    path: Path | None,
    progress: bool,
) -> list[str]:
    """Sampled answers, cleaned; reused from ``path`` when the same request was made before."""
    settings = {
        "seed": seed,
        "max_new_tokens": config.max_new_tokens,
        "temperature": config.temperature,
        "top_p": config.top_p,
        "batch_size": config.batch_size,
    }
    key = _cache_key(tm, items, settings)
    if path is not None and path.exists():
        try:
            cached = json.loads(path.read_text())
            if cached.get("key") == key and len(cached.get("answers", [])) == len(items):
                # re-clean: the rule may have improved since (it is idempotent)
                return [clean_answer(str(a), tm.formatter.mode) for a in cached["answers"]]
        except (json.JSONDecodeError, AttributeError):
            pass  # unreadable cache: regenerate and overwrite
    raw = generate_answers(
        tm,
        list(items),
        max_new_tokens=config.max_new_tokens,
        do_sample=True,
        seed=seed,
        temperature=config.temperature,
        top_p=config.top_p,
        batch_size=config.batch_size,
        progress=progress,
    )
    answers = [clean_answer(a, tm.formatter.mode) for a in raw]
    if path is not None:
        write_json(path, {"key": key, "answers": answers})
    return answers


def _require_answers(
    tm: TraitModel,
    items: Sequence[_Item],
    answers: Sequence[str],
    what: str,
    config: FingerprintConfig,
) -> list[int]:
    """Indices of non-empty answers; DataError when too few are left to measure anything."""
    keep = [i for i, a in enumerate(answers) if a.strip()]
    empty = len(items) - len(keep)
    hint = (
        f"model {tm.identity.name!r} (chat format: {tm.formatter.mode}) produced empty answers "
        f"for {empty} of {len(items)} {what} prompts; check that it can answer questions in "
        f"this format (an instruction-tuned model, or a base model in plain format), or raise "
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


def _token_lengths(tm: TraitModel, answers: Sequence[str]) -> FloatArray:
    return np.array(
        [len(tm.tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers],
        dtype=np.float64,
    )


def _capture(
    tm: TraitModel,
    items: Sequence[_Item],
    answers: Sequence[str],
    layers: Sequence[int],
    config: FingerprintConfig,
    with_instruction: bool,
    out_dir: Path | None,
    progress: bool,
) -> FloatArray:
    """Pooled residual states over the answer tokens, ``[n, L, d]``.

    By default the instruction is left *out* of the encoded context: the axis then
    reads what the model said, not what it was told, and baseline answers (which
    never saw an instruction) are encoded exactly like calibration answers.
    """
    prompts = [
        Prompt(user=it.user, system=it.system if with_instruction else None, id=it.id)
        for it in items
    ]
    activations = capture(
        tm,
        prompts,
        answers=list(answers),
        span="answer",
        poolings=(config.pooling,),
        layers=list(layers),
        neuron_stats=False,
        decay_half_life=config.decay_half_life,
        batch_size=config.batch_size,
        out_dir=out_dir,
        progress=progress,
    )
    return activations.get("resid", config.pooling).double().numpy()


def _paired_accuracy(scores: FloatArray, is_high: np.ndarray, questions: Sequence[str]) -> float:
    """Fraction of questions whose high-instructed answer outscores its low-instructed one.

    Unlike plain accuracy it ignores where a question sits on the axis as a whole
    (topic content shifts both answers alike), so it isolates the direction's quality.
    """
    ids = np.asarray(questions)
    wins = [
        float(scores[(ids == q) & is_high].mean() > scores[(ids == q) & ~is_high].mean())
        for q in np.unique(ids)
        if ((ids == q) & is_high).any() and ((ids == q) & ~is_high).any()
    ]
    return float(np.mean(wins)) if wins else float("nan")


def fingerprint_model(
    tm: TraitModel,
    config: FingerprintConfig,
    questions: Sequence[QuestionItem] | None = None,
    out_dir: str | Path | None = None,
    *,
    progress: bool = True,
    log: Log = _quiet,
) -> ModelFingerprint:
    """Calibrate axes, measure the baseline profile, its reliability, dead zones and drift.

    ``questions`` default to the data stage's shipped set. With ``out_dir``, the
    axes, per-answer scores and summary are written there and generations are
    cached for resumption.
    """
    directory = Path(out_dir) if out_dir is not None else None
    questions = list(questions) if questions is not None else default_questions()
    layers = resolve_layers(config, tm.n_layers)
    baseline_qs, calibration_neutral, by_axis = select_questions(questions, config)
    mode = tm.formatter.mode

    # ---- calibration: each question answered under both pole instructions ----
    calibration_items = [
        _Item(f"cal:{axis}:{pole}:{q.id}", q.id, q.text, POLE_INSTRUCTIONS[axis][p], axis, pole)
        for axis in config.axes
        for q in by_axis[axis] + calibration_neutral
        for p, pole in enumerate(("high", "low"))
    ]
    log(
        f"calibration: {len(calibration_items)} instructed answers "
        f"({len(config.axes)} axes × 2 poles), layers {list(layers)}, pooling {config.pooling}"
    )
    cal_answers = _generate_cached(
        tm,
        calibration_items,
        config.seed,
        config,
        directory / "answers_calibration.json" if directory else None,
        progress,
    )
    keep = _require_answers(tm, calibration_items, cal_answers, "calibration", config)
    cal_items = [calibration_items[i] for i in keep]
    cal_answers = [cal_answers[i] for i in keep]
    cal_pooled = _capture(
        tm,
        cal_items,
        cal_answers,
        layers,
        config,
        config.instructed_context,
        directory / "activations" / "calibration" if directory else None,
        progress,
    )
    cal_lengths = _token_lengths(tm, cal_answers)

    # ---- baseline: neutral questions, no system prompt, several sampling seeds ----
    baseline_items = [
        _Item(f"base:{s}:{q.id}", q.id, q.text, None, seed=s)
        for s in range(config.seeds)
        for q in baseline_qs
    ]
    log(f"baseline: {len(baseline_qs)} neutral questions × {config.seeds} seeds, no system prompt")
    base_answers: list[str] = []
    for s in range(config.seeds):
        rows = [it for it in baseline_items if it.seed == s]
        base_answers += _generate_cached(
            tm,
            rows,
            config.seed + SEED_STRIDE * (s + 1),
            config,
            directory / f"answers_baseline_{s}.json" if directory else None,
            progress,
        )
    keep = _require_answers(tm, baseline_items, base_answers, "baseline", config)
    base_items = [baseline_items[i] for i in keep]
    base_answers = [base_answers[i] for i in keep]
    base_pooled = _capture(
        tm,
        base_items,
        base_answers,
        layers,
        config,
        False,
        directory / "activations" / "baseline" if directory else None,
        progress,
    )
    base_lengths = _token_lengths(tm, base_answers)
    base_qids = [it.question_id for it in base_items]

    # ---- axes: full fit, held-out (by question) scores, split-half stability ----
    standardizer = Standardizer.fit(cal_pooled) if config.standardize else None
    fits: dict[str, AxisFit] = {}
    heldout: dict[str, FloatArray] = {}
    crossfits = {}
    stability: dict[str, FloatArray] = {}
    masks: dict[str, np.ndarray] = {}
    for axis in config.axes:
        mask = np.array([it.axis == axis for it in cal_items])
        is_high = np.array([it.pole == "high" for it in cal_items])[mask]
        groups = [it.question_id for it in cal_items if it.axis == axis]
        pooled = cal_pooled[mask]
        fits[axis] = fit_axis(pooled[is_high], pooled[~is_high], standardizer)
        crossfits[axis] = crossfit(pooled, is_high, groups, config.folds, config.seed, standardizer)
        heldout[axis] = crossfits[axis].scores
        stability[axis] = split_half_stability(
            pooled, is_high, groups, config.stability_splits, config.seed, standardizer
        )
        masks[axis] = mask
    axes = TraitAxes.from_fits(
        tm.identity, fits, layers, config.pooling, config.decay_half_life, config.to_dict()
    )

    # ---- length: always measured; regressed out (pole as covariate) on request ----
    slopes = np.zeros(len(config.axes))
    mean_length = float(cal_lengths.mean())
    raw_base_scores = axes.score(base_pooled)
    length_report: dict[str, Any] = {
        "regressed": config.regress_length,
        "mean_length_calibration": mean_length,
    }
    for t, axis in enumerate(config.axes):
        is_high = np.array([it.pole == "high" for it in cal_items])[masks[axis]]
        lengths = cal_lengths[masks[axis]]
        slopes[t] = length_slope(heldout[axis], lengths, is_high)
        length_report[axis] = {
            "r_baseline": pearson(raw_base_scores[:, t], base_lengths),
            "r_calibration_within_pole": partial_correlation(heldout[axis], lengths, is_high),
            "slope_per_token": slopes[t],
            "mean_tokens_high": float(lengths[is_high].mean()),
            "mean_tokens_low": float(lengths[~is_high].mean()),
            "mean_tokens_baseline": float(base_lengths.mean()),
        }
    if config.regress_length:
        axes = axes.with_length_correction(slopes, mean_length)
        for t, axis in enumerate(config.axes):
            heldout[axis] = heldout[axis] - slopes[t] * (cal_lengths[masks[axis]] - mean_length)

    def correct(scores: FloatArray, lengths: FloatArray, t: int) -> FloatArray:
        if not config.regress_length:
            return scores
        return scores - slopes[t] * (lengths - mean_length)

    base_scores = axes.score(base_pooled, lengths=base_lengths)

    # ---- per-axis statistics ----
    profile: dict[str, Any] = {}
    calibration: dict[str, Any] = {}
    reliability: dict[str, Any] = {}
    dead: dict[str, Any] = {}
    asym: dict[str, Any] = {}
    seeds = np.array([it.seed for it in base_items])
    question_order = [q.id for q in baseline_qs]
    complete = [
        q
        for q in question_order
        if all(((seeds == s) & (np.array(base_qids) == q)).any() for s in range(config.seeds))
    ]
    per_seed_profiles = np.full((len(config.axes), config.seeds), np.nan)
    for t, axis in enumerate(config.axes):
        scores = base_scores[:, t]
        median, lower, upper = bootstrap_median_ci(
            scores, base_qids, n_boot=config.bootstrap, seed=config.seed + t
        )
        for s in range(config.seeds):
            per_seed_profiles[t, s] = (
                np.median(scores[seeds == s]) if (seeds == s).any() else np.nan
            )
        profile[axis] = {
            "median": median,
            "ci": [lower, upper],
            "per_seed": per_seed_profiles[t].tolist(),
            "seed_sd": float(np.nanstd(per_seed_profiles[t], ddof=1)) if config.seeds > 1 else None,
        }

        axis_items = [it for it in cal_items if it.axis == axis]
        is_high = np.array([it.pole == "high" for it in axis_items])
        held = heldout[axis]
        in_sample = correct(fits[axis].score(cal_pooled[masks[axis]]), cal_lengths[masks[axis]], t)
        accuracy = float(np.mean((held > 0) == is_high))
        dp = d_prime(held[is_high], held[~is_high])
        stab = stability[axis]
        calibration[axis] = {
            "accuracy": accuracy,
            "paired_accuracy": _paired_accuracy(
                held, is_high, [it.question_id for it in axis_items]
            ),
            "auc": auc(held[is_high], held[~is_high]),
            "d_prime": dp,
            "d_prime_in_sample": d_prime(in_sample[is_high], in_sample[~is_high]),
            "stability": float(stab.mean()) if stab.size else None,
            "stability_min": float(stab.min()) if stab.size else None,
            "pole_medians": [float(np.median(held[is_high])), float(np.median(held[~is_high]))],
            "n_answers": int(len(held)),
            "n_questions": len({it.question_id for it in axis_items}),
        }

        table = np.array(
            [
                [scores[(seeds == s) & (np.array(base_qids) == q)][0] for s in range(config.seeds)]
                for q in complete
            ]
        )
        has_table = config.seeds >= 2 and len(complete) >= 2
        noise = seed_noise(table) if has_table else float("nan")
        signal = calibration[axis]["pole_medians"][0] - calibration[axis]["pole_medians"][1]
        snr = signal / noise if noise and math.isfinite(noise) and noise > 0 else float("nan")
        reliability[axis] = {
            "icc2_1": icc(table, "2,1") if has_table else None,
            "icc3_1": icc(table, "3,1") if has_table else None,
            "n_questions": len(complete),
            "seed_noise_sd": noise,
            "snr": snr,
        }
        dead[axis] = dead_zone(accuracy, dp, calibration[axis]["stability"], snr)

        # asymmetry: paired per neutral calibration question, all scored by the fold axis
        # that never saw the question
        heldout_base = correct(
            crossfits[axis].score_for(base_qids, base_pooled, fits[axis]), base_lengths, t
        )
        highs, lows, bases = [], [], []
        for q in calibration_neutral:
            h = [
                held[i]
                for i, it in enumerate(axis_items)
                if it.question_id == q.id and it.pole == "high"
            ]
            lo = [
                held[i]
                for i, it in enumerate(axis_items)
                if it.question_id == q.id and it.pole == "low"
            ]
            b = heldout_base[np.array(base_qids) == q.id]
            if h and lo and b.size:
                highs.append(h[0])
                lows.append(lo[0])
                bases.append(float(np.median(b)))
        asym[axis] = asymmetry(highs, lows, bases, n_boot=config.bootstrap, seed=config.seed + t)

    profile_icc: dict[str, Any] = {"icc2_1": None, "icc3_1": None}
    if len(config.axes) >= 2 and config.seeds >= 2 and np.all(np.isfinite(per_seed_profiles)):
        profile_icc = {
            "icc2_1": icc(per_seed_profiles, "2,1"),
            "icc3_1": icc(per_seed_profiles, "3,1"),
        }

    # ---- drift along scripted conversations ----
    drift = _drift(tm, axes, config, layers, directory, progress, log)

    # ---- structure: how many dimensions do the answers use? ----
    cal_full_scores = axes.score(cal_pooled, lengths=cal_lengths)
    answers_matrix = np.concatenate([cal_full_scores, base_scores])
    structure: dict[str, Any] = {"n_answers": int(len(answers_matrix))}
    if len(config.axes) >= 2:
        ratios = pca_explained_variance(answers_matrix)
        correlation = np.array(
            [
                [
                    pearson(answers_matrix[:, i], answers_matrix[:, j])
                    for j in range(len(config.axes))
                ]
                for i in range(len(config.axes))
            ]
        )
        axis_cosine = np.array(
            [
                [
                    float(
                        np.mean(
                            [
                                cosine(a, b)
                                for a, b in zip(axes.directions[i], axes.directions[j], strict=True)
                            ]
                        )
                    )
                    for j in range(len(config.axes))
                ]
                for i in range(len(config.axes))
            ]
        )
        structure.update(
            {
                "pca_explained_variance": ratios.tolist(),
                "components_90": components_for(ratios, 0.9),
                "participation_ratio": participation_ratio(ratios),
                "axis_cosine": axis_cosine.tolist(),
                "projection_correlation": correlation.tolist(),
            }
        )

    examples: dict[str, Any] = {
        "baseline": [
            {"question": it.user, "answer": a}
            for it, a in list(zip(base_items, base_answers, strict=True))[:3]
        ],
    }
    for axis in config.axes:
        for pole in ("high", "low"):
            first = next(
                (
                    a
                    for it, a in zip(cal_items, cal_answers, strict=True)
                    if it.axis == axis and it.pole == pole
                ),
                "",
            )
            examples.setdefault(axis, {})[pole] = first

    summary: dict[str, Any] = {
        "model": tm.identity.to_dict(),
        "chat_format": mode,
        "axes": list(config.axes),
        "layers": list(layers),
        "pooling": config.pooling,
        "n_answers": {"calibration": len(cal_items), "baseline": len(base_items)},
        "empty_answers": {
            "calibration": len(calibration_items) - len(cal_items),
            "baseline": len(baseline_items) - len(base_items),
        },
        "profile": profile,
        "calibration": calibration,
        "reliability": {"per_axis": reliability, "profile": profile_icc},
        "dead_zones": dead,
        "asymmetry": asym,
        "drift": drift,
        "structure": structure,
        "length": length_report,
        "examples": examples,
    }
    if directory is not None:
        axes.save(directory)
        _write_scores(
            directory / "scores.jsonl",
            config.axes,
            [
                ("calibration", it, a, n, sc)
                for it, a, n, sc in zip(
                    cal_items, cal_answers, cal_lengths, cal_full_scores, strict=True
                )
            ]
            + [
                ("baseline", it, a, n, sc)
                for it, a, n, sc in zip(
                    base_items, base_answers, base_lengths, base_scores, strict=True
                )
            ],
        )
        write_json(directory / "summary.json", summary)
    return ModelFingerprint(summary, base_scores, base_qids, axes)


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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


def _drift(
    tm: TraitModel,
    axes: TraitAxes,
    config: FingerprintConfig,
    layers: Sequence[int],
    directory: Path | None,
    progress: bool,
    log: Log,
) -> dict[str, Any]:
    """Per-turn profile along each scripted conversation (the model writes its own turns)."""
    scenarios = resolve_scenarios(config.scenarios)
    if not scenarios:
        return {}
    turns = [list(s.turns[: config.drift_turns]) for s in scenarios]
    log(f"drift: {len(scenarios)} conversation(s) × up to {max(len(t) for t in turns)} turns")
    cache = directory / "answers_drift.json" if directory else None
    settings = {
        "seed": config.seed,
        "max_new_tokens": config.max_new_tokens,
        "temperature": config.temperature,
        "top_p": config.top_p,
        "turns": turns,
        "clean": CLEAN_VERSION,
    }
    key = provenance(
        "fingerprint", model=tm.identity, config={**settings, "chat": tm.formatter.mode}
    ).key
    replay = None
    if cache is not None and cache.exists():
        try:
            cached = json.loads(cache.read_text())
            replay = cached["answers"] if cached.get("key") == key else None
        except (json.JSONDecodeError, KeyError, AttributeError):
            replay = None
    run = run_conversations(
        tm,
        turns,
        layers=layers,
        pooling=config.pooling,
        decay_half_life=config.decay_half_life,
        max_new_tokens=config.max_new_tokens,
        seed=config.seed,
        temperature=config.temperature,
        top_p=config.top_p,
        replay=replay,
        progress=progress,
    )
    if cache is not None and replay is None:
        write_json(cache, {"key": key, "answers": run.answers})
    result: dict[str, Any] = {}
    for c, scenario in enumerate(scenarios):
        n = len(turns[c])
        lengths = np.array(run.lengths[c], dtype=np.float64)
        scores = axes.score(run.pooled[c, :n], lengths=lengths)
        empty = np.array([not a.strip() for a in run.answers[c]])
        scores[empty] = np.nan
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
        result[scenario.name] = {
            "user_turns": turns[c],
            "answers": run.answers[c],
            "tokens": run.lengths[c],
            "conflict_turns": [t for t in scenario.conflict_turns if t <= n],
            "axes": per_axis,
        }
    return result


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
    results: list[ModelFingerprint] = []
    slugs: list[str] = []
    for name in models:
        tm = loader(name) if loader is not None else load_model(name, device=device, dtype=dtype)
        slug = slugify(tm.identity.name)
        if slug in slugs:
            raise DataError(f"model {tm.identity.name!r} was given twice; name each model once")
        slugs.append(slug)
        log(f"[bold]{tm.identity.name}[/] ({tm.n_layers} layers, chat format {tm.formatter.mode})")
        result = fingerprint_model(
            tm, config, questions, run / "fingerprint" / slug, progress=progress, log=log
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
