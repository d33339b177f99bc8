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
from traitlens.steer import AddDirection, TraitVector, import_gguf, steering


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
    imported = import_gguf(path, tm)
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
        import_gguf(path, other)
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
        import_gguf(path, other)


def test_the_readme_import_command_saves_a_repeng_file_that_steers_alike(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """README: `traitlens vectors import FILE --run RUN --trait E --method repeng`, end to
    end through the CLI (it used to end in a safetensors traceback when saving: the
    imported spread and norms shared memory)."""
    from traitlens.cli.main import main
    from traitlens.steer.vector_set import VectorSet

    tm = build_tiny("llama")
    _, _, path = _trained(tm, tmp_path)
    model_dir = tmp_path / "tiny"
    tm.model.save_pretrained(model_dir)
    tm.tokenizer.save_pretrained(model_dir)
    run = tmp_path / "run"
    argv = ["vectors", "import", str(path), "--run", str(run), "--trait", "E"]
    try:
        main([*argv, "--method", "repeng", "--model", str(model_dir)])
    except SystemExit as exit_:
        assert not exit_.code, capsys.readouterr()
    saved = VectorSet.load(run).get("E", "repeng")
    direct = import_gguf(path, tm)
    assert saved.layers == direct.layers
    torch.testing.assert_close(saved.vectors, direct.vectors)
    torch.testing.assert_close(saved.spread, direct.spread)
    torch.testing.assert_close(saved.norms, direct.norms)


def _control_gguf(path: Path, tensors: dict[str, np.ndarray], meta: str | None = None) -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(path), "controlvector")
    writer.add_string("controlvector.model_hint", "llama")
    writer.add_uint32("controlvector.layer_count", len(tensors))
    if meta is not None:
        writer.add_string("traitlens.metadata", meta)
    for name, values in tensors.items():
        if values.dtype == np.uint8:  # raw bytes of a quantized block
            writer.add_tensor(name, values, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize(
    ("tensors", "meta", "message"),
    [
        ({"direction.1": np.zeros(34, dtype=np.uint8)}, None, "stored as Q8_0.*F32 or F16"),
        ({"direction.1": np.ones((2, 32), dtype=np.float32)}, None, "shape \\[32, 2\\]"),
        ({"direction.1": np.full(32, np.nan, dtype=np.float32)}, None, "NaN or inf"),
        ({"direction.1": np.ones(32, dtype=np.float32)}, "{not json", "corrupt traitlens"),
        ({"direction.1": np.ones(32, dtype=np.float32)}, '{"trait": "E"}', "KeyError"),
        ({"direction.1": np.ones(32, dtype=np.float32)}, '{"model": 3}', "corrupt traitlens"),
    ],
)
def test_a_malformed_control_vector_gets_one_clear_error(
    tmp_path: Path, tensors: dict[str, np.ndarray], meta: str | None, message: str
) -> None:
    tm = build_tiny("llama")
    path = _control_gguf(tmp_path / "bad.gguf", tensors, meta)
    with pytest.raises(ArtifactError, match=message):
        import_gguf(path, tm)


def test_corrupt_recorded_spread_is_refused(tmp_path: Path) -> None:
    import json

    tm = build_tiny("llama")
    meta = {"model": tm.identity.to_dict(), "layers": [1], "spread": "wide", "norms": [1.0]}
    path = _control_gguf(
        tmp_path / "bad.gguf", {"direction.1": np.ones(32, dtype=np.float32)}, json.dumps(meta)
    )
    with pytest.raises(ArtifactError, match="corrupt traitlens"):
        import_gguf(path, tm)
    f16 = _control_gguf(tmp_path / "half.gguf", {"direction.1": np.ones(32, dtype=np.float16)})
    assert import_gguf(f16, tm).layers == (1,)  # F16 is read
