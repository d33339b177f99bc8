"""Steering: trait vectors, interventions, hook hygiene, GGUF export, the CLI pieces.

Invariants over golden strings: strength 0 changes nothing, v − v gives the
baseline, only the target layer changes (by exactly the added vector), batched
equals unbatched, NPTI matches its formula, round trips are exact, a planted
direction is recovered. Hook tests run on a tiny model of every family.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import pytest
import torch
from torch import nn

from conftest import build_tiny
from traitlens.artifact_io import ModelIdentity
from traitlens.capture.artifacts import Activations
from traitlens.errors import ArtifactError, DataError, HookPointError, InterventionError
from traitlens.models.batching import left_pad
from traitlens.models.hooks import hooks_installed
from traitlens.neurons.selected import SelectedNeurons
from traitlens.steer import (
    Ablate,
    AblateDirection,
    AddDirection,
    Clamp,
    NeuronEdit,
    TraitVector,
    VectorSet,
    band_layers,
    export_gguf,
    generate_steered,
    import_gguf,
    middle_layers,
    npti_edit,
    npti_factor,
    parse_layers,
    projection_spread,
    run_neuron_edit,
    steering,
    trait_vector,
)

# ---------------------------------------------------------------------------- helpers


def _no_hooks_left(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def _vector(tm, seed: int = 0, layers=None, scale: float = 1.0) -> TraitVector:
    generator = torch.Generator().manual_seed(seed)
    layers = range(tm.n_layers) if layers is None else layers
    return TraitVector.from_directions(
        tm.identity,
        {layer: scale * torch.randn(tm.identity.d_model, generator=generator) for layer in layers},
        trait="E",
        method="mean_diff",
    )


def _ids(tm, text: str = "How would you spend a free Saturday afternoon?") -> torch.Tensor:
    return torch.tensor([tm.format("You are a calm person.", text).input_ids])


def _logits(tm, ids: torch.Tensor, **kwargs) -> torch.Tensor:
    with torch.inference_mode():
        return tm.model(input_ids=ids, **kwargs).logits.clone()


def _record(tm, kind: str, ids: torch.Tensor) -> dict[int, torch.Tensor]:
    """Hook-point values of every layer; installed after (inside) any steering context,
    so they see the steered values."""
    seen: dict[int, torch.Tensor] = {}

    def keep(layer: int):
        def hook(t: torch.Tensor) -> None:
            seen[layer] = t.detach().clone()

        return hook

    hooks = [(f"{kind}[{layer}]", keep(layer)) for layer in range(tm.n_layers)]
    with torch.inference_mode(), hooks_installed(tm.adapter, hooks):
        tm.model(input_ids=ids)
    return seen


def _neurons(layers, indices, delta, a95) -> SelectedNeurons:
    return SelectedNeurons(
        torch.tensor(layers, dtype=torch.long),
        torch.tensor(indices, dtype=torch.long),
        torch.tensor(delta, dtype=torch.float32),
        torch.tensor(a95, dtype=torch.float32),
    )


# ----------------------------------------------------------------------- hook hygiene


def test_hooks_removed_after_exception_in_body(tiny_any) -> None:
    tm = tiny_any
    edit = NeuronEdit(_neurons([0, 2], [1, 3], [0.3, 0.4], [1.0, 2.0]))
    with pytest.raises(RuntimeError, match="boom"):
        with steering(tm, [AddDirection(_vector(tm), 2.0), edit]):
            assert not _no_hooks_left(tm.model)
            tm.model(input_ids=_ids(tm))
            raise RuntimeError("boom")
    assert _no_hooks_left(tm.model)


def test_hooks_removed_when_registration_fails_part_way(tiny_any, monkeypatch) -> None:
    tm = tiny_any
    last_block = tm.adapter.module("resid[2]")

    def refuse(*args, **kwargs):
        raise RuntimeError("registration failed")

    monkeypatch.setattr(last_block, "register_forward_hook", refuse)
    with pytest.raises(RuntimeError, match="registration failed"):
        with steering(tm, [AddDirection(_vector(tm), 1.0)]):
            pytest.fail("the body must not run")
    monkeypatch.undo()
    assert _no_hooks_left(tm.model)


def test_bad_layer_among_good_ones_leaves_no_hook(tiny_any) -> None:
    tm = tiny_any
    good = AddDirection(_vector(tm), 1.0)
    bad_neurons = NeuronEdit(_neurons([0, 7], [1, 2], [0.3, 0.3], [1.0, 1.0]))
    with pytest.raises(HookPointError, match="3 layers"):
        with steering(tm, [good, bad_neurons]):
            pytest.fail("the body must not run")
    assert _no_hooks_left(tm.model)


# ------------------------------------------------------------------------- invariants


def test_strength_zero_reproduces_unsteered_logits_exactly(tiny_any) -> None:
    tm = tiny_any
    ids = _ids(tm)
    base = _logits(tm, ids)
    with steering(tm, AddDirection(_vector(tm), 0.0)):
        steered = _logits(tm, ids)
    assert torch.equal(base, steered)


def test_only_target_layer_changes_by_exactly_the_added_vector(tiny_any) -> None:
    tm = tiny_any
    ids = _ids(tm)
    vector = _vector(tm)
    plain = _record(tm, "resid", ids)
    with steering(tm, AddDirection(vector, 2.5, layers=(1,))):
        steered = _record(tm, "resid", ids)
    assert torch.equal(plain[0], steered[0])
    added = 2.5 * vector.step(1)
    torch.testing.assert_close(steered[1] - plain[1], added.expand_as(plain[1]), atol=1e-5, rtol=0)
    assert not torch.allclose(plain[2], steered[2])


def test_composing_two_adds_equals_one_with_the_summed_vector(tiny_any) -> None:
    tm = tiny_any
    ids = _ids(tm)
    a, b = _vector(tm, 1), _vector(tm, 2)
    with steering(tm, [AddDirection(a, 1.5, layers=(1,)), AddDirection(b, -0.5, layers=(1,))]):
        composed = _logits(tm, ids)
    with steering(tm, AddDirection(a * 1.5 - b * 0.5, 1.0, layers=(1,))):
        summed = _logits(tm, ids)
    torch.testing.assert_close(composed, summed, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(composed, _logits(tm, ids))


def test_batched_equals_unbatched_under_steering(tiny_any) -> None:
    tm = tiny_any
    texts = ["Hi?", "How would you spend a free Saturday afternoon with people?"]
    sequences = [tm.format("You are calm.", t).input_ids for t in texts]
    interventions = [
        AddDirection(_vector(tm), 3.0, layers=(0, 2)),
        NeuronEdit(_neurons([1], [4], [0.4], [1.5]), _neurons([1], [5], [0.3], [1.0])),
    ]
    with steering(tm, interventions):
        ids, attn, pos = left_pad(sequences, tm.tokenizer.pad_token_id)
        batched = _logits(tm, ids, attention_mask=attn, position_ids=pos)[:, -1]
        alone = [_logits(tm, torch.tensor([s]))[0, -1] for s in sequences]
    for row, single in enumerate(alone):
        torch.testing.assert_close(batched[row], single, atol=1e-4, rtol=1e-4)


def test_steered_generation_is_batch_invariant_and_removes_hooks() -> None:
    tm = build_tiny("llama")
    prompts = ["Hi?", "How would you spend a free Saturday afternoon?", "Parties?"]
    vector = _vector(tm, scale=0.5)
    kwargs = {"max_new_tokens": 6, "progress": False}
    one = generate_steered(tm, prompts, AddDirection(vector, 2.0), batch_size=1, **kwargs)
    many = generate_steered(tm, prompts, AddDirection(vector, 2.0), batch_size=3, **kwargs)
    assert one == many
    assert _no_hooks_left(tm.model)


def test_neuron_edit_matches_the_npti_formula(tiny_any) -> None:
    tm = tiny_any
    ids = _ids(tm)
    target = _neurons([1, 1, 1], [0, 3, 7], [0.05, 0.2, 0.6], [0.5, 1.0, 2.0])
    opposite = _neurons([1, 1], [2, 9], [0.3, 0.25], [1.0, 1.0])
    plain = _record(tm, "mlp_act", ids)
    with steering(tm, NeuronEdit(target, opposite, gamma=1.7)):
        steered = _record(tm, "mlp_act", ids)
    expected = plain[1].clone()
    for index, delta, a95 in zip([0, 3, 7], [0.05, 0.2, 0.6], [0.5, 1.0, 2.0], strict=True):
        gate = 1.0 / (1.0 + math.exp(-10.0 * (abs(delta) - 0.15)))
        expected[..., index] += 1.7 * a95 * gate
    for index in (2, 9):
        expected[..., index] = expected[..., index].clamp(max=0.0)
    torch.testing.assert_close(steered[1], expected, atol=1e-6, rtol=1e-6)
    assert torch.equal(plain[0], steered[0])
    assert npti_factor(torch.tensor([0.15])).item() == pytest.approx(0.5)


def test_npti_edit_boosts_the_pole_and_silences_the_other() -> None:
    sets = {
        "high": _neurons([0], [1], [0.4], [1.0]),
        "low": _neurons([1], [2], [0.3], [1.0]),
    }

    class FakeNeuronSet:
        def select(self, trait: str, pole: str) -> SelectedNeurons:
            assert trait == "E"
            return sets[pole]

    edit = npti_edit(FakeNeuronSet(), "E", "low", gamma=2.0)
    assert edit.target is sets["low"] and edit.opposite is sets["high"] and edit.gamma == 2.0
    with pytest.raises(InterventionError, match="'high' or 'low'"):
        npti_edit(FakeNeuronSet(), "E", "neutral")


def test_ablate_and_clamp_set_exactly_the_chosen_neurons(tiny_any) -> None:
    tm = tiny_any
    ids = _ids(tm)
    d_mlp = tm.identity.d_mlp
    means = torch.arange(tm.n_layers * d_mlp, dtype=torch.float32).reshape(tm.n_layers, d_mlp)
    plain = _record(tm, "mlp_act", ids)
    chosen = _neurons([0, 2], [5, 6], [0.0, 0.0], [0.0, 0.0])
    for intervention, values in [
        (Ablate(chosen), [0.0, 0.0]),
        (Ablate(chosen, mode="mean", means=means), [means[0, 5].item(), means[2, 6].item()]),
        (Clamp(chosen, torch.tensor([3.0, -2.0])), [3.0, -2.0]),
    ]:
        with steering(tm, intervention):
            steered = _record(tm, "mlp_act", ids)
        assert torch.all(steered[0][..., 5] == values[0])
        others = [i for i in range(d_mlp) if i != 5]
        assert torch.equal(steered[0][..., others], plain[0][..., others])
        assert torch.allclose(steered[2][..., 6], torch.tensor(values[1]))


def test_ablate_direction_removes_the_component() -> None:
    tm = build_tiny("qwen2")
    ids = _ids(tm)
    vector = _vector(tm)
    with steering(tm, AblateDirection(vector, layers=(1,))):
        steered = _record(tm, "resid", ids)
    projection = steered[1] @ vector.direction(1)
    assert projection.abs().max() < 1e-4


def test_positions_generated_leaves_prompt_logits_unchanged(tiny_any) -> None:
    tm = tiny_any
    ids = _ids(tm)
    vector = _vector(tm)
    with torch.inference_mode():
        base = tm.model(input_ids=ids, use_cache=True)
        # transformers >= 5.2x calls the KV cache `cache`, earlier `past_key_values`
        key = "cache" if "cache" in base else "past_key_values"
        next_token = base.logits[:, -1:].argmax(-1)
        plain_step = tm.model(input_ids=next_token, use_cache=True, **{key: base[key]}).logits
        with steering(tm, AddDirection(vector, 4.0, positions="generated")):
            prompt_pass = tm.model(input_ids=ids, use_cache=True)
            step = tm.model(input_ids=next_token, use_cache=True, **{key: prompt_pass[key]})
        with steering(tm, AddDirection(vector, 4.0, positions="prompt")):
            prompt_steered = tm.model(input_ids=ids).logits
    assert torch.equal(prompt_pass.logits, base.logits)
    assert not torch.allclose(step.logits, plain_step)
    assert not torch.allclose(prompt_steered, base.logits)


# ---------------------------------------------------------------------------- refusals


def test_vector_for_another_model_is_refused(tiny_llama, tmp_path) -> None:
    other = build_tiny("llama", seed=1)
    foreign = _vector(other)
    with pytest.raises(ArtifactError, match="made for model"):
        with steering(tiny_llama, AddDirection(foreign, 1.0)):
            pass
    foreign.save(tmp_path / "foreign")
    with pytest.raises(ArtifactError, match="recompute"):
        TraitVector.load(tmp_path / "foreign", expect=tiny_llama.identity)
    assert _no_hooks_left(tiny_llama.model)


def test_wrong_layer_and_width_give_clear_errors(tiny_llama) -> None:
    tm = tiny_llama
    deep = _vector(tm, layers=[1, 5])
    with pytest.raises(HookPointError, match="valid: 0..2"):
        with steering(tm, AddDirection(deep, 1.0)):
            pass
    narrow = TraitVector.from_directions(tm.identity, {1: torch.ones(16)})
    with pytest.raises(InterventionError, match="d_model=32"):
        with steering(tm, AddDirection(narrow, 1.0)):
            pass
    with pytest.raises(InterventionError, match="covers layers 0-2"):
        AddDirection(_vector(tm), 1.0, layers=(4,))
    with pytest.raises(InterventionError, match="d_mlp=64"):
        with steering(tm, NeuronEdit(_neurons([1], [64], [0.3], [1.0]))):
            pass
    assert _no_hooks_left(tm.model)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_vectors_are_refused(tiny_llama, bad: float) -> None:
    direction = torch.ones(tiny_llama.identity.d_model)
    direction[3] = bad
    with pytest.raises(InterventionError, match="NaN or inf .* layer\\(s\\) \\[1\\]"):
        TraitVector.from_directions(tiny_llama.identity, {0: torch.ones(32), 1: direction})
    with pytest.raises(InterventionError, match="not finite"):
        AddDirection(_vector(tiny_llama), bad)
    with pytest.raises(InterventionError, match="a95 contains NaN"):
        NeuronEdit(_neurons([0], [1], [0.3], [bad]))


def test_absurd_strengths_are_refused_with_the_allowed_range(tiny_llama) -> None:
    vector = _vector(tiny_llama)
    with pytest.raises(InterventionError, match=r"\[-50, 50\].*strength=4"):
        AddDirection(vector, 51.0)
    with pytest.raises(InterventionError, match=r"\[-50, 50\]"):
        AddDirection(vector, -500.0)
    with pytest.raises(InterventionError, match=r"\[-10, 10\].*gamma=1.0"):
        NeuronEdit(_neurons([0], [1], [0.3], [1.0]), gamma=25.0)
    with pytest.raises(InterventionError, match="positions"):
        AddDirection(vector, 1.0, positions="answer")  # type: ignore[arg-type]
    assert AddDirection(vector, -50.0).strength == -50.0


# ---------------------------------------------------------------------------- algebra


def test_vector_algebra(tiny_llama) -> None:
    tm = tiny_llama
    ids = _ids(tm)
    v, w = _vector(tm, 1), _vector(tm, 2, layers=[1])
    base = _logits(tm, ids)
    zero = v - v
    assert torch.count_nonzero(zero.vectors) == 0
    with steering(tm, AddDirection(zero, 7.0)):
        assert torch.equal(_logits(tm, ids), base)
    total = v + w
    assert total.layers == (0, 1, 2)
    assert torch.equal(total.step(1), v.step(1) + w.step(1))
    assert torch.equal(total.step(0), v.step(0))
    assert torch.equal((-v).vectors, -v.vectors) and (-v).pole == "low"
    assert torch.equal((2 * v).vectors, (v * 2.0).vectors)
    assert torch.allclose((v / 2).spread, v.spread / 2)
    with steering(tm, AddDirection(2 * v, 1.0)):
        doubled = _logits(tm, ids)
    with steering(tm, AddDirection(v, 2.0)):
        twice = _logits(tm, ids)
    torch.testing.assert_close(doubled, twice)
    with pytest.raises(ArtifactError, match="different models"):
        v + _vector(build_tiny("llama", seed=3))
    with pytest.raises(ArtifactError, match="hook points"):
        v - replace(w, hook="attn_out")


# ------------------------------------------------------------------ direction methods


@dataclass(frozen=True)
class _Prompt:
    id: str
    trait: str
    pole: str
    intensity: int
    question_id: str
    system: str | None = None
    user: str = ""


def _synthetic(d: int = 24, n_questions: int = 30, seed: int = 0, signal: float = 1.0):
    """Activations where intensity moves rows along a planted direction, plus a large
    per-question offset shared by paired prompts, and isotropic noise."""
    generator = torch.Generator().manual_seed(seed)
    planted = torch.randn(d, generator=generator)
    planted /= planted.norm()
    identity = ModelIdentity("synthetic", "SynthForCausalLM", 2, d, 4 * d, "synthetic0")
    prompts, rows = [], []
    offsets = 3.0 * torch.randn(n_questions, d, generator=generator)
    # question topics vary orthogonally to the trait axis, so the planted direction is
    # also the discriminative one (else a probe's Σ⁻¹Δμ differs from Δμ by design)
    offsets -= (offsets @ planted)[:, None] * planted
    for q in range(n_questions):
        for pole, intensities in (("high", (5, 4, 4)), ("low", (1, 2, 2)), ("neutral", (3,))):
            for k, intensity in enumerate(intensities):
                prompts.append(_Prompt(f"E|{pole}|p{k}|q{q}", "E", pole, intensity, f"q{q}"))
                noise = 0.5 * torch.randn(d, generator=generator)
                rows.append(offsets[q] + signal * (intensity - 3) * planted + noise)
    x = torch.stack(rows)
    pooled = {"resid.mean": torch.stack([x, 0.5 * x], dim=1)}
    activations = Activations(identity, [p.id for p in prompts], [0, 1], pooled)
    return activations, prompts, planted


@pytest.mark.parametrize("method", ["mean_diff", "pca", "regression", "probe"])
def test_direction_methods_recover_a_planted_direction(method: str) -> None:
    activations, prompts, planted = _synthetic()
    vector = trait_vector(activations, prompts, "E", method)
    for layer in (0, 1):
        cosine = float(vector.direction(layer).double() @ planted.double())
        assert cosine > 0.9, (method, layer, cosine)
        x = activations.layer(layer)
        assert vector.spread[layer].item() == pytest.approx(
            projection_spread(x, vector.direction(layer)), rel=1e-5
        )
    assert vector.pole == "high" and vector.source["n_high"] == 90


def test_probe_weights_from_the_probe_stage_are_used_and_oriented() -> None:
    activations, prompts, planted = _synthetic()

    @dataclass
    class FakeProbeSet:
        identity: ModelIdentity
        traits: list[str]
        layers: list[int]
        binary_weight: torch.Tensor

    weights = torch.stack([planted, planted]).unsqueeze(0)
    probes = FakeProbeSet(activations.identity, ["E"], [0, 1], weights)
    vector = trait_vector(activations, prompts, "E", "probe", probes=probes)
    assert torch.allclose(vector.direction(0), planted, atol=1e-6)
    flipped = trait_vector(activations, prompts, "E", "probe", probes=-weights[0])
    assert torch.allclose(flipped.direction(1), planted, atol=1e-6)


def test_no_planted_signal_gives_no_consistent_direction() -> None:
    activations, prompts, _ = _synthetic(signal=0.0, seed=1)
    vector = trait_vector(activations, prompts, "E", "mean_diff")
    other, _, _ = _synthetic(signal=0.0, seed=2)
    again = trait_vector(other, prompts, "E", "mean_diff")
    assert abs(float(vector.direction(0) @ again.direction(0))) < 0.6


def test_direction_needs_both_poles() -> None:
    activations, prompts, _ = _synthetic()
    only_high = [p for p in prompts if p.pole != "low"]
    with pytest.raises(DataError, match="both poles"):
        trait_vector(activations, only_high, "E")


# ------------------------------------------------------------------ artifacts and GGUF


def test_vector_and_vector_set_round_trip_exactly(tiny_llama, tmp_path) -> None:
    activations, prompts, _ = _synthetic()
    vector = trait_vector(activations, prompts, "E", "pca")
    loaded = TraitVector.load(vector.save(tmp_path / "e_pca"))
    assert torch.equal(loaded.vectors, vector.vectors)
    assert torch.equal(loaded.spread, vector.spread) and loaded.source == vector.source
    vectors = VectorSet(activations.identity)
    vectors.add(vector)
    vectors.add(trait_vector(activations, prompts, "E", "mean_diff"))
    vectors.save(tmp_path)
    again = VectorSet.load(tmp_path, expect=activations.identity)
    assert len(again) == 2
    assert torch.equal(again.get("E", "pca").vectors, vector.vectors)
    with pytest.raises(ArtifactError, match="have: E/mean_diff, E/pca"):
        again.get("A", "pca")
    with pytest.raises(ArtifactError):
        VectorSet.load(tmp_path, expect=tiny_llama.identity)


def test_gguf_export_round_trip_is_exact(tiny_llama, tmp_path) -> None:
    import gguf

    tm = tiny_llama
    vector = _vector(tm)
    path = export_gguf(vector, tmp_path / "e.gguf")
    reader = gguf.GGUFReader(str(path))
    assert reader.get_field("general.architecture").contents() == "controlvector"
    assert reader.get_field("controlvector.model_hint").contents() == "llama"
    assert reader.get_field("controlvector.layer_count").contents() == 2
    tensors = {t.name: t for t in reader.tensors}
    assert sorted(tensors) == ["direction.1", "direction.2"]  # llama.cpp refuses direction.0
    for layer in (1, 2):
        data = torch.from_numpy(tensors[f"direction.{layer}"].data.copy())
        assert data.dtype == torch.float32 and torch.equal(data, vector.step(layer))
    back = import_gguf(path, tm)
    assert back.layers == (1, 2) and (back.trait, back.method) == ("E", "mean_diff")
    assert torch.equal(back.vectors, vector.select([1, 2]).vectors)
    assert torch.equal(back.spread, vector.select([1, 2]).spread)

    scaled = import_gguf(export_gguf(vector, tmp_path / "s.gguf", strength=-2.5), tm)
    assert torch.equal(scaled.vectors, vector.select([1, 2]).vectors * -2.5)
    assert scaled.pole == "low"
    ids = _ids(tm)
    with steering(tm, AddDirection(scaled, 1.0)):
        from_file = _logits(tm, ids)
    with steering(tm, AddDirection(vector, -2.5, layers=(1, 2))):
        direct = _logits(tm, ids)
    torch.testing.assert_close(from_file, direct)

    with pytest.raises(InterventionError, match="layer 0"):
        export_gguf(vector, tmp_path / "bad.gguf", layers=[0, 1])
    with pytest.raises(ArtifactError, match="made for model"):
        import_gguf(path, build_tiny("llama", seed=1))
    with pytest.raises(ArtifactError, match="d_model=32"):
        _foreign_width(tmp_path, tm)


def _foreign_width(tmp_path, tm) -> None:
    """A repeng-style file without traitlens metadata, for a wider model."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(tmp_path / "foreign.gguf"), "controlvector")
    writer.add_string("controlvector.model_hint", "llama")
    writer.add_uint32("controlvector.layer_count", 1)
    writer.add_tensor("direction.1", np.ones(48, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    import_gguf(tmp_path / "foreign.gguf", tm)


def test_foreign_gguf_imports_as_is(tiny_llama, tmp_path) -> None:
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(tmp_path / "repeng.gguf"), "controlvector")
    writer.add_string("controlvector.model_hint", "llama")
    writer.add_uint32("controlvector.layer_count", 1)
    writer.add_tensor("direction.2", np.full(32, 0.5, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    vector = import_gguf(tmp_path / "repeng.gguf", tiny_llama)
    assert vector.layers == (2,) and torch.equal(vector.step(2), torch.full((32,), 0.5))
    assert vector.spread.item() == pytest.approx(math.sqrt(32 * 0.25))


def test_layer_helpers() -> None:
    assert parse_layers("10-12,20", 30) == [10, 11, 12, 20]
    assert parse_layers("-1", 30) == [29]
    with pytest.raises(DataError, match="0..29"):
        parse_layers("28-31", 30)
    with pytest.raises(DataError, match="inclusive"):
        parse_layers("ten", 30)
    assert middle_layers(30) == [10, 11, 12, 13, 14]
    assert middle_layers(3) == [1]


@pytest.mark.parametrize(
    ("n_layers", "band", "expected"),
    [
        (30, (1 / 3, 1 / 2), [10, 11, 12, 13, 14]),  # the embedded model
        (24, (1 / 3, 1 / 2), [8, 9, 10, 11]),
        (30, (0.5, 1.0), list(range(15, 28))),  # stops before n_layers - 2: a readout is left
        (30, (0.0, 0.1), [1, 2]),  # never layer 0
        (6, (1 / 3, 1 / 2), [2]),  # at least one layer
        (4, (1 / 3, 1 / 2), [1]),
        (3, (1 / 3, 1 / 2), [1]),  # too shallow for a readout after the band: still one layer
        (1, (1 / 3, 1 / 2), [0]),
    ],
)
def test_band_layers(n_layers: int, band: tuple[float, float], expected: list[int]) -> None:
    assert band_layers(n_layers, band) == expected


def test_band_layers_refuses_a_bad_band() -> None:
    with pytest.raises(DataError, match="0 <= start < stop <= 1"):
        band_layers(30, (0.5, 0.4))
    with pytest.raises(DataError, match="at least one layer"):
        band_layers(0)


def test_in_layers_keeps_only_those_layers_in_order() -> None:
    neurons = _neurons([1, 3, 3, 7, 1], [4, 5, 6, 7, 8], [0.1, 0.2, 0.3, 0.4, 0.5], [1, 2, 3, 4, 5])
    kept = neurons.in_layers([3, 1])
    assert kept.layers.tolist() == [1, 3, 3, 1] and kept.indices.tolist() == [4, 5, 6, 8]
    assert kept.delta.tolist() == pytest.approx([0.1, 0.2, 0.3, 0.5])
    assert kept.a95.tolist() == [1, 2, 3, 5]
    assert len(neurons.in_layers([2])) == 0 and len(neurons.in_layers(range(8))) == 5


def test_run_neuron_edit_selects_restricts_and_falls_back(tiny_llama, tmp_path) -> None:
    from traitlens.capture.pipeline import capture_run
    from traitlens.neurons import NeuronSet

    run = tmp_path / "run"
    capture_run(
        tiny_llama,
        run,
        ["E"],
        n_questions=2,
        n_personas_per_pole=2,
        max_new_tokens=4,
        progress=False,
    )
    # 4 answers per pole: no neuron survives FDR, so NPTI's δ rule alone is used
    with pytest.warns(UserWarning, match="δ rule alone") as caught:
        edit = run_neuron_edit(tiny_llama, run, "E", "high", progress=False)
    assert caught[0].filename == __file__  # the warning points at the caller
    saved = NeuronSet.load(run)  # the FDR-controlled selection was saved into the run
    assert saved.fdr == 0.05 and len(saved.select("E", "high")) == 0
    high, low = saved.select("E", "high", "npti"), saved.select("E", "low", "npti")
    assert len(high) > len(high.in_layers([1])) > 0
    assert torch.equal(edit.target.indices, high.indices)
    assert torch.equal(edit.opposite.layers, low.layers)
    restricted = run_neuron_edit(tiny_llama, run, "E", "low", layers=[1], rule="npti")
    assert torch.equal(restricted.target.indices, low.in_layers([1]).indices)
    assert restricted.opposite.layers.unique().tolist() == [1]
    assert torch.equal(restricted.opposite.indices, high.in_layers([1]).indices)
    with pytest.raises(DataError, match="unknown neuron selection rule 'top'.*fdr, npti"):
        run_neuron_edit(tiny_llama, tmp_path / "untouched", "E", rule="top")
    assert not (tmp_path / "untouched").exists()  # refused before any capture


# ------------------------------------------------------------------- the real model

_PERSONAS = {
    "high": [
        "You are an outgoing, talkative person who loves parties and meeting new people.",
        "You are energetic and sociable; being around lots of people recharges you.",
    ],
    "low": [
        "You are a quiet, reserved person who prefers solitude and small, calm evenings alone.",
        "You are introverted; crowds drain you and you recharge by spending time by yourself.",
    ],
}
_QUESTIONS = [
    "How do you like to spend your weekends?",
    "What would you do at a party where you know nobody?",
    "How do you feel about team projects?",
    "Describe your ideal evening.",
]


@pytest.mark.slow
def test_mean_diff_vector_changes_smol_greedy_answer(smol) -> None:
    from traitlens.capture import Prompt, capture_activations
    from traitlens.models.generation import generate_answers

    prompts = [
        _Prompt(
            f"E|{pole}|{i}|{j}", "E", pole, 5 if pole == "high" else 1, str(j), persona, question
        )
        for pole, personas in _PERSONAS.items()
        for i, persona in enumerate(personas)
        for j, question in enumerate(_QUESTIONS)
    ]
    layers = [9, 10, 11, 12]
    activations = capture_activations(
        smol, prompts, layers=layers, neuron_stats=False, poolings=("mean",), progress=False
    )
    vector = trait_vector(activations, prompts, "E", "mean_diff")
    question = ["What are your plans for Friday night?"]
    kwargs = {"max_new_tokens": 16, "progress": False}
    plain = generate_steered(smol, question, AddDirection(vector, 0.0), **kwargs)
    baseline = generate_answers(smol, [Prompt(user=question[0])], **kwargs)
    steered = generate_steered(smol, question, AddDirection(vector, 6.0), **kwargs)
    assert plain == baseline
    assert steered != baseline
    assert _no_hooks_left(smol.model)


def test_cli_vectors_show_and_export(tmp_path) -> None:
    import gguf
    from typer.testing import CliRunner

    from traitlens.cli.main import app

    activations, prompts, _ = _synthetic()
    vectors = VectorSet(activations.identity)
    vectors.add(trait_vector(activations, prompts, "E", "mean_diff"))
    vectors.save(tmp_path)
    runner = CliRunner()
    shown = runner.invoke(app, ["vectors", "show", "--run", str(tmp_path)])
    assert shown.exit_code == 0, shown.output
    assert "mean_diff" in shown.output
    out = tmp_path / "e.gguf"
    args = ["vectors", "export", "--run", str(tmp_path), "--trait", "extraversion"]
    exported = runner.invoke(app, [*args, "--out", str(out), "--strength", "3"])
    assert exported.exit_code == 0, exported.output
    reader = gguf.GGUFReader(str(out))
    assert [t.name for t in reader.tensors] == ["direction.1"]
    data = torch.from_numpy(reader.tensors[0].data.copy())
    assert torch.equal(data, vectors.get("E", "mean_diff").vectors[1] * 3.0)
    missing = runner.invoke(app, [*args[:-1], "A", "--out", str(out)])
    assert missing.exit_code != 0 and "no A/mean_diff vector" in str(missing.exception)


def test_the_default_steering_folder_is_per_precision(tiny_llama) -> None:
    """Steering's default run folder is keyed like its artifacts: a bfloat16 model gets its
    own, so its capture neither lands in nor is refused by the float32 one's."""
    from dataclasses import replace as with_fields

    from traitlens.steer.workflow import default_run_dir

    f32 = default_run_dir(tiny_llama)
    bf16 = default_run_dir(
        with_fields(tiny_llama, identity=with_fields(tiny_llama.identity, dtype="bfloat16"))
    )
    assert f32.name.endswith(tiny_llama.identity.digest)
    assert bf16 != f32 and bf16.name.endswith("-bfloat16")


def test_direction_rows_are_what_the_hooks_add(tiny_llama) -> None:
    """The per-row compilation serve uses equals the sum steering() adds, and refuses
    what a per-row table cannot carry."""
    from traitlens.steer.apply import direction_rows

    tm = tiny_llama
    e, n = _vector(tm, 0), replace(_vector(tm, 1), trait="N")
    mix = [AddDirection(e, 1.5, layers=[1]), AddDirection(n, -0.5, layers=[1, 2])]
    rows = direction_rows(tm, mix)
    assert sorted(rows) == ["resid[1]", "resid[2]"]
    expected = 1.5 * e.step(1).double() - 0.5 * n.step(1).double()
    assert torch.allclose(rows["resid[1]"], expected.float())
    ids = _ids(tm)
    with steering(tm, mix):
        steered = _logits(tm, ids)
    hooks = [(p, lambda h, r=r: h + r.to(h.dtype)) for p, r in rows.items()]
    with hooks_installed(tm.adapter, hooks):
        by_rows = _logits(tm, ids)
    assert torch.allclose(steered, by_rows, atol=1e-5)
    with pytest.raises(InterventionError, match="direction additions on all positions"):
        direction_rows(tm, [AddDirection(e, 1.0, layers=[1], positions="prompt")])
    with pytest.raises(InterventionError, match="AblateDirection"):
        direction_rows(tm, [AblateDirection(e, layers=[1])])  # type: ignore[list-item]
    assert tm.placement(1) == (tm.device, tm.dtype)


@dataclass(frozen=True)
class _Scale:
    """A kind of edit traitlens does not ship: scale the residual stream at some layers."""

    factor: float
    layers: tuple[int, ...]


def test_a_new_intervention_kind_plugs_in_through_the_registry(tiny_llama) -> None:
    from traitlens.steer import SteeringPlan, register_intervention
    from traitlens.steer.apply import COMPILERS

    @register_intervention(_Scale)
    def _scale(plan: SteeringPlan, item: _Scale) -> None:
        for layer in item.layers:
            plan.push(plan.resolve("resid", layer), "all", "fn", lambda h: h * item.factor)

    try:
        tm = tiny_llama
        ids = _ids(tm)
        plain = _logits(tm, ids)
        with steering(tm, _Scale(1.0, (1,))):
            same = _logits(tm, ids)
        with steering(tm, [_Scale(3.0, (1,)), AddDirection(_vector(tm), 1.0, layers=[2])]):
            moved = _logits(tm, ids)
        assert torch.allclose(plain, same, atol=1e-6) and not torch.allclose(plain, moved)
        assert _no_hooks_left(tm.model)
        with pytest.raises(ValueError, match="registered twice"):
            register_intervention(_Scale)(_scale)
    finally:
        COMPILERS.pop(_Scale, None)
    with pytest.raises(InterventionError, match="not an intervention: _Scale.*register"):
        with steering(tiny_llama, [_Scale(2.0, (1,))]):
            pass


def test_a_spec_resolves_full_trait_names_once(tiny_llama) -> None:
    from traitlens.steer import SteeringSpec

    vectors = VectorSet(tiny_llama.identity)
    vectors.add(_vector(tiny_llama))
    (edit,) = SteeringSpec(traits={"extraversion": 2.0}, layers=[1, 2]).directions(vectors)
    assert edit.vector.trait == "E" and edit.strength == 2.0 and tuple(edit.layers) == (1, 2)
    with pytest.raises(DataError, match="names trait E twice"):
        SteeringSpec(traits={"E": 1.0, "extraversion": 1.0}).directions(vectors)


def test_per_row_tables_respect_inplace_false(tiny_llama) -> None:
    """AddPerRow adds row i of the live table to sequence i, in place unless asked not to."""
    from traitlens.steer import AddPerRow, compile_interventions

    class Source:
        def __init__(self, table: torch.Tensor) -> None:
            self.current: torch.Tensor | None = table

        def table(self, point: str) -> torch.Tensor | None:
            return self.current

    tm = tiny_llama
    d = tm.identity.d_model
    source = Source(torch.stack([torch.zeros(d), torch.ones(d)]))
    (hook,) = compile_interventions(tm, AddPerRow(source, ("resid[1]",)), inplace=False)
    hidden = torch.zeros(2, 3, d)
    out = hook[1](hidden)
    assert torch.equal(hidden, torch.zeros(2, 3, d))  # not edited in place
    assert torch.equal(out[0], torch.zeros(3, d)) and torch.equal(out[1], torch.ones(3, d))
    source.current = None  # paused: nothing added
    assert torch.equal(hook[1](torch.zeros(2, 3, d)), torch.zeros(2, 3, d))
    (inplace_hook,) = compile_interventions(tm, AddPerRow(source, ("resid[1]",)))
    source.current = torch.ones(2, d)
    again = torch.zeros(2, 3, d)
    assert inplace_hook[1](again) is again and float(again.sum()) == 2 * 3 * d
