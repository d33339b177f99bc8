"""Trait vectors: per-layer directions in a model-independent strength unit, as artifacts.

One import for the three parts of the vectors stage, which live apart:

- :mod:`traitlens.steer.artifact` — the :class:`TraitVector` value (spread units,
  repeng's algebra, save / load, GGUF);
- :mod:`traitlens.steer.vector_set` — :class:`VectorSet`, all vectors of a run in
  ``RUN/vectors.safetensors`` + ``RUN/vectors.json``;
- :mod:`traitlens.steer.estimators` — :func:`trait_vector` / :func:`trait_vectors`
  and the built-in direction estimators, registered in
  :mod:`traitlens.steer.registry` (:data:`METHODS` lists them).
"""

from traitlens.steer.artifact import HOOK_KINDS, ProbeWeights, TraitVector
from traitlens.steer.estimators import trait_vector, trait_vectors
from traitlens.steer.registry import METHODS
from traitlens.steer.vector_set import VectorSet

__all__ = [
    "HOOK_KINDS",
    "METHODS",
    "ProbeWeights",
    "TraitVector",
    "VectorSet",
    "trait_vector",
    "trait_vectors",
]
