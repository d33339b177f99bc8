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
from traitlens.steer.layers import layer_text

if TYPE_CHECKING:
    from traitlens.concepts.evaluate import ConceptResult, Estimate
    from traitlens.concepts.pipeline import ConceptEvaluation

CONCEPT_SECTION_IDS = (
    "concept-claims",
    "concept-decodability",
    "concept-neurons",
    "concept-steering",
    "concept-gap",
)


def _fig(path: Path, caption: str) -> list[tuple[Path, str]]:
    return [(path, caption)] if path.exists() else []


def _ci(entry: Estimate) -> str:
    mean, low, high = entry.mean, entry.low, entry.high
    if mean is None or not np.isfinite(mean):
        return "–"
    if low is None or not np.isfinite(low):
        return f"{mean:+.3f}"
    return f"{mean:+.3f} [{low:+.2f}, {high:+.2f}]"


def _rate(entry: Estimate) -> str:
    if entry.mean is None or not np.isfinite(entry.mean):
        return "–"
    return f"{entry.mean:.2f} [{entry.low:.2f}, {entry.high:.2f}]"


def _label(row: ConceptResult) -> str:
    size = row.size
    band = f", band {size['band']}" if size.get("band") else ""
    if row.kind == "boost":
        silenced = f", {size['n_silenced']} silenced" if size.get("n_silenced") else ""
        return (
            f"boost {row.fraction:.0%} ({size.get('n_neurons', 0)} neurons{silenced}, "
            f"γ {size['gamma']:g}{band})"
        )
    if row.kind == "suppress":
        return f"suppress ({size.get('n_neurons', 0)} neurons, {size.get('mode')}{band})"
    if row.kind == "dpn":
        return (
            f"DPN-LE γ·Δ ({size.get('n_neurons', 0)} neurons, {size.get('n_raised', 0)} "
            f"raised, γ {size['gamma']:g}{band})"
        )
    return f"direction (strength {size.get('strength', math.nan):g})"


def _load(run: Path) -> tuple[Any, Any, ConceptEvaluation] | None:
    from traitlens.concepts.pipeline import ConceptEvaluation
    from traitlens.concepts.probes import DomainProbes
    from traitlens.neurons.artifact import NeuronSet

    base = run / "concepts"
    if not (base / "eval.json").exists():
        return None
    return DomainProbes.load(base), NeuronSet.load(base), ConceptEvaluation.load(base / "eval.json")


def concept_headline(run: Path) -> tuple[list[str], list[str]]:
    """Summary paragraphs and caveat notes for the concept design (empty when absent)."""
    from traitlens.concepts.claims import edited_rule, study_claims

    loaded = _load(run)
    if loaded is None:
        return [], []
    probes, neurons, evaluation = loaded
    claims = study_claims(probes, neurons, evaluation, edited_rule(evaluation))
    paragraphs = [
        "Concept design, the study's four claims on this model: "
        + "; ".join(f"({c.name}) {c.verdict}" for c in claims)
        + "."
    ]
    notes = []
    b = evaluation.baseline
    if not b.labels_interpretable:
        low, high = b.label_accuracy_ci
        notes.append(
            f"The generated-label readout is at chance on this model (accuracy "
            f"{b.label_accuracy:.2f} [{low:.2f}, {high:.2f}], chance {b.chance:.2f}; "
            f"{b.label_mass:.0%} of the next-token probability on the five names): label "
            "shifts below are not interpretable as the model relabelling items."
        )
    return paragraphs, notes


def concept_sections(run: Path) -> list[Section]:
    """The concept design's sections (none when the run has no concept evaluation)."""
    loaded = _load(run)
    if loaded is None:
        return []
    probes, neurons, evaluation = loaded
    figures = run / "figures"
    return [
        _claims(probes, neurons, evaluation, figures),
        _decodability(probes, figures),
        _neurons(neurons, figures, evaluation),
        _steering(evaluation, figures),
        _gap(evaluation, figures),
    ]


def _claims(probes: Any, neurons: Any, evaluation: ConceptEvaluation, figures: Path) -> Section:
    from traitlens.concepts.claims import edited_rule, study_claims

    claims = study_claims(probes, neurons, evaluation, edited_rule(evaluation))
    rows = [
        {
            "claim": f"({c.name}) {c.statement}",
            "measured": c.measured,
            "interval": c.interval,
            "verdict": c.verdict,
            "how": c.detail,
        }
        for c in claims
    ]
    return Section(
        "concept-claims",
        "Concept design: the study's four claims on this model",
        [
            "Each claim of the concept study, measured on this run's held-out items and "
            f"artifacts. Edits are judged against {evaluation.control_draws} random draws of "
            "the same size (neurons matched per layer in count, δ and a95; random directions "
            "with the same spread); p-values are Monte Carlo p against the draws, intervals "
            "Wilson (rates) or bootstrap over items (gains).",
        ],
        figures=_fig(figures / "concept_tsr.png", "TSR read at every layer, real vs controls"),
        tables=[Table("The study's claims", rows)],
    )


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


def _neurons(neurons: Any, figures: Path, evaluation: ConceptEvaluation) -> Section:
    from traitlens.concepts.claims import edited_rule
    from traitlens.concepts.neurons import depth_thirds, overlap

    rule = edited_rule(evaluation)
    null = neurons.config.get("null") or {}
    jac = overlap(neurons, rule=rule)
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
                    depth_thirds(neurons, t, rule=rule),
                    strict=True,
                )
            ),
            **(
                {"null mean early/middle/late": "/".join(f"{v:.0f}" for v in null["null_mean"][t])}
                if null
                else {}
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
            f"BH-FDR (q ≤ {neurons.fdr:g}) within each domain. Training items only. Depth "
            f"thirds and overlap describe the edited set ({rule}: "
            + ("NPTI's δ rule" if rule == "npti" else "δ rule and FDR")
            + f"); mean Jaccard overlap between domains {mean_overlap:.3f}."
            + (
                f" The null column: the same δ rule after permuting the domain labels by "
                f"{null['unit']} ({null['permutations']} permutations)."
                if null
                else ""
            ),
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
    for real in evaluation.real:
        vs = real.vs_controls
        if vs is None:
            continue
        steer_rows.append(
            {
                "domain": real.trait,
                "edit": _label(real),
                "rule": real.size.get("neuron_rule", "–"),
                "success (best layer)": _rate(vs.success),
                "controls": _rate(vs.control),
                "gain": _ci(vs.gain),
                "p": vs.p_value,
                "success (last layer)": _rate(vs.success_last),
                "unsteered TSR": real.representation.tsr_baseline,
                "ΔP(target label) − controls": _ci(vs.delta_p_gain),
                "label p": vs.delta_p_p_value,
                "perplexity ×": real.cost.perplexity_ratio,
            }
        )
    b = evaluation.baseline
    bands = "; ".join(
        f"{name}: layers {layer_text(layers)}" for name, layers in evaluation.edit_bands.items()
    )
    return Section(
        "concept-steering",
        "Concept design: do edits move the representation toward the target domain?",
        [
            "Edits: boost the domain's neurons (NPTI: γ·a95·f(δ) on the strongest fraction, "
            "the neurons that fire less for the domain held at min(0, n)) in each edit band "
            f"({bands}); suppress them; DPN-LE (where run: γ·Δ on the neurons with a large "
            "Cohen's d and a mean difference Δ in their layer's top 0.5 %); or add the "
            "domain's centroid direction in layers "
            f"{layer_text(evaluation.steer_layers)}. Success: for a boost or a direction, an "
            "item of another domain now read as the target; for a suppression, an item of "
            "the target's own domain no longer read as it. Read with the probe fitted at "
            f"each layer, on {b.n_items} held-out items; the headline layer is the best probe "
            f"layer ({evaluation.headline_layer}), and the last layer is beside it. Each edit "
            f"is compared with {evaluation.control_draws} random draws of the same size (the "
            f"generated label with the first {_label_draws(evaluation)} of them). "
            f"Unsteered probe accuracy on these items {b.probe_accuracy:.2f}.",
        ],
        figures=_fig(figures / "concept_bands.png", "TSR by edit band")
        + _fig(figures / "concept_dose.png", "Dose map: fraction × γ (last layer)")
        + _fig(
            figures / "concept_spillover.png",
            "Spillover of a full boost (5×5), read at the last layer",
        ),
        tables=[Table("Edits, both levels, against their control draws", steer_rows)],
    )


def _label_draws(evaluation: ConceptEvaluation) -> int:
    counts = [r.vs_controls.n_label_draws for r in evaluation.real if r.vs_controls is not None]
    return min(counts) if counts else 0


def _context_line(evaluation: ConceptEvaluation) -> str:
    if evaluation.context == "instructed":
        return (
            "Context: instructed. Every stage (capture, probes, neurons, edits) read each "
            "item inside this label question, so the probe and the label come from one "
            "forward pass and differ only in what is read out."
        )
    return (
        "Context: bare. Probes, neurons and edits read each item on its own, while the "
        "label is asked in the conversation above; run with context: instructed to read "
        "both in one context (scripts/concept_summary.py RUN_A RUN_B sets them side by side)."
    )


def _gap(evaluation: ConceptEvaluation, figures: Path) -> Section:
    b = evaluation.baseline
    low, high = (b.label_accuracy_ci or [math.nan, math.nan])[:2]
    verdict = (
        "Label shifts can be read on this model."
        if b.labels_interpretable
        else "Label accuracy is not above chance, so label shifts are not interpretable on "
        "this model: they are shown, not read as findings."
    )
    return Section(
        "concept-gap",
        "Concept design: representation vs generated label",
        [
            "The model is asked which domain the statement describes "
            f"({evaluation.k_shot}-shot, labelled training items as earlier chat turns, "
            "balanced over the domains, option order rotated across items); the answer is "
            "read from the next-token distribution over the five domain names. Unsteered "
            f"label accuracy {b.label_accuracy:.2f} [{low:.2f}, {high:.2f}] (chance "
            f"{b.chance:.2f}), label mass {b.label_mass:.3f}. " + verdict,
            _context_line(evaluation),
        ],
        figures=_fig(figures / "concept_gap.png", "Probe readout vs generated label"),
    )
