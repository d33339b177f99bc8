"""The vectors of a run: a :class:`VectorSet` keyed by ``(trait, method)``, one model only,
saved as ``RUN/vectors.safetensors`` + ``RUN/vectors.json``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from traitlens.artifact_io import Artifact, ModelIdentity, Saved
from traitlens.errors import ArtifactError
from traitlens.steer.artifact import VECTORS_MISSING, TraitVector, from_meta


@dataclass(eq=False)
class VectorSet(Artifact):
    """All trait vectors of a run, keyed by ``(trait, method)``; one model only, saved as
    ``directory/vectors.safetensors`` + ``directory/vectors.json``."""

    identity: ModelIdentity
    vectors: dict[tuple[str, str], TraitVector] = field(default_factory=dict)
    # the input key of the stage that built the set (kept when vectors are added)
    provenance: dict[str, Any] | None = None

    stem = "vectors"
    kind_name = "vector_set"
    what = "vector set"
    missing = VECTORS_MISSING.format(what=what)

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

    @classmethod
    def _from_saved(cls, saved: Saved) -> VectorSet:
        out = cls(saved.identity, provenance=saved.meta.get("provenance"))
        where = saved.stem.with_suffix(".json")
        for index, entry in enumerate(saved.meta.get("vectors", [])):
            out.add(from_meta(saved.identity, entry, saved.tensors, f"{index}.", where))
        return out

    def _meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"vectors": [vector.meta() for vector in self]}
        if self.provenance is not None:
            meta["provenance"] = self.provenance
        return meta

    def _tensors(self) -> dict[str, torch.Tensor]:
        tensors = {}
        for index, vector in enumerate(self):
            tensors[f"{index}.vectors"] = vector.vectors
            tensors[f"{index}.spread"] = vector.spread
            tensors[f"{index}.norms"] = vector.norms
        return tensors
