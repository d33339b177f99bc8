"""Options and helpers shared by subcommands.

Every handler checks what it can *before* the model loads (numbers, names, files,
output folders, the model path itself), so a typo costs a second, not a model load
and a half-finished run. The ``check_*`` helpers raise :class:`DataError` (or the
error of the layer that owns the rule) with the option, the value and the fix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from traitlens.errors import ArtifactError, DataError, ModelError, TraitlensError

if TYPE_CHECKING:
    from traitlens.models.loading import SourceInfo, TraitModel

console = Console(stderr=True)


def log_line(message: str) -> None:
    """A progress line from the library, printed as text: a stage header such as
    ``[concept 1/5]`` would otherwise be read as rich markup and vanish."""
    console.print(message, markup=False, highlight=False, soft_wrap=True)


MODEL_OPTION = typer.Option(
    None, "--model", "-m", help="HF hub id, local dir or .gguf file (default: embedded SmolLM2)"
)
DEVICE_OPTION = typer.Option("auto", "--device", help="cpu, cuda, cuda:1, or auto")
DTYPE_OPTION = typer.Option("auto", "--dtype", help="float32, bfloat16, float16 or auto")
# the options of the stages that read a run directory (probe, neurons) or write one
RUN_OPTION = typer.Option(..., "--run", "-r", help="run directory written by capture")
RUN_TRAITS_OPTION = typer.Option(
    None, "--traits", "-t", help="e.g. O,C,E (default: every trait in the run)"
)
FIGURES_OPTION = typer.Option(True, help="also write figures to RUN/figures/")
FORCE_OPTION = typer.Option(
    False, "--force", help="replace artifacts in the run made from other inputs"
)
# the options of the commands that apply a run's trait vectors (steer, vectors *,
# evaluate capability)
VECTORS_RUN_OPTION = typer.Option(..., "--run", help="run directory holding vectors.json")
DIRECTION_METHOD_OPTION = typer.Option(
    "mean_diff", "--method", help="a registered direction method"
)
MIX_OPTION = typer.Option(..., "--mix", help="trait strengths in spread units, e.g. E=+1,N=-0.5")
MIX_LAYERS_OPTION = typer.Option(None, "--layers", "-l", help="default: the middle band")

# Sane upper bounds: far above any useful value, low enough to catch a slipped digit
# before it allocates a batch or a generation that cannot fit in memory.
MAX_BATCH_SIZE = 4096
MAX_NEW_TOKENS = 4096
MAX_SEED = 2**32 - 1
MAX_FOLDS = 100
MAX_COUNT = 10_000  # questions, personas, seeds: more than any shipped or sensible set


def load(model: str | None, device: str = "auto", dtype: str = "auto") -> TraitModel:
    from traitlens.models.loading import load_model

    with console.status(f"loading {model or 'embedded SmolLM2-135M-Instruct'}"):
        tm = load_model(model, device=device, dtype=dtype)
    console.print(
        f"model: [bold]{tm.identity.name}[/] ({tm.identity.architecture}, {tm.n_layers} layers, "
        f"chat format: {tm.formatter.mode}, {tm.device}, {str(tm.dtype).replace('torch.', '')})"
    )
    return tm


def load_into(
    out: Path,
    model: str | None,
    device: str = "auto",
    dtype: str = "auto",
    *,
    run: bool = True,
) -> TraitModel:
    """Check the output folder ``out`` (last of the checks: it creates the folder), take
    its run lock for the rest of the command (a second process writing into it is refused
    with this one's PID) when it is a traitlens run (``run``; not for a folder that must
    hold only what is exported, such as a baked checkpoint), then load the model."""
    from traitlens.provenance import acquire_run

    check_out_dir(out)
    if run:
        acquire_run(out)
    return load(model, device, dtype)


def done(path: Path | str, what: str = "artifacts") -> None:
    console.print(f"[green]✓[/] {what} written to [bold]{path}[/]")


def run_state(run: Path) -> dict[str, tuple[str, int]]:
    """``{stage: (key, mtime)}`` of a run's stage artifacts, to tell afterwards what a
    command wrote and what it reused."""
    from traitlens.provenance import STAGE_FILES, RunManifest

    try:
        stages = RunManifest(run).stages
    except TraitlensError:
        return {}
    state = {}
    for stage, prov in stages.items():
        path = run / STAGE_FILES.get(stage, "")
        state[stage] = (prov.key, path.stat().st_mtime_ns if path.is_file() else 0)
    return state


def report_stages(run: Path, before: dict[str, tuple[str, int]], stages: list[str]) -> None:
    """One line per stage: written (new key or rewritten) or reused (same inputs)."""
    after = run_state(run)
    for stage in stages:
        if stage not in after:
            continue
        if before.get(stage) == after[stage]:
            console.print(f"[green]✓[/] {stage}: reused (same inputs, nothing recomputed)")
        else:
            console.print(f"[green]✓[/] {stage}: written (key {after[stage][0][:12]})")
    console.print(f"artifacts in [bold]{run}[/]")


@contextmanager
def reporting_stages(
    run: Path, stages: Sequence[str], figures: bool = False
) -> Iterator[Path | None]:
    """Around a command's work on ``run``: afterwards, say for each of ``stages`` whether
    it was written or reused (:func:`report_stages`) and where the artifacts are.

    Yields ``RUN/figures`` when ``figures`` (checked writable first, so a read-only run
    fails before any work, not after), else None.
    """
    folder = None
    if figures:
        from traitlens.artifact_io import check_writable

        folder = run / "figures"
        check_writable(folder)
    before = run_state(run)
    yield folder
    report_stages(run, before, list(stages))


def plot_into(folder: Path, what: str, artifact: Any, *plots: Callable[..., Any]) -> None:
    """Draw each of ``plots`` (``plot(artifact, folder)``) and say where they went."""
    for plot in plots:
        plot(artifact, folder)
    done(folder, what)


# ------------------------------------------------------------------------ checks


def check_int(
    option: str, value: int | None, low: int, high: int | None = None, example: int | None = None
) -> None:
    """``low <= value <= high`` (``None``: the option was not given, nothing to check)."""
    if value is None:
        return
    if value < low or (high is not None and value > high):
        span = f"from {low} to {high}" if high is not None else f"of at least {low}"
        shown = f" (e.g. {option} {example})" if example is not None else ""
        raise DataError(f"{option} {value} is out of range: give a whole number {span}{shown}")


def check_float(option: str, value: float | None, *bounds: Any, **how: Any) -> None:
    """A finite ``value`` within the bounds :func:`traitlens.limits.out_of_range` takes
    (``low``, ``high``, open ends, ``absolute``, ``hint``); None is not checked."""
    from traitlens.limits import out_of_range

    if value is not None and (problem := out_of_range(option, value, *bounds, **how)):
        raise DataError(problem)


def check_strength(value: float | None, option: str = "--strength") -> None:
    """A steering strength: finite, |value| within the steer stage's bound."""
    from traitlens.limits import MAX_STRENGTH, STRENGTH_HINT

    check_float(option, value, high=MAX_STRENGTH, absolute=True, hint=STRENGTH_HINT)


def check_choice(option: str, value: str | None, choices: Iterable[str]) -> None:
    allowed = list(choices)
    if value is not None and value not in allowed:
        raise DataError(f"unknown {option} {value!r}: use one of {', '.join(allowed)}")


def check_traits(option: str, spec: str | None) -> list[str] | None:
    """Parse a trait selection (``O,C``, full names, or ``all``) or say what is wrong."""
    from traitlens.data import TRAITS, parse_traits

    if spec is None:
        return None
    if spec.strip().lower() == "all":
        return list(TRAITS)
    try:
        return parse_traits(spec)
    except (DataError, ValueError) as exc:
        raise DataError(f"{option} {spec!r}: {exc}") from None


def check_seed(option: str, value: int | None) -> None:
    check_int(option, value, 0, MAX_SEED, example=0)


def check_device(device: str) -> None:
    """``auto``, ``cpu``, ``mps``, ``cuda`` or ``cuda:N`` that exists on this machine."""
    import re

    value = device.strip().lower()
    if value in ("auto", "cpu"):
        return
    if value == "mps":
        import torch

        if not torch.backends.mps.is_available():
            raise ModelError("--device mps: Apple's MPS is not available here; use --device cpu")
        return
    match = re.fullmatch(r"cuda(?::(\d+))?", value)
    if match is None:
        raise DataError(f"unknown --device {device!r}: use auto, cpu, cuda, cuda:N or mps")
    import torch

    if not torch.cuda.is_available():
        raise ModelError(
            f"--device {device}: CUDA is not available on this machine; use --device cpu (or auto)"
        )
    if match.group(1) is not None and int(match.group(1)) >= torch.cuda.device_count():
        raise ModelError(
            f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s) "
            f"(cuda:0..cuda:{torch.cuda.device_count() - 1})"
        )


def check_dtype(dtype: str) -> None:
    from traitlens.models.loading import DTYPES

    check_choice("--dtype", dtype, ("auto", *DTYPES))


def check_model(model: str | None, device: str = "auto", dtype: str = "auto") -> SourceInfo:
    """``--model``/``--device``/``--dtype`` without loading weights; returns what is known
    of the model's shape (layer count, context) for range checks."""
    from traitlens.models.loading import inspect_model

    check_dtype(dtype)
    check_device(device)
    return inspect_model(model)


def check_layer_spec(option: str, spec: str | None, n_layers: int | None) -> None:
    """A layer selection (``10-14``, ``8,10,12``): syntax always, range when known."""
    if spec is None:
        return
    from traitlens.steer.layers import parse_layers

    try:
        parse_layers(spec, n_layers if n_layers is not None else 1_000_000)
    except DataError as exc:
        raise DataError(f"{option}: {exc}") from None


def check_layer_index(option: str, layer: int | None, n_layers: int | None) -> None:
    if layer is None or n_layers is None:
        return
    if not -n_layers <= layer < n_layers:
        raise DataError(
            f"{option} {layer} is out of range: this model has {n_layers} layers "
            f"(0..{n_layers - 1}, or negative from the end)"
        )


def check_input_file(option: str, path: Path | None) -> None:
    if path is None:
        return
    if not path.exists():
        raise DataError(f"{option} {path}: file not found — check the path and spelling")
    if not path.is_file():
        raise DataError(f"{option} {path} is a folder — pass the path of a file")


def check_run_dir(path: Path, option: str = "--run", needs: str | None = None) -> None:
    """An existing run directory (``needs``: a file in it that must exist)."""
    if not path.exists():
        raise ArtifactError(
            f"{option} {path}: no such directory — pass a run directory written by "
            "`traitlens capture` (or `traitlens study`)"
        )
    if not path.is_dir():
        raise ArtifactError(f"{option} {path} is a file, not a run directory")
    if needs is not None and not (path / needs).exists():
        raise ArtifactError(
            f"{path / needs} not found; run the stage that writes it first "
            f"(e.g. `traitlens capture --out {path}`)"
        )


def check_out_dir(path: Path) -> None:
    """An output folder that can be created and written (call it last: it creates it)."""
    from traitlens.artifact_io import check_writable

    check_writable(path)


def check_out_file(path: Path, option: str = "--out") -> None:
    """An output *file*: not a folder, in a folder that can be written."""
    if path.is_dir():
        raise ArtifactError(
            f"{option} {path} is a folder; name the file to write, e.g. {path / 'vector.gguf'}"
        )
    from traitlens.artifact_io import check_writable

    try:
        check_writable(path.parent)
    except ArtifactError as exc:
        raise ArtifactError(f"{option} {path}: {exc}") from None


def check_judge_url(url: str | None) -> None:
    from traitlens.evaluate.judge import check_judge_url as check

    if url is not None:
        check(url)


def mix_before_load(run: Path, spec: Any) -> Any:
    """A ``--mix`` :class:`~traitlens.steer.spec.SteeringSpec` resolved to the run's
    direction additions, every check done before any model loads."""
    from traitlens.steer import VectorSet

    check_layer_spec("--layers", spec.layers, None)
    check_run_dir(run, needs="vectors.json")
    return spec.directions(VectorSet.load(run))
