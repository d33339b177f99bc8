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
preference for the first-listed name cannot pass for a domain effect; items of one
rotation share their prefix, whose KV cache is computed once. Contextual
calibration (Zhao et al. 2021) divides each item's distribution by the one for a
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
"""The first user turn of the conversation; later turns repeat only :data:`LABEL_FOLLOW_UP`
(the task is set once, as in ordinary few-shot chat, which also keeps prompts short)."""

LABEL_FOLLOW_UP = 'Statement: "{text}"'

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

    def question(self, text: str, rotation: int = 0) -> str:
        options = self.labels[rotation:] + self.labels[:rotation]
        return self.instruction.format(options=", ".join(options), text=text)

    def turns(self, text: str, rotation: int = 0) -> list[tuple[str, str | None]]:
        """The conversation that asks for ``text``'s domain (last answer left open): the
        question with the first example, then one short turn per example and the item."""
        statements = [s for s, _ in self.examples] + [text]
        answers: list[str | None] = [label for _, label in self.examples] + [None]
        users = [self.question(statements[0], rotation)] + [
            LABEL_FOLLOW_UP.format(text=s) for s in statements[1:]
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


def by_rotation(prompt: LabelPrompt, n: int) -> dict[int, list[int]]:
    """Positions ``0..n-1`` grouped by the option order each is asked with."""
    groups: dict[int, list[int]] = {}
    for position in range(n):
        groups.setdefault(prompt.rotation(position), []).append(position)
    return dict(sorted(groups.items()))


def normalized(found: np.ndarray, calibrate: bool) -> np.ndarray:
    """Label probabilities of one rotation group, renormalized over the names; with
    ``calibrate`` the group's last row is the content-free statement, divided out
    (contextual calibration) and dropped."""
    if not calibrate:
        return found
    found = found[:-1] / np.clip(found[-1], 1e-9, None)
    return found / found.sum(1, keepdims=True)


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
    probs = np.zeros((len(items), len(prompt.labels)))
    mass = np.zeros(len(items))
    for rotation, positions in by_rotation(prompt, len(items)).items():
        texts = [items[p].text for p in positions]
        if prompt.calibrate:
            texts.append(CONTENT_FREE)
        sequences = [
            tm.formatter.format_conversation(prompt.turns(text, rotation)).input_ids
            for text in texts
        ]
        dist = label_distribution(
            tm, sequences, tokens, batch_size=batch_size, description="labels"
        )
        probs[positions] = normalized(dist.probs, prompt.calibrate)
        mass[positions] = dist.label_mass[: len(positions)]
    return probs, mass
