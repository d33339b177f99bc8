"""Entry point. Handlers build a config and call the public Python API; heavy
imports (torch, transformers) happen inside handlers so ``--help`` is instant."""

from __future__ import annotations

import importlib
import sys

import typer

from traitlens.errors import TraitlensError

app = typer.Typer(
    name="traitlens",
    help="Find, measure and steer the Big Five personality traits inside an LLM.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Find, measure and steer the Big Five personality traits inside an LLM."""


# One module per subcommand group; each exposes register(app).
_COMMAND_MODULES = (
    "models_cmd",
    "capture_cmd",
    "probe_cmd",
    "neurons_cmd",
    "steer_cmd",
    "evaluate_cmd",
    "fingerprint_cmd",
    "study_cmd",
    "serve_cmd",
)
for _name in _COMMAND_MODULES:
    try:
        _module = importlib.import_module(f"traitlens.cli.{_name}")
    except ModuleNotFoundError as _exc:  # stage not built yet
        if _exc.name != f"traitlens.cli.{_name}":
            raise
        continue
    _module.register(app)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI, turning traitlens' own errors into one readable line (exit code 2)."""
    try:
        app(args=argv)
    except TraitlensError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
