"""``traitlens fingerprint``: default personality profile, reliability, dead zones, drift."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from traitlens.cli.common import (
    DEVICE_OPTION,
    DTYPE_OPTION,
    MAX_BATCH_SIZE,
    MAX_NEW_TOKENS,
    check_float,
    check_input_file,
    check_int,
    check_layer_index,
    check_model,
    check_out_dir,
    check_seed,
    console,
    done,
    log_line,
)


def _layers(spec: str | None) -> tuple[int, ...] | None:
    from traitlens.errors import DataError

    if spec is None or spec.strip().lower() in ("", "auto"):
        return None
    try:
        return tuple(int(part) for part in spec.split(",") if part.strip())
    except ValueError:
        raise DataError(
            f"--layers {spec!r}: give comma-separated integers, e.g. 12,16,20"
        ) from None


def _check_sizes(values: dict[str, Any], source: Path | None = None) -> None:
    """The bounds the config itself does not know (this machine's limits), for flags
    (``--max-new-tokens``) or for the settings read from the ``source`` file."""
    import os

    def option(key: str) -> str:
        return f"{source}: {key}" if source else "--" + key.replace("_", "-")

    check_float(option("decay_half_life"), values.get("decay_half_life"), 0.0, 1e4, low_open=True)
    check_int(option("seeds"), values.get("seeds"), 1, 100, example=3)
    check_int(option("max_new_tokens"), values.get("max_new_tokens"), 4, MAX_NEW_TOKENS, example=48)
    check_seed(option("seed"), values.get("seed"))
    check_int(option("batch_size"), values.get("batch_size"), 1, MAX_BATCH_SIZE, example=16)
    cores = max(64, 4 * (os.cpu_count() or 1))
    check_int(option("threads"), values.get("threads"), 1, cores, example=1)


_MODEL_OPTION = typer.Option(
    None,
    "--model",
    "-m",
    help="model to fingerprint; repeat to compare (default: embedded SmolLM2; "
    "'gemma3-270m' = the packaged Gemma-3-270M base)",
)
_ANSWER_ONLY_OPTION = typer.Option(
    False,
    "--answer-only",
    help="encode calibration answers without their instruction (reads only what the "
    "model wrote; stricter, weaker on small models)",
)
_QUICK_NOTE = (
    "[yellow]quick profile: a smoke test (6 questions per axis, 24-token answers); "
    "its CIs are wide and its dead-zone verdicts mostly reflect the small sample — "
    "use the default profile for a result[/]"
)


def _check_models(
    models: list[str | None], layers: tuple[int, ...] | None, device: str, dtype: str
) -> None:
    for name in models:
        info = check_model(name, device, dtype)
        for index in layers or ():
            check_layer_index("--layers", index, info.n_layers)


def register(app: typer.Typer) -> None:
    @app.command("fingerprint")
    def fingerprint_cmd(
        model: list[str] = _MODEL_OPTION,
        out: Path = typer.Option(Path("runs/fingerprint"), "--out", "-o", help="run directory"),
        profile_name: str = typer.Option(
            "default", "--profile", help="quick (a few minutes on CPU) or default"
        ),
        config_file: Path | None = typer.Option(
            None, "--config", help="YAML file of settings (profile < file < flags)"
        ),
        traits: str | None = typer.Option(None, "--traits", "-t", help="axes, e.g. O,C,E"),
        layers: str | None = typer.Option(None, "--layers", help="e.g. 12,16,20 (default: auto)"),
        pooling: str | None = typer.Option(None, "--pooling", help="mean, last or decay"),
        decay_half_life: float | None = typer.Option(None, help="decay pooling half-life, tokens"),
        seeds: int | None = typer.Option(None, "--seeds", help="baseline sampling seeds"),
        max_new_tokens: int | None = typer.Option(None, help="answer length"),
        regress_length: bool = typer.Option(
            False, "--regress-length", help="regress answer length out of every score"
        ),
        answer_only: bool = _ANSWER_ONLY_OPTION,
        seed: int | None = typer.Option(None, "--seed"),
        batch_size: int | None = typer.Option(None, "--batch-size"),
        threads: int | None = typer.Option(
            None, "--threads", help="torch CPU threads (1 is fastest on a busy machine)"
        ),
        report: bool = typer.Option(True, help="write fingerprint.html and figures"),
        force: bool = typer.Option(
            False, "--force", help="replace artifacts in --out made from other inputs"
        ),
        device: str = DEVICE_OPTION,
        dtype: str = DTYPE_OPTION,
    ) -> None:
        """Calibrate trait axes, read the model's default profile off them, and report how
        reliable it is, where the dead zones are, how it drifts, and how models compare."""
        from traitlens.fingerprint import resolve_fingerprint_config, run_fingerprint

        sizes = {
            "decay_half_life": decay_half_life,
            "seeds": seeds,
            "max_new_tokens": max_new_tokens,
            "seed": seed,
            "batch_size": batch_size,
        }
        # everything that can be wrong without the models, checked before any loads
        _check_sizes({**sizes, "threads": threads})
        check_input_file("--config", config_file)
        chosen_layers = _layers(layers)
        models: list[str | None] = list(model) if model else [None]
        _check_models(models, chosen_layers, device, dtype)
        flags = {
            **sizes,
            "axes": traits,
            "layers": chosen_layers,
            "pooling": pooling,
            "regress_length": regress_length or None,
            "instructed_context": False if answer_only else None,
        }
        config = resolve_fingerprint_config(profile_name, config_file, flags)
        if config_file is not None:
            _check_sizes(config.to_dict(), config_file)
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        check_out_dir(out)
        path = run_fingerprint(
            models, out, config, device=device, dtype=dtype, log=log_line, force=force
        )
        if report:
            from traitlens.report.fingerprint_report import write_fingerprint_report

            console.print(f"report: {write_fingerprint_report(out)}")
        _print_summary(path)
        if profile_name == "quick":
            console.print(_QUICK_NOTE)
        done(out, "fingerprint")


def _print_summary(path: Path) -> None:
    import json

    def signed(value: float | None) -> str:
        return "n/a" if value is None else f"{value:+.2f}"

    doc = json.loads(path.read_text())
    for m in doc["models"]:
        cells = []
        for axis in doc["config"]["axes"]:
            p = m["profile"][axis]
            dz = m["dead_zones"][axis]["verdict"]
            cells.append(
                f"{axis} {signed(p['median'])} [{signed(p['ci'][0])},{signed(p['ci'][1])}]"
                + ("" if dz == "ok" else f" ({dz})")
            )
        console.print(f"[bold]{m['model']['name']}[/]: " + "  ".join(cells))
