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
from typing import Any

from traitlens.errors import DataError
from traitlens.models.loading import TraitModel
from traitlens.steer.interventions import NeuronEdit, Positions
from traitlens.steer.vectors import METHODS, TraitVector, VectorSet, trait_vector

SMALL_QUESTIONS = 8
SMALL_PERSONAS = 4
SMALL_ANSWER_TOKENS = 32
"""Size of the contrastive set built when a run has none: 2 poles × 4 personas × 8
questions = 64 prompts per trait, answered in 32 tokens — enough for a usable
mean-difference direction, a few minutes on a laptop CPU for the embedded model."""


def default_run_dir(tm: TraitModel) -> Path:
    """``$TRAITLENS_CACHE/steer/<model>-<digest>``: where steering keeps its small capture
    and vectors when no run directory is given."""
    from traitlens.models.loading import cache_root

    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in tm.identity.name)
    return cache_root() / "steer" / f"{name}-{tm.identity.digest}"


def middle_layers(n_layers: int) -> list[int]:
    """A window from 1/3 to 1/2 of the depth, where trait directions steer best (CAA
    and repeng both find early-middle layers most effective). Kept narrow because
    additions accumulate in the residual stream: k layers at strength s push about
    k·s standard deviations in total."""
    start = max(1, round(n_layers / 3))
    stop = max(start + 1, round(n_layers / 2))
    return list(range(start, min(stop, n_layers)))


def parse_layers(spec: str, n_layers: int) -> list[int]:
    """``"10-20"`` (inclusive), ``"8,10,12"``, ``"10-14,20"`` or ``"-1"`` → sorted layer list.

    Raises DataError naming the valid range when a layer does not exist.
    """
    layers: set[int] = set()
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        try:
            if "-" in part[1:]:
                cut = part.index("-", 1)
                first, last = int(part[:cut]), int(part[cut + 1 :])
                if first > last:
                    raise ValueError
                layers.update(range(first, last + 1))
            else:
                layers.add(int(part))
        except ValueError:
            raise DataError(
                f"bad layer selection {spec!r}: write ranges and lists like '10-20' or "
                "'8,10,12' (ranges are inclusive)"
            ) from None
    resolved = sorted({layer + n_layers if layer < 0 else layer for layer in layers})
    if not resolved or resolved[0] < 0 or resolved[-1] >= n_layers:
        raise DataError(
            f"layer selection {spec!r} is outside this model's layers 0..{n_layers - 1}"
        )
    return resolved


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

    ``run=None`` uses :func:`default_run_dir`. ``span``: which captured
    activations to estimate from — ``"answer"`` (the model's own answers under
    each persona, CAA's choice), ``"question"`` (question tokens, persona text
    excluded) or ``"auto"``: the answer span, except for ``pca``, which reads the
    question span. PCA of paired differences assumes the two sides of a pair are
    the same tokens under different personas (repeng's setting); two free-form
    answers differ in content far more than in trait, and on the embedded model
    their first PC was nearly orthogonal to the mean difference (cos ≈ 0.1–0.2 at
    middle layers, vs 0.93–1.0 on question tokens).
    """
    if method not in METHODS:
        raise DataError(f"unknown direction method {method!r}; use one of {', '.join(METHODS)}")
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
    if span == "auto" and method == "pca":
        spans.reverse()
    activations, prompts = _captured(tm, run_dir, trait, spans, progress)
    probes = None
    if method == "probe" and (run_dir / "probes.json").exists():
        from traitlens.probe import ProbeSet

        candidate = ProbeSet.load(run_dir, expect=tm.identity)
        if trait in candidate.traits and candidate.layers == list(activations.layers):
            probes = candidate
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
    progress: bool = True,
) -> NeuronEdit:
    """NPTI's edit for ``pole`` of ``trait`` from the run's neuron set.

    Uses ``RUN/neurons.*`` when present, else selects neurons (the neuron
    stage's ``select_neurons``) from the captured neuron statistics, preferring
    answer tokens as NPTI does, and saves them unless the run already holds a
    neuron set for other traits. ``run=None`` uses :func:`default_run_dir`.
    ``fdr``: false-discovery rate of the selection (None: NPTI's δ rule alone;
    if nothing passes, the δ rule is used with a warning). ``layers`` keeps only
    neurons in those layers; ``random_control`` swaps the target set for the
    matched random set.
    """
    from traitlens.neurons import NeuronSet, SelectedNeurons, select_neurons

    run_dir = default_run_dir(tm) if run is None else Path(run)
    has_set = (run_dir / "neurons.json").exists()
    neuron_set: NeuronSet | None = None
    if has_set:
        neuron_set = NeuronSet.load(run_dir, expect=tm.identity)
        if trait not in neuron_set.traits:
            neuron_set = None

    def empty(candidate: NeuronSet) -> bool:
        return not any(len(candidate.select(trait, p)) for p in ("high", "low"))

    if neuron_set is None or (empty(neuron_set) and neuron_set.fdr is not None):
        activations, prompts = _captured(tm, run_dir, trait, ["answer", "question"], progress)
        stats = activations.neuron_stats
        if stats is None:
            raise DataError(
                "the captured activations hold no neuron statistics; capture again with "
                "neuron statistics on (the default)"
            )
        per_pole: dict[str, int] = {}
        for prompt in prompts:
            if prompt.trait == trait:
                key = f"{prompt.trait}|{prompt.pole}"
                per_pole[key] = per_pole.get(key, 0) + 1
        if neuron_set is None:
            neuron_set = select_neurons(
                stats,
                fdr=fdr,
                traits=[trait],
                prompt_counts=per_pole,
                out_dir=None if has_set else run_dir,  # never clobber another stage's set
            )
        if fdr is not None and empty(neuron_set):
            # small captures rarely pass an answer-level FDR test; NPTI itself uses the
            # δ rule alone, so fall back to it (unsaved) rather than edit nothing
            warnings.warn(
                f"no {trait} neuron passes FDR {neuron_set.fdr} with {sum(per_pole.values())} "
                "answers; using NPTI's δ rule alone (capture more prompts for an "
                "FDR-controlled set)",
                stacklevel=2,
            )
            neuron_set = select_neurons(stats, fdr=None, traits=[trait], prompt_counts=per_pole)
    other = "low" if pole == "high" else "high"
    target = (
        neuron_set.random_control(trait, pole, seed)
        if random_control
        else neuron_set.select(trait, pole)
    )
    opposite = neuron_set.select(trait, other)
    if layers is not None:
        keep = set(layers)

        def restrict(neurons: SelectedNeurons) -> SelectedNeurons:
            rows = [i for i, layer in enumerate(neurons.layers.tolist()) if layer in keep]
            return SelectedNeurons(
                neurons.layers[rows],
                neurons.indices[rows],
                neurons.delta[rows],
                neurons.a95[rows],
            )

        target, opposite = restrict(target), restrict(opposite)
    if len(target) == 0 and len(opposite) == 0:
        raise DataError(
            f"no {trait}-selective neurons in the chosen layers; widen --layers, capture more "
            "prompts, or use a direction method"
        )
    return NeuronEdit(target, opposite, gamma=gamma, positions=positions)
