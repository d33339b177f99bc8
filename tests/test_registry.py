"""The method registry: a direction estimator or neuron rule registered in Python works
everywhere a built-in one does — trait_vector, run_vector, the CLI help and choices,
the study configuration — and bad registrations or names are refused clearly."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from test_steer import _synthetic
from traitlens.artifact_io import ModelIdentity
from traitlens.errors import DataError
from traitlens.neurons import NeuronSet
from traitlens.neurons.rules import NEURON_RULES, RULES, register_rule
from traitlens.steer import (
    METHODS,
    DirectionContext,
    VectorSet,
    get_method,
    register_method,
    run_vector,
    trait_vector,
)
from traitlens.steer.registry import DIRECTIONS
from traitlens.study.config import resolve_config


@pytest.fixture
def clean_registry():
    """Whatever a test registers is removed afterwards: other tests see the built-ins."""
    methods, rules = dict(DIRECTIONS), dict(NEURON_RULES)
    yield
    for table, before in ((DIRECTIONS, methods), (NEURON_RULES, rules)):
        table.clear()
        table.update(before)


def _median_diff(x_high, x_low, context):
    raw = x_high.median(0).values - x_low.median(0).values
    return raw / raw.norm(), float(raw.norm())


def test_built_ins_are_registered_in_order() -> None:
    assert tuple(METHODS) == ("mean_diff", "pca", "regression", "probe")
    assert tuple(RULES) == ("fdr", "npti", "npti_top", "dpn")
    assert get_method("pca").needs == {"pairs"}
    assert get_method("regression").params == ("ridge_alpha",)


def test_registered_method_works_through_trait_vector(clean_registry) -> None:
    register_method("median_diff", doc="difference of pole medians")(_median_diff)
    assert "median_diff" in METHODS and METHODS[-1] == "median_diff"
    activations, prompts, planted = _synthetic()
    vector = trait_vector(activations, prompts, "E", "median_diff")
    assert vector.method == "median_diff" and vector.layers == (0, 1)
    for layer in (0, 1):
        assert float(vector.direction(layer).double() @ planted.double()) > 0.9
    # the caller normalises and scales exactly as for the built-ins
    x = activations.layer(0).double()
    high, low = vector_rows(prompts, "high"), vector_rows(prompts, "low")
    expected, norm = _median_diff(x[high], x[low], None)
    assert torch.allclose(vector.direction(0).double(), expected, atol=1e-6)
    assert vector.norms[0].item() == pytest.approx(norm, rel=1e-6)
    both = VectorSet(activations.identity)
    both.add(vector)
    assert both.get("E", "median_diff") is vector


def vector_rows(prompts, pole: str) -> list[int]:
    return [i for i, p in enumerate(prompts) if p.pole == pole]


def test_the_context_carries_what_the_method_needs(clean_registry) -> None:
    seen: dict[str, DirectionContext] = {}

    def record(name: str):
        def estimate(x_high, x_low, context):
            seen[name] = context
            return x_high.mean(0) - x_low.mean(0), 1.0

        return estimate

    register_method("plain")(record("plain"))
    register_method("paired", needs=("pairs", "probe"), params=("probe_c",))(record("paired"))
    activations, prompts, planted = _synthetic(n_questions=4)
    probes = torch.stack([planted, -planted])  # one row per captured layer
    plain = trait_vector(activations, prompts, "E", "plain", probes=probes)
    paired = trait_vector(activations, prompts, "E", "paired", probes=probes, probe_c=0.5)
    assert seen["plain"].probe_row is None  # probes only reach methods that need them
    assert torch.equal(seen["paired"].probe_row, -planted.double())  # layer 1's row
    context = seen["paired"]
    high, low = vector_rows(prompts, "high"), vector_rows(prompts, "low")
    for i, j in context.pairs:  # each pair answers one question
        assert prompts[high[i]].question_id == prompts[low[j]].question_id
    assert len(context.pairs) == 4 * 3
    assert context.x_trait.shape == (len(prompts), 24)  # neutral rows included
    assert context.intensities.tolist() == [float(p.intensity) for p in prompts]
    assert context.probe_c == 0.5 and context.layer == 1
    assert paired.source["probe_c"] == 0.5 and paired.source["probe"] == "probe stage"
    assert "probe_c" not in plain.source and "probe" not in plain.source


def test_pairs_are_required_before_estimating(clean_registry) -> None:
    calls: list[int] = []

    def estimate(x_high, x_low, context):
        calls.append(1)
        return x_high.mean(0), 1.0

    register_method("needs_pairs", needs=("pairs",))(estimate)
    activations, prompts, _ = _synthetic()
    unpaired = [p if p.pole != "low" else replace(p, question_id="elsewhere") for p in prompts]
    with pytest.raises(DataError, match="nothing to pair"):
        trait_vector(activations, unpaired, "E", "needs_pairs")
    with pytest.raises(DataError, match="nothing to pair"):
        trait_vector(activations, unpaired, "E", "pca")
    assert calls == []


def test_bad_registrations_and_names_are_refused(clean_registry) -> None:
    with pytest.raises(DataError, match="already registered.*mean_diff, pca"):
        register_method("mean_diff")(_median_diff)
    with pytest.raises(DataError, match="already registered"):
        register_rule("npti")(lambda neurons, trait, pole: neurons.npti_mask(trait, pole))
    with pytest.raises(DataError, match="unknown needs/params"):
        register_method("greedy", needs=("everything",))
    with pytest.raises(DataError, match="one word"):
        register_method("a, b")
    activations, prompts, _ = _synthetic()
    with pytest.raises(DataError, match="use one of mean_diff, pca, regression, probe"):
        trait_vector(activations, prompts, "E", "magic")
    register_method("wrong_shape")(lambda x_high, x_low, context: (x_high, 1.0))
    with pytest.raises(DataError, match=r"wrong_shape.*\[d_model=24\]"):
        trait_vector(activations, prompts, "E", "wrong_shape")
    assert tuple(METHODS) == ("mean_diff", "pca", "regression", "probe", "wrong_shape")


def test_study_config_reads_the_registry(clean_registry) -> None:
    with pytest.raises(DataError, match="unknown methods.*'mean_diff', 'pca'"):
        resolve_config(overrides={"vector_methods": ["median_diff"]})
    with pytest.raises(DataError, match="unknown methods"):
        resolve_config(overrides={"vector_methods": ["neurons"]})  # an edit, not a direction
    register_method("median_diff")(_median_diff)
    config = resolve_config(
        overrides={"vector_methods": ["median_diff"], "eval_methods": ["median_diff", "neurons"]}
    )
    assert config.eval_methods == ["median_diff", "neurons"]


def test_cli_help_and_choices_read_the_registry(clean_registry, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from traitlens.cli.main import app

    runner = CliRunner(env={"COLUMNS": "200"})  # one help line per option
    before = runner.invoke(app, ["steer", "--help"])
    assert before.exit_code == 0 and "median_diff" not in before.output
    assert "mean_diff, pca, regression, probe" in before.output
    register_method("median_diff")(_median_diff)  # after the app was built
    for command in (["steer", "--help"], ["vectors", "export", "--help"]):
        shown = runner.invoke(app, command)
        assert shown.exit_code == 0 and "median_diff" in shown.output, shown.output
    activations, prompts, _ = _synthetic()
    vectors = VectorSet(activations.identity)
    vectors.add(trait_vector(activations, prompts, "E", "median_diff"))
    vectors.save(tmp_path)
    out = tmp_path / "e.safetensors"
    args = ["vectors", "export", "--run", str(tmp_path), "-t", "E", "--format", "safetensors"]
    exported = runner.invoke(app, [*args, "--method", "median_diff", "--out", str(out)])
    assert exported.exit_code == 0, exported.output
    refused = runner.invoke(app, [*args, "--method", "magic", "--out", str(out)])
    assert refused.exit_code != 0 and "median_diff" in str(refused.exception)


@pytest.fixture(scope="module")
def captured_run(tmp_path_factory: pytest.TempPathFactory):
    from conftest import build_tiny
    from traitlens.capture.pipeline import capture_run

    tm = build_tiny("llama")
    run = tmp_path_factory.mktemp("registry") / "run"
    capture_run(
        tm, run, ["E"], n_questions=2, n_personas_per_pole=2, max_new_tokens=4, progress=False
    )
    return tm, run


def test_run_vector_prepares_what_a_registered_method_needs(clean_registry, captured_run) -> None:
    tm, run = captured_run
    register_method("median_diff")(_median_diff)
    register_method("paired_median", needs=("pairs",))(_median_diff)
    # methods on pairs read question tokens (same tokens on both sides), the others answers
    assert run_vector(tm, run, "E", "median_diff", progress=False).source["span"] == "answer"
    assert run_vector(tm, run, "E", "paired_median", progress=False).source["span"] == "question"
    assert ("E", "median_diff") in VectorSet.load(run)
    with pytest.raises(DataError, match="unknown direction method 'magic'.*median_diff"):
        run_vector(tm, run, "E", "magic", progress=False)


# ------------------------------------------------------------------------ neuron rules


def _neuron_set() -> NeuronSet:
    """Two traits, two layers (model layers 3 and 5) × 4 neurons, with hand-set δ and q."""
    identity = ModelIdentity("hand", "HandForCausalLM", 6, 8, 4, "hand0")
    delta = torch.tensor(
        [
            [[0.5, 0.05, -0.3, 0.2], [-0.12, 0.4, 0.0, -0.6]],
            [[0.0, 0.3, 0.3, -0.2], [0.1, -0.1, 0.9, 0.0]],
        ]
    )
    qvalue = torch.tensor(
        [
            [[0.01, 0.9, 0.2, 0.04], [0.03, 0.5, 0.9, 0.001]],
            [[0.9, 0.01, 0.01, 0.01], [0.2, 0.2, 0.01, 0.9]],
        ]
    )
    a95 = torch.arange(8, dtype=torch.float32).reshape(2, 4)
    return NeuronSet(identity, ["E", "A"], [3, 5], 0.1, 0.05, delta, qvalue, qvalue, a95)


def _pairs(neurons) -> list[tuple[int, int]]:
    return list(zip(neurons.layers.tolist(), neurons.indices.tolist(), strict=True))


@pytest.mark.parametrize("rule", ["fdr", "npti"])
@pytest.mark.parametrize("pole", ["high", "low"])
def test_built_in_rules_select_what_the_neuron_set_selects(rule: str, pole: str) -> None:
    neurons = _neuron_set()
    mine, theirs = neurons.select("e", pole, rule), neurons.select("E", pole, rule)
    for name in ("layers", "indices", "delta", "a95"):
        assert torch.equal(getattr(mine, name), getattr(theirs, name)), name
    expected = {"fdr": {"high": [(3, 0), (3, 3)], "low": [(5, 0), (5, 3)]}}
    expected["npti"] = {"high": [(3, 0), (3, 3), (5, 1)], "low": [(3, 2), (5, 0), (5, 3)]}
    assert _pairs(mine) == expected[rule][pole]
    assert bool((mine.delta > 0).all())  # signed toward the pole


def test_registered_rule_and_bad_rules(clean_registry) -> None:
    @register_rule("strongest", doc="the most selective neuron of each layer")
    def strongest(neurons, trait, pole):
        delta = neurons.delta[neurons.traits.index(trait.strip().upper())]
        signed = delta if pole == "high" else -delta
        return signed == signed.max(dim=1, keepdim=True).values

    neurons = _neuron_set()
    chosen = neurons.select("A", "high", "strongest")
    assert _pairs(chosen) == [(3, 1), (3, 2), (5, 2)]
    assert chosen.delta.tolist() == pytest.approx([0.3, 0.3, 0.9])
    assert chosen.a95.tolist() == [1.0, 2.0, 6.0]
    with pytest.raises(
        DataError, match="unknown neuron selection rule 'top'.*fdr, npti, npti_top, dpn, strongest"
    ):
        neurons.select("A", "high", "top")
    register_rule("floats")(lambda neurons, trait, pole: neurons.delta[0])
    with pytest.raises(DataError, match="bool mask"):
        neurons.select("A", "high", "floats")
    with pytest.raises(DataError, match="this set has E, A"):
        neurons.select("N", "high")
