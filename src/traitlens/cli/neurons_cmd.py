"""``traitlens neurons``: which MLP neurons are trait-selective, where, how overlapping?"""

from __future__ import annotations

from pathlib import Path

import typer

from traitlens.cli.common import (
    FIGURES_OPTION,
    FORCE_OPTION,
    RUN_OPTION,
    RUN_TRAITS_OPTION,
    check_choice,
    check_float,
    check_run_dir,
    check_traits,
    console,
    plot_into,
    reporting_stages,
)


def neurons_cmd(
    run: Path = RUN_OPTION,
    threshold: float = typer.Option(0.1, "--threshold", help="NPTI's |δ| threshold"),
    fdr: float = typer.Option(0.05, "--fdr", help="Benjamini–Hochberg FDR level"),
    no_fdr: bool = typer.Option(False, "--no-fdr", help="NPTI's δ rule alone, no test"),
    traits: str | None = RUN_TRAITS_OPTION,
    effective_n: str = typer.Option(
        "prompts", "--effective-n", help="n of the z-test: prompts (conservative) or tokens"
    ),
    figures: bool = FIGURES_OPTION,
    force: bool = FORCE_OPTION,
) -> None:
    """Select trait-selective neurons (NPTI δ rule + z-test with BH FDR control)."""
    from traitlens.capture.artifacts import NeuronStats
    from traitlens.data import load_prompts
    from traitlens.errors import ArtifactError
    from traitlens.neurons import neurons_job, prompts_per_group
    from traitlens.provenance import persist

    check_float(
        "--threshold", threshold, 0.0, 1.0, low_open=True, high_open=True, hint="NPTI uses 0.1"
    )
    if not no_fdr:
        check_float("--fdr", fdr, 0.0, 1.0, low_open=True, hint="e.g. --fdr 0.05")
    check_choice("--effective-n", effective_n, ("prompts", "tokens"))
    check_traits("--traits", traits)
    check_run_dir(run)
    stats = NeuronStats.load(run / "activations" / "answer")
    counts = None
    if effective_n == "prompts":
        prompts_path = run / "prompts.jsonl"
        if not prompts_path.exists():
            raise ArtifactError(
                f"{prompts_path} not found; rerun capture, or pass --effective-n tokens"
            )
        counts = prompts_per_group(load_prompts(prompts_path))
    with reporting_stages(run, ["neurons"], figures) as folder:
        job = neurons_job(stats, threshold, None if no_fdr else fdr, traits, prompt_counts=counts)
        neurons = persist(job, run, force=force)
        summary = neurons.summary()
        console.print(
            f"{summary['n_tests_per_trait']} neurons tested per trait (n = {effective_n})"
        )
        for trait, poles in summary["per_trait"].items():
            parts = [
                f"{pole} {row['selected']} of {row['npti']} with |δ| ≥ {threshold:g}"
                for pole, row in poles.items()
            ]
            console.print(f"  {trait}: " + "; ".join(parts))
        if folder is not None:
            from traitlens.report.neuron_figures import plot_neuron_counts, plot_neuron_overlap

            plot_into(folder, "neuron figures", neurons, plot_neuron_counts, plot_neuron_overlap)


def register(app: typer.Typer) -> None:
    app.command("neurons")(neurons_cmd)
