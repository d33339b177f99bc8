"""traitlens.stats (parity with scipy / scikit-learn, planted effects, degenerate data) and
the shared plumbing that came with it: atomic writes, headless figures, CLI loading.
"""

from __future__ import annotations

import importlib
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats as scipy_stats

from traitlens.artifact_io import atomic_path, atomic_write, read_json, write_json
from traitlens.errors import DataError
from traitlens.stats import (
    _ClusterMedian,
    auc,
    bootstrap_ci,
    bootstrap_median_ci,
    bootstrap_median_difference,
    fdr_bh,
    paired_bootstrap_ci,
    separation_auc,
)

# ------------------------------------------------------------------ bootstrap


def test_bootstrap_ci_is_scipys_bca_interval() -> None:
    x = np.random.default_rng(5).exponential(size=40)  # skewed: BCa ≠ percentile
    ci = bootstrap_ci(x, n_boot=2000, seed=7)
    reference = scipy_stats.bootstrap(
        (x,), np.mean, n_resamples=2000, method="BCa", random_state=np.random.default_rng(7)
    ).confidence_interval
    assert ci.method == "BCa" and ci.n == 40 and ci.estimate == pytest.approx(x.mean())
    assert (ci.low, ci.high) == pytest.approx((reference.low, reference.high), rel=1e-12)
    percentile = bootstrap_ci(x, n_boot=2000, seed=7, method="percentile")
    assert percentile.method == "percentile" and percentile.low != pytest.approx(ci.low)


def test_bca_covers_a_planted_mean_at_its_nominal_rate() -> None:
    rng = np.random.default_rng(0)
    covered = [
        bootstrap_ci(rng.normal(2.0, 1.0, 30), n_boot=500, seed=i).contains(2.0) for i in range(200)
    ]
    assert 0.88 <= float(np.mean(covered)) <= 0.99


def test_degenerate_bca_falls_back_to_the_percentile_interval_without_nan() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DegenerateDataWarning / RuntimeWarning leaks out
        constant = bootstrap_ci([3.0] * 8)
        two = bootstrap_ci([0.0, 1.0], n_boot=2000, seed=1)
        one = bootstrap_ci([4.0])
        median = bootstrap_ci([1.0, 1.0, 1.0, 1.0, 9.0], stat=np.median)  # median never moves up
    assert (constant.low, constant.high, constant.method) == (3.0, 3.0, "percentile")
    assert (two.low, two.high, two.method) == (0.0, 1.0, "percentile")
    assert (one.estimate, one.low, one.high) == (4.0, 4.0, 4.0)
    assert median.method == "percentile" and median.low == 1.0
    for ci in (constant, two, one, median):
        assert math.isfinite(ci.low) and math.isfinite(ci.high)


def test_paired_resampling_keeps_pairs_together() -> None:
    rng = np.random.default_rng(1)
    difficulty = rng.normal(0.0, 3.0, 50)  # shared by both measurements of an item
    before = difficulty + rng.normal(0.0, 0.2, 50)
    after = difficulty + 0.5 + rng.normal(0.0, 0.2, 50)

    def mean_difference(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.mean(a, axis=axis) - np.mean(b, axis=axis)

    paired = bootstrap_ci(after, before, stat=mean_difference, paired=True, seed=3)
    of_differences = paired_bootstrap_ci(after, before, seed=3)
    assert (paired.low, paired.high) == pytest.approx((of_differences.low, of_differences.high))
    assert paired.low > 0.3 and paired.high < 0.7  # the planted shift, tightly
    unpaired = bootstrap_ci(after, before, stat=mean_difference, seed=3)
    assert unpaired.high - unpaired.low > 5 * (paired.high - paired.low)  # difficulty is noise
    assert unpaired.contains(0.0)


def test_bootstrap_is_seeded_and_refuses_bad_input() -> None:
    x = np.random.default_rng(6).normal(size=30)
    assert bootstrap_ci(x, seed=3) == bootstrap_ci(x, seed=3)
    assert bootstrap_ci(x, seed=3) != bootstrap_ci(x, seed=4)
    for bad, message in (
        (lambda: bootstrap_ci([]), "empty"),
        (lambda: bootstrap_ci([1.0, math.inf]), "NaN or inf"),
        (lambda: bootstrap_ci(x, level=1.0), "strictly between"),
        (lambda: bootstrap_ci(x, n_boot=0), "n_boot"),
        (lambda: bootstrap_ci(x, method="studentized"), "unknown bootstrap method"),
        (lambda: bootstrap_ci(x, [1.0, 2.0], paired=True), "differ in length"),
        (lambda: bootstrap_ci(x, [1.0], stat=np.subtract), "at least 2 values"),
    ):
        with pytest.raises(DataError, match=message):
            bad()


def test_cluster_median_is_the_median_of_the_drawn_clusters() -> None:
    # clusters a = [1, 2], b = [10], c = [4, 5, 6]
    values = np.array([1.0, 2.0, 10.0, 4.0, 5.0, 6.0])
    median = _ClusterMedian(values, np.array(["a", "a", "b", "c", "c", "c"]))
    picks = np.array([[0, 0, 1], [2, 2, 2], [1, 1, 0], [0, 1, 2]])
    # [1,2,1,2,10] → 2; [4,5,6]×3 → 5; [10,10,1,2] → 6; [1,2,10,4,5,6] → 4.5
    np.testing.assert_allclose(median(picks), [2.0, 5.0, 6.0, 4.5])
    np.testing.assert_allclose(median(picks.T, axis=0), [2.0, 5.0, 6.0, 4.5])


def test_cluster_bootstrap_is_wider_than_pretending_answers_are_independent() -> None:
    rng = np.random.default_rng(2)
    question = np.repeat(rng.normal(0.0, 1.0, 15), 4)  # 4 near-identical answers each
    values = question + rng.normal(0.0, 0.05, question.size)
    clusters = np.repeat([f"q{i}" for i in range(15)], 4)
    median, low, high = bootstrap_median_ci(values, clusters, seed=0)
    _, naive_low, naive_high = bootstrap_median_ci(values, seed=0)
    assert median == pytest.approx(np.median(values)) and low <= median <= high
    assert high - low > 1.4 * (naive_high - naive_low)
    assert bootstrap_median_ci([2.0, 3.0], ["q", "q"]) == (2.5, 2.5, 2.5)  # one cluster


def test_cluster_median_difference_recovers_a_planted_shift() -> None:
    rng = np.random.default_rng(3)
    clusters = np.repeat([f"q{i}" for i in range(20)], 3)
    a = rng.normal(1.0, 0.5, 60)
    b = rng.normal(0.0, 0.5, 60)
    difference, low, high = bootstrap_median_difference(a, clusters, b, clusters, seed=1)
    assert difference == pytest.approx(np.median(a) - np.median(b))
    assert 0.0 < low < difference < high
    assert bootstrap_median_difference(a, clusters, b, clusters, seed=1) == (difference, low, high)
    with pytest.raises(DataError, match="at least 2 clusters"):
        bootstrap_median_difference(a, ["q"] * 60, b, clusters)
    with pytest.raises(DataError, match="cluster labels"):
        bootstrap_median_ci(a, clusters[:5])


# ------------------------------------------------------------------ FDR and AUC


def test_fdr_bh_matches_scipy_for_any_shape_and_refuses_nan() -> None:
    p = np.random.default_rng(4).uniform(size=(3, 40)) ** 2
    np.testing.assert_allclose(
        fdr_bh(p).reshape(-1), scipy_stats.false_discovery_control(p.reshape(-1)), rtol=1e-12
    )
    assert fdr_bh(p).shape == (3, 40) and fdr_bh([]).shape == (0,)
    with pytest.raises(DataError, match="p-values"):
        fdr_bh([0.1, float("nan")])
    with pytest.raises(DataError, match="p-values"):
        fdr_bh([0.1, 1.5])


def test_auc_counts_ties_half_and_is_nan_with_one_class() -> None:
    high, low = [1.0, 2.0, 3.0], [-1.0, 0.0, 1.0]
    # 9 pairs: 8 wins and one tie (1 vs 1) → 8.5 / 9
    assert separation_auc(high, low) == pytest.approx(8.5 / 9)
    assert auc([1, 1, 1, 0, 0, 0], high + low) == pytest.approx(8.5 / 9)
    assert auc([True, False, True], [0.2, 0.9, 0.4]) == pytest.approx(0.0)
    with pytest.warns(RuntimeWarning, match="undefined with only class"):
        assert math.isnan(auc([1, 1], [0.3, 0.4]))
    with pytest.warns(RuntimeWarning, match="undefined"):
        assert math.isnan(separation_auc([0.5], []))
    with pytest.raises(DataError, match="binary"):
        auc([0, 1, 2], [0.1, 0.2, 0.3])
    with pytest.raises(DataError, match="NaN"):
        auc([0, 1], [0.1, math.nan])


# ------------------------------------------------------------------ atomic writes


def test_atomic_write_replaces_whole_files_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "file.txt"
    assert atomic_write(target, "first ✓") == target
    atomic_write(target, b"second")
    assert target.read_bytes() == b"second"
    write_json(tmp_path / "meta.json", {"score": float("nan"), "name": "é"})
    assert read_json(tmp_path / "meta.json") == {"score": None, "name": "é"}
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["file.txt", "meta.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "tensors.safetensors"
    target.write_text("old, complete")
    seen: list[Path] = []
    with pytest.raises(RuntimeError, match="interrupted"), atomic_path(target) as tmp:
        seen.append(tmp)
        tmp.write_text("new, half-writ")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old, complete"
    assert seen[0].parent == tmp_path and not seen[0].exists()
    assert [p.name for p in tmp_path.iterdir()] == ["tensors.safetensors"]


# ------------------------------------------------------------------ figures, headless


_FIGURE_SCRIPT = """
import sys
from pathlib import Path

import matplotlib

import traitlens.report.eval_figures as eval_figures
import traitlens.report.neuron_figures
import traitlens.report.probe_figures

assert matplotlib.get_backend().lower() == "pdf", matplotlib.get_backend()
assert "matplotlib.pyplot" not in sys.modules
traits = ["E", "A"]
shifts = {t: {"shift": 0.2} for t in traits}
rows = [
    {"trait": t, "pole": p, "method": m, "control": c, "dose": False,
     "success": {"rate": 0.6, "ci": {"low": 0.4, "high": 0.8}},
     "readout_shift": shifts, "questionnaire_shift": shifts,
     "target_readout_shift": 0.5, "target_questionnaire_shift": 0.3,
     "target_forced_choice_shift": 0.1}
    for t in traits for p in ("high", "low")
    for m, c in (("mean_diff", False), ("mean_diff", True), ("prompt", False))
] + [
    {"trait": t, "pole": "high", "method": "mean_diff", "control": False, "dose": True,
     "strength": s, "readout_shift": shifts, "questionnaire_shift": shifts,
     "perplexity_ratio": 1.0 + abs(s)}
    for t in traits for s in (-1.0, 1.0)
]
evaluation = {"traits": traits, "config": {"eval_methods": ["mean_diff"]}, "results": rows}
out = Path(sys.argv[1])
for plot in (eval_figures.plot_success_rates, eval_figures.plot_spillover,
             eval_figures.plot_behaviour_shifts, eval_figures.plot_dose_response,
             eval_figures.plot_representation_vs_behaviour):
    png = plot(evaluation, out)
    assert png.read_bytes()[:8] == b"\\x89PNG\\r\\n\\x1a\\n", png
    assert png.with_suffix(".svg").read_text().lstrip().startswith("<?xml"), png
assert matplotlib.get_backend().lower() == "pdf" and "matplotlib.pyplot" not in sys.modules
print("ok")
"""


def test_figure_modules_leave_the_backend_alone_and_still_render(tmp_path: Path) -> None:
    # ``pdf`` is a non-interactive, non-Agg backend: it works headless, and a module
    # that called matplotlib.use("Agg") on import would visibly change it
    env = {**os.environ, "MPLBACKEND": "pdf", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _FIGURE_SCRIPT, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    assert len(list(tmp_path.glob("*.png"))) == 5


# ------------------------------------------------------------------ CLI loading


def _reimport_cli(monkeypatch: pytest.MonkeyPatch) -> Any:
    import traitlens.cli.main  # noqa: F401  (so monkeypatch puts this module back afterwards)

    monkeypatch.delitem(sys.modules, "traitlens.cli.main")
    return importlib.import_module("traitlens.cli.main")


def test_a_command_module_that_fails_to_import_is_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # a missing module: the old loop skipped exactly this case without a word
    monkeypatch.setitem(sys.modules, "traitlens.cli.probe_cmd", None)
    with pytest.raises(ImportError, match=r"traitlens\.cli\.probe_cmd \(ModuleNotFoundError"):
        _reimport_cli(monkeypatch)
    monkeypatch.undo()

    # a module that is there but breaks on import: the message carries its error
    import typer

    import traitlens.cli
    from traitlens.cli.main import _register

    (tmp_path / "broken_cmd.py").write_text("raise RuntimeError('boom: a bad edit')\n")
    monkeypatch.setattr(traitlens.cli, "__path__", [*traitlens.cli.__path__, str(tmp_path)])
    with pytest.raises(ImportError, match=r"traitlens\.cli\.broken_cmd \(RuntimeError: boom"):
        _register(typer.Typer(), ("models_cmd", "broken_cmd"))


def test_serve_without_its_extra_still_loads_and_names_the_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    for extra in ("fastapi", "uvicorn"):
        monkeypatch.setitem(sys.modules, extra, None)  # find_spec → None: "not installed"
    main = _reimport_cli(monkeypatch)
    runner = CliRunner()
    assert "serve" in runner.invoke(main.app, ["--help"]).output
    result = runner.invoke(main.app, ["serve", "--vectors", str(tmp_path)])
    assert result.exit_code != 0
    assert "pip install 'traitlens[serve]'" in str(result.exception)
