"""Capability cost: our multiple-choice scorer, the lm-eval steering export, and lm-eval
itself agreeing with both (offline, on our own task)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import build_tiny
from traitlens.data import MCItem, load_mc_items
from traitlens.errors import DataError, InterventionError
from traitlens.evaluate.capability import (
    MCScore,
    compare_capability,
    encode_pair,
    score_mc,
)
from traitlens.steer import AddDirection, NeuronEdit, TraitVector, steering
from traitlens.steer.bake import bake_offsets

lm_eval = pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed")

from traitlens.engines.lmeval import (  # noqa: E402
    export_steer,
    hookpoint_names,
    lm_eval_samples,
    write_task,
)


def _vector(tm, layers=(1, 2), seed=0):
    generator = torch.Generator().manual_seed(seed)
    return TraitVector.from_directions(
        tm.identity,
        {
            l_: torch.randn(tm.identity.d_model, generator=generator, dtype=torch.float64)
            for l_ in layers
        },
        spread={l_: 0.5 for l_ in layers},
        trait="E",
    )


ITEMS = [
    MCItem(id="a", topic="t", question="What is 2 plus 2?", choices=["3", "4", "5"], answer=1),
    MCItem(
        id="b", topic="t", question="Which is bigger?", choices=["a mouse", "a whale"], answer=1
    ),
    MCItem(id="c", topic="u", question="Ice is", choices=["cold", "hot", "loud"], answer=0),
]


# ---------------------------------------------------------------- the items


def test_shipped_items_are_balanced_and_valid() -> None:
    items = load_mc_items()
    assert len(items) >= 100
    assert len({i.id for i in items}) == len(items)
    counts = np.bincount([i.answer for i in items])
    assert counts.min() >= 0.2 * len(items)  # no position the model could bet on
    assert len({i.topic for i in items}) >= 5


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"choices": ["x"], "answer": 0}, "at least 2 choices"),
        ({"choices": ["x", "x"], "answer": 0}, "distinct"),
        ({"choices": ["x", "y"], "answer": 2}, "not an index"),
        ({"choices": "[oops", "answer": 0}, "JSON list"),
    ],
)
def test_bad_items_are_refused_with_the_reason(tmp_path: Path, row: dict, message: str) -> None:
    path = tmp_path / "mc.jsonl"
    path.write_text(json.dumps({"id": "q1", "topic": "t", "question": "Q?", **row}) + "\n")
    with pytest.raises(DataError, match=message):
        load_mc_items(path)


def test_csv_items_with_json_choices_and_duplicate_ids(tmp_path: Path) -> None:
    path = tmp_path / "mc.csv"
    path.write_text('id,topic,question,choices,answer\nq1,t,Q?,"[""3"", ""4""]",1\n')
    assert load_mc_items(path)[0].choices == ["3", "4"]
    path.write_text(path.read_text() + 'q1,t,Q2?,"[""5"", ""6""]",0\n')
    with pytest.raises(DataError, match="duplicate id"):
        load_mc_items(path)


# ---------------------------------------------------------------- the scorer


def test_encode_pair_moves_trailing_space_like_lm_eval() -> None:
    tm = build_tiny("llama")
    head, tail = encode_pair(tm.tokenizer, "Answer: ", "4")
    assert head == tm.tokenizer.encode("Answer:")
    assert head + tail == tm.tokenizer.encode("Answer: 4")


def test_score_mc_equals_a_manual_forward_pass() -> None:
    """Batched, right-padded, length-sorted scoring gives each choice exactly the summed
    log-prob of its tokens in a lone forward pass."""
    tm = build_tiny("llama")
    scores = score_mc(tm, ITEMS, batch_size=2)
    for item, score in zip(ITEMS, scores, strict=True):
        for c, choice in enumerate(item.choices):
            head, tail = encode_pair(
                tm.tokenizer, f"Question: {item.question}\nAnswer:", " " + choice
            )
            ids = torch.tensor([head + tail])
            with torch.inference_mode():
                logp = tm.model(input_ids=ids).logits[0].float().log_softmax(-1)
            manual = sum(float(logp[len(head) - 1 + k, t]) for k, t in enumerate(tail))
            assert score.loglik[c] == pytest.approx(manual, abs=1e-4)
        assert score.correct == (int(np.argmax(score.loglik)) == item.answer)


def test_steering_changes_the_scores_and_the_comparison_is_paired() -> None:
    tm = build_tiny("llama")
    plain = score_mc(tm, ITEMS)
    with steering(tm, AddDirection(_vector(tm), 8.0)):
        steered = score_mc(tm, ITEMS)
    assert any(p.loglik != s.loglik for p, s in zip(plain, steered, strict=True))
    result = compare_capability(plain, plain)
    assert result.change.estimate == 0.0 and result.flipped_to_wrong == 0
    flipped = [
        MCScore(s.id, s.topic, s.answer, s.loglik, not s.correct, s.correct_norm) for s in plain
    ]
    result = compare_capability(plain, flipped)
    assert result.flipped_to_wrong + result.flipped_to_right == len(ITEMS)
    assert result.change.estimate == pytest.approx(
        np.mean([f.correct for f in flipped]) - np.mean([p.correct for p in plain])
    )
    with pytest.raises(DataError, match="same items"):
        compare_capability(plain, list(reversed(plain)))


# ---------------------------------------------------------------- the lm-eval export


def test_steer_file_is_tensors_only_and_holds_the_bake_offsets(tmp_path: Path) -> None:
    tm = build_tiny("llama")
    mix = [AddDirection(_vector(tm), 3.0), AddDirection(_vector(tm, (2,), seed=1), -1.0)]
    path = export_steer(tm, mix, tmp_path / "steer.pt")
    config = torch.load(path, weights_only=True)  # no pickled code
    offsets = bake_offsets(tm, mix)
    names = hookpoint_names(tm)
    assert set(config) == {names[layer] for layer in offsets}
    for layer, offset in offsets.items():
        entry = config[names[layer]]
        assert entry["action"] == "add" and entry["steering_coefficient"] == 1.0
        assert torch.allclose(entry["steering_vector"], offset.float())
    from safetensors.torch import load_file

    assert set(load_file(path.with_suffix(".safetensors"))) == set(config)
    assert json.loads(path.with_suffix(".json").read_text())["hookpoints"] == list(config)


def test_steer_export_refuses_what_lm_eval_cannot_apply(tmp_path: Path) -> None:
    tm = build_tiny("llama")
    with pytest.raises(InterventionError, match=".pt"):
        export_steer(tm, [AddDirection(_vector(tm), 1.0)], tmp_path / "steer.safetensors")
    with pytest.raises(InterventionError, match="positions"):
        export_steer(tm, [AddDirection(_vector(tm), 1.0, positions="prompt")], tmp_path / "s.pt")
    from traitlens.neurons.selected import SelectedNeurons

    edit = NeuronEdit(
        SelectedNeurons(
            torch.tensor([1]), torch.tensor([0]), torch.tensor([0.1]), torch.tensor([1.0])
        ),
        gamma=1.0,
    )
    with pytest.raises(InterventionError, match="only direction additions"):
        export_steer(tm, [edit], tmp_path / "s.pt")
    assert not list(tmp_path.iterdir())  # nothing half-written


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_lm_eval_steered_model_equals_hook_steering(family: str, tmp_path: Path) -> None:
    """lm-eval's own SteeredModel, given our file, computes the logits our hooks do."""
    from lm_eval.models.hf_steered import SteeredModel

    tm = build_tiny(family)
    mix = [AddDirection(_vector(tm), 3.0)]
    path = export_steer(tm, mix, tmp_path / "steer.pt")
    ids = torch.tensor([tm.tokenizer.encode("How was your weekend?")])
    with torch.inference_mode():
        with steering(tm, mix):
            ours = tm.model(input_ids=ids).logits
        plain = tm.model(input_ids=ids).logits
        theirs = SteeredModel(
            pretrained=tm.model, tokenizer=tm.tokenizer, steer_path=str(path), device="cpu"
        )._model_call(ids)
    assert torch.allclose(ours, theirs, atol=1e-4)
    assert not torch.allclose(plain, theirs, atol=1e-3)


def test_task_folder_is_written_and_bad_items_leave_nothing(tmp_path: Path) -> None:
    task = write_task(tmp_path / "task")
    assert (task / "traitlens_mc.yaml").exists()
    assert sum(1 for _ in (task / "traitlens_mc.jsonl").open()) == len(load_mc_items())
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "topic": "t", "question": "Q", "choices": ["a"], "answer": 0}\n')
    with pytest.raises(DataError):
        write_task(tmp_path / "other", bad)
    assert not (tmp_path / "other" / "traitlens_mc.yaml").exists()


@pytest.mark.heavy
def test_lm_eval_agrees_with_our_scorer_item_by_item(tmp_path: Path) -> None:
    """lm-eval's own multiple_choice scoring of traitlens_mc (in-process, offline) and
    :func:`score_mc` give the same log-likelihoods and verdicts, steered and not."""
    tm = build_tiny("llama")
    items = load_mc_items()[:24]
    task = write_task(tmp_path / "task")
    mix = [AddDirection(_vector(tm), 4.0)]
    steer = export_steer(tm, mix, tmp_path / "steer.pt")
    for steer_path in (None, steer):
        samples = sorted(lm_eval_samples(tm, task, steer_path, limit=24), key=lambda s: s["doc_id"])
        if steer_path is None:
            ours = score_mc(tm, items)
        else:
            with steering(tm, mix):
                ours = score_mc(tm, items)
        for sample, score in zip(samples, ours, strict=True):
            assert sample["doc"]["id"] == score.id
            theirs = [float(r[0]) for r in sample["filtered_resps"]]
            assert np.allclose(theirs, score.loglik, atol=1e-3)
            assert (float(sample["acc"]) == 1.0) == score.correct
            assert (float(sample["acc_norm"]) == 1.0) == score.correct_norm


@pytest.mark.heavy
def test_lm_eval_cli_runs_the_steered_task_offline(tmp_path: Path) -> None:
    """What the README tells users to type: `lm_eval --model steered ... --tasks
    traitlens_mc --include_path DIR`, in a subprocess with the hub switched off."""
    tm = build_tiny("llama")
    model_dir = tmp_path / "model"
    tm.model.save_pretrained(model_dir)
    tm.tokenizer.save_pretrained(model_dir)
    steer = export_steer(tm, [AddDirection(_vector(tm), 3.0)], tmp_path / "steer.pt")
    task = write_task(tmp_path / "task")
    lm_eval_bin = Path(sys.executable).with_name("lm_eval")
    done = subprocess.run(
        [
            str(lm_eval_bin),
            "--model",
            "steered",
            "--model_args",
            f"pretrained={model_dir},steer_path={steer}",
            "--tasks",
            "traitlens_mc",
            "--include_path",
            str(task),
            "--limit",
            "16",
            "--device",
            "cpu",
            "--output_path",
            str(tmp_path / "results"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "traitlens_mc" in done.stdout and "acc" in done.stdout
    written = list((tmp_path / "results").rglob("results_*.json"))
    assert written and "traitlens_mc" in json.loads(written[0].read_text())["results"]


# ---------------------------------------------------------------- the embedded model


@pytest.mark.slow
def test_capability_cli_on_a_finished_study(study_run, tmp_path: Path) -> None:
    """`traitlens evaluate capability` on the embedded model with the shared study's E
    vector: both engines give the same accuracies."""
    run, _ = study_run
    results = {}
    for engine in ("traitlens", "lm-eval"):
        out = tmp_path / engine
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "traitlens.cli.main",
                "evaluate",
                "capability",
                "--run",
                str(run),
                "--mix",
                "E=+1",
                "--limit",
                "60",
                "--engine",
                engine,
                "--out",
                str(out),
            ],
            capture_output=True,
            text=True,
            timeout=900,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
        )
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
        results[engine] = json.loads((out / "capability.json").read_text())
    a, b = results["traitlens"], results["lm-eval"]
    assert a["n_items"] == b["n_items"] == 60
    assert a["accuracy_plain"] == b["accuracy_plain"]
    assert a["accuracy_steered"] == b["accuracy_steered"]
    # the embedded model answers these well above chance (the set measures something)
    assert a["accuracy_plain"] > a["chance"] + 0.1


class _Payload:
    """Stands for pickled code in a steering file someone hands you."""


def test_a_steering_file_with_pickled_objects_is_refused_before_lm_eval_loads_it(
    tmp_path: Path,
) -> None:
    from traitlens.engines.lmeval import check_steer_file
    from traitlens.errors import EngineError

    tm = build_tiny("llama")
    ours = export_steer(tm, [AddDirection(_vector(tm), 1.0)], tmp_path / "steer.pt")
    assert check_steer_file(ours) == ours  # what traitlens writes passes
    hostile = tmp_path / "hostile.pt"
    torch.save({"model.layers.1": {"steering_vector": torch.ones(3), "x": _Payload()}}, hostile)
    with pytest.raises(EngineError, match="not a plain steering file"):
        check_steer_file(hostile)
    with pytest.raises(EngineError, match="not a plain steering file"):
        lm_eval_samples(tm, tmp_path, hostile, limit=1)  # refused before lm-eval sees it
    with pytest.raises(EngineError, match="not found"):
        check_steer_file(tmp_path / "none.pt")
