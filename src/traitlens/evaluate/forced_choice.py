"""Forced choice: which of two answers — one per trait pole — does the model pick?

Each situation is shown twice, with the high-pole option as "A" and then as
"B"; P(high) is read from the next-token log-probabilities of the labels "A"
and "B" (softmax over the two). Averaging over both orders cancels a plain
label preference, and that preference is reported on its own as ``order_bias``
(mean P("A") − 0.5), because a model that always says "A" would otherwise look
perfectly balanced on every trait.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np

from traitlens.data.schema import TraitTagged
from traitlens.evaluate.administer import (
    check_prompt_texts,
    label_answers,
    run_config,
    select_items,
)
from traitlens.evaluate.logprobs import resolve_label_tokens
from traitlens.evaluate.tables import ItemTable, TableRow
from traitlens.models.loading import TraitModel

LABELS = ("A", "B")
INSTRUCTION = (
    "Which option is closer to what you would do? Answer with A or B only.\n\n"
    "Situation: {situation}\nA) {a}\nB) {b}"
)


class ForcedChoiceLike(TraitTagged, Protocol):
    """``traitlens.data.ForcedChoice`` or anything shaped like it."""

    @property
    def situation(self) -> str: ...

    @property
    def high_option(self) -> str: ...

    @property
    def low_option(self) -> str: ...


def render_choice(item: ForcedChoiceLike, high_label: str) -> str:
    """The user turn with the high-pole option shown under ``high_label`` ("A" or "B").

    The instruction comes first so all prompts share it as a token prefix.
    """
    first, second = (
        (item.high_option, item.low_option)
        if high_label == "A"
        else (item.low_option, item.high_option)
    )
    return INSTRUCTION.format(situation=item.situation, a=first, b=second)


@dataclass(frozen=True)
class ChoiceResponse(TableRow):
    """One item in one order: ``p_a`` = P("A"), ``p_high`` = P(the high-pole option)."""

    item_id: str
    trait: str
    high_label: str
    p_a: float
    p_high: float
    label_mass: float


@dataclass(frozen=True)
class ChoiceTraitSummary(TableRow):
    """Per trait: ``score`` = mean P(high) over items and both orders (0.5 = no
    preference); ``order_bias`` = mean P("A") − 0.5; ``consistency`` = share of
    items where the same option (by content) wins in both orders."""

    trait: str
    n_items: int
    score: float
    order_bias: float
    consistency: float
    label_mass: float


@dataclass(frozen=True)
class ForcedChoiceResult(ItemTable[ChoiceResponse, ChoiceTraitSummary]):
    """Item rows (two per item) and per-trait summaries, plus the run's configuration;
    saved as ``forced_choice.json`` plus ``forced_choice_{items,traits}.csv``."""

    kind: ClassVar[str] = "forced_choice"
    item_type: ClassVar[type[TableRow]] = ChoiceResponse
    summary_type: ClassVar[type[TableRow]] = ChoiceTraitSummary

    @property
    def order_bias(self) -> float:
        return float(np.mean([i.p_a for i in self.items]) - 0.5)

    def headline(self) -> dict[str, float]:
        return {"order_bias": self.order_bias}


def summarize_choices(trait: str, items: Sequence[ChoiceResponse]) -> ChoiceTraitSummary:
    """Per-trait summary of forced-choice rows (pure; no model needed)."""
    by_item: dict[str, list[ChoiceResponse]] = {}
    for row in items:
        by_item.setdefault(row.item_id, []).append(row)
    consistent = [
        len({r.p_high > 0.5 for r in rows}) == 1 for rows in by_item.values() if len(rows) == 2
    ]
    return ChoiceTraitSummary(
        trait=trait,
        n_items=len(by_item),
        score=float(np.mean([r.p_high for r in items])),
        order_bias=float(np.mean([r.p_a for r in items]) - 0.5),
        consistency=float(np.mean(consistent)) if consistent else float("nan"),
        label_mass=float(np.mean([r.label_mass for r in items])),
    )


def run_forced_choice(
    tm: TraitModel,
    items: Sequence[ForcedChoiceLike],
    *,
    traits: str | Sequence[str] | None = None,
    system: str | None = None,
    batch_size: int = 32,
    share_prefix: bool = True,
    progress: bool = False,
) -> ForcedChoiceResult:
    """Score forced-choice items on whatever ``tm.model`` currently computes.

    ``items``: e.g. ``traitlens.data.load_forced_choices(path)``. With ``traits``
    None, every trait the items cover is reported.
    """
    chosen, selected = select_items(
        items,
        traits,
        what="forced-choice item",
        plural="forced-choice items",
        empty="no forced-choice items; pass some (traitlens.data.load_forced_choices() loads "
        "the shipped ones)",
    )
    check_prompt_texts(
        tm,
        [
            (f"{item.id!r} ({field})", getattr(item, field))
            for item in items
            for field in ("situation", "high_option", "low_option")
        ],
        "forced-choice item",
        "shorten it (a situation is a sentence or two, an option one sentence)",
        system,
    )
    started = time.perf_counter()
    label_tokens = resolve_label_tokens(tm, LABELS)
    prompts = [(item, high) for high in LABELS for item in chosen]
    dist = label_answers(
        tm,
        system,
        [render_choice(item, high) for item, high in prompts],
        label_tokens,
        batch_size=batch_size,
        share_prefix=share_prefix,
        progress=progress,
        description="forced choice",
    )
    rows = tuple(
        ChoiceResponse(
            item_id=item.id,
            trait=item.trait,
            high_label=high,
            p_a=float(probs[0]),
            p_high=float(probs[0] if high == "A" else probs[1]),
            label_mass=float(mass),
        )
        for (item, high), probs, mass in zip(prompts, dist.probs, dist.label_mass, strict=True)
    )
    summaries = tuple(
        summarize_choices(trait, [r for r in rows if r.trait == trait]) for trait in selected
    )
    config = run_config(
        tm, label_tokens, started, instruction=INSTRUCTION, system=system, n_items=len(chosen)
    )
    return ForcedChoiceResult(rows, summaries, config)
