"""Control vectors made by others: repeng's export, read by `traitlens vectors import`.

repeng (PyPI ``repeng==0.4.0``) trains a vector on ``hidden_states[l + 1]`` — the output
of block ``l`` — keys it ``l``, applies it at ``model.layers[l]``'s output
(``ControlModel``) and exports it as ``direction.{l}``. The test trains one with repeng
itself, exports it with repeng, imports the file with traitlens and checks that
traitlens' steering reproduces repeng's own: the same logits, so the layer numbering is
read as repeng (and llama.cpp) mean it, with no shift.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import build_tiny
from traitlens.errors import ArtifactError
from traitlens.steer import AddDirection, TraitVector, steering


def _repeng():
    # repeng 0.4.0 pins numpy<2 only because it names ``np.float_`` in a type hint
    # evaluated at import; the alias restores it (the project runs numpy 2)
    if not hasattr(np, "float_"):
        np.float_ = np.float64  # type: ignore[attr-defined]
    return pytest.importorskip("repeng", reason="repeng is not installed (pip install --no-deps)")


def _trained(tm, tmp_path: Path):
    repeng = _repeng()
    dataset = [
        repeng.DatasetEntry(
            positive=f"I love meeting new people at parties, story {i}.",
            negative=f"I prefer a quiet evening alone with a book, story {i}.",
        )
        for i in range(12)
    ]
    vector = repeng.ControlVector.train(tm.model, tm.tokenizer, dataset, batch_size=4)
    path = tmp_path / "repeng.gguf"
    vector.export_gguf(str(path))
    return repeng, vector, path


def test_a_repeng_file_steers_in_traitlens_as_it_does_in_repeng(tmp_path: Path) -> None:
    tm = build_tiny("llama")
    repeng, trained, path = _trained(tm, tmp_path)
    imported = TraitVector.from_gguf(path, tm)
    # repeng's default layers: every block but 0, keyed by block index
    assert (
        imported.layers
        == tuple(range(1, tm.identity.n_layers))
        == tuple(sorted(trained.directions))
    )
    ids = torch.tensor([tm.tokenizer.encode("Tell me about your weekend plans.")])
    controlled = repeng.ControlModel(copy.deepcopy(tm.model), list(trained.directions))
    controlled.set_control(trained, 3.0)
    with torch.inference_mode():
        theirs = controlled(input_ids=ids).logits
        with steering(tm, AddDirection(imported, 3.0)):
            ours = tm.model(input_ids=ids).logits
        plain = tm.model(input_ids=ids).logits
        # read one block off, the same file steers differently: the test can tell
        shifted = TraitVector.from_directions(
            tm.identity, {layer - 1: imported.step(layer) for layer in imported.layers}
        )
        with steering(tm, AddDirection(shifted, 3.0)):
            off_by_one = tm.model(input_ids=ids).logits
    assert torch.allclose(ours, theirs, atol=1e-5), float((ours - theirs).abs().max())
    assert not torch.allclose(plain, theirs, atol=1e-3)
    assert not torch.allclose(off_by_one, theirs, atol=1e-3)


def test_a_repeng_file_for_another_model_is_refused_naming_both(tmp_path: Path) -> None:
    import transformers as tf

    from conftest import make_tokenizer
    from traitlens.models.loading import wrap_model

    tm = build_tiny("llama")
    _, _, path = _trained(tm, tmp_path)
    wider = tf.LlamaConfig(
        vocab_size=400,
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    other = wrap_model(tf.AutoModelForCausalLM.from_config(wider).eval(), make_tokenizer(), "w")
    with pytest.raises(ArtifactError, match=r"width \[32\].*d_model=48"):
        TraitVector.from_gguf(path, other)
    shallow = tf.LlamaConfig(
        vocab_size=400,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    other = wrap_model(tf.AutoModelForCausalLM.from_config(shallow).eval(), make_tokenizer(), "s")
    with pytest.raises(ArtifactError, match=r"layer\(s\) \[2\].*2 layers"):
        TraitVector.from_gguf(path, other)
