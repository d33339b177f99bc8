"""Fingerprint figures: one function per figure, each drawn from ``fingerprint.json`` alone.

Every figure must survive a greyscale printer: models are told apart by hatch
and marker as well as grey level, axes by marker and line style, and heatmaps
use the ``Greys`` colour map with the numbers written in the cells.

Matplotlib's object API only (``Figure``, no pyplot): drawing a report never
switches the user's backend, opens a window or keeps figures alive in pyplot's
registry.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.projections.polar import PolarAxes

Doc = dict[str, Any]
GREYS = ("0.15", "0.55", "0.8", "0.35", "0.95")
HATCHES = ("", "//", "..", "xx", "\\\\")
MARKERS = ("o", "s", "^", "D", "v")
LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1)))


def _series(k: int) -> dict[str, Any]:
    """Line style of the ``k``-th series: black, told apart by marker and dash so the
    figure reads in greyscale."""
    return {"color": "black", "marker": MARKERS[k % 5], "linestyle": LINESTYLES[k % 5]}


def _titled(
    ax: Axes, title: str, ylabel: str, *, xlabel: str | None = None, legend: int | None = None
) -> None:
    """A panel's labels (a small title: panels share figures) and, with ``legend`` (its
    font size), a frameless legend."""
    if xlabel is not None:
        ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    if legend is not None:
        ax.legend(frameon=False, fontsize=legend)


def _guides(
    ax: Axes,
    levels: tuple[float, ...],
    *,
    color: str = "0.5",
    linestyle: str = ":",
    linewidth: float = 0.8,
) -> None:
    """Horizontal reference lines (chance, thresholds): thin, grey and dotted unless told
    otherwise, so they do not read as data."""
    for level in levels:
        ax.axhline(level, color=color, linestyle=linestyle, linewidth=linewidth)


def _models(doc: Doc) -> list[dict[str, Any]]:
    return list(doc["models"])


def _names(doc: Doc) -> list[str]:
    return [m["model"]["name"] for m in _models(doc)]


def _axes(doc: Doc) -> list[str]:
    return list(doc["config"]["axes"])


def _label(doc: Doc, axis: str, sep: str = "\n") -> str:
    """``E`` + the trait's name: ticks get two lines, legends one (``sep=" "``)."""
    return f"{axis}{sep}{doc.get('axis_names', {}).get(axis, '')}".strip()


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _grouped_bars(
    ax: Any,
    doc: Doc,
    values: list[list[float]],
    errors: list[list[tuple[float, float]]] | None,
    short: bool = False,
) -> None:
    """Bars grouped by axis, one bar per model (grey level + hatch per model)."""
    axes, names = _axes(doc), _names(doc)
    width = 0.8 / len(names)
    x = np.arange(len(axes))
    for m, name in enumerate(names):
        offsets = x - 0.4 + width * (m + 0.5)
        heights = np.array(values[m], dtype=float)
        yerr = None
        if errors is not None:
            lower = heights - np.array([e[0] for e in errors[m]], dtype=float)
            upper = np.array([e[1] for e in errors[m]], dtype=float) - heights
            yerr = np.vstack([lower, upper])
        ax.bar(
            offsets,
            heights,
            width,
            yerr=yerr,
            capsize=3,
            label=name,
            color=GREYS[m % len(GREYS)],
            hatch=HATCHES[m % len(HATCHES)],
            edgecolor="black",
            linewidth=0.7,
        )
    ax.set_xticks(x, axes if short else [_label(doc, a) for a in axes])  # short: narrow panels
    ax.axhline(0, color="black", linewidth=0.8)


def _per_axis(doc: Doc, section: str, key: str) -> list[list[float]]:
    """``model[section][axis][key]`` as numbers, a row per model and a column per axis:
    what :func:`_grouped_bars` draws."""
    return [[_num(m[section][a][key]) for a in _axes(doc)] for m in _models(doc)]


def _bar_pair(
    doc: Doc, height: float, section: str, keys: tuple[str, str]
) -> tuple[Figure, Any, Any]:
    """``(figure, left, right)``: two narrow panels of grouped bars, ``section``'s
    ``keys[0]`` on the left and ``keys[1]`` on the right."""
    fig = Figure(figsize=(10, height))
    left, right = fig.subplots(1, 2)
    for panel, key in zip((left, right), keys, strict=True):
        _grouped_bars(panel, doc, _per_axis(doc, section, key), None, short=True)
    return fig, left, right


def profile_bars(doc: Doc) -> Figure:
    """Baseline profile per axis and model: median score with its 95% bootstrap CI."""
    fig = Figure(figsize=(7.5, 3.8))
    ax = fig.subplots()
    values = _per_axis(doc, "profile", "median")
    errors = [
        [tuple(_num(c) for c in m["profile"][a]["ci"]) for a in _axes(doc)] for m in _models(doc)
    ]
    _grouped_bars(ax, doc, values, errors)  # type: ignore[arg-type]
    ax.set_ylabel("score (calibration IQR units)")
    ax.set_title("Default personality profile (no system prompt)")
    _guides(ax, (-0.5, 0.5), linewidth=0.6)
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def profile_radar(doc: Doc) -> Figure:
    """The same profile on a radar chart; the band is the 95% CI."""
    axes = _axes(doc)
    angles = np.linspace(0, 2 * np.pi, len(axes), endpoint=False)
    closed = np.concatenate([angles, angles[:1]])
    fig = Figure(figsize=(5, 5))
    ax = cast(PolarAxes, fig.add_subplot(projection="polar"))
    for m, model in enumerate(_models(doc)):
        med = np.array([_num(model["profile"][a]["median"]) for a in axes])
        lo = np.array([_num(model["profile"][a]["ci"][0]) for a in axes])
        hi = np.array([_num(model["profile"][a]["ci"][1]) for a in axes])
        ax.plot(
            closed,
            np.append(med, med[0]),
            **_series(m),
            label=model["model"]["name"],
        )
        ax.fill_between(
            closed,
            np.append(lo, lo[0]),
            np.append(hi, hi[0]),
            color=GREYS[(m + 1) % len(GREYS)],
            alpha=0.35,
        )
    ax.set_xticks(angles, [_label(doc, a) for a in axes])
    ax.set_rlabel_position(180 / len(axes))  # radial tick labels between two spokes
    ax.set_title("Profile (calibration IQR units; 0 = middle of the calibrated range)", fontsize=9)
    ax.legend(loc="lower left", bbox_to_anchor=(-0.15, -0.15), frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def calibration_quality(doc: Doc) -> Figure:
    """Held-out (split by question) pole accuracy and d′ per axis."""
    fig, left, right = _bar_pair(doc, 3.6, "calibration", ("accuracy", "d_prime"))
    _guides(left, (0.5,), color="0.4", linestyle="--")  # chance
    left.set_ylim(0, 1.05)
    _titled(
        left,
        "Calibration: does the axis tell the poles apart\non new questions?",
        "held-out accuracy",
        legend=8,
    )
    _titled(right, "Separation of the poles (d′)", "held-out d′")
    fig.tight_layout()
    return fig


def _heatmap(
    ax: Any,
    matrix: np.ndarray,
    rows: list[str],
    cols: list[str],
    vmin: float,
    vmax: float,
    fmt: str = "{:.2f}",
) -> None:
    ax.imshow(matrix, cmap="Greys", vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows)
    middle = (vmin + vmax) / 2
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            value = matrix[i, j]
            text = "–" if not np.isfinite(value) else fmt.format(value)
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=8,
                color="white" if np.isfinite(value) and value > middle else "black",
            )


def dead_zones(doc: Doc) -> Figure:
    """Dead-zone score per model and axis (0 fine … 1 dead); arrows mark one-way following."""
    models, axes = _models(doc), _axes(doc)
    matrix = np.array([[_num(m["dead_zones"][a]["score"]) for a in axes] for m in models])
    fig = Figure(figsize=(1.4 * len(axes) + 2.5, 0.6 * len(models) + 1.8))
    ax = fig.subplots()
    _heatmap(ax, matrix, _names(doc), [_label(doc, a) for a in axes], 0.0, 1.0)
    for i, model in enumerate(models):
        for j, axis in enumerate(axes):
            info = model["asymmetry"].get(axis) or {}
            if info.get("asymmetric"):
                mark = "↑ only" if info.get("follows_up") else "↓ only"
                ax.text(j, i + 0.32, mark, ha="center", va="center", fontsize=7, color="0.45")
    ax.set_title(
        "Dead-zone score (mean of weak accuracy, low d′, unstable axis, low SNR)", fontsize=9
    )
    fig.tight_layout()
    return fig


def instruction_shifts(doc: Doc) -> Figure:
    """How far 'be more X' and 'be less X' move answers from baseline, per axis and model."""
    models, axes = _models(doc), _axes(doc)
    fig = Figure(figsize=(5 * len(models), 3.4))
    panels = fig.subplots(1, len(models), squeeze=False)
    for panel, model in zip(panels[0], models, strict=True):
        x = np.arange(len(axes))
        info = [model["asymmetry"].get(a) or {} for a in axes]
        for offset, key, grey, hatch, label in (
            (-0.2, "shift_up", "0.3", "", "more X − baseline"),
            (0.2, "shift_down", "0.85", "//", "baseline − less X"),
        ):
            values = np.array([_num(i.get(key)) for i in info])
            cis = [i.get(f"{key}_ci") or [np.nan, np.nan] for i in info]
            yerr = np.array(
                [
                    values - np.array([_num(c[0]) for c in cis]),
                    np.array([_num(c[1]) for c in cis]) - values,
                ]
            )
            panel.bar(
                x + offset,
                values,
                0.4,
                yerr=yerr,
                capsize=3,
                color=grey,
                hatch=hatch,
                edgecolor="black",
                label=label,
            )
        _guides(panel, (0.25,), color="black")
        panel.axhline(0, color="black", linewidth=0.8)
        panel.set_xticks(x, axes)  # narrow panels: codes only
        title = f"{model['model']['name']}: instruction following"
        _titled(panel, title, "paired median shift (IQR units)", legend=7)
    fig.tight_layout()
    return fig


def reliability(doc: Doc) -> Figure:
    """Test–retest over sampling seeds: ICC(2,1) per axis (questions × seeds)."""
    fig = Figure(figsize=(7.5, 3.4))
    ax = fig.subplots()
    values = [
        [_num(m["reliability"]["per_axis"][a]["icc2_1"]) for a in _axes(doc)] for m in _models(doc)
    ]
    _grouped_bars(ax, doc, values, None)
    for level, text in ((0.5, "moderate"), (0.75, "good")):
        _guides(ax, (level,))
        ax.text(len(_axes(doc)) - 0.5, level, text, fontsize=7, va="bottom", ha="right")
    ax.set_ylim(min(-0.2, np.nanmin(np.array(values, dtype=float), initial=0) - 0.05), 1.0)
    _titled(ax, "Test–retest reliability across sampling seeds", "ICC(2,1)", legend=8)
    fig.tight_layout()
    return fig


def drift(doc: Doc, model_index: int = 0) -> Figure:
    """Profile per turn along each scripted conversation; conflict turns are shaded."""
    model = _models(doc)[model_index]
    scenarios = model.get("drift") or {}
    columns = max(1, len(scenarios))
    fig = Figure(figsize=(6 * columns, 3.6))
    panels = fig.subplots(1, columns, squeeze=False)
    for panel, (name, info) in zip(panels[0], scenarios.items(), strict=False):
        n = len(info["user_turns"])
        turns = np.arange(1, n + 1)
        for t in info.get("conflict_turns", []):
            panel.axvspan(t - 0.5, t + 0.5, color="0.88", zorder=0)
        for k, (axis, values) in enumerate(info["axes"].items()):
            series = np.array([_num(v) for v in values["scores"]])
            panel.plot(
                turns,
                series,
                **_series(k),
                linewidth=1,
                markersize=4,
                label=_label(doc, axis, " "),
            )
        panel.axhline(0, color="0.5", linewidth=0.6)
        panel.set_xticks(turns)
        title = f"{model['model']['name']} — {name}"
        _titled(panel, title, "score (IQR units)", xlabel="turn (shaded: conflict)")
    handles, labels = panels[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper right", frameon=False, fontsize=7)
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    return fig


def pca_dimensions(doc: Doc) -> Figure:
    """Explained variance of the principal components of per-answer axis scores."""
    fig = Figure(figsize=(5.5, 3.4))
    ax = fig.subplots()
    for m, model in enumerate(_models(doc)):
        ratios = model["structure"].get("pca_explained_variance")
        if not ratios:
            continue
        k = np.arange(1, len(ratios) + 1)
        ax.plot(
            k,
            np.cumsum(ratios),
            **_series(m),
            label=f"{model['model']['name']} "
            f"(PR={_num(model['structure']['participation_ratio']):.2f})",
        )
    _guides(ax, (0.9,))
    ax.set_ylim(0, 1.02)
    _titled(
        ax,
        "How many dimensions do the answers use?",
        "cumulative explained variance",
        xlabel="number of components",
        legend=7,
    )
    fig.tight_layout()
    return fig


def axis_geometry(doc: Doc, model_index: int = 0) -> Figure:
    """Axis-to-axis cosine of directions next to the correlation of the projections."""
    model = _models(doc)[model_index]
    labels = [a for a in _axes(doc)]
    fig = Figure(figsize=(9, 3.8))
    left, right = fig.subplots(1, 2)
    structure = model["structure"]
    if structure.get("axis_cosine"):
        cos = np.array(structure["axis_cosine"], dtype=float)
        corr = np.array([[_num(v) for v in row] for row in structure["projection_correlation"]])
        _heatmap(left, np.abs(cos), labels, labels, 0, 1)
        for i in range(len(labels)):
            for j in range(len(labels)):
                left.texts[i * len(labels) + j].set_text(f"{cos[i, j]:.2f}")
        _heatmap(right, np.abs(corr), labels, labels, 0, 1)
        for i in range(len(labels)):
            for j in range(len(labels)):
                value = corr[i, j]
                right.texts[i * len(labels) + j].set_text(
                    "–" if not np.isfinite(value) else f"{value:.2f}"
                )
    left.set_title(f"{model['model']['name']}: cosine of axis directions", fontsize=9)
    right.set_title("correlation of projections over answers", fontsize=9)
    fig.tight_layout()
    return fig


def length_confound(doc: Doc) -> Figure:
    """Correlation of each axis with answer length (tokens): baseline and within-pole."""
    fig, left, right = _bar_pair(doc, 3.4, "length", ("r_baseline", "r_calibration_within_pole"))
    for panel, title in ((left, "baseline answers"), (right, "calibration answers, within pole")):
        panel.set_ylim(-1, 1)
        _titled(panel, f"Length confound: {title}", "Pearson r with length")
        _guides(panel, (-0.3, 0.3))
    left.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


FIGURES: dict[str, Callable[[Doc], Figure]] = {
    "profile_bars": profile_bars,
    "profile_radar": profile_radar,
    "calibration": calibration_quality,
    "dead_zones": dead_zones,
    "instruction_shifts": instruction_shifts,
    "reliability": reliability,
    "pca": pca_dimensions,
    "length_confound": length_confound,
}
PER_MODEL: dict[str, Callable[[Doc, int], Figure]] = {
    "drift": drift,
    "axis_geometry": axis_geometry,
}


def model_slug(name: str) -> str:
    """File-name-safe model name used for per-model figure names."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in name)


def save_figures(doc: Doc, directory: str | Path, dpi: int = 110) -> dict[str, Path]:
    """Draw every figure as PNG into ``directory``; returns ``{name: path}`` in report order."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}

    def save(name: str, fig: Figure) -> None:
        path = out / f"{name}.png"
        fig.savefig(path, dpi=dpi)
        paths[name] = path

    for name, draw in FIGURES.items():
        save(name, draw(doc))
    for index, model in enumerate(_models(doc)):
        slug = model_slug(model["model"]["name"])
        for name, draw_model in PER_MODEL.items():
            save(f"{name}__{slug}", draw_model(doc, index))
    return paths
