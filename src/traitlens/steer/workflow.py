"""Getting the vectors (or neuron edits) a steering run needs, from a run directory.

Reuses whatever the run already holds — ``vectors.*``, captured activations,
``probes.*``, ``neurons.*`` — and only computes what is missing, saving it back
to the run (``RUN/vectors.safetensors`` + ``RUN/vectors.json``). A run with no
capture yet gets a small contrastive set for the trait: the model answers each
persona-prompted question and the answer tokens are captured (CAA reads its
vectors off the model's own answers; on the embedded model, question-token
vectors proved weaker and for neuroticism even steered the wrong way). Without
a run directory, a per-model cache run (:func:`default_run_dir`) is used so the
capture happens once.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from traitlens.errors import DataError
from traitlens.models.loading import TraitModel
from traitlens.neurons.rules import get_rule
from traitlens.steer.artifact import TraitVector
from traitlens.steer.estimators import trait_vector
from traitlens.steer.interventions import NeuronEdit, Positions
from traitlens.steer.layers import middle_layers, parse_layers
from traitlens.steer.registry import get_method
from traitlens.steer.vector_set import VectorSet

if TYPE_CHECKING:
    from traitlens.neurons import NeuronSet

# serve and the CLI import the layer helpers from here
__all__ = ["default_run_dir", "middle_layers", "parse_layers", "run_neuron_edit", "run_vector"]

SMALL_QUESTIONS = 8
SMALL_PERSONAS = 4
SMALL_ANSWER_TOKENS = 32
"""Size of the contrastive set built when a run has none: 2 poles × 4 personas × 8
questions = 64 prompts per trait, answered in 32 tokens — enough for a usable
mean-difference direction, a few minutes on a laptop CPU for the embedded model."""


def default_run_dir(tm: TraitModel) -> Path:
    """``$TRAITLENS_CACHE/steer/<model>-<digest>[-<dtype>]``: where steering keeps its
    small capture and vectors when no run directory is given. A dtype other than float32
    gets its own folder, as it gets its own keys: a bfloat16 capture never lands in (or is
    refused by) the float32 one's folder."""
    from traitlens.paths import cache_root

    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in tm.identity.name)
    dtype = tm.identity.dtype
    tail = f"-{dtype}" if dtype and dtype != "float32" else ""
    return cache_root() / "steer" / f"{name}-{tm.identity.digest}{tail}"


def _activation_dir(run: Path, span: str) -> Path | None:
    """Where the capture stage keeps a run's activations of one span."""
    directory = run / "activations" / span
    return directory if (directory / "activations.json").exists() else None


def _captured(
    tm: TraitModel,
    run: Path,
    trait: str,
    spans: Sequence[str],
    progress: bool,
) -> tuple[Any, list[Any]]:
    """(Activations, prompts) for ``trait``: from the run if it has them, else a fresh
    small capture (answers generated, answer span captured) saved into the run."""
    from traitlens.capture import Activations, capture_run
    from traitlens.data import load_prompts

    if (run / "prompts.jsonl").exists():
        # the run has its own prompt set: use it, never overwrite it with a small one
        prompts = load_prompts(run / "prompts.jsonl")
        if not any(p.trait == trait for p in prompts):
            raise DataError(
                f"run {run} has no prompts for trait {trait}; capture it into a new run "
                f"(traitlens capture --out NEW_RUN --traits {trait}) or pick a captured trait"
            )
        for name in spans:
            directory = _activation_dir(run, name)
            if directory is not None:
                return Activations.load(directory, expect=tm.identity), prompts
        raise DataError(
            f"run {run} has prompts but no captured {' or '.join(spans)} activations; finish "
            f"the capture first (traitlens capture --out {run})"
        )
    result = capture_run(
        tm,
        run,
        [trait],
        n_questions=SMALL_QUESTIONS,
        n_personas_per_pole=SMALL_PERSONAS,
        generate="answer" in spans,
        max_new_tokens=SMALL_ANSWER_TOKENS,
        progress=progress,
    )
    by_span = {"question": result.question, "answer": result.answer}
    return next(by_span[name] for name in spans if by_span[name] is not None), result.prompts


def _still_current(run: Path, vector: TraitVector) -> bool:
    """A saved vector is reused only while the capture it was estimated from is the run's
    current one (same input key); after a new capture it is rebuilt, never reused stale."""
    from traitlens.provenance import saved_key

    span = vector.source.get("span")
    made_from = vector.source.get("activations_key")
    if span is None or made_from is None:
        return True  # imported or combined by algebra: nothing to compare against
    exists, current = saved_key(run / "activations" / str(span) / "activations.json")
    return not exists or current == made_from


def _run_probes(tm: TraitModel, run_dir: Path, trait: str, layers: Sequence[int]) -> Any:
    """The run's probe set when it covers ``trait`` at exactly ``layers``, else None (the
    method then fits its own probe)."""
    if not (run_dir / "probes.json").exists():
        return None
    from traitlens.probe import ProbeSet

    candidate = ProbeSet.load(run_dir, expect=tm.identity)
    if trait in candidate.traits and candidate.layers == list(layers):
        return candidate
    return None


def run_vector(
    tm: TraitModel,
    run: str | Path | None,
    trait: str,
    method: str = "mean_diff",
    *,
    span: str = "auto",
    progress: bool = True,
) -> TraitVector:
    """The ``(trait, method)`` vector of a run: loaded if saved, else built (and saved).

    ``run=None`` uses :func:`default_run_dir`. ``method``: any registered direction
    method. ``span``: which captured activations to estimate from — ``"answer"``
    (the model's own answers under each persona, CAA's choice), ``"question"``
    (question tokens, persona text excluded) or ``"auto"``: the answer span, except
    for methods that need ``"pairs"`` (``pca``), which read the question span. PCA
    of paired differences assumes the two sides of a pair are the same tokens
    under different personas (repeng's setting); two free-form answers differ in
    content far more than in trait, and on the embedded model their first PC was
    nearly orthogonal to the mean difference (cos ≈ 0.1–0.2 at middle layers, vs
    0.93–1.0 on question tokens).
    """
    spec = get_method(method)
    run_dir = default_run_dir(tm) if run is None else Path(run)
    vectors: VectorSet | None = None
    if (run_dir / "vectors.json").exists():
        vectors = VectorSet.load(run_dir, expect=tm.identity)
        if (trait, method) in vectors:
            saved = vectors.get(trait, method)
            made_from = saved.source.get("span")
            if (span == "auto" or made_from == span) and _still_current(run_dir, saved):
                return saved
    spans = [span] if span != "auto" else ["answer", "question"]
    if span == "auto" and "pairs" in spec.needs:
        spans.reverse()
    activations, prompts = _captured(tm, run_dir, trait, spans, progress)
    probes = _run_probes(tm, run_dir, trait, activations.layers) if "probe" in spec.needs else None
    vector = trait_vector(
        activations,
        prompts,
        trait,
        method,
        probes=probes,
        source={"run_dir": str(run_dir)},
    )
    vectors = vectors or VectorSet(tm.identity)
    vectors.add(vector)
    vectors.save(run_dir)
    return vector


def _no_neurons(neurons: NeuronSet, trait: str, rule: str) -> bool:
    return not any(len(neurons.select(trait, pole, rule)) for pole in ("high", "low"))


def _run_neuron_set(
    tm: TraitModel, run_dir: Path, trait: str, rule: str, fdr: float | None, progress: bool
) -> NeuronSet:
    """The run's neuron set for ``trait``: ``RUN/neurons.*`` when it covers the trait, else
    selected (the neuron stage's ``select_neurons``) from the captured neuron
    statistics, preferring answer tokens as NPTI does, and saved unless the run
    already holds a neuron set for other traits. When ``rule`` finds no neuron in an
    FDR-controlled set, NPTI's δ rule alone is used (unsaved, with a warning)."""
    from traitlens.neurons import NeuronSet, neurons_job, prompts_per_group, select_neurons
    from traitlens.provenance import persist

    has_set = (run_dir / "neurons.json").exists()
    neuron_set: NeuronSet | None = None
    if has_set:
        neuron_set = NeuronSet.load(run_dir, expect=tm.identity)
        if trait not in neuron_set.traits:
            neuron_set = None
    if neuron_set is not None and (
        neuron_set.fdr is None or not _no_neurons(neuron_set, trait, rule)
    ):
        return neuron_set
    activations, prompts = _captured(tm, run_dir, trait, ["answer", "question"], progress)
    stats = activations.neuron_stats
    if stats is None:
        raise DataError(
            "the captured activations hold no neuron statistics; capture again with "
            "neuron statistics on (the default)"
        )
    per_pole = prompts_per_group(p for p in prompts if p.trait == trait)
    if neuron_set is None:
        job = neurons_job(stats, fdr=fdr, traits=[trait], prompt_counts=per_pole)
        # saved only where no other stage's set is: never clobber one
        neuron_set = job.compute() if has_set else persist(job, run_dir)
    if fdr is not None and _no_neurons(neuron_set, trait, rule):
        # small captures rarely pass an answer-level FDR test; NPTI itself uses the
        # δ rule alone, so fall back to it (unsaved) rather than edit nothing
        warnings.warn(
            f"no {trait} neuron passes FDR {neuron_set.fdr} with {sum(per_pole.values())} "
            "answers; using NPTI's δ rule alone (capture more prompts for an "
            "FDR-controlled set)",
            stacklevel=3,  # the caller of run_neuron_edit
        )
        neuron_set = select_neurons(stats, fdr=None, traits=[trait], prompt_counts=per_pole)
    return neuron_set


def run_neuron_edit(
    tm: TraitModel,
    run: str | Path | None,
    trait: str,
    pole: str = "high",
    *,
    gamma: float = 1.0,
    layers: Sequence[int] | None = None,
    positions: Positions = "all",
    random_control: bool = False,
    seed: int = 0,
    fdr: float | None = 0.05,
    rule: str = "fdr",
    progress: bool = True,
) -> NeuronEdit:
    """NPTI's edit for ``pole`` of ``trait`` from the run's neuron set.

    The set is the run's or selected now (see :func:`_run_neuron_set`);
    ``run=None`` uses :func:`default_run_dir`. ``fdr``: false-discovery rate of a
    selection made here (None: NPTI's δ rule alone; if nothing passes, the δ rule
    is used with a warning). ``rule``: the registered selection rule that picks
    the edited neurons from the set (``fdr``: the set's own rule; ``npti``: the δ
    rule alone). ``layers`` keeps only neurons in those layers;
    ``random_control`` swaps the target set for the matched random set (built-in
    rules only: the neuron set draws it).
    """
    get_rule(rule)  # an unknown rule fails before any capture
    run_dir = default_run_dir(tm) if run is None else Path(run)
    neuron_set = _run_neuron_set(tm, run_dir, trait, rule, fdr, progress)
    other = "low" if pole == "high" else "high"
    target = (
        neuron_set.random_control(trait, pole, seed, rule)
        if random_control
        else neuron_set.select(trait, pole, rule)
    )
    opposite = neuron_set.select(trait, other, rule)
    if layers is not None:
        target, opposite = target.in_layers(layers), opposite.in_layers(layers)
    if len(target) == 0 and len(opposite) == 0:
        raise DataError(
            f"no {trait}-selective neurons in the chosen layers; widen --layers, capture more "
            "prompts, or use a direction method"
        )
    return NeuronEdit(target, opposite, gamma=gamma, positions=positions)
