"""What does an intervention cost? Perplexity of neutral text, and diversity of answers.

- Perplexity of :data:`~traitlens.evaluate.reference.NEUTRAL_TEXT` under whatever
  intervention is active: a steering vector that breaks language modelling
  raises it even when the persona shift looks good.
- distinct-n (Li et al. 2016, "A Diversity-Promoting Objective Function for
  Neural Conversation Models"): unique n-grams / all n-grams over a set of
  answers; low values mean every answer says the same thing.
- Repetition rate: seq-rep-n of Welleck et al. 2019 ("Neural Text Generation
  with Unlikelihood Training"), 1 − unique/total n-grams *within* each answer,
  averaged; high values mean degenerate loops ("I love I love I love").

Words for the text metrics are lower-cased ``\\w+`` runs and single punctuation
marks, so the metrics do not depend on any model's tokenizer and compare
across models.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from traitlens.artifact_io import Record
from traitlens.errors import DataError
from traitlens.evaluate.reference import NEUTRAL_TEXT
from traitlens.models.loading import TraitModel, context_length

_WORD = re.compile(r"\w+|[^\w\s]")
_MAX_WINDOW = 1024


@dataclass(frozen=True)
class PerplexityResult(Record):
    """``perplexity = exp(mean_nll)`` over ``n_tokens`` scored tokens (all but the first)."""

    perplexity: float
    mean_nll: float
    n_tokens: int
    window: int


def _context_length(tm: TraitModel) -> int:
    config = getattr(tm.model, "config", None)
    config = getattr(config, "text_config", None) or config
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 1:
            return min(value, _MAX_WINDOW)
    return _MAX_WINDOW


def perplexity(
    tm: TraitModel,
    text: str = NEUTRAL_TEXT,
    *,
    max_length: int | None = None,
    stride: int | None = None,
) -> PerplexityResult:
    """Perplexity of ``text`` under whatever ``tm.model`` currently computes.

    The text is tokenized as a plain document (the tokenizer's own special
    tokens, no chat template). Texts longer than ``max_length`` (default: the
    model's context, at most 1024) are scored with overlapping windows moved by
    ``stride`` (default half a window), each token scored once with up to a
    window of left context — the sliding-window evaluation of the transformers
    docs ("Perplexity of fixed-length models").
    """
    ids = list(tm.tokenizer(text, add_special_tokens=True)["input_ids"])
    if len(ids) < 2:
        raise DataError("perplexity needs a text of at least two tokens")
    window = _context_length(tm) if max_length is None else max_length
    if window < 2:
        raise DataError(f"max_length must be >= 2, got {window}")
    context = context_length(tm)
    if max_length is not None and context is not None and max_length > context:
        raise DataError(
            f"max_length {max_length} exceeds {tm.identity.name}'s context of {context} "
            f"tokens; pass at most {context} (or leave it out to use the context)"
        )
    step = stride or max(1, window // 2)
    if not 1 <= step < window:
        # a stride of a whole window would leave each window's first token unscored
        raise DataError(f"stride must lie in 1..max_length-1 (1..{window - 1}), got {step}")
    total_nll = 0.0
    scored = 0
    scored_until = 1  # token 0 has no context, so scoring starts at token 1
    with torch.inference_mode():
        begin = 0
        while scored_until < len(ids):
            end = min(begin + window, len(ids))
            chunk = torch.tensor([ids[begin:end]], device=tm.device)
            logits = tm.model(input_ids=chunk, use_cache=False).logits[0].float()
            log_probs = torch.log_softmax(logits[:-1], dim=-1)
            targets = chunk[0, 1:]
            token_nll = -log_probs.gather(-1, targets[:, None])[:, 0]
            # position p of token_nll predicts token begin+p+1; keep tokens not yet scored
            fresh = token_nll[scored_until - begin - 1 :]
            total_nll += float(fresh.double().sum())
            scored += fresh.numel()
            scored_until = end
            begin += step
    mean_nll = total_nll / scored
    return PerplexityResult(math.exp(mean_nll), mean_nll, scored, window)


def words(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens used by the text metrics."""
    return _WORD.findall(text.lower())


def _ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[str], n: int = 1) -> float:
    """Corpus-level distinct-n: unique n-grams / total n-grams over all ``texts``.

    NaN when the texts hold no n-gram at all (e.g. all empty).
    """
    if n < 1:
        raise DataError(f"n must be >= 1, got {n}")
    grams = [gram for text in texts for gram in _ngrams(words(text), n)]
    if not grams:
        return math.nan
    return len(set(grams)) / len(grams)


def repetition_rate(texts: Sequence[str], n: int = 4) -> float:
    """Mean over texts of 1 − unique/total n-grams within each text (seq-rep-n).

    Texts too short to hold an n-gram are skipped; NaN when none qualifies.
    """
    if n < 1:
        raise DataError(f"n must be >= 1, got {n}")
    rates = []
    for text in texts:
        grams = _ngrams(words(text), n)
        if grams:
            rates.append(1.0 - len(set(grams)) / len(grams))
    if not rates:
        return math.nan
    return sum(rates) / len(rates)


@dataclass(frozen=True)
class TextCost(Record):
    """Diversity of a set of generated answers: distinct-1/2 over the set and
    ``repetition_rate`` = seq-rep-n within answers (see the module docstring)."""

    n_texts: int
    mean_words: float
    distinct_1: float
    distinct_2: float
    repetition_rate: float


def text_cost(texts: Sequence[str], repetition_n: int = 4) -> TextCost:
    """distinct-1, distinct-2 and seq-rep-``repetition_n`` of generated answers."""
    if not texts:
        raise DataError("text_cost got no texts; pass the generated answers")
    return TextCost(
        n_texts=len(texts),
        mean_words=sum(len(words(t)) for t in texts) / len(texts),
        distinct_1=distinct_n(texts, 1),
        distinct_2=distinct_n(texts, 2),
        repetition_rate=repetition_rate(texts, repetition_n),
    )
