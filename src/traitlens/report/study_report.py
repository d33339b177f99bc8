"""``build_report(run_dir)``: the study's story on one self-contained HTML page.

Reads artifacts only (probes, neurons, eval.json, fingerprint if present), so
``traitlens report RUN`` rebuilds the page without touching the model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from traitlens.errors import ArtifactError
from traitlens.report.concept_report import (
    CONCEPT_SECTION_IDS,
    concept_headline,
    concept_sections,
)
from traitlens.report.html import Section, Table, write_page

SECTION_IDS = (
    "summary",
    *CONCEPT_SECTION_IDS,
    "decodability",
    "neurons",
    "success",
    "behaviour",
    "spillover",
    "dose-response",
    "cost",
    "gap",
    "controls",
    "provenance",
)


def _load_json(path: Path) -> dict[str, Any]:
    from traitlens.artifact_io import read_json

    return read_json(path, "run `traitlens study` (or that stage) first")


def _fmt_ci(entry: dict[str, Any]) -> str:
    value = entry.get("shift", entry.get("rate", math.nan))
    ci = entry.get("ci", {})
    low, high = ci.get("low", math.nan), ci.get("high", math.nan)
    if not np.isfinite(low):
        return f"{value:+.3f}"
    return f"{value:+.3f} [{low:+.2f}, {high:+.2f}]"


def _rate(entry: dict[str, Any] | None) -> str:
    if not entry or not np.isfinite(entry.get("rate", math.nan)):
        return "–"
    ci = entry.get("ci", {})
    text = f"{entry['rate']:.2f}"
    if np.isfinite(ci.get("low", math.nan)):
        text += f" [{ci['low']:.2f}, {ci['high']:.2f}]"
    return text + f" (n={entry.get('n_eligible', 0)})"


def _probe_section(run: Path, figures: Path) -> tuple[Section, list[dict[str, Any]], list[str]]:
    """The decodability section, its table rows, and a note per barely decodable trait."""
    from traitlens.probe import ProbeSet

    probes = ProbeSet.load(run)
    summary = probes.summary()
    rows, weak = [], []
    for trait in probes.traits:
        binary = summary["binary"][trait]
        intensity = summary.get("intensity", {}).get(trait, {})
        rows.append(
            {
                "trait": trait,
                "best layer": binary["best_layer"],
                "held-out accuracy": f"{binary['score']:.3f} ± {binary['sd']:.3f}",
                "control task": binary["control"],
                "selectivity": binary["selectivity"],
                "90% depth": binary["depth_90"],
                "intensity R² (best)": intensity.get("score", math.nan),
            }
        )
        if binary["selectivity"] < 0.1:
            weak.append(
                f"{trait}: the pole is barely decodable on held-out prompts (accuracy "
                f"{binary['score']:.2f} vs control {binary['control']:.2f}); readouts and "
                f"success rates for {trait} rest on a weak probe."
            )
    which = summary.get("trait", {})
    paragraphs = [
        "Linear probes per layer, cross-validated with folds grouped by question AND persona "
        "(no test prompt shares either with training). Control task = the same probe trained "
        "on labels shifted cyclically per question (independent of the true pole in every "
        "training fold); selectivity = score − control.",
    ]
    if which:
        entry = next(iter(which.values()))
        paragraphs.append(
            f"5-way 'which trait is expressed' probe: best layer {entry['best_layer']}, "
            f"accuracy {entry['score']:.3f} ± {entry['sd']:.3f} (control {entry['control']:.3f})."
        )
    section = Section(
        "decodability",
        "Where is each trait decodable? (layer-wise probes)",
        paragraphs,
        figures=[
            (figures / "probe_accuracy.png", "Held-out accuracy vs depth, with control"),
            (figures / "probe_r2.png", "Intensity regression R² vs depth"),
        ],
        tables=[Table("Best layer per trait (binary high-vs-low probe)", rows)],
    )
    return section, rows, weak


def _neuron_section(run: Path, figures: Path) -> tuple[Section, dict[str, Any]]:
    from traitlens.neurons import NeuronSet

    neurons = NeuronSet.load(run)
    summary = neurons.summary()
    rows = []
    for trait, poles in summary["per_trait"].items():
        profile = summary["layer_profile"].get(trait, {})
        rows.append(
            {
                "trait": trait,
                "high: NPTI rule": poles["high"]["npti"],
                "high: after FDR": poles["high"]["selected"],
                "low: NPTI rule": poles["low"]["npti"],
                "low: after FDR": poles["low"]["selected"],
                "early": profile.get("early", math.nan),
                "middle": profile.get("middle", math.nan),
                "late": profile.get("late", math.nan),
            }
        )
    section = Section(
        "neurons",
        "Which MLP neurons are trait-selective?",
        [
            f"NPTI rule: δ = P(act>0 | high persona) − P(act>0 | low persona) over answer tokens, "
            f"|δ| ≥ threshold; then a two-proportion test per neuron with Benjamini–Hochberg FDR "
            f"over {summary['n_tests_per_trait']} neurons per trait. early/middle/late = share of "
            "the selected neurons in each third of the depth."
        ],
        figures=[
            (figures / "neuron_counts.png", "Selected neurons per layer (traits × layers)"),
            (figures / "neuron_overlap.png", "Jaccard overlap between trait-pole sets"),
        ],
        tables=[Table("Selected neurons per trait and pole", rows)],
    )
    from traitlens.report.neuron_figures import shown_rule

    rule = shown_rule(neurons)
    if rule is None:
        section.figures = []
        section.notes.append(
            "No neuron passes even NPTI's δ rule for any trait, so there is nothing to draw; "
            "the neuron edits are no-ops identical to the unsteered model."
        )
    elif rule == "npti":
        section.notes.append(
            "No neuron survives the FDR test (too few answers per persona group), so the "
            "figures show NPTI's δ rule alone — the set the neuron edits fall back to."
        )
    return section, summary


def _result_rows(evaluation: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in evaluation["results"] if not r.get("dose")]


def _persona_part(
    run: Path,
) -> tuple[list[str], list[str], list[Section], dict[str, Any]]:
    """Summary lines, caveats and sections of the persona design (run/eval.json)."""
    from traitlens.report import eval_figures

    figures = run / "figures"
    evaluation = _load_json(run / "eval.json")
    probe_section, probe_rows, weak_probes = _probe_section(run, figures)
    neuron_section, _ = _neuron_section(run, figures)
    traits = evaluation["traits"]
    paths = {
        "success": eval_figures.plot_success_rates(evaluation, figures),
        "behaviour": eval_figures.plot_behaviour_shifts(evaluation, figures),
        "dose": eval_figures.plot_dose_response(evaluation, figures),
        "gap": eval_figures.plot_representation_vs_behaviour(evaluation, figures),
    }
    cost_figure = eval_figures.plot_cost(evaluation, figures)
    if cost_figure is not None:
        paths["cost"] = cost_figure
    spill = [
        eval_figures.plot_spillover(evaluation, figures, m)
        for m in evaluation["config"]["eval_methods"]
    ]
    success_rows, behaviour_rows, dose_rows = _persona_tables(evaluation)
    headline, best, notes = _persona_headline(evaluation, probe_rows, weak_probes)
    baseline = evaluation["baseline"]
    summary = [
        f"Persona design — steering band: layers {evaluation['steer_layers'][0]}–"
        f"{evaluation['steer_layers'][-1]}; traits read downstream at "
        + ", ".join(f"{t}: L{layer}" for t, layer in evaluation["readout_layers"].items())
        + ".",
        f"Best probe layers — {best}.",
        *headline,
        "Unsteered questionnaire scores (1–5): "
        + ", ".join(f"{t} {baseline['questionnaire'][t]:.2f}" for t in traits)
        + f"; option-label probability mass {baseline.get('label_mass') or math.nan:.2f}.",
    ]
    sections = _persona_sections(
        evaluation,
        paths,
        spill,
        (probe_section, neuron_section),
        (success_rows, behaviour_rows, dose_rows),
    )
    return summary, notes, sections, evaluation


def _persona_sections(
    evaluation: dict[str, Any],
    paths: dict[str, Path],
    spill: list[Path],
    stage_sections: tuple[Section, Section],
    tables: tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]],
) -> list[Section]:
    """The persona design's sections after the summary, in reading order."""
    probe_section, neuron_section = stage_sections
    success_rows, behaviour_rows, dose_rows = tables
    sections = [
        probe_section,
        neuron_section,
        Section(
            "success",
            "Targeted success rates",
            [
                "Held-out prompts (unseen questions and personas) whose persona is the OPPOSITE "
                "pole; success = the target trait's probe readout starts on the opposite side of "
                "the held-out boundary (midpoint of unsteered high- and low-persona readouts) and "
                "crosses to the target side under the intervention. 95% bootstrap CI over "
                "prompts. 'prompt' swaps the persona for a held-out target-pole persona instead "
                "of steering.",
            ],
            figures=[(paths["success"], "Targeted success rate, methods vs controls")],
            tables=[Table("Targeted success rate [95% CI] (n eligible prompts)", success_rows)],
        ),
        Section(
            "behaviour",
            "Behavioural shifts (questionnaire and forced choice)",
            [
                "Questionnaire: expected Likert answer from next-token log-probs, averaged over "
                f"{len(evaluation['n_eval']['templates'])} templates and both option orders, "
                "reverse-keyed; Δ = steered − unsteered with a paired bootstrap CI over items and "
                "Cohen's dz. Forced choice: P(high-pole option), both orders.",
            ],
            figures=[(paths["behaviour"], "Shift toward the target pole")],
            tables=[Table("Behavioural shifts of the target trait", behaviour_rows)],
        ),
        Section(
            "spillover",
            "Spillover onto other traits (5×5)",
            [
                "Row: the trait steered toward its high pole; column: the trait read. Off-diagonal "
                "cells are side effects.",
            ],
            figures=[(p, f"Spillover: {p.stem}") for p in spill],
        ),
        _dose_section(evaluation, paths["dose"], dose_rows),
        _cost_section(evaluation, paths.get("cost")),
        Section(
            "gap",
            "Representation vs behaviour",
            [
                "An intervention can move the probe readout without moving the answers (the "
                "representation–behaviour gap): points on the x-axis but near y = 0.",
            ],
            figures=[(paths["gap"], "Representational vs behavioural shift per intervention")],
        ),
        Section(
            "controls",
            "Controls",
            [
                "Random direction: random unit vectors with the same per-layer norm as the trait "
                "vector, same layers and strength. Random neurons: the same number per layer, "
                "drawn from neurons selected for no trait, given the real set's δ values so the "
                "NPTI "
                "boost has the same size. Probe control task: labels shifted per question.",
            ],
        ),
    ]
    return sections


def _persona_tables(
    evaluation: dict[str, Any],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """The success, behaviour and dose–response tables of the persona design."""
    traits = evaluation["traits"]
    main = _result_rows(evaluation)
    success_rows = []
    for trait in traits:
        for pole in ("high", "low"):
            row: dict[str, Any] = {"target": f"{trait} {pole}"}
            for r in main:
                if r["trait"] == trait and r["pole"] == pole:
                    name = r["method"] + (" control" if r["control"] else "")
                    row[name] = _rate(r.get("success"))
            success_rows.append(row)
    behaviour_rows = []
    for r in main:
        behaviour_rows.append(
            {
                "target": f"{r['trait']} {r['pole']}",
                "method": r["method"] + (" (control)" if r["control"] else ""),
                "readout Δ (target)": r.get("target_readout_shift", math.nan),
                "questionnaire Δ": _fmt_ci(r["questionnaire_shift"][r["trait"]]),
                "effect size dz": r["questionnaire_shift"][r["trait"]].get("effect_size", math.nan),
                "forced-choice Δ": _fmt_ci(r["forced_choice_shift"][r["trait"]]),
                "perplexity ×": r["perplexity_ratio"],
                "size": (
                    f"{r.get('n_target', 0)}+{r.get('n_opposite', 0)} neurons, γ {r['gamma']}"
                    if r["method"] == "neurons"
                    else f"strength {r['strength']:+g}"
                    if "strength" in r
                    else "persona"
                ),
            }
        )
    dose_rows = [
        {
            "trait": r["trait"],
            "method": r["method"],
            "strength/γ": r.get("strength", r.get("gamma")),
            "readout Δ": r["readout_shift"][r["trait"]]["shift"],
            "questionnaire Δ": r["questionnaire_shift"][r["trait"]]["shift"],
            "forced-choice Δ": r["forced_choice_shift"][r["trait"]]["shift"],
            "perplexity ×": r["perplexity_ratio"],
            "distinct-2": r.get("distinct_2", math.nan),
        }
        for r in evaluation["results"]
        if r.get("dose")
    ]

    return success_rows, behaviour_rows, dose_rows


CALIBRATION_BUDGET = 1.5


def _dose_calibration(evaluation: dict[str, Any], budget: float) -> list[dict[str, Any]]:
    """Per dose trait and pole: the direction strength a fluency budget allows, picked by
    :func:`traitlens.steer.calibrate.calibrate` from the dose–response rows."""
    from traitlens.errors import DataError
    from traitlens.steer.calibrate import calibrate

    band = evaluation["steer_layers"]
    cells = [
        {
            "model": "study",
            "trait": r["trait"],
            "pole": r["pole"],
            "method": r["method"],
            "control": False,
            "band": f"{band[0]}-{band[-1]}",
            "layers": band,
            "strength": abs(r["strength"]),
            "gamma": None,
            "status": "ok",
            "target_readout_shift": r.get("target_readout_shift", math.nan),
            "perplexity_ratio": r["perplexity_ratio"],
            "key": r.get("row_key", ""),
        }
        for r in evaluation["results"]
        if r.get("dose") and r["method"] != "neurons" and "strength" in r
    ]
    out = []
    for trait, pole in sorted({(c["trait"], c["pole"]) for c in cells}):
        row: dict[str, Any] = {"trait": trait, "pole": pole}
        try:
            chosen = calibrate(cells, trait, pole, method=cells[0]["method"], max_ppl_ratio=budget)
        except DataError as exc:
            row["strength"] = str(exc).split(";")[0]
        else:
            row.update(
                {
                    "strength": chosen.strength,
                    "readout Δ": chosen.effect,
                    "perplexity ×": chosen.perplexity_ratio,
                }
            )
        out.append(row)
    return out


def _dose_section(
    evaluation: dict[str, Any], figure: Path, dose_rows: list[dict[str, Any]]
) -> Section:
    """The dose–response points and the strength they calibrate to within the budget."""
    return Section(
        "dose-response",
        "Dose–response: pick a strength",
        [
            "Strength in spread units per steered layer (one standard deviation of the "
            "residual stream along the trait axis at that layer); neuron edits by γ.",
        ],
        figures=[(figure, "Effect and cost against strength")],
        tables=[
            Table("Dose–response points", dose_rows),
            Table(
                f"Calibrated strength: the largest readout shift within perplexity "
                f"×{CALIBRATION_BUDGET:g} (from these points; `traitlens sweep` searches "
                "bands too, with controls)",
                _dose_calibration(evaluation, CALIBRATION_BUDGET),
            ),
        ],
    )


def _cost_section(evaluation: dict[str, Any], figure: Path | None) -> Section:
    """Perplexity and capability (multiple-choice accuracy) of every intervention."""
    n_items = evaluation.get("n_eval", {}).get("capability_items", 0)
    base = evaluation.get("baseline", {}).get("capability")
    if figure is None:
        return Section(
            "cost",
            "Cost: fluency and capability",
            [
                "Capability was not measured in this run (capability_items: 0, or a run from "
                "before it existed); perplexity ratios are in the behaviour table."
            ],
        )
    rows = [
        {
            "target": f"{r['trait']} {r['pole']}",
            "method": r["method"] + (" (control)" if r["control"] else ""),
            "perplexity ×": r["perplexity_ratio"],
            "accuracy": r["capability"],
            "Δ accuracy [95% CI]": _fmt_ci(r["capability_change"]),
        }
        for r in _result_rows(evaluation)
        if "capability_change" in r
    ]
    return Section(
        "cost",
        "Cost: fluency and capability",
        [
            f"Perplexity of a neutral paragraph, and accuracy on {n_items} multiple-choice "
            "knowledge and reasoning items of the project's own (balanced over 8 topics; "
            f"unsteered accuracy {base:.2f}, chance 0.25), scored as lm-evaluation-harness "
            "scores multiple_choice tasks (`traitlens evaluate capability` runs the full set, "
            "or lm-eval itself). Δ = steered − unsteered on the same items, paired bootstrap "
            "CI. Compare each method with its control: a random direction of the same size "
            "shows what any perturbation of that size costs.",
        ],
        figures=[(figure, "Perplexity ratio and change in accuracy per intervention")],
        tables=[Table("Cost of each intervention", rows)],
    )


def _of_method(rows: list[dict[str, Any]], method: str, control: bool) -> list[dict[str, Any]]:
    """The rows of one method: the real intervention, or (``control``) its random control."""
    return [r for r in rows if r["method"] == method and bool(r["control"]) == control]


def _finite_mean(values: list[float]) -> float:
    """Mean of the finite values (a row without the measurement counts as absent)."""
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def _mean_of(rows: list[dict[str, Any]], method: str, control: bool, field: str) -> float:
    return _finite_mean([r.get(field, math.nan) for r in _of_method(rows, method, control)])


def _mean_rate(rows: list[dict[str, Any]], method: str, control: bool) -> float:
    """Mean targeted success rate of one method (or its control) over targets."""
    return _finite_mean(
        [r.get("success", {}).get("rate", math.nan) for r in _of_method(rows, method, control)]
    )


def _capability_note(rows: list[dict[str, Any]], method: str) -> str:
    """``, multiple-choice accuracy Δ … (control …)`` when capability was measured, else ``""``."""

    def change(control: bool) -> float:
        values = [
            r["capability_change"]["shift"]
            for r in _of_method(rows, method, control)
            if "capability_change" in r
        ]
        return float(np.mean(values)) if values else math.nan

    real, control = change(False), change(True)
    if not np.isfinite(real):
        return ""
    return f", multiple-choice accuracy Δ {real:+.3f} (control {control:+.3f})"


def _method_headline(rows: list[dict[str, Any]], method: str) -> str:
    """One method's success, questionnaire shift and cost against its control, in words."""
    return (
        f"{method}: mean targeted success {_mean_rate(rows, method, False):.2f} vs control "
        f"{_mean_rate(rows, method, True):.2f}; mean questionnaire shift toward target "
        f"{_mean_of(rows, method, False, 'target_questionnaire_shift'):+.3f} vs control "
        f"{_mean_of(rows, method, True, 'target_questionnaire_shift'):+.3f}; perplexity × "
        f"{_mean_of(rows, method, False, 'perplexity_ratio'):.3f}"
        + _capability_note(rows, method)
        + "."
    )


def _method_caveats(rows: list[dict[str, Any]], method: str) -> list[str]:
    """Caveats for a method that barely beats its random control (readout or answers)."""
    notes = []
    real, control = _mean_rate(rows, method, False), _mean_rate(rows, method, True)
    if np.isfinite(real) and np.isfinite(control) and real - control < 0.1:
        notes.append(
            f"{method}: success barely exceeds its random control "
            f"({real:.2f} vs {control:.2f}) — treat its representational effect "
            "as weak at this strength."
        )
    q_real = _mean_of(rows, method, False, "target_questionnaire_shift")
    q_control = _mean_of(rows, method, True, "target_questionnaire_shift")
    if np.isfinite(q_real) and abs(q_real - q_control) < 0.05:
        notes.append(
            f"{method}: questionnaire answers barely move beyond the control "
            f"({q_real:+.3f} vs {q_control:+.3f}) — behavioural control is weak."
        )
    return notes


def _empty_neuron_note(evaluation: dict[str, Any]) -> list[str]:
    """A caveat naming the neuron edits that had no neuron to edit (none: no caveat)."""
    empty = sorted(
        {
            f"{r['trait']} {r['pole']}"
            for r in evaluation["results"]
            if r["method"] == "neurons" and r.get("n_target", 1) + r.get("n_opposite", 1) == 0
        }
    )
    if not empty:
        return []
    return [
        "Neuron edits with no selected neuron (the edit is a no-op, identical to baseline): "
        + ", ".join(empty)
        + " — too few answers per persona group for any neuron to pass the rule."
    ]


def _persona_headline(
    evaluation: dict[str, Any], probe_rows: list[dict[str, Any]], weak_probes: list[str]
) -> tuple[list[str], str, list[str]]:
    """Headline sentences, the best-layer line and caveats of the persona design.

    The headline numbers are computed here, from the rows, so the page states them in words.
    """
    main = _result_rows(evaluation)
    methods = evaluation["config"]["eval_methods"]
    headline = [_method_headline(main, method) for method in methods]
    headline.append(
        f"Persona prompt baseline: success {_mean_rate(main, 'prompt', False):.2f}, "
        f"questionnaire shift {_mean_of(main, 'prompt', False, 'target_questionnaire_shift'):+.3f}."
    )
    best = ", ".join(
        f"{r['trait']}: layer {r['best layer']} ({r['held-out accuracy']})" for r in probe_rows
    )
    notes = [note for method in methods for note in _method_caveats(main, method)]
    notes += weak_probes
    notes += _empty_neuron_note(evaluation)
    return headline, best, notes


def build_report(run_dir: str | Path, *, allow_inconsistent: bool = False) -> Path:
    """Write ``report.html`` (and its figures) for a finished or partial study.

    The run's chain of input keys is verified first (:func:`~traitlens.provenance.
    verify_run`): a run whose artifacts do not belong together (e.g. a capture
    replaced after the evaluation) is refused, or with ``allow_inconsistent`` built
    with every inconsistency listed at the top of the page.
    """
    from traitlens.report.verify import verify_run

    run = Path(run_dir)
    problems = verify_run(run)
    if problems and not allow_inconsistent:
        raise ArtifactError(
            f"{run} is inconsistent — " + "; ".join(problems) + ". Re-run `traitlens study` "
            "with this run's options (it recomputes what is stale), or pass "
            "--allow-inconsistent to build a page that flags it"
        )
    if not (run / "eval.json").exists() and not (run / "concepts" / "eval.json").exists():
        raise ArtifactError(
            f"{run / 'eval.json'} not found (nor concepts/eval.json): the run has no "
            "evaluation yet; run `traitlens study` (or that stage) first"
        )
    config = _load_json(run / "study_config.json")
    summary = [
        f"Model {config['model']['name']} ({config['model']['architecture']}, "
        f"{config['model']['n_layers']} layers); profile '{config['profile']}', design "
        f"'{config.get('design', 'persona')}'."
    ]
    notes = [f"INCONSISTENT RUN: {p}" for p in problems]
    # the concept design (the study the project implements) first: its claims table and
    # TSR-by-depth figure open the page, the persona design follows
    concept_doc = (
        _load_json(run / "concepts" / "eval.json")
        if (run / "concepts" / "eval.json").exists()
        else {}
    )
    concept_lines, concept_notes = concept_headline(run)
    summary += concept_lines
    notes += concept_notes
    sections: list[Section] = concept_sections(run)
    evaluation: dict[str, Any] = {}
    if (run / "eval.json").exists():
        lines, caveats, persona_sections, evaluation = _persona_part(run)
        summary += lines
        notes += caveats
        sections += persona_sections
    sections.insert(0, Section("summary", "Summary", summary, notes=notes))
    fingerprint = _fingerprint_section(run)
    if fingerprint is not None:
        sections.append(fingerprint)
    sections.append(_provenance_section(run, config, problems, (evaluation, concept_doc)))
    return write_page(
        run / "report.html",
        "traitlens study report",
        sections,
        subtitle=f"{config['model']['name']} · {run.resolve()}",
    )


def _provenance_section(
    run: Path,
    config: dict[str, Any],
    problems: list[str],
    evaluations: tuple[dict[str, Any], dict[str, Any]],
) -> Section:
    """Every stage key of the run and every measured row's key, both designs."""
    from traitlens.provenance import RunManifest

    evaluation, concept_doc = evaluations
    manifest = RunManifest(run)
    key_rows = [
        {
            "stage": stage,
            "key": prov.key,
            "made from": ", ".join(f"{k} {v}" for k, v in prov.upstream.items() if v) or "–",
        }
        for stage, prov in manifest.stages.items()
    ]
    return Section(
        "provenance",
        "Provenance",
        [
            "Every artifact and measured row is keyed by its inputs (model, data, the "
            "configuration it reads, the keys of what it was made from); a rerun reuses "
            "only what has the same key. "
            + (
                "The chain of keys below was verified when this page was built."
                if not problems
                else f"{len(problems)} inconsistencies were found (listed in the summary)."
            ),
            "Configuration and model identity, as recorded in study_config.json:",
            json.dumps(config, default=str)[:4000],
        ],
        tables=[
            Table("Input keys of the run's artifacts (run.json)", key_rows),
            Table(
                "Input keys of the measured rows (eval/rows/NAME--KEY.json)",
                [
                    {"design": design, "row": name, "key": key}
                    for design, doc in (("persona", evaluation), ("concept", concept_doc))
                    for name, key in (doc.get("provenance") or {}).get("rows", {}).items()
                ],
            ),
        ],
    )


def _fingerprint_section(run: Path) -> Section | None:
    """Embed the fingerprint stage's section when its artifacts are in the run."""
    if not (run / "fingerprint.json").exists():
        return None
    try:
        from traitlens.report.fingerprint_report import fingerprint_section_html
    except ImportError:
        return None
    return Section("fingerprint", "Behavioural fingerprint", raw_html=fingerprint_section_html(run))
