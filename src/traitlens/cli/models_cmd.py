"""``traitlens models``: what the adapter sees."""

from __future__ import annotations

import json

import typer

from traitlens.cli.common import DEVICE_OPTION, DTYPE_OPTION, MODEL_OPTION, check_model, load


def register(app: typer.Typer) -> None:
    @app.command("models")
    def models(
        model: str | None = MODEL_OPTION,
        device: str = DEVICE_OPTION,
        dtype: str = DTYPE_OPTION,
        as_json: bool = typer.Option(False, "--json", help="print machine-readable JSON"),
    ) -> None:
        """Load a model and show its layers, widths, chat format and hook points."""
        check_model(model, device, dtype)
        tm = load(model, device, dtype)
        info = tm.describe()
        if as_json:
            typer.echo(json.dumps(info, indent=2))
            return
        width = max(len(k) for k in info)
        for key, value in info.items():
            shown = ", ".join(value) if isinstance(value, list) else value
            typer.echo(f"{key:<{width}}  {shown}")
