"""Measuring sweep cells: one model load per worker, reused across all its cells.

A worker prepares a model's *material* once — the persona design's capture, probes,
neurons and vectors stages (keyed artifacts in ``OUT/models/<model>/``, so a second
worker or a rerun loads instead of recomputing), the held-out evaluation sets and
the unsteered baseline — then measures cells with the study's own
:func:`~traitlens.evaluate.interventions.measure` and
:func:`~traitlens.evaluate.interventions.effect`. Raw measurements are keyed rows
(:func:`traitlens.design.rows.measured_row`), so a cell killed half-way is measured
again and a finished one never is.

The same class runs in-process (``--backend local``) and as a Ray actor.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from traitlens.design.rows import describe_intervention
from traitlens.evaluate.results import Measurement, or_nan
from traitlens.rows import measured_row
from traitlens.sweep.cells import Cell
from traitlens.sweep.config import SweepConfig

MATERIAL_STAGES = ("capture", "probes", "neurons", "vectors")


def model_slug(name: str) -> str:
    """A readable folder-name part for a model name or path."""
    text = name.rstrip("/").split("/")[-1] or "model"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def material_settings(model: str, config: SweepConfig) -> dict[str, Any]:
    """Everything a model's material (capture, probes, neurons, vectors) is made from:
    the model as named, how it is loaded, and the study settings outside evaluation."""
    from traitlens.study.persona import EVAL_CONFIG_FIELDS

    study = config.study_config().model_dump(mode="json")
    return {
        "model": model,
        "dtype": config.dtype,
        "device_map": config.device_map,
        "study": {k: v for k, v in study.items() if k not in EVAL_CONFIG_FIELDS},
    }


def material_dir(out: Path, model: str, config: SweepConfig) -> Path:
    """``OUT/models/<name>-<digest>``: one folder per material, so a sweep whose material
    changed (another method, seed or size) builds new artifacts beside the old ones
    instead of colliding with them, and two models with the same file name never meet."""
    from traitlens.provenance import data_digest

    digest = data_digest(material_settings(model, config))[:10]
    return out / "models" / f"{model_slug(model)}-{digest}"


@dataclass
class Material:
    """Everything a model's cells are measured with."""

    tm: Any
    run: Path
    config: Any
    artifacts: dict[str, Any]
    sets: Any
    trait_sets: dict[str, Any]
    spec: Any
    fixed: dict[str, Any]
    baseline: dict[str, Measurement]
    keys: dict[str, Any]
    bands: dict[str, list[int]]

    def cell_key(self, cell: Cell) -> str:
        """The cell's key: its definition, its own band's layers and the material."""
        return cell.key({**self.keys, "layers": self.bands.get(cell.band or "")})


def _bands(config: SweepConfig, n_layers: int) -> dict[str, list[int]]:
    from traitlens.steer import band_layers, parse_layers

    study = config.study_config()
    return {
        band: band_layers(n_layers, study.steer_band)
        if band == "auto"
        else parse_layers(band, n_layers)
        for band in config.bands
    }


def prepare(
    model: str, config: SweepConfig, out: Path, device: str = "cpu", log: Any = None
) -> Material:
    """Load ``model`` and its material (computing what is missing)."""
    from traitlens.design.stages import StageContext
    from traitlens.evaluate.interventions import ReadoutSpec
    from traitlens.models.loading import load_model
    from traitlens.provenance import RunManifest
    from traitlens.study.persona import (
        EVAL_CONFIG_FIELDS,
        PERSONA_STAGES,
        build_eval_sets,
        readout_layers,
        run_persona,
        sets_digest,
    )

    tm = load_model(
        None if model == "embedded" else model,
        device=device,
        dtype=config.dtype,
        device_map=config.device_map,
    )
    study = config.study_config()
    run = material_dir(out, model, config)
    quiet = log or (lambda message: None)
    context = StageContext(tm, run, study, quiet, progress=False)
    made = run_persona(
        context, [s for s in PERSONA_STAGES if s.name in MATERIAL_STAGES], prefix="material "
    )
    assert made.probes is not None and made.capture is not None
    bands = _bands(config, tm.n_layers)
    deepest = max((layers[-1] for layers in bands.values()), default=tm.n_layers // 2)
    probes = made.probes
    layers_read = readout_layers(probes, study.traits, after=deepest)
    spec = ReadoutSpec(probes, layers_read, pooling=probes.pooling, batch_size=study.batch_size)
    sets = build_eval_sets(study, made.capture.prompts)
    # a cell reads behaviour of its own trait only (the neutral readouts still cover all
    # five, for spillover): a fifth of the questionnaire and forced-choice cost
    trait_sets = {
        t: replace(
            sets,
            statements=[s for s in sets.statements if s.trait == t],
            forced=[f for f in sets.forced if f.trait == t],
        )
        for t in study.traits
    }
    # what every measurement reads besides its own edit; each cell adds its band's layers
    fixed = {
        "eval": {k: getattr(study, k) for k in EVAL_CONFIG_FIELDS},
        "readout_layers": layers_read,
        "held_out_material": sets_digest(sets),
    }
    stage_keys = {s: p.key for s, p in sorted(RunManifest(run).stages.items())}
    keys = {
        "model": tm.identity.to_dict(),
        "stages": stage_keys,
        "material": material_settings(model, config),
        "hybrid_method": config.hybrid_method,
        "min_fdr_neurons": study.min_fdr_neurons,
        **fixed,
    }
    baselines = _baselines(tm, run / "sweep" / "rows", trait_sets, spec, fixed, probes.key)
    return Material(
        tm, run, study, context.artifacts, sets, trait_sets, spec, fixed, baselines, keys, bands
    )


def _baselines(
    tm: Any,
    rows: Path,
    trait_sets: dict[str, Any],
    spec: Any,
    fixed: dict[str, Any],
    probes_key: str | None,
) -> dict[str, Measurement]:
    """The unsteered measurement each trait's cells are compared with (keyed rows)."""
    from traitlens.evaluate.interventions import measure
    from traitlens.provenance import provenance

    baselines = {}
    for trait, sets in trait_sets.items():
        prov = provenance(
            "sweep_cell",
            model=tm.identity,
            config={"row": f"baseline-{trait}", **fixed},
            upstream={"probes": probes_key},
        )
        baselines[trait] = measured_row(
            rows,
            f"baseline__{trait}",
            prov,
            partial(
                measure,
                tm,
                sets,
                spec,
                opposite_keys=[f"{trait}|{pole}" for pole in ("high", "low")],
            ),
            Measurement,
        )
    return baselines


class SweepWorker:
    """Measures cells; keeps one prepared model (the last one asked for)."""

    def __init__(
        self, config: dict[str, Any], out: str, device: str = "cpu", threads: int | None = None
    ) -> None:
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.config = SweepConfig(**config)
        self.out = Path(out)
        self.device = device
        self.material: Material | None = None
        self.model: str | None = None

    def _material(self, model: str) -> Material:
        if self.model != model or self.material is None:
            self.material = None  # free the previous model first
            self.material = prepare(model, self.config, self.out, self.device)
            self.model = model
        return self.material

    def keys(self, model: str, cells: list[dict[str, Any]]) -> list[str]:
        """The keys of ``cells`` (all of ``model``), preparing the material first."""
        material = self._material(model)
        return [material.cell_key(Cell(**c)) for c in cells]

    def measure(self, cell_dict: dict[str, Any], key: str) -> dict[str, Any]:
        """The cell's summary row; a cell that raises comes back ``status: failed``
        (still under its ``key``, so it is listed and retried)."""
        cell = Cell(**cell_dict)
        started = time.perf_counter()
        row: dict[str, Any] = {**cell.to_dict(), "name": cell.name, "key": key}
        try:
            material = self._material(cell.model)
            row.update(_measure_cell(material, self.config, cell))
            row["status"] = "ok"
        except Exception as exc:  # recorded, not raised: one bad cell must not stop a sweep
            row["status"] = "failed"
            row["error"] = f"{type(exc).__name__}: {exc}"
            row["traceback"] = traceback.format_exc(limit=6)
        row["seconds"] = round(time.perf_counter() - started, 3)
        row["worker"] = f"{socket.gethostname()}:{os.getpid()}"
        return row


def _interventions(material: Material, config: SweepConfig, cell: Cell) -> tuple[Any, ...]:
    from traitlens.design.rows import control_seed, matched_control, random_vector_like
    from traitlens.steer import AddDirection, NeuronEdit
    from traitlens.study.persona import neuron_rule

    if cell.method == "prompt":
        return ()
    layers = material.bands[cell.band or ""]
    if cell.method == "neurons":
        neurons = material.artifacts["neurons"]
        other = "low" if cell.pole == "high" else "high"
        rule = neuron_rule(neurons, cell.trait, layers, material.config.min_fdr_neurons)
        target = neurons.select(cell.trait, cell.pole, rule).in_layers(layers)
        opposite = neurons.select(cell.trait, other, rule).in_layers(layers)
        if cell.control:
            seed = material.config.seed
            target = matched_control(
                target, neurons.random_control(cell.trait, cell.pole, seed, rule).in_layers(layers)
            )
            opposite = matched_control(
                opposite, neurons.random_control(cell.trait, other, seed, rule).in_layers(layers)
            )
        return (NeuronEdit(target, opposite, gamma=float(cell.gamma or 0.0)),)
    method = config.hybrid_method if cell.method == "hybrid" else cell.method
    vector = material.artifacts["vectors"].get(cell.trait, method)
    if cell.control:
        vector = random_vector_like(vector, control_seed(material.config.seed, cell.trait))
    return (AddDirection(vector, cell.sign * float(cell.strength or 0.0), layers=tuple(layers)),)


def _measure_cell(material: Material, config: SweepConfig, cell: Cell) -> dict[str, Any]:
    from traitlens.evaluate.interventions import effect, measure
    from traitlens.provenance import provenance
    from traitlens.steer import steering

    interventions = _interventions(material, config, cell)
    key = f"{cell.trait}|{cell.pole}"
    system = material.sets.target_persona[key] if cell.method in ("prompt", "hybrid") else None
    sets = material.trait_sets[cell.trait]
    kwargs: dict[str, Any] = {"opposite_keys": [key], "system": system, "opposite_system": system}
    prov = provenance(
        "sweep_cell",
        model=material.tm.identity,
        config={
            "row": cell.name,
            "cell": cell.to_dict(),
            "layers": material.bands.get(cell.band or ""),
            "measure": kwargs,
            **material.fixed,
        },
        data=[describe_intervention(i) for i in interventions],
        upstream={"probes": material.artifacts["probes"].key},
    )

    def compute() -> Measurement:
        with steering(material.tm, list(interventions)):
            return measure(material.tm, sets, material.spec, **kwargs)

    data = measured_row(material.run / "sweep" / "rows", cell.name, prov, compute, Measurement)
    summary = effect(
        material.baseline[cell.trait],
        data,
        material.config.traits,
        cell.trait,
        cell.pole,
        seed=material.config.seed,
    )
    rate, ci = summary.target_success()
    out: dict[str, Any] = {
        "row_key": prov.key,
        "layers": material.bands.get(cell.band) if cell.band else None,
        "material_dir": str(material.run.relative_to(material.run.parent.parent)),
        "vectors_key": material.keys["stages"].get("vectors"),
        "target_readout_shift": or_nan(summary.target_readout_shift),
        "success_rate": rate,
        "success_low": ci.low,
        "success_high": ci.high,
        "target_questionnaire_shift": or_nan(summary.target_questionnaire_shift),
        "target_forced_choice_shift": or_nan(summary.target_forced_choice_shift),
        "perplexity_ratio": summary.perplexity_ratio,
        "distinct_2": or_nan(summary.distinct_2),
        "readout_shift": {t: v.shift for t, v in summary.readout_shift.items()},
    }
    if "neurons" == cell.method and interventions:
        edit = interventions[0]
        out["n_neurons"] = len(edit.target) + len(edit.opposite)
    if summary.capability_change is not None:
        out["capability_change"] = summary.capability_change.shift
    return out
