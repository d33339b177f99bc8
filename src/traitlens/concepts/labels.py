"""Label generation: ask the model which domain a statement measures; read the answer's
next-token distribution over the five domain names.

As for Likert options (:mod:`traitlens.evaluate.logprobs`) the label tokens are found
by rendering each name as the assistant's reply, and only the first token that
differs between the names is read, so multi-token names work on any tokenizer whose
names start differently (refused with the token ids when they do not).

The question is asked the way a chat model is used: ``k`` labelled examples from
*training* items come first as earlier chat turns (user: the question and a
statement, assistant: its domain name), balanced over the domains, and the answer
is read at the start of the assistant turn that follows the held-out statement.
(Examples written inside one user turn end in ``Domain: X`` lines while the answer
is read at the assistant turn's first token, so the model answers a different
question than the examples show: on SmolLM2-135M that put 1.5-4.6 % of the
probability on the five names and gave one name for 97 % of items.) The order in
which the options are listed is rotated across items (``counterbalance``), so a
preference for the first-listed name cannot pass for a domain effect. Every turn after
the first lists the options again (the examples in fixed, balanced orders, the asked
statement in its own), so the k-shot turns are one prefix for *every* item whatever
its order: its KV cache is computed once per measured row, not once per order (the
prefix was 57 % of the label pass's cost when the order sat in the first turn).
Contextual calibration (Zhao et al. 2021) divides each item's distribution by the one for a
content-free statement under the same prompt and rotation, and renormalizes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from traitlens.concepts.config import LABEL_INSTRUCTION
from traitlens.concepts.items import ItemLike
from traitlens.data.schema import TRAIT_NAMES
from traitlens.errors import DataError
from traitlens.evaluate.logprobs import LabelTokens, label_distribution, resolve_label_tokens
from traitlens.models.chat import FormattedPrompt
from traitlens.models.loading import TraitModel

LABEL_QUESTION = LABEL_INSTRUCTION
"""The first user turn of the conversation (options in their canonical order); later turns
are :data:`LABEL_FOLLOW_UP` (the task is set once, as in ordinary few-shot chat, which
also keeps prompts short)."""

LABEL_FOLLOW_UP = 'Options: {options}\nStatement: "{text}"'
"""A later turn: the options in that turn's order, then the statement."""

CONTENT_FREE = "N/A"
"""The content-free statement of contextual calibration (Zhao et al. 2021)."""


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


def shots(
    train: Sequence[ItemLike], traits: Sequence[str], per_domain: int, seed: int
) -> list[ItemLike]:
    """``per_domain`` labelled examples of every domain from training items (so every
    domain is shown equally often), order shuffled (seeded)."""
    if per_domain < 0:
        raise DataError(f"shots per domain must be ≥ 0, got {per_domain}")
    k = per_domain * len(traits)
    rng = np.random.default_rng(seed)
    pools = {t: sorted((i for i in train if i.trait == t), key=lambda i: i.id) for t in traits}
    chosen: list[ItemLike] = []
    for n in range(k):
        pool = pools[traits[n % len(traits)]]
        if not pool:
            raise DataError(f"no training item of {traits[n % len(traits)]} for a k-shot example")
        chosen.append(pool.pop(int(rng.integers(len(pool)))))
    return [chosen[i] for i in rng.permutation(len(chosen))]


@dataclass(frozen=True)
class LabelPrompt:
    """How the label question is asked: the label names, the k-shot examples (earlier
    chat turns), whether the option order rotates across items, and calibration."""

    labels: tuple[str, ...]
    examples: tuple[tuple[str, str], ...]  # (statement, label)
    counterbalance: bool = True
    calibrate: bool = False
    instruction: str = LABEL_INSTRUCTION

    @property
    def k(self) -> int:
        return len(self.examples)

    def rotation(self, position: int) -> int:
        """The option order used for the item at ``position`` of the evaluated list."""
        return position % len(self.labels) if self.counterbalance else 0

    def options(self, rotation: int = 0) -> str:
        """The domain names listed in the order of ``rotation``."""
        return ", ".join(self.labels[rotation:] + self.labels[:rotation])

    def question(self, text: str, rotation: int = 0) -> str:
        return self.instruction.format(options=self.options(rotation), text=text)

    def turns(self, text: str, rotation: int = 0) -> list[tuple[str, str | None]]:
        """The conversation that asks for ``text``'s domain (last answer left open).

        With examples: the question with the first example (options in canonical order),
        one short turn per further example (options in order ``j mod n``, balanced and
        fixed), then the item's turn in its own order ``rotation``; so everything before
        the item's turn is the same for every item. Without examples the item's turn is
        the question itself, in its order."""
        if not self.examples:
            return [(self.question(text, rotation), None)]
        statements = [s for s, _ in self.examples] + [text]
        answers: list[str | None] = [label for _, label in self.examples] + [None]
        orders = [self.rotation(j) for j in range(1, self.k)] + [rotation]
        users = [self.question(statements[0], 0)] + [
            LABEL_FOLLOW_UP.format(options=self.options(order), text=s)
            for order, s in zip(orders, statements[1:], strict=True)
        ]
        return list(zip(users, answers, strict=True))

    def formatted(self, tm: TraitModel, text: str, rotation: int = 0) -> FormattedPrompt:
        """The conversation tokenized, with span ``item`` on the asked statement (in the
        last user turn): the instructed context pools exactly these tokens."""
        return tm.formatter.format_conversation(self.turns(text, rotation), marks={"item": text})

    def describe(self) -> dict[str, object]:
        """What a key covers: the whole prompt (the instruction only when not the default,
        so keys of the default prompt stay those of earlier runs)."""
        described = asdict(self)
        if self.instruction == LABEL_INSTRUCTION:
            del described["instruction"]
        # the turn layout (rows measured with the order in the first turn are not these)
        described["follow_up"] = LABEL_FOLLOW_UP
        return described


def label_prompt(
    train: Sequence[ItemLike],
    traits: Sequence[str],
    per_domain: int,
    seed: int,
    *,
    counterbalance: bool = True,
    calibrate: bool = False,
    instruction: str = LABEL_INSTRUCTION,
) -> LabelPrompt:
    labels = domain_labels(traits)
    name = dict(zip(traits, labels, strict=True))
    return LabelPrompt(
        tuple(labels),
        tuple((i.text, name[i.trait]) for i in shots(train, traits, per_domain, seed)),
        counterbalance,
        calibrate,
        instruction,
    )


def asked(prompt: LabelPrompt, texts: Sequence[str]) -> list[tuple[str, int]]:
    """``(statement, option order)`` of every prompt one label read asks: the items in
    their counterbalanced orders, then (with calibration) the content-free statement in
    each order used. All of them share the k-shot turns as one prefix."""
    rows = [(text, prompt.rotation(n)) for n, text in enumerate(texts)]
    if prompt.calibrate:
        rows += [(CONTENT_FREE, r) for r in sorted({r for _, r in rows})]
    return rows


def normalized(found: np.ndarray, prompt: LabelPrompt, n: int) -> np.ndarray:
    """Label probabilities of the first ``n`` rows of :func:`asked`, renormalized over the
    names; with calibration each row is divided by the content-free row of its option
    order (contextual calibration) and renormalized."""
    if not prompt.calibrate:
        return found[:n]
    orders = [prompt.rotation(p) for p in range(n)]
    free = {r: found[n + k] for k, r in enumerate(sorted(set(orders)))}
    divided = found[:n] / np.clip(np.stack([free[r] for r in orders]), 1e-9, None)
    return divided / divided.sum(1, keepdims=True)


def label_probs(
    tm: TraitModel,
    items: Sequence[ItemLike],
    prompt: LabelPrompt,
    tokens: LabelTokens,
    *,
    batch_size: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """``(probs [n, T], label_mass [n])`` of the domain answer for each item.

    ``label_mass`` is the raw next-token probability on the names; ``probs`` is
    renormalized over them (and contextually calibrated when the prompt says so).
    """
    sequences = [
        tm.formatter.format_conversation(prompt.turns(text, rotation)).input_ids
        for text, rotation in asked(prompt, [i.text for i in items])
    ]
    dist = label_distribution(tm, sequences, tokens, batch_size=batch_size, description="labels")
    return normalized(dist.probs, prompt, len(items)), dist.label_mass[: len(items)]
