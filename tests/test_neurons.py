"""Neuron selection: δ matches a brute-force count, the z-test and BH are right, FDR
removes noise but keeps planted neurons, artifacts round-trip exactly, errors are clear."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

from traitlens.artifact_io import ModelIdentity
from traitlens.capture.artifacts import NeuronStats
from traitlens.errors import ArtifactError, DataError
from traitlens.neurons import (
    NeuronSet,
    SelectedNeurons,
    jaccard_matrix,
    matched_random_neurons,
    neurons_job,
    prompts_per_group,
    select_neurons,
    two_proportion_z_test,
)
from traitlens.provenance import RunConflictError, persist
from traitlens.stats import fdr_bh

IDENTITY = ModelIdentity("synthetic", "SynthForCausalLM", 4, 16, 500, "c" * 16)
OTHER = ModelIdentity("other", "OtherForCausalLM", 4, 16, 500, "d" * 16)


def make_stats(
    traits: str = "EA",
    tokens: int = 2000,
    width: int = 500,
    planted: dict[tuple[str, int, int], float] | None = None,
    seed: int = 0,
    layers: tuple[int, ...] = (0, 1, 2, 3),
) -> NeuronStats:
    """Binomial firing counts with the same rate under both poles (pure noise), except
    ``planted[(trait, layer_column, neuron)] = δ`` added to the high pole's rate."""
    rng = np.random.default_rng(seed)
    groups = sorted(f"{t}|{p}" for t in traits for p in ("high", "low"))
    base = rng.uniform(0.2, 0.8, size=(len(layers), width))
    for _, column, neuron in planted or {}:
        base[column, neuron] = 0.5  # room for ± planted δ
    positive = np.zeros((len(groups), len(layers), width))
    for g, group in enumerate(groups):
        rate = base.copy()
        trait, pole = group.split("|")
        for (t, column, neuron), delta in (planted or {}).items():
            if t == trait and pole == "high":
                rate[column, neuron] += delta
        positive[g] = rng.binomial(tokens, rate)
    return NeuronStats(
        identity=IDENTITY,
        groups=groups,
        layers=list(layers),
        positive=torch.tensor(positive, dtype=torch.float64),
        tokens=torch.full((len(groups),), float(tokens), dtype=torch.float64),
        total=torch.tensor(positive, dtype=torch.float64),
        a95=torch.tensor(rng.uniform(0.5, 2.0, size=(len(layers), width))),
        config={"span": "answer", "neuron_span": "answer"},
    )


PLANTED = {("E", 1, 7): 0.3, ("E", 2, 9): 0.3, ("A", 3, 11): 0.3, ("E", 0, 3): -0.3}


@pytest.fixture(scope="module")
def planted_set() -> NeuronSet:
    return select_neurons(make_stats(planted=PLANTED), threshold=0.1, fdr=0.05)


# ---------------------------------------------------------------- pure maths


def test_two_proportion_z_test_hand_computed() -> None:
    # pooled p = 0.5, se = sqrt(0.25 · (1/100 + 1/100)) = 0.0707107, z = 0.2 / se
    z, p = two_proportion_z_test(np.array([0.6]), 100, np.array([0.4]), 100)
    assert z[0] == pytest.approx(2.8284271, rel=1e-6)
    assert p[0] == pytest.approx(0.0046777, rel=1e-4)
    assert p[0] == pytest.approx(2 * scipy_stats.norm.sf(2.8284271), rel=1e-6)
    # a neuron that never (or always) fires in both groups: no evidence, not NaN
    z, p = two_proportion_z_test(np.array([0.0, 1.0]), 50, np.array([0.0, 1.0]), 70)
    assert z.tolist() == [0.0, 0.0] and p.tolist() == [1.0, 1.0]
    # unequal n: pooled p = (0.3·200 + 0.2·100) / 300 = 0.26667
    se = math.sqrt(0.26666667 * 0.73333333 * (1 / 200 + 1 / 100))
    z, _ = two_proportion_z_test(np.array([0.3]), 200, np.array([0.2]), 100)
    assert z[0] == pytest.approx(0.1 / se, rel=1e-6)


def test_benjamini_hochberg_hand_computed() -> None:
    # sorted p: 0.01 0.03 0.04 0.2 → ·m/rank: 0.04 0.06 0.0533 0.2 → running min from the right
    q = fdr_bh(np.array([0.01, 0.04, 0.03, 0.2]))
    np.testing.assert_allclose(q, [0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.2])
    assert fdr_bh(np.array([0.9, 0.95])).tolist() == [0.95, 0.95]
    assert fdr_bh(np.array([])).shape == (0,)
    with pytest.raises(ValueError, match="p-values"):
        fdr_bh(np.array([0.1, float("nan")]))


def test_benjamini_hochberg_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    p = np.concatenate([rng.uniform(size=500), rng.uniform(0, 1e-4, size=50), [0.5] * 20, [1.0]])
    np.testing.assert_allclose(
        fdr_bh(p), scipy_stats.false_discovery_control(p, method="bh"), rtol=1e-12
    )
    grid = rng.uniform(size=(4, 30))  # any shape; adjusted over all entries
    np.testing.assert_allclose(
        fdr_bh(grid).reshape(-1),
        scipy_stats.false_discovery_control(grid.reshape(-1), method="bh"),
        rtol=1e-12,
    )


def test_jaccard_matrix_hand_computed() -> None:
    a = torch.tensor([True, True, False, False])
    b = torch.tensor([False, True, True, False])
    empty = torch.zeros(4, dtype=torch.bool)
    matrix = jaccard_matrix([a, b, empty])
    assert matrix[0, 1] == pytest.approx(1 / 3) and matrix[1, 0] == pytest.approx(1 / 3)
    assert matrix[0, 0] == 1.0 and matrix[0, 2] == 0.0
    assert math.isnan(matrix[2, 2])


def test_matched_random_neurons_counts_exclusion_and_seed() -> None:
    exclude = torch.zeros(3, 10, dtype=torch.bool)
    exclude[0, :5] = True
    counts = torch.tensor([3, 0, 10])
    layers, idx = matched_random_neurons(counts, exclude, torch.Generator().manual_seed(1))
    assert torch.bincount(layers, minlength=3).tolist() == [3, 0, 10]
    assert not exclude[layers, idx].any()
    again = matched_random_neurons(counts, exclude, torch.Generator().manual_seed(1))
    assert torch.equal(again[0], layers) and torch.equal(again[1], idx)
    layers, idx = matched_random_neurons(torch.tensor([9, 0, 0]), exclude, torch.Generator())
    assert len(idx) == 5  # only 5 eligible neurons in layer 0: all of them, no repeats


# ---------------------------------------------------------------- selection


def test_fdr_removes_noise_but_keeps_planted(planted_set: NeuronSet) -> None:
    noise = select_neurons(make_stats(), threshold=0.02, fdr=0.05)
    summary = noise.summary()["per_trait"]
    npti = sum(summary[t][p]["npti"] for t in "EA" for p in ("high", "low"))
    survivors = sum(summary[t][p]["selected"] for t in "EA" for p in ("high", "low"))
    assert npti > 100  # |δ| ≥ 0.02 happens by chance at 2000 tokens…
    assert survivors <= 1  # …but almost nothing survives BH at 5 %
    high_e = planted_set.select("E", "high")
    assert sorted(zip(high_e.layers.tolist(), high_e.indices.tolist(), strict=True)) == [
        (1, 7),
        (2, 9),
    ]
    low_e = planted_set.select("E", "low")
    assert list(zip(low_e.layers.tolist(), low_e.indices.tolist(), strict=True)) == [(0, 3)]
    assert (high_e.delta > 0.2).all() and (low_e.delta > 0.2).all()  # signed toward the pole
    assert len(planted_set.select("A", "high")) == 1 and len(planted_set.select("A", "low")) == 0


def test_without_fdr_it_is_npti_rule(planted_set: NeuronSet) -> None:
    stats = make_stats(planted=PLANTED)
    plain = select_neurons(stats, threshold=0.1, fdr=None)
    rate_high, rate_low = stats.firing_rate("E|high"), stats.firing_rate("E|low")
    expected = (rate_high - rate_low).float() >= 0.1
    assert torch.equal(plain.mask("E", "high"), expected)
    assert torch.equal(plain.npti_mask("E", "high"), planted_set.npti_mask("E", "high"))


def test_the_fdr_or_npti_choice_counts_where_it_is_told(planted_set: NeuronSet) -> None:
    """One function makes every design's "FDR set, else NPTI's δ rule" choice: it counts
    the FDR-selected neurons of the trait on the given poles and layers."""
    from traitlens.neurons.rules import fdr_or_npti

    fdr_high = int(planted_set.mask("E", "high").sum())
    fdr_all = fdr_high + int(planted_set.mask("E", "low").sum())
    assert fdr_high >= 1
    assert fdr_or_npti(planted_set, "E", minimum=fdr_all) == "fdr"
    assert fdr_or_npti(planted_set, "E", minimum=fdr_all + 1) == "npti"
    assert fdr_or_npti(planted_set, "E", poles=("high",), minimum=fdr_high + 1) == "npti"
    in_layer_1 = int(planted_set.mask("E", "high")[1].sum() + planted_set.mask("E", "low")[1].sum())
    assert fdr_or_npti(planted_set, "E", layers=[1], minimum=in_layer_1) == "fdr"
    assert fdr_or_npti(planted_set, "E", layers=[1], minimum=in_layer_1 + 1) == "npti"


def test_prompt_level_n_is_more_conservative() -> None:
    stats = make_stats(planted={("E", 1, 7): 0.12}, tokens=4000)
    by_tokens = select_neurons(stats, 0.1, 0.05)
    counts = {g: 30 for g in stats.groups}
    by_prompts = select_neurons(stats, 0.1, 0.05, prompt_counts=counts)
    assert by_tokens.mask("E", "high")[1, 7]
    assert not by_prompts.mask("E", "high")[1, 7]
    assert (by_prompts.pvalue >= by_tokens.pvalue).all()
    assert by_prompts.config["effective_n"] == "prompts"
    assert by_tokens.config["effective_n"] == "tokens"


def test_prompts_per_group() -> None:
    @dataclass
    class P:
        trait: str
        pole: str

    prompts = [P("E", "high"), P("E", "high"), P("E", "low"), P("A", "neutral")]
    assert prompts_per_group(prompts) == {"E|high": 2, "E|low": 1, "A|neutral": 1}


def test_random_control_is_matched_disjoint_and_seeded(planted_set: NeuronSet) -> None:
    selected = planted_set.select("E", "high")
    control = planted_set.random_control("E", "high")
    assert isinstance(control, SelectedNeurons)
    assert torch.equal(control.per_layer_counts(4), selected.per_layer_counts(4))
    union = planted_set.union_mask()
    assert not union[control.layers, control.indices].any()
    again = planted_set.random_control("E", "high", seed=0)
    assert torch.equal(again.indices, control.indices)
    other = planted_set.random_control("E", "high", seed=1)
    assert not torch.equal(other.indices, control.indices)
    assert torch.equal(control.a95, planted_set.a95[control.layers, control.indices])


def test_layers_are_model_layers() -> None:
    stats = make_stats(planted={("E", 1, 7): 0.3}, layers=(4, 8, 12, 16))
    neurons = select_neurons(stats)
    assert neurons.select("E", "high").layers.tolist() == [8]
    assert neurons.random_control("E", "high").layers.tolist() == [8]
    assert neurons.table("E", "high")[0]["layer"] == 8


def test_summary_table_and_overlap(planted_set: NeuronSet) -> None:
    rows = planted_set.table("E", "high")
    assert [(r["layer"], r["neuron"]) for r in rows] == [(1, 7), (2, 9)]
    assert all(r["q"] <= 0.05 and r["delta"] >= 0.1 and r["a95"] > 0 for r in rows)
    counts = planted_set.counts()
    assert counts.shape == (2, 2, 4)
    assert counts[0, 0].tolist() == [0, 1, 1, 0]  # E high: layers 1 and 2
    labels, matrix = planted_set.jaccard()
    assert labels == ["E|high", "E|low", "A|high", "A|low"]
    assert matrix[0, 0] == 1.0 and matrix[0, 2] == 0.0 and math.isnan(matrix[3, 3])
    profile = planted_set.layer_profile()["E"]
    # 4 layers in thirds: [0, 1], [2], [3]; E neurons sit in layers 0, 1 and 2
    assert profile == pytest.approx({"early": 2 / 3, "middle": 1 / 3, "late": 0.0})


# ---------------------------------------------------------------- artifact


def test_neuronset_round_trip_is_exact(planted_set: NeuronSet, tmp_path: Path) -> None:
    path = planted_set.save(tmp_path)
    meta = json.loads(path.read_text())
    assert meta["threshold"] == 0.1 and meta["fdr"] == 0.05
    assert meta["model"]["digest"] == IDENTITY.digest
    loaded = NeuronSet.load(tmp_path, expect=IDENTITY)
    for name in ("delta", "pvalue", "qvalue", "a95"):
        assert torch.equal(getattr(loaded, name), getattr(planted_set, name)), name
    assert loaded.traits == planted_set.traits and loaded.layers == planted_set.layers
    assert loaded.config == planted_set.config
    for trait in ("E", "A"):
        for pole in ("high", "low"):
            a, b = loaded.select(trait, pole), planted_set.select(trait, pole)
            assert torch.equal(a.indices, b.indices) and torch.equal(a.delta, b.delta)
            c, d = loaded.random_control(trait, pole), planted_set.random_control(trait, pole)
            assert torch.equal(c.indices, d.indices)
    assert json.dumps(loaded.summary()) == json.dumps(planted_set.summary())  # NaN-safe


def test_neuronset_for_another_model_is_refused(planted_set: NeuronSet, tmp_path: Path) -> None:
    planted_set.save(tmp_path)
    with pytest.raises(ArtifactError, match="made for model 'synthetic'.*recompute"):
        NeuronSet.load(tmp_path, expect=OTHER)
    with pytest.raises(ArtifactError, match="not found"):
        NeuronSet.load(tmp_path / "nowhere")


def test_select_neurons_reuses_saved_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stats = make_stats(planted=PLANTED)
    first = persist(neurons_job(stats), tmp_path)

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("recomputed although the saved neuron set matches")

    monkeypatch.setattr("traitlens.neurons.select.two_proportion_z_test", boom)
    again = persist(neurons_job(stats), tmp_path)
    assert torch.equal(again.qvalue, first.qvalue)
    # other inputs: refused (the saved set is another set-up's), recomputed with force
    with pytest.raises(RunConflictError, match=r"threshold 0.1 → 0.2.*--force"):
        persist(neurons_job(stats, threshold=0.2), tmp_path)
    with pytest.raises(AssertionError, match="recomputed"):
        persist(neurons_job(stats, threshold=0.2), tmp_path, force=True)


# ---------------------------------------------------------------- bad input


def test_bad_inputs_give_clear_errors(planted_set: NeuronSet) -> None:
    stats = make_stats()
    with pytest.raises(DataError, match="unknown trait"):
        select_neurons(stats, traits="X")
    with pytest.raises(DataError, match="trait O has no 'high'-pole group"):
        select_neurons(stats, traits="O")
    one_pole = make_stats()
    keep = [i for i, g in enumerate(one_pole.groups) if g != "A|low"]
    one_pole = NeuronStats(
        IDENTITY,
        [one_pole.groups[i] for i in keep],
        one_pole.layers,
        one_pole.positive[keep],
        one_pole.tokens[keep],
        one_pole.total[keep],
        one_pole.a95,
    )
    with pytest.raises(DataError, match="trait A has no 'low'-pole group"):
        select_neurons(one_pole)
    empty = NeuronStats(
        IDENTITY,
        [],
        [0],
        torch.zeros(0, 1, 5),
        torch.zeros(0),
        torch.zeros(0, 1, 5),
        torch.zeros(1, 5),
    )
    with pytest.raises(DataError, match="empty"):
        select_neurons(empty)
    silent = make_stats()
    silent.tokens[0] = 0
    with pytest.raises(DataError, match="saw no tokens"):
        select_neurons(silent)
    with pytest.raises(DataError, match="threshold"):
        select_neurons(stats, threshold=1.5)
    with pytest.raises(DataError, match="fdr"):
        select_neurons(stats, fdr=0.0)
    with pytest.raises(DataError, match="prompt_counts has no positive count for A\\|high"):
        select_neurons(stats, prompt_counts={"E|high": 3, "E|low": 3})
    with pytest.raises(DataError, match="no neuron statistics for trait"):
        planted_set.select("N", "high")
    with pytest.raises(DataError, match="unknown pole"):
        planted_set.select("E", "neutral")


def test_neuron_figures_are_written(planted_set: NeuronSet, tmp_path: Path) -> None:
    from traitlens.report.neuron_figures import plot_neuron_counts, plot_neuron_overlap

    paths = plot_neuron_counts(planted_set, tmp_path) + plot_neuron_overlap(planted_set, tmp_path)
    assert sorted(p.name for p in paths) == sorted(
        ["neuron_counts.png", "neuron_counts.svg", "neuron_overlap.png", "neuron_overlap.svg"]
    )
    assert all(p.stat().st_size > 1000 for p in paths)


def test_neurons_cli_writes_artifacts(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from traitlens.cli.main import app

    make_stats(planted=PLANTED).save(tmp_path / "activations" / "answer")
    with (tmp_path / "prompts.jsonl").open("w") as handle:
        for trait in "EA":
            for pole, intensity in (("high", 5), ("low", 1)):
                for k in range(40):
                    record = {
                        "id": f"{trait}|{pole}|{k}",
                        "trait": trait,
                        "pole": pole,
                        "intensity": intensity,
                        "persona_id": f"{trait}{pole}{k % 4}",
                        "question_id": f"q{k // 4}",
                        "system": "You are someone.",
                        "user": "What now?",
                    }
                    handle.write(json.dumps(record) + "\n")
    result = CliRunner().invoke(app, ["neurons", "--run", str(tmp_path), "--fdr", "0.05"])
    assert result.exit_code == 0, result.output
    loaded = NeuronSet.load(tmp_path, expect=IDENTITY)
    assert loaded.config["effective_n"] == "prompts"
    assert loaded.config["prompt_counts"] == {"A|high": 40, "A|low": 40, "E|high": 40, "E|low": 40}
    assert (tmp_path / "figures" / "neuron_counts.svg").exists()
    assert (tmp_path / "figures" / "neuron_overlap.png").exists()


# ---------------------------------------------------------------- tiny model: brute force


@dataclass(frozen=True)
class Prompt:
    id: str
    trait: str
    pole: str
    system: str
    user: str


ANSWERS = [
    "I like parties and people.",
    "A calm and quiet evening.",
    "I would spend it with friends, talking.",
    "Free afternoon: a walk, then I read.",
    "person question answer",
    "You are calm.",
]


def tiny_run() -> tuple[list[Prompt], list[str]]:
    prompts, answers = [], []
    systems = {
        "high": "You are a friendly person who enjoys parties.",
        "low": "You are a calm person who enjoys quiet evenings.",
    }
    for t, trait in enumerate("EA"):
        for pole in ("high", "low"):
            for k in range(3):
                prompts.append(
                    Prompt(
                        f"{trait}|{pole}|{k}",
                        trait,
                        pole,
                        systems[pole],
                        "How would you spend a free Saturday afternoon?",
                    )
                )
                answers.append(ANSWERS[(k + 2 * t + (pole == "low")) % len(ANSWERS)])
    return prompts, answers


def brute_force_delta(
    tm: object, prompts: list[Prompt], answers: list[str], trait: str
) -> torch.Tensor:
    """Store every answer token's mlp_act per layer (one prompt at a time, no padding)
    and count positives directly: δ [L, d_mlp] in float64."""
    from traitlens.models.hooks import hooks_installed

    per_pole: dict[str, list[torch.Tensor]] = {"high": [], "low": []}
    for prompt, answer in zip(prompts, answers, strict=True):
        if prompt.trait != trait:
            continue
        formatted = tm.format(prompt.system, prompt.user, answer)  # type: ignore[attr-defined]
        start, end = formatted.span("answer")
        stored: list[torch.Tensor] = []
        hooks = [
            (f"mlp_act[{layer}]", lambda acts, s=stored: s.append(acts[0].clone()))
            for layer in range(tm.n_layers)
        ]  # type: ignore[attr-defined]
        with torch.inference_mode(), hooks_installed(tm.adapter, hooks):  # type: ignore[attr-defined]
            tm.model(input_ids=torch.tensor([formatted.input_ids]))  # type: ignore[attr-defined]
        per_pole[prompt.pole].append(torch.stack(stored)[:, start:end])  # [L, tokens, d_mlp]
    rates = {
        pole: (torch.cat(chunks, dim=1) > 0).double().mean(1) for pole, chunks in per_pole.items()
    }
    return rates["high"] - rates["low"]


def test_selection_matches_brute_force_on_tiny_model(tiny_llama: object) -> None:
    from traitlens.capture import capture_activations

    prompts, answers = tiny_run()
    activations = capture_activations(
        tiny_llama,
        prompts,
        answers=answers,
        span="answer",
        groups=[f"{p.trait}|{p.pole}" for p in prompts],
        batch_size=4,
        progress=False,
    )
    assert activations.neuron_stats is not None
    neurons = select_neurons(activations.neuron_stats, threshold=0.1, fdr=None)
    for t, trait in enumerate("EA"):
        expected = brute_force_delta(tiny_llama, prompts, answers, trait)
        np.testing.assert_allclose(neurons.delta[t].double().numpy(), expected.numpy(), atol=1e-6)
        clear = (expected.abs() - 0.1).abs() > 1e-6  # skip float ties at the threshold
        assert torch.equal(neurons.mask(trait, "high")[clear], (expected >= 0.1)[clear])
        assert torch.equal(neurons.mask(trait, "low")[clear], (expected <= -0.1)[clear])
        assert len(neurons.select(trait, "high")) + len(neurons.select(trait, "low")) > 0


# ---------------------------------------------------------------- real model


@pytest.mark.slow
def test_neuron_stage_on_embedded_model(smol: object, tmp_path: Path) -> None:
    from traitlens.capture import capture_activations
    from traitlens.models.generation import generate_answers

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
    questions = ["How do you spend a free evening?", "What would you do at a wedding?"]
    prompts = [
        Prompt(f"E|{pole}|{k}|{q}", trait, pole, system, user)
        for (trait, pole), texts in personas.items()
        for k, system in enumerate(texts)
        for q, user in enumerate(questions)
    ]
    answers = generate_answers(smol, prompts, max_new_tokens=8, progress=False)
    activations = capture_activations(
        smol,
        prompts,
        answers=answers,
        span="answer",
        groups=[f"{p.trait}|{p.pole}" for p in prompts],
        kinds=(),
        progress=False,
    )
    assert activations.neuron_stats is not None
    neurons = persist(
        neurons_job(activations.neuron_stats, prompt_counts=prompts_per_group(prompts)), tmp_path
    )
    d_mlp = smol.identity.d_mlp  # type: ignore[attr-defined]
    assert neurons.delta.shape == (1, smol.n_layers, d_mlp)  # type: ignore[attr-defined]
    assert len(neurons.select("E", "high")) <= int(neurons.npti_mask("E", "high").sum())
    assert NeuronSet.load(tmp_path, expect=smol.identity).traits == ["E"]  # type: ignore
