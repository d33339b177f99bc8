"""Figures for the evaluation of interventions (one function per figure, greyscale-safe).

Each function takes the ``eval.json`` dictionary and an output directory and
returns the PNG path (an SVG is written beside it). Matplotlib's object API only
(``Figure`` + ``savefig``): it needs no pyplot backend, so importing this module
never changes the caller's backend and figures render headless.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from traitlens.report.figures import save_figure

HATCHES = {"real": "", "control": "///", "prompt": ".."}


def _save(fig: Figure, directory: Path, stem: str) -> Path:
    return save_figure(fig, directory / stem, dpi=110)[0]


def _main_rows(evaluation: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in evaluation["results"] if not r.get("dose")]


def _rows(evaluation: dict[str, Any], method: str, control: bool) -> dict[tuple[str, str], Any]:
    return {
        (r["trait"], r["pole"]): r
        for r in _main_rows(evaluation)
        if r["method"] == method and bool(r["control"]) == control
    }


def plot_success_rates(evaluation: dict[str, Any], directory: Path) -> Path:
    """Targeted success rate per trait and pole: each method next to its control."""
    traits = evaluation["traits"]
    methods = [m for m in evaluation["config"]["eval_methods"]] + ["prompt"]
    labels = [f"{t}{'+' if p == 'high' else '−'}" for t in traits for p in ("high", "low")]
    series: list[tuple[str, str, list[float], list[tuple[float, float]]]] = []
    for method in methods:
        for control in (False, True) if method != "prompt" else (False,):
            rows = _rows(evaluation, method, control)
            values, errors = [], []
            for trait in traits:
                for pole in ("high", "low"):
                    success = rows.get((trait, pole), {}).get("success", {})
                    rate = success.get("rate", np.nan)
                    ci = success.get("ci", {})
                    values.append(rate)
                    errors.append((rate - ci.get("low", rate), ci.get("high", rate) - rate))
            kind = "control" if control else ("prompt" if method == "prompt" else "real")
            series.append((f"{method}{' (control)' if control else ''}", kind, values, errors))
    fig = Figure(figsize=(max(7, len(labels) * 0.9), 3.6))
    ax = fig.subplots()
    width = 0.8 / max(1, len(series))
    x = np.arange(len(labels))
    greys = np.linspace(0.15, 0.8, max(2, len(series)))
    for index, (name, kind, values, errors) in enumerate(series):
        err = np.nan_to_num(np.array(errors).T, nan=0.0).clip(min=0)
        ax.bar(
            x + index * width - 0.4 + width / 2,
            values,
            width,
            yerr=err,
            capsize=2,
            label=name,
            color=str(greys[index]),
            edgecolor="black",
            hatch=HATCHES[kind],
        )
    ax.set_xticks(x, labels)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("targeted success rate")
    ax.set_title("Held-out prompts whose probe readout crosses to the target pole")
    ax.legend(fontsize=7, ncol=3)
    return _save(fig, directory, "success_rates")


def _spill_matrix(evaluation: dict[str, Any], method: str, field: str) -> np.ndarray:
    traits = evaluation["traits"]
    rows = _rows(evaluation, method, False)
    matrix = np.full((len(traits), len(traits)), np.nan)
    for i, trait in enumerate(traits):
        row = rows.get((trait, "high"))
        if row is None:
            continue
        for j, other in enumerate(traits):
            matrix[i, j] = row[field][other]["shift"]
    return matrix


def plot_spillover(evaluation: dict[str, Any], directory: Path, method: str = "mean_diff") -> Path:
    """5×5 shift matrices (intervene on row trait toward high, read column trait):
    probe readout (representation) and questionnaire score (behaviour)."""
    traits = evaluation["traits"]
    fig = Figure(figsize=(9, 4))
    axes = fig.subplots(1, 2)
    for ax, field, title in (
        (axes[0], "readout_shift", "probe readout shift (logit)"),
        (axes[1], "questionnaire_shift", "questionnaire shift (1–5)"),
    ):
        matrix = _spill_matrix(evaluation, method, field)
        bound = float(np.nanmax(np.abs(matrix))) if np.isfinite(matrix).any() else 1.0
        image = ax.imshow(matrix, cmap="RdGy_r", vmin=-bound, vmax=bound)
        for i in range(len(traits)):
            for j in range(len(traits)):
                if np.isfinite(matrix[i, j]):
                    ax.text(
                        j,
                        i,
                        f"{matrix[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if abs(matrix[i, j]) > bound * 0.6 else "black",
                    )
        ax.set_xticks(range(len(traits)), traits)
        ax.set_yticks(range(len(traits)), [f"+{t}" for t in traits])
        ax.set_xlabel("trait read")
        ax.set_ylabel("trait steered (toward high)")
        ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.suptitle(f"Spillover of {method} steering", fontsize=10)
    return _save(fig, directory, f"spillover_{method}")


def plot_behaviour_shifts(evaluation: dict[str, Any], directory: Path) -> Path:
    """Signed target-trait questionnaire and forced-choice shifts, real vs control vs prompt."""
    traits = evaluation["traits"]
    methods = list(evaluation["config"]["eval_methods"]) + ["prompt"]
    fig = Figure(figsize=(11, 3.6))
    axes = fig.subplots(1, 2)
    for ax, field, title in (
        (axes[0], "target_questionnaire_shift", "questionnaire (1–5 scale)"),
        (axes[1], "target_forced_choice_shift", "forced choice P(high)"),
    ):
        labels = [f"{t}{'+' if p == 'high' else '−'}" for t in traits for p in ("high", "low")]
        x = np.arange(len(labels))
        series = [(m, c) for m in methods for c in ((False, True) if m != "prompt" else (False,))]
        width = 0.8 / len(series)
        greys = np.linspace(0.15, 0.8, max(2, len(series)))
        for index, (method, control) in enumerate(series):
            rows = _rows(evaluation, method, control)
            values = [
                rows.get((t, p), {}).get(field, np.nan) for t in traits for p in ("high", "low")
            ]
            kind = "control" if control else ("prompt" if method == "prompt" else "real")
            ax.bar(
                x + index * width - 0.4 + width / 2,
                values,
                width,
                color=str(greys[index]),
                edgecolor="black",
                hatch=HATCHES[kind],
                label=f"{method}{' (control)' if control else ''}",
            )
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(x, labels)
        ax.set_title(f"shift toward the target pole: {title}", fontsize=9)
    axes[0].legend(fontsize=7)
    return _save(fig, directory, "behaviour_shifts")


def plot_dose_response(evaluation: dict[str, Any], directory: Path) -> Path:
    """Per dose-trait: signed readout shift, questionnaire shift and perplexity ratio
    against strength (directions, both signs) — the curve to pick a strength from."""
    doses = [r for r in evaluation["results"] if r.get("dose") and r["method"] != "neurons"]
    traits = sorted({r["trait"] for r in doses})
    fig = Figure(figsize=(12, 3.4))
    axes = fig.subplots(1, 3)
    markers = "osd^v<>"
    for index, trait in enumerate(traits):
        rows = sorted((r for r in doses if r["trait"] == trait), key=lambda r: r["strength"])
        s = [0.0] + [r["strength"] for r in rows]
        read = [0.0] + [r["readout_shift"][trait]["shift"] for r in rows]
        quest = [0.0] + [r["questionnaire_shift"][trait]["shift"] for r in rows]
        ppl = [1.0] + [r["perplexity_ratio"] for r in rows]
        order = np.argsort(s)
        for ax, values in zip(axes, (read, quest, ppl), strict=True):
            ax.plot(
                np.array(s)[order],
                np.array(values)[order],
                marker=markers[index % 7],
                color="black",
                linestyle=["-", "--", ":", "-."][index % 4],
                label=trait,
            )
    for ax, title in zip(
        axes, ("probe readout shift", "questionnaire shift", "perplexity ratio (cost)"), strict=True
    ):
        ax.set_xlabel("strength (spread units per layer; − = low pole)")
        ax.set_title(title, fontsize=9)
        ax.axvline(0, color="grey", linewidth=0.5)
    axes[0].legend(fontsize=7)
    return _save(fig, directory, "dose_response")


def plot_representation_vs_behaviour(evaluation: dict[str, Any], directory: Path) -> Path:
    """Each intervention as a point: representational shift (x) vs behavioural shift (y).
    Points far right but near y=0 are the gap: the probe moved, behaviour did not."""
    fig = Figure(figsize=(5.2, 4.2))
    ax = fig.subplots()
    styles = {"real": ("o", "black"), "control": ("x", "grey"), "prompt": ("s", "white")}
    for kind in styles:
        rows = [
            r
            for r in _main_rows(evaluation)
            if ("control" if r["control"] else ("prompt" if r["method"] == "prompt" else "real"))
            == kind
        ]
        x = [r.get("target_readout_shift", np.nan) for r in rows]
        y = [r.get("target_questionnaire_shift", np.nan) for r in rows]
        marker, colour = styles[kind]
        edge = None if marker in ("x", "+") else "black"  # line markers have no edge
        ax.scatter(x, y, marker=marker, c=colour, edgecolors=edge, label=kind, s=30)
    ax.axhline(0, color="grey", linewidth=0.5)
    ax.axvline(0, color="grey", linewidth=0.5)
    ax.set_xlabel("target probe readout shift (logit, toward target)")
    ax.set_ylabel("target questionnaire shift (toward target)")
    ax.set_title("Representation vs behaviour", fontsize=10)
    ax.legend(fontsize=7)
    return _save(fig, directory, "representation_vs_behaviour")


def plot_cost(evaluation: dict[str, Any], directory: Path) -> Path | None:
    """What each intervention costs: perplexity ratio (left, log scale) and change in
    multiple-choice accuracy with its paired CI (right), every method next to its
    control. ``None`` when the study measured no capability (capability_items: 0)."""
    rows = [r for r in _main_rows(evaluation) if "capability_change" in r]
    if not rows:
        return None
    traits = evaluation["traits"]
    labels = [f"{t}{'+' if p == 'high' else '−'}" for t in traits for p in ("high", "low")]
    methods = [m for m in evaluation["config"]["eval_methods"]]
    series = [(m, c) for m in methods for c in (False, True)]
    fig = Figure(figsize=(max(9, len(labels) * 1.3), 3.6))
    axes = fig.subplots(1, 2)
    width = 0.8 / max(1, len(series))
    x = np.arange(len(labels))
    greys = np.linspace(0.15, 0.8, max(2, len(series)))
    for index, (method, control) in enumerate(series):
        found = _rows(evaluation, method, control)
        keys = [(t, p) for t in traits for p in ("high", "low")]
        ppl = [found.get(k, {}).get("perplexity_ratio", np.nan) for k in keys]
        change = [found.get(k, {}).get("capability_change", {}) for k in keys]
        values = [c.get("shift", np.nan) for c in change]
        errors = [
            (v - c.get("ci", {}).get("low", v), c.get("ci", {}).get("high", v) - v)
            for v, c in zip(values, change, strict=True)
        ]
        style = {
            "color": str(greys[index]),
            "edgecolor": "black",
            "hatch": HATCHES["control" if control else "real"],
            "label": f"{method}{' (control)' if control else ''}",
        }
        offset = x + index * width - 0.4 + width / 2
        axes[0].bar(offset, ppl, width, **style)
        err = np.nan_to_num(np.array(errors).T, nan=0.0).clip(min=0)
        axes[1].bar(offset, values, width, yerr=err, capsize=2, **style)
    axes[0].set_yscale("log")
    axes[0].axhline(1, color="black", linewidth=0.8)
    axes[0].set_ylabel("perplexity ratio (steered / unsteered)")
    n_items = evaluation.get("n_eval", {}).get("capability_items", "?")
    base = evaluation.get("baseline", {}).get("capability")
    axes[1].axhline(0, color="black", linewidth=0.8)
    axes[1].set_ylabel("Δ accuracy (steered − unsteered)")
    axes[1].set_title(
        f"multiple-choice accuracy, {n_items} items"
        + (f" (unsteered {base:.2f})" if base is not None else ""),
        fontsize=9,
    )
    axes[0].set_title("perplexity of neutral text", fontsize=9)
    for ax in axes:
        ax.set_xticks(x, labels)
    axes[1].legend(fontsize=7, ncol=2)
    return _save(fig, directory, "cost")
