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
import time
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from traitlens.artifact_io import check_writable, read_json, write_json
from traitlens.capture.capture import Prompt
from traitlens.capture.pipeline import capture_run
from traitlens.data import (
    build_contrastive_set,
    load_forced_choices,
    load_personas,
    load_questions,
    load_statements,
)
from traitlens.errors import TraitlensError
from traitlens.evaluate.interventions import EvalSets, ReadoutSpec, effect, measure
from traitlens.models.loading import TraitModel
from traitlens.neurons.selected import SelectedNeurons
from traitlens.provenance import (
    Provenance,
    RunManifest,
    claim,
    data_digest,
    describe_changes,
    provenance,
    record,
    saved_key,
)
from traitlens.study.config import StudyConfig

Log = Callable[[str], None]


def _log_default(message: str) -> None:
    print(message, flush=True)


def describe_intervention(intervention: Any) -> dict[str, Any]:
    """A JSON-able description of an intervention value, tensors as digests: what an
    evaluation row's key is computed over (same edit ⇔ same description)."""
    from dataclasses import fields, is_dataclass

    def value(item: Any) -> Any:
        if isinstance(item, torch.Tensor):
            return data_digest(tensors=[item])
        if is_dataclass(item) and not isinstance(item, type):
            return {
                "type": type(item).__name__,
                **{
                    f.name: value(getattr(item, f.name))
                    for f in fields(item)
                    if f.name not in ("identity", "source")
                },
            }
        if isinstance(item, (list, tuple)):
            return [value(v) for v in item]
        return item

    return dict(value(intervention))


def _previous_row(rows_dir: Path, name: str) -> Provenance | None:
    """The most recent saved row of this name under any key (to say what changed)."""
    best = None
    for path in rows_dir.glob(f"{name}--*.json"):
        if best is None or path.stat().st_mtime > best.stat().st_mtime:
            best = path
    if best is None:
        return None
    try:
        return Provenance.from_dict(read_json(best)["provenance"])
    except (TraitlensError, KeyError, TypeError):
        return None


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


def _name(*parts: Any) -> str:
    text = "__".join(str(p) for p in parts)
    return text.replace("|", "-").replace("/", "-").replace(" ", "")


def run_study(
    tm: TraitModel,
    out: str | Path,
    config: StudyConfig,
    *,
    log: Log = _log_default,
    progress: bool = True,
    force: bool = False,
) -> Path:
    """Run (or resume) the full study into ``out``; returns the report's path.

    Every artifact and every measured row is keyed by its inputs
    (:mod:`traitlens.provenance`): a rerun reuses exactly what is unchanged, measures
    what changed (and logs why), and refuses — unless ``force`` — to replace a stage
    artifact (capture, probes, neurons, vectors) made from other inputs. Measured rows
    are stored under their key, so rows of another configuration are kept, never
    relabelled.
    """
    from traitlens.neurons import select_neurons
    from traitlens.probe import fit_probes
    from traitlens.steer import AddDirection, NeuronEdit, VectorSet, steering, trait_vectors

    run = Path(out)
    check_writable(run)
    previous_config = run / "study_config.json"
    if previous_config.exists():
        try:
            old = read_json(previous_config)
            old.pop("model", None)
            changes = describe_changes(old, config.model_dump(mode="json"))
            if changes != ["inputs changed"]:
                log("study configuration changed since the last run: " + "; ".join(changes))
        except TraitlensError:
            pass
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
        force=force,
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
        force=force,
    )
    figures = run / "figures"
    from traitlens.report.probe_figures import plot_probe_accuracy, plot_probe_r2

    # figures are cheap and derived: drawn from the current artifacts every time
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
        force=force,
    )
    from traitlens.report.neuron_figures import plot_neuron_counts, plot_neuron_overlap

    plot_neuron_counts(neurons, figures)
    plot_neuron_overlap(neurons, figures)

    log("[4/6] vectors: " + ", ".join(config.vector_methods))
    use_probes = probes.layers == captured.answer.layers
    vector_prov = provenance(
        "vectors",
        model=tm.identity,
        config={"methods": config.vector_methods, "traits": traits, "probe_weights": use_probes},
        upstream={
            "capture.answer": captured.answer.key,
            "probes": probes.key if use_probes else None,
        },
    )
    vectors: VectorSet
    exists, saved = saved_key(run / "vectors.json")
    if claim(run, "vectors", vector_prov, saved, exists=exists, force=force, what="vector set"):
        vectors = VectorSet.load(run, expect=tm.identity)
    else:
        vectors = trait_vectors(
            captured.answer,
            prompts,
            traits,
            config.vector_methods,
            probes=probes if use_probes else None,
        )
        vectors.provenance = vector_prov.to_dict()
        vectors.save(run)
        record(run, "vectors", vector_prov)

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

    # what every row reads besides its intervention: the held-out material (content),
    # where and how traits are read, and the judge
    eval_config = {
        k: getattr(config, k)
        for k in (
            "seed",
            "eval_questions",
            "eval_personas",
            "statements_per_trait",
            "forced_per_trait",
            "templates",
            "generation_prompts",
            "statements_file",
            "forced_choice_file",
            "judge_url",
            "judge_model",
        )
    }
    sets_digest = data_digest(
        {
            "opposite": {
                k: [[p.id, p.system, p.user] for p in v] for k, v in sets.opposite.items()
            },
            "target_persona": sets.target_persona,
            "neutral": [[p.id, p.system, p.user] for p in sets.neutral],
            "statements": [s.model_dump() for s in sets.statements],
            "forced": [f.model_dump() for f in sets.forced],
            "templates": sets.templates,
            "generation": [[p.id, p.user] for p in sets.generation],
            "max_new_tokens": sets.max_new_tokens,
        }
    )
    # the readout depends on the probe set; the edits are in the row's data (their tensors
    # as digests), so a changed vector re-measures its own rows and nothing else
    row_upstream = {"probes": probes.key}

    def row_provenance(
        name: str, interventions: list[Any], labels: dict[str, Any], **kwargs: Any
    ) -> Provenance:
        return provenance(
            "eval_row",
            model=tm.identity,
            config={
                "row": name,
                **labels,
                "measure": kwargs,
                "eval": eval_config,
                "readout_layers": layers_read,
                "steer_layers": band,
                "held_out_material": sets_digest,
            },
            # the edits themselves (tensors as digests); their sizes are in the labels
            data=[describe_intervention(i) for i in interventions],
            upstream=row_upstream,
        )

    def row_path(name: str, prov: Provenance) -> Path:
        return rows_dir / f"{name}--{prov.key[:16]}.json"

    def measured(
        name: str, prov: Provenance, interventions: list[Any], **kwargs: Any
    ) -> dict[str, Any]:
        path = row_path(name, prov)
        if path.exists():
            try:
                saved = read_json(path)
                if saved.get("provenance", {}).get("key") == prov.key:
                    return dict(saved["data"])
            except (TraitlensError, KeyError):
                pass  # unreadable row: measure it again
        with steering(tm, interventions):
            data = measure(tm, sets, spec, **kwargs)
        if data.get("answers"):
            score_answers(data)
        write_json(path, {"provenance": prov.to_dict(), "data": data}, allow_nan=True)
        return data

    baseline_prov = row_provenance("baseline", [], {}, opposite_keys=all_keys)
    baseline = measured("baseline", baseline_prov, [], opposite_keys=all_keys)
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
                            "name": _name(trait, pole, method, "control" if is_control else "real"),
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
                    "name": _name(trait, pole, "prompt"),
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
                        "name": _name(trait, pole, "dose_mean_diff", strength),
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
                    "name": _name(trait, "high", "dose_neurons", gamma),
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
    for item in plan:
        system = item.get("system")
        item["measure"] = {
            "opposite_keys": [f"{item['trait']}|{item['pole']}"],
            "system": system,
            "opposite_system": system,
            "with_generation": bool(item.get("dose")) or not item["control"],
        }
        labels = {k: v for k, v in item.items() if k not in ("interventions", "measure", "name")}
        if "strength" in labels:  # the configured size, unsigned; the pole gives the sign
            labels["strength"] = abs(labels["strength"])
        item["provenance"] = row_provenance(
            item["name"], item["interventions"], labels, **item["measure"]
        )
    todo = [i for i in plan if not row_path(i["name"], i["provenance"]).exists()]
    todo_names = {i["name"] for i in todo}
    reasons: Counter[str] = Counter()
    for item in todo:
        before = _previous_row(rows_dir, item["name"])
        changes = (
            ["new"]
            if before is None
            else describe_changes(before.inputs, item["provenance"].inputs)
        )
        if len(changes) > 1:  # a changed size explains the changed edit ("data")
            changes = [c for c in changes if c != "data changed"]
        reasons["; ".join(changes)] += 1
    for reason, count in reasons.most_common():
        log(f"  {count} row(s) to measure: {reason}")
    log(f"  {len(plan) - len(todo)} of {len(plan)} rows reused (same inputs)")
    results = []
    row_keys = {"baseline": baseline_prov.key}
    for number, item in enumerate(plan, start=1):
        cached = item["name"] not in todo_names
        log(f"  [{number}/{len(plan)}] {item['name']}" + (" (reused)" if cached else ""))
        data = measured(item["name"], item["provenance"], item["interventions"], **item["measure"])
        summary = effect(baseline, data, traits, item["trait"], item["pole"], seed=config.seed)
        row = {k: v for k, v in item.items() if k not in ("interventions", "measure", "provenance")}
        row["row_key"] = item["provenance"].key
        row_keys[item["name"]] = item["provenance"].key
        results.append({**row, **summary})
    upstream_keys = {
        stage: prov.key
        for stage, prov in sorted(RunManifest(run).stages.items())
        if stage != "evaluation"
    }
    evaluation: dict[str, Any] = {
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
        "config": config.model_dump(mode="json"),
        "provenance": {"upstream": upstream_keys, "baseline": baseline_prov.key, "rows": row_keys},
        "n_eval": {
            "neutral_prompts": len(sets.neutral),
            "opposite_prompts_per_key": len(next(iter(sets.opposite.values()))),
            "statements": len(sets.statements),
            "forced_choices": len(sets.forced),
            "templates": sets.templates,
        },
    }
    evaluation_prov = provenance(
        "evaluation", model=tm.identity, config={"rows": row_keys}, upstream=upstream_keys
    )
    evaluation["provenance"] = {**evaluation["provenance"], "key": evaluation_prov.key}
    write_json(
        run / "study_config.json", {**config.model_dump(mode="json"), "model": tm.describe()}
    )
    write_json(run / "eval.json", evaluation, allow_nan=True)
    record(run, "evaluation", evaluation_prov)
    from traitlens.evaluate.tables import write_csv

    write_csv([_flat(r) for r in results], run / "eval.csv")

    log("[6/6] report")
    from traitlens.report.study_report import build_report

    report = build_report(run)
    elapsed = time.perf_counter() - started
    write_json(
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
