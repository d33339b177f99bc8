"""Domain probes per layer: which of the five domains is this item about?

A 5-way multinomial probe and one one-vs-rest probe per domain, scored with
folds grouped by *facet* (with no facets, by item): a test item's facet is never
in training, so a probe must generalize across facets instead of recognising a
wording it has seen. The control task gives each item a random domain
(labels permuted within item-length strata, one label per item whatever the
template), scored with the same folds: its held-out score is what the probe
and the folds yield without domain information, and accuracy − control is the
selectivity (Hewitt & Liang 2019).
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from sklearn.base import BaseEstimator, ClassifierMixin
from threadpoolctl import threadpool_limits

from traitlens.artifact_io import Artifact, ModelIdentity, Saved, fields_of
from traitlens.concepts.capture import ItemActivations
from traitlens.concepts.items import ItemLike
from traitlens.errors import DataError
from traitlens.probe.folds import Fold, assign_folds
from traitlens.progress import track

FloatArray = NDArray[np.float64]


def facet_folds(
    items: Sequence[ItemLike],
    row_items: Sequence[str],
    n_folds: int,
    seed: int,
    *,
    by_item: bool = False,
) -> tuple[list[Fold], str]:
    """Folds over rows (item × template) in which no test facet has a training item.

    Facets are dealt to folds round-robin within their domain, so every test fold
    holds facets of every domain it can. A bank whose facets are one item each
    (no facet column), or ``by_item``, is grouped by item — the returned unit says which.
    """
    by_id = {i.id: i for i in items}
    groups = {i.id: (i.trait, i.id if by_item else i.facet) for i in items}
    unit = "facet" if len(set(groups.values())) < len(groups) else "item"
    keys: list[Hashable] = [groups[i] for i in sorted(groups)]
    strata: list[Hashable] = [by_id[i].trait for i in sorted(groups)]
    fold_of = assign_folds(keys, strata, n_folds, seed)
    row_fold = np.array([fold_of[groups[i]] for i in row_items], dtype=np.int64)
    folds = [
        Fold(
            train=np.flatnonzero(row_fold != k).astype(np.int64),
            test=np.flatnonzero(row_fold == k).astype(np.int64),
        )
        for k in range(n_folds)
    ]
    return [f for f in folds if len(f.test) and len(f.train)], unit


def control_domains(
    items: Sequence[ItemLike], n_tokens: dict[str, int], seed: int, strata: int = 3
) -> dict[str, str]:
    """A random domain per item: the real labels permuted within item-length strata.

    Permuting (rather than drawing) keeps the class balance; permuting within length
    strata keeps length uninformative about the control label too.
    """
    ordered = sorted(items, key=lambda i: (n_tokens.get(i.id, 0), i.id))
    rng = np.random.default_rng(seed)
    out: dict[str, str] = {}
    for chunk in np.array_split(np.arange(len(ordered)), strata):
        labels = [ordered[k].trait for k in chunk]
        for k, j in zip(chunk, rng.permutation(len(chunk)), strict=True):
            out[ordered[k].id] = labels[j]
    return out


def _standardize(x: FloatArray) -> tuple[FloatArray, FloatArray]:
    mean = x.mean(0)
    scale = x.std(0)
    return mean, np.where(scale > 1e-8, scale, 1.0)


def _fit(x: FloatArray, y: NDArray[Any], c: float) -> Any:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=c, max_iter=300, tol=1e-3)
    return model.fit(x, y)


class _DomainProbe(ClassifierMixin, BaseEstimator):
    """Per-fold standardisation (from the training rows only) then logistic regression:
    the domain probe as a scikit-learn estimator, so folds run through ``cross_validate``."""

    def __init__(self, C: float = 1.0) -> None:
        self.C = C

    def fit(self, X: FloatArray, y: NDArray[Any]) -> _DomainProbe:
        self.mean_, self.scale_ = _standardize(X)
        self.model_ = _fit((X - self.mean_) / self.scale_, y, self.C)
        self.classes_ = self.model_.classes_
        return self

    def predict(self, X: FloatArray) -> NDArray[Any]:
        return np.asarray(self.model_.predict((X - self.mean_) / self.scale_))

    def decision_function(self, X: FloatArray) -> FloatArray:
        return np.asarray(self.model_.decision_function((X - self.mean_) / self.scale_))


def _cross_validate(
    x: FloatArray, y: NDArray[Any], folds: Sequence[Fold], c: float, **options: Any
) -> dict[str, Any] | None:
    """scikit-learn's ``cross_validate`` on the explicit folds whose training rows hold
    two classes or more (None when no fold does)."""
    from sklearn.model_selection import cross_validate

    usable = [(f.train, f.test) for f in folds if len(set(y[f.train])) >= 2]
    if not usable:
        return None
    return dict(cross_validate(_DomainProbe(C=c), x, y, cv=usable, **options))


def _cv_scores(
    x: FloatArray, y: NDArray[Any], folds: Sequence[Fold], c: float
) -> tuple[float, float]:
    """Mean and SD over folds of held-out accuracy (features standardized per fold)."""
    result = _cross_validate(x, y, folds, c, scoring="accuracy")
    if result is None:
        return float("nan"), float("nan")
    scores = result["test_score"]
    return float(np.mean(scores)), float(np.std(scores))


def _ovr_auc(x: FloatArray, y: NDArray[Any], folds: Sequence[Fold], c: float, label: str) -> float:
    from sklearn.metrics import roc_auc_score

    binary = (y == label).astype(int)
    result = _cross_validate(
        x, binary, folds, c, scoring="accuracy", return_estimator=True, return_indices=True
    )
    if result is None:
        return float("nan")
    tests = result["indices"]["test"]
    truth = np.concatenate([binary[test] for test in tests])
    if len(set(truth)) < 2:
        return float("nan")
    # pooled over folds: each item is scored once, by a probe that never saw its facet
    scores = [
        model.decision_function(x[test])
        for model, test in zip(result["estimator"], tests, strict=True)
    ]
    return float(roc_auc_score(truth, np.concatenate(scores)))


def _class_weights(model: Any, traits: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class logit weights ``[T, d]`` and biases ``[T]`` in ``traits`` order. With two
    classes sklearn keeps one row ``w`` (logit of class 1); ``[−w/2, +w/2]`` gives the
    same softmax, so every probe is read the same way."""
    coef, intercept = model.coef_, model.intercept_
    if coef.shape[0] == 1:
        coef = np.concatenate([-coef / 2, coef / 2])
        intercept = np.concatenate([-intercept / 2, intercept / 2])
    order = [list(model.classes_).index(t) for t in traits]
    return torch.from_numpy(coef[order]).float(), torch.from_numpy(intercept[order]).float()


@dataclass
class DomainProbes(
    Artifact, stem="probes", kind_name="domain_probes", what="domain probe file", check_kind=True
):
    """Per-layer domain decodability and the readout probes fitted on all training items.

    ``accuracy``/``control``: held-out 5-way accuracy of the real and the control
    task (mean over folds); ``auc[t, l]``: one-vs-rest AUC of domain ``t``.
    ``weight [L, T, d]``, ``bias [L, T]``, ``mean``/``scale [L, d]``: the multinomial
    readout per layer (standardized features), used to read steered states.
    """

    identity: ModelIdentity
    traits: list[str]
    layers: list[int]
    pooling: str
    accuracy: list[float]
    accuracy_sd: list[float]
    control: list[float]
    auc: list[list[float]]
    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    scale: torch.Tensor
    fold_unit: str
    n_folds: int
    n_train_items: int
    provenance: dict[str, Any] = field(default_factory=dict)
    # 5-way accuracy with folds grouped by item only (a test item's facet-mates can be in
    # training): the gap to ``accuracy`` is how much of the decodability is facet-specific
    accuracy_item_folds: list[float] = field(default_factory=list)

    @property
    def key(self) -> str | None:
        return self.provenance.get("key")

    @property
    def chance(self) -> float:
        return 1.0 / len(self.traits)

    @property
    def selectivity(self) -> list[float]:
        return [a - c for a, c in zip(self.accuracy, self.control, strict=True)]

    def best_layer(self, after: int | None = None) -> int:
        """The most accurate layer (strictly after ``after`` when given and possible)."""
        acc = np.nan_to_num(np.asarray(self.accuracy), nan=-1.0)
        layers = np.asarray(self.layers)
        allowed = layers > after if after is not None else np.ones_like(layers, dtype=bool)
        if not allowed.any():
            allowed = layers == layers.max()
        return int(layers[int(np.argmax(np.where(allowed, acc, -np.inf)))])

    def first_layer_reaching(self, share: float = 0.9) -> int:
        """The first layer whose accuracy reaches ``share`` of the best accuracy."""
        acc = np.nan_to_num(np.asarray(self.accuracy), nan=-1.0)
        return int(self.layers[int(np.argmax(acc >= share * acc.max()))])

    def probs(self, layer: int, x: torch.Tensor) -> FloatArray:
        """Domain probabilities ``[n, T]`` of pooled states ``x [n, d]`` at ``layer``."""
        if layer not in self.layers:
            raise DataError(f"no domain probe at layer {layer}; probed layers: {self.layers}")
        k = self.layers.index(layer)
        z = (x.double() - self.mean[k].double()) / self.scale[k].double()
        logits = z @ self.weight[k].double().T + self.bias[k].double()
        return torch.softmax(logits, dim=-1).numpy()

    def summary(self) -> dict[str, Any]:
        best = self.best_layer()
        k = self.layers.index(best)
        return {
            "best_layer": best,
            "best_accuracy": self.accuracy[k],
            "control_at_best": self.control[k],
            "selectivity_at_best": self.selectivity[k],
            "first_layer_90": self.first_layer_reaching(0.9),
            "item_folds_at_best": self.accuracy_item_folds[k]
            if len(self.accuracy_item_folds) == len(self.layers)
            else float("nan"),
            "chance": self.chance,
            "fold_unit": self.fold_unit,
        }

    def _meta(self) -> dict[str, Any]:
        names = (
            "traits",
            "layers",
            "pooling",
            "accuracy",
            "accuracy_sd",
            "accuracy_item_folds",
            "control",
            "auc",
            "fold_unit",
            "n_folds",
            "n_train_items",
            "provenance",
        )
        return {**fields_of(self, names), "summary": self.summary()}

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight, "bias": self.bias, "mean": self.mean, "scale": self.scale}

    @classmethod
    def _from_saved(cls, saved: Saved) -> DomainProbes:
        meta, t = saved.meta, saved.tensors

        def floats(values: Sequence[Any]) -> list[float]:
            return [float("nan") if v is None else float(v) for v in values]

        return cls(
            saved.identity,
            list(meta["traits"]),
            list(meta["layers"]),
            str(meta["pooling"]),
            floats(meta["accuracy"]),
            floats(meta["accuracy_sd"]),
            floats(meta["control"]),
            [floats(row) for row in meta["auc"]],
            t["weight"],
            t["bias"],
            t["mean"],
            t["scale"],
            str(meta["fold_unit"]),
            int(meta["n_folds"]),
            int(meta["n_train_items"]),
            dict(meta.get("provenance") or {}),
            floats(meta.get("accuracy_item_folds") or []),
        )


def fit_domain_probes(
    acts: ItemActivations,
    items: Sequence[ItemLike],
    train_ids: Sequence[str],
    *,
    traits: Sequence[str],
    pooling: str = "mean",
    layers: Sequence[int] | None = None,
    folds: int = 5,
    c: float = 0.05,
    seed: int = 0,
    progress: bool = True,
) -> DomainProbes:
    """Cross-validated domain decodability per layer on training items (all templates),
    and one readout probe per layer fitted on all of them."""
    if pooling not in acts.pooled:
        raise DataError(f"pooling {pooling!r} was not captured (have {', '.join(acts.pooled)})")
    by_id = {i.id: i for i in items}
    train = [i for i in train_ids if i in by_id]
    rows = acts.rows(train)
    row_items = [acts.item_ids[r] for r in rows]
    y = np.array([by_id[i].trait for i in row_items])
    missing = sorted(set(traits) - set(y))
    if missing:
        raise DataError(f"no training items for {', '.join(missing)}; the bank needs every domain")
    fold_list, unit = facet_folds([by_id[i] for i in train], row_items, folds, seed)
    # folds by item only (facet-mates may train): how much decodability is facet-specific
    item_folds = (
        facet_folds([by_id[i] for i in train], row_items, folds, seed, by_item=True)[0]
        if unit == "facet"
        else fold_list
    )
    counts = dict(zip(acts.item_ids, acts.n_tokens, strict=True))
    control_of = control_domains([by_id[i] for i in train], counts, seed + 7)
    y_control = np.array([control_of[i] for i in row_items])
    layer_list = list(acts.layers if layers is None else layers)
    result: dict[str, list[Any]] = {
        k: [] for k in ("acc", "sd", "ctl", "auc", "w", "b", "m", "s", "item")
    }
    stacked = acts.pooled[pooling]
    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs convergence chatter at tol=1e-3
        for layer in track(layer_list, len(layer_list), "domain probes", progress):
            x = stacked[rows, acts.layer_index(layer)].double().numpy()
            acc, sd = _cv_scores(x, y, fold_list, c)
            result["acc"].append(acc)
            result["sd"].append(sd)
            result["ctl"].append(_cv_scores(x, y_control, fold_list, c)[0])
            result["item"].append(acc if unit == "item" else _cv_scores(x, y, item_folds, c)[0])
            result["auc"].append([_ovr_auc(x, y, fold_list, c, t) for t in traits])
            mean, scale = _standardize(x)
            model = _fit((x - mean) / scale, y, c)
            weight, bias = _class_weights(model, traits)
            result["w"].append(weight)
            result["b"].append(bias)
            result["m"].append(torch.from_numpy(mean).float())
            result["s"].append(torch.from_numpy(scale).float())
    return DomainProbes(
        acts.identity,
        list(traits),
        layer_list,
        pooling,
        result["acc"],
        result["sd"],
        result["ctl"],
        [list(col) for col in zip(*result["auc"], strict=True)],
        torch.stack(result["w"]),
        torch.stack(result["b"]),
        torch.stack(result["m"]),
        torch.stack(result["s"]),
        unit,
        len(fold_list),
        len(train),
        accuracy_item_folds=result["item"],
    )
