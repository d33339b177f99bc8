"""Probe figures: held-out score against depth, per trait, with the control curve.

Matplotlib's object API (``Figure``, no pyplot) renders with Agg and never
touches a display or global state. Greyscale-safe: the probe is a solid black
line with dots, the control task a dashed grey line with crosses,
chance a dotted line; bands are ± 1 sd over folds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from traitlens.data import TRAIT_NAMES
from traitlens.probe.artifact import WHICH_TRAIT, CurveScores, ProbeSet
from traitlens.report.figures import save_figure

TRAIT_TITLES = {code: name.capitalize() for code, name in TRAIT_NAMES.items()}


def _band(ax: Axes, x: np.ndarray, mean: list[float], sd: list[float], **line: object) -> None:
    m = np.asarray(mean, dtype=float)
    s = np.nan_to_num(np.asarray(sd, dtype=float))
    ax.plot(x, m, **line)  # type: ignore[arg-type]
    ax.fill_between(x, m - s, m + s, color=str(line.get("color", "black")), alpha=0.15, lw=0)


def _panel(ax: Axes, layers: list[int], curve: CurveScores, title: str, depth: int | None) -> None:
    x = np.asarray(layers)
    _band(ax, x, curve.mean, curve.sd, color="black", marker="o", ms=3, lw=1.5, label="probe")
    _band(
        ax,
        x,
        curve.control_mean,
        curve.control_sd,
        color="0.55",
        ls="--",
        marker="x",
        ms=3,
        lw=1.2,
        label="control task",
    )
    ax.axhline(curve.chance, color="0.3", ls=":", lw=1, label="chance")
    if depth is not None:
        ax.axvline(depth, color="0.3", ls="-.", lw=0.8, label="90% of best")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)


def _depth_figure(probes: ProbeSet, task: str, ylabel: str, extra: bool) -> Figure:
    keys = list(probes.traits) + ([WHICH_TRAIT] if extra else [])
    ncols = min(3, len(keys))
    nrows = -(-len(keys) // ncols)
    fig = Figure(figsize=(3.6 * ncols, 2.8 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True)
    for ax, key in zip(axes.flat, keys, strict=False):
        if key == WHICH_TRAIT:
            curve, title = probes.scores["trait"][WHICH_TRAIT], "which trait (all)"
            depth = probes.depth_90(probes.traits[0], "trait")
        else:
            curve, title = probes.curve(key, task), TRAIT_TITLES.get(key, key)
            depth = probes.depth_90(key, task)
        _panel(ax, probes.layers, curve, title, depth)
        if curve.metric == "r2":  # R² of a useless probe is unbounded below; keep 0..1 readable
            ax.set_ylim(-1.05, 1.05)
    for ax in axes.flat[len(keys) :]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    for ax in axes[-1, :]:
        ax.set_xlabel(f"layer ({probes.kind}, {probes.pooling} pooling)")
    axes.flat[0].legend(fontsize=7, loc="best")
    return fig


def plot_probe_accuracy(probes: ProbeSet, directory: str | Path) -> list[Path]:
    """High-vs-low pole accuracy by depth per trait (+ the which-trait probe) → PNG + SVG."""
    fig = _depth_figure(probes, "binary", "held-out accuracy", extra="trait" in probes.scores)
    fig.suptitle(f"Trait pole probes — {probes.identity.name}", fontsize=11)
    return save_figure(fig, Path(directory) / "probe_accuracy")


def plot_probe_r2(probes: ProbeSet, directory: str | Path) -> list[Path]:
    """Intensity (1–5) regression R² by depth per trait → PNG + SVG (y clipped at −1)."""
    fig = _depth_figure(probes, "intensity", "held-out R²", extra=False)
    fig.suptitle(f"Trait intensity probes — {probes.identity.name}", fontsize=11)
    return save_figure(fig, Path(directory) / "probe_r2")
