"""Fit every probe at every layer with grouped cross-validation and a control task."""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.dummy import DummyClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import r2_score
from sklearn.model_selection import cross_validate
from threadpoolctl import threadpool_limits

from traitlens.capture.artifacts import Activations
from traitlens.data import TRAITS, parse_traits
from traitlens.data.schema import LabelledPrompt
from traitlens.errors import DataError
from traitlens.probe.artifact import WHICH_TRAIT, CurveScores, ProbeSet
from traitlens.probe.estimators import LinearProbe, RidgeProbe
from traitlens.probe.folds import Fold, GroupedFolds, control_labels, grouped_folds
from traitlens.progress import track
from traitlens.provenance import Job, Provenance, computed, provenance

POLES = ("high", "low")


@dataclass(frozen=True)
class _Task:
    """One probe problem: rows (into the used prompts), targets, control targets, folds."""

    name: str
    key: str
    rows: NDArray[np.int64]
    y: NDArray[Any]
    y_control: NDArray[Any]
    folds: list[Fold]
    metric: str
    chance: float


def _subseed(seed: int, *names: str) -> int:
    return (seed * 1_000_003 + zlib.crc32("|".join(names).encode())) % (2**32)


def _resolve_traits(traits: str | Sequence[str] | None, prompts: Sequence[Any]) -> list[str]:
    present = {p.trait for p in prompts if p.pole in POLES}
    if traits is None:
        codes = [t for t in TRAITS if t in present]
        if not codes:
            raise DataError("no prompt has pole 'high' or 'low'; build a contrastive set first")
    else:
        codes = parse_traits(traits)
    for code in codes:
        for pole in POLES:
            if not any(p.trait == code and p.pole == pole for p in prompts):
                raise DataError(
                    f"trait {code} has no '{pole}'-pole prompts, so no probe can separate its "
                    f"poles; include both poles of {code} in the prompt set or leave {code} out "
                    "(--traits)"
                )
    return codes


def _subset_folds(folds: list[Fold], rows: NDArray[np.int64], n_used: int) -> list[Fold]:
    """Restrict global folds (indices into the used prompts) to a task's rows, re-indexed."""
    position = np.full(n_used, -1, dtype=np.int64)
    position[rows] = np.arange(rows.size)
    out = []
    for fold in folds:
        train, test = position[fold.train], position[fold.test]
        out.append(Fold(train=train[train >= 0], test=test[test >= 0]))
    return out


def _score(probe: Any, X: NDArray[Any], y: NDArray[Any], metric: str) -> float:
    if y.size == 0:
        return float("nan")
    predicted = probe.predict(X)
    if metric == "accuracy":
        return float(np.mean(predicted == y))
    if np.unique(y).size < 2:  # R² is undefined for a constant target
        return float("nan")
    return float(r2_score(y, predicted))


class _OneClassFallback(ClassifierMixin, BaseEstimator):
    """``estimator``, except on a training fold that holds one class (a tiny design can
    leave one): then the constant prediction of that class, the best any probe can do."""

    def __init__(self, estimator: Any) -> None:
        self.estimator = estimator

    def fit(self, X: NDArray[Any], y: NDArray[Any]) -> _OneClassFallback:
        one_class = np.unique(y).size < 2
        model = DummyClassifier(strategy="most_frequent") if one_class else clone(self.estimator)
        self.fitted_ = model.fit(X, y)
        return self

    def predict(self, X: NDArray[Any]) -> NDArray[Any]:
        return np.asarray(self.fitted_.predict(X))


def _cross_validate(
    probe: Any, X: NDArray[Any], y: NDArray[Any], folds: list[Fold], metric: str
) -> list[float]:
    """Held-out score per fold: scikit-learn's ``cross_validate`` on our explicit grouped
    folds (a fresh clone of ``probe`` per fold; NaN where a score is undefined)."""
    result = cross_validate(
        _OneClassFallback(probe) if metric == "accuracy" else probe,
        X,
        y,
        cv=[(fold.train, fold.test) for fold in folds],
        scoring=lambda model, X_test, y_test: _score(model, X_test, y_test, metric),
        error_score="raise",
    )
    return [float(score) for score in result["test_score"]]


def probes_job(
    activations: Activations,
    prompts: Sequence[LabelledPrompt],
    traits: str | Sequence[str] | None = None,
    kind: str = "resid",
    pooling: str = "mean",
    folds: int = 5,
    seed: int = 0,
    *,
    C: float = 0.1,
    alpha: float = 100.0,
    max_iter: int = 200,
    progress: bool = True,
) -> Job[ProbeSet]:
    """Fit per-layer trait probes with grouped CV, a control task and selectivity (this
    builds the job; :func:`fit_probes` computes it).

    For every captured layer of ``activations.get(kind, pooling)``
    (``[n_prompts, n_layers, d_model]``, rows matched to ``prompts`` by id):

    - ``binary``: per trait, a standardized logistic probe separating the high
      from the low pole (accuracy);
    - ``intensity``: per trait, a ridge probe predicting persona intensity 1–5
      over all that trait's prompts, neutral ones included if present (R²);
    - ``trait``: one multinomial probe naming which trait a polar persona
      expresses (accuracy; needs ≥ 2 traits).

    Scores are held out with :func:`grouped_folds` (no test prompt shares its
    question or persona with training) and reported per fold; the control is
    the same probe, on the same splits, trained on the labels shifted by a
    random per-question amount, balanced per fold (:func:`control_labels`),
    and selectivity is score − control (Hewitt & Liang 2019). ``folds`` is
    reduced (and the reduction recorded in ``config["folds"]``) when there are
    fewer questions, or personas per trait pole, than folds. The returned
    probes' weights come from a final fit on all prompts.

    BLAS is limited to one thread while fitting: the problems are small
    (~hundreds × d_model), where thread start-up costs more than it saves and
    oversubscribed cores slow lbfgs by an order of magnitude.
    """
    if not prompts:
        raise DataError("fit_probes got no prompts; pass the run's prompts.jsonl records")
    codes = _resolve_traits(traits, prompts)
    used, features = _used_features(activations, kind, pooling, prompts, codes)
    plan = _fold_plan(used, folds, seed)
    tasks = _build_tasks(used, codes, plan, seed)
    config = _fit_config(
        plan, folds, seed, C=C, alpha=alpha, max_iter=max_iter, n_prompts=len(used)
    )
    prov = _probe_provenance(activations, kind, pooling, codes, used, features, config)
    config["inputs_key"] = prov.key
    config["provenance"] = prov.to_dict()

    def compute() -> ProbeSet:
        fitted = _fit_layers(features, tasks, codes, C, alpha, max_iter, progress)
        return fitted.probe_set(activations, codes, kind, pooling, config)

    return Job(ProbeSet, "probes", prov, compute, activations.identity)


fit_probes = computed(probes_job, "fit_probes")


def _used_features(
    activations: Activations,
    kind: str,
    pooling: str,
    prompts: Sequence[LabelledPrompt],
    codes: list[str],
) -> tuple[list[LabelledPrompt], NDArray[np.float32]]:
    """The prompts of the selected traits and their features ``[n, n_layers, d_model]``
    (rows matched by prompt id; a prompt without a captured row is refused)."""
    features_all = activations.get(kind, pooling)
    row_of = {pid: i for i, pid in enumerate(activations.prompt_ids)}
    used = [p for p in prompts if p.trait in codes]
    missing = [p.id for p in used if p.id not in row_of]
    if missing:
        raise DataError(
            f"{len(missing)} prompts have no captured activations (e.g. {missing[0]!r}); "
            "capture the same prompts.jsonl again so every prompt has a row"
        )
    return used, features_all[[row_of[p.id] for p in used]].float().numpy()


def _fold_plan(used: Sequence[LabelledPrompt], folds: int, seed: int) -> GroupedFolds:
    """The grouped folds over questions and personas, stratified by (trait, pole):
    ``folds`` of them, reduced to the number of distinct questions or of personas of the
    sparsest trait pole (a grouped fold needs one of each on its test side)."""
    polar_personas: dict[tuple[str, str], set[str]] = {}
    for p in used:
        if p.pole in POLES:
            polar_personas.setdefault((p.trait, p.pole), set()).add(p.persona_id)
    n_questions = len({p.question_id for p in used})
    fewest = min(len(v) for v in polar_personas.values())
    n_folds = min(folds, n_questions, fewest)
    if n_folds < 2:
        raise DataError(
            f"grouped cross-validation needs at least 2 distinct questions and 2 personas per "
            f"trait pole; got {n_questions} questions and as few as {fewest} personas for a "
            "pole — build a larger contrastive set"
        )
    plan = grouped_folds(
        [p.question_id for p in used],
        [p.persona_id for p in used],
        [(p.trait, p.pole) for p in used],
        n_folds,
        seed,
    )
    return plan


def _fit_config(
    plan: GroupedFolds, folds_requested: int, seed: int, **hyperparameters: Any
) -> dict[str, Any]:
    """What a probe set records of how it was fitted (part of its input key)."""
    return {
        "folds": len(plan.splits),
        "folds_requested": folds_requested,
        "seed": seed,
        **hyperparameters,
        "test_sizes": [int(f.test.size) for f in plan.splits],
        "train_sizes": [int(f.train.size) for f in plan.splits],
        "control": "labels cyclically shifted per question (balanced per fold); same splits",
    }


def _probe_provenance(
    activations: Activations,
    kind: str,
    pooling: str,
    codes: list[str],
    used: Sequence[LabelledPrompt],
    features: NDArray[np.float32],
    config: dict[str, Any],
) -> Provenance:
    """The probe set's inputs: the fit ``config``, which features, the training labels
    and the capture it reads."""
    return provenance(
        "probes",
        model=activations.identity,
        config={
            **config,
            "kind": kind,
            "pooling": pooling,
            "traits": codes,
            "layers": activations.layers,
        },
        data=[_label_row(p) for p in used],
        # a capture built by hand has no key: its tensors stand in for it
        tensors=() if activations.key else (features,),
        upstream={activations.stage: activations.key},
    )


def _label_row(p: LabelledPrompt) -> dict[str, Any]:
    """What a probe set's key records of one training prompt."""
    return {
        "id": p.id,
        "trait": p.trait,
        "pole": p.pole,
        "intensity": int(p.intensity),
        "persona": p.persona_id,
        "question": p.question_id,
    }


@dataclass
class _Fitted:
    """Per-task held-out scores and the final fits' weights ``[trait, layer, d_model]``
    (``[layer, trait, d_model]`` for "which trait"), filled layer by layer."""

    weights: dict[str, NDArray[np.float32]]
    biases: dict[str, NDArray[np.float32]]
    scores: dict[str, dict[str, CurveScores]]

    def probe_set(
        self,
        activations: Activations,
        codes: list[str],
        kind: str,
        pooling: str,
        config: dict[str, Any],
    ) -> ProbeSet:
        """The artifact (no "which trait" probe for a single trait)."""

        def tensor(table: dict[str, NDArray[np.float32]], task: str) -> torch.Tensor | None:
            return torch.from_numpy(table[task]) if task != "trait" or len(codes) > 1 else None

        return ProbeSet(
            identity=activations.identity,
            traits=codes,
            layers=list(activations.layers),
            kind=kind,
            pooling=pooling,
            binary_weight=torch.from_numpy(self.weights["binary"]),
            binary_bias=torch.from_numpy(self.biases["binary"]),
            intensity_weight=torch.from_numpy(self.weights["intensity"]),
            intensity_bias=torch.from_numpy(self.biases["intensity"]),
            trait_weight=tensor(self.weights, "trait"),
            trait_bias=tensor(self.biases, "trait"),
            scores=self.scores,
            config=config,
        )


def _fit_layers(
    features: NDArray[np.float32],
    tasks: list[_Task],
    codes: list[str],
    C: float,
    alpha: float,
    max_iter: int,
    progress: bool,
) -> _Fitted:
    """Cross-validate every task (and its control) at every layer, then fit it on all
    rows for the weights."""
    n_layers, d_model = features.shape[1], features.shape[2]
    per_fold: dict[tuple[str, str], list[list[float]]] = {(t.name, t.key): [] for t in tasks}
    control: dict[tuple[str, str], list[list[float]]] = {(t.name, t.key): [] for t in tasks}
    shapes = {"binary": (len(codes), n_layers), "intensity": (len(codes), n_layers)}
    shapes["trait"] = (n_layers, len(codes))
    weights = {name: np.zeros((*shape, d_model), np.float32) for name, shape in shapes.items()}
    biases = {name: np.zeros(shape, np.float32) for name, shape in shapes.items()}

    def make(task: _Task) -> Any:
        return (
            RidgeProbe(alpha=alpha) if task.metric == "r2" else LinearProbe(C=C, max_iter=max_iter)
        )

    with threadpool_limits(limits=1), warnings.catch_warnings():
        # max_iter is modest by design (speed); a not-fully-converged probe is
        # still a valid, regularized linear read-out
        warnings.simplefilter("ignore", ConvergenceWarning)
        for column in track(range(n_layers), n_layers, "fitting probes", progress):
            layer_features = features[:, column].astype(np.float64)
            for task in tasks:
                X = layer_features[task.rows]
                per_fold[(task.name, task.key)].append(
                    _cross_validate(make(task), X, task.y, task.folds, task.metric)
                )
                control[(task.name, task.key)].append(
                    _cross_validate(make(task), X, task.y_control, task.folds, task.metric)
                )
                final = make(task).fit(X, task.y)
                if task.name == "trait":
                    weights["trait"][column] = final.coef_
                    biases["trait"][column] = final.intercept_
                else:
                    index = codes.index(task.key)
                    weights[task.name][index, column] = final.coef_.reshape(-1)
                    biases[task.name][index, column] = final.intercept_.reshape(-1)[0]

    scores: dict[str, dict[str, CurveScores]] = {}
    for task in tasks:
        scores.setdefault(task.name, {})[task.key] = CurveScores(
            metric=task.metric,
            chance=task.chance,
            per_fold=per_fold[(task.name, task.key)],
            control_per_fold=control[(task.name, task.key)],
        )
    return _Fitted(weights, biases, scores)


def _build_tasks(
    used: Sequence[LabelledPrompt], codes: list[str], plan: GroupedFolds, seed: int
) -> list[_Task]:
    """The binary and intensity problems per trait, plus the "which trait" problem."""

    def task(name: str, key: str, rows: list[int], y: NDArray[Any], metric: str) -> _Task:
        index = np.asarray(rows, dtype=np.int64)
        control = control_labels(
            y.tolist(),
            [used[i].question_id for i in index],
            plan.question_fold[index].tolist(),
            _subseed(seed, name, key),
        )
        if metric == "r2":
            chance = 0.0
        else:
            chance = float(np.bincount(y).max() / y.size)
        return _Task(
            name,
            key,
            index,
            y,
            np.asarray(control, dtype=y.dtype),
            _subset_folds(plan.splits, index, len(used)),
            metric,
            chance,
        )

    tasks: list[_Task] = []
    for code in codes:
        rows = [i for i, p in enumerate(used) if p.trait == code and p.pole in POLES]
        y = np.array([int(used[i].pole == "high") for i in rows])
        tasks.append(task("binary", code, rows, y, "accuracy"))
    for code in codes:
        rows = [i for i, p in enumerate(used) if p.trait == code]
        y = np.array([float(used[i].intensity) for i in rows])
        tasks.append(task("intensity", code, rows, y, "r2"))
    if len(codes) > 1:
        rows = [i for i, p in enumerate(used) if p.pole in POLES]
        y = np.array([codes.index(used[i].trait) for i in rows])
        tasks.append(task("trait", WHICH_TRAIT, rows, y, "accuracy"))
    return tasks
