"""``ProbeSet``: per-layer probe weights and cross-validated scores, as one artifact.

Later stages use it to read a trait off any hidden state
(``probes.readout(hidden, layer)``) and to pick a layer
(``probes.best_layer(trait)``). Weights live in ``probes.safetensors`` with
the feature scaler already folded in (raw activation units); scores and
metadata in ``probes.json``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from traitlens.artifact_io import Artifact, ModelIdentity, Saved, fields_of
from traitlens.errors import DataError, index_of

TASKS = ("binary", "intensity", "trait")
"""Probe tasks: high vs low pole per trait (accuracy), persona intensity 1–5 per trait
(R²), and which of the traits a persona expresses (accuracy, one 5-way probe)."""

WHICH_TRAIT = "all"
"""Key under which the single "which trait" probe's scores are stored."""


def first_layer_reaching(
    scores: Sequence[float], fraction: float = 0.9, chance: float = 0.0
) -> int | None:
    """Index of the first entry reaching ``fraction`` of the best score *above chance*.

    Threshold: ``chance + fraction × (max − chance)``. Measuring from chance
    rather than from zero keeps accuracy (chance 0.5) comparable with R²
    (chance 0): 90 % of a best accuracy of 0.8 is reached at 0.77, not at
    0.72, which even a weak early layer would pass. ``None`` when no entry
    beats chance (no depth carries the trait) or every score is NaN.
    """
    values = np.asarray(scores, dtype=np.float64)
    if values.size == 0 or np.all(np.isnan(values)):
        return None
    best = float(np.nanmax(values))
    if best <= chance:
        return None
    threshold = chance + fraction * (best - chance)
    return int(np.flatnonzero(np.nan_to_num(values, nan=-np.inf) >= threshold - 1e-12)[0])


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


def _stats(per_fold: list[list[float]]) -> tuple[list[float], list[float]]:
    """Mean and sample sd over folds for each layer; NaN folds (undefined scores) skipped."""
    means, sds = [], []
    for row in per_fold:
        values = np.asarray([v for v in row if not math.isnan(v)], dtype=np.float64)
        means.append(float(values.mean()) if values.size else math.nan)
        sds.append(float(values.std(ddof=1)) if values.size > 1 else math.nan)
    return means, sds


@dataclass(frozen=True)
class CurveScores:
    """Held-out scores of one probe task for one trait, per layer.

    ``per_fold[j]`` holds the fold scores at the j-th captured layer and
    ``control_per_fold[j]`` those of the same probe on control-task labels
    (shifted per question, see :func:`~traitlens.probe.folds.control_labels`).
    ``metric`` is ``"accuracy"`` or ``"r2"``; ``chance`` the score a probe with
    no information gets (0.5 binary, 1/n_traits for "which trait", 0 for R²).
    """

    metric: str
    chance: float
    per_fold: list[list[float]]
    control_per_fold: list[list[float]]

    # per-layer mean and sample sd over folds, of the task and of the control task:
    # derived once here (tables and figures read them per layer)
    mean: list[float] = field(init=False, compare=False, repr=False)
    sd: list[float] = field(init=False, compare=False, repr=False)
    control_mean: list[float] = field(init=False, compare=False, repr=False)
    control_sd: list[float] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        for prefix, folds in (("", self.per_fold), ("control_", self.control_per_fold)):
            mean, sd = _stats(folds)
            object.__setattr__(self, f"{prefix}mean", mean)
            object.__setattr__(self, f"{prefix}sd", sd)

    @property
    def selectivity(self) -> list[float]:
        """Score − control at each layer (Hewitt & Liang 2019's selectivity)."""
        return [s - c for s, c in zip(self.mean, self.control_mean, strict=True)]

    def depth_90(self) -> int | None:
        """Column index of the first layer reaching 90 % of the best score above chance."""
        return first_layer_reaching(self.mean, 0.9, self.chance)

    def to_dict(self) -> dict[str, Any]:
        names = ("metric", "chance", "mean", "sd", "control_mean", "control_sd", "selectivity")
        return {
            **fields_of(self, names),
            "per_fold": self.per_fold,
            "control_per_fold": self.control_per_fold,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CurveScores:
        return cls(
            metric=str(data["metric"]),
            chance=float(data["chance"]),
            per_fold=[[_float(v) for v in row] for row in data["per_fold"]],
            control_per_fold=[[_float(v) for v in row] for row in data["control_per_fold"]],
        )


def _weight_names(tasks: Sequence[str]) -> dict[str, str]:
    """``{field: tensor name}`` of the tasks' weights and biases: the field
    ``binary_weight`` is saved as ``binary.weight``, in both directions."""
    return {f"{task}_{part}": f"{task}.{part}" for task in tasks for part in ("weight", "bias")}


@dataclass(frozen=True, eq=False)
class ProbeSet(Artifact):
    """Per-layer linear probes for each trait, fitted on all prompts, plus CV scores.

    Tensors (float32, raw activation units — standardization folded in):

    - ``binary_weight`` ``[n_traits, n_layers, d_model]``, ``binary_bias``
      ``[n_traits, n_layers]``: logistic probes, high pole = positive class;
    - ``intensity_weight`` / ``intensity_bias``: same shapes, ridge probes
      predicting persona intensity on the 1–5 scale;
    - ``trait_weight`` ``[n_layers, n_traits, d_model]`` / ``trait_bias``
      ``[n_layers, n_traits]``: the multinomial "which trait" probe (absent,
      i.e. ``None``, with a single trait).

    ``scores[task][trait]`` (task in :data:`TASKS`; the trait probe under
    :data:`WHICH_TRAIT`) holds the cross-validated :class:`CurveScores`.
    """

    identity: ModelIdentity
    traits: list[str]
    layers: list[int]
    kind: str
    pooling: str
    binary_weight: torch.Tensor
    binary_bias: torch.Tensor
    intensity_weight: torch.Tensor
    intensity_bias: torch.Tensor
    trait_weight: torch.Tensor | None
    trait_bias: torch.Tensor | None
    scores: dict[str, dict[str, CurveScores]]
    config: dict[str, Any] = field(default_factory=dict)

    stem = "probes"
    kind_name = "probes"
    what = "probe set"

    def _trait_index(self, trait: str) -> int:
        return index_of(
            self.traits,
            trait.strip().upper(),
            lambda: DataError(
                f"no probe for trait {trait!r}; this probe set has {', '.join(self.traits)} — "
                "fit probes with that trait included"
            ),
        )

    def _column(self, layer: int) -> int:
        return index_of(
            self.layers,
            layer + self.identity.n_layers if layer < 0 else layer,
            lambda: DataError(
                f"no probe at layer {layer}; probes exist for layers {self.layers[0]}.."
                f"{self.layers[-1]} — capture and fit that layer first"
            ),
        )

    def readout(self, hidden: torch.Tensor, layer: int, task: str = "binary") -> torch.Tensor:
        """Read every trait off hidden states ``[..., d_model]`` at a model layer → ``[..., T]``.

        ``task="binary"`` (default): the logistic probe's decision value, i.e.
        the log-odds that the hidden state comes from the trait's *high* pole
        (0 = undecided, logit units so values add across layers and compare
        across traits; ``torch.sigmoid`` gives the probability).
        ``"intensity"``: predicted intensity on the 1–5 persona scale.
        ``"trait"``: multinomial logits over ``traits`` (softmax for probabilities).
        Computed in float32 on ``hidden``'s device; the hidden state must have
        been pooled the way the probes were fitted (see ``kind``/``pooling``).
        """
        column = self._column(layer)
        if task == "binary":
            weight, bias = self.binary_weight[:, column], self.binary_bias[:, column]
        elif task == "intensity":
            weight, bias = self.intensity_weight[:, column], self.intensity_bias[:, column]
        elif task == "trait":
            if self.trait_weight is None or self.trait_bias is None:
                raise DataError("this probe set has one trait, so no 'which trait' probe")
            weight, bias = self.trait_weight[column], self.trait_bias[column]
        else:
            raise DataError(f"unknown probe task {task!r}; use one of {', '.join(TASKS)}")
        if hidden.shape[-1] != weight.shape[-1]:
            raise DataError(
                f"hidden states have width {hidden.shape[-1]} but the probes expect "
                f"{weight.shape[-1]} (d_model of {self.identity.name}); pass [..., d_model]"
            )
        h = hidden.to(torch.float32)
        return h @ weight.to(h.device).T + bias.to(h.device)

    def curve(self, trait: str, task: str = "binary") -> CurveScores:
        """Cross-validated scores of one task for one trait (``WHICH_TRAIT`` for ``"trait"``)."""
        if task not in self.scores:
            raise DataError(f"no scores for task {task!r}; have {', '.join(self.scores)}")
        key = WHICH_TRAIT if task == "trait" else self.traits[self._trait_index(trait)]
        return self.scores[task][key]

    def best_layer(self, trait: str, task: str = "binary", by: str = "selectivity") -> int:
        """The model layer where the trait is best decoded held-out.

        ``by="selectivity"`` (default) maximizes score − control, so a layer
        that only decodes persona artefacts does not win; ``by="score"`` uses
        the raw held-out score. Ties go to the shallower layer.
        """
        curve = self.curve(trait, task)
        values = {"selectivity": curve.selectivity, "score": curve.mean}.get(by)
        if values is None:
            raise DataError(f"unknown criterion by={by!r}; use 'selectivity' or 'score'")
        array = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=-np.inf)
        return self.layers[int(np.argmax(array))]

    def depth_90(self, trait: str, task: str = "binary") -> int | None:
        """First model layer reaching 90 % of the trait's best held-out score above chance."""
        column = self.curve(trait, task).depth_90()
        return None if column is None else self.layers[column]

    def summary(self) -> dict[str, Any]:
        """Per task and trait: best layer, best score ± sd, control there, depth-90 layer."""
        out: dict[str, Any] = {}
        for task, curves in self.scores.items():
            out[task] = {}
            for key, curve in curves.items():
                trait = self.traits[0] if key == WHICH_TRAIT else key
                best = self.best_layer(trait, task)
                column = self.layers.index(best)
                out[task][key] = {
                    "metric": curve.metric,
                    "best_layer": best,
                    "score": curve.mean[column],
                    "sd": curve.sd[column],
                    "control": curve.control_mean[column],
                    "selectivity": curve.selectivity[column],
                    "depth_90": self.depth_90(trait, task),
                }
        return out

    def _tensors(self) -> dict[str, torch.Tensor]:
        """``{task}.weight`` / ``{task}.bias`` for each fitted task (``trait`` is optional)."""
        tasks = ["binary", "intensity"]
        if self.trait_weight is not None and self.trait_bias is not None:
            tasks.append("trait")
        return {name: getattr(self, attr) for attr, name in _weight_names(tasks).items()}

    @classmethod
    def _from_saved(cls, saved: Saved) -> ProbeSet:
        meta, tensors = saved.meta, saved.tensors
        traits, layers = list(meta["traits"]), [int(v) for v in meta["layers"]]
        scores = {
            task: {key: CurveScores.from_dict(c) for key, c in curves.items()}
            for task, curves in meta["scores"].items()
        }
        # binary and intensity are required; a single trait has no "which trait" probe
        # (its tensors are absent, the fields None)
        weights: dict[str, Any] = {
            attr: tensors.get(name) if name.startswith("trait.") else tensors[name]
            for attr, name in _weight_names(TASKS).items()
        }
        probes = cls(
            identity=saved.identity,
            traits=traits,
            layers=layers,
            kind=str(meta["hook_kind"]),
            pooling=str(meta["pooling"]),
            **weights,
            scores=scores,
            config=dict(meta.get("config", {})),
        )
        expected = (len(traits), len(layers), saved.identity.d_model)
        if tuple(probes.binary_weight.shape) != expected:
            shape = tuple(probes.binary_weight.shape)
            raise saved.mismatch(f"weights {shape}, not {expected} (traits × layers × d_model)")
        return probes

    def _meta(self) -> dict[str, Any]:
        return {
            "traits": self.traits,
            "layers": self.layers,
            "hook_kind": self.kind,
            "pooling": self.pooling,
            "readout": "binary: log-odds of the high pole; intensity: 1-5; trait: logits",
            "summary": self.summary(),
            "scores": {
                task: {key: curve.to_dict() for key, curve in curves.items()}
                for task, curves in self.scores.items()
            },
            "config": self.config,
        }
