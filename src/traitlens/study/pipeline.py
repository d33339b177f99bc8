"""``run_study``: the whole experiment on one model, resumable at every step.

Stages and their artifacts (in ``out``):

1. capture   → ``prompts.jsonl``, ``activations/{question,answer}/``, ``answers.jsonl``
2. probes    → ``probes.{safetensors,json}`` (+ figures)
3. neurons   → ``neurons.{safetensors,json}`` (+ figures)
4. vectors   → ``vectors.{safetensors,json}``
5. evaluate  → ``eval/rows/<intervention>.json`` (one file per measured intervention),
               then ``eval.json`` + ``eval.csv``
6. report    → ``report.html`` (+ ``figures/``)

Each stage loads its artifact when it exists for the same inputs, so an
interrupted study continues where it stopped: nothing finished is recomputed
and nothing is lost (each file is written atomically).

Design choices the report states too:

- Directions are estimated on the *answer* tokens the model produced under each
  persona (CAA's choice); probes read the *question* tokens (persona text
  excluded) so they measure what the persona did to the model's state.
- Interventions act on a band of early-middle layers; every trait is read
  *downstream* of that band, at the layer (after the band) where its probe is
  most selective, so a readout shift is a propagated effect, not the added
  vector read back.
- Every intervention has a control of the same size: a random direction with
  the same per-layer norm; random neurons matched per layer and given the same
  δ profile (so the NPTI boost has the same magnitude).
"""

from __future__ import annotations

import hashlib
import json
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from traitlens.capture.capture import Prompt
from traitlens.capture.pipeline import capture_run
from traitlens.data import (
    build_contrastive_set,
    load_forced_choices,
    load_personas,
    load_questions,
    load_statements,
)
from traitlens.evaluate.interventions import EvalSets, ReadoutSpec, effect, measure
from traitlens.models.loading import TraitModel
from traitlens.neurons.selected import SelectedNeurons
from traitlens.study.config import StudyConfig

Log = Callable[[str], None]


def _log_default(message: str) -> None:
    print(message, flush=True)


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=float))
    tmp.replace(path)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def steer_layers(n_layers: int, band: tuple[float, float]) -> list[int]:
    start = max(1, round(n_layers * band[0]))
    stop = max(start + 1, round(n_layers * band[1]))
    return list(range(start, min(stop, n_layers - 2)))


def readout_layers(probes: Any, traits: list[str], after: int) -> dict[str, int]:
    """Per trait, the most selective probe layer strictly after ``after`` (+1 gap)."""
    chosen: dict[str, int] = {}
    for trait in traits:
        curve = probes.curve(trait)
        selectivity = np.asarray(curve.selectivity, dtype=float)
        layers = np.asarray(probes.layers)
        allowed = layers > after + 1
        if not allowed.any():
            allowed = layers == layers.max()
        scores = np.where(allowed, np.nan_to_num(selectivity, nan=-np.inf), -np.inf)
        chosen[trait] = int(layers[int(np.argmax(scores))])
    return chosen


def restrict(neurons: SelectedNeurons, layers: list[int]) -> SelectedNeurons:
    keep = torch.isin(neurons.layers, torch.tensor(layers, dtype=neurons.layers.dtype))
    return SelectedNeurons(
        neurons.layers[keep], neurons.indices[keep], neurons.delta[keep], neurons.a95[keep]
    )


def neuron_rule(neurons: Any, trait: str, band: list[int], minimum: int) -> str:
    """'fdr' when the FDR-controlled set has at least ``minimum`` neurons (both poles)
    inside the edited layers ``band``, else NPTI's δ rule alone ('npti'): with few answers per
    persona group the prompt-level test is too weak for anything to survive."""
    count = sum(len(restrict(neurons.select(trait, pole, "fdr"), band)) for pole in ("high", "low"))
    return "fdr" if count >= minimum else "npti"


def matched_control(real: SelectedNeurons, random: SelectedNeurons) -> SelectedNeurons:
    """Random neurons (same count per layer) carrying the real set's δ values, so an
    NPTI boost of the control has the same magnitude as the real edit."""
    order_real = torch.argsort(real.layers, stable=True)
    order_random = torch.argsort(random.layers, stable=True)
    if not torch.equal(real.layers[order_real], random.layers[order_random]):
        raise ValueError("random control is not matched layer by layer")
    return SelectedNeurons(
        random.layers[order_random],
        random.indices[order_random],
        real.delta[order_real],
        random.a95[order_random],
    )


def control_seed(seed: int, trait: str) -> int:
    """Seed of a trait's random-direction control: stable, and different per trait."""
    return zlib.crc32(f"{trait.strip().upper()}|{seed}|random-direction".encode())


def random_vector_like(vector: Any, seed: int) -> Any:
    """A TraitVector with random unit directions and the same per-layer spread."""
    from traitlens.steer import TraitVector

    generator = torch.Generator().manual_seed(seed)
    directions = {
        layer: torch.randn(vector.d_model, generator=generator, dtype=torch.float64)
        for layer in vector.layers
    }
    spread = {layer: float(vector.spread[i]) for i, layer in enumerate(vector.layers)}
    return TraitVector.from_directions(
        vector.identity,
        directions,
        spread=spread,
        trait=vector.trait,
        method="random",
        source={"control_for": vector.method, "seed": seed},
    )


def build_eval_sets(config: StudyConfig, train_prompts: list[Any]) -> EvalSets:
    """Held-out questions and personas (never seen by probes, vectors or neurons)."""
    used_questions = {p.question_id for p in train_prompts}
    used_personas = {p.persona_id for p in train_prompts}
    rng = np.random.default_rng(config.seed + 1)
    questions = [q for q in load_questions() if q.id not in used_questions]
    rng.shuffle(questions)  # type: ignore[arg-type]
    questions = questions[: config.eval_questions]
    personas = [p for p in load_personas() if p.id not in used_personas]
    opposite: dict[str, list[Any]] = {}
    target_persona: dict[str, str] = {}
    for trait in config.traits:
        for pole, other in (("high", "low"), ("low", "high")):
            pool = [p for p in personas if p.trait == trait]
            chosen = build_contrastive_set(
                [trait],
                personas=pool,
                questions=questions,
                n_personas_per_pole=config.eval_personas,
                seed=config.seed + 2,
            )
            opposite[f"{trait}|{pole}"] = [p for p in chosen if p.pole == other]
            targets = [p for p in personas if p.trait == trait and p.pole == pole]
            target_persona[f"{trait}|{pole}"] = targets[0].text
    neutral = [Prompt(q.text, None, q.id) for q in questions]
    all_statements = load_statements(config.statements_file)
    all_forced = load_forced_choices(config.forced_choice_file)
    statements = []
    for trait in config.traits:
        items = [s for s in all_statements if s.trait == trait]
        plus = [s for s in items if s.keyed == "+"][: (config.statements_per_trait + 1) // 2]
        minus = [s for s in items if s.keyed == "-"][: config.statements_per_trait // 2]
        statements += plus + minus
    forced = []
    for trait in config.traits:
        forced += [f for f in all_forced if f.trait == trait][: config.forced_per_trait]
    from traitlens.evaluate.questionnaire import TEMPLATES

    templates = list(TEMPLATES)[: config.templates]
    generation = neutral[: config.generation_prompts]
    return EvalSets(
        config.traits,
        opposite,
        target_persona,
        neutral,
        statements,
        forced,
        templates,
        generation,
        max_new_tokens=32,
    )


def _key(*parts: Any) -> str:
    text = "__".join(str(p) for p in parts)
    return text.replace("|", "-").replace("/", "-").replace(" ", "")


def run_study(
    tm: TraitModel,
    out: str | Path,
    config: StudyConfig,
    *,
    log: Log = _log_default,
    progress: bool = True,
) -> Path:
    """Run (or resume) the full study into ``out``; returns the report's path."""
    from traitlens.neurons import select_neurons
    from traitlens.probe import fit_probes
    from traitlens.steer import AddDirection, NeuronEdit, VectorSet, steering, trait_vectors

    run = Path(out)
    run.mkdir(parents=True, exist_ok=True)
    _write_json(run / "study_config.json", {**config.model_dump(), "model": tm.describe()})
    started = time.perf_counter()
    traits = config.traits

    log("[1/6] capture: contrastive prompts, question and answer activations")
    captured = capture_run(
        tm,
        run,
        traits,
        n_questions=config.n_questions,
        n_personas_per_pole=config.n_personas,
        max_new_tokens=config.max_new_tokens,
        batch_size=config.batch_size,
        seed=config.seed,
        progress=progress,
    )
    prompts = captured.prompts
    assert captured.answer is not None and captured.answer.neuron_stats is not None

    log("[2/6] probes: per-layer grouped cross-validation with control tasks")
    probes = fit_probes(
        captured.question,
        prompts,
        traits,
        folds=config.folds,
        seed=config.seed,
        out_dir=run,
        progress=progress,
    )
    figures = run / "figures"
    from traitlens.report.probe_figures import plot_probe_accuracy, plot_probe_r2

    if not (figures / "probe_accuracy.png").exists():
        plot_probe_accuracy(probes, figures)
        plot_probe_r2(probes, figures)

    log("[3/6] neurons: NPTI selection with a two-proportion test and BH-FDR")
    from traitlens.neurons.select import prompts_per_group

    neurons = select_neurons(
        captured.answer.neuron_stats,
        threshold=config.threshold,
        fdr=config.fdr,
        traits=traits,
        prompt_counts=prompts_per_group(prompts),
        out_dir=run,
    )
    from traitlens.report.neuron_figures import plot_neuron_counts, plot_neuron_overlap

    if not (figures / "neuron_counts.png").exists():
        plot_neuron_counts(neurons, figures)
        plot_neuron_overlap(neurons, figures)

    log("[4/6] vectors: " + ", ".join(config.vector_methods))
    vectors: VectorSet
    if (run / "vectors.json").exists():
        vectors = VectorSet.load(run, expect=tm.identity)
    else:
        vectors = trait_vectors(
            captured.answer,
            prompts,
            traits,
            config.vector_methods,
            probes=probes if probes.layers == captured.answer.layers else None,
        )
        vectors.save(run)

    log("[5/6] interventions: representation, behaviour, cost — with controls")
    band = steer_layers(tm.n_layers, config.steer_band)
    # NPTI edits every selected neuron wherever it is; "band" confines edits to the
    # direction band (comparable placement, but at small sizes often no neuron is there)
    edit_layers = band if config.neuron_layers == "band" else list(range(tm.n_layers))
    layers_read = readout_layers(probes, traits, after=band[-1])
    spec = ReadoutSpec(probes, layers_read, pooling=probes.pooling, batch_size=config.batch_size)
    sets = build_eval_sets(config, prompts)
    rows_dir = run / "eval" / "rows"
    all_keys = list(sets.opposite)

    judge = None
    if config.judge_url:
        from traitlens.evaluate.judge import HttpJudge

        judge = HttpJudge(config.judge_url, model=config.judge_model, timeout=20.0)
        judge.rate(traits[0], "I spent the afternoon reading.")  # fail now, not mid-run

    def score_answers(data: dict[str, Any]) -> None:
        """Open-ended answers read back by the UNSTEERED model's probes (and the judge)."""
        from traitlens.evaluate.openended import endpoint_scores, probe_scores

        answers = data["answers"]
        prompts = sets.generation[: len(answers)]
        columns = {}
        for layer in sorted(set(layers_read.values())):
            scores = probe_scores(
                tm,
                prompts,
                answers,
                probes,
                layer,
                traits=traits,
                pooling=probes.pooling,
                batch_size=config.batch_size,
            )
            for index, trait in enumerate(traits):
                if layers_read[trait] == layer:
                    columns[trait] = scores.scores[:, index].tolist()
        data["answer_probe_scores"] = columns
        if judge is not None:
            rated = endpoint_scores(
                judge, answers, traits=traits, questions=[p.user for p in prompts]
            )
            data["judge_scores"] = {t: rated.scores[:, i].tolist() for i, t in enumerate(traits)}

    def measured(key: str, interventions: list[Any], **kwargs: Any) -> dict[str, Any]:
        path = rows_dir / f"{key}.json"
        if path.exists():
            return dict(_read_json(path))
        with steering(tm, interventions):
            data = measure(tm, sets, spec, **kwargs)
        if data.get("answers"):
            score_answers(data)
        _write_json(path, data)
        return data

    baseline = measured("baseline", [], opposite_keys=all_keys)
    plan: list[dict[str, Any]] = []
    for trait in traits:
        for pole in ("high", "low"):
            sign = 1.0 if pole == "high" else -1.0
            other = "low" if pole == "high" else "high"
            for method in config.eval_methods:
                real: Any
                control: Any
                if method == "neurons":
                    rule = neuron_rule(neurons, trait, edit_layers, config.min_fdr_neurons)
                    target = restrict(neurons.select(trait, pole, rule), edit_layers)
                    opposite = restrict(neurons.select(trait, other, rule), edit_layers)
                    real = NeuronEdit(target, opposite, gamma=config.gamma)
                    control = NeuronEdit(
                        matched_control(
                            target,
                            restrict(
                                neurons.random_control(trait, pole, config.seed, rule), edit_layers
                            ),
                        ),
                        matched_control(
                            opposite,
                            restrict(
                                neurons.random_control(trait, other, config.seed, rule), edit_layers
                            ),
                        ),
                        gamma=config.gamma,
                    )
                    size = {
                        "gamma": config.gamma,
                        "n_target": len(target),
                        "n_opposite": len(opposite),
                        "neuron_rule": rule,
                        "neuron_layers": config.neuron_layers,
                    }
                else:
                    vector = vectors.get(trait, method)
                    real = AddDirection(vector, sign * config.strength, layers=tuple(band))
                    control = AddDirection(
                        # one random direction per trait (seeded by trait), so the five
                        # controls are independent draws rather than one shared direction
                        random_vector_like(vector, control_seed(config.seed, trait)),
                        sign * config.strength,
                        layers=tuple(band),
                    )
                    size = {"strength": sign * config.strength}
                for is_control, chosen in ((False, real), (True, control)):
                    plan.append(
                        {
                            "key": _key(trait, pole, method, "control" if is_control else "real"),
                            "trait": trait,
                            "pole": pole,
                            "method": method,
                            "control": is_control,
                            "interventions": [chosen],
                            **size,
                        }
                    )
            plan.append(
                {
                    "key": _key(trait, pole, "prompt"),
                    "trait": trait,
                    "pole": pole,
                    "method": "prompt",
                    "control": False,
                    "interventions": [],
                    "system": sets.target_persona[f"{trait}|{pole}"],
                }
            )
    for trait in config.dose_traits:
        if trait not in traits:
            continue
        for strength in config.dose_strengths:
            for pole, sign in (("high", 1.0), ("low", -1.0)):
                vector = vectors.get(trait, "mean_diff")
                plan.append(
                    {
                        "key": _key(trait, pole, "dose_mean_diff", strength),
                        "trait": trait,
                        "pole": pole,
                        "method": "mean_diff",
                        "control": False,
                        "dose": True,
                        "strength": sign * strength,
                        "interventions": [
                            AddDirection(vector, sign * strength, layers=tuple(band))
                        ],
                    }
                )
        rule = neuron_rule(neurons, trait, edit_layers, config.min_fdr_neurons)
        for gamma in config.dose_gammas:
            target = restrict(neurons.select(trait, "high", rule), edit_layers)
            opposite = restrict(neurons.select(trait, "low", rule), edit_layers)
            plan.append(
                {
                    "key": _key(trait, "high", "dose_neurons", gamma),
                    "trait": trait,
                    "pole": "high",
                    "method": "neurons",
                    "control": False,
                    "dose": True,
                    "gamma": gamma,
                    "neuron_rule": rule,
                    "neuron_layers": config.neuron_layers,
                    "n_target": len(target),
                    "n_opposite": len(opposite),
                    "interventions": [NeuronEdit(target, opposite, gamma=gamma)],
                }
            )
    results = []
    for number, step in enumerate(plan, start=1):
        item = step
        cached = (rows_dir / f"{item['key']}.json").exists()
        log(f"  [{number}/{len(plan)}] {item['key']}" + (" (cached)" if cached else ""))
        key = f"{item['trait']}|{item['pole']}"
        system = item.get("system")
        data = measured(
            item["key"],
            item["interventions"],
            opposite_keys=[key],
            system=system,
            opposite_system=system,
            with_generation=bool(item.get("dose")) or not item["control"],
        )
        summary = effect(baseline, data, traits, item["trait"], item["pole"], seed=config.seed)
        row = {k: v for k, v in item.items() if k != "interventions"}
        results.append({**row, **summary})
    evaluation = {
        "traits": traits,
        "steer_layers": band,
        "readout_layers": layers_read,
        "baseline": {
            "questionnaire": {
                t: float(np.mean(list(baseline["questionnaire"].get(t, {}).values()) or [np.nan]))
                for t in traits
            },
            "forced_choice": {
                t: float(np.mean(list(baseline["forced_choice"].get(t, {}).values()) or [np.nan]))
                for t in traits
            },
            "perplexity": baseline["perplexity"],
            "label_mass": baseline.get("questionnaire_label_mass"),
        },
        "results": results,
        "config": config.model_dump(),
        "n_eval": {
            "neutral_prompts": len(sets.neutral),
            "opposite_prompts_per_key": len(next(iter(sets.opposite.values()))),
            "statements": len(sets.statements),
            "forced_choices": len(sets.forced),
            "templates": sets.templates,
        },
    }
    _write_json(run / "eval.json", evaluation)
    from traitlens.evaluate.tables import write_csv

    write_csv([_flat(r) for r in results], run / "eval.csv")

    log("[6/6] report")
    from traitlens.report.study_report import build_report

    report = build_report(run)
    elapsed = time.perf_counter() - started
    _write_json(
        run / "study_done.json",
        {"seconds_this_session": elapsed, "hash": _digest(run / "eval.json")},
    )
    return report


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _flat(row: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat(value, name + "."))
        elif isinstance(value, list):
            continue
        else:
            flat[name] = value
    return flat


__all__ = ["run_study"]
