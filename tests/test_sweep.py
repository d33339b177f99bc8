"""Sweeps (local and Ray, resumable, failures recorded) and calibration."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import build_tiny
from traitlens.errors import DataError, EngineError
from traitlens.steer.calibrate import CalibratedVector, calibrate, pareto_front
from traitlens.sweep import worker as sweep_worker
from traitlens.sweep.cells import expand
from traitlens.sweep.config import SweepConfig, load_sweep_config
from traitlens.sweep.run import check_address, read_ledger, run_sweep


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama on disk: sweeps name models by path, as users do."""
    path = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    tm = build_tiny("llama")
    tm.model.save_pretrained(path)
    tm.tokenizer.save_pretrained(path)
    return path


def _config(tiny_dir: Path, **kwargs) -> SweepConfig:
    values = {
        "models": [str(tiny_dir)],
        "traits": ["E"],
        "methods": ["mean_diff", "neurons", "prompt", "hybrid"],
        "bands": ["1-1", "1-2"],
        "strengths": [1.0, 4.0],
        "gammas": [2.0],
        # the test suite's study size (the quick profile's material took 75-90 s a test)
        "profile": "test",
        **kwargs,
    }
    return SweepConfig(**values)


def _quiet(message: str) -> None:
    pass


# ---------------------------------------------------------------- the grid


def test_grid_expands_with_a_control_per_edit(tiny_dir: Path) -> None:
    cells = expand(_config(tiny_dir))
    # mean_diff and hybrid: 2 bands × 2 strengths × (real + control); neurons: 2 × 1 × 2;
    # the persona prompt: one cell
    assert len(cells) == 8 + 8 + 4 + 1
    assert len({c.name for c in cells}) == len(cells)
    assert sum(c.method == "prompt" for c in cells) == 1
    assert all(c.gamma is not None for c in cells if c.method == "neurons")
    key = {"stages": {"probes": "abc"}}
    assert cells[0].key(key) != cells[0].key({"stages": {"probes": "abd"}})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"traits": ["Z"]}, "traits"),
        ({"methods": ["magic"]}, "unknown methods"),
        ({"strengths": [-1.0]}, "out of range"),
        ({"strengths": [float("nan")]}, "out of range"),
        ({"bands": ["ten"]}, "bad layer selection"),
        ({"poles": ["middle"]}, "poles"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_bad_sweep_yaml_is_refused_with_one_message(tmp_path, values, message) -> None:
    import yaml

    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"models": ["x"], **values}))
    with pytest.raises(DataError, match=message):
        load_sweep_config(path)


def test_an_empty_grid_is_refused(tmp_path) -> None:
    import yaml

    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"methods": ["mean_diff"], "strengths": []}))
    with pytest.raises(DataError, match="grid is empty: no strengths"):
        load_sweep_config(path)
    path.write_text(yaml.safe_dump({"methods": ["neurons"], "bands": []}))
    with pytest.raises(DataError, match="no bands"):
        load_sweep_config(path)


def test_unreachable_ray_address_fails_fast() -> None:
    started = time.perf_counter()
    with pytest.raises(EngineError, match="cannot reach a Ray cluster"):
        check_address("127.0.0.1:9")
    with pytest.raises(DataError, match="HOST:PORT"):
        check_address("nonsense")
    assert time.perf_counter() - started < 30


# ---------------------------------------------------------------- running


@pytest.mark.heavy
def test_local_sweep_measures_every_cell_once(tiny_dir: Path, tmp_path: Path) -> None:
    config = _config(tiny_dir)
    rows = run_sweep(config, tmp_path, log=_quiet)
    assert len(rows) == len(expand(config))
    assert all(r["status"] == "ok" for r in rows)
    for r in rows:
        assert math.isfinite(r["perplexity_ratio"]) and r["perplexity_ratio"] > 0
    prompt = next(r for r in rows if r["method"] == "prompt")
    assert prompt["band"] is None and prompt["layers"] is None
    assert (tmp_path / "cells.csv").exists() and (tmp_path / "cells.parquet").exists()
    # a rerun measures nothing; a new strength measures only its cells
    before = len(read_ledger(tmp_path))
    run_sweep(config, tmp_path, log=_quiet)
    assert len(read_ledger(tmp_path)) == before
    bigger = _config(tiny_dir, strengths=[1.0, 2.0, 4.0])
    rows = run_sweep(bigger, tmp_path, log=_quiet)
    added = len(read_ledger(tmp_path)) - before
    assert added == 2 * 2 * 2  # mean_diff and hybrid, 2 bands, real + control at strength 2
    assert len(rows) == len(expand(bigger))


@pytest.mark.heavy
def test_a_failing_cell_is_recorded_and_retried(tiny_dir, tmp_path, monkeypatch) -> None:
    real = sweep_worker._measure_cell

    def flaky(material, config, cell):
        if cell.strength == 4.0:
            raise RuntimeError("boom at strength 4")
        return real(material, config, cell)

    monkeypatch.setattr(sweep_worker, "_measure_cell", flaky)
    config = _config(tiny_dir)
    rows = run_sweep(config, tmp_path, log=_quiet)
    failed = [r for r in rows if r["status"] == "failed"]
    assert failed and all(r["strength"] == 4.0 for r in failed)
    assert all("boom at strength 4" in r["error"] for r in failed)
    assert sum(r["status"] == "ok" for r in rows) == len(rows) - len(failed)
    monkeypatch.setattr(sweep_worker, "_measure_cell", real)
    log: list[str] = []
    rows = run_sweep(config, tmp_path, log=log.append)
    assert all(r["status"] == "ok" for r in rows)
    assert any(f"{len(failed)} cell(s) measured" in line for line in log)


@pytest.mark.heavy
def test_killed_sweep_finishes_only_the_missing_cells(tiny_dir, tmp_path) -> None:
    import yaml

    config = tmp_path / "sweep.yaml"
    config.write_text(
        yaml.safe_dump(_config(tiny_dir, strengths=[0.5, 1, 2, 3, 4, 6, 8]).model_dump(mode="json"))
    )
    out = tmp_path / "out"
    command = [sys.executable, "-m", "traitlens.cli.main", "sweep", str(config), "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(read_ledger(out)) < 5:
        if process.poll() is not None:
            pytest.fail("the sweep ended before it could be killed")
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    first = {r["key"] for r in read_ledger(out) if r["status"] == "ok"}
    total = len(expand(load_sweep_config(config)))
    assert 5 <= len(first) < total
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    log = done.stdout + done.stderr
    assert f"{len(first)} of {total} cells already measured" in log
    assert f"{total - len(first)} cell(s) measured" in log
    ok = [r for r in read_ledger(out) if r["status"] == "ok"]
    assert len(ok) == len({r["key"] for r in ok}) == total  # no cell measured twice


@pytest.mark.serial
def test_ray_backend_gives_the_local_rows(tiny_dir, tmp_path) -> None:
    """A 2-worker local Ray cluster measures the same cells to the same numbers."""
    pytest.importorskip("ray")
    config = _config(tiny_dir, methods=["mean_diff", "prompt"], bands=["1-2"])
    local = {r["key"]: r for r in run_sweep(config, tmp_path / "local", log=_quiet)}
    remote = {
        r["key"]: r
        for r in run_sweep(config, tmp_path / "ray", backend="ray", workers=2, log=_quiet)
    }
    assert set(local) == set(remote)
    assert len({r["worker"] for r in remote.values()}) == 2  # both workers took cells
    fields = ("target_readout_shift", "perplexity_ratio", "target_questionnaire_shift")
    for key, row in local.items():
        for name in fields:
            assert remote[key][name] == pytest.approx(row[name], rel=1e-5, abs=1e-7), name


# ---------------------------------------------------------------- calibration


def _row(band, strength, effect, ppl, control=False, method="mean_diff"):
    return {
        "model": "m",
        "trait": "E",
        "pole": "high",
        "method": method,
        "control": control,
        "band": band,
        "strength": strength,
        "gamma": None,
        "layers": [1, 2],
        "target_readout_shift": effect,
        "perplexity_ratio": ppl,
        "status": "ok",
        "key": f"{band}{strength}{control}",
    }


def test_calibration_picks_the_strongest_cell_within_budget() -> None:
    rows = [
        _row("1-2", 1.0, 0.5, 1.1),
        _row("1-2", 2.0, 1.2, 1.4),
        _row("1-2", 4.0, 3.0, 2.5),
        _row("2-2", 2.0, 0.4, 1.3),
        _row("1-2", 2.0, 0.1, 1.3, control=True),
        _row("1-2", 8.0, 9.9, float("nan")),  # a broken measurement never wins
    ]
    chosen = calibrate(rows, "E", "high", max_ppl_ratio=1.5)
    assert (chosen.band, chosen.strength, chosen.effect) == ("1-2", 2.0, 1.2)
    assert chosen.control_effect == 0.1 and chosen.beats_control
    assert [p["strength"] for p in chosen.front] == [1.0, 2.0, 4.0]  # 2-2 is dominated
    low = calibrate([{**r, "pole": "low"} for r in rows], "E", "low", max_ppl_ratio=1.5)
    assert low.strength == -2.0  # the pole gives the sign
    with pytest.raises(DataError, match=">= 1"):
        calibrate(rows, "E", max_ppl_ratio=0.9)
    with pytest.raises(DataError, match="cheapest costs ×1.10"):
        calibrate(rows, "E", max_ppl_ratio=1.05)
    with pytest.raises(DataError, match="no measured N high"):
        calibrate(rows, "N", max_ppl_ratio=1.5)


def test_pareto_front_hand_computed() -> None:
    points = [
        {"e": 1, "perplexity_ratio": 1.0},
        {"e": 0.5, "perplexity_ratio": 1.2},
        {"e": 2, "perplexity_ratio": 1.5},
        {"e": 2, "perplexity_ratio": 2.0},
    ]
    assert [p["perplexity_ratio"] for p in pareto_front(points, "e")] == [1.0, 1.5]


def test_calibrated_vector_round_trip_and_steering(tiny_dir, tmp_path) -> None:
    from traitlens.steer import AddDirection, TraitVector, steering

    tm = build_tiny("llama")
    vector = TraitVector.from_directions(
        tm.identity, {1: torch.ones(32), 2: torch.ones(32)}, spread={1: 0.5, 2: 0.5}, trait="E"
    )
    rows = [_row("1-2", 2.0, 1.2, 1.4), _row("1-1", 2.0, 0.4, 1.1)]
    result = CalibratedVector(calibrate(rows, "E", "high", max_ppl_ratio=1.5), vector)
    path = result.save(tmp_path / "e-high.json")
    back = CalibratedVector.load(path, expect=tm.identity)
    # (NaN control effect: no control row here, and NaN != NaN, so compare as JSON)
    assert json.dumps(back.calibration.to_dict()) == json.dumps(result.calibration.to_dict())
    served = back.as_vector()
    assert served.method == "calibrated" and served.layers == (1, 2)
    assert torch.allclose(served.step(1), vector.step(1) * 2.0)
    ids = torch.tensor([tm.tokenizer.encode("hello there")])
    with torch.inference_mode():
        with steering(tm, AddDirection(served, 1.0)):
            a = tm.model(input_ids=ids).logits
        with steering(tm, AddDirection(vector, 2.0, layers=(1, 2))):
            b = tm.model(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.heavy
def test_calibrate_and_steer_cli_on_a_sweep(tiny_dir, tmp_path) -> None:
    from traitlens.cli.main import main

    config = _config(tiny_dir, methods=["mean_diff"], bands=["1-2"], strengths=[0.5, 1, 2])
    run_sweep(config, tmp_path / "sw", log=_quiet)
    out = tmp_path / "e.json"
    argv = [
        "calibrate",
        "--sweep",
        str(tmp_path / "sw"),
        "--trait",
        "E",
        "--max-ppl-ratio",
        "50",
        "--out",
        str(out),
    ]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code in (0, None)
    assert json.loads(out.read_text())["calibration"]["trait"] == "E"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "traitlens.cli.main",
            "steer",
            "--calibrated",
            str(out),
            "--prompt",
            "Hi there",
            "--model",
            str(tiny_dir),
            "-n",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "calibrated mean_diff" in done.stdout
    with pytest.raises(SystemExit) as exit_info:
        main([*argv[:-4], "--max-ppl-ratio", "0.5", "--out", str(tmp_path / "x.json")])
    assert exit_info.value.code == 2


def test_serve_offers_a_calibrated_vector_on_its_own_band(tmp_path) -> None:
    from traitlens.serve.steering import SteeringCatalog
    from traitlens.steer import TraitVector, VectorSet

    tm = build_tiny("llama")
    vector = TraitVector.from_directions(
        tm.identity, {1: torch.ones(32), 2: torch.ones(32)}, spread={1: 0.5, 2: 0.5}, trait="E"
    )
    chosen = calibrate([_row("2-2", 2.0, 1.2, 1.4)], "E", max_ppl_ratio=1.5)
    chosen = type(chosen)(**{**chosen.__dict__, "layers": (2,)})
    vectors = VectorSet(tm.identity)
    vectors.add(CalibratedVector(chosen, vector).as_vector())
    catalog = SteeringCatalog(tm, vectors)
    assert catalog.methods == ["calibrated"]
    assert catalog.default_layers("calibrated") == [2]  # the sweep's band, not the middle


def test_a_torn_ledger_line_costs_nothing_but_itself(tiny_dir, tmp_path) -> None:
    from traitlens.sweep.run import _append

    _append(tmp_path, {"key": "a", "name": "a", "status": "ok"})
    with (tmp_path / "cells.jsonl").open("a") as handle:
        handle.write('{"key": "b", "na')  # a kill in the middle of a write
    _append(tmp_path, {"key": "c", "name": "c", "status": "ok"})
    assert [r["key"] for r in read_ledger(tmp_path)] == ["a", "c"]


@pytest.mark.heavy
def test_calibration_reads_only_the_current_grid(tiny_dir, tmp_path) -> None:
    from traitlens.sweep.run import current_rows

    run_sweep(_config(tiny_dir, methods=["mean_diff"], strengths=[1.0, 4.0]), tmp_path, log=_quiet)
    run_sweep(_config(tiny_dir, methods=["mean_diff"], strengths=[2.0]), tmp_path, log=_quiet)
    assert {r["strength"] for r in current_rows(tmp_path)} == {2.0}
    assert {r["strength"] for r in read_ledger(tmp_path)} == {1.0, 2.0, 4.0}  # kept, not shown
    # another study size is other material: a folder of its own, never a clash
    run_sweep(
        _config(tiny_dir, methods=["mean_diff"], strengths=[2.0], study={"n_questions": 4}),
        tmp_path,
        log=_quiet,
    )
    assert len(list((tmp_path / "models").iterdir())) == 2


def test_calibrated_file_names_may_hold_dots(tmp_path) -> None:
    from traitlens.steer import TraitVector

    tm = build_tiny("llama")
    vector = TraitVector.from_directions(tm.identity, {1: torch.ones(32)}, trait="E")
    rows = [_row("1-1", 1.5, 1.0, 1.1), _row("1-1", 1.2, 0.9, 1.05)]
    a = CalibratedVector(calibrate(rows, "E", max_ppl_ratio=1.08), vector).save(
        tmp_path / "E-1.2.json"
    )
    b = CalibratedVector(calibrate(rows, "E", max_ppl_ratio=1.5), vector).save(
        tmp_path / "E-1.5.json"
    )
    assert a != b and a.name == "E-1.2.json"
    assert CalibratedVector.load(a).calibration.strength == 1.2
    assert CalibratedVector.load(b).calibration.strength == 1.5


@pytest.mark.heavy
def test_two_sweeps_never_share_a_folder(tiny_dir, tmp_path) -> None:
    import multiprocessing

    from traitlens.sweep.run import folder_lock

    ready, release = multiprocessing.Event(), multiprocessing.Event()

    def hold() -> None:
        with folder_lock(tmp_path):
            ready.set()
            release.wait(60)

    holder = multiprocessing.get_context("fork").Process(target=hold)
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(DataError, match="another sweep is running into"):
            run_sweep(_config(tiny_dir, methods=["prompt"]), tmp_path, log=_quiet)
    finally:
        release.set()
        holder.join(30)
    run_sweep(_config(tiny_dir, methods=["prompt"]), tmp_path, log=_quiet)  # free again


def test_ray_workers_with_different_material_are_refused() -> None:
    """Workers on several machines without shared storage each build their own material;
    the driver compares the first cell's key (which covers the material) across workers."""
    from traitlens.errors import DataError
    from traitlens.sweep.run import check_same_material

    check_same_material("m", ["k1", "k2"], [["k1"], ["k1"]])
    with pytest.raises(DataError, match="worker 2 built different material.*same --out"):
        check_same_material("m", ["k1", "k2"], [["k1"], ["other"]])
