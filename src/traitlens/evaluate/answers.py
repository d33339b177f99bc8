"""Score a file of open-ended answers with every available judge, in one call.

Behind ``traitlens evaluate answers``: the embedding judge always runs (it needs
nothing but the model and keyed statements); the probe judge runs when a run
directory with fitted probes is given (each trait read at its most selective
layer); the external judge runs when a URL is given. Per-answer scores go to
``answer_scores.csv`` and everything, including the embedding judge's
leave-one-out AUC (how far to trust it), to ``answer_scores.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from traitlens.artifact_io import write_json
from traitlens.capture import Prompt
from traitlens.data.schema import AnswerRecord, StatementLike
from traitlens.evaluate.embedding import (
    NEUTRAL_QUESTION,
    embedding_scores,
    fit_embedding_judge,
    model_embedder,
)
from traitlens.evaluate.openended import OpenEndedScores, answer_hidden, endpoint_scores
from traitlens.evaluate.tables import write_csv
from traitlens.models.loading import TraitModel, check_text_fits


def _probe_columns(
    tm: TraitModel, prompts: list[Prompt], answers: list[str], probes_dir: Path, traits: list[str]
) -> OpenEndedScores:
    from traitlens.probe import ProbeSet

    probes = ProbeSet.load(probes_dir, expect=tm.identity)
    missing = [t for t in traits if t not in probes.traits]
    if missing:
        from traitlens.errors import DataError

        raise DataError(
            f"the probes in {probes_dir} were not fitted for trait(s) {', '.join(missing)} "
            f"(have {', '.join(probes.traits)}); pass --traits {','.join(probes.traits)}"
        )
    layers = {t: probes.best_layer(t) for t in traits}  # each trait at its own best layer
    hidden = answer_hidden(  # one forward pass for every layer needed
        tm,
        prompts,
        answers,
        sorted(set(layers.values())),
        kind=probes.kind,
        pooling=probes.pooling,
    )
    scores = np.full((len(answers), len(traits)), np.nan)
    with torch.inference_mode():
        for column, trait in enumerate(traits):
            read = probes.readout(hidden[layers[trait]], layers[trait])
            scores[:, column] = read[:, probes.traits.index(trait)].double().cpu().numpy()
    scores[np.array([not a.strip() for a in answers])] = np.nan  # nothing to read
    return OpenEndedScores(tuple(traits), scores, "probe")


def score_answer_file(
    tm: TraitModel,
    records: Sequence[AnswerRecord],
    statements: Sequence[StatementLike],
    *,
    traits: list[str],
    out: Path,
    layer: int | None = None,
    probes_dir: Path | None = None,
    judge_url: str | None = None,
    judge_model: str = "default",
) -> dict[str, Any]:
    """Score ``records`` with each judge available; writes and returns the tables."""
    answers = [r.answer for r in records]
    hint = "shorten it, or score it in parts"
    check_text_fits(
        tm,
        [(repr(r.id or str(i)), r.answer) for i, r in enumerate(records)],
        "answer",
        hint,
    )
    check_text_fits(
        tm,
        [(repr(r.id or str(i)), r.question) for i, r in enumerate(records)],
        "the question of answer",
        "shorten it",
    )
    check_text_fits(
        tm,
        [(repr(s.id), s.text) for s in statements],
        "statement",
        "shorten it (a questionnaire statement is one sentence) or drop it from the file",
    )
    embed = model_embedder(tm, layer)
    judge = fit_embedding_judge(embed, statements, traits=traits)
    results = [embedding_scores(answers, judge, embed)]
    prompts = [Prompt(r.question or NEUTRAL_QUESTION) for r in records]
    if probes_dir is not None:
        results.append(_probe_columns(tm, prompts, answers, probes_dir, traits))
    if judge_url:
        from traitlens.evaluate.judge import HttpJudge

        questions = [r.question or None for r in records]
        http = HttpJudge(judge_url, model=judge_model)
        results.append(endpoint_scores(http, answers, traits=traits, questions=questions))
    rows = []
    for i, record in enumerate(records):
        row: dict[str, Any] = {"id": record.id or str(i), "question": record.question}
        for result in results:
            for column, trait in enumerate(result.traits):
                row[f"{result.source}_{trait}"] = float(result.scores[i, column])
        row["answer"] = record.answer
        rows.append(row)
    out = Path(out)
    write_csv(rows, out / "answer_scores.csv")
    summary = {
        "kind": "answer_scores",
        "model": tm.identity.to_dict(),
        "n_answers": len(records),
        "traits": traits,
        "means": {r.source: r.mean() for r in results},
        "embedding": {"loo_auc": judge.loo_auc, "loo_p": judge.loo_p, **judge.source},
        "scores": {r.source: r.to_dict() for r in results},
    }
    path = write_json(out / "answer_scores.json", summary)
    return {**summary, "path": path}
