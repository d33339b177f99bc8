"""An embedding judge: score open-ended text by similarity to trait-pole prototypes.

The third scorer next to the probes (:func:`~traitlens.evaluate.openended.probe_scores`)
and an external endpoint. It needs no labelled activations and no server: each
trait's high and low prototypes are the mean embeddings of first-person statements
keyed to that pole (the shipped questionnaire statements, or a user's inventory), and
an answer's score is ``cos(answer, high) − cos(answer, low)`` in [−2, 2].

Hidden states of a causal LM are anisotropic (every mean-pooled vector shares a large
common component, so raw cosines all sit near 1); embeddings are therefore centred on
the mean of all statements before cosines are taken. How far to trust the scorer is
measured, not assumed: :attr:`EmbeddingJudge.loo_auc` is each trait's leave-one-out
AUC of telling high-keyed from low-keyed statements with prototypes built without
the statement being scored.

The embedder is any function ``texts → [n, d]``: by default the model's own
mean-pooled residual stream over the text placed as an assistant answer
(:func:`model_embedder`); a user with a local sentence-embedding model can pass
that instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from traitlens.data import TRAITS, parse_traits
from traitlens.data.schema import StatementLike
from traitlens.errors import DataError
from traitlens.evaluate.openended import OpenEndedScores
from traitlens.models.loading import TraitModel
from traitlens.stats import separation_auc

Embedder = Callable[[Sequence[str]], np.ndarray]

NEUTRAL_QUESTION = "Tell me a little about yourself."
"""The question every text is placed after, so statements and answers are read alike."""


def default_embedding_layer(n_layers: int) -> int:
    """Two thirds of the depth: late enough to carry meaning, before the last layers
    turn toward next-token prediction."""
    return max(0, min(n_layers - 1, round(n_layers * 2 / 3)))


def model_embedder(
    tm: TraitModel,
    layer: int | None = None,
    *,
    question: str = NEUTRAL_QUESTION,
    batch_size: int = 16,
) -> Embedder:
    """``texts → [n, d_model]``: mean residual stream at ``layer`` over the text's tokens,
    with the text given as the assistant's answer to ``question``."""
    from traitlens.capture import Prompt
    from traitlens.evaluate.openended import answer_hidden

    chosen = default_embedding_layer(tm.n_layers) if layer is None else layer
    resolved = tm.adapter.resolve(f"resid[{chosen}]").layer  # clear error for a bad index

    def embed(texts: Sequence[str]) -> np.ndarray:
        prompts = [Prompt(question) for _ in texts]
        hidden = answer_hidden(tm, prompts, list(texts), [resolved], batch_size=batch_size)
        return hidden[resolved].double().cpu().numpy()

    embed.layer = resolved  # type: ignore[attr-defined]
    return embed


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def _loo_units(raw: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``[k, k, d]``: for each held-out statement ``index[a]``, the unit vectors of all
    ``index`` statements centred on the mean of every statement *except* ``index[a]``.

    The centre must exclude the held-out statement: centred vectors sum to zero, so
    keeping it in would make the rest of its own pole point *away* from it (on random
    embeddings that bias alone gives an AUC near 0.1). Computed once, shared by the
    observed AUC and every permutation.
    """
    total, n = raw.sum(axis=0), raw.shape[0]
    centres = (total[None] - raw[index]) / (n - 1)  # [k, d]
    return np.stack([_unit(raw[index] - centre) for centre in centres])


def _loo_auc(units: np.ndarray, is_plus: np.ndarray) -> float:
    """AUC of each held-out statement scored by prototypes built entirely without it."""
    k = len(is_plus)
    scores = np.empty(k)
    for a in range(k):
        others = np.arange(k) != a
        h = _unit(units[a, others & is_plus].mean(axis=0))
        lo = _unit(units[a, others & ~is_plus].mean(axis=0))
        scores[a] = units[a, a] @ h - units[a, a] @ lo
    if not is_plus.any() or is_plus.all():
        return math.nan
    return separation_auc(scores[is_plus], scores[~is_plus])


@dataclass(frozen=True, eq=False)
class EmbeddingJudge:
    """Centred unit prototypes per trait and pole; ``score`` maps embeddings to traits."""

    traits: tuple[str, ...]
    center: np.ndarray  # [d]
    high: np.ndarray  # [T, d] unit
    low: np.ndarray  # [T, d] unit
    loo_auc: dict[str, float] = field(default_factory=dict)
    loo_p: dict[str, float] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """``[n, T]`` cos(high) − cos(low) of centred embeddings; NaN rows stay NaN."""
        e = np.asarray(embeddings, dtype=np.float64)
        if e.ndim != 2 or e.shape[1] != self.center.shape[0]:
            raise DataError(
                f"embeddings of shape {tuple(e.shape)} do not fit prototypes of dimension "
                f"{self.center.shape[0]}; embed with the same embedder the judge was fitted with"
            )
        u = _unit(e - self.center)
        return u @ self.high.T - u @ self.low.T


def require_both_keyings(
    statements: Sequence[Any], codes: Sequence[str], fix: str = "add reverse-keyed items"
) -> None:
    """Each trait in ``codes`` needs '+' and '-' keyed statements: its prototypes are the
    difference of the two (checked by the CLI before the model loads, too)."""
    for code in codes:
        keys = {s.keyed for s in statements if s.trait == code}
        if keys != {"+", "-"}:
            raise DataError(
                f"trait {code} needs statements keyed both '+' and '-' to build its "
                f"prototypes (have {sorted(keys) or 'none'}); {fix}"
            )


def fit_embedding_judge(
    embed: Embedder,
    statements: Sequence[StatementLike],
    *,
    traits: str | Sequence[str] | None = None,
    permutations: int = 200,
    seed: int = 0,
) -> EmbeddingJudge:
    """Prototypes from keyed statements, plus each trait's leave-one-out AUC and its
    one-sided permutation p-value (keys shuffled ``permutations`` times): with 8 + 8
    statements a single AUC swings widely, so the p-value says whether it beats chance."""
    present = {s.trait for s in statements}
    codes = parse_traits(traits) if traits else [t for t in TRAITS if t in present]
    chosen = [s for s in statements if s.trait in codes]
    require_both_keyings(chosen, codes)
    raw = np.asarray(embed([s.text for s in chosen]), dtype=np.float64)
    if raw.ndim != 2 or raw.shape[0] != len(chosen) or not np.isfinite(raw).all():
        raise DataError(
            f"the embedder returned {raw.shape} (finite: {bool(np.isfinite(raw).all())}) "
            f"for {len(chosen)} texts; it must return one finite vector per text"
        )
    center = raw.mean(axis=0)
    units = _unit(raw - center)
    high, low, loo, loo_p = [], [], {}, {}
    for code in codes:
        index = [i for i, s in enumerate(chosen) if s.trait == code]
        plus = np.array([i for i in index if chosen[i].keyed == "+"])
        minus = np.array([i for i in index if chosen[i].keyed == "-"])
        high.append(_unit(units[plus].mean(axis=0)))
        low.append(_unit(units[minus].mean(axis=0)))
        both = np.concatenate([plus, minus])
        units_loo = _loo_units(raw, both)
        is_plus = np.arange(len(both)) < len(plus)
        observed = _loo_auc(units_loo, is_plus)
        # permutation null: the same statements with their keys shuffled
        rng = np.random.default_rng(seed)
        null = [_loo_auc(units_loo, rng.permutation(is_plus)) for _ in range(permutations)]
        loo[code] = observed
        loo_p[code] = (1 + sum(v >= observed for v in null)) / (1 + len(null))
    return EmbeddingJudge(
        tuple(codes),
        center,
        np.stack(high),
        np.stack(low),
        loo,
        loo_p,
        {"n_statements": len(chosen), "layer": getattr(embed, "layer", None)},
    )


def embedding_scores(
    answers: Sequence[str],
    judge: EmbeddingJudge,
    embed: Embedder,
) -> OpenEndedScores:
    """Score answers with a fitted :class:`EmbeddingJudge` (empty answers → NaN)."""
    if not answers:
        raise DataError("no answers to score; generate them first (generate_answers)")
    empty = np.array([not a.strip() for a in answers])
    scores = np.full((len(answers), len(judge.traits)), np.nan)
    keep = [a for a in answers if a.strip()]
    if keep:
        scores[~empty] = judge.score(np.asarray(embed(keep), dtype=np.float64))
    return OpenEndedScores(judge.traits, scores, "embedding")
