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


# One module per subcommand group; each exposes register(app). Every one must load: a
# subcommand that vanished from --help because its module failed to import would look
# like a feature that does not exist. Optional extras (serve's FastAPI) are imported
# inside the handler, which names the pip command, so they never fail here.
_COMMAND_MODULES = (
    "models_cmd",
    "capture_cmd",
    "probe_cmd",
    "neurons_cmd",
    "steer_cmd",
    "evaluate_cmd",
    "fingerprint_cmd",
    "concepts_cmd",
    "study_cmd",
    "sweep_cmd",
    "serve_cmd",
)


def _register(app: typer.Typer, names: tuple[str, ...]) -> None:
    for name in names:
        module_name = f"traitlens.cli.{name}"
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            raise ImportError(
                f"traitlens could not load its command module {module_name} "
                f"({type(exc).__name__}: {exc}); the installation is broken — reinstall "
                "traitlens (pip install -e .) or fix the import named above",
                name=module_name,
            ) from exc
        module.register(app)


_register(app, _COMMAND_MODULES)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI, turning traitlens' own errors into one readable line (exit code 2)."""
    from traitlens.provenance import release_all_runs

    try:
        app(args=argv)
    except TraitlensError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    finally:
        release_all_runs()  # run locks end with the command, also when called in-process


if __name__ == "__main__":
    main()
