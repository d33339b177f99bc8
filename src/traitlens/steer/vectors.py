"""Trait vectors: per-layer directions in a model-independent strength unit, as artifacts.

A :class:`TraitVector` stores, for each layer, the step that *one unit of
strength* adds to the residual stream: ``spread[l] · û[l]``, where ``û[l]`` is
the unit direction toward the trait's high pole and ``spread[l]`` the standard
deviation of the captured activations projected on ``û[l]``. So
``AddDirection(v, strength=2)`` pushes two standard deviations along the trait
axis on a 135M model and on a 70B model alike; raw-norm strengths (ActAdd's
coefficient, repeng's ``coeff``) do not transfer between models or layers.

Vectors support repeng's algebra (``a + b``, ``a - b``, ``c * a``, ``-a``) and
refuse to mix models or hook points. A :class:`VectorSet` keeps all vectors of
a run, keyed by ``(trait, method)``, in ``RUN/vectors.safetensors`` +
``RUN/vectors.json``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from traitlens import __version__
from traitlens.artifact_io import load_tensors, read_json, write_artifact
from traitlens.data.schema import LabelledPrompt
from traitlens.errors import ArtifactError, DataError, InterventionError
from traitlens.models.loading import ModelIdentity, require_identity
from traitlens.steer import directions as dirs

if TYPE_CHECKING:
    from traitlens.capture.artifacts import Activations
    from traitlens.models.loading import TraitModel

METHODS = ("mean_diff", "pca", "regression", "probe")
"""Direction estimators :func:`trait_vector` knows (see :mod:`traitlens.steer.directions`)."""

HOOK_KINDS = ("resid", "attn_out")
"""Hook-point kinds a direction can live at (both are ``[batch, seq, d_model]``)."""


class ProbeWeights(Protocol):
    """The part of the probe stage's ``ProbeSet`` used here: logistic probe normals
    ``binary_weight`` ``[n_traits, n_layers, d_model]`` (high pole = positive class)."""

    @property
    def identity(self) -> ModelIdentity: ...

    @property
    def traits(self) -> list[str]: ...

    @property
    def layers(self) -> list[int]: ...

    @property
    def binary_weight(self) -> torch.Tensor: ...


def _stem(path: str | Path) -> Path:
    path = Path(path)
    return path.with_suffix("") if path.suffix in (".safetensors", ".json") else path


def _read_artifact(stem: Path, what: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    meta = read_json(stem.with_suffix(".json"), f"build the {what} first (traitlens steer)")
    return meta, load_tensors(stem.with_suffix(".safetensors"))


@dataclass(frozen=True, eq=False)
class TraitVector:
    """Per-layer steering steps for one trait, from one model, at one hook-point kind.

    - ``vectors`` ``[n_layers, d_model]`` float32: what strength 1 adds at each of
      ``layers`` (``spread[l] · û[l]``, pointing toward ``pole``);
    - ``spread`` ``[n_layers]``: std of the captured activations projected on
      ``û[l]`` — the strength unit (for a vector made by algebra, the norm of the
      combined step);
    - ``norms`` ``[n_layers]``: size of the raw estimate before normalisation
      (centroid distance for ``mean_diff``, RMS paired difference along the axis for
      ``pca``, ‖ridge / probe weights‖ for ``regression`` / ``probe``);
    - ``pole``: the pole a *positive* strength moves toward ("high" for built
      vectors; negation flips it);
    - ``source``: where it came from (prompt counts, prompt hash, run dir, …).
    """

    identity: ModelIdentity
    trait: str
    method: str
    layers: tuple[int, ...]
    vectors: torch.Tensor
    spread: torch.Tensor
    norms: torch.Tensor
    hook: str = "resid"
    pole: str = "high"
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        layers = tuple(int(layer) for layer in self.layers)
        if not layers:
            raise InterventionError("a trait vector needs a direction for at least one layer")
        if len(set(layers)) != len(layers) or list(layers) != sorted(layers):
            raise InterventionError(
                f"trait vector layers must be distinct and increasing, got {list(layers)}"
            )
        if self.hook not in HOOK_KINDS:
            raise InterventionError(
                f"trait vectors live at {' or '.join(HOOK_KINDS)} hook points, not {self.hook!r}"
            )
        vectors = torch.as_tensor(self.vectors).detach().to("cpu", torch.float32).contiguous()
        spread = torch.as_tensor(self.spread).detach().to("cpu", torch.float32).reshape(-1)
        norms = torch.as_tensor(self.norms).detach().to("cpu", torch.float32).reshape(-1)
        if vectors.ndim != 2 or vectors.shape[0] != len(layers):
            raise InterventionError(
                f"trait vector tensor must be [n_layers={len(layers)}, d_model], got "
                f"{list(vectors.shape)}"
            )
        if spread.numel() != len(layers) or norms.numel() != len(layers):
            raise InterventionError(
                f"spread and norms need one value per layer ({len(layers)}), got "
                f"{spread.numel()} and {norms.numel()}"
            )
        for name, tensor in (("direction", vectors), ("spread", spread), ("norm", norms)):
            bad = ~torch.isfinite(tensor.reshape(len(layers), -1)).all(-1)
            if bool(bad.any()):
                where = [layers[i] for i in torch.nonzero(bad).flatten().tolist()]
                raise InterventionError(
                    f"{self.trait}/{self.method} trait vector has NaN or inf {name} values at "
                    f"layer(s) {where}; it cannot be applied — rebuild it from finite "
                    "activations (check the capture for NaN, e.g. fp16 overflow)"
                )
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "vectors", vectors)
        object.__setattr__(self, "spread", spread)
        object.__setattr__(self, "norms", norms)
        object.__setattr__(self, "source", dict(self.source))

    # ------------------------------------------------------------------ access
    @property
    def d_model(self) -> int:
        return int(self.vectors.shape[1])

    def layer_index(self, layer: int) -> int:
        """Row of ``layer`` in ``vectors``; InterventionError naming the covered layers."""
        if layer not in self.layers:
            raise InterventionError(
                f"the {self.trait}/{self.method} vector has no direction at layer {layer}; it "
                f"covers layers {_layer_text(self.layers)} — pick layers among those"
            )
        return self.layers.index(layer)

    def step(self, layer: int) -> torch.Tensor:
        """``[d_model]``: what strength 1 adds at ``layer``."""
        return self.vectors[self.layer_index(layer)]

    def direction(self, layer: int) -> torch.Tensor:
        """``[d_model]`` unit direction at ``layer`` (toward ``pole``)."""
        return dirs.unit(self.step(layer))

    def select(self, layers: Sequence[int]) -> TraitVector:
        """The same vector restricted to ``layers`` (each must be covered)."""
        rows = [self.layer_index(int(layer)) for layer in sorted(set(layers))]
        return replace(
            self,
            layers=tuple(self.layers[r] for r in rows),
            vectors=self.vectors[rows],
            spread=self.spread[rows],
            norms=self.norms[rows],
        )

    def cosine(self, other: TraitVector) -> dict[int, float]:
        """Cosine similarity with ``other`` at every layer both cover."""
        self._check_compatible(other, "compare")
        return {
            layer: float(
                torch.nn.functional.cosine_similarity(
                    self.step(layer).double(), other.step(layer).double(), dim=0
                )
            )
            for layer in self.layers
            if layer in other.layers
        }

    # ----------------------------------------------------------------- algebra
    def _check_compatible(self, other: TraitVector, verb: str) -> None:
        if not isinstance(other, TraitVector):
            raise TypeError(f"cannot {verb} a TraitVector and a {type(other).__name__}")
        if self.identity.digest != other.identity.digest:
            raise ArtifactError(
                f"cannot {verb} trait vectors of different models: {self.trait}/{self.method} "
                f"was made on {self.identity.name!r} (digest {self.identity.digest}) and "
                f"{other.trait}/{other.method} on {other.identity.name!r} (digest "
                f"{other.identity.digest}); directions from different models live in "
                "different spaces — rebuild both on one model"
            )
        if self.hook != other.hook:
            raise ArtifactError(
                f"cannot {verb} a {self.hook} vector and an {other.hook} vector: they act at "
                "different hook points; build both at the same hook-point kind"
            )
        if self.d_model != other.d_model:
            raise ArtifactError(
                f"cannot {verb} vectors of width {self.d_model} and {other.d_model}"
            )

    def _combine(self, other: TraitVector, sign: float, symbol: str) -> TraitVector:
        self._check_compatible(other, "add" if sign > 0 else "subtract")
        layers = tuple(sorted(set(self.layers) | set(other.layers)))
        combined = torch.zeros(len(layers), self.d_model)
        for row, layer in enumerate(layers):
            if layer in self.layers:
                combined[row] += self.step(layer)
            if layer in other.layers:
                combined[row] += sign * other.step(layer)
        size = combined.norm(dim=1)
        same = self.trait == other.trait
        return TraitVector(
            identity=self.identity,
            trait=self.trait if same else f"{self.trait}{symbol}{other.trait}",
            method=self.method
            if self.method == other.method
            else f"{self.method}{symbol}{other.method}",
            layers=layers,
            vectors=combined,
            spread=size,
            norms=size,
            hook=self.hook,
            pole=self.pole if self.pole == other.pole and sign > 0 else "mixed",
            source={"expression": f"({_describe(self)}) {symbol} ({_describe(other)})"},
        )

    def __add__(self, other: TraitVector) -> TraitVector:
        return self._combine(other, 1.0, "+")

    def __sub__(self, other: TraitVector) -> TraitVector:
        return self._combine(other, -1.0, "-")

    def __mul__(self, factor: float) -> TraitVector:
        if isinstance(factor, bool) or not isinstance(factor, int | float | np.floating):
            return NotImplemented
        factor = float(factor)
        if not math.isfinite(factor):
            raise InterventionError(f"cannot scale a trait vector by {factor}; use a finite number")
        pole = self.pole if factor >= 0 else _flip(self.pole)
        return replace(
            self,
            vectors=self.vectors * factor,
            spread=self.spread * abs(factor),
            norms=self.norms * abs(factor),
            pole=pole,
            source={"expression": f"{factor:g} * ({_describe(self)})"},
        )

    def __rmul__(self, factor: float) -> TraitVector:
        return self.__mul__(factor)

    def __truediv__(self, divisor: float) -> TraitVector:
        return self.__mul__(1.0 / float(divisor))

    def __neg__(self) -> TraitVector:
        return self.__mul__(-1.0)

    # --------------------------------------------------------------- artifacts
    def _meta(self) -> dict[str, Any]:
        return {
            "trait": self.trait,
            "method": self.method,
            "hook": self.hook,
            "pole": self.pole,
            "pole_convention": "a positive strength moves toward `pole`",
            "strength_unit": "one standard deviation of the captured activations along the "
            "direction at that layer (spread)",
            "layers": list(self.layers),
            "d_model": self.d_model,
            "spread": self.spread.tolist(),
            "norms": self.norms.tolist(),
            "source": self.source,
        }

    def save(self, path: str | Path) -> Path:
        """Write ``path.safetensors`` + ``path.json``; returns the JSON path."""
        stem = _stem(path)
        meta = {
            "kind": "trait_vector",
            "traitlens_version": __version__,
            "model": self.identity.to_dict(),
            **self._meta(),
        }
        tensors = {"vectors": self.vectors, "spread": self.spread, "norms": self.norms}
        write_artifact(tensors, meta, stem)
        return stem.with_suffix(".json")

    @classmethod
    def load(cls, path: str | Path, expect: ModelIdentity | None = None) -> TraitVector:
        """Read a saved vector; with ``expect``, refuse one made for another model."""
        stem = _stem(path)
        meta, tensors = _read_artifact(stem, "trait vector")
        identity = require_identity(meta, stem.with_suffix(".json"))
        if expect is not None:
            identity.check_matches(expect, "trait vector")
        return _from_meta(identity, meta, tensors, "", stem)

    def to_gguf(
        self, path: str | Path, strength: float = 1.0, layers: Sequence[int] | None = None
    ) -> Path:
        """Export as a llama.cpp control vector (see :mod:`traitlens.steer.gguf_io`)."""
        from traitlens.steer.gguf_io import export_gguf

        return export_gguf(self, path, strength=strength, layers=layers)

    @classmethod
    def from_gguf(cls, path: str | Path, model: TraitModel) -> TraitVector:
        """Import a llama.cpp / repeng control-vector GGUF for ``model``."""
        from traitlens.steer.gguf_io import import_gguf

        return import_gguf(path, model)

    @classmethod
    def from_directions(
        cls,
        identity: ModelIdentity,
        directions: Mapping[int, torch.Tensor],
        *,
        spread: Mapping[int, float] | None = None,
        trait: str = "custom",
        method: str = "custom",
        hook: str = "resid",
        source: dict[str, Any] | None = None,
    ) -> TraitVector:
        """A vector from hand-made ``{layer: [d_model] tensor}`` directions.

        Without ``spread`` the tensors are used as given (strength 1 adds exactly
        them); with ``spread`` each is normalised and scaled to ``spread[layer]``,
        e.g. a spread measured with :func:`traitlens.steer.directions.projection_spread`.
        """
        layers = tuple(sorted(int(layer) for layer in directions))
        raw = torch.stack([torch.as_tensor(directions[layer]).double() for layer in layers])
        norms = raw.norm(dim=1)
        if spread is None:
            vectors, sizes = raw, norms
        else:
            sizes = torch.tensor([float(spread[layer]) for layer in layers], dtype=torch.float64)
            vectors = raw / norms.clamp(min=1e-12)[:, None] * sizes[:, None]
        return cls(
            identity, trait, method, layers, vectors, sizes, norms, hook, "high", dict(source or {})
        )


def _flip(pole: str) -> str:
    return {"high": "low", "low": "high"}.get(pole, pole)


def _describe(vector: TraitVector) -> str:
    return str(vector.source.get("expression", f"{vector.trait}/{vector.method}"))


def _layer_text(layers: Sequence[int]) -> str:
    if not layers:
        return "none"
    if list(layers) == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}" if len(layers) > 1 else str(layers[0])
    return ",".join(str(layer) for layer in layers)


def _from_meta(
    identity: ModelIdentity,
    meta: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    prefix: str,
    where: Path,
) -> TraitVector:
    try:
        vector = TraitVector(
            identity=identity,
            trait=str(meta["trait"]),
            method=str(meta["method"]),
            layers=tuple(int(layer) for layer in meta["layers"]),
            vectors=tensors[f"{prefix}vectors"],
            spread=tensors[f"{prefix}spread"],
            norms=tensors[f"{prefix}norms"],
            hook=str(meta.get("hook", "resid")),
            pole=str(meta.get("pole", "high")),
            source=dict(meta.get("source", {})),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{where} is incomplete or corrupt ({exc!r}); rebuild it") from exc
    if vector.d_model != identity.d_model:
        raise ArtifactError(
            f"{where} holds vectors of width {vector.d_model} but its model "
            f"{identity.name!r} has d_model={identity.d_model}; the file is corrupt — rebuild it"
        )
    return vector


@dataclass(eq=False)
class VectorSet:
    """All trait vectors of a run, keyed by ``(trait, method)``; one model only."""

    identity: ModelIdentity
    vectors: dict[tuple[str, str], TraitVector] = field(default_factory=dict)
    # the input key of the stage that built the set (kept when vectors are added)
    provenance: dict[str, Any] | None = None

    @property
    def key(self) -> str | None:
        return None if self.provenance is None else str(self.provenance.get("key"))

    def add(self, vector: TraitVector) -> None:
        vector.identity.check_matches(self.identity, "trait vector")
        self.vectors[(vector.trait, vector.method)] = vector

    def get(self, trait: str, method: str) -> TraitVector:
        key = (trait, method)
        if key not in self.vectors:
            have = ", ".join(f"{t}/{m}" for t, m in sorted(self.vectors)) or "none"
            raise ArtifactError(
                f"no {trait}/{method} vector in this set (have: {have}); build it with "
                f"`traitlens steer --trait {trait} --method {method} --run RUN`"
            )
        return self.vectors[key]

    def __contains__(self, key: object) -> bool:
        return key in self.vectors

    def __iter__(self) -> Iterator[TraitVector]:
        return iter(self.vectors[key] for key in sorted(self.vectors))

    def __len__(self) -> int:
        return len(self.vectors)

    def save(self, directory: str | Path) -> Path:
        """Write ``directory/vectors.safetensors`` + ``directory/vectors.json``."""
        stem = Path(directory) / "vectors"
        entries, tensors = [], {}
        for index, vector in enumerate(self):
            entries.append(vector._meta())
            tensors[f"{index}.vectors"] = vector.vectors
            tensors[f"{index}.spread"] = vector.spread
            tensors[f"{index}.norms"] = vector.norms
        meta = {
            "kind": "vector_set",
            "traitlens_version": __version__,
            "model": self.identity.to_dict(),
            "vectors": entries,
        }
        if self.provenance is not None:
            meta["provenance"] = self.provenance
        write_artifact(tensors, meta, stem)
        return stem.with_suffix(".json")

    @classmethod
    def load(cls, directory: str | Path, expect: ModelIdentity | None = None) -> VectorSet:
        stem = Path(directory) / "vectors"
        meta, tensors = _read_artifact(stem, "vector set")
        identity = require_identity(meta, stem.with_suffix(".json"))
        if expect is not None:
            identity.check_matches(expect, "vector set")
        out = cls(identity, provenance=meta.get("provenance"))
        for index, entry in enumerate(meta.get("vectors", [])):
            out.add(_from_meta(identity, entry, tensors, f"{index}.", stem.with_suffix(".json")))
        return out


# ---------------------------------------------------------------------- building


def _prompt_hash(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]


def _probe_rows(
    probes: ProbeWeights | torch.Tensor | np.ndarray,
    trait: str,
    layers: Sequence[int],
    identity: ModelIdentity,
    captured: Sequence[int],
) -> dict[int, torch.Tensor]:
    """Per-layer probe normals from a ProbeSet-like object or a ``[n_layers, d_model]`` matrix
    (rows = every model layer, or the captured layers in order)."""
    if not isinstance(probes, torch.Tensor | np.ndarray):
        probes.identity.check_matches(identity, "probe set")
        code = trait.strip().upper()
        if code not in probes.traits:
            raise DataError(
                f"the probe set has no {trait!r} probe (it has {', '.join(probes.traits)}); "
                "fit probes with that trait, or omit probes to fit a logistic probe here"
            )
        matrix = torch.as_tensor(probes.binary_weight)[probes.traits.index(code)]
        layer_of = list(probes.layers)
    else:
        matrix = torch.as_tensor(np.asarray(probes))
        if matrix.ndim != 2:
            raise DataError(f"probe weights must be [n_layers, d_model], got {list(matrix.shape)}")
        layer_of = (
            list(range(identity.n_layers))
            if matrix.shape[0] == identity.n_layers
            else list(captured)
        )
        if matrix.shape[0] != len(layer_of):
            raise DataError(
                f"probe weights have {matrix.shape[0]} rows; pass one per model layer "
                f"({identity.n_layers}) or per captured layer ({len(captured)})"
            )
    if matrix.shape[-1] != identity.d_model:
        raise DataError(
            f"probe weights have width {matrix.shape[-1]}, the model d_model={identity.d_model}"
        )
    missing = [layer for layer in layers if layer not in layer_of]
    if missing:
        raise DataError(f"no probe weights for layer(s) {missing}; probes cover {layer_of}")
    return {layer: matrix[layer_of.index(layer)].double() for layer in layers}


def trait_vector(
    activations: Activations,
    prompts: Sequence[LabelledPrompt],
    trait: str,
    method: str = "mean_diff",
    *,
    layers: Sequence[int] | None = None,
    kind: str = "resid",
    pooling: str = "mean",
    probes: ProbeWeights | torch.Tensor | np.ndarray | None = None,
    ridge_alpha: float = 1.0,
    probe_c: float = 1.0,
    source: Mapping[str, Any] | None = None,
) -> TraitVector:
    """Estimate one trait's direction at every layer from captured contrastive activations.

    ``activations`` rows are matched to ``prompts`` by id; the trait's high- and
    low-pole prompts feed the estimator (``regression`` also uses neutral ones),
    and every captured row measures the spread. Methods (all oriented toward
    the high pole):

    - ``mean_diff``: difference of pole means (ActAdd / CAA);
    - ``pca``: first PC of paired high − low differences on the same question
      (repeng's ``pca_diff``, uncentred — see :func:`~traitlens.steer.directions.pca_direction`);
    - ``regression``: ridge of intensity (1–5) on activations, normalised;
    - ``probe``: the logistic probe normal — from ``probes`` (the probe stage's
      ``ProbeSet`` or a ``[n_layers, d_model]`` matrix), else fitted here.
    """
    if method not in METHODS:
        raise DataError(f"unknown direction method {method!r}; use one of {', '.join(METHODS)}")
    by_id = {str(p.id): p for p in prompts}
    rows = [i for i, pid in enumerate(activations.prompt_ids) if pid in by_id]
    labelled = [by_id[activations.prompt_ids[i]] for i in rows]
    mine = [(r, p) for r, p in zip(rows, labelled, strict=True) if p.trait == trait]
    high = [r for r, p in mine if p.pole == "high"]
    low = [r for r, p in mine if p.pole == "low"]
    if not high or not low:
        raise DataError(
            f"trait {trait!r} needs captured prompts of both poles to get a direction (found "
            f"{len(high)} high, {len(low)} low among {len(activations.prompt_ids)} captured "
            "rows); capture a contrastive set that includes this trait"
        )
    layer_list = list(activations.layers) if layers is None else [int(x) for x in layers]
    probe_rows = (
        _probe_rows(probes, trait, layer_list, activations.identity, activations.layers)
        if method == "probe" and probes is not None
        else {}
    )
    pole_of = {r: p for r, p in mine}
    pairs = dirs.pair_indices(
        [(pole_of[r].question_id, pole_of[r].intensity) for r in high],
        [(pole_of[r].question_id, pole_of[r].intensity) for r in low],
    )
    if method == "pca" and not pairs:
        raise DataError(
            f"no question has both a high and a low {trait} prompt, so PCA of paired "
            "differences has nothing to pair; use mean_diff or capture paired prompts"
        )
    steps, spreads, norms = [], [], []
    for layer in layer_list:
        x = activations.layer(layer, kind=kind, pooling=pooling).double()
        centroid_gap = dirs.mean_difference(x[high], x[low])
        if method == "mean_diff":
            raw = centroid_gap
            direction, norm = dirs.unit(raw), float(raw.norm())
        elif method == "pca":
            diffs = x[[high[i] for i, _ in pairs]] - x[[low[j] for _, j in pairs]]
            direction = dirs.pca_direction(diffs)
            norm = float((diffs @ direction).pow(2).mean().sqrt())
        elif method == "regression":
            used = [r for r, _ in mine]
            y = torch.tensor([float(pole_of[r].intensity) for r in used])
            raw = dirs.ridge_direction(x[used], y, alpha=ridge_alpha)
            direction, norm = dirs.unit(raw), float(raw.norm())
        else:
            if probe_rows:
                raw = probe_rows[layer]
                # a foreign matrix may use the other sign convention; vectors point high-ward
                if float(raw @ centroid_gap) < 0:
                    raw = -raw
            else:
                labels = torch.tensor([True] * len(high) + [False] * len(low))
                raw = dirs.logistic_direction(x[high + low], labels, c=probe_c)
            direction, norm = dirs.unit(raw), float(raw.norm())
        spread = dirs.projection_spread(x, direction)
        steps.append(direction * spread)
        spreads.append(spread)
        norms.append(norm)
    used_ids = [activations.prompt_ids[r] for r, _ in mine]
    info: dict[str, Any] = {
        "n_prompts": len(mine),
        "n_high": len(high),
        "n_low": len(low),
        "n_pairs": len(pairs),
        "n_spread_rows": len(activations.prompt_ids),
        "prompt_hash": _prompt_hash(used_ids),
        "kind": kind,
        "pooling": pooling,
        "span": activations.config.get("span"),
        "activations_key": activations.config.get("cache_key"),
    }
    if method == "regression":
        info["ridge_alpha"] = ridge_alpha
    if method == "probe":
        info["probe"] = "probe stage" if probe_rows else f"logistic regression (C={probe_c})"
    info.update(source or {})
    return TraitVector(
        identity=activations.identity,
        trait=trait,
        method=method,
        layers=tuple(layer_list),
        vectors=torch.stack(steps),
        spread=torch.tensor(spreads),
        norms=torch.tensor(norms),
        hook=kind,
        pole="high",
        source=info,
    )


def trait_vectors(
    activations: Activations,
    prompts: Sequence[LabelledPrompt],
    traits: Sequence[str] | None = None,
    methods: Sequence[str] = ("mean_diff",),
    **kwargs: Any,
) -> VectorSet:
    """:func:`trait_vector` for every trait (default: all traits present) and method."""
    present = sorted({p.trait for p in prompts})
    out = VectorSet(activations.identity)
    for trait in traits or present:
        for method in methods:
            out.add(trait_vector(activations, prompts, trait, method, **kwargs))
    return out
