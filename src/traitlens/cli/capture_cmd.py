"""``traitlens capture``: contrastive prompts → pooled activations + neuron statistics."""

from __future__ import annotations

from pathlib import Path

import typer

from traitlens.cli.common import (
    DEVICE_OPTION,
    DTYPE_OPTION,
    FORCE_OPTION,
    MAX_BATCH_SIZE,
    MAX_COUNT,
    MAX_NEW_TOKENS,
    MODEL_OPTION,
    check_int,
    check_model,
    check_out_dir,
    check_seed,
    check_traits,
    console,
    load,
    reporting_stages,
)
from traitlens.errors import DataError


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
    force: bool = FORCE_OPTION,
) -> None:
    """Capture pooled hidden states (question + answer spans) and neuron statistics."""
    from traitlens.capture.pipeline import PromptDesign, capture_run, prepare_prompts

    # everything that can be wrong without the model, checked before it loads
    trait_list = check_traits("--traits", traits) or []
    check_int("--n-questions", n_questions, 2, MAX_COUNT, example=24)
    check_int("--n-personas", n_personas, 1, MAX_COUNT, example=6)
    check_int("--max-new-tokens", max_new_tokens, 1, MAX_NEW_TOKENS, example=40)
    check_int("--batch-size", batch_size, 1, MAX_BATCH_SIZE, example=16)
    check_seed("--seed", seed)
    info = check_model(model, device, dtype)
    if info.context_length is not None and max_new_tokens >= info.context_length:
        raise DataError(
            f"--max-new-tokens {max_new_tokens} does not fit {info.display}'s context of "
            f"{info.context_length} tokens; use a smaller value (e.g. 40)"
        )
    check_out_dir(out)
    design = PromptDesign(n_questions=n_questions, n_personas_per_pole=n_personas, seed=seed)
    # a run made by another set-up is refused now, not after the model has loaded
    prepare_prompts(out, trait_list, **design, force=force, write=False)
    stages = ["prompts", "capture.question"] + (["answers", "capture.answer"] if generate else [])
    with reporting_stages(out, stages):
        tm = load(model, device, dtype)
        run = capture_run(
            tm,
            out,
            trait_list,
            **design,
            generate=generate,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            force=force,
        )
        console.print(
            f"{len(run.prompts)} prompts, {len(trait_list)} traits, {tm.n_layers} layers captured"
        )


def register(app: typer.Typer) -> None:
    app.command("capture")(capture_cmd)
