"""Options and helpers shared by subcommands."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

if TYPE_CHECKING:
    from traitlens.models.loading import TraitModel

console = Console(stderr=True)

MODEL_OPTION = typer.Option(
    None, "--model", "-m", help="HF hub id, local dir or .gguf file (default: embedded SmolLM2)"
)
DEVICE_OPTION = typer.Option("auto", "--device", help="cpu, cuda, cuda:1, or auto")
DTYPE_OPTION = typer.Option("auto", "--dtype", help="float32, bfloat16, float16 or auto")


def load(model: str | None, device: str = "auto", dtype: str = "auto") -> TraitModel:
    from traitlens.models.loading import load_model

    with console.status(f"loading {model or 'embedded SmolLM2-135M-Instruct'}"):
        tm = load_model(model, device=device, dtype=dtype)
    console.print(
        f"model: [bold]{tm.identity.name}[/] ({tm.identity.architecture}, {tm.n_layers} layers, "
        f"chat format: {tm.formatter.mode}, {tm.device}, {str(tm.dtype).replace('torch.', '')})"
    )
    return tm


def done(path: Path | str, what: str = "artifacts") -> None:
    console.print(f"[green]✓[/] {what} written to [bold]{path}[/]")
