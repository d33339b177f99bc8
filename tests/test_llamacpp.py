"""llama.cpp runs our control vectors the way traitlens steers (``-m llamacpp``).

The end-to-end check builds llama.cpp from the llama-cpp-python sdist once (about 4 min
on 2 cores, cached in ``$TRAITLENS_CACHE/llama.cpp-<version>``) and compares it with
hook steering on the embedded model; the figures it asserts are those
``scripts/llamacpp_check.py`` prints.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from traitlens.engines import llamacpp


def _fake_build(root: Path, flags: list[str]) -> None:
    (root / "bin").mkdir(parents=True)
    for name in llamacpp.TARGETS:
        (root / "bin" / name).write_text("")
    (root / "traitlens-build.json").write_text(json.dumps({"flags": flags}))


def test_a_cached_build_is_reused_only_with_the_same_flags(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TRAITLENS_CACHE", str(tmp_path))
    assert llamacpp.cached() is None
    root = llamacpp.build_dir()
    _fake_build(root, ["-DGGML_NATIVE=ON"])  # a build from before the AMX fix
    assert llamacpp.cached() is None
    shutil.rmtree(root)
    _fake_build(root, list(llamacpp.BUILD_FLAGS))
    assert llamacpp.cached() == llamacpp.LlamaCpp(root, llamacpp.LLAMA_CPP_PYTHON_VERSION)
    (root / "bin" / "llama-server").unlink()  # half a build is no build
    assert llamacpp.cached() is None


def test_a_second_build_waits_for_the_first_and_reuses_it(tmp_path, monkeypatch) -> None:
    """CI starts the build in the background; a test that needs llama.cpp meanwhile waits
    on the build lock and then uses that build instead of compiling a second one."""
    import threading

    monkeypatch.setenv("TRAITLENS_CACHE", str(tmp_path))
    monkeypatch.setattr(shutil, "which", lambda tool: f"/usr/bin/{tool}")
    built: list[str] = []

    def slow_build(version, target, jobs, log):  # the background build, holding the lock
        time.sleep(0.5)
        _fake_build(target, list(llamacpp.BUILD_FLAGS))
        built.append(version)
        return llamacpp.LlamaCpp(target, version)

    monkeypatch.setattr(llamacpp, "_build", slow_build)
    first = threading.Thread(target=llamacpp.build)
    first.start()
    time.sleep(0.1)  # the background build holds the lock now
    found = llamacpp.build()  # waits, then finds the finished build
    first.join()
    assert built == [llamacpp.LLAMA_CPP_PYTHON_VERSION]  # compiled once
    assert found == llamacpp.cached()


def test_missing_build_tools_are_named(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TRAITLENS_CACHE", str(tmp_path))
    monkeypatch.setattr(shutil, "which", lambda tool: None)
    with pytest.raises(llamacpp.EngineError, match="cmake and c\\+\\+"):
        llamacpp.build()
    assert not list(tmp_path.iterdir())


def test_a_bad_sdist_is_refused(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TRAITLENS_LLAMACPP_SDIST", str(tmp_path / "missing.tar.gz"))
    with pytest.raises(llamacpp.EngineError, match="not a file"):
        llamacpp.fetch_sdist("0.0", tmp_path)


def test_scaled_argument_format() -> None:
    assert llamacpp.scaled(Path("/x/e.gguf"), 1.0) == "/x/e.gguf:1"


def _can_build() -> bool:
    return llamacpp.cached() is not None or all(shutil.which(t) for t in ("cmake", "c++"))


@pytest.mark.slow
@pytest.mark.llamacpp
@pytest.mark.skipif(not _can_build(), reason="no llama.cpp build and no cmake/c++ to make one")
def test_llamacpp_steers_like_traitlens(study_run, smol, tmp_path: Path) -> None:
    from traitlens.engines.llamacpp_check import check_llamacpp
    from traitlens.models.loading import embedded_gguf_path
    from traitlens.steer import VectorSet

    run, _ = study_run
    vector = VectorSet.load(run).get("E", "mean_diff")
    built = llamacpp.build()
    check = check_llamacpp(
        smol, vector, built, embedded_gguf_path(), tmp_path, strength=2.0, layers=range(10, 15)
    )
    s = check.summary()
    # the shift llama.cpp applies is the one traitlens applies ...
    assert s["shift_r"] > 0.95, s
    # ... far beyond what any perturbation of the same size earns ...
    assert s["shift_r"] > s["shift_r_random_vector"] + 0.3, s
    # ... and at the blocks we name: one block off tracks it worse
    assert all(s["shift_r"] > r for r in check.shift_r_moved.values()), s
    assert s["steering_changed_llamacpp"] >= 0.5, s
    # greedy text: as close as the quantization allows (the unsteered pair is the floor)
    assert s["mean_agree_steered"] >= min(s["mean_agree_plain"], 8) - 2, s
    assert check.cli_matches_server, check.cli_text


@pytest.mark.slow
@pytest.mark.llamacpp
@pytest.mark.skipif(not _can_build(), reason="no llama.cpp build and no cmake/c++ to make one")
def test_a_vector_made_by_llamacpp_imports_and_steers_alike(smol, tmp_path: Path) -> None:
    """llama.cpp's own cvector-generator makes the file; traitlens imports it (as
    llama.cpp applies it: direction.N at block N) and steers as llama.cpp does."""
    from traitlens.data import load_personas, load_questions
    from traitlens.engines.llamacpp_check import check_llamacpp
    from traitlens.models.loading import embedded_gguf_path
    from traitlens.steer import import_gguf

    built = llamacpp.build()
    personas = [p for p in load_personas() if p.trait == "E"]
    high = [p.text for p in personas if p.pole == "high"][:2]
    low = [p.text for p in personas if p.pole == "low"][:2]
    questions = [q.text for q in load_questions()][:6]

    def prompts(systems: list[str]) -> list[str]:
        return [smol.format(s, q).text for s in systems for q in questions]

    path = llamacpp.generate_cvector(
        built, embedded_gguf_path(), prompts(high), prompts(low), tmp_path / "cv.gguf"
    )
    vector = import_gguf(path, smol)
    assert vector.layers == tuple(range(1, smol.identity.n_layers))
    check = check_llamacpp(
        smol,
        vector,
        built,
        embedded_gguf_path(),
        tmp_path,
        strength=12.0,
        layers=range(10, 15),
        control_file=path,
    )
    s = check.summary()
    assert s["shift_r"] > 0.95, s
    assert s["shift_r"] > s["shift_r_random_vector"] + 0.3, s
    assert s["steering_changed_llamacpp"] >= 0.5, s
