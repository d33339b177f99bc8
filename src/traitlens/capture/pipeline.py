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
from typing import TypedDict

from traitlens.artifact_io import atomic_write, read_json, write_json
from traitlens.capture.artifacts import Activations
from traitlens.capture.capture import capture_job
from traitlens.data import ContrastivePrompt, build_contrastive_set, load_prompts, save_prompts
from traitlens.errors import ArtifactError, TraitlensError
from traitlens.models.generation import generate_answers
from traitlens.models.loading import TraitModel
from traitlens.provenance import Provenance, RunManifest, claim, persist, provenance, record


@dataclass
class CaptureRun:
    prompts: list[ContrastivePrompt]
    question: Activations
    answers: list[str] | None
    answer: Activations | None


def group_labels(prompts: Sequence[ContrastivePrompt]) -> list[str]:
    """``trait|pole`` per prompt: the groups neuron statistics are kept for."""
    return [f"{p.trait}|{p.pole}" for p in prompts]


def prompts_provenance(prompts: Sequence[ContrastivePrompt]) -> Provenance:
    """Key of a prompt set: its content alone, so the same prompts always match."""
    summary = {"n_prompts": len(prompts), "traits": sorted({p.trait for p in prompts})}
    return provenance("prompts", config=summary, data=[p.model_dump() for p in prompts])


class PromptDesign(TypedDict):
    """Which contrastive prompts a run captures (:func:`prepare_prompts`' and
    :func:`capture_run`'s keywords of that name): a caller that checks the set before
    the model loads and then runs passes the same design to both."""

    n_questions: int | None
    n_personas_per_pole: int | None
    seed: int


def prepare_prompts(
    run_dir: Path,
    traits: Sequence[str] | str | None = None,
    *,
    n_questions: int | None = 24,
    n_personas_per_pole: int | None = 6,
    question_category: str | None = None,
    seed: int = 0,
    force: bool = False,
    write: bool = True,
) -> tuple[list[ContrastivePrompt], Provenance]:
    """Build the contrastive set; keep ``prompts.jsonl`` when it holds the same set, and
    refuse to replace a different one unless ``force`` (another set-up's run).
    ``write=False`` only checks (the CLI does, before the model loads)."""
    prompts = build_contrastive_set(
        traits,
        n_personas_per_pole=n_personas_per_pole,
        n_questions=n_questions,
        question_category=question_category,
        seed=seed,
    )
    prov = prompts_provenance(prompts)
    path = run_dir / "prompts.jsonl"
    existing, exists = None, path.exists()
    if exists:
        try:
            existing = prompts_provenance(load_prompts(path))
        except TraitlensError:
            exists = False  # unreadable: nothing worth keeping
    if (
        claim(
            run_dir,
            "prompts",
            prov,
            None if existing is None else existing.key,
            exists=exists,
            force=force,
            what="prompt set",
            existing_inputs=None if existing is None else existing.inputs,
        )
        or not write
    ):
        return prompts, prov
    save_prompts(prompts, path)
    record(run_dir, "prompts", prov)
    return prompts, prov


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
    upstream: dict[str, str | None] | None = None,
    force: bool = False,
) -> list[str]:
    """Greedy answers for every prompt, appended to ``answers.jsonl`` chunk by chunk.

    ``answers.json`` records their input key (model, prompts, length, chat format):
    an interrupted generation resumes only under the same key; answers made under
    other inputs are refused (or, with ``force``, replaced), never mixed in."""
    path = run_dir / "answers.jsonl"
    sidecar = run_dir / "answers.json"
    prov = provenance(
        "answers",
        model=tm.identity,
        config={"max_new_tokens": max_new_tokens, "decoding": "greedy", "chat": tm.formatter.mode},
        data=[[p.id, p.system, p.user] for p in prompts],
        upstream=upstream,
    )
    saved_key = None
    if sidecar.exists():
        try:
            saved_key = read_json(sidecar).get("key")
        except TraitlensError:
            saved_key = None
    exists = path.exists()
    if claim(run_dir, "answers", prov, saved_key, exists=exists, force=force, what="answer set"):
        done = load_answers(path)
    else:
        done = {}
        atomic_write(path, "")
        write_json(sidecar, {"key": prov.key, "provenance": prov.to_dict()})
        record(run_dir, "answers", prov)
    todo = [p for p in prompts if p.id not in done]
    if todo:
        # rewrite the finished part cleanly (drops a truncated last line), then append;
        # atomically, so a kill during the rewrite cannot lose the answers already made
        atomic_write(
            path, "".join(json.dumps({"id": k, "answer": v}) + "\n" for k, v in done.items())
        )
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
    force: bool = False,
) -> CaptureRun:
    """Run the whole capture stage into ``run_dir`` (resumable, nothing computed twice).

    A run directory holding a capture made from other inputs is refused with the
    fix unless ``force`` (then it is replaced and what depends on it recomputes)."""
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    prompts, prompt_prov = prepare_prompts(
        run,
        traits,
        n_questions=n_questions,
        n_personas_per_pole=n_personas_per_pole,
        seed=seed,
        force=force,
    )
    groups = group_labels(prompts)

    def capture_span(
        span: str, upstream: dict[str, str | None], answers: list[str] | None = None
    ) -> Activations:
        """The pooled activations over one span, into ``RUN/activations/{span}``."""
        job = capture_job(
            tm,
            prompts,
            answers=answers,
            span=span,
            groups=groups,
            batch_size=batch_size,
            progress=progress,
            stage=f"capture.{span}",
            upstream=upstream,
        )
        return persist(job, run / "activations" / span, run_dir=run, force=force)

    question = capture_span("question", {"prompts": prompt_prov.key})
    if not generate:
        return CaptureRun(prompts, question, None, None)
    answers = generate_run_answers(
        tm,
        prompts,
        run,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
        upstream={"prompts": prompt_prov.key},
        force=force,
    )
    answers_key = RunManifest(run).get("answers")
    upstream = {"answers": None if answers_key is None else answers_key.key}
    answer = capture_span("answer", upstream, answers)
    return CaptureRun(prompts, question, answers, answer)
