"""``traitlens probe``: at which depth is each trait linearly decodable?"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from traitlens.cli.common import (
    FIGURES_OPTION,
    FORCE_OPTION,
    MAX_FOLDS,
    RUN_OPTION,
    RUN_TRAITS_OPTION,
    check_choice,
    check_int,
    check_run_dir,
    check_seed,
    check_traits,
    console,
    plot_into,
    reporting_stages,
)


def probe_cmd(
    run: Path = RUN_OPTION,
    kind: str = typer.Option("resid", "--kind", help="hook kind: resid or attn_out"),
    pooling: str = typer.Option("mean", "--pooling", help="mean, last or decay"),
    traits: str | None = RUN_TRAITS_OPTION,
    folds: int = typer.Option(5, "--folds", help="folds over questions and personas"),
    seed: int = typer.Option(0, "--seed"),
    figures: bool = FIGURES_OPTION,
    force: bool = FORCE_OPTION,
) -> None:
    """Fit per-layer probes (pole, intensity, which trait) with grouped CV and a control."""
    from traitlens.capture import POOLINGS
    from traitlens.capture.artifacts import Activations
    from traitlens.data import load_prompts
    from traitlens.errors import ArtifactError
    from traitlens.probe import probes_job
    from traitlens.provenance import persist

    check_choice("--kind", kind, ("resid", "attn_out"))
    check_choice("--pooling", pooling, POOLINGS)
    check_int("--folds", folds, 2, MAX_FOLDS, example=5)
    check_seed("--seed", seed)
    check_traits("--traits", traits)
    check_run_dir(run)
    prompts_path = run / "prompts.jsonl"
    if not prompts_path.exists():
        raise ArtifactError(f"{prompts_path} not found; run `traitlens capture --out {run}`")
    prompts = load_prompts(prompts_path)
    activations = Activations.load(run / "activations" / "question")
    with reporting_stages(run, ["probes"], figures) as folder:
        job = probes_job(
            activations, prompts, traits, kind=kind, pooling=pooling, folds=folds, seed=seed
        )
        probes = persist(job, run, force=force)
        _print_probe_summary(probes.summary(), f"{kind}.{pooling}", probes.config["folds"])
        if folder is not None:
            from traitlens.report.probe_figures import plot_probe_accuracy, plot_probe_r2

            plot_into(folder, "probe figures", probes, plot_probe_accuracy, plot_probe_r2)


def _print_probe_summary(summary: dict[str, Any], features: str, folds: int) -> None:
    """Per trait: the best layer's pole accuracy (with its control) and intensity R²."""
    console.print(f"probes on {features}, {folds}-fold grouped CV")
    for trait, row in summary["binary"].items():
        r2 = summary["intensity"][trait]
        console.print(
            f"  {trait}: pole accuracy {row['score']:.2f} ± {row['sd']:.2f} "
            f"(control {row['control']:.2f}) at layer {row['best_layer']}, "
            f"90% by layer {row['depth_90']}; intensity R² {r2['score']:.2f}"
        )
    if "trait" in summary:
        row = next(iter(summary["trait"].values()))
        console.print(
            f"  which trait: accuracy {row['score']:.2f} (control {row['control']:.2f}) "
            f"at layer {row['best_layer']}"
        )


def register(app: typer.Typer) -> None:
    app.command("probe")(probe_cmd)
