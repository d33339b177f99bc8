"""Next-token distributions over answer labels ("1".."5", "A"/"B"), read from logits.

Reading the answer distribution from one forward pass is deterministic and
cheap, and keeps the full distribution rather than one sampled answer (the
"label generation" scoring of LLM questionnaire studies). Two details matter:

- *Which token is the label?* Tokenizers differ ("3" vs "▁3" vs "▁" + "3"),
  so the label tokens are found by rendering each label as the assistant's
  answer with the model's own chat format and comparing token ids: any tokens
  shared by every label (e.g. a lone "▁") become an *answer lead* appended to
  every prompt, and the first token after it must differ between labels.
- *Speed.* Prompts built from one template share a long token prefix (chat
  header, instructions, option list), so it is run once and its KV cache is
  reused for every batch; only the differing suffixes are computed. Suffixes
  are left-padded *after* the prefix with explicit position ids, so each prompt
  sees exactly the positions it would see alone (tested against the plain path
  on every supported family).

Everything here calls ``tm.model(...)`` plainly, so an intervention context
(steering hooks) active around the call is measured as-is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from traitlens.errors import DataError, ModelError
from traitlens.models.batching import (
    MIN_SHARED_PREFIX,
    SharedPrefix,
    common_prefix_length,
    last_logits_kwargs,
    left_pad,
    length_sorted_batches,
)
from traitlens.models.loading import TraitModel
from traitlens.progress import track


@dataclass(frozen=True)
class LabelTokens:
    """Token ids the model emits for each label, after an optional shared ``lead``."""

    labels: tuple[str, ...]
    ids: tuple[int, ...]
    lead: tuple[int, ...] = ()


def resolve_label_tokens(tm: TraitModel, labels: Sequence[str]) -> LabelTokens:
    """Find the token that starts each label when the model answers with it.

    Each label is rendered as the assistant's reply after the generation prompt
    (``tm.format(None, q, label)``); the answer tokens of all labels minus their
    common leading tokens must start with distinct ids.
    """
    question = "Reply with one label."
    prompt_ids = tm.format(None, question).input_ids
    answers: list[list[int]] = []
    for label in labels:
        full = tm.format(None, question, label).input_ids
        if full[: len(prompt_ids)] != prompt_ids:
            raise ModelError(
                f"the tokenizer of {tm.identity.name} merges the answer label {label!r} with the "
                "end of the prompt, so label log-probabilities cannot be read from one position"
            )
        answers.append(full[len(prompt_ids) :])
    lead_len = 0
    while all(len(a) > lead_len + 1 for a in answers) and len({a[lead_len] for a in answers}) == 1:
        lead_len += 1
    firsts = [a[lead_len] if len(a) > lead_len else None for a in answers]
    if None in firsts or len(set(firsts)) != len(firsts):
        raise ModelError(
            f"the labels {list(labels)} do not start with distinct tokens in {tm.identity.name}'s "
            f"tokenizer (answer tokens: {answers}); label log-probabilities need one token each"
        )
    return LabelTokens(
        tuple(labels), tuple(int(f) for f in firsts if f is not None), tuple(answers[0][:lead_len])
    )


@dataclass(frozen=True)
class LabelDistribution:
    """Per-prompt label probabilities ``probs [n, k]`` (softmax over the k label
    logits only) and ``label_mass [n]``: the probability the full softmax puts on
    the k labels together, i.e. how much the model "wants" to answer with a label."""

    probs: np.ndarray
    label_mass: np.ndarray


def label_distribution(
    tm: TraitModel,
    sequences: Sequence[Sequence[int]],
    label_tokens: LabelTokens,
    *,
    batch_size: int = 32,
    share_prefix: bool = True,
    progress: bool = False,
    description: str = "scoring",
) -> LabelDistribution:
    """Next-token label distribution after each token sequence (a formatted prompt).

    ``share_prefix`` runs the tokens common to all sequences once and reuses
    their KV cache. Interventions acting at every position, or only at prompt
    positions, see exactly what a full forward pass shows them (each pass here
    has >= 2 tokens); turn it off for hooks that depend on absolute token
    indices or on the full sequence being present in one call.
    Returns probabilities in the order of ``label_tokens.labels``.
    """
    if not sequences:
        raise DataError("no prompts to score; pass at least one")
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    lead = list(label_tokens.lead)
    full = [list(s) + lead for s in sequences]
    label_index = torch.tensor(label_tokens.ids)
    shared = common_prefix_length(full) if share_prefix else 0
    # keep >= 2 tokens per suffix: interventions that act only on "prompt" or only on
    # "generated" positions tell the two apart by sequence length (1 = a decoding step),
    # so every pass here must look like a prompt pass, as the full forward would
    shared = min(shared, min(len(s) for s in full) - 2)
    use_cache = shared >= MIN_SHARED_PREFIX
    suffixes = [s[shared:] for s in full] if use_cache else full
    pad_id = tm.tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tm.tokenizer.eos_token_id or 0
    extra = last_logits_kwargs(tm.model)
    device = tm.device
    probs = np.zeros((len(full), len(label_tokens.ids)))
    mass = np.zeros(len(full))
    batches = length_sorted_batches([len(s) for s in suffixes], batch_size)
    with torch.inference_mode():
        prefix = SharedPrefix(tm, full[0][:shared] if use_cache else [], extra)
        for batch in track(batches, len(batches), description, progress):
            ids, attn, pos = left_pad([suffixes[i] for i in batch], pad_id, device)
            out = prefix.run(ids, attn, pos)
            logits = out.logits[:, -1].float().cpu()
            log_probs = torch.log_softmax(logits, dim=-1)[:, label_index]
            probs[batch] = torch.softmax(log_probs, dim=-1).double().numpy()
            mass[batch] = torch.logsumexp(log_probs, dim=-1).exp().double().numpy()
    return LabelDistribution(probs=probs, label_mass=mass)
