"""``traitlens neurons``: which MLP neurons are trait-selective, where, how overlapping?"""

from __future__ import annotations

from pathlib import Path

import typer

from traitlens.artifact_io import check_writable
from traitlens.cli.common import (
    check_choice,
    check_float,
    check_run_dir,
    check_traits,
    console,
    done,
    report_stages,
    run_state,
)


def register(app: typer.Typer) -> None:
    @app.command("neurons")
    def neurons_cmd(
        run: Path = typer.Option(..., "--run", "-r", help="run directory written by capture"),
        threshold: float = typer.Option(0.1, "--threshold", help="NPTI's |δ| threshold"),
        fdr: float = typer.Option(0.05, "--fdr", help="Benjamini–Hochberg FDR level"),
        no_fdr: bool = typer.Option(False, "--no-fdr", help="NPTI's δ rule alone, no test"),
        traits: str | None = typer.Option(
            None, "--traits", "-t", help="e.g. O,C,E (default: every trait in the run)"
        ),
        effective_n: str = typer.Option(
            "prompts", "--effective-n", help="n of the z-test: prompts (conservative) or tokens"
        ),
        figures: bool = typer.Option(True, help="also write figures to RUN/figures/"),
        force: bool = typer.Option(
            False, "--force", help="replace artifacts in the run made from other inputs"
        ),
    ) -> None:
        """Select trait-selective neurons (NPTI δ rule + z-test with BH FDR control)."""
        from traitlens.capture.artifacts import NeuronStats
        from traitlens.data import load_prompts
        from traitlens.errors import ArtifactError
        from traitlens.neurons import prompts_per_group, select_neurons

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
        if figures:
            check_writable(run / "figures")
        before = run_state(run)
        neurons = select_neurons(
            stats,
            threshold,
            None if no_fdr else fdr,
            traits,
            prompt_counts=counts,
            out_dir=run,
            force=force,
        )
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
        if figures:
            from traitlens.report.neuron_figures import plot_neuron_counts, plot_neuron_overlap

            plot_neuron_counts(neurons, run / "figures")
            plot_neuron_overlap(neurons, run / "figures")
            done(run / "figures", "neuron figures")
        report_stages(run, before, ["neurons"])
