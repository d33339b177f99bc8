"""``traitlens study`` (the whole experiment) and ``traitlens report`` (rebuild the page)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from traitlens.cli.common import (
    DEVICE_OPTION,
    DTYPE_OPTION,
    FORCE_OPTION,
    MAX_BATCH_SIZE,
    MAX_NEW_TOKENS,
    MODEL_OPTION,
    check_choice,
    check_float,
    check_input_file,
    check_int,
    check_judge_url,
    check_model,
    check_run_dir,
    check_seed,
    console,
    done,
    load_into,
)


def check_study_config(cfg: Any) -> Any:
    """Everything about a study that can be wrong without the model, checked before it
    loads; returns the user's statements (None for the shipped ones)."""
    from traitlens.data import load_forced_choices, load_statements

    # strength, gamma and the dose lists are bounded by the config itself (StudyConfig)
    check_int("batch_size", cfg.batch_size, 1, MAX_BATCH_SIZE, example=16)
    check_int("max_new_tokens", cfg.max_new_tokens, 4, MAX_NEW_TOKENS, example=40)
    check_seed("seed", cfg.seed)
    statements = load_statements(cfg.statements_file) if cfg.statements_file else None
    if cfg.forced_choice_file:
        load_forced_choices(cfg.forced_choice_file)
    check_judge_url(cfg.judge_url)
    if cfg.design in ("concept", "both"):
        from traitlens.concepts.labels import check_labels, domain_labels
        from traitlens.concepts.pipeline import load_bank

        load_bank(cfg.concept_config())  # a bad bank fails before the model loads
        check_labels(domain_labels(cfg.traits))
    return statements


def study(
    out: Path = typer.Option(Path("runs/study"), "--out", "-o", help="run directory"),
    model: str | None = MODEL_OPTION,
    profile: str = typer.Option(
        "default", help="quick (<10 min on 2 CPU cores), default, or test (smallest)"
    ),
    design: str | None = typer.Option(
        None, "--design", help="persona, concept or both (default: both)"
    ),
    items: Path | None = typer.Option(
        None, "--items", help="your item bank for the concept design (CSV/JSONL; IPIP layouts)"
    ),
    config: Path | None = typer.Option(None, "--config", help="YAML file of overrides"),
    traits: str | None = typer.Option(None, "--traits", "-t", help="e.g. O,C,E"),
    strength: float | None = typer.Option(None, help="direction strength (spread units)"),
    gamma: float | None = typer.Option(None, help="NPTI neuron-edit γ"),
    seed: int | None = typer.Option(None),
    batch_size: int | None = typer.Option(None),
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
    force: bool = FORCE_OPTION,
) -> None:
    """Persona and/or concept design: capture → probes → neurons → steering →
    evaluation (both levels, with controls) → report.html.

    Resumable: rerun the same command after an interruption and finished stages
    are loaded, not recomputed. Every artifact and measured row is keyed by its
    inputs: a changed option re-measures exactly what depends on it, and a stage
    artifact made from other inputs is never replaced without --force.
    """
    from traitlens.steer import MAX_GAMMA, MAX_STRENGTH
    from traitlens.study import resolve_config, run_study

    overrides = {
        "traits": traits.split(",") if traits else None,
        "strength": strength,
        "gamma": gamma,
        "seed": seed,
        "batch_size": batch_size,
        "design": design,
        "items_file": None if items is None else str(items),
    }
    # everything that can be wrong without the model, checked before it loads: the
    # flags first (so the message names the flag), then the merged configuration
    check_float("--strength", strength, 0.0, MAX_STRENGTH, low_open=True)
    check_float("--gamma", gamma, 0.0, MAX_GAMMA, low_open=True)
    check_input_file("--config", config)
    check_input_file("--items", items)
    check_choice("--design", design, ("persona", "concept", "both"))
    cfg = resolve_config(profile, config, overrides)
    statements = check_study_config(cfg)
    check_model(model, device, dtype)
    tm = load_into(out, model, device, dtype)
    if statements is not None:
        from traitlens.models.loading import check_text_fits

        check_text_fits(
            tm,
            [(repr(s.id), s.text) for s in statements],
            "statement",
            "shorten it (a questionnaire statement is one sentence) or drop it from the file",
        )
    report = run_study(tm, out, cfg, force=force)
    done(out, "study artifacts")
    console.print(f"report: [bold]{report}[/]")


def report(
    run: Path = typer.Argument(..., help="a study's run directory"),
    allow_inconsistent: bool = typer.Option(
        False, "--allow-inconsistent", help="build the page even if the run's keys disagree"
    ),
) -> None:
    """Rebuild report.html from a run's artifacts (no model needed).

    The chain of input keys is verified first; an inconsistent run is refused."""
    from traitlens.errors import ArtifactError, TraitlensError
    from traitlens.report.study_report import build_report

    check_run_dir(run, "RUN")
    try:
        path = build_report(run, allow_inconsistent=allow_inconsistent)
    except TraitlensError:
        raise
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        # valid JSON that lacks what a finished study writes (hand-edited, cut short,
        # or from another traitlens version)
        raise ArtifactError(
            f"the study artifacts in {run} are incomplete or malformed "
            f"({type(exc).__name__}: {exc}); rerun `traitlens study --out {run}` with the "
            "same options to recompute what is missing"
        ) from exc
    done(path, "report")


def register(app: typer.Typer) -> None:
    app.command("study")(study)
    app.command("report")(report)
