"""Loading, the architecture adapter, chat spans and hook hygiene."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import FAMILIES, NO_SYSTEM, build_tiny
from traitlens.errors import ArtifactError, DataError, HookPointError, ModelError
from traitlens.models import HookPoint, detect_adapter, hooks_installed, load_model
from traitlens.models.batching import left_pad
from traitlens.models.loading import cache_root


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_every_family_exposes_uniform_hook_points(tiny_any) -> None:
    tm = tiny_any
    assert tm.n_layers == 3
    seen: dict[str, tuple[int, ...]] = {}

    def record(name: str):
        def hook(t: torch.Tensor) -> None:
            seen[name] = tuple(t.shape)

        return hook

    points = ["resid[0]", "resid[-1]", "mlp_act[1]", "attn_out[2]"]
    ids = torch.tensor([tm.format(None, "hello there").input_ids])
    with hooks_installed(tm.adapter, [(p, record(p)) for p in points]):
        tm.model(input_ids=ids)
    seq = ids.shape[1]
    assert seen["resid[0]"] == (1, seq, tm.identity.d_model)
    assert seen["resid[-1]"] == (1, seq, tm.identity.d_model)
    assert seen["attn_out[2]"] == (1, seq, tm.identity.d_model)
    assert seen["mlp_act[1]"] == (1, seq, tm.identity.d_mlp)
    assert _hook_count(tm.model) == 0


def test_resid_hook_is_the_block_output(tiny_any) -> None:
    """resid[l] must equal hidden_states[l+1] from output_hidden_states (before final norm)."""
    tm = tiny_any
    ids = torch.tensor([tm.format("You are calm.", "How are you?").input_ids])
    captured = {}
    with hooks_installed(tm.adapter, [("resid[0]", lambda t: captured.setdefault(0, t))]):
        out = tm.model(input_ids=ids, output_hidden_states=True)
    torch.testing.assert_close(captured[0], out.hidden_states[1])


def test_mlp_act_is_the_gate_activation_for_gated_mlps() -> None:
    tm = build_tiny("llama")
    mlp = tm.model.model.layers[1].mlp
    x = torch.randn(1, 4, tm.identity.d_model)
    captured = {}
    with hooks_installed(tm.adapter, [("mlp_act[1]", lambda t: captured.setdefault("a", t))]):
        mlp(x)
    torch.testing.assert_close(captured["a"], torch.nn.functional.silu(mlp.gate_proj(x)))


def test_hook_replacing_output_changes_the_forward() -> None:
    tm = build_tiny("llama")
    ids = torch.tensor([tm.format(None, "hi").input_ids])
    base = tm.model(input_ids=ids).logits
    with hooks_installed(tm.adapter, [("resid[1]", lambda t: t + 1.0)]):
        steered = tm.model(input_ids=ids).logits
    assert not torch.allclose(base, steered)
    torch.testing.assert_close(tm.model(input_ids=ids).logits, base)


def test_hooks_removed_after_exception_and_failed_registration() -> None:
    tm = build_tiny("llama")
    with pytest.raises(RuntimeError), hooks_installed(tm.adapter, [("resid[0]", lambda t: None)]):
        assert _hook_count(tm.model) == 1
        raise RuntimeError("boom")
    assert _hook_count(tm.model) == 0
    with (
        pytest.raises(HookPointError, match="out of range"),
        hooks_installed(tm.adapter, [("resid[0]", lambda t: None), ("resid[99]", lambda t: None)]),
    ):
        pass
    assert _hook_count(tm.model) == 0


@pytest.mark.parametrize(
    "spec, message",
    [
        ("resid[3]", "out of range"),
        ("resid[-4]", "out of range"),
        ("mlp[1]", "KIND"),
        ("resid(1)", "KIND"),
        ("", "KIND"),
    ],
)
def test_bad_hook_points_are_refused(tiny_llama, spec: str, message: str) -> None:
    with pytest.raises(HookPointError, match=message):
        tiny_llama.adapter.resolve(spec)


def test_hook_point_parse_roundtrip() -> None:
    assert str(HookPoint.parse(" mlp_act[ 7 ] ")) == "mlp_act[7]"


def test_unknown_architecture_gets_clear_error() -> None:
    class Weird(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(2, 2) for _ in range(2)])

    with pytest.raises(ModelError, match="unsupported architecture"):
        detect_adapter(Weird())


def test_chat_formats_and_spans() -> None:
    for template, mode in [(None, "plain"), (NO_SYSTEM, "template-merged-system")]:
        tm = build_tiny("llama", template=template)
        assert tm.formatter.mode == mode
        fp = tm.format("You are calm.", "How are you?", "Fine.")
        tok = tm.tokenizer
        assert tok.decode(fp.input_ids[slice(*fp.span("question"))]).strip() == "How are you?"
        assert tok.decode(fp.input_ids[slice(*fp.span("answer"))]).strip() == "Fine."
        assert "calm" in tok.decode(fp.input_ids[slice(*fp.span("system"))])
        q_start, q_end = fp.span("question")
        s_start, s_end = fp.span("system")
        assert s_end <= q_start  # the question span never includes persona tokens
    tm = build_tiny("llama")
    assert tm.formatter.mode == "template"
    with pytest.raises(KeyError, match="answers"):
        tm.format("s", "q").span("answer")


@pytest.mark.parametrize("template", [None, NO_SYSTEM, "chatml"])
def test_a_one_turn_conversation_is_exactly_format(template: str | None) -> None:
    tm = build_tiny("llama") if template == "chatml" else build_tiny("llama", template=template)
    for system in (None, "You are calm."):
        for answer in (None, "", "Fine, thanks."):
            marks = {"item": "are you"}
            single = tm.format(system, "How are you?", answer, marks=marks)
            turns = [("How are you?", answer)]
            assert tm.formatter.format_conversation(turns, system, marks=marks) == single


@pytest.mark.parametrize("template", [None, NO_SYSTEM, "chatml"])
def test_conversation_spans_mark_the_last_exchange(template: str | None) -> None:
    tm = build_tiny("llama") if template == "chatml" else build_tiny("llama", template=template)
    tok = tm.tokenizer
    # the last question repeats the first: spans must still find the last one
    turns = [
        ("How are you?", "Calm and quiet."),
        ("Why?", "I like evenings."),
        ("How are you?", "Fine."),
    ]
    fp = tm.formatter.format_conversation(turns, system="You are calm.")
    assert fp.text.count("You are calm.") == 1
    assert fp.text.index("Calm and quiet.") < fp.text.index("I like evenings.")
    assert tok.decode(fp.input_ids[slice(*fp.span("answer"))]).strip() == "Fine."
    q_start, q_end = fp.span("question")
    assert tok.decode(fp.input_ids[q_start:q_end]).strip() == "How are you?"
    assert q_start > fp.span("system")[1]
    assert fp.span("answer")[1] == len(fp.input_ids)
    # earlier turns are not in the question or answer span
    history = tok.decode(fp.input_ids[:q_start])
    assert "I like evenings." in history and "Calm and quiet." in history
    # asking for the next answer: same text up to the generation prompt
    asking = tm.formatter.format_conversation(
        [*turns[:-1], ("How are you?", None)], "You are calm."
    )
    assert "answer" not in asking.spans and fp.text.startswith(asking.text)
    if tm.formatter.mode == "plain":
        assert fp.text == (
            "You are calm.\n\nQuestion: How are you?\nAnswer: Calm and quiet.\n\n"
            "Question: Why?\nAnswer: I like evenings.\n\nQuestion: How are you?\nAnswer: Fine."
        )
    if tm.formatter.mode == "template-merged-system":  # persona joins the first user turn
        assert "You are calm.\n\nHow are you?" in fp.text


def test_conversations_with_an_unanswered_middle_turn_are_refused(tiny_llama) -> None:
    with pytest.raises(DataError, match="only the last turn may be unanswered"):
        tiny_llama.formatter.format_conversation([("Hi", None), ("Well?", None)])
    with pytest.raises(DataError, match="at least one"):
        tiny_llama.formatter.format_conversation([])


def test_generating_from_formatted_prompts_matches_generate_answers(tiny_llama) -> None:
    from traitlens.capture import Prompt
    from traitlens.models.generation import generate_answers, generate_formatted

    tm = tiny_llama
    prompts = [Prompt("How are you?"), Prompt("What do you do on a long Saturday?", "Be calm.")]
    formatted = [tm.format(p.system, p.user) for p in prompts]
    for sample in (False, True):
        kwargs: dict = dict(max_new_tokens=5, do_sample=sample, seed=4, progress=False)
        assert generate_formatted(tm, formatted, **kwargs) == generate_answers(
            tm, prompts, **kwargs
        )
    with pytest.raises(DataError, match="no prompts"):
        generate_formatted(tm, [], progress=False)


def test_keep_order_batches_rows_as_given_and_by_length_otherwise(tiny_llama) -> None:
    from traitlens.models.generation import generate_formatted

    tm = tiny_llama
    longest = tm.formatter.format_conversation(
        [("How would you spend a free Saturday?", "I like parties and people."), ("Why?", None)]
    )
    rows = [longest, tm.format(None, "Hi")]

    def reference(order: list[int]) -> list[str]:
        """One batch straight through ``model.generate``, rows in ``order``."""
        ids, attn, _ = left_pad([rows[i].input_ids for i in order], tm.tokenizer.pad_token_id)
        torch.manual_seed(11)
        out = tm.model.generate(
            input_ids=ids,
            attention_mask=attn,
            max_new_tokens=8,
            do_sample=True,
            temperature=0.8,
            top_p=0.95,
            pad_token_id=tm.tokenizer.pad_token_id,
            eos_token_id=tm.tokenizer.eos_token_id,
        )
        texts = [
            tm.tokenizer.decode(r[ids.shape[1] :], skip_special_tokens=True).strip() for r in out
        ]
        return [texts[order.index(i)] for i in range(len(rows))]

    kwargs: dict = dict(max_new_tokens=8, do_sample=True, seed=11, progress=False)
    assert generate_formatted(tm, rows, keep_order=True, **kwargs) == reference([0, 1])
    assert generate_formatted(tm, rows, **kwargs) == reference([1, 0])  # shortest first


def test_left_pad_positions() -> None:
    ids, mask, pos = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert pos.tolist() == [[0, 1, 2], [0, 0, 0]]


def test_missing_gguf_and_bad_dtype_errors(tmp_path) -> None:
    with pytest.raises(ModelError, match="GGUF file not found"):
        load_model(tmp_path / "nope.gguf")
    with pytest.raises(ModelError, match="unknown dtype"):
        load_model(tmp_path / "x", dtype="float8")


def test_unloadable_directory_error(tmp_path) -> None:
    with pytest.raises(ModelError, match="could not load model"):
        load_model(str(tmp_path), device="cpu")


def test_families_cover_the_issue() -> None:
    assert set(FAMILIES) >= {
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "gemma2",
        "gemma3",
        "phi3",
        "gpt2",
    }


@pytest.mark.slow
def test_embedded_model_loads_with_expected_shape(smol) -> None:
    info = smol.describe()
    assert (info["n_layers"], info["d_model"], info["d_mlp"]) == (30, 576, 1536)
    assert info["chat_format"] == "template" and info["gated_mlp"]
    fp = smol.format("You are a shy person.", "How do you spend Saturdays?", "Reading.")
    assert smol.tokenizer.decode(fp.input_ids[slice(*fp.span("question"))]) == (
        "How do you spend Saturdays?"
    )


@pytest.mark.slow
def test_embedded_model_second_load_uses_cache(smol) -> None:
    again = load_model(device="cpu")
    assert again.identity == smol.identity
    # served from the safetensors cache, wherever $TRAITLENS_CACHE puts it
    assert Path(again.source).resolve().is_relative_to(cache_root().resolve())


def test_no_public_name_is_shadowed_by_a_subpackage() -> None:
    """Import every subpackage first (the order that used to turn ``tl.capture`` into a
    module), then every exported name must be the documented object."""
    import pkgutil
    import subprocess
    import sys

    import traitlens

    subpackages = [m.name for m in pkgutil.walk_packages(traitlens.__path__, "traitlens.")]
    code = (
        "import importlib, traitlens\n"
        f"for name in {subpackages!r}:\n"
        "    importlib.import_module(name)\n"
        "from traitlens import _EXPORTS\n"
        "bad = [n for n, m in _EXPORTS.items()\n"
        "       if getattr(traitlens, n) is not getattr(importlib.import_module(m), n)]\n"
        "print('BAD', bad)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "BAD []" in done.stdout, done.stdout
    assert len(traitlens._EXPORTS) <= 25  # the rest is imported from its subpackage


def test_a_gguf_cache_finished_by_another_process_is_kept_not_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes converting the same GGUF at once (parallel test workers, two CLI
    runs): the one that finishes second keeps the first one's complete copy instead of
    deleting it under a reader's feet."""
    import transformers

    from traitlens.models import loading

    monkeypatch.setenv("TRAITLENS_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 64)
    monkeypatch.setattr(loading, "check_gguf_file", lambda path: None)
    tiny = build_tiny("llama")
    target = loading._gguf_cache_target(gguf)

    digest = loading.gguf_content_digest(gguf)

    def other_process_finishes_first(*args: object, **kwargs: object) -> object:
        target.mkdir(parents=True)
        marker = f"{digest} the other process {loading.CACHE_LAYOUT}"
        (target / "traitlens-complete").write_text(marker)
        (target / "theirs").write_text("in use")
        return tiny.model

    monkeypatch.setattr(
        transformers.AutoModelForCausalLM, "from_pretrained", other_process_finishes_first
    )
    monkeypatch.setattr(
        transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: tiny.tokenizer
    )
    assert loading._gguf_cached_dir(gguf) == target
    assert (target / "theirs").read_text() == "in use"
    assert (target / "traitlens-complete").read_text().startswith(f"{digest} the other process")
    assert sorted(p.name for p in target.parent.iterdir()) == sorted(
        [target.name, loading.GGUF_DIGESTS]
    )  # no temporary folder left


def test_the_model_digest_covers_every_weight_and_the_chat_template() -> None:
    """Two checkpoints of one base that differ in a single down_proj weight (a LoRA merge,
    frozen-embedding training) used to share a digest: it hashed only the config and
    eight embedding rows, so a rerun into the same folder reused every stage."""
    import copy

    from traitlens.models.loading import wrap_model

    base = build_tiny("llama")
    tuned_model = copy.deepcopy(base.model)
    with torch.no_grad():
        tuned_model.model.layers[1].mlp.down_proj.weight[3, 5] += 0.25
    tuned = wrap_model(tuned_model, base.tokenizer, "tuned")
    assert tuned.identity.digest != base.identity.digest
    assert tuned.identity.scheme == base.identity.scheme == 2
    # the same weights in bf16: the same model (dtype recorded beside the digest)
    half = wrap_model(copy.deepcopy(base.model).to(torch.bfloat16), base.tokenizer, "half")
    assert half.identity.digest == base.identity.digest
    assert (half.identity.dtype, base.identity.dtype) == ("bfloat16", "float32")
    base.identity.check_matches(half.identity)
    # another chat template is another model for every chat-formatted capture
    other_tokenizer = copy.deepcopy(base.tokenizer)
    other_tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    templated = wrap_model(copy.deepcopy(base.model), other_tokenizer, "templated")
    assert templated.identity.digest != base.identity.digest
    with pytest.raises(ArtifactError, match="digest"):
        base.identity.check_matches(tuned.identity)


def test_an_artifact_with_the_old_digest_scheme_is_refused_with_the_reason() -> None:
    from traitlens.artifact_io import ModelIdentity

    tm = build_tiny("llama")
    old = {k: v for k, v in tm.identity.to_dict().items() if k not in ("dtype", "scheme")}
    old["digest"] = "0123456789abcdef"
    recorded = ModelIdentity.from_dict(old)
    assert recorded.scheme == 1
    with pytest.raises(ArtifactError, match="earlier traitlens.*recompute"):
        recorded.check_matches(tm.identity, "probe set")


def test_the_gguf_cache_is_keyed_by_content_not_by_path_and_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GGUF re-exported in place with the same size used to load the old weights from
    the cache (keyed on path and size). The key is now the file's sha256, memoized while
    the file's size, mtime and inode are unchanged, and the completion marker names it."""
    import os

    from traitlens.models import loading

    monkeypatch.setenv("TRAITLENS_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + b"\1" * 64)
    first = loading._gguf_cache_target(gguf)
    hashed: list[Path] = []
    real_open = Path.open

    def counting_open(self: Path, *args: object, **kwargs: object) -> object:
        if self == gguf:
            hashed.append(self)
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", counting_open)
    assert loading._gguf_cache_target(gguf) == first and not hashed  # memo: not re-read
    stat = gguf.stat()
    gguf.write_bytes(b"GGUF" + b"\2" * 64)  # re-exported: same path, same size
    os.utime(gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    hashed.clear()
    second = loading._gguf_cache_target(gguf)
    assert second != first and hashed == [gguf]
    # a copy whose marker names other content is not trusted
    second.mkdir(parents=True)
    (second / "traitlens-complete").write_text("0" * 64 + " elsewhere")
    assert not loading._complete(second, loading.gguf_content_digest(gguf))
    # nor one written in an earlier layout (no tied embedding under the name engines read)
    (second / "traitlens-complete").write_text(f"{loading.gguf_content_digest(gguf)} x")
    assert not loading._complete(second, loading.gguf_content_digest(gguf))


def test_a_tied_embedding_is_written_under_the_name_engines_read(tmp_path: Path) -> None:
    """The cached float copy of the embedded GGUF held ``lm_head.weight`` but no
    ``model.embed_tokens.weight`` (safetensors keeps one name of tied tensors): vLLM then
    loaded no embedding and decoded token 0 forever. The input embedding's name is kept,
    untied tensors are all written, and transformers loads the file back identically."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    from traitlens.models.loading import engine_state_dict

    tiny = build_tiny("llama")
    model = tiny.model
    model.config.tie_word_embeddings = True
    model.tie_weights()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    state = engine_state_dict(model)
    assert "model.embed_tokens.weight" in state and "lm_head.weight" not in state
    assert set(state) == set(model.state_dict()) - {"lm_head.weight"}
    save_file(state, str(tmp_path / "model.safetensors"), {"format": "pt"})
    model.config.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert set(load_file(str(tmp_path / "model.safetensors"))) == set(state)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[name], tensor)
    untied = build_tiny("gpt2").model
    untied.config.tie_word_embeddings = False
    untied.lm_head.weight = nn.Parameter(untied.lm_head.weight.detach().clone())
    assert set(engine_state_dict(untied)) == set(untied.state_dict())


@pytest.mark.slow
def test_the_cached_embedded_model_carries_its_input_embedding() -> None:
    """What vLLM reads from the cache: the embedding under its own name."""
    from safetensors import safe_open

    from traitlens.models.loading import _gguf_cached_dir, embedded_gguf_path

    cached = _gguf_cached_dir(embedded_gguf_path())
    with safe_open(str(cached / "model.safetensors"), "pt") as handle:
        names = set(handle.keys())
    assert "model.embed_tokens.weight" in names
