"""Baking a trait mix into weights: the baked checkpoint equals hook steering."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import FAMILIES, build_tiny
from traitlens.errors import InterventionError
from traitlens.neurons.selected import SelectedNeurons
from traitlens.steer import AddDirection, NeuronEdit, TraitVector, steering
from traitlens.steer.bake import BAKEABLE, bake, baked_model


def _mix(tm, layers=(1, 2), strength=3.0):
    generator = torch.Generator().manual_seed(0)
    directions = {
        layer: torch.randn(tm.identity.d_model, generator=generator, dtype=torch.float64)
        for layer in layers
    }
    vector = TraitVector.from_directions(
        tm.identity, directions, spread={layer: 0.5 for layer in layers}, trait="E"
    )
    other = TraitVector.from_directions(
        tm.identity,
        {layers[0]: torch.ones(tm.identity.d_model, dtype=torch.float64)},
        spread={layers[0]: 0.25},
        trait="N",
    )
    return [AddDirection(vector, strength), AddDirection(other, -1.0)]


def _ids(tm):
    texts = ["How was your weekend?", "Tell me about a time you helped a friend move."]
    return [tm.format(None, t).input_ids for t in texts]


def _logits(model, ids):
    with torch.inference_mode():
        return [model(input_ids=torch.tensor([row])).logits[0].float() for row in ids]


@pytest.mark.parametrize("family", sorted(BAKEABLE))
def test_baked_logits_equal_hook_steering(family: str) -> None:
    tm = build_tiny(family)
    mix = _mix(tm)
    ids = _ids(tm)
    with steering(tm, mix):
        hooked = _logits(tm.model, ids)
    plain = _logits(tm.model, ids)
    baked = _logits(baked_model(tm, mix), ids)
    for h, b, p in zip(hooked, baked, plain, strict=True):
        assert torch.allclose(h, b, atol=1e-4), float((h - b).abs().max())
        assert not torch.allclose(h, p, atol=1e-3)  # the mix does change the logits
    # the original model is untouched
    assert all(torch.equal(a, b) for a, b in zip(plain, _logits(tm.model, ids), strict=True))


@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in BAKEABLE])
def test_other_families_are_refused_with_the_reason(family: str) -> None:
    tm = build_tiny(family)
    with pytest.raises(InterventionError, match=f"cannot bake into a {tm.adapter.family}"):
        baked_model(tm, _mix(tm))


def test_only_constant_additions_at_every_position_are_bakeable() -> None:
    tm = build_tiny("llama")
    (first, _) = _mix(tm)
    with pytest.raises(InterventionError, match="positions='all'"):
        baked_model(tm, [AddDirection(first.vector, 1.0, positions="generated")])
    edit = NeuronEdit(SelectedNeurons.empty(), SelectedNeurons.empty())
    with pytest.raises(InterventionError, match="only direction additions"):
        baked_model(tm, [edit])


def test_checkpoint_loads_without_traitlens_and_matches(tmp_path: Path) -> None:
    """The baked folder is a plain HF checkpoint: a fresh process that never imports
    traitlens loads it with AutoModelForCausalLM and reproduces hook steering."""
    tm = build_tiny("llama")
    mix = _mix(tm)
    ids = _ids(tm)
    with steering(tm, mix):
        hooked = _logits(tm.model, ids)
    out = bake(tm, mix, tmp_path / "baked")
    assert json.loads((out / "traitlens_bake.json").read_text())["family"] == "llama"
    code = (
        "import json, sys, torch, transformers as tf\n"
        "model = tf.AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()\n"
        "ids = json.loads(sys.argv[2])\n"
        "with torch.inference_mode():\n"
        "    out = [model(input_ids=torch.tensor([r])).logits[0].tolist() for r in ids]\n"
        "assert 'traitlens' not in sys.modules\n"
        "print(json.dumps(out))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(out), json.dumps(ids)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = [torch.tensor(x) for x in json.loads(result.stdout.strip().splitlines()[-1])]
    for h, b in zip(hooked, loaded, strict=True):
        assert torch.allclose(h, b, atol=1e-4), float((h - b).abs().max())


@pytest.mark.slow
def test_embedded_model_bakes_and_matches_hook_steering(smol, tmp_path: Path) -> None:
    mix = _mix(smol, layers=(10, 11, 12, 13, 14), strength=1.0)
    ids = _ids(smol)
    with steering(smol, mix):
        hooked = _logits(smol.model, ids)
    out = bake(smol, mix, tmp_path / "baked")
    import transformers as tf

    model = tf.AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32).eval()
    for h, b in zip(hooked, _logits(model, ids), strict=True):
        assert torch.allclose(h, b, atol=1e-4), float((h - b).abs().max())


def test_a_folder_holding_files_is_refused_unless_forced(tmp_path: Path) -> None:
    from traitlens.errors import ArtifactError

    tm = build_tiny("llama")
    mix = _mix(tm)
    out = bake(tm, mix, tmp_path / "baked")
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(ArtifactError, match="already holds files"):
        bake(tm, [AddDirection(mix[0].vector, 1.0)], out)
    assert (out / "model.safetensors").read_bytes() == before  # nothing was overwritten
    bake(tm, [AddDirection(mix[0].vector, 1.0)], out, force=True)
    assert (out / "model.safetensors").read_bytes() != before


@pytest.mark.slow
def test_study_mix_bakes_and_generates_like_hooks_without_traitlens(
    study_run, smol, tmp_path: Path
) -> None:
    """The issue's check from a fresh clone: bake the E+1 mix of a finished study with the
    CLI, load the folder with plain transformers in a process that never imports
    traitlens, generate greedily, and get hook steering's tokens."""
    from traitlens.steer import VectorSet
    from traitlens.steer.spec import SteeringSpec

    run, _ = study_run
    out = tmp_path / "baked"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "traitlens.cli.main",
            "vectors",
            "bake",
            "--run",
            str(run),
            "--mix",
            "E=+1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-2000:]
    ids = smol.format(None, "Describe your ideal Saturday.").input_ids
    mix = SteeringSpec(traits={"E": 1.0}).directions(VectorSet.load(run))
    with torch.inference_mode(), steering(smol, mix):
        hooked = smol.model.generate(
            input_ids=torch.tensor([ids]), max_new_tokens=24, do_sample=False
        )[0, len(ids) :].tolist()
    code = (
        "import json, sys, torch, transformers as tf\n"
        "model = tf.AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()\n"
        "ids = json.loads(sys.argv[2])\n"
        "with torch.inference_mode():\n"
        "    out = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=24,"
        " do_sample=False)\n"
        "assert 'traitlens' not in sys.modules\n"
        "print(json.dumps(out[0, len(ids):].tolist()))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(out), json.dumps(list(ids))],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    baked = json.loads(result.stdout.strip().splitlines()[-1])
    assert baked == hooked
    with torch.inference_mode():
        plain = smol.model.generate(
            input_ids=torch.tensor([ids]), max_new_tokens=24, do_sample=False
        )[0, len(ids) :].tolist()
    assert plain != hooked  # the mix changes what the model says
