"""The concept design as a plan of stages, resumable at every step.

Artifacts (under ``RUN/concepts/``): ``items.json`` (the items used and the
held-out split), ``activations/item_activations.*``, ``probes.*``, ``neurons.*``,
``eval/rows/NAME--KEY.json`` (one per measured condition), ``eval.json`` and
``eval.csv``; figures in ``RUN/figures/concept_*.png``. Every stage is keyed by
its inputs, so a rerun reuses exactly what is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from traitlens.artifact_io import Record, read_json, write_json
from traitlens.concepts.capture import ItemActivations, capture_items
from traitlens.concepts.config import ConceptConfig
from traitlens.concepts.evaluate import (
    ConceptEffect,
    ConceptMeasurement,
    ConceptResult,
    ConceptSets,
    concept_effect,
    measure_condition,
)
from traitlens.concepts.items import ItemLike, ItemSplit, choose_items
from traitlens.concepts.labels import label_prompt, resolve_domain_tokens
from traitlens.concepts.neurons import (
    depth_thirds,
    matched_random,
    overlap,
    select_concept_neurons,
    strongest,
)
from traitlens.concepts.probes import DomainProbes, fit_domain_probes
from traitlens.neurons.artifact import NeuronSet
from traitlens.provenance import Provenance, RunManifest, keyed_stage, provenance, record
from traitlens.study.rows import (
    control_seed,
    describe_intervention,
    flat_row,
    log_plan,
    measured_row,
    random_vector_like,
    row_name,
)
from traitlens.study.stages import Plan, Stage, StageContext, run_plan

CONCEPT = Plan()

CONCEPT_DIR = "concepts"


@dataclass(frozen=True)
class ConceptItems:
    """The items a run uses (after ``items_per_domain``) and the held-out split."""

    items: tuple[ItemLike, ...]
    split: ItemSplit
    source: str
    key: str

    def train(self) -> list[ItemLike]:
        ids = set(self.split.train)
        return [i for i in self.items if i.id in ids]

    def held_out(self) -> list[ItemLike]:
        ids = set(self.split.held_out)
        return [i for i in self.items if i.id in ids]


def load_bank(config: ConceptConfig) -> tuple[list[Any], str]:
    """The item bank (shipped, or ``items_file``), checked for what the design needs."""
    from traitlens.data import check_item_bank, load_items

    items = load_items(config.items_file)
    check_item_bank(items, config.traits, source=config.items_file or "shipped item bank")
    return items, config.items_file or "shipped"


@CONCEPT.stage("items", "item bank and held-out split")
def stage_items(ctx: StageContext) -> ConceptItems:
    config: ConceptConfig = ctx.config
    bank, source = load_bank(config)
    items, split = choose_items(
        bank,
        config.traits,
        per_domain=config.items_per_domain,
        held_out=config.held_out,
        seed=config.seed,
    )
    prov = provenance(
        "concepts.items",
        config={
            "per_domain": config.items_per_domain,
            "held_out": config.held_out,
            "seed": config.seed,
            "traits": config.traits,
        },
        # the content, not the file's path: the same bank under another name is the same
        data=[[i.id, i.trait, i.facet, i.keyed, i.text] for i in items],
    )
    path = ctx.run / CONCEPT_DIR / "items.json"
    record_items = {
        "kind": "concept_items",
        "provenance": prov.to_dict(),
        "source": source,
        "split": split.to_dict(),
        "items": [
            {"id": i.id, "trait": i.trait, "facet": i.facet, "keyed": i.keyed, "text": i.text}
            for i in items
        ],
    }
    keyed_stage(
        ctx.run,
        "concepts.items",
        prov,
        path,
        load=lambda: None,
        compute=lambda: write_json(path, record_items),
        force=ctx.force,
        what="concept item split",
    )
    ctx.log(
        f"  {len(items)} items ({len(split.train)} train, {len(split.held_out)} held out) "
        f"from the {source} bank"
    )
    return ConceptItems(tuple(items), split, source, prov.key)


@CONCEPT.stage("capture", "item-token states and per-item neuron firing")
def stage_capture(ctx: StageContext) -> ItemActivations:
    config: ConceptConfig = ctx.config
    chosen: ConceptItems = ctx["items"]
    return capture_items(
        ctx.tm,
        chosen.items,
        templates=config.templates,
        poolings=config.poolings,
        batch_size=config.batch_size,
        out_dir=ctx.run / CONCEPT_DIR / "activations",
        run_dir=ctx.run,
        upstream={"concepts.items": chosen.key},
        force=ctx.force,
        progress=ctx.progress,
    )


@CONCEPT.stage("probes", "domain probes per layer, facet-grouped CV with control task")
def stage_probes(ctx: StageContext) -> DomainProbes:
    config: ConceptConfig = ctx.config
    acts: ItemActivations = ctx["capture"]
    chosen: ConceptItems = ctx["items"]
    layers = acts.layers[:: config.layer_stride]
    if acts.layers[-1] not in layers:
        layers.append(acts.layers[-1])
    prov = provenance(
        "concepts.probes",
        model=acts.identity,
        config={
            "pooling": config.probe_pooling,
            "folds": config.folds,
            "c": config.probe_c,
            "layers": layers,
            "seed": config.seed,
            "traits": config.traits,
        },
        upstream={"concepts.capture": acts.key, "concepts.items": chosen.key},
    )
    out = ctx.run / CONCEPT_DIR
    probes = DomainProbes.keyed(
        out,
        "concepts.probes",
        prov,
        lambda: _fit_probes(ctx, acts, chosen, layers, prov),
        expect=acts.identity,
        run_dir=ctx.run,
        force=ctx.force,
        what="domain probes",
    )
    summary = probes.summary()
    ctx.log(
        f"  domain probe: best layer {summary['best_layer']} accuracy "
        f"{summary['best_accuracy']:.3f} (control {summary['control_at_best']:.3f}, "
        f"chance {summary['chance']:.2f}); first layer at 90 %: {summary['first_layer_90']}"
    )
    return probes


def _fit_probes(
    ctx: StageContext,
    acts: ItemActivations,
    chosen: ConceptItems,
    layers: list[int],
    prov: Provenance,
) -> DomainProbes:
    config: ConceptConfig = ctx.config
    probes = fit_domain_probes(
        acts,
        chosen.items,
        chosen.split.train,
        traits=config.traits,
        pooling=config.probe_pooling,
        layers=layers,
        folds=config.folds,
        c=config.probe_c,
        seed=config.seed,
        progress=ctx.progress,
    )
    probes.provenance = prov.to_dict()
    return probes


@CONCEPT.stage("neurons", "one-vs-rest concept neurons, item-level test with BH-FDR")
def stage_neurons(ctx: StageContext) -> NeuronSet:
    config: ConceptConfig = ctx.config
    chosen: ConceptItems = ctx["items"]
    neurons = select_concept_neurons(
        ctx["capture"],
        chosen.items,
        chosen.split.train,
        traits=config.traits,
        threshold=config.threshold,
        fdr=config.fdr,
        out_dir=ctx.run / CONCEPT_DIR,
        run_dir=ctx.run,
        force=ctx.force,
    )
    counts = {
        t: (int(neurons.mask(t, "high").sum()), int(neurons.npti_mask(t, "high").sum()))
        for t in config.traits
    }
    ctx.log(
        "  concept neurons that fire more for the domain (q ≤ fdr / |δ| rule alone): "
        + ", ".join(f"{t} {a}/{b}" for t, (a, b) in counts.items())
    )
    return neurons


def domain_direction(
    acts: ItemActivations,
    items: Sequence[ItemLike],
    train_ids: Sequence[str],
    trait: str,
    layers: Sequence[int],
    pooling: str,
) -> Any:
    """Centroid difference (domain's training items − the others') per layer, as a
    TraitVector whose spread is the SD of training rows along it (the steering unit)."""
    from traitlens.steer import TraitVector

    by_id = {i.id: i for i in items}
    rows = acts.rows(list(train_ids))
    inside = torch.tensor([by_id[acts.item_ids[r]].trait == trait for r in rows])
    directions, spread = {}, {}
    for layer in layers:
        x = acts.pooled[pooling][rows, acts.layer_index(layer)].double()
        gap = x[inside].mean(0) - x[~inside].mean(0)
        unit = gap / gap.norm().clamp(min=1e-12)
        directions[layer] = unit
        spread[layer] = float((x @ unit).std())
    return TraitVector.from_directions(
        acts.identity,
        directions,
        spread=spread,
        trait=trait,
        method="centroid",
        source={"design": "concept", "pooling": pooling},
    )


@dataclass(frozen=True)
class ConceptCondition:
    """One planned row: an edit (or its control) toward ``trait``."""

    name: str
    trait: str
    kind: str  # boost | suppress | direction
    control: bool
    fraction: float | None
    size: dict[str, Any]
    interventions: tuple[Any, ...]

    def result(self, effect: ConceptEffect, key: str) -> ConceptResult:
        """This condition's row of ``concepts/eval.json``."""
        return ConceptResult(
            self.name,
            self.trait,
            self.kind,
            self.control,
            self.fraction,
            dict(self.size),
            effect,
            key,
        )


def neuron_rule(neurons: NeuronSet, trait: str, band: list[int], config: ConceptConfig) -> str:
    """``fdr`` when the FDR-controlled set has ≥ ``min_fdr_neurons`` neurons of the domain
    inside the edited band, else NPTI's δ rule alone (``npti``) — with few training items
    the item-level test is too weak for anything to survive; the row records which."""
    if config.neuron_rule != "auto":
        return config.neuron_rule
    count = len(neurons.select(trait, "high", "fdr").in_layers(band))
    return "fdr" if count >= config.min_fdr_neurons else "npti"


def _pair(
    trait: str, kind: str, fraction: float | None, size: dict[str, Any], real: Any, control: Any
) -> list[ConceptCondition]:
    """An edit and its matched control as two planned rows (an empty edit is a no-op)."""
    name_parts = (trait, kind) if fraction is None or kind != "boost" else (trait, kind, fraction)
    return [
        ConceptCondition(
            row_name(*name_parts, tag),
            trait,
            kind,
            is_control,
            fraction,
            size,
            () if edit is None else (edit,),
        )
        for tag, is_control, edit in (("real", False, real), ("control", True, control))
    ]


def plan_conditions(
    ctx: StageContext, band: list[int], neuron_band: list[int]
) -> list[ConceptCondition]:
    """Per domain: boost at each fraction, suppress, and the centroid direction — each
    followed by its matched control (random neurons with the same per-layer counts and δ
    profile; a random direction with the same per-layer spread)."""
    from traitlens.neurons.selected import SelectedNeurons
    from traitlens.steer import Ablate, AddDirection, NeuronEdit

    config: ConceptConfig = ctx.config
    neurons: NeuronSet = ctx["neurons"]
    chosen: ConceptItems = ctx["items"]
    empty = SelectedNeurons.empty()

    def boost(selected: SelectedNeurons) -> Any:
        return NeuronEdit(selected, empty, gamma=config.gamma) if len(selected) else None

    def suppress(selected: SelectedNeurons) -> Any:
        if not len(selected):
            return None
        if config.suppress == "zero":
            return Ablate(selected, mode="zero")
        return NeuronEdit(empty, selected, gamma=config.gamma)  # min(0, ·): silenced where firing

    def direction(vector: Any) -> Any:
        return AddDirection(vector, config.direction_strength, layers=tuple(band))

    plan: list[ConceptCondition] = []
    for trait in config.traits:
        rule = neuron_rule(neurons, trait, neuron_band, config)
        pool = neurons.select(trait, "high", rule).in_layers(neuron_band)
        for fraction in config.fractions:
            real = strongest(pool, fraction)
            control = matched_random(neurons, real, config.seed, f"{trait}|{fraction}")
            size = {"gamma": config.gamma, "n_neurons": len(real), "neuron_rule": rule}
            plan += _pair(trait, "boost", fraction, size, boost(real), boost(control))
        real = strongest(pool, 1.0)
        control = matched_random(neurons, real, config.seed, f"{trait}|suppress")
        size = {"mode": config.suppress, "n_neurons": len(real), "neuron_rule": rule}
        plan += _pair(trait, "suppress", 1.0, size, suppress(real), suppress(control))
        vector = domain_direction(
            ctx["capture"], chosen.items, chosen.split.train, trait, band, config.probe_pooling
        )
        random = random_vector_like(vector, control_seed(config.seed, trait))
        size = {"strength": config.direction_strength}
        plan += _pair(trait, "direction", None, size, direction(vector), direction(random))
    return plan


def _sets(ctx: StageContext, readout: int) -> ConceptSets:
    from traitlens.evaluate.questionnaire import TEMPLATES

    config: ConceptConfig = ctx.config
    chosen: ConceptItems = ctx["items"]
    held = chosen.held_out()
    if config.eval_items_per_domain is not None:
        held = [
            i
            for t in config.traits
            for i in [h for h in held if h.trait == t][: config.eval_items_per_domain]
        ]
    return ConceptSets(
        tuple(config.traits),
        tuple(held),
        config.eval_template,
        readout,
        label_prompt(chosen.train(), config.traits, config.k_shot, config.seed),
        tuple(list(TEMPLATES)[: config.likert_templates]),
        config.batch_size,
    )


@dataclass(frozen=True)
class ConceptBaseline(Record):
    """The unsteered model on the held-out items: both levels' accuracy, label mass, cost."""

    probe_accuracy: float
    label_accuracy: float
    label_mass: float
    perplexity: float
    n_items: int


@dataclass
class ConceptEvaluation:
    """Every measured condition's numbers, the baseline and where they were read."""

    traits: list[str]
    steer_layers: list[int]
    neuron_layers: list[int]
    readout_layer: int
    k_shot: int
    baseline: ConceptBaseline
    results: list[ConceptResult]
    provenance: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "concept_evaluation",
            **self.__dict__,
            "baseline": self.baseline.to_dict(),
            "results": [r.to_dict() for r in self.results],
        }

    def save(self, path: str | Path) -> None:
        write_json(Path(path), self.to_dict(), allow_nan=True)

    @classmethod
    def load(cls, path: str | Path) -> ConceptEvaluation:
        data = read_json(Path(path), missing="run `traitlens study --design concept` first")
        data.pop("kind", None)
        data["baseline"] = ConceptBaseline(**data["baseline"])
        data["results"] = [ConceptResult.from_dict(r) for r in data["results"]]
        return cls(**data)


@dataclass(frozen=True)
class _Readout:
    """Where and on what every condition is read; a row's key covers all of it."""

    sets: ConceptSets
    tokens: Any
    band: list[int]
    neuron_band: list[int]

    def provenance(self, ctx: StageContext, name: str, condition: Any = None) -> Provenance:
        labels = (
            {}
            if condition is None
            else {"kind": condition.kind, "control": condition.control, **condition.size}
        )
        return provenance(
            "eval_row",
            model=ctx.tm.identity,
            config={
                "row": name,
                **labels,
                "material": self.sets.describe(),
                "steer_layers": self.band,
                "neuron_layers": self.neuron_band,
            },
            data=[describe_intervention(i) for i in (condition.interventions if condition else ())],
            upstream={"concepts.probes": ctx["probes"].key},
        )

    def measure(self, ctx: StageContext, interventions: Sequence[Any]) -> ConceptMeasurement:
        from traitlens.steer import steering

        with steering(ctx.tm, list(interventions)):
            return measure_condition(ctx.tm, self.sets, ctx["probes"], self.tokens)


def _readout(ctx: StageContext) -> _Readout:
    from traitlens.steer.layers import band_layers

    config: ConceptConfig = ctx.config
    band = band_layers(ctx.tm.n_layers, config.steer_band)
    neuron_band = band_layers(ctx.tm.n_layers, config.neuron_band)
    # read downstream of every edited layer (+1 gap), so a shift is propagated, not read back
    readout = ctx["probes"].best_layer(after=max(band[-1], neuron_band[-1]) + 1)
    sets = _sets(ctx, readout)
    tokens = resolve_domain_tokens(ctx.tm, sets.label_prompt.labels)
    return _Readout(sets, tokens, band, neuron_band)


@CONCEPT.stage("evaluation", "boost / suppress / direction vs matched controls, both levels")
def stage_evaluation(ctx: StageContext) -> ConceptEvaluation:
    """Measure the baseline and every planned condition (reusing rows of the same key),
    then summarize each against the baseline."""
    config: ConceptConfig = ctx.config
    read = _readout(ctx)
    rows_dir = ctx.run / CONCEPT_DIR / "eval" / "rows"
    base_prov = read.provenance(ctx, "baseline")
    plan = plan_conditions(ctx, read.band, read.neuron_band)
    provs = {c.name: read.provenance(ctx, c.name, c) for c in plan}
    log_plan(rows_dir, [("baseline", base_prov), *provs.items()], ctx.log)
    baseline = measured_row(
        rows_dir, "baseline", base_prov, lambda: read.measure(ctx, []), ConceptMeasurement
    )
    results, keys = [], {"baseline": base_prov.key}
    for number, condition in enumerate(plan, start=1):
        ctx.log(f"  [{number}/{len(plan)}] {condition.name}")
        prov = provs[condition.name]
        data = measured_row(
            rows_dir,
            condition.name,
            prov,
            partial(read.measure, ctx, condition.interventions),
            ConceptMeasurement,
        )
        summary = concept_effect(
            baseline,
            data,
            read.sets.items,
            config.traits,
            condition.trait,
            seed=config.seed,
        )
        keys[condition.name] = prov.key
        results.append(condition.result(summary, prov.key))
    return _save_evaluation(ctx, read, baseline, results, keys)


def _save_evaluation(
    ctx: StageContext,
    read: _Readout,
    baseline: ConceptMeasurement,
    results: list[ConceptResult],
    keys: dict[str, str],
) -> ConceptEvaluation:
    from traitlens.evaluate.tables import write_csv

    config: ConceptConfig = ctx.config
    truth = np.array([config.traits.index(i.trait) for i in read.sets.items])
    upstream = {
        s: p.key
        for s, p in RunManifest(ctx.run).stages.items()
        if s.startswith("concepts.") and s != "concepts.evaluation"
    }
    eval_prov = provenance(
        "concepts.evaluation", model=ctx.tm.identity, config={"rows": keys}, upstream=upstream
    )
    evaluation = ConceptEvaluation(
        list(config.traits),
        read.band,
        read.neuron_band,
        read.sets.readout_layer,
        read.sets.label_prompt.k,
        ConceptBaseline(
            probe_accuracy=float((np.asarray(baseline.probe_probs).argmax(1) == truth).mean()),
            label_accuracy=float((np.asarray(baseline.label_probs).argmax(1) == truth).mean()),
            label_mass=float(np.mean(baseline.label_mass)),
            perplexity=baseline.perplexity,
            n_items=len(read.sets.items),
        ),
        results,
        {"rows": keys, "upstream": upstream, "key": eval_prov.key},
    )
    evaluation.save(ctx.run / CONCEPT_DIR / "eval.json")
    record(ctx.run, "concepts.evaluation", eval_prov)
    write_csv([flat_row(r.to_dict()) for r in results], ctx.run / CONCEPT_DIR / "eval.csv")
    return evaluation


@CONCEPT.stage("figures", "concept figures")
def stage_figures(ctx: StageContext) -> list[Path]:
    from traitlens.report.concept_figures import draw_concept_figures

    return draw_concept_figures(
        ctx.run, ctx["items"], ctx["capture"], ctx["probes"], ctx["neurons"], ctx["evaluation"]
    )


CONCEPT_STAGES: tuple[Stage, ...] = CONCEPT.stages


def run_concepts(
    tm: Any,
    out: str | Path,
    config: ConceptConfig,
    *,
    log: Any = print,
    progress: bool = True,
    force: bool = False,
    stages: Sequence[Stage] = CONCEPT_STAGES,
) -> StageContext:
    """Run (or resume) the concept design into ``out``; returns the stage context
    (``context["probes"]``, ``context["evaluation"]``, …)."""
    context = StageContext.open(tm, out, config, log, progress=progress, force=force)
    return run_plan(stages, context, prefix="concept ")


def summarize(evaluation: ConceptEvaluation) -> dict[str, Any]:
    """Per domain and condition kind: real vs control TSR (both levels) and cost."""
    out: dict[str, Any] = {}
    for row in evaluation.results:
        key = f"{row.trait}|{row.kind}|{row.fraction}"
        side = "control" if row.control else "real"
        out.setdefault(key, {})[side] = {
            "tsr": row.representation.tsr,
            "tsr_baseline": row.representation.tsr_baseline,
            "label_tsr": row.labels.tsr,
            "delta_p_target": row.labels.delta_p_target.mean,
            "ppl_ratio": row.cost.perplexity_ratio,
        }
    return out


__all__ = [
    "CONCEPT_STAGES",
    "ConceptEvaluation",
    "ConceptItems",
    "run_concepts",
    "summarize",
    "depth_thirds",
    "overlap",
]
