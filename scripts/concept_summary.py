"""Print the concept design's headline figures from a run (no model needed).

    python scripts/concept_summary.py RUN

Domain probe (best layer, accuracy, control, first layer at 90 %, item-grouped
accuracy), concept neurons by depth third and their overlap, then per domain the
targeted success rate (probe read-out) of every edit next to its matched control, the
generated-label shift, and the perplexity cost. These are the numbers quoted in the
README and the closing note.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def main(run: Path) -> None:
    from traitlens.concepts.neurons import depth_thirds, overlap
    from traitlens.concepts.pipeline import ConceptEvaluation
    from traitlens.concepts.probes import DomainProbes
    from traitlens.neurons.artifact import NeuronSet

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
    print("concept neurons (fire more for the domain; q ≤ fdr | |δ| rule alone | by thirds):")
    for t in neurons.traits:
        fdr, npti = int(neurons.mask(t, "high").sum()), int(neurons.npti_mask(t, "high").sum())
        print(f"  {t}: {fdr} | {npti} | early/middle/late {depth_thirds(neurons, t)}")
    jac = overlap(neurons)
    off = jac[~np.eye(len(neurons.traits), dtype=bool)]
    print(f"  mean Jaccard overlap between domains {np.nanmean(off):.3f}")
    evaluation = ConceptEvaluation.load(base / "eval.json")
    b = evaluation.baseline
    print(
        f"read at layer {evaluation.readout_layer}; neurons edited in layers "
        f"{evaluation.neuron_layers[0]}-{evaluation.neuron_layers[-1]}, directions in "
        f"{evaluation.steer_layers[0]}-{evaluation.steer_layers[-1]}; {b.n_items} held-out "
        f"items; unsteered probe accuracy {b.probe_accuracy:.2f}, label accuracy "
        f"{b.label_accuracy:.2f} ({evaluation.k_shot}-shot), label mass {b.label_mass:.3f}"
    )
    controls = {(r.trait, r.kind, r.fraction): r for r in evaluation.results if r.control}
    print(
        "edit | TSR real/control (unsteered) | label TSR real/control (unsteered) | "
        "ΔP(target label) real/control | own-domain kept | ppl× real/control"
    )
    for r in (r for r in evaluation.results if not r.control):
        c = controls[(r.trait, r.kind, r.fraction)]
        rep, lab = r.representation, r.labels
        name = f"{r.trait} {r.kind}" + (f" {r.fraction:.0%}" if r.kind == "boost" else "")
        print(
            f"  {name:<16} {rep.tsr:.2f}/{c.representation.tsr:.2f} "
            f"({rep.tsr_baseline:.2f}) | {lab.tsr:.2f}/{c.labels.tsr:.2f} "
            f"({lab.tsr_baseline:.2f}) | {lab.delta_p_target.mean:+.3f}/"
            f"{c.labels.delta_p_target.mean:+.3f} | {rep.retention:.2f} | "
            f"{r.cost.perplexity_ratio:.2f}/{c.cost.perplexity_ratio:.2f}"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/demo"))
