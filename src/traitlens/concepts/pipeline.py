"""The concept design as a plan of stages, resumable at every step.

Artifacts (under ``RUN/concepts/``): ``items.json`` (the items used and the
held-out split), ``activations/item_activations.*``, ``probes.*``, ``neurons.*``,
``eval/rows/NAME--KEY.json`` (one per measured condition), ``eval.json`` and
``eval.csv``; figures in ``RUN/figures/concept_*.png``. Every stage is keyed by
its inputs, so a rerun reuses exactly what is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from traitlens.artifact_io import Record, read_json, write_json
from traitlens.concepts.capture import ItemActivations, items_capture_job
from traitlens.concepts.config import INSTRUCTED, ConceptConfig
from traitlens.concepts.evaluate import (
    ConceptEffect,
    ConceptMeasurement,
    ConceptResult,
    ConceptSets,
    ControlComparison,
    compare_with_controls,
    concept_effect,
    measure_condition,
)
from traitlens.concepts.items import ItemLike, ItemSplit, choose_items
from traitlens.concepts.labels import LabelPrompt, label_prompt, resolve_domain_tokens, shots
from traitlens.concepts.neurons import (
    concept_neurons_job,
    depth_thirds,
    dpn_neurons,
    matched_random,
    overlap,
    strongest,
)
from traitlens.concepts.probes import DomainProbes, fit_domain_probes
from traitlens.design.rows import (
    control_seed,
    describe_intervention,
    flat_row,
    random_vector_like,
    row_name,
)
from traitlens.design.stages import Plan, Stage, StageContext, run_plan
from traitlens.errors import ArtifactError
from traitlens.neurons.artifact import NeuronSet
from traitlens.neurons.rules import fdr_or_npti
from traitlens.neurons.selected import SelectedNeurons
from traitlens.provenance import (
    Job,
    Provenance,
    RunManifest,
    keyed_stage,
    provenance,
    record,
)
from traitlens.rows import evaluate_rows

CONCEPT_DIR = "concepts"

CONCEPT = Plan(saves_in=CONCEPT_DIR)

FIELDS = ("layers", "indices", "delta", "a95")


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

    def label_prompt(self, config: ConceptConfig) -> LabelPrompt:
        """How the label is asked: balanced k-shot examples from training items."""
        return label_prompt(
            self.train(),
            config.traits,
            config.shots_per_domain,
            config.seed,
            counterbalance=config.counterbalance_options,
            calibrate=config.label_calibration,
            instruction=config.instruction,
        )

    def fit_ids(self, config: ConceptConfig) -> list[str]:
        """Training items that probes and neurons learn from. In the instructed context
        an item used as a k-shot example is left out: read inside a conversation that
        shows it with its own label, it would carry the answer into its own row."""
        if config.context != INSTRUCTED:
            return list(self.split.train)
        shown = {
            i.id for i in shots(self.train(), config.traits, config.shots_per_domain, config.seed)
        }
        return [i for i in self.split.train if i not in shown]


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
        unit=config.held_out_unit,
    )
    prov = provenance(
        "concepts.items",
        config={
            "per_domain": config.items_per_domain,
            "held_out": config.held_out,
            **({"held_out_unit": "facet"} if config.held_out_unit == "facet" else {}),
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


@CONCEPT.stage(
    "capture",
    "item-token states and per-item neuron firing",
    saves_in=f"{CONCEPT_DIR}/activations",
)
def stage_capture(ctx: StageContext) -> Job[ItemActivations]:
    config: ConceptConfig = ctx.config
    chosen: ConceptItems = ctx["items"]
    instructed = config.context == INSTRUCTED
    return items_capture_job(
        ctx.tm,
        chosen.items,
        label_prompt=chosen.label_prompt(config) if instructed else None,
        templates=config.templates,
        poolings=config.poolings,
        batch_size=config.batch_size,
        upstream={"concepts.items": chosen.key},
        progress=ctx.progress,
    )


def _log_probes(ctx: StageContext, probes: DomainProbes) -> None:
    summary = probes.summary()
    ctx.log(
        f"  domain probe: best layer {summary['best_layer']} accuracy "
        f"{summary['best_accuracy']:.3f} (control {summary['control_at_best']:.3f}, "
        f"chance {summary['chance']:.2f}); first layer at 90 %: {summary['first_layer_90']}"
    )


@CONCEPT.stage("probes", "domain probes per layer, facet-grouped CV", then=[_log_probes])
def stage_probes(ctx: StageContext) -> Job[DomainProbes]:
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
            **({"fit": chosen.fit_ids(config)} if config.context == INSTRUCTED else {}),
        },
        upstream={"concepts.capture": acts.key, "concepts.items": chosen.key},
    )

    def compute() -> DomainProbes:
        probes = fit_domain_probes(
            acts,
            chosen.items,
            chosen.fit_ids(config),
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

    return Job(DomainProbes, "concepts.probes", prov, compute, acts.identity, "domain probes")


def _log_neurons(ctx: StageContext, neurons: NeuronSet) -> None:
    counts = {
        t: (int(neurons.mask(t, "high").sum()), int(neurons.npti_mask(t, "high").sum()))
        for t in ctx.config.traits
    }
    ctx.log(
        "  concept neurons that fire more for the domain (q ≤ fdr / |δ| rule alone): "
        + ", ".join(f"{t} {a}/{b}" for t, (a, b) in counts.items())
    )
    null = neurons.config.get("null")
    if null:
        ctx.log(
            f"  δ rule under {null['permutations']} label permutations (by {null['unit']}), "
            "mean count early/middle/late vs observed: "
            + "; ".join(f"{t} {null['null_mean'][t]} vs {null['observed'][t]}" for t in counts)
        )


@CONCEPT.stage("neurons", "one-vs-rest neurons, item-level test, BH-FDR", then=[_log_neurons])
def stage_neurons(ctx: StageContext) -> Job[NeuronSet]:
    config: ConceptConfig = ctx.config
    chosen: ConceptItems = ctx["items"]
    return concept_neurons_job(
        ctx["capture"],
        chosen.items,
        chosen.fit_ids(config),
        traits=config.traits,
        threshold=config.threshold,
        fdr=config.fdr,
        null_permutations=config.null_permutations,
        seed=config.seed,
        dpn_min_d=config.dpn_min_d,
        dpn_percentile=config.dpn_percentile,
    )


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
    """One planned row: an edit (or one of its random-control draws) toward ``trait``."""

    name: str
    trait: str
    kind: str  # boost | suppress | direction
    control: bool
    fraction: float | None
    size: dict[str, Any]
    interventions: tuple[Any, ...]
    draw: int | None = None  # the control draw's number (None for the real edit)

    @property
    def condition(self) -> tuple[Any, ...]:
        return (self.trait, self.kind, self.fraction, self.size.get("band"), self.size.get("gamma"))

    def result(
        self, effect: ConceptEffect, key: str, vs_controls: ControlComparison | None = None
    ) -> ConceptResult:
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
            vs_controls,
        )


def neuron_rule(neurons: NeuronSet, trait: str, band: list[int], config: ConceptConfig) -> str:
    """The configured rule; ``auto`` is ``fdr`` when the FDR-controlled set has ≥
    ``min_fdr_neurons`` neurons of the domain inside the edited band, else NPTI's δ rule
    alone (``npti``). The row records which."""
    if config.neuron_rule != "auto":
        return config.neuron_rule
    return fdr_or_npti(neurons, trait, poles=("high",), layers=band, minimum=config.min_fdr_neurons)


def _with_controls(
    parts: tuple[Any, ...],
    trait: str,
    kind: str,
    fraction: float | None,
    size: dict[str, Any],
    real: Any,
    controls: Sequence[Any],
) -> list[ConceptCondition]:
    """An edit and its random-control draws as planned rows (an empty edit is a no-op)."""
    rows = [
        ConceptCondition(row_name(*parts, "real"), trait, kind, False, fraction, size, _edit(real))
    ]
    for draw, control in enumerate(controls):
        rows.append(
            ConceptCondition(
                row_name(*parts, f"control{draw}"),
                trait,
                kind,
                True,
                fraction,
                {**size, "draw": draw},
                _edit(control),
                draw,
            )
        )
    return rows


def _edit(intervention: Any) -> tuple[Any, ...]:
    return () if intervention is None else (intervention,)


def edit_bands(config: ConceptConfig, n_layers: int) -> dict[str, list[int]]:
    """Each configured edit band and the model layers it covers (refused, never clipped,
    when a listed layer does not exist)."""
    from traitlens.steer.layers import edit_band_layers

    return {band: edit_band_layers(n_layers, band) for band in config.edit_bands}


def _neuron_plan(
    ctx: StageContext, trait: str, band: str, layers: list[int]
) -> list[ConceptCondition]:
    """Boosts (each fraction × γ) and the suppression of one domain in one edit band.

    A boost is NPTI's edit: the strongest ``fraction`` of the domain's neurons get
    γ·a95·f(δ) and, with ``silence_opposite``, every neuron that fires *less* for the
    domain is held at min(0, n). Each control draw replaces both sets by random
    neurons matched layer by layer (count, δ, a95), disjoint from each other and from
    every selectable neuron.
    """
    from traitlens.neurons.selected import SelectedNeurons
    from traitlens.steer import Ablate, NeuronEdit

    config: ConceptConfig = ctx.config
    neurons: NeuronSet = ctx["neurons"]
    empty = SelectedNeurons.empty()
    rule = neuron_rule(neurons, trait, layers, config)
    pool = neurons.select(trait, "high", rule).in_layers(layers)
    opposite = (
        neurons.select(trait, "low", rule).in_layers(layers) if config.silence_opposite else empty
    )
    label = {"band": band, "neuron_rule": rule}
    many = len(config.edit_bands) > 1

    def boost(target: SelectedNeurons, silenced: SelectedNeurons, gamma: float) -> Any:
        if not len(target):
            return None
        keep = config.edit_keep
        return NeuronEdit(target, silenced, gamma=gamma, keep=keep, mask_seed=config.seed)

    def draws(real: SelectedNeurons, name: str) -> list[tuple[SelectedNeurons, SelectedNeurons]]:
        out = []
        for draw in range(config.control_draws):
            tag = f"{trait}|{name}|{band}|{draw}"
            target = matched_random(neurons, real, config.seed, tag)
            silenced = (
                matched_random(neurons, opposite, config.seed, tag + "|opposite", avoid=target)
                if len(opposite)
                else empty
            )
            out.append((target, silenced))
        return out

    plan: list[ConceptCondition] = []
    for fraction in config.fractions if "boost" in config.edits else []:
        real = strongest(pool, fraction)
        drawn = draws(real, str(fraction))
        for gamma in config.gammas:
            size: dict[str, Any] = {
                "gamma": gamma,
                "n_neurons": len(real),
                "n_silenced": len(opposite),
                **label,
                **({"keep": config.edit_keep} if config.edit_keep < 1.0 else {}),
            }
            parts = (trait, "boost", fraction) + ((band,) if many else ())
            parts += (f"g{gamma:g}",) if len(config.gammas) > 1 else ()
            controls = [boost(t, o, gamma) for t, o in drawn]
            plan += _with_controls(
                parts, trait, "boost", fraction, size, boost(real, opposite, gamma), controls
            )

    def suppress(selected: SelectedNeurons) -> Any:
        if not len(selected):
            return None
        if config.suppress == "zero":
            return Ablate(selected, mode="zero")
        return NeuronEdit(empty, selected, gamma=1.0)  # NPTI's silencing: min(0, n)

    if "suppress" in config.edits:
        real = strongest(pool, 1.0)
        controls = [suppress(t) for t, _ in draws(real, "suppress")]
        size = {"mode": config.suppress, "n_neurons": len(real), **label}
        parts = (trait, "suppress") + ((band,) if many else ())
        plan += _with_controls(parts, trait, "suppress", 1.0, size, suppress(real), controls)
    if "dpn" in config.edits:
        plan += _dpn_plan(ctx, trait, band, layers, many)
    return plan


def _dpn_plan(
    ctx: StageContext, trait: str, band: str, layers: list[int], many: bool
) -> list[ConceptCondition]:
    """DPN-LE: its own neuron set (both sides, |d| and |Δ| rule) shifted by γ·Δ, at each γ;
    each control draw moves the same amounts onto random neurons matched per layer in
    count and a95, outside every domain's DPN-LE and δ-rule sets."""
    from traitlens.steer import ShiftNeurons

    config: ConceptConfig = ctx.config
    neurons: NeuronSet = ctx["neurons"]
    target = dpn_neurons(neurons, trait, layers)
    every = [dpn_neurons(neurons, t, neurons.layers) for t in config.traits]
    avoid = SelectedNeurons(*(torch.cat([getattr(s, f) for s in every]) for f in FIELDS))
    drawn = [
        matched_random(neurons, target, config.seed, f"{trait}|dpn|{band}|{draw}", avoid=avoid)
        for draw in range(config.control_draws)
    ]
    plan: list[ConceptCondition] = []
    for gamma in config.gammas:

        def shift(chosen: SelectedNeurons, gamma: float = gamma) -> Any:
            return ShiftNeurons(chosen, chosen.delta, gamma=gamma) if len(chosen) else None

        size = {
            "gamma": gamma,
            "n_neurons": len(target),
            "n_raised": int((target.delta > 0).sum()),
            "band": band,
            "neuron_rule": "dpn",
        }
        parts = (trait, "dpn") + ((band,) if many else ())
        parts += (f"g{gamma:g}",) if len(config.gammas) > 1 else ()
        plan += _with_controls(
            parts, trait, "dpn", None, size, shift(target), [shift(c) for c in drawn]
        )
    return plan


def plan_conditions(ctx: StageContext, band: list[int]) -> list[ConceptCondition]:
    """Per domain: in every edit band, boost at each fraction and γ and suppress; then the
    centroid direction in the steering band — each followed by its control draws
    (random neurons matched in count, δ and a95 per layer; random directions with the
    same per-layer spread)."""
    from traitlens.steer import AddDirection

    config: ConceptConfig = ctx.config
    chosen: ConceptItems = ctx["items"]
    bands = edit_bands(config, ctx.tm.n_layers)

    def direction(vector: Any) -> Any:
        return AddDirection(vector, config.direction_strength, layers=tuple(band))

    plan: list[ConceptCondition] = []
    for trait in config.traits:
        for name, layers in bands.items():
            plan += _neuron_plan(ctx, trait, name, layers)
        if "direction" not in config.edits:
            continue
        vector = domain_direction(
            ctx["capture"], chosen.items, chosen.fit_ids(config), trait, band, config.probe_pooling
        )
        controls = [
            direction(random_vector_like(vector, control_seed(config.seed, f"{trait}|{draw}")))
            for draw in range(config.control_draws)
        ]
        size = {"strength": config.direction_strength}
        plan += _with_controls(
            (trait, "direction"), trait, "direction", None, size, direction(vector), controls
        )
    return plan


def _sets(ctx: StageContext, layers: Sequence[int], headline: int) -> ConceptSets:
    from traitlens.evaluate.questionnaire import TEMPLATES

    config: ConceptConfig = ctx.config
    chosen: ConceptItems = ctx["items"]
    order = {item_id: n for n, item_id in enumerate(chosen.split.held_out)}
    # the split's order is a facet-by-facet deal, so any prefix spreads over facets
    held = sorted(chosen.held_out(), key=lambda i: order[i.id])
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
        tuple(layers),
        headline,
        chosen.label_prompt(config),
        tuple(list(TEMPLATES)[: config.likert_templates]),
        config.batch_size,
    )


@dataclass(frozen=True)
class ConceptBaseline(Record):
    """The unsteered model on the held-out items: both levels' accuracy (Wilson CIs),
    label mass (bootstrap CI), perplexity, and whether label shifts can be read at all:
    only when label accuracy is above chance (its CI's lower end above 1/T)."""

    probe_accuracy: float
    label_accuracy: float
    label_mass: float
    perplexity: float
    n_items: int
    probe_accuracy_ci: list[float] = field(default_factory=list)
    label_accuracy_ci: list[float] = field(default_factory=list)
    label_mass_ci: list[float] = field(default_factory=list)
    chance: float = float("nan")
    labels_interpretable: bool = True


@dataclass
class ConceptEvaluation:
    """Every measured condition's numbers, the baseline and where they were read."""

    traits: list[str]
    steer_layers: list[int]
    edit_bands: dict[str, list[int]]
    readout_layers: list[int]
    headline_layer: int
    k_shot: int
    control_draws: int
    baseline: ConceptBaseline
    results: list[ConceptResult]
    provenance: dict[str, Any]
    # "bare" (items on their own, the label asked separately) or "instructed" (every
    # stage reads items inside the label question; probe and label from one pass)
    context: str = "bare"

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
        if "edit_bands" not in data:
            raise ArtifactError(
                f"{path} was written by an earlier traitlens (one readout layer, one control "
                "draw); rerun `traitlens study --design concept` into a new folder"
            )
        data["baseline"] = ConceptBaseline(**data["baseline"])
        data["results"] = [ConceptResult.from_dict(r) for r in data["results"]]
        return cls(**data)

    @property
    def real(self) -> list[ConceptResult]:
        """The real edits (each carries its comparison with its control draws)."""
        return [r for r in self.results if not r.control]

    def downstream_layers(self, result: ConceptResult) -> list[int]:
        """Readout layers after every layer the edit touched (a shift there propagated,
        rather than being read back where it was written)."""
        touched = self.edit_bands.get(str(result.size.get("band")), self.steer_layers)
        return [layer for layer in self.readout_layers if layer > max(touched)]


@dataclass(frozen=True)
class _Readout:
    """Where and on what every condition is read; a row's key covers all of it."""

    sets: ConceptSets
    tokens: Any
    band: list[int]
    edit_bands: dict[str, list[int]]

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
                "edit_layers": self.edit_bands.get(str(labels.get("band")), []),
                "full": condition is None or not condition.draw,
                "labels": self.reads_labels(condition),
            },
            data=[describe_intervention(i) for i in (condition.interventions if condition else ())],
            upstream={"concepts.probes": ctx["probes"].key},
        )

    label_draws: int

    def reads_labels(self, condition: ConceptCondition | None) -> bool:
        return condition is None or condition.draw is None or condition.draw < self.label_draws

    def measure(self, ctx: StageContext, condition: ConceptCondition | None) -> ConceptMeasurement:
        from traitlens.steer import steering

        interventions = [] if condition is None else list(condition.interventions)
        with steering(ctx.tm, interventions):
            return measure_condition(
                ctx.tm,
                self.sets,
                ctx["probes"],
                self.tokens,
                full=condition is None or not condition.draw,
                labels=self.reads_labels(condition),
            )


def _readout(ctx: StageContext) -> _Readout:
    from traitlens.steer.layers import band_layers

    config: ConceptConfig = ctx.config
    probes: DomainProbes = ctx["probes"]
    band = band_layers(ctx.tm.n_layers, config.steer_band)
    # the probe is read at every layer it was fitted on; the headline is its best layer
    sets = _sets(ctx, probes.layers, probes.best_layer())
    tokens = resolve_domain_tokens(ctx.tm, sets.label_prompt.labels)
    label_draws = min(config.label_draws or config.control_draws, config.control_draws)
    return _Readout(sets, tokens, band, edit_bands(config, ctx.tm.n_layers), label_draws)


@CONCEPT.stage("evaluation", "boost / suppress / direction vs matched controls, both levels")
def stage_evaluation(ctx: StageContext) -> ConceptEvaluation:
    """Measure the baseline and every planned condition (reusing rows of the same key),
    then summarize each against the baseline and each real edit against its draws."""
    read = _readout(ctx)
    rows_dir = ctx.run / CONCEPT_DIR / "eval" / "rows"
    base_prov = read.provenance(ctx, "baseline")
    plan = plan_conditions(ctx, read.band)
    provs = {c.name: read.provenance(ctx, c.name, c) for c in plan}
    baseline, measured, keys = evaluate_rows(
        rows_dir,
        (base_prov, lambda: read.measure(ctx, None)),
        [(c.name, provs[c.name], partial(read.measure, ctx, c)) for c in plan],
        ConceptMeasurement,
        ctx.log,
        say=lambda n: n == len(plan) or (plan[n - 1].draw or 0) % 10 == 0,
    )
    results = _results(ctx, read, baseline, plan, measured, keys)
    return _save_evaluation(ctx, read, baseline, results, keys)


def _results(
    ctx: StageContext,
    read: _Readout,
    baseline: ConceptMeasurement,
    plan: list[ConceptCondition],
    measured: dict[str, ConceptMeasurement],
    keys: dict[str, str],
) -> list[ConceptResult]:
    config: ConceptConfig = ctx.config
    draws: dict[tuple[Any, ...], list[ConceptMeasurement]] = {}
    for condition in plan:
        if condition.control:
            draws.setdefault(condition.condition, []).append(measured[condition.name])
    results = []
    for condition in plan:
        data = measured[condition.name]
        effect = concept_effect(
            baseline, data, read.sets.items, config.traits, condition.trait, seed=config.seed
        )
        comparison = None
        if not condition.control:
            comparison = compare_with_controls(
                baseline,
                data,
                draws[condition.condition],
                read.sets.items,
                config.traits,
                condition.trait,
                condition.kind,
                read.sets.headline_layer,
                seed=config.seed,
            )
        results.append(condition.result(effect, keys[condition.name], comparison))
    return results


def _baseline(read: _Readout, baseline: ConceptMeasurement, traits: list[str]) -> ConceptBaseline:
    from traitlens.stats import bootstrap_ci, wilson_ci

    truth = np.array([traits.index(i.trait) for i in read.sets.items])
    probe_hits = np.asarray(baseline.probe_probs).argmax(1) == truth
    label_hits = np.asarray(baseline.label_probs).argmax(1) == truth
    label_ci = wilson_ci(int(label_hits.sum()), len(truth))
    mass = bootstrap_ci(np.asarray(baseline.label_mass), seed=0)
    chance = 1.0 / len(traits)
    return ConceptBaseline(
        probe_accuracy=float(probe_hits.mean()),
        label_accuracy=float(label_hits.mean()),
        label_mass=float(np.mean(baseline.label_mass)),
        perplexity=baseline.perplexity,
        n_items=len(truth),
        probe_accuracy_ci=list(wilson_ci(int(probe_hits.sum()), len(truth))),
        label_accuracy_ci=list(label_ci),
        label_mass_ci=[mass.low, mass.high],
        chance=chance,
        labels_interpretable=bool(label_ci[0] > chance),
    )


def _save_evaluation(
    ctx: StageContext,
    read: _Readout,
    baseline: ConceptMeasurement,
    results: list[ConceptResult],
    keys: dict[str, str],
) -> ConceptEvaluation:
    from traitlens.evaluate.tables import write_csv

    config: ConceptConfig = ctx.config
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
        read.edit_bands,
        list(read.sets.readout_layers),
        read.sets.headline_layer,
        read.sets.label_prompt.k,
        config.control_draws,
        _baseline(read, baseline, list(config.traits)),
        results,
        {"rows": keys, "upstream": upstream, "key": eval_prov.key},
        config.context,
    )
    evaluation.save(ctx.run / CONCEPT_DIR / "eval.json")
    record(ctx.run, "concepts.evaluation", eval_prov)
    write_csv([flat_row(r.to_dict()) for r in results], ctx.run / CONCEPT_DIR / "eval.csv")
    return evaluation


CONCEPT_STAGES: tuple[Stage, ...] = CONCEPT.stages


@dataclass(frozen=True)
class ConceptRun:
    """What a concept run made, typed: each stage's artifact (None for a stage not run,
    e.g. ``traitlens concepts probes`` stops after the probes)."""

    run: Path
    items: ConceptItems | None = None
    capture: ItemActivations | None = None
    probes: DomainProbes | None = None
    neurons: NeuronSet | None = None
    evaluation: ConceptEvaluation | None = None


def run_concepts(
    tm: Any,
    out: str | Path,
    config: ConceptConfig,
    *,
    log: Any = print,
    progress: bool = True,
    force: bool = False,
    stages: Sequence[Stage] = CONCEPT_STAGES,
) -> ConceptRun:
    """Run (or resume) the concept design into ``out``; returns its artifacts."""
    edit_bands(config, tm.n_layers)  # a listed layer the model lacks: refused before any stage
    context = StageContext.open(tm, out, config, log, progress=progress, force=force)
    made = run_plan(stages, context, prefix="concept ").artifacts
    return ConceptRun(context.run, **made)


def summarize(evaluation: ConceptEvaluation) -> dict[str, Any]:
    """Per real edit (``domain|kind|fraction|band|γ``): its success at the best probe layer
    and the last layer, the controls' mean, the gain with its CI and p, the label-level
    gain, and the perplexity ratio."""
    out: dict[str, Any] = {}
    for row in evaluation.real:
        vs = row.vs_controls
        if vs is None:
            continue
        out["|".join(str(part) for part in row.condition)] = {
            "success": vs.success.mean,
            "success_last": vs.success_last.mean,
            "control": vs.control.mean,
            "gain": [vs.gain.mean, vs.gain.low, vs.gain.high],
            "p": vs.p_value,
            "delta_p_gain": [vs.delta_p_gain.mean, vs.delta_p_gain.low, vs.delta_p_gain.high],
            "ppl_ratio": row.cost.perplexity_ratio,
        }
    return out


__all__ = [
    "CONCEPT_STAGES",
    "ConceptEvaluation",
    "ConceptRun",
    "ConceptItems",
    "run_concepts",
    "summarize",
    "depth_thirds",
    "overlap",
]
