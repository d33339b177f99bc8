"""The sweep's page: effect-vs-cost curves per trait with the Pareto front and the
calibrated point, and a table comparing calibrated steering with the persona prompt
and the hybrid at the same fluency budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from traitlens.errors import DataError
from traitlens.report.figures import save_figure
from traitlens.report.html import Section, Table, write_page
from traitlens.steer.calibrate import calibrate, finite, pareto_front

MARKERS = {"mean_diff": "o", "neurons": "s", "hybrid": "^", "prompt": "D"}


def _ok(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("status") == "ok"]


def plot_curves(
    rows: list[dict[str, Any]], budget: float, directory: Path, model: str, pole: str
) -> Path:
    """Per trait: target readout shift against perplexity ratio (log), every method's
    cells (controls hollow grey), each method's Pareto front, the persona prompt, the
    budget line and the calibrated point (★ outline)."""
    ok = [r for r in _ok(rows) if r["model"] == model and r["pole"] == pole]
    traits = sorted({r["trait"] for r in ok}, key="OCEAN".index)
    fig = Figure(figsize=(3.3 * max(1, len(traits)), 3.4))
    axes = np.atleast_1d(fig.subplots(1, max(1, len(traits))))
    methods = sorted({r["method"] for r in ok})
    shades = dict(zip(methods, np.linspace(0.0, 0.6, max(2, len(methods))), strict=False))
    for ax, trait in zip(axes, traits, strict=False):
        mine = [r for r in ok if r["trait"] == trait]
        for method in methods:
            cells = [r for r in mine if r["method"] == method]
            real = [r for r in cells if not r["control"] and finite(r["perplexity_ratio"])]
            control = [r for r in cells if r["control"] and finite(r["perplexity_ratio"])]
            colour = str(shades[method])
            marker = MARKERS.get(method, "X")
            ax.scatter(
                [r["perplexity_ratio"] for r in real],
                [r["target_readout_shift"] for r in real],
                marker=marker,
                color=colour,
                s=60 if method == "prompt" else 18,
                label=method,
                zorder=3,
            )
            if control:
                ax.scatter(
                    [r["perplexity_ratio"] for r in control],
                    [r["target_readout_shift"] for r in control],
                    marker=marker,
                    facecolors="none",
                    edgecolors="grey",
                    s=14,
                    zorder=2,
                )
            front = pareto_front(real, "target_readout_shift")
            if len(front) > 1:
                ax.plot(
                    [p["perplexity_ratio"] for p in front],
                    [p["target_readout_shift"] for p in front],
                    color=colour,
                    linewidth=0.8,
                )
            if method not in ("prompt", "neurons"):
                try:
                    chosen = calibrate(
                        rows, trait, pole, method=method, max_ppl_ratio=budget, model=model
                    )
                except DataError:
                    continue
                ax.scatter(
                    [chosen.perplexity_ratio],
                    [chosen.effect],
                    marker="*",
                    s=160,
                    facecolors="none",
                    edgecolors="black",
                    linewidths=1.2,
                    zorder=4,
                )
        ax.axvline(budget, color="black", linestyle=":", linewidth=0.8)
        ax.axhline(0, color="grey", linewidth=0.5)
        ax.set_xscale("log")
        ax.set_title(f"{trait} {pole}", fontsize=9)
        ax.set_xlabel("perplexity ratio")
    axes[0].set_ylabel("target readout shift (toward pole)")
    axes[0].legend(fontsize=6)
    return save_figure(fig, directory / f"calibration_{model_id(model)}_{pole}")[0]


def comparison_rows(
    rows: list[dict[str, Any]], budget: float, model: str, pole: str
) -> list[dict[str, Any]]:
    """Per trait and method: the calibrated cell within ``budget`` (or why none), next to
    the persona prompt — the numbers the closing note quotes."""
    ok = [r for r in _ok(rows) if r["model"] == model and r["pole"] == pole]
    out = []
    for trait in sorted({r["trait"] for r in ok}, key="OCEAN".index):
        prompt = next((r for r in ok if r["trait"] == trait and r["method"] == "prompt"), None)
        for method in sorted({r["method"] for r in ok if r["trait"] == trait} - {"prompt"}):
            row: dict[str, Any] = {"trait": trait, "method": method}
            try:
                c = calibrate(rows, trait, pole, method=method, max_ppl_ratio=budget, model=model)
            except DataError as exc:
                row["chosen"] = str(exc).split(";")[0]
            else:
                size = f"{c.strength:+g}σ" if c.strength is not None else f"γ {c.gamma:g}"
                row.update(
                    {
                        "chosen": f"layers {c.band}, {size}",
                        "readout Δ": c.effect,
                        "control Δ": c.control_effect,
                        "perplexity ×": c.perplexity_ratio,
                        "beats control": "yes" if c.beats_control else "NO",
                    }
                )
            if prompt is not None:
                row["prompt readout Δ"] = prompt["target_readout_shift"]
                row["prompt perplexity ×"] = prompt["perplexity_ratio"]
            out.append(row)
    return out


def build_sweep_report(out: Path, rows: list[dict[str, Any]], budget: float = 1.5) -> Path:
    """``OUT/sweep.html`` with one curve figure and one comparison table per model × pole."""
    figures = out / "figures"
    sections = []
    failed = [r for r in rows if r.get("status") != "ok"]
    for model in sorted({r["model"] for r in _ok(rows)}):
        for pole in sorted({r["pole"] for r in _ok(rows) if r["model"] == model}):
            figure = plot_curves(rows, budget, figures, model, pole)
            table = comparison_rows(rows, budget, model, pole)
            sections.append(
                Section(
                    f"{model_id(model)}-{pole}",
                    f"{model}: {pole} pole",
                    [
                        f"Each point is a cell: target readout shift toward the {pole} pole (probe "
                        "units, held-out prompts) against the perplexity ratio of neutral text. "
                        "Hollow grey: the same-size control (random direction / random neurons). "
                        f"Lines: each method's Pareto front. ★: the calibrated cell within "
                        f"perplexity ×{budget:g} (dotted line). Strengths: spread units per layer.",
                    ],
                    figures=[(figure, f"Effect against cost, {model}, {pole}")],
                    tables=[Table(f"Calibrated within perplexity ×{budget:g}", table)],
                )
            )
    summary = [
        f"{len(_ok(rows))} cells measured, {len(failed)} failed.",
        *(f"failed: {r['model']} {r['name']}: {r.get('error')}" for r in failed[:10]),
    ]
    sections.insert(0, Section("summary", "Sweep", summary))
    return write_page(out / "sweep.html", "traitlens sweep", sections)


def model_id(model: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in model).strip("-") or "model"
