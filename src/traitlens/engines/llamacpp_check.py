"""Does llama.cpp steer the way traitlens does? One vector, both engines, same prompts.

traitlens exports a :class:`TraitVector` × strength as a control-vector GGUF
(:func:`traitlens.steer.gguf_io.export_gguf`); llama.cpp adds it with
``--control-vector-scaled FILE:1 --control-vector-layer-range A B``. Exact
equality is impossible — llama.cpp runs the Q4_1 weights of the embedded GGUF
with quantized activations, traitlens their float32 dequantization — so the
check measures how close the two are, beside the same measure with nothing
steered (the quantization floor) and with a random vector of the same size in
traitlens (what agreement any perturbation would earn):

- **greedy agreement**: leading generated tokens that match, per prompt;
- **shift correlation**: Pearson r, over the tokens in llama.cpp's top-k at
  the first generated position (present in both its runs), of the steered −
  unsteered next-token log-prob shift in llama.cpp vs in traitlens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from traitlens.artifact_io import Record
from traitlens.engines.llamacpp import LlamaCpp, LlamaServer, complete_cli
from traitlens.models.loading import TraitModel
from traitlens.steer.artifact import TraitVector
from traitlens.steer.interventions import AddDirection

CHECK_PROMPTS = (
    "How do you like to spend a free Saturday?",
    "Tell me about the last party you went to.",
    "What do you do when you meet someone new?",
    "Describe your ideal evening.",
    "How do you feel before giving a talk to a big group?",
    "What would you do if a friend invited you on a last-minute trip?",
    "Write two sentences about your weekend.",
    "How do you usually react when plans change suddenly?",
)
"""Our own prompts: open questions where extraversion (the default trait) shows."""


@dataclass(frozen=True)
class PromptCheck(Record):
    prompt: str
    agree_steered: int
    """Leading greedy tokens equal between llama.cpp and traitlens, both steered."""
    agree_plain: int
    """The same with nothing steered: the quantization floor."""
    changed_llamacpp: bool
    """Whether steering changed llama.cpp's greedy tokens at all."""
    shift_r: float
    shift_r_random: float
    """r between llama.cpp's shift and traitlens' shift under a random vector of the same size."""
    n_tokens: int
    text_llamacpp: str
    text_traitlens: str


@dataclass(frozen=True)
class LlamaCppCheck(Record):
    version: str
    trait: str
    strength: float
    layers: tuple[int, ...]
    n_predict: int
    top_k: int
    prompts: tuple[PromptCheck, ...]
    shift_r: float
    """Pearson r pooled over every prompt's tokens."""
    shift_r_random: float
    shift_r_moved: dict[str, float]
    """r with traitlens steering one block earlier (``"-1"``) or later (``"+1"``): lower
    than ``shift_r`` when the layer numbering of the file is read as we write it."""
    plain_logprob_r: float
    """r of the unsteered log-probs themselves (Q4_1 llama.cpp vs float32 traitlens)."""
    cli_text: str
    cli_matches_server: bool

    def summary(self) -> dict[str, float]:
        n = len(self.prompts)
        return {
            "shift_r": self.shift_r,
            "shift_r_random_vector": self.shift_r_random,
            **{f"shift_r_one_block_{k}": v for k, v in self.shift_r_moved.items()},
            "plain_logprob_r": self.plain_logprob_r,
            "mean_agree_steered": sum(p.agree_steered for p in self.prompts) / n,
            "mean_agree_plain": sum(p.agree_plain for p in self.prompts) / n,
            "first8_all_agree_steered": sum(p.agree_steered >= 8 for p in self.prompts) / n,
            "steering_changed_llamacpp": sum(p.changed_llamacpp for p in self.prompts) / n,
        }


def _leading(a: Sequence[int], b: Sequence[int]) -> int:
    count = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        count += 1
    return count


def _pearson(x: Sequence[float], y: Sequence[float]) -> float:
    if len(x) < 3 or float(np.std(x)) == 0.0 or float(np.std(y)) == 0.0:
        return math.nan
    return float(np.corrcoef(np.asarray(x), np.asarray(y))[0, 1])


def _eos_ids(tm: TraitModel) -> list[int]:
    config = tm.model.generation_config
    ids = config.eos_token_id if config.eos_token_id is not None else tm.tokenizer.eos_token_id
    return [ids] if isinstance(ids, int) else list(ids or [])


@torch.inference_mode()
def _greedy(tm: TraitModel, ids: list[int], n: int) -> tuple[list[int], torch.Tensor]:
    """Greedy tokens with end-of-sequence suppressed (llama.cpp's ``--ignore-eos``) and the
    first step's raw log-probs."""
    eos = _eos_ids(tm)
    out = tm.model.generate(
        input_ids=torch.tensor([ids], device=tm.device),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=tm.device),
        max_new_tokens=n,
        do_sample=False,
        suppress_tokens=eos or None,
        pad_token_id=tm.tokenizer.pad_token_id if tm.tokenizer.pad_token_id is not None else 0,
        output_logits=True,
        return_dict_in_generate=True,
    )
    tokens = [int(t) for t in out.sequences[0, len(ids) :]]
    return tokens, out.logits[0][0].float().log_softmax(-1).cpu()


def _moved(vector: TraitVector, layers: Sequence[int], offset: int) -> TraitVector:
    """The steps ``vector`` adds at ``layers``, placed ``offset`` blocks away (same sizes)."""
    return TraitVector.from_directions(
        vector.identity,
        {layer + offset: vector.step(layer) for layer in layers},
        trait=vector.trait,
        method=f"{vector.method}@{offset:+d}",
    )


def _server_run(
    server: LlamaServer, ids: list[int], n: int, k: int
) -> tuple[list[int], dict[int, float]]:
    reply = server.complete(ids, n, k)
    tokens = [int(t) for t in reply["tokens"]]
    first = reply["completion_probabilities"][0]["top_logprobs"]
    return tokens, {int(e["id"]): float(e["logprob"]) for e in first}


@dataclass(frozen=True)
class _Edits:
    """What traitlens steers with: the vector itself, a random vector of the same size, and
    the vector moved one block earlier / later (keyed by the offset)."""

    aligned: AddDirection
    random: AddDirection
    moved: dict[int, AddDirection]


def _edits(
    tm: TraitModel, vector: TraitVector, strength: float, chosen: list[int], seed: int
) -> _Edits:
    from traitlens.design.rows import random_vector_like

    edit = AddDirection(vector, strength, layers=chosen, positions="all")
    random_edit = AddDirection(random_vector_like(vector, seed), strength, layers=chosen)
    # the same vector one block earlier / later: if llama.cpp's direction.N acted anywhere
    # but block N's output, one of these would track it better than the aligned edit
    shifted = {
        offset: AddDirection(_moved(vector, chosen, offset), strength)
        for offset in (-1, 1)
        if chosen[0] + offset >= 1 and chosen[-1] + offset < tm.identity.n_layers
    }
    return _Edits(aligned=edit, random=random_edit, moved=shifted)


def _control(
    tm: TraitModel,
    vector: TraitVector,
    workdir: Path,
    strength: float,
    chosen: list[int],
    control_file: Path | None,
) -> tuple[tuple[Path, float], tuple[int, int]]:
    """What llama.cpp is given: ``(control file, scale)`` and the layer range it adds at."""
    from traitlens.steer.gguf_io import export_gguf

    if control_file is None:  # our export: the file holds strength × the vector
        control = (export_gguf(vector, workdir / f"{vector.trait}.gguf", strength, chosen), 1.0)
    else:  # a file made elsewhere, imported as ``vector``: llama.cpp scales it itself
        control = (Path(control_file), float(strength))
    layer_range = (chosen[0], chosen[-1])
    contiguous = chosen == list(range(chosen[0], chosen[-1] + 1))
    if not contiguous:  # llama.cpp takes one range; the file holds only the chosen layers
        layer_range = (1, tm.identity.n_layers - 1)
    return control, layer_range


def _check_prompt(
    tm: TraitModel,
    edits: _Edits,
    prompt: str,
    ids: list[int],
    plain: tuple[list[int], dict[int, float]],
    steered: tuple[list[int], dict[int, float]],
    n_predict: int,
    pooled: dict[str, list[float]],
) -> PromptCheck:
    """One prompt's comparison against llama.cpp's ``plain`` and ``steered`` runs; its
    shifts and unsteered log-probs are appended to ``pooled`` for the pooled r."""
    from traitlens.steer.apply import steering

    ll_plain, lp_plain = plain
    ll_steer, lp_steer = steered
    tl_plain, first_plain = _greedy(tm, ids, n_predict)
    with steering(tm, edits.aligned):
        tl_steer, first_steer = _greedy(tm, ids, n_predict)
    with steering(tm, edits.random):
        _, first_random = _greedy(tm, ids, 1)
    first_moved = {}
    for offset, moved in edits.moved.items():
        with steering(tm, moved):
            first_moved[offset] = _greedy(tm, ids, 1)[1]
    shared = sorted(set(lp_plain) & set(lp_steer))
    ll_shift = [lp_steer[t] - lp_plain[t] for t in shared]
    tl_shift = [float(first_steer[t] - first_plain[t]) for t in shared]
    rand_shift = [float(first_random[t] - first_plain[t]) for t in shared]
    pooled["ll"] += ll_shift
    pooled["tl"] += tl_shift
    pooled["rand"] += rand_shift
    for offset, first in first_moved.items():
        pooled.setdefault(f"moved{offset:+d}", []).extend(
            float(first[t] - first_plain[t]) for t in shared
        )
    pooled["p_ll"] += [lp_plain[t] for t in sorted(lp_plain)]
    pooled["p_tl"] += [float(first_plain[t]) for t in sorted(lp_plain)]
    return PromptCheck(
        prompt=prompt,
        agree_steered=_leading(ll_steer, tl_steer),
        agree_plain=_leading(ll_plain, tl_plain),
        changed_llamacpp=ll_steer != ll_plain,
        shift_r=_pearson(ll_shift, tl_shift),
        shift_r_random=_pearson(ll_shift, rand_shift),
        n_tokens=len(shared),
        text_llamacpp=tm.tokenizer.decode(ll_steer),
        text_traitlens=tm.tokenizer.decode(tl_steer),
    )


def _cli_check(
    tm: TraitModel,
    built: LlamaCpp,
    model_gguf: Path,
    control: tuple[Path, float],
    layer_range: tuple[int, int],
) -> tuple[str, bool]:
    """``(text, matches)``: the CLI users run, on plain text (no chat template); its steered
    text should be what the server produced for the same tokens."""
    cli_prompt = "My favourite way to spend a free evening is"
    cli_text = complete_cli(built, model_gguf, cli_prompt, 12, control, layer_range)
    cli_ids = list(tm.tokenizer(cli_prompt, add_special_tokens=False).input_ids)
    with LlamaServer(built, model_gguf, control, layer_range) as server:
        server_tokens, _ = _server_run(server, cli_ids, 12, 1)
    server_text = tm.tokenizer.decode(server_tokens)
    return cli_text, cli_text.strip().startswith(server_text.strip()[:20])


def check_llamacpp(
    tm: TraitModel,
    vector: TraitVector,
    built: LlamaCpp,
    model_gguf: Path,
    workdir: Path,
    *,
    strength: float = 4.0,
    layers: Sequence[int] | None = None,
    prompts: Sequence[str] = CHECK_PROMPTS,
    n_predict: int = 16,
    top_k: int = 40,
    seed: int = 0,
    control_file: Path | None = None,
) -> LlamaCppCheck:
    """Steer ``tm`` (float32) and llama.cpp (``model_gguf``) with the same vector; compare.

    ``control_file``: give llama.cpp this control-vector GGUF (at scale ``strength``)
    instead of exporting ``vector`` — for a file made elsewhere and imported as ``vector``
    (:func:`traitlens.steer.gguf_io.import_gguf`, where strength 1 adds exactly the file's tensors).
    """
    chosen = sorted(set(layers if layers is not None else [n for n in vector.layers if n]))
    edits = _edits(tm, vector, strength, chosen, seed)
    control, layer_range = _control(tm, vector, workdir, strength, chosen, control_file)
    ids_all = [list(tm.format(None, p).input_ids) for p in prompts]
    with LlamaServer(built, model_gguf) as server:
        plain_runs = [_server_run(server, ids, n_predict, top_k) for ids in ids_all]
    with LlamaServer(built, model_gguf, control, layer_range) as server:
        steered_runs = [_server_run(server, ids, n_predict, top_k) for ids in ids_all]
    pooled: dict[str, list[float]] = {"ll": [], "tl": [], "rand": [], "p_ll": [], "p_tl": []}
    rows = [
        _check_prompt(tm, edits, prompt, ids, plain, steered, n_predict, pooled)
        for prompt, ids, plain, steered in zip(
            prompts, ids_all, plain_runs, steered_runs, strict=True
        )
    ]
    cli_text, cli_matches = _cli_check(tm, built, model_gguf, control, layer_range)
    return LlamaCppCheck(
        version=built.version,
        trait=vector.trait,
        strength=float(strength),
        layers=tuple(chosen),
        n_predict=n_predict,
        top_k=top_k,
        prompts=tuple(rows),
        shift_r=_pearson(pooled["ll"], pooled["tl"]),
        shift_r_random=_pearson(pooled["ll"], pooled["rand"]),
        shift_r_moved={
            f"{offset:+d}": _pearson(pooled["ll"], pooled[f"moved{offset:+d}"])
            for offset in edits.moved
        },
        plain_logprob_r=_pearson(pooled["p_ll"], pooled["p_tl"]),
        cli_text=cli_text,
        cli_matches_server=cli_matches,
    )


def describe(check: LlamaCppCheck) -> dict[str, Any]:
    """What the script prints and the README quotes."""
    return {
        "version": check.version,
        "trait": check.trait,
        "strength": check.strength,
        "layers": f"{check.layers[0]}-{check.layers[-1]}",
        **check.summary(),
    }
