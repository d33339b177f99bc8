"""The persona design as a plan of stages: system-prompt personas at both poles.

Stages and their artifacts (in the run directory):

1. capture   → ``prompts.jsonl``, ``activations/{question,answer}/``, ``answers.jsonl``
2. probes    → ``probes.{safetensors,json}`` (+ figures)
3. neurons   → ``neurons.{safetensors,json}`` (+ figures)
4. vectors   → ``vectors.{safetensors,json}``
5. evaluation→ ``eval/rows/<intervention>--<key>.json`` (one per measured row),
               then ``eval.json`` + ``eval.csv``

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

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from traitlens.capture.capture import Prompt

if TYPE_CHECKING:  # the artifact types of PersonaRun (their modules load on first use)
    from traitlens.capture.pipeline import CaptureRun
    from traitlens.neurons.artifact import NeuronSet
    from traitlens.probe.artifact import ProbeSet
    from traitlens.steer.vector_set import VectorSet
from traitlens.data import (
    build_contrastive_set,
    load_forced_choices,
    load_mc_items,
    load_personas,
    load_questions,
    load_statements,
)
from traitlens.design.rows import (
    control_seed,
    describe_intervention,
    flat_row,
    matched_control,
    random_vector_like,
    row_name,
)
from traitlens.design.stages import Plan, Stage, StageContext, run_plan
from traitlens.errors import ArtifactError
from traitlens.evaluate.capability import balanced_subset
from traitlens.evaluate.interventions import EvalSets, ReadoutSpec, effect, measure
from traitlens.evaluate.results import (
    Effect,
    EvalBaseline,
    Measurement,
    PersonaResult,
    row_columns,
)
from traitlens.neurons.rules import fdr_or_npti
from traitlens.neurons.selected import SelectedNeurons
from traitlens.provenance import (
    Job,
    Provenance,
    RunManifest,
    data_digest,
    provenance,
    record,
)
from traitlens.rows import evaluate_rows
from traitlens.study.config import StudyConfig

PERSONA = Plan()


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


def neuron_rule(neurons: Any, trait: str, band: list[int], minimum: int) -> str:
    """'fdr' when the FDR-controlled set has at least ``minimum`` neurons (both poles)
    inside the edited layers ``band``, else NPTI's δ rule alone ('npti'): with few answers per
    persona group the prompt-level test is too weak for anything to survive."""
    return fdr_or_npti(neurons, trait, layers=band, minimum=minimum)


def build_eval_sets(config: StudyConfig, train_prompts: list[Any]) -> EvalSets:
    """Held-out questions and personas (never seen by probes, vectors or neurons)."""
    from traitlens.evaluate.questionnaire import TEMPLATES

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
    capability = balanced_subset(load_mc_items(config.capability_file), config.capability_items)
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
    return EvalSets(
        config.traits,
        opposite,
        target_persona,
        neutral,
        statements,
        forced,
        list(TEMPLATES)[: config.templates],
        neutral[: config.generation_prompts],
        max_new_tokens=32,
        capability=capability,
    )


def _probe_figures(ctx: StageContext, probes: ProbeSet) -> None:
    """Figures are cheap and derived: drawn from the current artifacts every time."""
    from traitlens.report.probe_figures import plot_probe_accuracy, plot_probe_r2

    for plot in (plot_probe_accuracy, plot_probe_r2):
        plot(probes, ctx.run / "figures")


def _neuron_figures(ctx: StageContext, neurons: NeuronSet) -> None:
    from traitlens.report.neuron_figures import plot_neuron_counts, plot_neuron_overlap

    for plot in (plot_neuron_counts, plot_neuron_overlap):
        plot(neurons, ctx.run / "figures")


@PERSONA.stage("capture", "contrastive prompts, question and answer activations")
def stage_capture(ctx: StageContext) -> Any:
    from traitlens.capture.pipeline import capture_run

    config: StudyConfig = ctx.config
    captured = capture_run(
        ctx.tm,
        ctx.run,
        config.traits,
        n_questions=config.n_questions,
        n_personas_per_pole=config.n_personas,
        max_new_tokens=config.max_new_tokens,
        batch_size=config.batch_size,
        seed=config.seed,
        progress=ctx.progress,
        force=ctx.force,
    )
    assert captured.answer is not None and captured.answer.neuron_stats is not None
    return captured


@PERSONA.stage(
    "probes", "per-layer grouped cross-validation with control tasks", then=[_probe_figures]
)
def stage_probes(ctx: StageContext) -> Job[ProbeSet]:
    from traitlens.probe import probes_job

    config: StudyConfig = ctx.config
    captured = ctx["capture"]
    return probes_job(
        captured.question,
        captured.prompts,
        config.traits,
        folds=config.folds,
        seed=config.seed,
        progress=ctx.progress,
    )


@PERSONA.stage(
    "neurons", "NPTI selection with a two-proportion test and BH-FDR", then=[_neuron_figures]
)
def stage_neurons(ctx: StageContext) -> Job[NeuronSet]:
    from traitlens.neurons import neurons_job
    from traitlens.neurons.select import prompts_per_group

    config: StudyConfig = ctx.config
    captured = ctx["capture"]
    return neurons_job(
        captured.answer.neuron_stats,
        threshold=config.threshold,
        fdr=config.fdr,
        traits=config.traits,
        prompt_counts=prompts_per_group(captured.prompts),
    )


@PERSONA.stage("vectors", "trait directions (every configured method)")
def stage_vectors(ctx: StageContext) -> Job[VectorSet]:
    from traitlens.steer import VectorSet, trait_vectors

    config: StudyConfig = ctx.config
    captured, probes = ctx["capture"], ctx["probes"]
    use_probes = probes.layers == captured.answer.layers
    prov = provenance(
        "vectors",
        model=ctx.tm.identity,
        config={
            "methods": config.vector_methods,
            "traits": config.traits,
            "probe_weights": use_probes,
        },
        upstream={
            "capture.answer": captured.answer.key,
            "probes": probes.key if use_probes else None,
        },
    )

    def compute() -> VectorSet:
        vectors = trait_vectors(
            captured.answer,
            captured.prompts,
            config.traits,
            config.vector_methods,
            probes=probes if use_probes else None,
        )
        vectors.provenance = prov.to_dict()
        return vectors

    return Job(VectorSet, "vectors", prov, compute, ctx.tm.identity)


@dataclass(frozen=True)
class PersonaRow:
    """One planned measurement: an intervention (or its control, or a persona prompt)."""

    name: str
    trait: str
    pole: str
    method: str
    control: bool
    interventions: tuple[Any, ...] = ()
    size: dict[str, Any] = field(default_factory=dict)
    system: str | None = None
    dose: bool = False

    def labels(self) -> dict[str, Any]:
        """What the row's key records besides its edit (the configured size, unsigned)."""
        labels = row_columns(
            self.trait, self.pole, self.method, self.control, self.size, self.dose, self.system
        )
        if "strength" in labels:
            labels["strength"] = abs(labels["strength"])
        return labels

    def result(self, key: str, summary: Effect) -> PersonaResult:
        """This row's line of ``eval.json``: what was done, under which key, to what effect."""
        return PersonaResult(
            self.name,
            self.trait,
            self.pole,
            self.method,
            self.control,
            summary,
            key,
            dict(self.size),
            self.dose,
            self.system,
        )

    def measure_kwargs(self) -> dict[str, Any]:
        return {
            "opposite_keys": [f"{self.trait}|{self.pole}"],
            "system": self.system,
            "opposite_system": self.system,
            "with_generation": self.dose or not self.control,
        }


def _neuron_rows(
    ctx: StageContext, trait: str, pole: str, edit_layers: list[int]
) -> list[PersonaRow]:
    from traitlens.steer import NeuronEdit

    config: StudyConfig = ctx.config
    neurons = ctx["neurons"]
    other = "low" if pole == "high" else "high"
    rule = neuron_rule(neurons, trait, edit_layers, config.min_fdr_neurons)
    target = neurons.select(trait, pole, rule).in_layers(edit_layers)
    opposite = neurons.select(trait, other, rule).in_layers(edit_layers)

    def control_of(real: SelectedNeurons, which: str) -> SelectedNeurons:
        random = neurons.random_control(trait, which, config.seed, rule).in_layers(edit_layers)
        return matched_control(real, random)

    size = {
        "gamma": config.gamma,
        "n_target": len(target),
        "n_opposite": len(opposite),
        "neuron_rule": rule,
        "neuron_layers": config.neuron_layers,
    }
    real = NeuronEdit(target, opposite, gamma=config.gamma)
    control = NeuronEdit(control_of(target, pole), control_of(opposite, other), gamma=config.gamma)
    return [
        PersonaRow(
            row_name(trait, pole, "neurons", tag), trait, pole, "neurons", is_control, (edit,), size
        )
        for tag, is_control, edit in (("real", False, real), ("control", True, control))
    ]


def _direction_rows(
    ctx: StageContext, trait: str, pole: str, method: str, band: list[int]
) -> list[PersonaRow]:
    from traitlens.steer import AddDirection

    config: StudyConfig = ctx.config
    sign = 1.0 if pole == "high" else -1.0
    vector = ctx["vectors"].get(trait, method)
    # one random direction per trait (seeded by trait), so the five controls are
    # independent draws rather than one shared direction
    random = random_vector_like(vector, control_seed(config.seed, trait))
    size = {"strength": sign * config.strength}
    return [
        PersonaRow(
            row_name(trait, pole, method, tag),
            trait,
            pole,
            method,
            is_control,
            (AddDirection(v, sign * config.strength, layers=tuple(band)),),
            size,
        )
        for tag, is_control, v in (("real", False, vector), ("control", True, random))
    ]


def _dose_rows(
    ctx: StageContext, trait: str, band: list[int], edit_layers: list[int]
) -> list[PersonaRow]:
    from traitlens.steer import AddDirection, NeuronEdit

    config: StudyConfig = ctx.config
    neurons, vector = ctx["neurons"], ctx["vectors"].get(trait, "mean_diff")
    rows = []
    for strength in config.dose_strengths:
        for pole, sign in (("high", 1.0), ("low", -1.0)):
            rows.append(
                PersonaRow(
                    row_name(trait, pole, "dose_mean_diff", strength),
                    trait,
                    pole,
                    "mean_diff",
                    False,
                    (AddDirection(vector, sign * strength, layers=tuple(band)),),
                    {"strength": sign * strength},
                    dose=True,
                )
            )
    rule = neuron_rule(neurons, trait, edit_layers, config.min_fdr_neurons)
    target = neurons.select(trait, "high", rule).in_layers(edit_layers)
    opposite = neurons.select(trait, "low", rule).in_layers(edit_layers)
    for gamma in config.dose_gammas:
        size = {
            "gamma": gamma,
            "neuron_rule": rule,
            "neuron_layers": config.neuron_layers,
            "n_target": len(target),
            "n_opposite": len(opposite),
        }
        rows.append(
            PersonaRow(
                row_name(trait, "high", "dose_neurons", gamma),
                trait,
                "high",
                "neurons",
                False,
                (NeuronEdit(target, opposite, gamma=gamma),),
                size,
                dose=True,
            )
        )
    return rows


def plan_rows(
    ctx: StageContext, sets: EvalSets, band: list[int], edit_layers: list[int]
) -> list[PersonaRow]:
    """Every row of the persona evaluation, in report order."""
    config: StudyConfig = ctx.config
    plan: list[PersonaRow] = []
    for trait in config.traits:
        for pole in ("high", "low"):
            for method in config.eval_methods:
                if method == "neurons":
                    plan += _neuron_rows(ctx, trait, pole, edit_layers)
                else:
                    plan += _direction_rows(ctx, trait, pole, method, band)
            plan.append(
                PersonaRow(
                    row_name(trait, pole, "prompt"),
                    trait,
                    pole,
                    "prompt",
                    False,
                    system=sets.target_persona[f"{trait}|{pole}"],
                )
            )
    for trait in config.dose_traits:
        if trait in config.traits:
            plan += _dose_rows(ctx, trait, band, edit_layers)
    return plan


# what every row reads besides its intervention: the held-out material (content),
# where and how traits are read, and the judge
EVAL_CONFIG_FIELDS = (
    "seed",
    "eval_questions",
    "eval_personas",
    "statements_per_trait",
    "forced_per_trait",
    "templates",
    "generation_prompts",
    "statements_file",
    "forced_choice_file",
    "capability_items",
    "capability_file",
    "judge_url",
    "judge_model",
)


def sets_digest(sets: EvalSets) -> str:
    """Content digest of the held-out material (part of every row's key)."""
    return data_digest(
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
            "capability": [i.model_dump() for i in sets.capability],
        }
    )


@dataclass
class PersonaEvaluation:
    """``eval.json`` of the persona design: every row's effect summary, the baseline,
    where traits were read and the keys of everything it was computed from."""

    traits: list[str]
    steer_layers: list[int]
    readout_layers: dict[str, int]
    baseline: EvalBaseline
    results: list[PersonaResult]
    config: dict[str, Any]
    provenance: dict[str, Any]
    n_eval: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["baseline"] = self.baseline.to_dict()
        out["results"] = [r.to_dict() for r in self.results]
        return out

    def save(self, path: str | Path) -> None:
        from traitlens.artifact_io import write_json

        write_json(Path(path), self.to_dict(), allow_nan=True)

    @classmethod
    def load(cls, path: str | Path) -> PersonaEvaluation:
        from traitlens.artifact_io import read_json

        data = read_json(Path(path), missing="run `traitlens study` first")
        missing = [k for k in cls.__dataclass_fields__ if k not in data]
        if missing:
            raise ArtifactError(
                f"{path} lacks {', '.join(missing)}: it was written by another version; "
                "rerun `traitlens study` on the run (measured rows are reused)"
            )
        values = {k: data[k] for k in cls.__dataclass_fields__}
        values["baseline"] = EvalBaseline.from_dict(data["baseline"])
        values["results"] = [PersonaResult.from_dict(r) for r in data["results"]]
        return cls(**values)


class _Scorer:
    """Open-ended answers read back by the UNSTEERED model's probes (and the judge)."""

    def __init__(self, ctx: StageContext, sets: EvalSets, layers_read: dict[str, int]):
        config: StudyConfig = ctx.config
        self.ctx, self.sets, self.layers_read = ctx, sets, layers_read
        self.judge = None
        if config.judge_url:
            from traitlens.evaluate.judge import HttpJudge

            self.judge = HttpJudge(config.judge_url, model=config.judge_model, timeout=20.0)
            self.judge.rate(config.traits[0], "I spent the afternoon reading.")  # fail now

    def __call__(self, data: Measurement) -> None:
        from traitlens.evaluate.openended import endpoint_scores, probe_scores

        config: StudyConfig = self.ctx.config
        probes, traits = self.ctx["probes"], config.traits
        answers = data.answers or []
        prompts = self.sets.generation[: len(answers)]
        columns = {}
        for layer in sorted(set(self.layers_read.values())):
            scores = probe_scores(
                self.ctx.tm,
                prompts,
                answers,
                probes,
                layer,
                traits=traits,
                pooling=probes.pooling,
                batch_size=config.batch_size,
            )
            for index, trait in enumerate(traits):
                if self.layers_read[trait] == layer:
                    columns[trait] = scores.scores[:, index].tolist()
        data.answer_probe_scores = columns
        if self.judge is not None:
            rated = endpoint_scores(
                self.judge, answers, traits=traits, questions=[p.user for p in prompts]
            )
            data.judge_scores = {t: rated.scores[:, i].tolist() for i, t in enumerate(traits)}


@PERSONA.stage("evaluation", "interventions: representation, behaviour, cost — with controls")
def stage_evaluation(ctx: StageContext) -> PersonaEvaluation:
    from traitlens.evaluate.tables import write_csv
    from traitlens.steer import band_layers, steering

    config: StudyConfig = ctx.config
    tm, probes, traits = ctx.tm, ctx["probes"], config.traits
    band = band_layers(tm.n_layers, config.steer_band)
    # NPTI edits every selected neuron wherever it is; "band" confines edits to the
    # direction band (comparable placement, but at small sizes often no neuron is there)
    edit_layers = band if config.neuron_layers == "band" else list(range(tm.n_layers))
    layers_read = readout_layers(probes, traits, after=band[-1])
    spec = ReadoutSpec(probes, layers_read, pooling=probes.pooling, batch_size=config.batch_size)
    sets = build_eval_sets(config, ctx["capture"].prompts)
    rows_dir = ctx.run / "eval" / "rows"
    score = _Scorer(ctx, sets, layers_read)
    fixed = {
        "eval": {k: getattr(config, k) for k in EVAL_CONFIG_FIELDS},
        "readout_layers": layers_read,
        "steer_layers": band,
        "held_out_material": sets_digest(sets),
    }

    def prov(
        name: str, interventions: tuple[Any, ...], labels: dict[str, Any], **kwargs: Any
    ) -> Provenance:
        # the readout depends on the probe set; the edits are in the row's data (their
        # tensors as digests), so a changed vector re-measures its own rows and nothing else
        return provenance(
            "eval_row",
            model=tm.identity,
            config={"row": name, **labels, "measure": kwargs, **fixed},
            data=[describe_intervention(i) for i in interventions],
            upstream={"probes": probes.key},
        )

    def compute(interventions: tuple[Any, ...], kwargs: dict[str, Any]) -> Measurement:
        with steering(tm, list(interventions)):
            data = measure(tm, sets, spec, **kwargs)
        if data.answers:
            score(data)
        return data

    all_keys = list(sets.opposite)
    base_prov = prov("baseline", (), {}, opposite_keys=all_keys)
    plan = plan_rows(ctx, sets, band, edit_layers)
    provs = {r.name: prov(r.name, r.interventions, r.labels(), **r.measure_kwargs()) for r in plan}
    baseline, measured, row_keys = evaluate_rows(
        rows_dir,
        (base_prov, lambda: compute((), {"opposite_keys": all_keys})),
        [
            (r.name, provs[r.name], partial(compute, r.interventions, r.measure_kwargs()))
            for r in plan
        ],
        Measurement,
        ctx.log,
    )
    results = [
        row.result(
            provs[row.name].key,
            effect(baseline, measured[row.name], traits, row.trait, row.pole, seed=config.seed),
        )
        for row in plan
    ]
    evaluation, eval_prov = _evaluation(
        ctx, band, layers_read, baseline, results, sets, base_prov, row_keys
    )
    evaluation.save(ctx.run / "eval.json")
    record(ctx.run, "evaluation", eval_prov)
    write_csv([flat_row(r.to_dict()) for r in results], ctx.run / "eval.csv")
    return evaluation


def _mean_scores(section: dict[str, dict[str, float]], traits: list[str]) -> dict[str, float]:
    return {t: float(np.mean(list(section.get(t, {}).values()) or [np.nan])) for t in traits}


def _evaluation(
    ctx: StageContext,
    band: list[int],
    layers_read: dict[str, int],
    baseline: Measurement,
    results: list[PersonaResult],
    sets: EvalSets,
    base_prov: Provenance,
    row_keys: dict[str, str],
) -> tuple[PersonaEvaluation, Provenance]:
    config: StudyConfig = ctx.config
    upstream = {
        stage: p.key
        for stage, p in sorted(RunManifest(ctx.run).stages.items())
        if stage != "evaluation" and not stage.startswith("concepts.")
    }
    eval_prov = provenance(
        "evaluation", model=ctx.tm.identity, config={"rows": row_keys}, upstream=upstream
    )
    evaluation = PersonaEvaluation(
        traits=config.traits,
        steer_layers=band,
        readout_layers=layers_read,
        baseline=EvalBaseline(
            questionnaire=_mean_scores(baseline.questionnaire, config.traits),
            forced_choice=_mean_scores(baseline.forced_choice, config.traits),
            perplexity=baseline.perplexity,
            capability=float(np.mean(baseline.capability)) if baseline.capability else None,
            label_mass=baseline.questionnaire_label_mass,
        ),
        results=results,
        config=config.model_dump(mode="json"),
        provenance={
            "upstream": upstream,
            "baseline": base_prov.key,
            "rows": row_keys,
            "key": eval_prov.key,
        },
        n_eval={
            "neutral_prompts": len(sets.neutral),
            "opposite_prompts_per_key": len(next(iter(sets.opposite.values()))),
            "statements": len(sets.statements),
            "forced_choices": len(sets.forced),
            "templates": sets.templates,
            "capability_items": len(sets.capability),
        },
    )
    return evaluation, eval_prov


PERSONA_STAGES: tuple[Stage, ...] = PERSONA.stages


@dataclass(frozen=True)
class PersonaRun:
    """What a persona run made, typed: each stage's artifact (None for a stage not run)."""

    run: Path
    capture: CaptureRun | None = None
    probes: ProbeSet | None = None
    neurons: NeuronSet | None = None
    vectors: VectorSet | None = None
    evaluation: PersonaEvaluation | None = None


def run_persona(
    context: StageContext, stages: Sequence[Stage] = PERSONA_STAGES, prefix: str = "persona "
) -> PersonaRun:
    """Run (or resume) the persona design's ``stages`` in ``context``; returns what they
    made."""
    return PersonaRun(context.run, **run_plan(stages, context, prefix=prefix).artifacts)
