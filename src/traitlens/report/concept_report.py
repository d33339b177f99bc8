"""The concept design's sections of the study report, read from ``RUN/concepts/``.

Each section tells its part at a glance (a figure and a table) and says in words
when there is nothing to draw or an effect is weak; numbers are computed here from
the saved artifacts so the page and the files never disagree.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from traitlens.report.html import Section, Table

if TYPE_CHECKING:
    from traitlens.concepts.evaluate import ConceptResult, Estimate
    from traitlens.concepts.pipeline import ConceptEvaluation

CONCEPT_SECTION_IDS = ("concept-decodability", "concept-neurons", "concept-steering", "concept-gap")


def _fig(path: Path, caption: str) -> list[tuple[Path, str]]:
    return [(path, caption)] if path.exists() else []


def _ci(entry: Estimate) -> str:
    mean, low, high = entry.mean, entry.low, entry.high
    if mean is None or not np.isfinite(mean):
        return "–"
    if low is None or not np.isfinite(low):
        return f"{mean:+.3f}"
    return f"{mean:+.3f} [{low:+.2f}, {high:+.2f}]"


def _pairs(evaluation: ConceptEvaluation) -> list[tuple[ConceptResult, ConceptResult | None]]:
    """Each real row with its matched control (same domain, kind and fraction)."""
    controls = {(r.trait, r.kind, r.fraction): r for r in evaluation.results if r.control}
    return [
        (r, controls.get((r.trait, r.kind, r.fraction)))
        for r in evaluation.results
        if not r.control
    ]


def _label(row: ConceptResult) -> str:
    size = row.size
    if row.kind == "boost":
        return f"boost {row.fraction:.0%} ({size.get('n_neurons', 0)} neurons, γ {size['gamma']:g})"
    if row.kind == "suppress":
        return f"suppress ({size.get('n_neurons', 0)} neurons, {size.get('mode')})"
    return f"direction (strength {size.get('strength', math.nan):g})"


def concept_headline(run: Path) -> tuple[list[str], list[str]]:
    """Summary paragraphs and caveat notes for the concept design (empty when absent)."""
    from traitlens.concepts.pipeline import ConceptEvaluation
    from traitlens.concepts.probes import DomainProbes

    base = run / "concepts"
    if not (base / "eval.json").exists():
        return [], []
    probes = DomainProbes.load(base)
    evaluation = ConceptEvaluation.load(base / "eval.json")
    s = probes.summary()
    paragraphs = [
        f"Concept design: the 5-way domain probe reaches {s['best_accuracy']:.2f} at layer "
        f"{s['best_layer']} (control task {s['control_at_best']:.2f}, chance {s['chance']:.2f}; "
        f"folds by {s['fold_unit']}); 90 % of that from layer {s['first_layer_90']}."
    ]
    notes = []
    gains: dict[str, list[float]] = {}
    for real, control in _pairs(evaluation):
        if control is None:
            continue
        rep = real.representation.tsr - control.representation.tsr
        lab = real.labels.tsr - control.labels.tsr
        gains.setdefault(real.kind, []).append(rep)
        gains.setdefault(real.kind + "_label", []).append(lab)
    for kind in ("boost", "suppress", "direction"):
        if kind in gains:
            paragraphs.append(
                f"{kind}: probe-readout success exceeds its matched control by "
                f"{np.mean(gains[kind]):+.2f} on average; the generated label by "
                f"{np.mean(gains[kind + '_label']):+.2f}."
            )
    if "boost" in gains and np.mean(gains["boost"]) < 0.1:
        notes.append(
            "Concept-neuron boosts barely move the probe readout beyond random neurons of the "
            "same size — the effect is weak or absent at this γ on this model."
        )
    if evaluation.baseline.label_mass < 0.1:
        notes.append(
            f"The model puts only {evaluation.baseline.label_mass:.1%} of its next-token "
            f"probability on the five domain names ({evaluation.k_shot}-shot); label shifts are "
            "read from the renormalized distribution over the names."
        )
    return paragraphs, notes


def concept_sections(run: Path) -> list[Section]:
    """The concept design's sections (none when the run has no concept evaluation)."""
    from traitlens.concepts.pipeline import ConceptEvaluation
    from traitlens.concepts.probes import DomainProbes
    from traitlens.neurons.artifact import NeuronSet

    base, figures = run / "concepts", run / "figures"
    if not (base / "eval.json").exists():
        return []
    probes = DomainProbes.load(base)
    evaluation = ConceptEvaluation.load(base / "eval.json")
    return [
        _decodability(probes, figures),
        _neurons(NeuronSet.load(base), figures),
        _steering(evaluation, figures),
        _gap(evaluation, figures),
    ]


def _decodability(probes: Any, figures: Path) -> Section:
    depth_rows = [
        {
            "layer": layer,
            "5-way accuracy": f"{a:.3f} ± {sd:.3f}",
            "control": c,
            "selectivity": a - c,
            "item-grouped folds": probes.accuracy_item_folds[n]
            if len(probes.accuracy_item_folds) == len(probes.layers)
            else math.nan,
            **{f"AUC {t}": probes.auc[k][n] for k, t in enumerate(probes.traits)},
        }
        for n, (layer, a, sd, c) in enumerate(
            zip(probes.layers, probes.accuracy, probes.accuracy_sd, probes.control, strict=True)
        )
    ]
    return Section(
        "concept-decodability",
        "Concept design: where is each domain decodable?",
        [
            "Each questionnaire item's statement tokens (never the instruction around them) "
            "are pooled per layer; a 5-way multinomial probe decodes which domain the item "
            f"belongs to, cross-validated with folds grouped by {probes.fold_unit} (a test "
            "item's facet is never in training) on training items only. Control task: each "
            "item's domain permuted within length strata, same folds. One-vs-rest AUC per "
            "domain on the right. The item-grouped column (a test item's facet-mates may be "
            "in training) shows how much of the decodability is facet-specific.",
        ],
        figures=_fig(figures / "concept_probe_depth.png", "Domain decodability by depth")
        + _fig(
            figures / "concept_item_map.png", "Items at the best layer (PCA; UMAP if installed)"
        ),
        tables=[Table("Domain probe per layer", depth_rows)],
    )


def _neurons(neurons: Any, figures: Path) -> Section:
    from traitlens.concepts.neurons import depth_thirds, overlap

    jac = overlap(neurons)
    off = jac[~np.eye(len(neurons.traits), dtype=bool)]
    mean_overlap = float(np.nanmean(off)) if np.isfinite(off).any() else math.nan
    neuron_rows = [
        {
            "domain": t,
            "fires more (q ≤ fdr)": int(neurons.mask(t, "high").sum()),
            "|δ| rule alone": int(neurons.npti_mask(t, "high").sum()),
            "fires less (q ≤ fdr)": int(neurons.mask(t, "low").sum()),
            **dict(
                zip(
                    ("early third", "middle third", "late third"),
                    depth_thirds(neurons, t),
                    strict=True,
                )
            ),
        }
        for t in neurons.traits
    ]
    any_neurons = any(r["fires more (q ≤ fdr)"] or r["|δ| rule alone"] for r in neuron_rows)
    return Section(
        "concept-neurons",
        "Concept design: which neurons are domain-selective?",
        [
            "One-vs-rest δ = P(act > 0 | domain items) − P(act > 0 | other items), with "
            "P(act > 0 | item) the share of the statement's tokens on which the neuron "
            f"fires; |δ| ≥ {neurons.threshold:g}, then a Mann–Whitney test over items with "
            f"BH-FDR (q ≤ {neurons.fdr:g}) within each domain. Training items only. Mean "
            f"Jaccard overlap between domains: {mean_overlap:.3f}.",
        ],
        figures=_fig(
            figures / "concept_neurons.png", "Concept neurons by layer, and their overlap"
        ),
        tables=[Table("Concept neurons per domain", neuron_rows)],
        notes=[]
        if any_neurons
        else [
            "No neuron passed the rule for any domain, so there is nothing to draw; the "
            "neuron edits below are no-ops identical to the unsteered model."
        ],
    )


def _steering(evaluation: ConceptEvaluation, figures: Path) -> Section:
    steer_rows = []
    for real, control in _pairs(evaluation):
        rep, lab = real.representation, real.labels
        steer_rows.append(
            {
                "domain": real.trait,
                "edit": _label(real),
                "rule": real.size.get("neuron_rule", "–"),
                "TSR (probe)": rep.tsr,
                "control": control.representation.tsr if control else math.nan,
                "unsteered": rep.tsr_baseline,
                "log-odds Δ": _ci(rep.log_odds_shift),
                "label TSR": lab.tsr,
                "label control": control.labels.tsr if control else math.nan,
                "ΔP(target label)": _ci(lab.delta_p_target),
                "own-domain kept": rep.retention,
                "perplexity ×": real.cost.perplexity_ratio,
            }
        )
    b = evaluation.baseline
    return Section(
        "concept-steering",
        "Concept design: do edits move the representation toward the target domain?",
        [
            "Edits: boost the domain's neurons (NPTI γ·a95·f(δ), strongest-first "
            f"fractions) in layers {evaluation.neuron_layers[0]}–"
            f"{evaluation.neuron_layers[-1]}; suppress them; "
            f"or add the domain's centroid direction in layers {evaluation.steer_layers[0]}–"
            f"{evaluation.steer_layers[-1]}. Each is next to its matched control (random "
            "neurons with the same per-layer counts and δ; a random direction with the same "
            f"spread). Read at layer {evaluation.readout_layer}, downstream of every edit, on "
            f"{b.n_items} held-out items: TSR = share of the other domains' items the probe "
            "now assigns to the target; 'own-domain kept' = share of the target's own items "
            "still assigned to it. Unsteered probe accuracy on these items "
            f"{b.probe_accuracy:.2f}.",
        ],
        figures=_fig(figures / "concept_tsr.png", "Targeted success rate vs control")
        + _fig(figures / "concept_spillover.png", "Spillover of a full boost (5×5)"),
        tables=[Table("Edits, both levels, against matched controls", steer_rows)],
    )


def _gap(evaluation: ConceptEvaluation, figures: Path) -> Section:
    b = evaluation.baseline
    return Section(
        "concept-gap",
        "Concept design: representation vs generated label",
        [
            "The model is asked which domain the statement measures "
            f"({evaluation.k_shot}-shot, examples from training items); the answer is read "
            "from "
            "the next-token distribution over the five domain names. Unsteered label accuracy "
            f"{b.label_accuracy:.2f} (chance {1 / len(evaluation.traits):.2f}), label mass "
            f"{b.label_mass:.3f}. Points right of the diagonal moved the probe more than "
            "the label: the representation–behaviour gap.",
        ],
        figures=_fig(figures / "concept_gap.png", "Probe readout vs generated label"),
    )
