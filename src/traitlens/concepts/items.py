"""Which items the concept design uses, and the held-out split every later stage respects.

Selection (probe training, neuron statistics, directions) sees training items
only; every evaluated number uses held-out items. The split is stratified by
domain and spread over facets, so each domain's held-out items cover its facets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from traitlens.artifact_io import read_json, write_json
from traitlens.data.schema import StatementLike
from traitlens.errors import DataError


class ItemLike(StatementLike, Protocol):
    """A questionnaire item with a facet: ``traitlens.data.ConceptItem`` or anything
    shaped like it (a bank without facets gives each item its own)."""

    @property
    def facet(self) -> str: ...


def _round_robin(items: Sequence[ItemLike], rng: np.random.Generator) -> list[ItemLike]:
    """Items of one domain dealt facet by facet (each facet shuffled), so any prefix of
    the result spreads over the facets and both keyings."""
    by_facet: dict[str, list[ItemLike]] = {}
    for item in sorted(items, key=lambda i: i.id):
        by_facet.setdefault(item.facet, []).append(item)
    queues = []
    for facet in sorted(by_facet):
        members = by_facet[facet]
        queues.append([members[i] for i in rng.permutation(len(members))])
    dealt: list[ItemLike] = []
    while any(queues):
        for queue in queues:
            if queue:
                dealt.append(queue.pop(0))
    return dealt


@dataclass(frozen=True)
class ItemSplit:
    """The items a concept run uses: ``train`` ids and ``held_out`` ids, per domain."""

    traits: tuple[str, ...]
    train: tuple[str, ...]
    held_out: tuple[str, ...]

    def save(self, path: Path) -> None:
        write_json(path, {"kind": "concept_split", **self.to_dict()})

    def to_dict(self) -> dict[str, Any]:
        return {
            "traits": list(self.traits),
            "train": list(self.train),
            "held_out": list(self.held_out),
        }

    @classmethod
    def load(cls, path: Path) -> ItemSplit:
        data = read_json(path)
        return cls(tuple(data["traits"]), tuple(data["train"]), tuple(data["held_out"]))


def _held_out_facets(
    dealt: Sequence[ItemLike], trait: str, share: float, rng: np.random.Generator
) -> set[str]:
    facets = sorted({i.facet for i in dealt})
    if len(facets) < 2:
        raise DataError(
            f"domain {trait} has {len(facets)} facet: whole-facet hold-out needs ≥ 2; use "
            "held_out_unit 'item' or a bank with facets"
        )
    n_facets = min(len(facets) - 1, max(1, round(share * len(facets))))
    chosen = {facets[k] for k in rng.permutation(len(facets))[:n_facets]}
    return {i.id for i in dealt if i.facet in chosen}


def choose_items(
    items: Sequence[ItemLike],
    traits: Sequence[str],
    *,
    per_domain: int | None,
    held_out: float,
    seed: int,
    unit: str = "item",
) -> tuple[list[ItemLike], ItemSplit]:
    """The items to use (at most ``per_domain`` per domain, spread over facets) and the
    held-out split (``held_out`` share per domain, at least 2 items each side).

    ``unit="item"`` holds out items spread over every facet; ``unit="facet"`` holds out
    whole facets (``held_out`` of a domain's facets, at least one), so no held-out item
    has a facet-mate in training — the stricter test of generalization.
    """
    if unit not in ("item", "facet"):
        raise DataError(f"held-out unit {unit!r} is not 'item' or 'facet'")
    rng = np.random.default_rng(seed)
    chosen: list[ItemLike] = []
    train: list[str] = []
    evaluation: list[str] = []
    for trait in traits:
        dealt = _round_robin([i for i in items if i.trait == trait], rng)
        if per_domain is not None:
            dealt = dealt[:per_domain]
        n_eval = max(2, round(held_out * len(dealt)))
        if len(dealt) - n_eval < 2:
            raise DataError(
                f"domain {trait} has {len(dealt)} items: too few to hold out {n_eval} and still "
                "train on 2; add items or lower held_out"
            )
        # deal the chosen items again, facet by facet, and hold out the first n_eval: any
        # prefix of a facet-by-facet deal spreads over the facets, so the held-out items
        # cover min(n_eval, facets) facets (every k-th position of one deal does not:
        # with 6 facets and k = 4 it only ever hits facets 0, 2 and 4)
        held = (
            {i.id for i in _round_robin(dealt, rng)[:n_eval]}
            if unit == "item"
            else _held_out_facets(dealt, trait, held_out, rng)
        )
        if len(held) < 2 or len(dealt) - len(held) < 2:
            raise DataError(
                f"domain {trait}: holding out whole facets leaves {len(held)} held-out and "
                f"{len(dealt) - len(held)} training items; each side needs ≥ 2 (add items)"
            )
        for item in dealt:
            (evaluation if item.id in held else train).append(item.id)
        chosen += dealt
    return chosen, ItemSplit(tuple(traits), tuple(train), tuple(evaluation))
