"""``traitlens steer`` (side-by-side steered answers) and ``traitlens vectors``
(show / export to llama.cpp GGUF / import)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import typer
from typer.core import TyperCommand, TyperOption

from traitlens.cli.common import (
    DEVICE_OPTION,
    DIRECTION_METHOD_OPTION,
    DTYPE_OPTION,
    MAX_NEW_TOKENS,
    MIX_LAYERS_OPTION,
    MIX_OPTION,
    MODEL_OPTION,
    VECTORS_RUN_OPTION,
    check_choice,
    check_float,
    check_input_file,
    check_int,
    check_layer_spec,
    check_model,
    check_out_dir,
    check_out_file,
    check_run_dir,
    check_seed,
    check_strength,
    console,
    done,
    load,
    load_into,
    mix_before_load,
)

if TYPE_CHECKING:
    from traitlens.models.loading import TraitModel
    from traitlens.steer.interventions import Intervention, Positions


def method_help(with_neurons: bool) -> str:
    """``--method`` help: the direction methods registered now (and NPTI's neuron edit)."""
    from traitlens.steer import METHODS

    names = ", ".join(METHODS)
    return f"{names} (directions) or neurons (NPTI edit)" if with_neurons else names


class _MethodHelp(TyperCommand):
    """A command whose ``--method`` help lists the registry when the help is shown: a
    method registered after the app was built is offered like a built-in one."""

    with_neurons = True

    # typer vendors click privately (typer._click): its Context and HelpFormatter go untyped
    def format_help(self, ctx: Any, formatter: Any) -> None:
        for param in self.params:
            if isinstance(param, TyperOption) and param.name == "method":
                param.help = method_help(self.with_neurons)
        super().format_help(ctx, formatter)


class _DirectionHelp(_MethodHelp):
    with_neurons = False


def _trait(value: str) -> str:
    from traitlens.data import normalize_trait

    try:
        return normalize_trait(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _pole(value: str) -> str:
    if value not in ("high", "low"):
        raise typer.BadParameter(f"pole must be 'high' or 'low', got {value!r}")
    return value


def _positions(value: str) -> Positions:
    if value not in ("all", "prompt", "generated"):
        raise typer.BadParameter(f"positions must be all, prompt or generated, got {value!r}")
    return cast("Positions", value)


def _check_steer_options(
    method: str,
    span: str,
    strength: float,
    gamma: float,
    max_new_tokens: int,
    seed: int,
    prompt: list[str],
) -> None:
    """Everything about ``traitlens steer`` that can be wrong without the model."""
    from traitlens.errors import DataError
    from traitlens.steer import MAX_GAMMA, METHODS

    check_choice("--method", method, (*METHODS, "neurons"))
    check_choice("--span", span, ("auto", "answer", "question"))
    check_strength(strength)
    check_float(
        "--gamma",
        gamma,
        high=MAX_GAMMA,
        absolute=True,
        hint="γ multiplies a neuron's usual activation; NPTI uses about 1",
    )
    check_int("--max-new-tokens", max_new_tokens, 1, MAX_NEW_TOKENS, example=48)
    check_seed("--seed", seed)
    for index, text in enumerate(prompt, start=1):
        if not text.strip():
            raise DataError(f"--prompt #{index} is empty; give the text to answer")


def _intervention(
    tm: TraitModel,
    run: Path,
    code: str,
    pole: str,
    method: str,
    *,
    strength: float,
    gamma: float,
    layers: list[int],
    positions: Positions,
    span: str,
) -> tuple[Intervention, str]:
    """The NPTI edit or the direction addition ``--method`` asks for, and a line saying
    what it does."""
    from traitlens.steer import AddDirection, run_neuron_edit, run_vector

    if method == "neurons":
        edit = run_neuron_edit(tm, run, code, pole, gamma=gamma, layers=layers, positions=positions)
        how = (
            f"NPTI γ={gamma:g}: {len(edit.target)} {pole}-pole neurons boosted, "
            f"{len(edit.opposite)} opposite silenced"
        )
        return edit, how
    vector = run_vector(tm, run, code, method, span=span)
    signed = strength if pole == "high" else -strength
    how = f"{method} from {vector.source.get('span', '?')} tokens, {signed:+g}σ"
    return AddDirection(vector, signed, layers=tuple(layers), positions=positions), how


def _print_side_by_side(
    title: str, prompts: list[str], pairs: list[tuple[str, str]], steered_header: str
) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=True)
    table.add_column("prompt", style="bold", ratio=1)
    table.add_column("unsteered", ratio=2)
    table.add_column(steered_header, ratio=2)
    for text, (plain, steered) in zip(prompts, pairs, strict=True):
        table.add_row(text, plain, steered)
    Console().print(table)


@dataclass(frozen=True)
class _Answers:
    """What ``steer`` answers, with and without the edit, whichever way the edit is
    chosen (``--trait`` or ``--calibrated``)."""

    prompts: list[str]
    system: str | None
    max_new_tokens: int
    sample: bool
    seed: int

    def check_fits(self, tm: TraitModel) -> None:
        """Each prompt and the system prompt fit the model's context (before any work)."""
        from traitlens.models.loading import check_text_fits

        numbered = [(f"#{i}", text) for i, text in enumerate(self.prompts, 1)]
        check_text_fits(tm, numbered, "--prompt", "shorten it")
        if self.system:
            check_text_fits(tm, [("", self.system)], "--system", "shorten it")

    def side_by_side(
        self, tm: TraitModel, edit: Intervention | list[Any], title: str, steered_header: str
    ) -> None:
        """Answer every prompt unsteered and under ``edit``, and print both in a table."""
        from traitlens.steer import compare_steering

        pairs = compare_steering(
            tm,
            self.prompts,
            edit,
            system=self.system,
            max_new_tokens=self.max_new_tokens,
            do_sample=self.sample,
            seed=self.seed,
            progress=False,
        )
        _print_side_by_side(title, self.prompts, pairs, steered_header)


def _steer_calibrated(
    path: Path, answers: _Answers, positions: str, model: str | None, device: str, dtype: str
) -> None:
    """``steer --calibrated FILE``: the sweep's choice, nothing else to pick."""
    from traitlens.steer.calibrate import CalibratedVector
    from traitlens.steer.layers import layer_text

    where = _positions(positions)
    check_int("--max-new-tokens", answers.max_new_tokens, 1, MAX_NEW_TOKENS, example=48)
    check_seed("--seed", answers.seed)
    saved = CalibratedVector.load(path)  # a bad file fails before the model loads
    if model is None and saved.calibration.model != "embedded":
        model = saved.calibration.model  # the model the sweep calibrated on
    check_model(model, device, dtype)
    tm = load(model, device, dtype)
    answers.check_fits(tm)
    chosen = CalibratedVector.load(path, expect=tm.identity)
    c = chosen.calibration
    edit = chosen.directions(where)
    title = (
        f"{c.trait} → {c.pole} (calibrated {c.method}: {c.strength:+g}σ on layers "
        f"{layer_text(list(c.layers))}, perplexity ×{c.perplexity_ratio:.2f} within "
        f"×{c.max_ppl_ratio:g})"
    )
    answers.side_by_side(tm, edit, title, f"steered: {c.trait} {c.pole}")


def steer_cmd(
    trait: str | None = typer.Option(
        None, "--trait", "-t", help="O, C, E, A or N (or full name); or use --calibrated"
    ),
    prompt: list[str] = typer.Option(..., "--prompt", "-p", help="repeatable"),
    pole: str = typer.Option("high", "--pole", help="push toward the high or low pole"),
    method: str = DIRECTION_METHOD_OPTION,
    strength: float = typer.Option(
        2.0, "--strength", "-s", help="standard deviations added at each layer (|s| <= 50)"
    ),
    layers: str | None = typer.Option(
        None, "--layers", "-l", help="e.g. 10-20 or 8,10,12 (default: a middle window)"
    ),
    run: Path | None = typer.Option(
        None,
        "--run",
        help="run directory: reuses its vectors/capture, saves new vectors "
        "(default: a per-model cache run)",
    ),
    system: str | None = typer.Option(None, "--system", help="system prompt for every prompt"),
    span: str = typer.Option(
        "auto",
        "--span",
        help="captured tokens vectors are read from: auto (answers; questions for methods "
        "on paired prompts, e.g. pca), answer or question",
    ),
    max_new_tokens: int = typer.Option(48, "--max-new-tokens", "-n"),
    positions: str = typer.Option("all", "--positions", help="all, prompt or generated"),
    gamma: float = typer.Option(1.0, "--gamma", help="NPTI γ (method neurons)"),
    sample: bool = typer.Option(False, "--sample", help="sample instead of greedy"),
    seed: int = typer.Option(0, "--seed"),
    calibrated: Path | None = typer.Option(
        None,
        "--calibrated",
        help="a calibrated vector (`traitlens calibrate`): its trait, pole, band and "
        "strength replace --trait/--pole/--method/--layers/--strength",
    ),
    model: str | None = MODEL_OPTION,
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
) -> None:
    """Answer prompts with and without steering toward a trait pole, side by side."""
    answers = _Answers(prompt, system, max_new_tokens, sample, seed)
    if calibrated is not None:
        _steer_calibrated(calibrated, answers, positions, model, device, dtype)
        return
    if trait is None:
        raise typer.BadParameter("pass --trait (e.g. --trait E) or --calibrated FILE")
    from traitlens.steer import default_run_dir, middle_layers, parse_layers
    from traitlens.steer.layers import layer_text

    # everything that can be wrong without the model, checked before it loads
    code, pole = _trait(trait), _pole(pole)
    where = _positions(positions)
    _check_steer_options(method, span, strength, gamma, max_new_tokens, seed, prompt)
    info = check_model(model, device, dtype)
    check_layer_spec("--layers", layers, info.n_layers)
    if run is not None:
        check_out_dir(run)
    tm = load(model, device, dtype)
    answers.check_fits(tm)
    run = run or default_run_dir(tm)
    chosen = parse_layers(layers, tm.n_layers) if layers else middle_layers(tm.n_layers)
    intervention, how = _intervention(
        tm,
        run,
        code,
        pole,
        method,
        strength=strength,
        gamma=gamma,
        layers=chosen,
        positions=where,
        span=span,
    )
    title = f"{code} → {pole} ({how}, layers {layer_text(chosen)}, positions {positions})"
    answers.side_by_side(tm, intervention, title, f"steered: {code} {pole}")
    done(run, "run artifacts (captures, vectors.json / neurons.json)")


def vectors_show(run: Path = typer.Option(..., "--run", help="run directory")) -> None:
    """List the trait vectors saved in RUN/vectors.json."""
    from rich.console import Console
    from rich.table import Table

    from traitlens.steer import VectorSet

    check_run_dir(run, needs="vectors.json")
    vectors = VectorSet.load(run)
    table = Table(title=f"{run}/vectors.json — model {vectors.identity.name}")
    for column in ("trait", "method", "pole", "hook", "layers", "spread (min–max)", "prompts"):
        table.add_column(column)
    for vector in vectors:
        table.add_row(
            vector.trait,
            vector.method,
            vector.pole,
            vector.hook,
            f"{vector.layers[0]}-{vector.layers[-1]} ({len(vector.layers)})",
            f"{float(vector.spread.min()):.3g}–{float(vector.spread.max()):.3g}",
            str(vector.source.get("n_prompts", "")),
        )
    Console().print(table)


def vectors_export(
    run: Path = VECTORS_RUN_OPTION,
    trait: str = typer.Option(..., "--trait", "-t"),
    out: Path = typer.Option(..., "--out", "-o", help="file to write"),
    method: str = DIRECTION_METHOD_OPTION,
    fmt: str = typer.Option("gguf", "--format", help="gguf (llama.cpp) or safetensors"),
    strength: float = typer.Option(
        1.0, "--strength", "-s", help="baked in: the file holds strength × spread × direction"
    ),
    layers: str | None = typer.Option(None, "--layers", "-l", help="default: all but 0"),
) -> None:
    """Export one vector; GGUF files load in llama.cpp with --control-vector FILE."""
    from traitlens.steer import METHODS, VectorSet, parse_layers

    code = _trait(trait)
    check_choice("--format", fmt, ("gguf", "safetensors"))
    check_choice("--method", method, METHODS)
    check_strength(strength)
    check_layer_spec("--layers", layers, None)
    check_run_dir(run, needs="vectors.json")
    check_out_file(out)
    vector = VectorSet.load(run).get(code, method)
    check_layer_spec("--layers", layers, vector.identity.n_layers)
    chosen = parse_layers(layers, vector.identity.n_layers) if layers else None
    if fmt == "gguf":
        from traitlens.steer.gguf_io import export_gguf

        path = export_gguf(vector, out, strength=strength, layers=chosen)
        console.print(
            f"llama.cpp: llama-cli -m MODEL.gguf --control-vector {path} "
            "(tensors direction.N act on block N's output, N from 1)"
        )
    elif fmt == "safetensors":
        path = (vector.select(chosen) if chosen else vector).save(out)
    else:  # pragma: no cover - checked above
        raise typer.BadParameter(f"--format must be gguf or safetensors, got {fmt!r}")
    done(path, "vector")


def vectors_import(
    file: Path = typer.Argument(..., help="control-vector .gguf (traitlens, repeng, llama.cpp)"),
    run: Path = typer.Option(..., "--run", help="run directory to add it to"),
    trait: str | None = typer.Option(None, "--trait", "-t", help="name it (default: from file)"),
    method: str | None = typer.Option(None, "--method", help="name it (default: from file)"),
    model: str | None = MODEL_OPTION,
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
) -> None:
    """Import a control-vector GGUF into RUN/vectors.* (checked against the model)."""
    from dataclasses import replace

    from traitlens.steer import VectorSet, import_gguf, read_gguf

    code = _trait(trait) if trait else None
    if method is not None and not method.strip():
        raise typer.BadParameter("--method must not be empty")
    check_input_file("FILE", file)
    read_gguf(file)  # a truncated or foreign file fails here, before the model loads
    existing = (run / "vectors.json").exists()
    if existing:
        VectorSet.load(run)  # an unreadable vector set is reported before loading
    check_model(model, device, dtype)
    tm = load_into(run, model, device, dtype)
    vector = import_gguf(file, tm)
    vector = replace(vector, trait=code or vector.trait, method=method or vector.method)
    vectors = VectorSet.load(run, expect=tm.identity) if existing else VectorSet(tm.identity)
    vectors.add(vector)
    done(vectors.save(run), f"{vector.trait}/{vector.method} vector")


def vectors_bake(
    run: Path = VECTORS_RUN_OPTION,
    mix: str = MIX_OPTION,
    out: Path = typer.Option(..., "--out", "-o", help="folder for the baked HF checkpoint"),
    method: str = DIRECTION_METHOD_OPTION,
    layers: str | None = MIX_LAYERS_OPTION,
    force: bool = typer.Option(False, "--force", help="replace the files already in --out"),
    model: str | None = MODEL_OPTION,
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
) -> None:
    """Fold a trait mix into MLP output biases: a plain Hugging Face checkpoint that steers
    with no traitlens (transformers, vLLM, TGI, llama.cpp after conversion)."""
    from traitlens.steer import METHODS
    from traitlens.steer.bake import bake, check_bake_target
    from traitlens.steer.spec import SteeringSpec

    spec = SteeringSpec.parse(mix, method=method, layers=layers)
    check_bake_target(out, force)  # before the model loads
    check_choice("--method", method, METHODS)
    interventions = mix_before_load(run, spec)
    check_model(model, device, "float32" if dtype == "auto" else dtype)
    tm = load_into(out, model, device, "float32" if dtype == "auto" else dtype, run=False)
    path = bake(tm, interventions, out, force=force)
    console.print(
        f"load it anywhere: AutoModelForCausalLM.from_pretrained('{path}') — "
        + SteeringSpec.describe(interventions)
    )
    done(path, "baked checkpoint")


def vectors_lmeval(
    run: Path = VECTORS_RUN_OPTION,
    mix: str = MIX_OPTION,
    out: Path = typer.Option(..., "--out", "-o", help="folder for steer.pt and the task"),
    method: str = DIRECTION_METHOD_OPTION,
    layers: str | None = MIX_LAYERS_OPTION,
    force: bool = typer.Option(False, "--force", help="replace an export already in --out"),
    model: str | None = MODEL_OPTION,
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
) -> None:
    """Export a trait mix for lm-evaluation-harness's `steered` model, with the offline
    traitlens_mc task, and print the lm_eval command that runs it."""
    from traitlens.engines.lmeval import TASK_NAME, export_steer, write_task
    from traitlens.steer import METHODS
    from traitlens.steer.spec import SteeringSpec

    spec = SteeringSpec.parse(mix, method=method, layers=layers)
    check_choice("--method", method, METHODS)
    if (out / "steer.pt").exists() and not force:
        from traitlens.errors import ArtifactError

        raise ArtifactError(
            f"{out} already holds an lm-eval export (steer.pt); nothing was written. Choose a "
            "new --out, or pass --force to replace it"
        )
    interventions = mix_before_load(run, spec)
    check_model(model, device, dtype)
    tm = load_into(out, model, device, dtype, run=False)
    steer_file = export_steer(tm, interventions, out / "steer.pt")
    task = write_task(out / "task")
    pretrained = tm.source if Path(str(tm.source)).is_dir() else tm.identity.name
    console.print(f"{SteeringSpec.describe(interventions)}; run it with:")
    typer.echo(  # plain echo: rich would wrap the command and break copy-paste
        f"HF_DATASETS_OFFLINE=1 lm_eval --model steered "
        f"--model_args pretrained={pretrained},steer_path={steer_file} "
        f"--tasks {TASK_NAME} --include_path {task}"
    )
    done(steer_file, "lm-eval steering file")


def register(app: typer.Typer) -> None:
    app.command("steer", cls=_MethodHelp)(steer_cmd)
    vectors_app = typer.Typer(
        help="Trait vectors of a run: show them, export to llama.cpp GGUF, import GGUF.",
        no_args_is_help=True,
    )
    app.add_typer(vectors_app, name="vectors")
    vectors_app.command("show")(vectors_show)
    vectors_app.command("export", cls=_DirectionHelp)(vectors_export)
    vectors_app.command("import")(vectors_import)
    vectors_app.command("bake", cls=_DirectionHelp)(vectors_bake)
    vectors_app.command("lmeval", cls=_DirectionHelp)(vectors_lmeval)
