"""Label generation: ask the model which domain a statement measures; read the answer's
next-token distribution over the five domain names.

As for Likert options (:mod:`traitlens.evaluate.logprobs`) the label tokens are found
by rendering each name as the assistant's reply, and only the first token that
differs between the names is read, so multi-token names work on any tokenizer whose
names start differently (refused with the token ids when they do not). A 135M model's
zero-shot labels sit near chance, so ``k`` labelled examples drawn from *training*
items can precede the statement (the same examples for every item, so their tokens are
a shared prefix computed once).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from traitlens.concepts.items import ItemLike
from traitlens.data.schema import TRAIT_NAMES
from traitlens.errors import DataError
from traitlens.evaluate.logprobs import LabelTokens, label_distribution, resolve_label_tokens
from traitlens.models.loading import TraitModel

LABEL_QUESTION = (
    "Which personality domain does the statement describe? Answer with one word: {options}."
)


def domain_labels(traits: Sequence[str]) -> list[str]:
    """Capitalized full names in the order of ``traits`` (e.g. "Extraversion")."""
    return [TRAIT_NAMES[t].capitalize() for t in traits]


def check_labels(labels: Sequence[str]) -> None:
    """Refuse a label set the first-token read-out cannot tell apart (before loading a model)."""
    if len(set(labels)) != len(labels):
        raise DataError(
            f"domain labels {list(labels)} contain duplicates; give each domain its own"
        )
    if any(not label.strip() for label in labels):
        raise DataError("a domain label is empty; name every domain")


def resolve_domain_tokens(tm: TraitModel, labels: Sequence[str]) -> LabelTokens:
    """First distinguishing token of each label in the model's own answer format."""
    check_labels(labels)
    return resolve_label_tokens(tm, list(labels))


def shots(train: Sequence[ItemLike], traits: Sequence[str], k: int, seed: int) -> list[ItemLike]:
    """``k`` labelled examples from training items, domains in turn, order shuffled (seeded)."""
    if k == 0:
        return []
    rng = np.random.default_rng(seed)
    pools = {t: [i for i in train if i.trait == t] for t in traits}
    chosen: list[ItemLike] = []
    for n in range(k):
        pool = pools[traits[n % len(traits)]]
        if not pool:
            raise DataError(f"no training item of {traits[n % len(traits)]} for a k-shot example")
        chosen.append(pool.pop(int(rng.integers(len(pool)))))
    return [chosen[i] for i in rng.permutation(len(chosen))]


@dataclass(frozen=True)
class LabelPrompt:
    """How the label question is asked: the label names and the k-shot examples."""

    labels: tuple[str, ...]
    examples: tuple[tuple[str, str], ...]  # (statement, label)

    @property
    def k(self) -> int:
        return len(self.examples)

    def render(self, text: str) -> str:
        head = LABEL_QUESTION.format(options=", ".join(self.labels))
        lines = [f'Statement: "{s}"\nDomain: {label}' for s, label in self.examples]
        lines.append(f'Statement: "{text}"\nDomain:')
        return head + "\n\n" + "\n\n".join(lines)


def label_prompt(
    train: Sequence[ItemLike], traits: Sequence[str], k: int, seed: int
) -> LabelPrompt:
    labels = domain_labels(traits)
    name = dict(zip(traits, labels, strict=True))
    return LabelPrompt(
        tuple(labels), tuple((i.text, name[i.trait]) for i in shots(train, traits, k, seed))
    )


def label_probs(
    tm: TraitModel,
    items: Sequence[ItemLike],
    prompt: LabelPrompt,
    tokens: LabelTokens,
    *,
    batch_size: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """``(probs [n, T], label_mass [n])`` of the domain answer for each item."""
    sequences = [tm.format(None, prompt.render(i.text)).input_ids for i in items]
    dist = label_distribution(tm, sequences, tokens, batch_size=batch_size, description="labels")
    return dist.probs, dist.label_mass
