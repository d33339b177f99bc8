"""Figures of the concept design, drawn from its artifacts (matplotlib's object API only).

Each function returns the PNG it wrote, or None when there is nothing to draw (the
report then says so in words instead of showing an empty frame).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from traitlens.neurons.artifact import NeuronSet

COLORS = {"O": "#1b9e77", "C": "#d95f02", "E": "#7570b3", "A": "#e7298a", "N": "#66a61e"}


def _save(fig: Figure, directory: Path, stem: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stem}.png"
    fig.savefig(path, dpi=130, bbox_inches="tight")
    return path


def plot_domain_depth(probes: Any, directory: Path) -> Path:
    """5-way accuracy by layer (± SD over folds) with the control task and chance."""
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[1.3, 1])
    x = np.asarray(probes.layers)
    acc, sd = np.asarray(probes.accuracy), np.asarray(probes.accuracy_sd)
    left.plot(x, acc, color="black", label="domain probe (held-out facets)")
    left.fill_between(x, acc - sd, acc + sd, color="black", alpha=0.15, linewidth=0)
    left.plot(x, probes.control, color="grey", linestyle="--", label="control task")
    if len(probes.accuracy_item_folds) == len(x) and probes.fold_unit == "facet":
        left.plot(
            x,
            probes.accuracy_item_folds,
            color="#1b9e77",
            linestyle="-.",
            label="held-out items, facets seen in training",
        )
    left.axhline(probes.chance, color="grey", linestyle=":", linewidth=1, label="chance")
    first = probes.first_layer_reaching(0.9)
    left.axvline(
        first, color="#d95f02", linewidth=1, label=f"first layer at 90 % of best ({first})"
    )
    left.set(
        xlabel="layer",
        ylabel="5-way accuracy",
        ylim=(0, 1),
        title=f"Which domain is this item about? (folds by {probes.fold_unit})",
    )
    left.legend(fontsize=7, loc="lower right")
    for trait, auc in zip(probes.traits, probes.auc, strict=True):
        right.plot(x, auc, color=COLORS.get(trait), label=trait)
    right.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    right.set(xlabel="layer", ylabel="one-vs-rest AUC", ylim=(0.3, 1), title="per domain")
    right.legend(fontsize=7, ncol=5, loc="lower right")
    return _save(fig, directory, "concept_probe_depth")


def _item_matrix(acts: Any, item_ids: Sequence[str], layer: int, pooling: str) -> np.ndarray:
    column = acts.layer_index(layer)
    x = acts.pooled[pooling][:, column].double().numpy()
    out = np.zeros((len(item_ids), x.shape[1]))
    counts = np.zeros(len(item_ids))
    index = {i: n for n, i in enumerate(item_ids)}
    for row, item in enumerate(acts.item_ids):
        if item in index:
            out[index[item]] += x[row]
            counts[index[item]] += 1
    return out / np.maximum(counts, 1)[:, None]


def plot_item_map(items: Sequence[Any], acts: Any, probes: Any, directory: Path) -> Path:
    """Items in 2-D at the probe's best layer: PCA always, UMAP when umap-learn is installed."""
    from sklearn.decomposition import PCA

    layer = probes.best_layer()
    x = _item_matrix(acts, [i.id for i in items], layer, probes.pooling)
    x = (x - x.mean(0)) / np.where(x.std(0) > 1e-8, x.std(0), 1.0)
    maps = [("PCA", PCA(n_components=2, random_state=0).fit_transform(x))]
    try:
        import umap  # type: ignore[import-not-found]

        maps.append(("UMAP", umap.UMAP(random_state=0).fit_transform(x)))
    except ImportError:
        pass
    fig = Figure(figsize=(4.2 * len(maps) + 0.8, 4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(maps)))
    traits = np.array([i.trait for i in items])
    for ax, (name, xy) in zip(axes, maps, strict=True):
        for trait in dict.fromkeys(traits):
            mask = traits == trait
            ax.scatter(xy[mask, 0], xy[mask, 1], s=9, color=COLORS.get(trait), label=trait)
        ax.set(title=f"{name} of item states, layer {layer}", xticks=[], yticks=[])
    axes[0].legend(fontsize=7, markerscale=1.5)
    return _save(fig, directory, "concept_item_map")


def concept_rule(neurons: NeuronSet, minimum: int = 20) -> str:
    """The selection the concept figures draw: the FDR sets when every domain has at least
    ``minimum`` neurons there (as the edits' ``auto`` rule asks), else NPTI's δ rule alone."""
    fdr = [int(neurons.mask(t, "high").sum()) for t in neurons.traits]
    return "fdr" if min(fdr) >= minimum else "npti"


def plot_concept_neurons(neurons: NeuronSet, directory: Path) -> Path | None:
    """Selected neurons per layer and domain, and the 5×5 overlap (Jaccard)."""
    rule = concept_rule(neurons)
    masks = [
        neurons.mask(t, "high") if rule == "fdr" else neurons.npti_mask(t, "high")
        for t in neurons.traits
    ]
    counts = np.stack([m.sum(-1).numpy() for m in masks])
    if counts.sum() == 0:
        return None
    described = (
        f"|δ| ≥ {neurons.threshold:g}, q ≤ {neurons.fdr:g}"
        if rule == "fdr"
        else f"|δ| ≥ {neurons.threshold:g} alone: too few pass q ≤ {neurons.fdr:g}"
    )
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[1.6, 1])
    for trait, row in zip(neurons.traits, counts, strict=True):
        left.plot(neurons.layers, row, color=COLORS.get(trait), label=trait)
    left.set(
        xlabel="layer",
        ylabel="neurons (fire more for the domain)",
        title=f"Concept neurons by layer ({described})",
    )
    left.legend(fontsize=7, ncol=5)
    from traitlens.neurons.stats import jaccard_matrix

    jac = jaccard_matrix(masks)
    image = right.imshow(jac, cmap="Greys", vmin=0, vmax=max(0.1, float(np.nanmax(jac))))
    right.set_xticks(range(len(neurons.traits)), neurons.traits)
    right.set_yticks(range(len(neurons.traits)), neurons.traits)
    for i in range(len(neurons.traits)):
        for j in range(len(neurons.traits)):
            value = jac[i, j]
            text = "–" if not np.isfinite(value) else f"{value:.2f}"
            right.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=7,
                color="white" if np.isfinite(value) and value > 0.5 else "black",
            )
    right.set_title("overlap (Jaccard)")
    fig.colorbar(image, ax=right, shrink=0.8)
    return _save(fig, directory, "concept_neurons")


def _rows(
    evaluation: Any, kind: str, control: bool, fraction: float | None = None
) -> dict[str, Any]:
    return {
        r.trait: r
        for r in evaluation.results
        if r.kind == kind and r.control == control and (fraction is None or r.fraction == fraction)
    }


def plot_concept_tsr(evaluation: Any, directory: Path) -> Path:
    """Targeted success rate of the probe read-out: each edit next to its matched control."""
    traits = evaluation.traits
    fractions = sorted({r.fraction for r in evaluation.results if r.kind == "boost"})
    conditions = [("boost", f) for f in fractions] + [("direction", None)]
    fig = Figure(figsize=(1.6 * len(traits) + 3, 3.6), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / (2 * len(conditions))
    x = np.arange(len(traits))
    for k, (kind, fraction) in enumerate(conditions):
        label = f"boost {fraction:.0%}" if kind == "boost" else "direction"
        for side, control in enumerate((False, True)):
            rows = _rows(evaluation, kind, control, fraction)
            values = [rows[t].representation.tsr if t in rows else np.nan for t in traits]
            offset = (2 * k + side - len(conditions) + 0.5) * width
            ax.bar(
                x + offset,
                values,
                width,
                color=f"C{k}",
                alpha=0.35 if control else 1.0,
                label=f"{label}{' (control)' if control else ''}",
            )
    base = _rows(evaluation, "boost", False, fractions[0] if fractions else None)
    for i, t in enumerate(traits):
        if t in base:
            value = base[t].representation.tsr_baseline
            ax.hlines(value, i - 0.45, i + 0.45, color="black", linestyle=":", linewidth=1)
    ax.set_xticks(x, traits)
    ax.set(
        ylim=(0, 1),
        ylabel="share of other domains' items → target",
        title="Representation: targeted success rate (dotted: unsteered)",
    )
    ax.legend(fontsize=6, ncol=2, loc="upper left")
    return _save(fig, directory, "concept_tsr")


def plot_concept_gap(evaluation: Any, directory: Path) -> Path:
    """The finding in one figure: representation TSR gain vs label TSR gain, real vs control
    (largest-fraction boost and the direction), plus the label-level ΔP(target)."""
    traits = evaluation.traits
    fractions = sorted({r.fraction for r in evaluation.results if r.kind == "boost"})
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    for kind, fraction, marker in (
        ("boost", fractions[-1] if fractions else None, "o"),
        ("direction", None, "s"),
    ):
        for control in (False, True):
            rows = _rows(evaluation, kind, control, fraction)
            for t in traits:
                if t not in rows:
                    continue
                r = rows[t]
                rep = r.representation.tsr - r.representation.tsr_baseline
                lab = r.labels.tsr - r.labels.tsr_baseline
                left.scatter(
                    rep,
                    lab,
                    marker=marker,
                    s=40,
                    color=COLORS.get(t),
                    alpha=0.35 if control else 1.0,
                    edgecolor="black" if not control else "none",
                )
                if not control:
                    left.annotate(
                        f"{t} {kind}",
                        (rep, lab),
                        fontsize=6,
                        xytext=(3, 3),
                        textcoords="offset points",
                    )
    left.axline((0, 0), slope=1, color="grey", linestyle=":", linewidth=1)
    left.axhline(0, color="grey", linewidth=0.5)
    left.axvline(0, color="grey", linewidth=0.5)
    left.set(
        xlabel="probe read-out: Δ share → target",
        ylabel="generated label: Δ share → target",
        title="Representation vs label (faint: matched controls)",
    )
    x = np.arange(len(traits))
    for side, control in enumerate((False, True)):
        rows = _rows(evaluation, "boost", control, fractions[-1] if fractions else None)
        means = [rows[t].labels.delta_p_target.mean if t in rows else np.nan for t in traits]
        lows = [rows[t].labels.delta_p_target.low if t in rows else np.nan for t in traits]
        highs = [rows[t].labels.delta_p_target.high if t in rows else np.nan for t in traits]
        err = np.abs(np.array([np.subtract(means, lows), np.subtract(highs, means)], dtype=float))
        right.bar(
            x + (side - 0.5) * 0.38,
            means,
            0.38,
            yerr=np.nan_to_num(err),
            capsize=2,
            color="black" if not control else "lightgrey",
            label="boost (all neurons)" if not control else "matched random neurons",
        )
    right.axhline(0, color="grey", linewidth=0.5)
    right.set_xticks(x, traits)
    right.set(
        ylabel="ΔP(target label) [95 % CI]", title=f"Label generation ({evaluation.k_shot}-shot)"
    )
    right.legend(fontsize=7)
    return _save(fig, directory, "concept_gap")


def plot_concept_spillover(evaluation: Any, directory: Path) -> Path:
    """5×5: rows = boosted domain, columns = share of other domains' items the probe
    assigns to each domain (real boost at the largest fraction minus unsteered)."""
    traits = evaluation.traits
    fractions = sorted({r.fraction for r in evaluation.results if r.kind == "boost"})
    rows = _rows(evaluation, "boost", False, fractions[-1] if fractions else None)
    matrix = np.full((len(traits), len(traits)), np.nan)
    for i, t in enumerate(traits):
        if t in rows:
            rep = rows[t].representation
            matrix[i] = np.subtract(rep.shares, rep.shares_baseline)
    fig = Figure(figsize=(4.2, 3.6), layout="constrained")
    ax = fig.subplots()
    limit = max(0.05, float(np.nanmax(np.abs(matrix))) if np.isfinite(matrix).any() else 0.05)
    image = ax.imshow(matrix, cmap="RdBu_r", vmin=-limit, vmax=limit)
    for i in range(len(traits)):
        for j in range(len(traits)):
            if np.isfinite(matrix[i, j]):
                ax.text(j, i, f"{matrix[i, j]:+.2f}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(traits)), traits)
    ax.set_yticks(range(len(traits)), traits)
    ax.set(
        xlabel="predicted domain",
        ylabel="boosted domain",
        title="Spillover: Δ predicted-domain share",
    )
    fig.colorbar(image, ax=ax, shrink=0.8)
    return _save(fig, directory, "concept_spillover")


def draw_concept_figures(
    run: Path, chosen: Any, acts: Any, probes: Any, neurons: NeuronSet, evaluation: Any
) -> list[Path]:
    """Every concept figure into ``run/figures`` (redrawn from the artifacts each run)."""
    directory = run / "figures"
    drawn = [
        plot_domain_depth(probes, directory),
        plot_item_map(list(chosen.items), acts, probes, directory),
        plot_concept_neurons(neurons, directory),
        plot_concept_tsr(evaluation, directory),
        plot_concept_gap(evaluation, directory),
        plot_concept_spillover(evaluation, directory),
    ]
    stale = directory / "concept_neurons.png"
    if drawn[2] is None and stale.exists():
        stale.unlink()  # an old figure must not stand in for "nothing selected"
    return [p for p in drawn if p is not None]
