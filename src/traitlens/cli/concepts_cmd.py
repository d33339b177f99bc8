"""``traitlens concepts …``: the concept design, one stage at a time or all of it.

Each stage command runs the design's plan up to and including that stage into
``--out``; finished stages with the same inputs are reused, so ``concepts probe``
then ``concepts evaluate`` recomputes nothing twice. ``traitlens study --design
concept`` runs the same stages and builds the report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from traitlens.cli.common import (
    DEVICE_OPTION,
    DTYPE_OPTION,
    FORCE_OPTION,
    MODEL_OPTION,
    check_choice,
    check_float,
    check_input_file,
    check_model,
    check_traits,
    console,
    done,
    load_into,
    log_line,
)

STAGE_COMMANDS = {
    "capture": ("capture", "Capture item-token states and per-item neuron firing."),
    "probe": ("probes", "Fit 5-way and one-vs-rest domain probes per layer (facet-grouped CV)."),
    "neurons": ("neurons", "Select one-vs-rest concept neurons (item-level test, BH-FDR)."),
    "evaluate": ("evaluation", "Boost/suppress/direction edits vs controls at both levels."),
}


def _floats(option: str, spec: str | None) -> list[float] | None:
    from traitlens.errors import DataError

    if spec is None:
        return None
    try:
        return [float(part) for part in spec.split(",") if part.strip()]
    except ValueError as exc:
        raise DataError(
            f"{option} takes comma-separated numbers, e.g. 0.1,0.25,1; got {spec!r}"
        ) from exc


def concept_config(
    profile: str,
    config: Path | None,
    items: Path | None,
    traits: str | None,
    seed: int | None,
    options: dict[str, Any],
) -> Any:
    """The concept settings from defaults < profile < YAML < flags, checked before loading."""
    from traitlens.concepts.labels import check_labels, domain_labels
    from traitlens.concepts.pipeline import load_bank
    from traitlens.study import resolve_config

    check_input_file("--config", config)
    check_input_file("--items", items)
    check_traits("--traits", traits)
    study = resolve_config(
        profile,
        config,
        {
            "traits": traits.split(",") if traits else None,
            "seed": seed,
            "items_file": None if items is None else str(items),
        },
        options,
    )
    cfg = study.concept_config()
    load_bank(cfg)  # a malformed or incomplete bank fails here, not after the model loads
    check_labels(domain_labels(cfg.traits))
    return cfg


concepts_app = typer.Typer(
    help="The concept design: questionnaire items → domain probes → concept neurons → "
    "steering judged on the probe readout and on the generated label.",
    no_args_is_help=True,
)


@concepts_app.command("items")
def items_cmd(
    items: Path | None = typer.Option(None, "--items", help="your bank (CSV/JSONL/JSON)"),
    traits: str | None = typer.Option(None, "--traits", "-t"),
) -> None:
    """Check an item bank (no model needed) and print its domains, facets and keying."""
    from rich.table import Table

    from traitlens.concepts.config import ConceptConfig
    from traitlens.concepts.pipeline import load_bank

    check_input_file("--items", items)
    check_traits("--traits", traits)
    settings: dict[str, Any] = {"items_file": None if items is None else str(items)}
    if traits:
        settings["traits"] = traits.split(",")
    cfg = ConceptConfig(**settings)
    bank, source = load_bank(cfg)
    table = Table(title=f"{len(bank)} items ({source})")
    for column in ("domain", "items", "facets", "keyed +", "keyed −"):
        table.add_column(column)
    for trait in cfg.traits:
        mine = [i for i in bank if i.trait == trait]
        table.add_row(
            trait,
            str(len(mine)),
            str(len({i.facet for i in mine})),
            str(sum(i.keyed == "+" for i in mine)),
            str(sum(i.keyed == "-" for i in mine)),
        )
    console.print(table)


def make(command: str, until: str, doc: str) -> None:
    @concepts_app.command(command, help=doc)
    def stage_cmd(
        out: Path = typer.Option(Path("runs/concepts"), "--out", "-o", help="run directory"),
        model: str | None = MODEL_OPTION,
        profile: str = typer.Option("default", help="quick, default or test (smallest)"),
        config: Path | None = typer.Option(None, "--config", help="YAML (a study config)"),
        items: Path | None = typer.Option(None, "--items", help="your item bank"),
        traits: str | None = typer.Option(None, "--traits", "-t", help="e.g. O,C,E,A,N"),
        templates: str | None = typer.Option(None, help="e.g. bare,statement,self_report"),
        fractions: str | None = typer.Option(None, help="e.g. 0.1,0.25,0.5,1"),
        gammas: str | None = typer.Option(None, help="NPTI boost γ grid, e.g. 0.6,1,1.5"),
        strength: float | None = typer.Option(None, help="direction strength (spread units)"),
        shots: int | None = typer.Option(
            None, "--shots-per-domain", help="labelled examples per domain (chat turns)"
        ),
        bands: list[str] | None = typer.Option(
            None,
            "--edit-band",
            help="where neuron edits act (repeatable): all, early, middle, late or '10-14,20'",
        ),
        draws: int | None = typer.Option(None, "--control-draws", help="random draws (≥ 2)"),
        context: str | None = typer.Option(
            None,
            "--context",
            help="bare (items on their own) or instructed (every stage reads items inside "
            "the label question; probe and label from one pass)",
        ),
        seed: int | None = typer.Option(None),
        device: str = DEVICE_OPTION,
        dtype: str = DTYPE_OPTION,
        force: bool = FORCE_OPTION,
    ) -> None:
        from traitlens.concepts.pipeline import CONCEPT_STAGES, run_concepts

        check_float("--strength", strength, 0.0, 50.0, low_open=True)
        if context is not None:
            check_choice("--context", context, ("bare", "instructed"))
        options = {
            "context": context,
            "templates": None if templates is None else templates.split(","),
            "fractions": _floats("--fractions", fractions),
            "gammas": _floats("--gammas", gammas),
            "direction_strength": strength,
            "shots_per_domain": shots,
            "edit_bands": bands or None,
            "control_draws": draws,
        }
        cfg = concept_config(profile, config, items, traits, seed, options)
        check_model(model, device, dtype)
        tm = load_into(out, model, device, dtype)
        names = [s.name for s in CONCEPT_STAGES]
        stages = CONCEPT_STAGES[: names.index(until) + 1]
        finished = run_concepts(tm, out, cfg, log=log_line, force=force, stages=stages)
        if until == "evaluation":  # figures come with the evaluation
            from traitlens.report.concept_figures import draw_run_figures

            console.print("[concept] figures")
            draw_run_figures(finished)
        done(out / "concepts", "concept artifacts")


for _command, (_until, _doc) in STAGE_COMMANDS.items():
    make(_command, _until, _doc)


def register(app: typer.Typer) -> None:
    app.add_typer(concepts_app, name="concepts")
