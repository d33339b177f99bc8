"""Questionnaire "label generation": the model rates each statement 1–5, read from log-probs.

Each statement is shown under several prompt templates and with the option list
in both orders, because LLM self-reports are known to move with the wording and
with the order options are listed in (Serapio-García et al. 2023, "Personality
Traits in Large Language Models"; Dominguez-Olmedo et al. 2023, "Questioning
the Survey Responses of Large Language Models"). The answer distribution is the
softmax over the five label tokens at the answer position — no sampling.

Order convention: the *meaning* of each number never changes (1 always means
the low end, e.g. "strongly disagree"); only the *listing* order does —
``ascending`` lists 1 → 5, ``descending`` lists 5 → 1. So a model that follows
the meaning gives the same numbers in both orders, and a model with a position
bias (say, picking whatever is listed first) shows up as order asymmetry.

Per trait we report the reverse-keyed mean score (6 − score for "-" items),
Cronbach's α, the SD of the trait score across templates, and the order
asymmetry (mean raw answer ascending − descending; raw, before reverse keying,
because a position bias pushes raw answers the same way whatever the keying).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np

from traitlens.data.schema import StatementLike
from traitlens.errors import DataError
from traitlens.evaluate.administer import (
    check_prompt_texts,
    label_answers,
    run_config,
    select_items,
)
from traitlens.evaluate.logprobs import LabelDistribution, resolve_label_tokens
from traitlens.evaluate.stats import cronbach_alpha, sample_sd
from traitlens.evaluate.tables import ItemTable, TableRow
from traitlens.models.loading import TraitModel

SCALE = (1, 2, 3, 4, 5)
ORDERS = ("ascending", "descending")


@dataclass(frozen=True)
class LikertTemplate:
    """One wording of the rating task: an instruction, the five scale labels
    (meaning of 1..5), a response instruction and the item line (``{text}`` is
    the statement).

    The statement comes *last* so that all prompts of one template and order
    share everything else as a token prefix, which is computed once.
    """

    name: str
    instruction: str
    labels: tuple[str, str, str, str, str]
    response: str
    item: str

    def render(self, text: str, order: str = "ascending") -> str:
        numbers = SCALE if order == "ascending" else tuple(reversed(SCALE))
        options = "\n".join(f"{k} = {self.labels[k - 1]}" for k in numbers)
        response = f"{self.response}\n" if self.response else ""
        return f"{self.instruction}\n{options}\n{response}\n{self.item.format(text=text)}"


TEMPLATES: dict[str, LikertTemplate] = {
    t.name: t
    for t in (
        LikertTemplate(
            "likert",
            "How much do you agree with the statement below? Use this scale:",
            (
                "strongly disagree",
                "disagree",
                "neither agree nor disagree",
                "agree",
                "strongly agree",
            ),
            "Reply with the number only.",
            'Statement: "{text}"',
        ),
        LikertTemplate(
            "accuracy",
            "Describe yourself as you honestly are. How accurately does the statement below "
            "describe you?",
            (
                "very inaccurate",
                "moderately inaccurate",
                "neither accurate nor inaccurate",
                "moderately accurate",
                "very accurate",
            ),
            "Answer with a single number from 1 to 5.",
            '"{text}"',
        ),
        LikertTemplate(
            "agreement",
            "Rate your agreement with the following statement about yourself, from 1 to 5.",
            (
                "disagree strongly",
                "disagree a little",
                "neutral",
                "agree a little",
                "agree strongly",
            ),
            "",
            "Statement: {text}",
        ),
    )
}


@dataclass(frozen=True)
class ItemResponse(TableRow):
    """The answer distribution for one item under one template and option order.

    ``expected``/``argmax`` are raw answers on 1..5; ``score``/``score_argmax``
    apply reverse keying (6 − x for "-" items) so higher always means more of
    the trait. ``label_mass``: probability the full softmax gave the 5 labels.
    """

    item_id: str
    trait: str
    keyed: str
    template: str
    order: str
    probs: tuple[float, ...]
    expected: float
    argmax: int
    score: float
    score_argmax: int
    label_mass: float

    def row(self) -> dict[str, Any]:
        """Flat CSV row: probs become columns p1..p5."""
        data = self.to_dict()
        probs = data.pop("probs")
        data.update({f"p{k}": p for k, p in zip(SCALE, probs, strict=True)})
        return data


@dataclass(frozen=True)
class TraitSummary(TableRow):
    """Per-trait questionnaire summary; see the module docstring for definitions.

    ``alpha`` treats each (template, order) administration as a respondent and
    the trait's items as the scale's items; ``acquiescence`` is the mean raw
    answer − 3 (agreeing with everything, whatever the keying).
    """

    trait: str
    n_items: int
    score: float
    score_argmax: float
    alpha: float
    template_sd: float
    order_asymmetry: float
    acquiescence: float
    label_mass: float
    template_scores: Mapping[str, float] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        data = self.to_dict()
        scores = data.pop("template_scores")
        data.update({f"score_{name}": value for name, value in scores.items()})
        return data


@dataclass(frozen=True)
class QuestionnaireResult(ItemTable[ItemResponse, TraitSummary]):
    """Item-level rows and per-trait summaries, plus the run's configuration; saved as
    ``questionnaire.json`` (everything) plus ``questionnaire_{items,traits}.csv``."""

    kind: ClassVar[str] = "questionnaire"
    item_type: ClassVar[type[TableRow]] = ItemResponse
    summary_type: ClassVar[type[TableRow]] = TraitSummary

    @property
    def order_asymmetry(self) -> float:
        """Mean raw answer ascending − descending over all items and templates."""
        return _order_asymmetry(list(self.items))

    def headline(self) -> dict[str, float]:
        return {"order_asymmetry": self.order_asymmetry}


def _order_asymmetry(items: Sequence[ItemResponse]) -> float:
    by_order = {order: [i.expected for i in items if i.order == order] for order in ORDERS}
    if not by_order["ascending"] or not by_order["descending"]:
        return float("nan")
    return float(np.mean(by_order["ascending"]) - np.mean(by_order["descending"]))


def summarize_trait(trait: str, items: Sequence[ItemResponse]) -> TraitSummary:
    """Summary statistics of one trait's item responses (pure; no model needed)."""
    item_ids = sorted({i.item_id for i in items})
    conditions = sorted({(i.template, i.order) for i in items})
    cell = {(i.template, i.order, i.item_id): i.score for i in items}
    matrix = np.array(
        [[cell.get((t, o, item), np.nan) for item in item_ids] for t, o in conditions]
    )
    complete = not np.isnan(matrix).any()
    templates = list(dict.fromkeys(i.template for i in items))
    template_scores = {
        name: float(np.mean([i.score for i in items if i.template == name])) for name in templates
    }
    return TraitSummary(
        trait=trait,
        n_items=len(item_ids),
        score=float(np.mean([i.score for i in items])),
        score_argmax=float(np.mean([i.score_argmax for i in items])),
        alpha=cronbach_alpha(matrix) if complete else float("nan"),
        template_sd=sample_sd(list(template_scores.values())),
        order_asymmetry=_order_asymmetry(items),
        acquiescence=float(np.mean([i.expected for i in items]) - 3.0),
        label_mass=float(np.mean([i.label_mass for i in items])),
        template_scores=template_scores,
    )


def _select_templates(templates: Sequence[str | LikertTemplate] | None) -> list[LikertTemplate]:
    if templates is None:
        return list(TEMPLATES.values())
    chosen: list[LikertTemplate] = []
    for template in templates:
        if isinstance(template, LikertTemplate):
            chosen.append(template)
        elif template in TEMPLATES:
            chosen.append(TEMPLATES[template])
        else:
            raise DataError(
                f"unknown questionnaire template {template!r}; use one of {', '.join(TEMPLATES)}"
            )
    if not chosen:
        raise DataError(f"no templates selected; use one or more of {', '.join(TEMPLATES)}")
    if len({t.name for t in chosen}) != len(chosen):
        raise DataError("questionnaire templates must have distinct names")
    return chosen


def _check_keyed(statement: StatementLike) -> None:
    if statement.keyed not in ("+", "-"):
        raise DataError(f"statement {statement.id!r} has keyed={statement.keyed!r}; use '+' or '-'")


def _select_items(
    statements: Sequence[StatementLike], traits: str | Sequence[str] | None
) -> tuple[list[StatementLike], list[str]]:
    return select_items(
        statements,
        traits,
        what="statement",
        plural="statements",
        empty="the questionnaire is empty; pass statements (traitlens.data.load_statements() "
        "loads the shipped ones, or load_statements('my_inventory.csv') your own)",
        trait_hint=" (load files with traitlens.data.load_statements, which also accepts "
        "full trait names)",
        check=_check_keyed,
    )


def _check_orders(orders: Sequence[str]) -> None:
    for order in orders:
        if order not in ORDERS:
            raise DataError(f"unknown option order {order!r}; use one of {', '.join(ORDERS)}")
    if not orders:
        raise DataError(f"no option orders selected; use one or both of {', '.join(ORDERS)}")


def _responses(
    statements: Sequence[StatementLike],
    template: LikertTemplate,
    order: str,
    dist: LabelDistribution,
) -> list[ItemResponse]:
    """Rows for one (template, order) administration, reverse-keying ``score``."""
    responses = []
    for statement, probs, mass in zip(statements, dist.probs, dist.label_mass, strict=True):
        expected = float(np.dot(probs, SCALE))
        argmax = int(SCALE[int(np.argmax(probs))])
        reverse = statement.keyed == "-"
        responses.append(
            ItemResponse(
                item_id=statement.id,
                trait=statement.trait,
                keyed=statement.keyed,
                template=template.name,
                order=order,
                probs=tuple(float(p) for p in probs),
                expected=expected,
                argmax=argmax,
                score=6.0 - expected if reverse else expected,
                score_argmax=6 - argmax if reverse else argmax,
                label_mass=float(mass),
            )
        )
    return responses


def check_questionnaire(
    statements: Sequence[StatementLike],
    traits: str | Sequence[str] | None = None,
    templates: Sequence[str | LikertTemplate] | None = None,
) -> None:
    """Raise the :class:`DataError` :func:`run_questionnaire` would raise for these
    items, traits and templates, without a model (so a CLI can fail before loading)."""
    _select_items(statements, traits)
    _select_templates(templates)


def run_questionnaire(
    tm: TraitModel,
    statements: Sequence[StatementLike],
    *,
    traits: str | Sequence[str] | None = None,
    templates: Sequence[str | LikertTemplate] | None = None,
    orders: Sequence[str] = ORDERS,
    system: str | None = None,
    batch_size: int = 32,
    share_prefix: bool = True,
    progress: bool = False,
) -> QuestionnaireResult:
    """Administer the questionnaire to whatever ``tm.model`` currently computes.

    ``statements``: items with id, trait (O/C/E/A/N), text and keyed ("+"/"-"),
    e.g. ``traitlens.data.load_statements(path)`` for a user CSV. ``traits``
    restricts to a subset; ``templates`` names entries of :data:`TEMPLATES` (or
    passes your own :class:`LikertTemplate`); ``system`` is an optional system
    prompt (a persona). Wrap the call in an intervention context to measure a
    steered model.
    """
    items, selected = _select_items(statements, traits)
    chosen_templates = _select_templates(templates)
    check_prompt_texts(
        tm,
        [(repr(s.id), s.text) for s in items],
        "statement",
        "shorten it (a questionnaire statement is one sentence) or drop it from the file",
        system,
    )
    _check_orders(orders)
    started = time.perf_counter()
    label_tokens = resolve_label_tokens(tm, [str(k) for k in SCALE])
    responses: list[ItemResponse] = []
    for template in chosen_templates:
        for order in orders:
            dist = label_answers(
                tm,
                system,
                [template.render(s.text, order) for s in items],
                label_tokens,
                batch_size=batch_size,
                share_prefix=share_prefix,
                progress=progress,
                description=f"questionnaire {template.name}/{order}",
            )
            responses.extend(_responses(items, template, order, dist))
    summaries = tuple(
        summarize_trait(trait, [r for r in responses if r.trait == trait]) for trait in selected
    )
    config = run_config(
        tm,
        label_tokens,
        started,
        templates=[asdict(t) for t in chosen_templates],
        orders=list(orders),
        system=system,
        n_items=len(items),
        n_prompts=len(responses),
    )
    return QuestionnaireResult(tuple(responses), summaries, config)
