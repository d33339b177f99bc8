"""The trait vector value: per-layer steps in a model-independent strength unit, as an artifact.

A :class:`TraitVector` stores, for each layer, the step that *one unit of
strength* adds to the residual stream: ``spread[l] · û[l]``, where ``û[l]`` is
the unit direction toward the trait's high pole and ``spread[l]`` the standard
deviation of the captured activations projected on ``û[l]``. So
``AddDirection(v, strength=2)`` pushes two standard deviations along the trait
axis on a 135M model and on a 70B model alike; raw-norm strengths (ActAdd's
coefficient, repeng's ``coeff``) do not transfer between models or layers.

Vectors support repeng's algebra (``a + b``, ``a - b``, ``c * a``, ``-a``) and
refuse to mix models or hook points. Saved as ``path.safetensors`` +
``path.json``; many vectors of one run go in a
:class:`~traitlens.steer.vector_set.VectorSet`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from traitlens import __version__
from traitlens.artifact_io import ModelIdentity, fields_of, read_artifact, write_artifact
from traitlens.errors import ArtifactError, InterventionError, index_of
from traitlens.steer import directions as dirs
from traitlens.steer.layers import layer_text

if TYPE_CHECKING:
    pass

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


VECTORS_MISSING = "build the {what} first (traitlens steer)"
"""The fix named when a vector or vector set file is absent."""


def read_vectors(
    stem: Path, what: str, expect: ModelIdentity | None
) -> tuple[dict[str, Any], ModelIdentity, dict[str, torch.Tensor]]:
    """``(meta, identity, tensors)`` of a saved vector or vector set at ``stem``."""
    return read_artifact(stem, what, expect, VECTORS_MISSING.format(what=what))


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
    def strength_unit(self) -> float:
        """Spread units per layer that strength 1 adds: 1, except for a calibrated vector
        (``traitlens calibrate``), whose strength 1 is the strength its sweep chose, so a
        cap on spread units caps it at that scale."""
        calibration = (self.source or {}).get("calibration") or {}
        chosen = calibration.get("strength") if isinstance(calibration, dict) else None
        return abs(float(chosen)) if isinstance(chosen, int | float) and chosen else 1.0

    @property
    def d_model(self) -> int:
        return int(self.vectors.shape[1])

    def layer_index(self, layer: int) -> int:
        """Row of ``layer`` in ``vectors``; InterventionError naming the covered layers."""
        return index_of(
            self.layers,
            layer,
            lambda: InterventionError(
                f"the {self.trait}/{self.method} vector has no direction at layer {layer}; it "
                f"covers layers {layer_text(self.layers)} — pick layers among those"
            ),
        )

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
    def meta(self) -> dict[str, Any]:
        """What the JSON sidecar says about this vector (everything but the model identity)."""
        return {
            **fields_of(self, ("trait", "method", "hook", "pole")),
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
            **self.meta(),
        }
        tensors = {"vectors": self.vectors, "spread": self.spread, "norms": self.norms}
        write_artifact(tensors, meta, stem)
        return stem.with_suffix(".json")

    @classmethod
    def load(cls, path: str | Path, expect: ModelIdentity | None = None) -> TraitVector:
        """Read a saved vector; with ``expect``, refuse one made for another model."""
        stem = _stem(path)
        meta, identity, tensors = read_vectors(stem, "trait vector", expect)
        return from_meta(identity, meta, tensors, "", stem)

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


def from_meta(
    identity: ModelIdentity,
    meta: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    prefix: str,
    where: Path,
) -> TraitVector:
    """A vector from its JSON entry and tensors (``prefix`` picks one vector of a set's
    file); ArtifactError naming ``where`` when they are incomplete or inconsistent."""
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
