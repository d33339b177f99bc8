"""The capture stage of a run directory: prompts → question capture → answers → answer capture.

Layout (each file is written atomically; a rerun reuses whatever is finished):

- ``prompts.jsonl`` — the contrastive prompt set (trait, pole, intensity, persona, question)
- ``activations/question/`` — pooled hidden states over the *question* tokens
  (persona text excluded) + neuron statistics grouped by ``trait|pole``
- ``answers.jsonl`` — the model's greedy answers under each persona, appended in
  chunks so an interrupted generation resumes where it stopped
- ``activations/answer/`` — pooled hidden states and NPTI neuron statistics over
  the answer tokens, grouped by ``trait|pole``
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from traitlens.capture.artifacts import Activations
from traitlens.capture.capture import capture
from traitlens.data import ContrastivePrompt, build_contrastive_set, load_prompts, save_prompts
from traitlens.errors import ArtifactError
from traitlens.models.generation import generate_answers
from traitlens.models.loading import TraitModel


@dataclass
class CaptureRun:
    prompts: list[ContrastivePrompt]
    question: Activations
    answers: list[str] | None
    answer: Activations | None


def group_labels(prompts: Sequence[ContrastivePrompt]) -> list[str]:
    """``trait|pole`` per prompt: the groups neuron statistics are kept for."""
    return [f"{p.trait}|{p.pole}" for p in prompts]


def prepare_prompts(
    run_dir: Path,
    traits: Sequence[str] | str | None = None,
    *,
    n_questions: int | None = 24,
    n_personas_per_pole: int | None = 6,
    question_category: str | None = None,
    seed: int = 0,
) -> list[ContrastivePrompt]:
    """Build the contrastive set; if ``prompts.jsonl`` holds the same set, keep it."""
    prompts = build_contrastive_set(
        traits,
        n_personas_per_pole=n_personas_per_pole,
        n_questions=n_questions,
        question_category=question_category,
        seed=seed,
    )
    path = run_dir / "prompts.jsonl"
    if path.exists() and load_prompts(path) == prompts:
        return prompts
    save_prompts(prompts, path)
    return prompts


def load_answers(path: Path) -> dict[str, str]:
    answers: dict[str, str] = {}
    if not path.exists():
        return answers
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            answers[str(record["id"])] = str(record["answer"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            # a line cut off by an interruption: everything before it is kept
            if number == len(lines):
                break
            raise ArtifactError(
                f"{path} line {number} is corrupt; delete the file to regenerate"
            ) from exc
    return answers


def generate_run_answers(
    tm: TraitModel,
    prompts: Sequence[ContrastivePrompt],
    run_dir: Path,
    *,
    max_new_tokens: int = 40,
    batch_size: int = 16,
    chunk_size: int = 128,
    progress: bool = True,
) -> list[str]:
    """Greedy answers for every prompt, appended to ``answers.jsonl`` chunk by chunk."""
    path = run_dir / "answers.jsonl"
    done = load_answers(path)
    todo = [p for p in prompts if p.id not in done]
    if todo:
        # rewrite the finished part cleanly (drops a truncated last line), then append
        path.write_text("".join(json.dumps({"id": k, "answer": v}) + "\n" for k, v in done.items()))
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start : start + chunk_size]
        if progress and len(todo) > chunk_size:
            print(f"answers {len(done)}/{len(prompts)}", flush=True)
        texts = generate_answers(
            tm, chunk, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress
        )
        with path.open("a") as handle:
            for prompt, text in zip(chunk, texts, strict=True):
                handle.write(json.dumps({"id": prompt.id, "answer": text}) + "\n")
                done[prompt.id] = text
    return [done[p.id] for p in prompts]


def capture_run(
    tm: TraitModel,
    run_dir: str | Path,
    traits: Sequence[str] | str | None = None,
    *,
    n_questions: int | None = 24,
    n_personas_per_pole: int | None = 6,
    generate: bool = True,
    max_new_tokens: int = 40,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = True,
) -> CaptureRun:
    """Run the whole capture stage into ``run_dir`` (resumable, nothing computed twice)."""
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    prompts = prepare_prompts(
        run, traits, n_questions=n_questions, n_personas_per_pole=n_personas_per_pole, seed=seed
    )
    groups = group_labels(prompts)
    question = capture(
        tm,
        prompts,
        span="question",
        groups=groups,
        batch_size=batch_size,
        out_dir=run / "activations" / "question",
        progress=progress,
    )
    if not generate:
        return CaptureRun(prompts, question, None, None)
    answers = generate_run_answers(
        tm, prompts, run, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress
    )
    answer = capture(
        tm,
        prompts,
        answers=answers,
        span="answer",
        groups=groups,
        batch_size=batch_size,
        out_dir=run / "activations" / "answer",
        progress=progress,
    )
    return CaptureRun(prompts, question, answers, answer)
