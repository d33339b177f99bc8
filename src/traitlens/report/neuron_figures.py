"""Neuron figures: selective-neuron counts by layer, and overlap between trait poles.

Greyscale colormaps (darker = more), numbers printed in the overlap cells, so
the figures survive black-and-white printing. Matplotlib's object API only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from traitlens.neurons.artifact import POLES, NeuronSet
from traitlens.report.figures import save_figure


def shown_rule(neurons: NeuronSet) -> str | None:
    """Which selection the figures draw: ``"fdr"`` (the set's rule), ``"npti"`` when no
    neuron survives the FDR test but NPTI's δ rule selects some (the rule edits then fall
    back to), or None when nothing is selected at all (nothing to draw)."""
    if int(neurons.counts().sum()):
        return "fdr"
    return "npti" if int(neurons.counts(npti_only=True).sum()) else None


def _rule(neurons: NeuronSet, rule: str = "fdr") -> str:
    if rule == "npti":
        fdr = f"none passes BH q ≤ {neurons.fdr:g}" if neurons.fdr is not None else ""
        return f"NPTI rule alone, |δ| ≥ {neurons.threshold:g}; {fdr}".rstrip("; ")
    fdr = "no FDR" if neurons.fdr is None else f"BH q ≤ {neurons.fdr:g}"
    return f"|δ| ≥ {neurons.threshold:g}, {fdr}"


def _stale(directory: str | Path, stem: str) -> list[Path]:
    """Nothing to draw: remove an older figure so it cannot stand in for this result."""
    for suffix in (".png", ".svg"):
        (Path(directory) / stem).with_suffix(suffix).unlink(missing_ok=True)
    return []


def plot_neuron_counts(neurons: NeuronSet, directory: str | Path) -> list[Path]:
    """Heatmap of selective-neuron counts, rows trait × pole, columns layers → PNG + SVG
    (none when no neuron is selected; NPTI's rule alone when none survives the FDR)."""
    rule = shown_rule(neurons)
    if rule is None:
        return _stale(directory, "neuron_counts")
    selected = neurons.counts(npti_only=rule == "npti")
    counts = selected.reshape(len(neurons.traits) * len(POLES), -1).numpy()
    labels = [f"{t} {'+' if p == 'high' else '−'}" for t in neurons.traits for p in POLES]
    fig = Figure(
        figsize=(max(5.0, 0.28 * counts.shape[1] + 2), 0.4 * len(labels) + 1.5),
        layout="constrained",
    )
    ax = fig.subplots()
    image = ax.imshow(counts, cmap="Greys", aspect="auto", interpolation="nearest", vmin=0)
    ax.set_yticks(range(len(labels)), labels)
    step = max(1, len(neurons.layers) // 15)
    ax.set_xticks(range(0, len(neurons.layers), step), [str(v) for v in neurons.layers[::step]])
    ax.set_xlabel("layer")
    ax.set_ylabel("trait, pole")
    ax.set_title(f"Trait-selective MLP neurons per layer ({_rule(neurons, rule)})", fontsize=10)
    fig.colorbar(image, ax=ax, label="neurons")
    return save_figure(fig, Path(directory) / "neuron_counts")


def plot_neuron_overlap(neurons: NeuronSet, directory: str | Path) -> list[Path]:
    """Jaccard overlap between the selected sets of every trait pole → PNG + SVG."""
    rule = shown_rule(neurons)
    if rule is None:
        return _stale(directory, "neuron_overlap")
    labels, matrix = neurons.jaccard(npti_only=rule == "npti")
    shown = [label.replace("|high", " +").replace("|low", " −") for label in labels]
    size = 0.55 * len(labels) + 2
    fig = Figure(figsize=(size + 1, size), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(np.nan_to_num(matrix, nan=0.0), cmap="Greys", vmin=0, vmax=1)
    ax.set_xticks(range(len(shown)), shown, rotation=90)
    ax.set_yticks(range(len(shown)), shown)
    for i in range(len(labels)):
        for j in range(len(labels)):
            value = matrix[i, j]
            text = "–" if np.isnan(value) else f"{value:.2f}"
            colour = "white" if not np.isnan(value) and value > 0.5 else "black"
            ax.text(j, i, text, ha="center", va="center", fontsize=6, color=colour)
    ax.set_title(f"Overlap of selective neurons (Jaccard; {_rule(neurons, rule)})", fontsize=10)
    fig.colorbar(image, ax=ax, label="Jaccard index")
    return save_figure(fig, Path(directory) / "neuron_overlap")
