"""``traitlens evaluate``: behaviour (questionnaire, forced choice) and cost (perplexity)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from traitlens.cli.common import (
    DEVICE_OPTION,
    DIRECTION_METHOD_OPTION,
    DTYPE_OPTION,
    MAX_BATCH_SIZE,
    MIX_LAYERS_OPTION,
    MIX_OPTION,
    MODEL_OPTION,
    VECTORS_RUN_OPTION,
    check_choice,
    check_int,
    check_judge_url,
    check_layer_index,
    check_model,
    check_traits,
    console,
    done,
    load_into,
)

if TYPE_CHECKING:
    from traitlens.data import AnswerRecord, Statement

OUT_OPTION = typer.Option(
    Path("traitlens-eval"), "--out", "-o", help="directory for the CSV + JSON tables"
)
TRAITS_OPTION = typer.Option(
    None, "--traits", "-t", help="e.g. O,C,E or openness (default: every trait in the items)"
)
SYSTEM_OPTION = typer.Option(None, "--system", help="optional system prompt (e.g. a persona)")
BATCH_OPTION = typer.Option(32, "--batch-size", help="prompts per forward pass")


def _fmt(value: float, digits: int = 2) -> str:
    return "—" if math.isnan(value) else f"{value:.{digits}f}"


evaluate_app = typer.Typer(
    help="Measure behaviour and cost: questionnaire, forced choice, perplexity.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(evaluate_app, name="evaluate")


# (header, summary attribute, digits; None: a count) per column after "trait"; short
# headers: the questionnaire table must fit an 80-column terminal
_QUESTIONNAIRE_COLUMNS = (
    ("items", "n_items", None),
    ("score", "score", 2),
    ("argmax", "score_argmax", 2),
    ("α", "alpha", 2),
    ("tmpl sd", "template_sd", 3),
    ("order", "order_asymmetry", 3),
    ("acq.", "acquiescence", 2),
    ("mass", "label_mass", 2),
)
_FORCED_CHOICE_COLUMNS = (
    ("items", "n_items", None),
    ("P(high)", "score", 3),
    ("order bias", "order_bias", 3),
    ("consistency", "consistency", 2),
    ("label mass", "label_mass", 2),
)


def _print_trait_table(
    title: str,
    summaries: Iterable[Any],
    columns: Sequence[tuple[str, str, int | None]],
    legend: str,
) -> None:
    """One row per trait summary, then a line saying what the columns mean."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("trait", justify="left")
    for header, _, _ in columns:
        table.add_column(header, justify="right")
    for summary in summaries:
        cells = [
            str(getattr(summary, name)) if digits is None else _fmt(getattr(summary, name), digits)
            for _, name, digits in columns
        ]
        table.add_row(summary.trait, *cells)
    Console().print(table)
    console.print(legend)


@evaluate_app.command("questionnaire")
def questionnaire_cmd(
    model: str | None = MODEL_OPTION,
    statements: Path | None = typer.Option(
        None,
        "--statements",
        "-s",
        help="CSV/JSONL/JSON with id,trait,text,keyed (default: the shipped statements)",
    ),
    traits: str | None = TRAITS_OPTION,
    templates: str | None = typer.Option(
        None, "--templates", help="comma-separated: likert,accuracy,agreement (default: all)"
    ),
    system: str | None = SYSTEM_OPTION,
    batch_size: int = BATCH_OPTION,
    out: Path = OUT_OPTION,
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
) -> None:
    """Rate each statement 1-5 from label log-probs, over templates and both option orders."""
    from traitlens.data import load_statements
    from traitlens.evaluate import TEMPLATES, run_questionnaire
    from traitlens.evaluate.questionnaire import check_questionnaire

    # everything that can be wrong without the model, checked before it loads
    check_traits("--traits", traits)
    names = [t.strip() for t in templates.split(",") if t.strip()] if templates else None
    for name in names or ():
        check_choice("--templates", name, TEMPLATES)
    check_int("--batch-size", batch_size, 1, MAX_BATCH_SIZE, example=32)
    items = load_statements(statements)
    check_questionnaire(items, traits, names)
    check_model(model, device, dtype)
    tm = load_into(out, model, device, dtype)
    result = run_questionnaire(
        tm,
        items,
        traits=traits,
        templates=names,
        system=system,
        batch_size=batch_size,
        progress=True,
    )
    _print_trait_table(
        f"questionnaire — {tm.identity.name}",
        result.traits,
        _QUESTIONNAIRE_COLUMNS,
        f"{result.config['n_prompts']} prompts in {result.config['seconds']:.1f} s.\n"
        "score: mean 1-5 rating, reverse-keyed (argmax: of the most likely label); "
        "α: Cronbach's alpha over the template×order administrations; "
        "tmpl sd: sd of the score across templates; "
        "order: mean raw rating with options listed 1→5 minus 5→1; "
        "acq.: mean raw rating − 3; mass: probability put on the five labels",
    )
    done(result.save(out), "questionnaire tables")


@evaluate_app.command("forced-choice")
def forced_choice_cmd(
    model: str | None = MODEL_OPTION,
    items_path: Path | None = typer.Option(
        None,
        "--items",
        "-i",
        help="CSV/JSONL/JSON with id,trait,situation,high_option,"
        "low_option (default: the shipped items)",
    ),
    traits: str | None = TRAITS_OPTION,
    system: str | None = SYSTEM_OPTION,
    batch_size: int = BATCH_OPTION,
    out: Path = OUT_OPTION,
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
) -> None:
    """P(high-pole option) between two answers, from A/B log-probs in both orders."""
    from traitlens.data import TRAITS, load_forced_choices
    from traitlens.errors import DataError
    from traitlens.evaluate import run_forced_choice

    selected = check_traits("--traits", traits)
    check_int("--batch-size", batch_size, 1, MAX_BATCH_SIZE, example=32)
    items = load_forced_choices(items_path)
    present = {item.trait for item in items}
    missing = [t for t in selected or () if t not in present]
    if missing:
        raise DataError(
            f"no forced-choice items for trait(s) {', '.join(missing)}; the items cover "
            f"{', '.join(t for t in TRAITS if t in present)} — add items or change --traits"
        )
    check_model(model, device, dtype)
    tm = load_into(out, model, device, dtype)
    result = run_forced_choice(
        tm, items, traits=traits, system=system, batch_size=batch_size, progress=True
    )
    _print_trait_table(
        f"forced choice — {tm.identity.name}",
        result.traits,
        _FORCED_CHOICE_COLUMNS,
        "P(high) averaged over both option orders (0.5 = no preference); "
        "order bias = mean P('A') − 0.5",
    )
    done(result.save(out), "forced-choice tables")


def _read_text(text_file: Path | None) -> str:
    """The ``--text`` file's contents (the built-in neutral text when not given)."""
    from traitlens.errors import DataError
    from traitlens.evaluate import NEUTRAL_TEXT

    if text_file is None:
        return NEUTRAL_TEXT
    if not text_file.is_file():
        what = "is a folder" if text_file.is_dir() else "not found"
        raise DataError(f"--text {text_file}: {what} — pass the path of a text file")
    try:
        text = text_file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(
            f"--text {text_file}: not valid UTF-8 text — re-save the file as UTF-8"
        ) from None
    except OSError as exc:
        raise DataError(f"--text {text_file}: cannot be read ({exc.strerror})") from None
    if not text.strip():
        raise DataError(f"--text {text_file} is empty; give a file with some text")
    return text


@evaluate_app.command("perplexity")
def perplexity_cmd(
    model: str | None = MODEL_OPTION,
    text_file: Path | None = typer.Option(
        None, "--text", help="UTF-8 text file to score (default: the built-in neutral text)"
    ),
    max_length: int | None = typer.Option(None, "--max-length", help="window in tokens"),
    out: Path = OUT_OPTION,
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
) -> None:
    """Perplexity of a neutral reference text (the cost side of an intervention)."""
    from traitlens.artifact_io import write_json
    from traitlens.errors import DataError
    from traitlens.evaluate import perplexity

    check_int("--max-length", max_length, 2, 1_000_000, example=512)
    text = _read_text(text_file)
    info = check_model(model, device, dtype)
    if max_length is not None and info.context_length is not None:
        if max_length > info.context_length:
            raise DataError(
                f"--max-length {max_length} exceeds {info.display}'s context of "
                f"{info.context_length} tokens; pass at most {info.context_length} "
                "(or leave it out)"
            )
    tm = load_into(out, model, device, dtype)
    result = perplexity(tm, text, max_length=max_length)
    typer.echo(
        f"perplexity {result.perplexity:.3f} (mean NLL {result.mean_nll:.4f} nats over "
        f"{result.n_tokens} tokens, window {result.window})"
    )
    path = write_json(
        out / "perplexity.json",
        {
            "kind": "perplexity",
            "model": tm.identity.to_dict(),
            "text": "built-in neutral text" if text_file is None else str(text_file),
            **result.to_dict(),
        },
    )
    done(path, "perplexity")


def _answer_inputs(
    answers_path: Path,
    statements: Path | None,
    probes_dir: Path | None,
    traits: str | None,
    judge_model: str,
) -> tuple[list[AnswerRecord], list[Statement], list[str]]:
    """``(answers, keyed statements, trait codes)`` of ``evaluate answers``, everything
    that can be wrong with them checked before the model loads."""
    from traitlens.data import load_answers, load_statements, parse_traits
    from traitlens.errors import DataError
    from traitlens.evaluate.embedding import require_both_keyings
    from traitlens.probe import ProbeSet

    check_traits("--traits", traits)
    if not judge_model.strip():
        raise DataError("--judge-model is empty; name the model the endpoint serves")
    records = load_answers(answers_path)
    items = load_statements(statements)
    codes = parse_traits(traits) if traits else sorted({s.trait for s in items}, key="OCEAN".index)
    require_both_keyings(items, codes, "add items to --statements or change --traits")
    if probes_dir is not None:
        probes = ProbeSet.load(probes_dir)  # unreadable probes fail before the model loads
        missing = [t for t in codes if t not in probes.traits]
        if missing:
            raise DataError(
                f"the probes in {probes_dir} were not fitted for trait(s) "
                f"{', '.join(missing)} (have {', '.join(probes.traits)}); pass --traits "
                f"{','.join(probes.traits)}"
            )
    return records, items, codes


def _print_answer_scores(
    model_name: str, result: dict[str, Any], records: Sequence[AnswerRecord], codes: Sequence[str]
) -> None:
    """The mean score per scorer and trait (with the embedding judge's LOO AUC and its
    p-value), and for a few answers each answer's scores."""
    from rich.table import Table

    table = Table(title=f"open-ended answers — {len(records)} scored by {model_name}")
    table.add_column("scorer")
    for code in codes:
        table.add_column(code, justify="right")
    for source, means in result["means"].items():
        table.add_row(source, *(_fmt(means[c], 2) for c in codes))
    auc = result["embedding"]["loo_auc"]
    table.add_row("(embedding LOO AUC)", *(_fmt(auc[c], 2) for c in codes))
    pvalue = result["embedding"]["loo_p"]
    table.add_row("(its permutation p)", *(_fmt(pvalue[c], 3) for c in codes))
    console.print(table)
    if len(records) <= 20:  # few answers: show each one, not just the means
        each = Table(title="per answer")
        each.add_column("answer · scorer")
        for code in codes:
            each.add_column(code, justify="right")
        for source, scored in result["scores"].items():
            for i, values in enumerate(scored["scores"]):
                name = records[i].id or str(i)
                each.add_row(
                    f"{name} · {source}",
                    *("—" if v is None else f"{v:.2f}" for v in values),
                )
        console.print(each)
    console.print(
        "embedding: cos(high prototype) − cos(low prototype), −2..2; its LOO AUC says how "
        "well the prototypes tell held-out high- from low-keyed statements (0.5 = chance). "
        "probe: log-odds of the high pole; judge: rating 1–5."
    )


@evaluate_app.command("answers")
def answers_cmd(
    answers_path: Path = typer.Argument(
        ..., help="CSV/JSONL/JSON with an 'answer' field (optional 'question', 'id')"
    ),
    model: str | None = MODEL_OPTION,
    probes_dir: Path | None = typer.Option(
        None, "--probes", help="run directory with probes.* (adds the probe judge)"
    ),
    judge_url: str | None = typer.Option(
        None, "--judge-url", help="OpenAI-compatible endpoint (adds the external judge)"
    ),
    judge_model: str = typer.Option("default", "--judge-model"),
    statements: Path | None = typer.Option(
        None, "--statements", "-s", help="keyed statements for the embedding prototypes"
    ),
    layer: int | None = typer.Option(
        None, "--layer", help="embedding layer (default: two thirds of the depth)"
    ),
    traits: str | None = TRAITS_OPTION,
    out: Path = OUT_OPTION,
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
) -> None:
    """Score open-ended answers: embedding prototypes, and probes / a judge if given."""
    from traitlens.evaluate.answers import score_answer_file

    # everything that can be wrong without the model, checked before it loads
    records, items, codes = _answer_inputs(
        answers_path, statements, probes_dir, traits, judge_model
    )
    info = check_model(model, device, dtype)
    check_layer_index("--layer", layer, info.n_layers)
    check_judge_url(judge_url)
    tm = load_into(out, model, device, dtype)
    result = score_answer_file(
        tm,
        records,
        items,
        traits=codes,
        layer=layer,
        probes_dir=probes_dir,
        judge_url=judge_url,
        judge_model=judge_model,
        out=out,
    )
    _print_answer_scores(tm.identity.name, result, records, codes)
    done(result["path"], "answer scores")


def _scores_from_lm_eval(samples: list[dict[str, Any]]) -> list[Any]:
    """lm-eval's per-item samples as :class:`MCScore` rows (same verdicts, same order)."""
    from traitlens.evaluate.capability import MCScore

    rows = sorted(samples, key=lambda s: int(s["doc_id"]))
    return [
        MCScore(
            id=str(s["doc"]["id"]),
            topic=str(s["doc"]["topic"]),
            answer=int(s["doc"]["answer"]),
            loglik=tuple(float(r[0]) for r in s["filtered_resps"]),
            correct=float(s["acc"]) == 1.0,
            correct_norm=float(s["acc_norm"]) == 1.0,
        )
        for s in rows
    ]


@evaluate_app.command("capability")
def capability_cmd(
    run: Path = VECTORS_RUN_OPTION,
    mix: str = MIX_OPTION,
    method: str = DIRECTION_METHOD_OPTION,
    layers: str | None = MIX_LAYERS_OPTION,
    items_path: Path | None = typer.Option(
        None,
        "--items",
        "-i",
        help="JSONL/CSV/JSON with id,topic,question,choices,answer (default: the shipped 200)",
    ),
    engine: str = typer.Option(
        "traitlens",
        "--engine",
        help="traitlens (built-in scorer) or lm-eval (lm-evaluation-harness's steered model)",
    ),
    limit: int | None = typer.Option(None, "--limit", help="score only the first N items"),
    batch_size: int = BATCH_OPTION,
    out: Path = OUT_OPTION,
    model: str | None = MODEL_OPTION,
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
) -> None:
    """Multiple-choice accuracy with and without a trait mix: the capability cost of
    steering, scored as lm-evaluation-harness scores multiple_choice tasks."""
    from traitlens.artifact_io import write_json
    from traitlens.cli.common import mix_before_load
    from traitlens.data import load_mc_items
    from traitlens.evaluate.capability import capability, compare_capability
    from traitlens.steer import METHODS
    from traitlens.steer.spec import SteeringSpec

    spec = SteeringSpec.parse(mix, method=method, layers=layers)
    check_choice("--method", method, METHODS)
    check_choice("--engine", engine, ("traitlens", "lm-eval"))
    check_int("--limit", limit, 1, 1_000_000, example=100)
    check_int("--batch-size", batch_size, 1, MAX_BATCH_SIZE, example=32)
    items = load_mc_items(items_path)[:limit]
    interventions = mix_before_load(run, spec)
    if engine == "lm-eval":
        from traitlens.engines.lmeval import require_lm_eval

        require_lm_eval()
    check_model(model, device, dtype)
    tm = load_into(out, model, device, dtype)
    if engine == "traitlens":
        result, plain, steered = capability(tm, interventions, items, batch_size=batch_size)
    else:
        from traitlens.engines.lmeval import export_steer, lm_eval_samples, write_task

        task = write_task(out / "lm_eval_task", items_path)
        steer_file = export_steer(tm, interventions, out / "steer.pt")
        plain = _scores_from_lm_eval(lm_eval_samples(tm, task, None, limit))
        steered = _scores_from_lm_eval(lm_eval_samples(tm, task, steer_file, limit))
        result = compare_capability(plain, steered)
    r = result
    described = SteeringSpec.describe(interventions)
    typer.echo(
        f"{r.n_items} items ({engine}), chance {r.chance:.2f}; {described}\n"
        f"  accuracy  unsteered {r.accuracy_plain:.3f}  steered {r.accuracy_steered:.3f}  "
        f"change {r.change.estimate:+.3f} [{r.change.low:+.3f}, {r.change.high:+.3f}]\n"
        f"  acc_norm  unsteered {r.accuracy_norm_plain:.3f}  steered "
        f"{r.accuracy_norm_steered:.3f}  change {r.change_norm.estimate:+.3f} "
        f"[{r.change_norm.low:+.3f}, {r.change_norm.high:+.3f}]\n"
        f"  items flipped right→wrong {r.flipped_to_wrong}, wrong→right {r.flipped_to_right}"
    )
    path = write_json(
        out / "capability.json",
        {
            "kind": "capability",
            "engine": engine,
            "model": tm.identity.to_dict(),
            "mix": described,
            "items": "shipped capability_mc.jsonl" if items_path is None else str(items_path),
            **r.to_dict(),
            "steered_scores": [s.to_dict() for s in steered],
            "plain_scores": [s.to_dict() for s in plain],
        },
    )
    done(path, "capability comparison")
