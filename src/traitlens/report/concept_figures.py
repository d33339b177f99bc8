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
from traitlens.neurons.rules import fdr_or_npti

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
    chosen = {fdr_or_npti(neurons, t, poles=("high",), minimum=minimum) for t in neurons.traits}
    return "npti" if "npti" in chosen else "fdr"


def plot_concept_neurons(
    neurons: NeuronSet, directory: Path, rule: str | None = None
) -> Path | None:
    """Selected neurons per layer and domain, and the 5×5 overlap (Jaccard), of the set
    the edits used (``rule``; default: FDR when every domain has enough, else δ alone)."""
    rule = rule or concept_rule(neurons)
    from traitlens.concepts.neurons import rule_mask

    masks = [rule_mask(neurons, t, rule) for t in neurons.traits]
    counts = np.stack([m.sum(-1).numpy() for m in masks])
    if counts.sum() == 0:
        return None
    described = (
        f"|δ| ≥ {neurons.threshold:g}, q ≤ {neurons.fdr:g}"
        if rule == "fdr"
        else f"rule {rule}: the edited set"
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


def headline_row(evaluation: Any, trait: str, kind: str, band: str | None = None) -> Any:
    """The real row a figure shows for a domain and edit kind: the largest fraction, in
    ``band`` (default: the first configured), at the largest γ."""
    bands = list(evaluation.edit_bands)
    band = band if band is not None else (bands[0] if bands else None)
    rows = [
        r
        for r in evaluation.real
        if r.trait == trait
        and r.kind == kind
        and (kind == "direction" or r.size.get("band") == band)
    ]
    if not rows:
        return None
    return max(rows, key=lambda r: (r.fraction or 0.0, r.size.get("gamma") or 0.0))


def plot_concept_tsr(evaluation: Any, directory: Path) -> Path:
    """TSR by readout layer, one panel per domain: the boost (all of the domain's neurons,
    first edit band) and the centroid direction, each with the band its control draws
    span (mean and 97.5th percentile); layers downstream of every edit are shaded."""
    traits = evaluation.traits
    fig = Figure(figsize=(2.4 * len(traits), 3.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(traits), sharey=True))
    layers = np.asarray(evaluation.readout_layers)
    for ax, trait in zip(axes, traits, strict=True):
        for kind, color, style in (
            ("boost", "black", "-"),
            ("dpn", "C3", "-."),
            ("direction", "C0", "--"),
        ):
            row = headline_row(evaluation, trait, kind)
            if row is None or row.vs_controls is None:
                continue
            vs = row.vs_controls
            ax.fill_between(
                layers, vs.control_by_layer, vs.control_by_layer_high, color=color, alpha=0.15
            )
            ax.plot(layers, vs.success_by_layer, style, color=color, label=kind, marker=".")
            downstream = evaluation.downstream_layers(row)
            if downstream and kind == "boost":
                ax.axvspan(downstream[0] - 0.5, layers[-1] + 0.5, color="grey", alpha=0.1)
        ax.axvline(evaluation.headline_layer, color="grey", linestyle=":", linewidth=1)
        ax.set(title=trait, xlabel="readout layer", ylim=(0, 1))
    axes[0].set_ylabel("targeted success rate")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(
        f"TSR read at every layer (shaded: {evaluation.control_draws} random draws, mean to "
        "97.5 %; dotted: best probe layer)",
        fontsize=9,
    )
    return _save(fig, directory, "concept_tsr")


def plot_concept_bands(evaluation: Any, directory: Path) -> Path | None:
    """TSR at the headline layer by edit band (boost of all neurons), real vs the controls'
    mean with their 2.5-97.5 % range; drawn only when the run has several bands."""
    bands = list(evaluation.edit_bands)
    if len(bands) < 2:
        return None
    traits = evaluation.traits
    fig = Figure(figsize=(1.6 * len(traits) + 3, 3.4), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(bands)
    x = np.arange(len(traits))
    for k, band in enumerate(bands):
        rows = [headline_row(evaluation, t, "boost", band) for t in traits]
        real = [r.vs_controls.success.mean if r else np.nan for r in rows]
        mean = [r.vs_controls.control.mean if r else np.nan for r in rows]
        high = [r.vs_controls.control.high if r else np.nan for r in rows]
        offset = (k - (len(bands) - 1) / 2) * width
        ax.bar(x + offset, real, width, color=f"C{k}", label=band)
        ax.errorbar(
            x + offset,
            mean,
            yerr=np.nan_to_num(np.subtract(high, mean)),
            fmt="_",
            color="black",
            capsize=2,
            lolims=True,
        )
    ax.set_xticks(x, traits)
    ax.set(ylim=(0, 1), ylabel="TSR (marks: control mean → 97.5 %)", title="TSR by edit band")
    ax.legend(fontsize=7)
    return _save(fig, directory, "concept_bands")


def plot_concept_dose(evaluation: Any, directory: Path) -> Path | None:
    """Fraction × γ dose map of the boost (first edit band): success at the last layer
    (downstream of every edited neuron but the last layer's own) minus the controls'
    mean, one panel per domain; drawn when the run has more than one fraction or γ."""
    band = next(iter(evaluation.edit_bands), None)
    boosts = [r for r in evaluation.real if r.kind == "boost" and r.size.get("band") == band]
    fractions = sorted({r.fraction for r in boosts})
    gammas = sorted({r.size.get("gamma") for r in boosts})
    if len(fractions) * len(gammas) < 2:
        return None
    traits = evaluation.traits
    fig = Figure(figsize=(2.2 * len(traits) + 1, 2.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(traits), sharey=True))
    image = None
    for ax, trait in zip(axes, traits, strict=True):
        grid = np.full((len(fractions), len(gammas)), np.nan)
        for r in boosts:
            if r.trait == trait and r.vs_controls is not None:
                grid[fractions.index(r.fraction), gammas.index(r.size.get("gamma"))] = (
                    r.vs_controls.gain_last.mean
                )
        image = ax.imshow(grid, cmap="Greys", vmin=0, vmax=1, aspect="auto", origin="lower")
        for i in range(len(fractions)):
            for j in range(len(gammas)):
                if np.isfinite(grid[i, j]):
                    color = "white" if grid[i, j] > 0.5 else "black"
                    ax.text(
                        j,
                        i,
                        f"{grid[i, j]:+.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color=color,
                    )
        ax.set_xticks(range(len(gammas)), [f"{g:g}" for g in gammas])
        ax.set(title=trait, xlabel="γ")
    axes[0].set_yticks(range(len(fractions)), [f"{f:.0%}" for f in fractions])
    axes[0].set_ylabel("fraction boosted")
    if image is not None:
        fig.colorbar(image, ax=list(axes), shrink=0.8, label="TSR − controls, last layer")
    return _save(fig, directory, "concept_dose")


def plot_concept_gap(evaluation: Any, directory: Path) -> Path:
    """The finding in one figure: gain over the controls at the probe readout against the
    gain of P(target label), for the boost and the direction of every domain, with CIs."""
    traits = evaluation.traits
    fig = Figure(figsize=(5.2, 4.0), layout="constrained")
    ax = fig.subplots()
    for kind, marker in (("boost", "o"), ("dpn", "^"), ("direction", "s")):
        for t in traits:
            row = headline_row(evaluation, t, kind)
            if row is None or row.vs_controls is None:
                continue
            gain, label = row.vs_controls.gain, row.vs_controls.delta_p_gain
            ax.errorbar(
                gain.mean,
                label.mean,
                xerr=[[max(gain.mean - gain.low, 0)], [max(gain.high - gain.mean, 0)]],
                yerr=[[max(label.mean - label.low, 0)], [max(label.high - label.mean, 0)]],
                fmt=marker,
                color=COLORS.get(t),
                markeredgecolor="black",
                capsize=2,
            )
            ax.annotate(
                f"{t} {kind}",
                (gain.mean, label.mean),
                fontsize=6,
                xytext=(3, 3),
                textcoords="offset points",
            )
    ax.axhline(0, color="grey", linewidth=0.5)
    ax.axvline(0, color="grey", linewidth=0.5)
    interpretable = evaluation.baseline.labels_interpretable
    ax.set(
        xlabel="probe readout: TSR − controls' mean [95 % CI]",
        ylabel="ΔP(target label) − controls' [95 % CI]",
        title="Representation vs generated label"
        + ("" if interpretable else "\n(label readout at chance: not interpretable)"),
    )
    return _save(fig, directory, "concept_gap")


def plot_concept_spillover(evaluation: Any, directory: Path) -> Path:
    """5×5: rows = boosted domain, columns = share of other domains' items the probe
    assigns to each domain at the last layer (real boost at the largest fraction minus
    unsteered)."""
    traits = evaluation.traits
    matrix = np.full((len(traits), len(traits)), np.nan)
    for i, t in enumerate(traits):
        row = headline_row(evaluation, t, "boost")
        if row is not None and row.representation.shares_last:
            rep = row.representation
            matrix[i] = np.subtract(rep.shares_last, rep.shares_last_baseline)
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
        title="Spillover: Δ predicted-domain share (last layer)",
    )
    fig.colorbar(image, ax=ax, shrink=0.8)
    return _save(fig, directory, "concept_spillover")


def edited_rule(evaluation: Any) -> str:
    from traitlens.concepts.claims import edited_rule as rule

    return rule(evaluation)


def draw_concept_figures(
    run: Path, chosen: Any, acts: Any, probes: Any, neurons: NeuronSet, evaluation: Any
) -> list[Path]:
    """Every concept figure into ``run/figures`` (redrawn from the artifacts each run)."""
    directory = run / "figures"
    drawn = [
        plot_domain_depth(probes, directory),
        plot_item_map(list(chosen.items), acts, probes, directory),
        plot_concept_neurons(neurons, directory, edited_rule(evaluation)),
        plot_concept_tsr(evaluation, directory),
        plot_concept_bands(evaluation, directory),
        plot_concept_gap(evaluation, directory),
        plot_concept_dose(evaluation, directory),
        plot_concept_spillover(evaluation, directory),
    ]
    for index, stem in ((2, "concept_neurons"), (4, "concept_bands"), (6, "concept_dose")):
        stale = directory / f"{stem}.png"
        if drawn[index] is None and stale.exists():
            stale.unlink()  # an old figure must not stand in for "nothing drawn"
    return [p for p in drawn if p is not None]


def draw_run_figures(made: Any) -> list[Path]:
    """Every concept figure of a finished concept run (the ``ConceptRun`` that
    :func:`~traitlens.concepts.run_concepts` returns): the designs compute, the report
    draws."""
    return draw_concept_figures(
        made.run, made.items, made.capture, made.probes, made.neurons, made.evaluation
    )
