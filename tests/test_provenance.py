"""Input keys: reuse only what is unchanged, never overwrite another set-up's run,
never relabel a stale result (tiny random models; the study test uses an 8-layer one)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import build_tiny, make_tokenizer
from traitlens.artifact_io import Record
from traitlens.capture.pipeline import capture_run
from traitlens.errors import ArtifactError
from traitlens.evaluate.results import Interval
from traitlens.neurons import neurons_job, prompts_per_group
from traitlens.probe import probes_job
from traitlens.provenance import (
    RunConflictError,
    RunManifest,
    claim,
    describe_changes,
    persist,
    provenance,
    record,
)
from traitlens.report.verify import verify_run
from traitlens.steer import trait_vectors


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_key_changes_with_every_input() -> None:
    base = provenance("probes", model="d1", config={"folds": 5}, data=[1], upstream={"a": "k"})
    same = provenance("probes", model="d1", config={"folds": 5}, data=[1], upstream={"a": "k"})
    assert base.key == same.key
    for changed in (
        provenance("probes", model="d2", config={"folds": 5}, data=[1], upstream={"a": "k"}),
        provenance("probes", model="d1", config={"folds": 4}, data=[1], upstream={"a": "k"}),
        provenance("probes", model="d1", config={"folds": 5}, data=[2], upstream={"a": "k"}),
        provenance("probes", model="d1", config={"folds": 5}, data=[1], upstream={"a": "j"}),
        provenance("neurons", model="d1", config={"folds": 5}, data=[1], upstream={"a": "k"}),
    ):
        assert changed.key != base.key
    assert describe_changes({"config": {"strength": 2.0}}, {"config": {"strength": 1.0}}) == [
        "strength 2.0 → 1.0"
    ]


def test_a_result_computed_in_another_precision_has_another_key() -> None:
    """The same weights in bfloat16 give other activations: a bf16 run resumed in a
    float32 run's folder must not reuse its rows (float32 keys stay those of old runs)."""
    from dataclasses import replace

    tm = build_tiny("llama")
    f32 = tm.identity
    assert f32.dtype == "float32"
    bf16 = replace(f32, dtype="bfloat16")
    assert bf16 == f32  # the same model: artifacts still load across precisions
    keys = {provenance("capture", model=i, config={"n": 1}).key for i in (f32, bf16)}
    assert len(keys) == 2
    assert provenance("capture", model=f32, config={"n": 1}).key == (
        provenance("capture", model=f32.digest, config={"n": 1}).key
    )


def test_claim_reuses_refuses_and_recomputes_stale(tmp_path: Path) -> None:
    up1 = provenance("prompts", data=[1])
    record(tmp_path, "prompts", up1)
    old = provenance("probes", config={"folds": 5}, upstream={"prompts": up1.key})
    record(tmp_path, "probes", old)
    assert claim(tmp_path, "probes", old, old.key, exists=True)  # same key: reuse
    assert not claim(tmp_path, "probes", old, None, exists=False)  # nothing there: compute
    new = provenance("probes", config={"folds": 3}, upstream={"prompts": up1.key})
    with pytest.raises(RunConflictError, match=r"folds 5 → 3.*--force"):
        claim(tmp_path, "probes", new, old.key, exists=True)
    assert not claim(tmp_path, "probes", new, old.key, exists=True, force=True)
    # once its upstream is replaced, the old artifact is stale: recomputed without --force
    record(tmp_path, "prompts", provenance("prompts", data=[2]))
    assert not claim(tmp_path, "probes", new, old.key, exists=True)
    with pytest.raises(RunConflictError, match="no input key on record"):
        claim(tmp_path, "neurons", new, None, exists=True)


def _chain(tm, run: Path, traits=("E", "A")) -> None:
    captured = capture_run(
        tm,
        run,
        list(traits),
        n_questions=3,
        n_personas_per_pole=2,
        max_new_tokens=4,
        progress=False,
    )
    probes = persist(probes_job(captured.question, captured.prompts, folds=2, progress=False), run)
    assert captured.answer is not None and captured.answer.neuron_stats is not None
    persist(
        neurons_job(
            captured.answer.neuron_stats, prompt_counts=prompts_per_group(captured.prompts)
        ),
        run,
    )
    vectors = trait_vectors(captured.answer, captured.prompts, list(traits), ["mean_diff"])
    vectors.save(run)
    assert probes.key is not None


def test_same_inputs_give_byte_identical_artifacts(tiny_llama, tmp_path: Path) -> None:
    _chain(tiny_llama, tmp_path / "a")
    _chain(tiny_llama, tmp_path / "b")
    first, second = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert first.keys() == second.keys() and len(first) >= 10
    assert first == second


def test_capture_into_another_set_up_refuses_and_changes_nothing(
    tiny_llama, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    _chain(tiny_llama, run)
    before = _tree(run)
    assert verify_run(run) == []
    with pytest.raises(RunConflictError, match=r"n_prompts.*--force"):
        capture_run(tiny_llama, run, ["E"], n_questions=2, n_personas_per_pole=1, progress=False)
    assert _tree(run) == before
    # a different answer length keeps the prompts but refuses to mix answers
    with pytest.raises(RunConflictError, match="max_new_tokens 4 → 6"):
        capture_run(
            tiny_llama,
            run,
            ["E", "A"],
            n_questions=3,
            n_personas_per_pole=2,
            max_new_tokens=6,
            progress=False,
        )
    assert _tree(run) == before
    # with --force the capture is replaced, and what was made from the old one is stale
    capture_run(
        tiny_llama,
        run,
        ["E"],
        n_questions=2,
        n_personas_per_pole=1,
        max_new_tokens=4,
        progress=False,
        force=True,
    )
    problems = verify_run(run)
    assert any("probes was made from an older" in p for p in problems), problems


def test_report_refuses_an_inconsistent_run(tmp_path: Path) -> None:
    from traitlens.report.study_report import build_report

    run = tmp_path / "run"
    run.mkdir()
    record(run, "prompts", provenance("prompts", data=[1]))
    (run / "prompts.jsonl").write_text("")
    with pytest.raises(ArtifactError, match="inconsistent.*--allow-inconsistent"):
        build_report(run)


def _deep_llama(seed: int = 0):
    """8 blocks: enough for a steering band and downstream readout layers."""
    import transformers as tf

    from traitlens.models.loading import wrap_model

    torch.manual_seed(seed)
    config = tf.LlamaConfig(
        vocab_size=400,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=8,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    model = tf.AutoModelForCausalLM.from_config(config).eval()
    return wrap_model(model, make_tokenizer(), name="tiny-llama-8")


@pytest.mark.heavy
def test_changed_strength_measures_new_rows_and_never_relabels(tmp_path: Path) -> None:
    """The reproduction: a rerun with --strength 1 used to print '(cached)' for every row
    and label strength-2 measurements as strength 1."""
    from traitlens.study import resolve_config, run_study

    tm = _deep_llama()
    run = tmp_path / "run"
    micro = {
        "design": "persona",
        "traits": ["E", "A"],
        "vector_methods": ["mean_diff"],
        "eval_methods": ["mean_diff"],
        "dose_traits": [],
        "generation_prompts": 0,
    }
    logs: list[str] = []
    run_study(tm, run, resolve_config("quick", overrides=micro), log=logs.append, progress=False)
    first = json.loads((run / "eval.json").read_text())
    assert all(r["success"]["boundary"] != 0.0 for r in first["results"] if "success" in r)
    logs.clear()
    run_study(
        tm,
        run,
        resolve_config("quick", overrides={**micro, "strength": 1.0}),
        log=logs.append,
        progress=False,
    )
    text = "\n".join(logs)
    assert "strength 2.0 → 1.0" in text
    assert "8 row(s) to measure: strength 2.0 → 1.0" in text, text
    second = json.loads((run / "eval.json").read_text())
    by_name = {r["name"]: r for r in second["results"]}
    old = {r["name"]: r for r in first["results"]}
    for name, row in by_name.items():
        if row["method"] == "mean_diff":
            assert abs(row["strength"]) == 1.0
            assert row["row_key"] != old[name]["row_key"]
            assert row["perplexity"] != old[name]["perplexity"]  # measured, not copied
        else:
            assert row["row_key"] == old[name]["row_key"]  # prompt rows: unchanged inputs
    # both measurements are kept on disk, under their own keys
    rows = run / "eval" / "rows"
    assert len(list(rows.glob("E__high__mean_diff__real--*.json"))) == 2
    # back to strength 2: everything is reused
    logs.clear()
    run_study(tm, run, resolve_config("quick", overrides=micro), log=logs.append, progress=False)
    assert any("rows reused" in line and line.split()[0] == line.split()[2] for line in logs)
    assert verify_run(run) == []
    assert RunManifest(run).get("evaluation") is not None


def test_stage_commands_say_what_they_reused_and_what_they_wrote(
    tiny_llama, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from traitlens.cli.main import main

    def code(argv: list[str]) -> int:
        with pytest.raises(SystemExit) as ended:
            main(argv)
        return int(ended.value.code or 0)

    run = tmp_path / "run"
    _chain(tiny_llama, run)
    argv = ["probe", "--run", str(run), "--folds", "3", "--no-figures"]
    assert code(argv) == 2
    assert "folds_requested 2 → 3" in capsys.readouterr().err
    assert code([*argv, "--force"]) == 0
    assert "probes: written" in capsys.readouterr().err
    assert code(argv) == 0
    assert "probes: reused (same inputs" in capsys.readouterr().err


def _hold_lock(run: Path) -> Any:
    """Another process holding ``run``'s lock until its stdin closes."""
    import subprocess
    import sys

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from traitlens.provenance import acquire_run; "
            f"acquire_run({str(run)!r}); print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_process_writing_into_a_run_is_refused_with_the_first_ones_pid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """run.json is read, changed and rewritten whole: two processes recording stages at
    once would lose one entry. The second one is refused, naming the first one's PID;
    once the first ends, the run is free again (also within one process, re-entrantly)."""
    from traitlens.cli.main import main
    from traitlens.provenance import RunInUseError, keyed_stage, provenance, run_lock

    run = tmp_path / "run"
    holder = _hold_lock(run)
    try:
        prov = provenance("probes", config={"x": 1})
        computed: list[int] = []
        with pytest.raises(RunInUseError, match=f"in use by PID {holder.pid}"):
            keyed_stage(
                run,
                "probes",
                prov,
                run / "probes.json",
                load=lambda: None,
                compute=lambda: computed.append(1),
            )
        assert not computed and not (run / "run.json").exists()  # nothing was touched
        tiny = build_tiny("llama")
        tiny.model.save_pretrained(tmp_path / "tiny")
        tiny.tokenizer.save_pretrained(tmp_path / "tiny")
        with pytest.raises(SystemExit) as exit_:
            main(["evaluate", "perplexity", "--out", str(run), "--model", str(tmp_path / "tiny")])
        assert exit_.value.code == 2
        assert f"in use by PID {holder.pid}" in capsys.readouterr().err
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
    with run_lock(run), run_lock(run):  # free again, and re-entrant in one process
        keyed_stage(
            run, "probes", prov, run / "probes.json", load=lambda: None, compute=lambda: None
        )
    assert "probes" in json.loads((run / "run.json").read_text())["stages"]


def test_tensors_and_json_of_different_writes_are_never_paired(tmp_path: Path) -> None:
    """An artifact's tensors record the digest of the JSON they were written with: new
    tensors beside an old JSON (a crash between the two renames, a concurrent --force) are
    refused on load and count as absent for reuse, so the stage recomputes them."""
    import shutil

    from safetensors.torch import save_file

    from traitlens.artifact_io import load_tensors, read_artifact, write_artifact
    from traitlens.provenance import saved_key

    tm = build_tiny("llama")
    meta = {"model": tm.identity.to_dict(), "provenance": {"key": "k-old"}}
    old = write_artifact({"x": torch.zeros(3)}, meta, tmp_path / "a" / "probes")
    new_meta = {**meta, "provenance": {"key": "k-new"}}
    write_artifact({"x": torch.ones(3)}, new_meta, tmp_path / "b" / "probes")
    assert read_artifact(tmp_path / "a" / "probes", "probes")[2]["x"].sum() == 0
    assert saved_key(old) == (True, "k-old")
    # the crash: the new tensors are in place, the old JSON is still beside them
    shutil.copy(tmp_path / "b" / "probes.safetensors", tmp_path / "a" / "probes.safetensors")
    with pytest.raises(ArtifactError, match="does not match probes.json: it was not written"):
        read_artifact(tmp_path / "a" / "probes", "probes")
    assert saved_key(old) == (False, None)  # nothing to reuse: recomputed, not paired
    # tensors written before the binding existed still load
    save_file({"x": torch.zeros(3)}, str(tmp_path / "a" / "probes.safetensors"))
    assert saved_key(old) == (True, "k-old")
    assert load_tensors(tmp_path / "a" / "probes.safetensors")["x"].sum() == 0


def test_writability_probes_and_locks_never_write_through_a_symlink(tmp_path: Path) -> None:
    """A link planted where traitlens creates its probe or lock file used to make it
    truncate whatever the link pointed to."""
    import os

    from traitlens.artifact_io import check_writable
    from traitlens.errors import DataError
    from traitlens.sweep.run import folder_lock

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / f".write-test-{os.getpid()}").symlink_to(victim)  # the old probe's name
    check_writable(out)
    (out / "sweep.lock").symlink_to(victim)
    with pytest.raises(DataError, match="must be a plain file"), folder_lock(out):
        pass
    from traitlens.provenance import LOCK_FILE, acquire_run

    (out / LOCK_FILE).symlink_to(victim)
    with pytest.raises(ArtifactError, match="plain file"):
        acquire_run(out)
    assert victim.read_text() == "precious"


# ------------------------------------------------------------------ the Record codec


@dataclass(frozen=True)
class _Row(Record):
    probs: tuple[float, ...]
    parts: list[Interval]
    note: str | None = None


def test_record_codec_round_trips_nested_typed_results() -> None:
    """One codec for every result type: nested records, dicts and tuples of them, None
    left out where a row says so, null back to NaN, old rows filled from DEFAULTS, and
    a missing field named."""
    import math

    from traitlens.evaluate.results import Effect, Measurement, Shift, Success

    effect = Effect(
        readout_shift={"E": Shift(0.5, Interval(0.1, 0.9), effect_size=1.2, n=30)},
        questionnaire_shift={"E": Shift(0.2, Interval(0.0, 0.4))},
        forced_choice_shift={},
        perplexity=12.0,
        perplexity_ratio=1.1,
        label_mass=0.6,
        success=Success(0.7, Interval(0.5, 0.8), 20, 24, 0.0),
    )
    data = effect.to_dict()
    assert "capability" not in data and "n" not in data["questionnaire_shift"]["E"]
    assert data["success"] == {
        "rate": 0.7,
        "ci": {"low": 0.5, "high": 0.8},
        "n_eligible": 20,
        "n_prompts": 24,
        "boundary": 0.0,
    }
    json_like = json.loads(json.dumps(data))
    assert Effect.from_dict(json_like) == effect
    assert Effect.from_dict(json_like).to_dict() == data
    old = {k: v for k, v in json_like.items() if k != "label_mass"}
    assert math.isnan(Effect.from_dict(old).label_mass)  # a row from before label_mass
    with pytest.raises(ArtifactError, match="Effect lacks perplexity_ratio"):
        Effect.from_dict({k: v for k, v in json_like.items() if k != "perplexity_ratio"})
    with pytest.raises(ArtifactError, match="expected a JSON object, got list"):
        Measurement.from_dict([1, 2])  # type: ignore[arg-type]
    assert math.isnan(Interval.from_dict({"low": None, "high": 1.0}).low)

    row = _Row.from_dict({"probs": [0.2, 0.8], "parts": [{"low": 0, "high": 1}], "extra": 1})
    assert row == _Row((0.2, 0.8), [Interval(0, 1)])  # unknown keys ignored
    assert row.to_dict() == {"probs": (0.2, 0.8), "parts": [{"low": 0, "high": 1}], "note": None}
