"""Open-ended answers scored by a representational judge or an external one.

The representational judge reads the generated text with a model's own probes:
the answer is fed back (after its prompt) through the model, hidden states are
mean-pooled over the *answer tokens only* at one layer, and the probe set maps
them to per-trait scores. Run it with the **unsteered** model (outside any
intervention context): the question is what the text expresses, not what the
steered model's residual stream contains while writing it.

The external judge is any OpenAI-compatible endpoint (:mod:`.judge`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from traitlens.capture import ChatPrompt, capture_activations
from traitlens.data import TRAITS, parse_traits
from traitlens.errors import DataError
from traitlens.evaluate.judge import HttpJudge, judge_ratings
from traitlens.models.loading import TraitModel


class Readout(Protocol):
    """Anything that maps pooled hidden states ``[batch, d_model]`` at a layer to
    per-trait scores ``[batch, n_traits]`` — e.g. ``traitlens.probe.ProbeSet``."""

    def readout(self, hidden: torch.Tensor, layer: int) -> torch.Tensor: ...


@dataclass(frozen=True, eq=False)
class OpenEndedScores:
    """``scores[i, t]``: answer i's score on ``traits[t]``; NaN where the answer was
    empty (probe) or the judge gave no rating. ``source`` says which judge."""

    traits: tuple[str, ...]
    scores: np.ndarray
    source: str

    def mean(self) -> dict[str, float]:
        """Trait → mean score over answers, ignoring NaN (NaN if all are)."""
        out: dict[str, float] = {}
        for column, trait in enumerate(self.traits):
            values = self.scores[:, column]
            values = values[~np.isnan(values)]
            out[trait] = float(values.mean()) if values.size else math.nan
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "traits": list(self.traits),
            "mean": self.mean(),
            "scores": [[None if math.isnan(v) else float(v) for v in row] for row in self.scores],
        }


def answer_hidden(
    tm: TraitModel,
    prompts: Sequence[ChatPrompt],
    answers: Sequence[str],
    layers: Sequence[int],
    *,
    kind: str = "resid",
    pooling: str = "mean",
    batch_size: int = 16,
    progress: bool = False,
) -> dict[int, torch.Tensor]:
    """``{layer: [n_answers, d]}`` hidden states pooled over the answer tokens only, with
    each answer placed after its prompt; one forward pass serves every layer."""
    acts = capture_activations(
        tm,
        prompts,
        answers=answers,
        span="answer",
        poolings=(pooling,),
        kinds=(kind,),
        layers=list(layers),
        neuron_stats=False,
        batch_size=batch_size,
        progress=progress,
    )
    return {layer: acts.layer(layer, kind, pooling) for layer in layers}


def probe_scores(
    tm: TraitModel,
    prompts: Sequence[ChatPrompt],
    answers: Sequence[str],
    probes: Readout,
    layer: int,
    *,
    traits: Sequence[str] | None = None,
    pooling: str | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> OpenEndedScores:
    """Score answers with a representational judge (probes on answer-span hidden states).

    ``pooling`` defaults to the probe set's own ``pooling`` attribute (how it was
    fitted), else ``"mean"``; the hook kind is ``probes.kind`` if present, else
    ``"resid"``; ``traits`` defaults to ``probes.traits``.
    """
    if not answers:
        raise DataError("no answers to score; generate them first (generate_answers)")
    if len(prompts) != len(answers):
        raise DataError(f"got {len(answers)} answers for {len(prompts)} prompts; pass one each")
    resolved = tm.adapter.resolve(f"resid[{layer}]").layer
    pool = pooling or str(getattr(probes, "pooling", "mean"))
    kind = str(getattr(probes, "kind", "resid"))  # read where the probes were fitted
    hidden = answer_hidden(
        tm,
        prompts,
        answers,
        [resolved],
        kind=kind,
        pooling=pool,
        batch_size=batch_size,
        progress=progress,
    )[resolved]
    with torch.inference_mode():
        scores = probes.readout(hidden, resolved).detach().float().cpu().numpy().astype(np.float64)
    if scores.ndim != 2 or scores.shape[0] != len(answers):
        raise DataError(
            f"the readout returned shape {tuple(scores.shape)}; expected [n_answers, n_traits]"
        )
    names = tuple(
        traits or getattr(probes, "traits", None) or [f"t{i}" for i in range(scores.shape[1])]
    )
    if len(names) != scores.shape[1]:
        raise DataError(f"{len(names)} trait names for a readout with {scores.shape[1]} columns")
    empty = np.array([not answer.strip() for answer in answers])
    scores[empty] = np.nan  # an empty answer has no tokens to read; 0 would look like a score
    return OpenEndedScores(names, scores, "probe")


def endpoint_scores(
    judge: HttpJudge,
    answers: Sequence[str],
    *,
    traits: Sequence[str] = TRAITS,
    questions: Sequence[str | None] | None = None,
) -> OpenEndedScores:
    """Score answers 1–5 per trait with an OpenAI-compatible judge endpoint."""
    codes = parse_traits(traits)
    ratings = judge_ratings(judge, answers, traits=codes, questions=questions)
    return OpenEndedScores(tuple(codes), np.array(ratings, dtype=np.float64), "judge")
