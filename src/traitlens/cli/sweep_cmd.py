"""``traitlens sweep`` (a grid of cells, local or on Ray) and ``traitlens calibrate``."""

from __future__ import annotations

from pathlib import Path

import typer

from traitlens.cli.common import (
    DEVICE_OPTION,
    check_choice,
    check_float,
    check_int,
    check_out_file,
    console,
    done,
    log_line,
)


def sweep_cmd(
    config_file: Path = typer.Argument(..., help="sweep YAML (models, traits, methods, grid)"),
    out: Path = typer.Option(..., "--out", "-o", help="sweep folder (rerun it to resume)"),
    backend: str = typer.Option("local", "--backend", help="local or ray"),
    workers: int = typer.Option(2, "--workers", help="Ray workers (one model load each)"),
    address: str | None = typer.Option(
        None, "--address", help="join a running Ray cluster (default: start a local one)"
    ),
    budget: float = typer.Option(
        1.5, "--max-ppl-ratio", help="fluency budget the report calibrates within"
    ),
    device: str = DEVICE_OPTION,
) -> None:
    """Measure every cell of a grid (models × traits × poles × methods × bands × sizes);
    finished cells are never rerun. Writes cells.jsonl/.csv/.parquet and sweep.html."""
    from traitlens.cli.common import check_out_dir
    from traitlens.report.sweep_report import build_sweep_report
    from traitlens.sweep.config import load_sweep_config
    from traitlens.sweep.run import run_sweep

    check_choice("--backend", backend, ("local", "ray"))
    check_int("--workers", workers, 1, 256, example=2)
    check_float("--max-ppl-ratio", budget, 1.0)
    config = load_sweep_config(config_file)
    check_out_dir(out)
    rows = run_sweep(
        config,
        out,
        backend=backend,
        workers=workers,
        address=address,
        device=device,
        log=log_line,
    )
    report = build_sweep_report(out, rows, budget)
    done(report, "sweep report")


def calibrate_cmd(
    sweep: Path = typer.Option(..., "--sweep", help="a sweep folder (traitlens sweep --out)"),
    trait: str = typer.Option(..., "--trait", "-t"),
    pole: str = typer.Option("high", "--pole"),
    method: str = typer.Option("mean_diff", "--method", help="a direction method of the sweep"),
    budget: float = typer.Option(1.5, "--max-ppl-ratio", help="largest perplexity ratio allowed"),
    objective: str = typer.Option(
        "readout", "--objective", help="readout, success or questionnaire"
    ),
    model: str | None = typer.Option(None, "--model", help="which of the sweep's models"),
    out: Path = typer.Option(..., "--out", "-o", help="calibrated vector file (.json)"),
) -> None:
    """Pick the band and strength that steer hardest within a fluency budget; write a
    calibrated vector that `steer --calibrated` and `serve --calibrated` use."""
    from traitlens.data import normalize_trait
    from traitlens.errors import DataError
    from traitlens.steer import METHODS, VectorSet
    from traitlens.steer.calibrate import OBJECTIVES, CalibratedVector, calibrate
    from traitlens.sweep.run import current_rows

    code = normalize_trait(trait)
    check_choice("--pole", pole, ("high", "low"))
    check_float("--max-ppl-ratio", budget, 1.0)
    check_choice("--objective", objective, OBJECTIVES)
    if method not in METHODS:
        raise DataError(
            f"--method {method}: only a direction can be written as a calibrated vector "
            f"(one of {', '.join(METHODS)}); the report shows neuron and hybrid calibrations"
        )
    check_out_file(out)
    rows = current_rows(sweep)
    if not rows:
        raise DataError(f"{sweep} holds no sweep rows (cells.jsonl); run `traitlens sweep` first")
    chosen = calibrate(
        rows, code, pole, method=method, max_ppl_ratio=budget, objective=objective, model=model
    )
    row = next(r for r in rows if r.get("key") == chosen.cell_key)
    vectors = VectorSet.load(sweep / row["material_dir"])
    if (vectors.provenance or {}).get("key") != row.get("vectors_key"):
        raise DataError(
            f"the vectors in {sweep / row['material_dir']} are not the ones the sweep measured "
            "(their key changed); rerun `traitlens sweep` on this folder first"
        )
    result = CalibratedVector(chosen, vectors.get(code, method))
    path = result.save(out)
    net = "beats its control" if chosen.beats_control else "does NOT beat its control"
    console.print(
        f"{code} {pole} ({method}): layers {chosen.band}, strength {chosen.strength:+g}σ → "
        f"{objective} Δ {chosen.effect:+.3f} (control {chosen.control_effect:+.3f}; {net}), "
        f"perplexity ×{chosen.perplexity_ratio:.2f} within ×{budget:g}"
    )
    done(path, "calibrated vector")


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep_cmd)
    app.command("calibrate")(calibrate_cmd)
