"""Streaming capture: pooling maths, padding invariance, brute-force neuron counts,
the streaming a95, artifact round trips and reuse, and bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import build_tiny
from traitlens.capture import (
    Activations,
    NeuronStats,
    Prompt,
    StreamingQuantile,
    capture_activations,
    capture_job,
)
from traitlens.capture.reducers import pooling_weights
from traitlens.errors import ArtifactError, DataError
from traitlens.models import hooks_installed
from traitlens.models.generation import generate_answers
from traitlens.provenance import RunConflictError, persist

PROMPTS = [
    Prompt("How would you spend a free Saturday afternoon?", "You are calm.", "p0"),
    Prompt("Do you like parties?", "You love people and noise and music all night.", "p1"),
    Prompt("Hi?", None, "p2"),
    Prompt("What do you do when plans change at the last minute?", "You are tidy.", "p3"),
]
ANSWERS = ["I read quietly at home.", "Yes! I love parties.", "Hello.", "I adapt and go on."]


def test_pooling_weights_hand_computed() -> None:
    mask = torch.tensor([[False, True, True, True], [False, False, False, False]])
    w = pooling_weights(mask, ("mean", "last", "decay"), decay_half_life=1.0)
    assert w[0, 0].tolist() == pytest.approx([0, 1 / 3, 1 / 3, 1 / 3])
    assert w[1, 0].tolist() == [0, 0, 0, 1]
    # half-life 1 token: weights 1/4, 1/2, 1 normalised by 7/4
    assert w[2, 0].tolist() == pytest.approx([0, 1 / 7, 2 / 7, 4 / 7])
    assert w[:, 1].abs().sum() == 0  # empty span → no weight, no NaN


def test_streaming_quantile_close_to_exact() -> None:
    torch.manual_seed(0)
    data = torch.randn(5000, 8) * torch.linspace(0.5, 3, 8) + torch.linspace(-1, 1, 8)
    q = StreamingQuantile(8, bins=256)
    for chunk in data.split(700):
        q.update(chunk)
    exact = torch.quantile(data, 0.95, dim=0).double()
    width = q.edges[1] - q.edges[0]
    assert (q.quantile(0.95) - exact).abs().max() <= width * 1.5


def test_exact_quantile_equals_torch_quantile_over_the_whole_stream() -> None:
    from traitlens.capture.reducers import ExactQuantile

    torch.manual_seed(0)
    for n in (1, 2, 19, 20, 21, 1000, 1003):
        data = torch.randn(n, 6) * torch.linspace(0.5, 3, 6)
        q = ExactQuantile(6, n, 0.95)
        for chunk in data.split(37):
            q.update(chunk)
        assert q.top.shape[0] <= max(2, n - int((n - 1) * 0.95))  # never the whole stream
        exact = torch.quantile(data.double(), 0.95, dim=0)
        torch.testing.assert_close(q.quantile(), exact, atol=1e-6, rtol=1e-6)
    short = ExactQuantile(2, 10)
    short.update(torch.zeros(9, 2))
    with pytest.raises(ValueError, match="saw 9 values per neuron, expected 10"):
        short.quantile()


def test_streaming_quantile_handles_values_beyond_first_batch_range() -> None:
    q = StreamingQuantile(1, bins=64)
    q.update(torch.zeros(10, 1))  # degenerate first batch
    q.update(torch.full((1000, 1), 5.0))
    assert q.quantile(0.95).item() == pytest.approx(5.0, abs=1e-6)  # clipped to the max
    q.update(torch.full((30000, 1), -2.0))  # now most mass is at -2: range grows downward
    assert q.edges is not None and q.edges[0] < -2.0
    assert q.quantile(0.5).item() == pytest.approx(-2.0, abs=float(q.edges[1] - q.edges[0]))


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3"])
@pytest.mark.parametrize("span", ["question", "answer"])
def test_pooled_vector_identical_alone_and_in_padded_batch(family: str, span: str) -> None:
    tm = build_tiny(family)
    batch = capture_activations(
        tm, PROMPTS, answers=ANSWERS, span=span, batch_size=4, progress=False
    )
    for i, prompt in enumerate(PROMPTS):
        alone = capture_activations(tm, [prompt], answers=[ANSWERS[i]], span=span, progress=False)
        for key in batch.pooled:
            torch.testing.assert_close(
                alone.pooled[key][0], batch.pooled[key][i], rtol=1e-4, atol=1e-5
            )


def _brute_force(tm, prompts, answers, groups, span):
    """Store every span token's mlp_act (the naive way) and count directly."""
    per_group: dict[str, list[list[torch.Tensor]]] = {}
    for prompt, answer, group in zip(prompts, answers, groups, strict=True):
        fp = tm.format(prompt.system, prompt.user, answer)
        start, end = fp.span(span)
        store: list[torch.Tensor] = []
        hooks = [
            (f"mlp_act[{layer}]", lambda t, s=store, a=start, b=end: s.append(t[0, a:b].clone()))
            for layer in range(tm.n_layers)
        ]
        with torch.no_grad(), hooks_installed(tm.adapter, hooks):
            tm.model(input_ids=torch.tensor([fp.input_ids]))
        per_group.setdefault(group, []).append(store)
    result = {}
    for group, rows in per_group.items():
        layers = [torch.cat([row[layer] for row in rows]) for layer in range(tm.n_layers)]
        result[group] = (
            torch.stack([(a > 0).sum(0) for a in layers]).double(),
            layers[0].shape[0],
            torch.stack([a.sum(0) for a in layers]).double(),
            layers,
        )
    return result


@pytest.mark.parametrize("family", ["llama", "phi3", "gpt2"])
def test_neuron_counts_match_brute_force(family: str) -> None:
    tm = build_tiny(family)
    groups = ["high", "low", "high", "low"]
    act = capture_activations(
        tm, PROMPTS, answers=ANSWERS, span="answer", groups=groups, batch_size=3, progress=False
    )
    stats = act.neuron_stats
    assert stats is not None and stats.groups == ["high", "low"]
    reference = _brute_force(tm, PROMPTS, ANSWERS, groups, "answer")
    for group, (positive, n_tokens, total, _) in reference.items():
        g = stats.group_index(group)
        assert stats.tokens[g].item() == n_tokens
        assert torch.equal(stats.positive[g], positive)
        torch.testing.assert_close(stats.total[g], total, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(stats.firing_rate(group), positive / n_tokens)
    everything = [torch.cat([r[3][layer] for r in reference.values()]) for layer in range(3)]
    exact = torch.stack([torch.quantile(a.double(), 0.95, dim=0) for a in everything])
    # exact per neuron over every span token of every group (as NPTI's 95th percentile),
    # not a histogram shared by the layer
    torch.testing.assert_close(stats.a95.double(), exact, rtol=1e-4, atol=1e-5)
    assert act.config["a95"] == "exact"


def test_save_load_round_trip_and_reuse(tmp_path) -> None:
    tm = build_tiny("llama")
    out = tmp_path / "act"
    first = persist(capture_job(tm, PROMPTS, groups=["a", "b", "a", "b"], progress=False), out)
    loaded = Activations.load(out, expect=tm.identity)
    assert loaded.prompt_ids == ["p0", "p1", "p2", "p3"] and loaded.layers == [0, 1, 2]
    for key in first.pooled:
        assert torch.equal(first.pooled[key], loaded.pooled[key])
    assert loaded.neuron_stats is not None and first.neuron_stats is not None
    assert torch.equal(loaded.neuron_stats.positive, first.neuron_stats.positive)
    assert torch.equal(loaded.neuron_stats.a95, first.neuron_stats.a95)
    # same inputs → reused (the file is not rewritten); changed inputs → refused, the
    # saved capture untouched; with force → recomputed
    stamp = (out / "activations.safetensors").stat().st_mtime_ns
    persist(capture_job(tm, PROMPTS, groups=["a", "b", "a", "b"], progress=False), out)
    assert (out / "activations.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(RunConflictError, match=r"n_prompts 4 → 2.*--force"):
        persist(capture_job(tm, PROMPTS[:2], progress=False), out)
    assert (out / "activations.safetensors").stat().st_mtime_ns == stamp
    persist(capture_job(tm, PROMPTS[:2], progress=False), out, force=True)
    assert Activations.load(out).prompt_ids == ["p0", "p1"]


def test_loading_for_another_model_is_refused(tmp_path) -> None:
    persist(capture_job(build_tiny("llama"), PROMPTS[:2], progress=False), tmp_path)
    with pytest.raises(ArtifactError, match="made for model 'tiny-llama'"):
        Activations.load(tmp_path, expect=build_tiny("gpt2").identity)
    with pytest.raises(ArtifactError, match="recompute"):
        NeuronStats.load(tmp_path, expect=build_tiny("llama", seed=1).identity)


def test_corrupt_or_missing_artifacts(tmp_path) -> None:
    with pytest.raises(ArtifactError, match="not found"):
        Activations.load(tmp_path)
    (tmp_path / "activations.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        Activations.load(tmp_path)
    (tmp_path / "activations.json").write_text(json.dumps({"kind": "activations"}))
    with pytest.raises(ArtifactError, match="no valid model identity"):
        Activations.load(tmp_path)


def test_capture_subset_of_layers_and_attn_out() -> None:
    tm = build_tiny("qwen2")
    act = capture_activations(
        tm,
        PROMPTS[:2],
        layers=[0, -1],
        kinds=("resid", "attn_out"),
        neuron_stats=False,
        progress=False,
    )
    assert act.layers == [0, 2]
    assert act.get("attn_out", "last").shape == (2, 2, tm.identity.d_model)
    assert act.layer(2).shape == (2, tm.identity.d_model)
    with pytest.raises(ArtifactError, match="not captured"):
        act.layer(1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"span": "persona"}, "unknown span"),
        ({"span": "answer"}, "needs answers"),
        ({"answers": ["x"]}, "1 answers for 2 prompts"),
        ({"groups": ["a"]}, "1 group labels"),
        ({"poolings": ("median",)}, "unknown pooling"),
        ({"layers": [7]}, "out of range"),
        ({"kinds": ("mlp_act",)}, "supports kinds"),
    ],
)
def test_bad_capture_inputs(tiny_llama, kwargs, message) -> None:
    with pytest.raises((DataError, KeyError), match=message):
        capture_activations(tiny_llama, PROMPTS[:2], progress=False, **kwargs)
    with pytest.raises(DataError, match="empty prompt set"):
        capture_activations(tiny_llama, [], progress=False)


def test_generation_then_capture_on_answers_is_deterministic() -> None:
    tm = build_tiny("llama")
    greedy = generate_answers(tm, PROMPTS, max_new_tokens=5, batch_size=2, progress=False)
    assert greedy == generate_answers(tm, PROMPTS, max_new_tokens=5, batch_size=4, progress=False)
    sampled = generate_answers(
        tm, PROMPTS, max_new_tokens=5, do_sample=True, seed=3, progress=False
    )
    assert sampled == generate_answers(
        tm, PROMPTS, max_new_tokens=5, do_sample=True, seed=3, progress=False
    )
    with pytest.raises(DataError, match="max_new_tokens"):
        generate_answers(tm, PROMPTS, max_new_tokens=0)


@pytest.mark.slow
def test_embedded_model_batched_generation_matches_single(smol) -> None:
    prompts = PROMPTS[:3]
    batched = generate_answers(smol, prompts, max_new_tokens=12, batch_size=3, progress=False)
    single = [generate_answers(smol, [p], max_new_tokens=12, progress=False)[0] for p in prompts]
    assert batched == single
    act = capture_activations(
        smol, prompts, answers=batched, span="answer", groups=["a", "b", "a"], progress=False
    )
    assert act.get().shape == (3, 30, 576)
    stats = act.neuron_stats
    assert stats is not None and (stats.a95 > 0).float().mean() > 0.5


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_shared_prefix_pooling_equals_full_passes_also_under_steering(family: str) -> None:
    """``share_prefix`` (the evaluation's probe pass) gives the states of full forward
    passes — with a steering hook active too, which must edit the prefix pass alike."""
    from traitlens.capture.capture import ItemFiring, pool_formatted
    from traitlens.steer import AddDirection, TraitVector, steering

    tm = build_tiny(family)
    system = "You read one statement at a time and think about the person who wrote it."
    texts = ["I love big parties.", "I keep my desk tidy and neat.", "Storms scare me.", "Hi"]
    formatted = [tm.format(system, f"Statement: {t}", marks={"item": t}) for t in texts]
    vector = TraitVector.from_directions(
        tm.identity,
        {1: torch.randn(tm.identity.d_model, generator=torch.Generator().manual_seed(0))},
    )
    n_span = sum(b - a for a, b in (f.span("item") for f in formatted))
    for edits in ([], [AddDirection(vector, 3.0)]):
        with steering(tm, edits):
            results = []
            for share in (False, True):
                firing = ItemFiring(len(texts), tm.n_layers, tm.identity.d_mlp, "cpu", n_span)
                pooled = pool_formatted(
                    tm,
                    formatted,
                    span="item",
                    poolings=("mean", "last"),
                    batch_size=3,
                    neurons=firing,
                    share_prefix=share,
                )
                results.append((pooled, firing.result()))
        (full, full_firing), (shared, shared_firing) = results
        for key in full:
            torch.testing.assert_close(shared[key], full[key], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(shared_firing["a95"], full_firing["a95"], rtol=1e-4, atol=1e-5)
        assert torch.equal(shared_firing["rates"], full_firing["rates"])
    # the shortcut was taken: the prompts share more than the minimum prefix
    from traitlens.capture.capture import _span_free_prefix

    assert _span_free_prefix(formatted, ("item",)) >= 8


def test_resuming_answers_never_loses_the_finished_ones(tmp_path, monkeypatch) -> None:
    """A resumed generation rewrites answers.jsonl without its torn last line. A kill
    during that rewrite used to leave the file truncated (written in place); it is now
    written beside it and renamed, so the finished answers survive."""
    import json as json_module

    from traitlens.capture.pipeline import generate_run_answers, load_answers
    from traitlens.data.schema import ContrastivePrompt

    tm = build_tiny("llama")
    prompts = [
        ContrastivePrompt(
            id=f"p{i}",
            trait="E",
            pole="high",
            intensity=5,
            persona_id="x",
            question_id=f"q{i}",
            system="You are lively.",
            user=f"Question {i}?",
        )
        for i in range(4)
    ]
    import importlib

    pipeline = importlib.import_module("traitlens.capture.pipeline")

    real_generate = pipeline.generate_answers
    calls: list[int] = []

    def killed_after_one_chunk(*args: object, **kwargs: object) -> list[str]:
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt("killed during generation")
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(pipeline, "generate_answers", killed_after_one_chunk)
    with pytest.raises(KeyboardInterrupt):
        generate_run_answers(tm, prompts, tmp_path, max_new_tokens=3, chunk_size=2, progress=False)
    monkeypatch.undo()
    path = tmp_path / "answers.jsonl"
    with path.open("a") as handle:
        handle.write('{"id": "p2", "answ')  # the torn line a kill leaves
    before = load_answers(path)
    assert set(before) == {"p0", "p1"}

    real_write_text = Path.write_text

    def killed_mid_write(self: Path, data: str, *args: object, **kwargs: object) -> int:
        real_write_text(self, data[: len(data) // 3], *args, **kwargs)
        raise KeyboardInterrupt("killed while rewriting")

    monkeypatch.setattr(Path, "write_text", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        generate_run_answers(tm, prompts, tmp_path, max_new_tokens=3, progress=False)
    monkeypatch.undo()
    assert load_answers(path) == before  # the finished answers are all still there
    lines = [json_module.loads(line) for line in path.read_text().splitlines()[:2]]
    assert [line["id"] for line in lines] == ["p0", "p1"]


def test_firing_counts_are_exact_for_a_bfloat16_model() -> None:
    """Counts and shares are accumulated in float32 whatever the model's dtype: a
    bfloat16 product rounded 601 firing tokens to 600 (8 bits of mantissa), which a GPU
    (bfloat16 by default) would have fed into every neuron statistic."""
    from traitlens.capture.capture import GroupFiring, ItemFiring

    tokens = 601
    span = torch.ones(1, tokens, dtype=torch.bool)
    acts = torch.ones(1, tokens, 4, dtype=torch.bfloat16)
    acts[0, :7] = -1.0  # 594 tokens fire
    groups = GroupFiring(["E|high"], 1, 4, "cpu")
    groups.begin(torch.tensor([0]), span)
    groups(acts, column=0)
    assert groups.result()["positive"][0, 0].tolist() == [594.0] * 4
    assert groups.result()["total"][0, 0].tolist() == [587.0] * 4
    items = ItemFiring(1, 1, 4, "cpu")
    items.begin(torch.tensor([0]), span)
    items(acts, column=0)
    assert items.rates[0, 0].float().tolist() == pytest.approx([594 / 601] * 4, abs=5e-4)
