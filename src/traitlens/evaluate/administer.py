"""What the label-scored instruments (questionnaire, forced choice) share: checking an
item set once at the boundary, and reading the answer-label distribution of a list of
user turns.

Both instruments take user-supplied items, so they refuse the same mistakes with the
same messages (an unknown trait code, a repeated id, a trait with no items), and both
record the same facts about a run (model, chat format, label token ids, time).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from traitlens.data import TRAITS, parse_traits
from traitlens.data.schema import TraitTagged
from traitlens.errors import DataError
from traitlens.evaluate.logprobs import LabelDistribution, LabelTokens, label_distribution
from traitlens.models.loading import TraitModel, check_text_fits

ItemT = TypeVar("ItemT", bound=TraitTagged)


def select_items(
    items: Sequence[ItemT],
    traits: str | Sequence[str] | None,
    *,
    what: str,
    plural: str,
    empty: str,
    trait_hint: str = "",
    check: Callable[[ItemT], None] | None = None,
) -> tuple[list[ItemT], list[str]]:
    """``(items of the selected traits, selected trait codes)``, after refusing an empty
    set (``empty`` is that message), an item with an unknown trait (``trait_hint`` is
    appended to the fix), a repeated id, or a selected trait without items.

    ``what``/``plural`` name one item and several in the messages; ``check`` validates
    anything else about one item, in file order with the other per-item checks. With
    ``traits`` None every trait the items cover is selected (a user's file may cover a
    subset).
    """
    if not items:
        raise DataError(empty)
    seen: set[str] = set()
    for item in items:
        if item.trait not in TRAITS:
            raise DataError(
                f"{what} {item.id!r} has unknown trait {item.trait!r}; use one of "
                f"{', '.join(TRAITS)}{trait_hint}"
            )
        if check is not None:
            check(item)
        if item.id in seen:
            raise DataError(f"{what} id {item.id!r} appears twice; ids must be unique")
        seen.add(item.id)
    present = {item.trait for item in items}
    selected = [t for t in TRAITS if t in present] if traits is None else parse_traits(traits)
    missing = [t for t in selected if t not in present]
    if missing:
        raise DataError(
            f"no {plural} for trait(s) {', '.join(missing)}; add items for them or leave "
            "them out of --traits"
        )
    return [item for item in items if item.trait in selected], selected


def check_prompt_texts(
    tm: TraitModel,
    texts: Sequence[tuple[str, str]],
    what: str,
    hint: str,
    system: str | None,
) -> None:
    """Refuse an item text (``(name, text)`` pairs) or a system prompt that does not fit
    the model's context, before any forward pass."""
    check_text_fits(tm, texts, what, hint)
    if system:
        check_text_fits(tm, [("", system)], "the system prompt", "shorten it")


def label_answers(
    tm: TraitModel,
    system: str | None,
    users: Sequence[str],
    label_tokens: LabelTokens,
    *,
    batch_size: int,
    share_prefix: bool,
    progress: bool,
    description: str,
) -> LabelDistribution:
    """The label distribution the model gives after each user turn (one system prompt
    for all); see :func:`~traitlens.evaluate.logprobs.label_distribution`."""
    sequences = [tm.format(system, user).input_ids for user in users]
    return label_distribution(
        tm,
        sequences,
        label_tokens,
        batch_size=batch_size,
        share_prefix=share_prefix,
        progress=progress,
        description=description,
    )


def run_config(
    tm: TraitModel, label_tokens: LabelTokens, started: float, **fields: Any
) -> dict[str, Any]:
    """The ``config`` a result records: model identity and chat format, the
    instrument's own ``fields``, the label token ids and the seconds since ``started``
    (a :func:`time.perf_counter` reading)."""
    return {
        "model": tm.identity.to_dict(),
        "chat_format": tm.formatter.mode,
        **fields,
        "label_token_ids": list(label_tokens.ids),
        "seconds": round(time.perf_counter() - started, 3),
    }
