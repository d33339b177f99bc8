"""Print the concept design's headline figures from a run (no model needed).

    python scripts/concept_summary.py RUN [RUN ...]

Domain probe (best layer, accuracy, control, first layer at 90 %, item-grouped
accuracy), concept neurons by depth third (against the label-permutation null) and
their overlap, then every edit's success rate at the best probe layer and the last
layer against its random control draws (gain, CI, p), the generated-label shift
beyond the controls, the perplexity cost, and the study's four claims with verdicts.
These are the numbers quoted in the README and the closing note. Given several runs
(e.g. the bare and the instructed context on one bank), each is printed, then their
claims and per-domain gains side by side.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def main(run: Path) -> None:
    """Print one run's figures."""
    from traitlens.concepts.claims import edited_rule, study_claims
    from traitlens.concepts.neurons import depth_thirds, overlap
    from traitlens.concepts.pipeline import ConceptEvaluation
    from traitlens.concepts.probes import DomainProbes
    from traitlens.neurons.artifact import NeuronSet
    from traitlens.steer.layers import layer_text

    base = run / "concepts"
    probes = DomainProbes.load(base)
    s = probes.summary()
    print(
        f"domain probe: best layer {s['best_layer']} accuracy {s['best_accuracy']:.3f} "
        f"(control {s['control_at_best']:.3f}, chance {s['chance']:.2f}, folds by "
        f"{s['fold_unit']}); first layer at 90 % of best: {s['first_layer_90']}; "
        f"item-grouped folds at that layer {s['item_folds_at_best']:.3f}"
    )
    k = int(np.nanargmax(probes.accuracy_item_folds)) if probes.accuracy_item_folds else None
    if k is not None:
        print(
            f"  best item-grouped accuracy {probes.accuracy_item_folds[k]:.3f} at layer "
            f"{probes.layers[k]} (facet-grouped there {probes.accuracy[k]:.3f})"
        )
    neurons = NeuronSet.load(base)
    evaluation = ConceptEvaluation.load(base / "eval.json")
    rule = edited_rule(evaluation)
    null = neurons.config.get("null") or {}
    print(
        f"concept neurons (fire more for the domain; q ≤ fdr | |δ| rule alone | {rule} set by "
        "thirds"
        + (f" | null mean by thirds, {null['permutations']} permutations)" if null else ")")
    )
    for t in neurons.traits:
        fdr, npti = int(neurons.mask(t, "high").sum()), int(neurons.npti_mask(t, "high").sum())
        extra = f" | {null['null_mean'][t]}" if null else ""
        print(f"  {t}: {fdr} | {npti} | {depth_thirds(neurons, t, rule=rule)}{extra}")
    jac = overlap(neurons, rule=rule)
    off = jac[~np.eye(len(neurons.traits), dtype=bool)]
    print(f"  mean Jaccard overlap between domains ({rule} set) {np.nanmean(off):.3f}")
    b = evaluation.baseline
    print(
        f"{b.n_items} held-out items; headline layer {evaluation.headline_layer} (best probe "
        f"layer), last layer {evaluation.readout_layers[-1]}; edit bands "
        + ", ".join(f"{k} {layer_text(v)}" for k, v in evaluation.edit_bands.items())
        + f"; directions in {layer_text(evaluation.steer_layers)}; "
        f"{evaluation.control_draws} control draws"
    )
    print(
        f"unsteered probe accuracy {b.probe_accuracy:.2f}; label accuracy "
        f"{b.label_accuracy:.2f} [{b.label_accuracy_ci[0]:.2f}, {b.label_accuracy_ci[1]:.2f}] "
        f"(chance {b.chance:.2f}, {evaluation.k_shot}-shot), label mass {b.label_mass:.3f} "
        f"[{b.label_mass_ci[0]:.3f}, {b.label_mass_ci[1]:.3f}]"
        + ("" if b.labels_interpretable else " — label shifts NOT interpretable on this model")
    )
    print(
        "edit | success best layer [Wilson] | controls mean [2.5-97.5 %] | gain [95 % CI] p | "
        "success last layer | ΔP(target label) − controls [CI] p | ppl×"
    )
    for r in evaluation.real:
        vs = r.vs_controls
        if vs is None:
            continue
        band = f" {r.size['band']}" if r.size.get("band") else ""
        gamma = f" γ{r.size['gamma']:g}" if r.size.get("gamma") else ""
        name = f"{r.trait} {r.kind}" + (f" {r.fraction:.0%}" if r.kind == "boost" else "")
        print(
            f"  {name + band + gamma:<22} {vs.success.mean:.2f} [{vs.success.low:.2f}, "
            f"{vs.success.high:.2f}] | {vs.control.mean:.2f} [{vs.control.low:.2f}, "
            f"{vs.control.high:.2f}] | {vs.gain.mean:+.2f} [{vs.gain.low:+.2f}, "
            f"{vs.gain.high:+.2f}] p={vs.p_value:.3f} | {vs.success_last.mean:.2f} | "
            f"{vs.delta_p_gain.mean:+.3f} [{vs.delta_p_gain.low:+.3f}, "
            f"{vs.delta_p_gain.high:+.3f}] p={vs.delta_p_p_value:.3f} | "
            f"{r.cost.perplexity_ratio:.2f}"
        )
    print(f"the study's claims ({evaluation.context} context):")
    for c in study_claims(probes, neurons, evaluation, rule):
        print(f"  ({c.name}) {c.statement}: {c.verdict.upper()}")
        print(f"      measured {c.measured}; interval {c.interval}")
        print(f"      {c.detail}")


def side_by_side(runs: list[Path]) -> None:
    """The claims' verdicts and each domain's best boost gain, one column per run."""
    from traitlens.concepts.claims import edited_rule, study_claims
    from traitlens.concepts.pipeline import ConceptEvaluation
    from traitlens.concepts.probes import DomainProbes
    from traitlens.neurons.artifact import NeuronSet

    columns = []
    for run in runs:
        base = run / "concepts"
        evaluation = ConceptEvaluation.load(base / "eval.json")
        probes, neurons = DomainProbes.load(base), NeuronSet.load(base)
        claims = study_claims(probes, neurons, evaluation, edited_rule(evaluation))
        gains: dict[str, str] = {}
        for r in evaluation.real:
            vs = r.vs_controls
            if r.kind != "boost" or vs is None:
                continue
            text = f"{vs.gain.mean:+.2f} p={vs.p_value:.3f}"
            if r.trait not in gains or vs.gain.mean > float(gains[r.trait].split()[0]):
                gains[r.trait] = text
        acc = evaluation.baseline.label_accuracy
        columns.append((f"{run.name} ({evaluation.context})", claims, gains, acc))
    print("\nside by side: " + " | ".join(name for name, *_ in columns))
    for n, claim in enumerate(columns[0][1]):
        cells = [f"{c[1][n].verdict} ({c[1][n].measured})" for c in columns]
        print(f"  ({claim.name}) " + " | ".join(cells))
    for trait in columns[0][2]:
        print(f"  {trait} best boost gain " + " | ".join(c[2].get(trait, "-") for c in columns))
    print("  unsteered label accuracy " + " | ".join(f"{c[3]:.2f}" for c in columns))


if __name__ == "__main__":
    paths = [Path(a) for a in sys.argv[1:]] or [Path("runs/demo")]
    for path in paths:
        if len(paths) > 1:
            print(f"== {path}")
        main(path)
    if len(paths) > 1:
        side_by_side(paths)
