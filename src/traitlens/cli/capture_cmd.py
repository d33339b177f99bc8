"""``traitlens capture``: contrastive prompts → pooled activations + neuron statistics."""

from __future__ import annotations

from pathlib import Path

import typer

from traitlens.cli.common import DEVICE_OPTION, DTYPE_OPTION, MODEL_OPTION, console, done, load


def register(app: typer.Typer) -> None:
    @app.command("capture")
    def capture_cmd(
        out: Path = typer.Option(..., "--out", "-o", help="run directory"),
        model: str | None = MODEL_OPTION,
        traits: str = typer.Option("O,C,E,A,N", "--traits", "-t", help="e.g. O,C,E or all"),
        n_questions: int = typer.Option(24, help="questions crossed with every persona"),
        n_personas: int = typer.Option(6, help="personas per pole per trait"),
        generate: bool = typer.Option(True, help="also generate answers and capture them"),
        max_new_tokens: int = typer.Option(40, help="answer length when generating"),
        batch_size: int = typer.Option(16),
        seed: int = typer.Option(0),
        device: str = DEVICE_OPTION,
        dtype: str = DTYPE_OPTION,
    ) -> None:
        """Capture pooled hidden states (question + answer spans) and neuron statistics."""
        from traitlens.capture.pipeline import capture_run
        from traitlens.data import parse_traits

        trait_list = parse_traits(None if traits.lower() == "all" else traits)
        tm = load(model, device, dtype)
        run = capture_run(
            tm,
            out,
            trait_list,
            n_questions=n_questions,
            n_personas_per_pole=n_personas,
            generate=generate,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            seed=seed,
        )
        console.print(
            f"{len(run.prompts)} prompts, {len(trait_list)} traits, {tm.n_layers} layers captured"
        )
        done(out)
