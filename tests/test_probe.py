"""Probes: grouped CV never leaks, planted signal beats the control and noise does not,
sklearn conventions, exact artifact round trips, clear errors."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from traitlens.artifact_io import ModelIdentity
from traitlens.capture.artifacts import Activations
from traitlens.errors import ArtifactError, DataError
from traitlens.probe import (
    LinearProbe,
    ProbeSet,
    RidgeProbe,
    control_labels,
    first_layer_reaching,
    fit_probes,
    grouped_folds,
    probes_job,
)
from traitlens.provenance import RunConflictError, persist

TRAITS = ("O", "C", "E", "A", "N")


@dataclass(frozen=True)
class FakePrompt:
    id: str
    trait: str
    pole: str
    intensity: int
    persona_id: str
    question_id: str
    system: str = "You are someone."
    user: str = "What do you do on a Saturday?"


def make_prompts(n_personas: int = 4, n_questions: int = 8, traits: str = "OCEAN") -> list:
    prompts = []
    for trait in traits:
        for pole in ("high", "low"):
            for k in range(n_personas):
                intensity = (5 if k % 2 else 4) if pole == "high" else (1 if k % 2 else 2)
                for q in range(n_questions):
                    prompts.append(
                        FakePrompt(
                            id=f"{trait}|{pole}|{k}|q{q}",
                            trait=trait,
                            pole=pole,
                            intensity=intensity,
                            persona_id=f"{trait}-{pole}-{k}",
                            question_id=f"q{q}",
                        )
                    )
    return prompts


IDENTITY = ModelIdentity("synthetic", "SynthForCausalLM", 4, 24, 96, "a" * 16)
OTHER = ModelIdentity("other", "OtherForCausalLM", 4, 24, 96, "b" * 16)


def make_activations(
    prompts: list, planted_layers: tuple[int, ...] = (2, 3), strength: float = 2.5, seed: int = 0
) -> Activations:
    """Gaussian noise [n, 4, 24]; on planted layers each prompt is shifted along its
    trait's direction by (intensity − 3) (pole and intensity signal) plus a
    trait-specific offset (which-trait signal)."""
    n_layers, d_model = IDENTITY.n_layers, IDENTITY.d_model
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(len(prompts), n_layers, d_model, generator=generator)
    directions = torch.linalg.qr(torch.randn(d_model, 2 * len(TRAITS), generator=generator))[0].T
    for row, prompt in enumerate(prompts):
        t = TRAITS.index(prompt.trait)
        shift = strength * (prompt.intensity - 3) / 2 * directions[t]
        shift = shift + strength * directions[len(TRAITS) + t]
        for layer in planted_layers:
            hidden[row, layer] += shift
    return Activations(
        IDENTITY, [p.id for p in prompts], list(range(n_layers)), {"resid.mean": hidden}
    )


@pytest.fixture(scope="module")
def planted() -> tuple[list, Activations, ProbeSet]:
    prompts = make_prompts(n_personas=4, n_questions=12)
    activations = make_activations(prompts, strength=3.0)
    return prompts, activations, fit_probes(activations, prompts, folds=4, progress=False)


# ---------------------------------------------------------------- pure maths


def test_first_layer_reaching_hand_computed() -> None:
    # chance 0.5, best 1.0 → threshold 0.95
    assert first_layer_reaching([0.5, 0.6, 0.9, 1.0, 0.95], 0.9, chance=0.5) == 3
    # R²: chance 0, best 0.5 → threshold 0.45
    assert first_layer_reaching([-0.2, 0.5, 0.45, 0.5], 0.9, chance=0.0) == 1
    assert first_layer_reaching([0.4, 0.5], 0.9, chance=0.5) is None
    assert first_layer_reaching([float("nan"), 0.8], 0.9, chance=0.5) == 1
    assert first_layer_reaching([], 0.9) is None


def test_grouped_folds_never_share_question_or_persona() -> None:
    prompts = make_prompts(n_personas=5, n_questions=9)
    questions = [p.question_id for p in prompts]
    personas = [p.persona_id for p in prompts]
    strata = [(p.trait, p.pole) for p in prompts]
    plan = grouped_folds(questions, personas, strata, n_folds=3, seed=1)
    assert len(plan.splits) == 3
    tested: set[int] = set()
    for split in plan.splits:
        assert split.test.size > 0 and split.train.size > 0
        train_q = {questions[i] for i in split.train}
        train_p = {personas[i] for i in split.train}
        assert not train_q & {questions[i] for i in split.test}
        assert not train_p & {personas[i] for i in split.test}
        # stratified persona assignment: every test fold holds both poles of every trait
        assert {strata[i] for i in split.test} == set(strata)
        assert not tested & set(split.test.tolist())  # each prompt tested at most once
        tested |= set(split.test.tolist())


def test_grouped_folds_are_seeded() -> None:
    prompts = make_prompts(n_personas=3, n_questions=6, traits="OE")
    args = (
        [p.question_id for p in prompts],
        [p.persona_id for p in prompts],
        [(p.trait, p.pole) for p in prompts],
        3,
    )
    a, b, c = grouped_folds(*args, seed=0), grouped_folds(*args, seed=0), grouped_folds(*args, 5)
    assert all(np.array_equal(x.test, y.test) for x, y in zip(a.splits, b.splits, strict=True))
    assert not all(np.array_equal(x.test, y.test) for x, y in zip(a.splits, c.splits, strict=True))


def test_control_labels_hand_computed_and_balanced_per_block() -> None:
    labels = [1.0, 2.0, 4.0, 5.0] * 4
    questions = ["a"] * 4 + ["b"] * 4 + ["c"] * 4 + ["d"] * 4
    blocks = [0] * 16  # one fold: the 4 questions get the 4 shifts once each
    control = control_labels(labels, questions, blocks, seed=0)
    values = [1.0, 2.0, 4.0, 5.0]
    shifts = set()
    for q in "abcd":
        rows = [i for i, x in enumerate(questions) if x == q]
        shift = (values.index(control[rows[0]]) - values.index(labels[rows[0]])) % 4
        shifts.add(shift)
        for i in rows:  # one shift per question, applied cyclically
            assert control[i] == values[(values.index(labels[i]) + shift) % 4]
    assert shifts == {0, 1, 2, 3}
    assert control == control_labels(labels, questions, blocks, seed=0)


def test_control_labels_are_orthogonal_to_persona_labels() -> None:
    prompts = make_prompts(n_personas=4, n_questions=8, traits="E")
    plan = grouped_folds(
        [p.question_id for p in prompts],
        [p.persona_id for p in prompts],
        [(p.trait, p.pole) for p in prompts],
        4,
    )
    pole = np.array([p.pole == "high" for p in prompts], dtype=float)
    questions = [p.question_id for p in prompts]
    control = np.array(control_labels(pole.tolist(), questions, plan.question_fold.tolist(), 0))
    assert 0 < np.mean(control != pole) < 1  # a control, not the labels themselves
    for split in plan.splits:  # inside every training set: no correlation at all
        assert abs(np.corrcoef(pole[split.train], control[split.train])[0, 1]) < 1e-9


# ---------------------------------------------------------------- estimators


def test_linear_probe_follows_sklearn_conventions() -> None:
    probe = LinearProbe(C=0.5, max_iter=50)
    assert probe.get_params() == {"C": 0.5, "max_iter": 50, "tol": 1e-3}
    assert not [k for k in vars(probe) if k.endswith("_")]  # __init__ only stores params
    with pytest.raises(NotFittedError):
        probe.predict(np.zeros((2, 3)))
    clone(probe)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 5)) * [1, 10, 0.1, 3, 1] + [0, 5, -2, 0, 1]
    y = (X[:, 0] + 0.1 * X[:, 1] > 0.5).astype(int)
    assert probe.fit(X, y) is probe
    reference = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=50, tol=1e-3))
    reference.fit(X, y)
    np.testing.assert_allclose(
        probe.decision_function(X), reference.decision_function(X), rtol=1e-6, atol=1e-8
    )
    np.testing.assert_array_equal(probe.predict(X), reference.predict(X))
    assert probe.score(X, y) == pytest.approx(reference.score(X, y))


def test_linear_probe_multiclass_and_single_class() -> None:
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1, 2], 20)
    X = rng.normal(size=(60, 4)) + np.eye(4)[y] * 3
    probe = LinearProbe().fit(X, y)
    assert probe.decision_function(X).shape == (60, 3)
    assert probe.score(X, y) > 0.9
    with pytest.raises(ValueError, match="two classes"):
        LinearProbe().fit(X, np.zeros(60))


def test_ridge_probe_matches_scaled_ridge() -> None:
    rng = np.random.default_rng(2)
    X = rng.normal(size=(40, 6)) * [1, 5, 1, 1, 0.2, 1] + 3
    y = X @ [1.0, 0.2, 0, 0, 2.0, 0] + rng.normal(size=40) * 0.1
    probe = RidgeProbe(alpha=3.0)
    with pytest.raises(NotFittedError):
        probe.predict(X)
    probe.fit(X, y)
    reference = make_pipeline(StandardScaler(), Ridge(alpha=3.0)).fit(X, y)
    np.testing.assert_allclose(probe.predict(X), reference.predict(X), rtol=1e-8, atol=1e-8)
    assert probe.score(X, y) == pytest.approx(reference.score(X, y))


# ---------------------------------------------------------------- fit_probes


def test_planted_direction_beats_control(planted: tuple) -> None:
    _, _, probes = planted
    assert probes.traits == list(TRAITS)
    for trait in TRAITS:
        binary = probes.curve(trait)
        assert np.mean(binary.mean[2:]) > 0.8
        assert min(binary.selectivity[2:]) > 0.25
        intensity = probes.curve(trait, "intensity")
        assert np.mean(intensity.mean[2:]) > 0.4
        assert min(intensity.selectivity[2:]) > 0.3
        assert probes.best_layer(trait) in (2, 3)
        assert probes.depth_90(trait) in (2, 3)
    which = probes.curve("O", "trait")
    assert min(which.mean[2:]) > 0.6 and min(which.selectivity[2:]) > 0.3


def test_no_signal_layers_do_not_beat_control(planted: tuple) -> None:
    _, _, probes = planted
    selectivity = [probes.curve(t).selectivity[layer] for t in TRAITS for layer in (0, 1)]
    scores = [probes.curve(t).mean[layer] for t in TRAITS for layer in (0, 1)]
    assert abs(float(np.mean(selectivity))) < 0.15
    assert abs(float(np.mean(scores)) - 0.5) < 0.12


def test_random_labels_do_not_beat_control() -> None:
    prompts = make_prompts(n_personas=4, n_questions=8, traits="OCE")
    activations = make_activations(prompts, planted_layers=())
    probes = fit_probes(activations, prompts, folds=4, progress=False)
    for task in ("binary", "intensity"):
        selectivity = [s for t in "OCE" for s in probes.curve(t, task).selectivity]
        assert abs(float(np.mean(selectivity))) < 0.15
    assert float(np.mean(probes.curve("O").mean)) < 0.65
    assert max(probes.curve(t, "intensity").mean[i] for t in "OCE" for i in range(4)) < 0.3


def test_readout_is_the_full_data_logistic_probe(planted: tuple) -> None:
    prompts, activations, probes = planted
    hidden = activations.get()[:, 2]
    readout = probes.readout(hidden, layer=2)
    assert readout.shape == (len(prompts), len(TRAITS))
    rows = [i for i, p in enumerate(prompts) if p.trait == "E"]
    y = np.array([int(prompts[i].pole == "high") for i in rows])
    reference = LinearProbe(C=probes.config["C"], max_iter=probes.config["max_iter"])
    reference.fit(hidden[rows].double().numpy(), y)
    expected = reference.decision_function(hidden.double().numpy())
    np.testing.assert_allclose(
        readout[:, TRAITS.index("E")].numpy(), expected, rtol=1e-4, atol=1e-4
    )
    # logit units: positive means "high pole" — true for high-E prompts at a planted layer
    high = [i for i in rows if prompts[i].pole == "high"]
    assert (readout[high, TRAITS.index("E")] > 0).float().mean() > 0.9
    assert probes.readout(hidden[:3], -2, task="intensity").shape == (3, len(TRAITS))
    assert probes.readout(hidden[:3].unsqueeze(0), 2, task="trait").shape == (1, 3, 5)


def test_config_records_folds_and_sizes(planted: tuple) -> None:
    _, _, probes = planted
    assert probes.config["folds"] == 4
    assert all(size > 0 for size in probes.config["test_sizes"])


def test_folds_reduced_when_personas_are_few() -> None:
    prompts = make_prompts(n_personas=2, n_questions=6, traits="OE")
    probes = fit_probes(make_activations(prompts), prompts, folds=5, progress=False)
    assert probes.config["folds"] == 2 and probes.config["folds_requested"] == 5


# ---------------------------------------------------------------- artifact


def test_probeset_round_trip_is_exact(planted: tuple, tmp_path: Path) -> None:
    _, activations, probes = planted
    json_path = probes.save(tmp_path)
    assert json_path == tmp_path / "probes.json"
    assert json.loads(json_path.read_text())["model"]["digest"] == IDENTITY.digest
    loaded = ProbeSet.load(tmp_path, expect=IDENTITY)
    for name in (
        "binary_weight",
        "binary_bias",
        "intensity_weight",
        "intensity_bias",
        "trait_weight",
        "trait_bias",
    ):
        assert torch.equal(getattr(loaded, name), getattr(probes, name)), name
    assert loaded.traits == probes.traits and loaded.layers == probes.layers
    assert loaded.kind == "resid" and loaded.pooling == "mean"
    for task, curves in probes.scores.items():
        for key, curve in curves.items():
            assert loaded.scores[task][key] == curve
    assert loaded.summary() == probes.summary()
    hidden = activations.get()[:5, 1]
    assert torch.equal(loaded.readout(hidden, 1), probes.readout(hidden, 1))


def test_probeset_for_another_model_is_refused(planted: tuple, tmp_path: Path) -> None:
    _, _, probes = planted
    probes.save(tmp_path)
    with pytest.raises(ArtifactError, match="made for model 'synthetic'.*recompute"):
        ProbeSet.load(tmp_path, expect=OTHER)


def test_probeset_missing_or_corrupt(tmp_path: Path, planted: tuple) -> None:
    with pytest.raises(ArtifactError, match="not found"):
        ProbeSet.load(tmp_path)
    planted[2].save(tmp_path)
    (tmp_path / "probes.safetensors").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="unreadable"):
        ProbeSet.load(tmp_path)


def test_fit_probes_reuses_saved_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prompts = make_prompts(n_personas=2, n_questions=4, traits="OE")
    activations = make_activations(prompts)
    first = persist(probes_job(activations, prompts, folds=2, progress=False), tmp_path)

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("refitted although the saved probes match")

    monkeypatch.setattr(LinearProbe, "fit", boom)
    again = persist(probes_job(activations, prompts, folds=2, progress=False), tmp_path)
    assert torch.equal(again.binary_weight, first.binary_weight)
    # other inputs: refused (the saved set is another set-up's), refitted with force
    with pytest.raises(RunConflictError, match=r"seed 0 → 1.*--force"):
        persist(probes_job(activations, prompts, folds=2, seed=1, progress=False), tmp_path)
    with pytest.raises(AssertionError, match="refitted"):
        persist(
            probes_job(activations, prompts, folds=2, seed=1, progress=False), tmp_path, force=True
        )


# ---------------------------------------------------------------- bad input


def test_bad_inputs_give_clear_errors(planted: tuple) -> None:
    prompts, activations, probes = planted
    with pytest.raises(DataError, match="unknown trait"):
        fit_probes(activations, prompts, traits="X", progress=False)
    one_pole = [p for p in prompts if not (p.trait == "E" and p.pole == "low")]
    with pytest.raises(DataError, match="E has no 'low'-pole prompts"):
        fit_probes(activations, one_pole, traits="E,O", progress=False)
    stranger = [*prompts, replace(prompts[0], id="never-captured")]
    with pytest.raises(DataError, match="no captured activations.*capture"):
        fit_probes(activations, stranger, progress=False)
    with pytest.raises(ArtifactError, match="no pooled activations"):
        fit_probes(activations, prompts, pooling="last", progress=False)
    tiny = make_prompts(n_personas=1, n_questions=4, traits="O")
    with pytest.raises(DataError, match="at least 2"):
        fit_probes(make_activations(tiny), tiny, progress=False)
    with pytest.raises(DataError, match="no prompts"):
        fit_probes(activations, [], progress=False)
    with pytest.raises(DataError, match="no probe for trait"):
        probes.best_layer("Q")
    with pytest.raises(DataError, match="no probe at layer 9"):
        probes.readout(torch.zeros(1, 24), 9)
    with pytest.raises(DataError, match="width 7"):
        probes.readout(torch.zeros(1, 7), 1)


def test_probe_figures_are_written(planted: tuple, tmp_path: Path) -> None:
    from traitlens.report.probe_figures import plot_probe_accuracy, plot_probe_r2

    paths = plot_probe_accuracy(planted[2], tmp_path) + plot_probe_r2(planted[2], tmp_path)
    assert sorted(p.name for p in paths) == sorted(
        ["probe_accuracy.png", "probe_accuracy.svg", "probe_r2.png", "probe_r2.svg"]
    )
    assert all(p.stat().st_size > 1000 for p in paths)


def test_probe_cli_writes_artifacts(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from traitlens.cli.main import app

    prompts = make_prompts(n_personas=2, n_questions=4, traits="OE")
    with (tmp_path / "prompts.jsonl").open("w") as handle:
        for p in prompts:
            handle.write(json.dumps(p.__dict__) + "\n")
    make_activations(prompts).save(tmp_path / "activations" / "question")
    result = CliRunner().invoke(app, ["probe", "--run", str(tmp_path), "--folds", "2"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "probes.json").exists() and (tmp_path / "probes.safetensors").exists()
    assert (tmp_path / "figures" / "probe_accuracy.png").exists()
    assert ProbeSet.load(tmp_path, expect=IDENTITY).traits == ["O", "E"]


# ---------------------------------------------------------------- real model


@pytest.mark.slow
def test_probes_on_embedded_model(smol: object) -> None:
    from traitlens.capture import capture_activations

    personas = {
        ("E", "high"): [
            "You are outgoing, talkative and love big parties.",
            "You are energetic and always seek out other people.",
        ],
        ("E", "low"): [
            "You are quiet and reserved and prefer to be alone.",
            "You are shy and find crowds draining.",
        ],
    }
    questions = [
        "How do you spend a free evening?",
        "What would you do at a wedding?",
        "How do you feel about meeting new people?",
        "What is your ideal weekend?",
    ]
    prompts = []
    for (trait, pole), texts in personas.items():
        for k, system in enumerate(texts):
            for q, user in enumerate(questions):
                prompts.append(
                    FakePrompt(
                        f"{trait}|{pole}|{k}|{q}",
                        trait,
                        pole,
                        5 if pole == "high" else 1,
                        f"{trait}{pole}{k}",
                        f"q{q}",
                        system,
                        user,
                    )
                )
    activations = capture_activations(
        smol, prompts, span="question", neuron_stats=False, progress=False
    )
    probes = fit_probes(activations, prompts, folds=2, progress=False)
    assert probes.binary_weight.shape == (1, smol.n_layers, smol.identity.d_model)
    assert probes.trait_weight is None
    assert 0 <= probes.best_layer("E") < smol.n_layers
    readout = probes.readout(activations.get()[:, 5], 5)
    assert readout.shape == (len(prompts), 1) and torch.isfinite(readout).all()


def test_cross_validation_runs_through_sklearn_on_the_explicit_folds() -> None:
    """Each fold's score is a fresh probe fitted on that fold's training rows and scored
    on its test rows; a training fold with one class predicts that class; an empty test
    fold is NaN."""
    import math

    from traitlens.probe.estimators import LinearProbe
    from traitlens.probe.fit import _cross_validate
    from traitlens.probe.folds import Fold

    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 10)
    X = rng.normal(size=(20, 6)) + y[:, None] * 1.5
    folds = [
        Fold(train=np.arange(10, 20), test=np.arange(0, 10)),
        Fold(train=np.arange(0, 20, 2), test=np.arange(1, 20, 2)),  # only class 0 to train on
        Fold(train=np.arange(0, 19), test=np.arange(0)),
    ]
    scores = _cross_validate(LinearProbe(C=0.1), X, y, folds, "accuracy")
    by_hand = LinearProbe(C=0.1).fit(X[10:], y[10:]).predict(X[:10])
    assert scores[0] == float(np.mean(by_hand == y[:10]))
    assert scores[1] == 0.0  # predicts class 0 for test rows that are all class 1
    assert math.isnan(scores[2])
