"""``traitlens study`` (the whole experiment) and ``traitlens report`` (rebuild the page)."""

from __future__ import annotations

from pathlib import Path

import typer

from traitlens.cli.common import DEVICE_OPTION, DTYPE_OPTION, MODEL_OPTION, console, done, load


def register(app: typer.Typer) -> None:
    @app.command("study")
    def study(
        out: Path = typer.Option(Path("runs/study"), "--out", "-o", help="run directory"),
        model: str | None = MODEL_OPTION,
        profile: str = typer.Option("default", help="quick (<10 min on 2 CPU cores) or default"),
        config: Path | None = typer.Option(None, "--config", help="YAML file of overrides"),
        traits: str | None = typer.Option(None, "--traits", "-t", help="e.g. O,C,E"),
        strength: float | None = typer.Option(None, help="direction strength (spread units)"),
        gamma: float | None = typer.Option(None, help="NPTI neuron-edit γ"),
        seed: int | None = typer.Option(None),
        batch_size: int | None = typer.Option(None),
        device: str = DEVICE_OPTION,
        dtype: str = DTYPE_OPTION,
    ) -> None:
        """Capture → probes → neurons → vectors → interventions → evaluation → report.html.

        Resumable: rerun the same command after an interruption and finished stages
        are loaded, not recomputed.
        """
        from traitlens.study import resolve_config, run_study

        overrides = {
            "traits": traits.split(",") if traits else None,
            "strength": strength,
            "gamma": gamma,
            "seed": seed,
            "batch_size": batch_size,
        }
        cfg = resolve_config(profile, config, overrides)
        tm = load(model, device, dtype)
        report = run_study(tm, out, cfg)
        done(out, "study artifacts")
        console.print(f"report: [bold]{report}[/]")

    @app.command("report")
    def report(run: Path = typer.Argument(..., help="a study's run directory")) -> None:
        """Rebuild report.html from a run's artifacts (no model needed)."""
        from traitlens.report.study_report import build_report

        path = build_report(run)
        done(path, "report")
