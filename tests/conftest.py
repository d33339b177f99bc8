"""Shared fixtures: tiny random-weight models of every supported family (built
from config classes, no downloads) and the real embedded SmolLM2 (session-scoped)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one torch thread per parallel worker (and per process it starts): two workers with
    # two threads each on two cores spin against each other (OpenMP), which made the
    # parallel part slower and its timings noisy
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
NO_SYSTEM = (
    "{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def make_tokenizer(template: str | None = CHATML) -> Any:
    """A byte-level BPE tokenizer trained in milliseconds on a tiny corpus (offline)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<|im_start|>", "<|im_end|>", "<start_of_turn>", "<end_of_turn>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = [
        "You are a calm and friendly person who enjoys quiet evenings.",
        "How would you spend a free Saturday afternoon? I like parties and people.",
        "system user assistant model question answer",
    ] * 20
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<eos>",
        additional_special_tokens=specials[2:],
    )
    fast.chat_template = template
    return fast


def _configs() -> dict[str, Callable[[], Any]]:
    import transformers as tf

    common = dict(
        vocab_size=400,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    return {
        "llama": lambda: tf.LlamaConfig(**common),
        "mistral": lambda: tf.MistralConfig(**common),
        "qwen2": lambda: tf.Qwen2Config(**common),
        "qwen3": lambda: tf.Qwen3Config(**common, head_dim=8),
        "gemma2": lambda: tf.Gemma2Config(**common, head_dim=8),
        "gemma3": lambda: tf.Gemma3TextConfig(**common, head_dim=8),
        "phi3": lambda: tf.Phi3Config(**{**common, "num_key_value_heads": 4}, pad_token_id=0),
        "gpt2": lambda: tf.GPT2Config(
            vocab_size=400, n_embd=32, n_layer=3, n_head=4, n_positions=128
        ),
    }


FAMILIES = sorted(_configs())


def build_tiny(family: str, seed: int = 0, template: str | None = CHATML) -> Any:
    """A wrapped TraitModel of the given family with random weights."""
    from transformers import AutoModelForCausalLM

    from traitlens.models.loading import wrap_model

    torch.manual_seed(seed)
    config = _configs()[family]()
    model = AutoModelForCausalLM.from_config(config).eval()
    tokenizer = make_tokenizer(template)
    return wrap_model(model, tokenizer, name=f"tiny-{family}")


@pytest.fixture(params=FAMILIES)
def tiny_any(request: pytest.FixtureRequest) -> Any:
    """A tiny model, parametrized across every supported family."""
    return build_tiny(request.param)


@pytest.fixture(scope="session")
def tiny_llama() -> Any:
    return build_tiny("llama")


@pytest.fixture(scope="session")
def smol() -> Any:
    """The real embedded SmolLM2-135M-Instruct (first load dequantizes and caches)."""
    from traitlens.models.loading import load_model

    return load_model(device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def study_run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``traitlens study --profile test`` on the embedded model (both designs, all five
    traits, every stage and report section at the smallest useful size), run once per
    session in a subprocess (the CLI users run); the tests of the report, baking, lm-eval
    and llama.cpp read its artifacts. Returns ``(run_dir, log)``; a failed study fails
    every user."""
    import os
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("study") / "run"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "traitlens.cli.main",
            "study",
            "--profile",
            "test",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=2400,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    return out, log
