"""Evaluate stage: questionnaire and forced choice on planted logits, statistics and
text metrics against hand-computed values, perplexity by hand, the HTTP judge
against a local server, prefix sharing equal to the plain path on every family,
and bad inputs refused with clear errors."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from conftest import FAMILIES, build_tiny
from traitlens.capture import Prompt
from traitlens.errors import DataError, TraitlensError
from traitlens.evaluate import (
    NEUTRAL_TEXT,
    TEMPLATES,
    ForcedChoiceResult,
    HttpJudge,
    JudgeError,
    JudgeReplyWarning,
    JudgeUnavailableError,
    QuestionnaireResult,
    bootstrap_ci,
    cohens_d,
    cronbach_alpha,
    distinct_n,
    endpoint_scores,
    label_distribution,
    paired_bootstrap_ci,
    paired_effect_size,
    parse_rating,
    perplexity,
    probe_scores,
    repetition_rate,
    run_forced_choice,
    run_questionnaire,
    text_cost,
)
from traitlens.evaluate.judge import judge_ratings
from traitlens.evaluate.logprobs import resolve_label_tokens
from traitlens.evaluate.questionnaire import ItemResponse, summarize_trait
from traitlens.models import hooks_installed


@dataclass(frozen=True)
class Item:
    """A statement shaped like traitlens.data.Statement (tests do not need the data stage)."""

    id: str
    trait: str
    text: str
    keyed: str


@dataclass(frozen=True)
class Choice:
    id: str
    trait: str
    situation: str
    high_option: str
    low_option: str


STATEMENTS = [
    Item("e1", "E", "I enjoy meeting new people at parties.", "+"),
    Item("e2", "E", "I prefer to spend my evenings alone.", "-"),
    Item("e3", "E", "I talk a lot in groups.", "+"),
    Item("a1", "A", "I am kind to strangers.", "+"),
    Item("a2", "A", "I often argue with people.", "-"),
]
CHOICES = [
    Choice("c1", "E", "A friend invites you out.", "I go and chat with everyone.", "I stay home."),
    Choice("c2", "E", "It is Saturday night.", "I throw a party.", "I read a book."),
    Choice("c3", "C", "You have a deadline.", "I plan every step.", "I wing it."),
]
PLANTED = (0.1, 0.1, 0.2, 0.4, 0.2)  # P(1..5); expected 3.5, argmax 4


# --------------------------------------------------------------------- planted models


def _plant_bias(tm: Any, label_probs: dict[int, float]) -> Any:
    """A tiny real model whose next-token logits are a fixed bias: zero lm_head weight,
    the log of ``label_probs`` on those token ids, −30 elsewhere."""
    model = tm.model
    d_model = model.lm_head.in_features
    vocab = model.lm_head.out_features
    head = nn.Linear(d_model, vocab, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-30.0)
        for token, prob in label_probs.items():
            head.bias[token] = math.log(prob)
    model.lm_head = head
    return tm


@pytest.fixture(scope="module")
def planted_likert() -> Any:
    tm = build_tiny("llama")
    ids = resolve_label_tokens(tm, ["1", "2", "3", "4", "5"]).ids
    return _plant_bias(tm, dict(zip(ids, PLANTED, strict=True)))


class TextPlanted(nn.Module):
    """Stand-in model: decodes each (unpadded) prompt and plants logits from its text."""

    def __init__(self, tokenizer: Any, plant: Callable[[str], dict[int, float]]):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # gives TraitModel a device/dtype
        self.tokenizer = tokenizer
        self.plant = plant
        self.vocab = len(tokenizer)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SimpleNamespace:
        logits = torch.zeros(input_ids.shape[0], input_ids.shape[1], self.vocab)
        for row in range(input_ids.shape[0]):
            keep = attention_mask[row].bool() if attention_mask is not None else slice(None)
            text = self.tokenizer.decode(input_ids[row][keep])
            for token, value in self.plant(text).items():
                logits[row, -1, token] = value
        return SimpleNamespace(logits=logits)


def _with_model(tm: Any, plant: Callable[[str], dict[int, float]]) -> Any:
    return dataclasses.replace(tm, model=TextPlanted(tm.tokenizer, plant))


@pytest.fixture(scope="module")
def tiny() -> Any:
    return build_tiny("llama")


# --------------------------------------------------------------------- questionnaire


def test_questionnaire_planted_scores_and_reverse_keying(planted_likert: Any) -> None:
    result = run_questionnaire(planted_likert, STATEMENTS)
    assert len(result.items) == len(STATEMENTS) * len(TEMPLATES) * 2
    for row in result.items:
        assert row.probs == pytest.approx(PLANTED, abs=1e-6)
        assert row.expected == pytest.approx(3.5, abs=1e-5)
        assert row.argmax == 4
        if row.keyed == "-":
            assert row.score == pytest.approx(2.5, abs=1e-5)
            assert row.score_argmax == 2
        else:
            assert row.score == pytest.approx(3.5, abs=1e-5)
        assert row.label_mass == pytest.approx(1.0, abs=1e-6)
    extraversion = result.trait("E")
    assert extraversion.n_items == 3
    assert extraversion.score == pytest.approx((3.5 + 2.5 + 3.5) / 3, abs=1e-5)
    # a preference that follows the meaning of the numbers: both orders agree
    assert extraversion.order_asymmetry == pytest.approx(0.0, abs=1e-6)
    assert extraversion.template_sd == pytest.approx(0.0, abs=1e-6)
    assert result.scores["A"] == pytest.approx(3.0, abs=1e-5)  # 3.5 and 6 − 3.5


def test_questionnaire_detects_position_bias(tiny: Any) -> None:
    ids = resolve_label_tokens(tiny, ["1", "2", "3", "4", "5"]).ids

    def first_listed(text: str) -> dict[int, float]:  # picks whatever option is listed first
        first = re.search(r"\n([1-5]) = ", text)
        assert first is not None
        return {ids[int(first.group(1)) - 1]: 12.0}

    fake = _with_model(tiny, first_listed)
    result = run_questionnaire(fake, STATEMENTS, traits="E", share_prefix=False)
    ascending = [r.expected for r in result.items if r.order == "ascending"]
    descending = [r.expected for r in result.items if r.order == "descending"]
    assert np.allclose(ascending, 1.0, atol=1e-3) and np.allclose(descending, 5.0, atol=1e-3)
    # raw asymmetry is −4 whatever the keying, so it cannot cancel within a trait
    assert result.trait("E").order_asymmetry == pytest.approx(-4.0, abs=1e-2)
    assert result.order_asymmetry == pytest.approx(-4.0, abs=1e-2)
    assert [t.trait for t in result.traits] == ["E"]


def test_questionnaire_meaning_preference_is_order_symmetric_in_text_fake(tiny: Any) -> None:
    ids = resolve_label_tokens(tiny, ["1", "2", "3", "4", "5"]).ids
    fake = _with_model(tiny, lambda text: {ids[1]: 8.0})  # always "2"
    result = run_questionnaire(fake, STATEMENTS, share_prefix=False)
    assert result.order_asymmetry == pytest.approx(0.0, abs=1e-6)
    assert {r.argmax for r in result.items} == {2}
    assert result.trait("A").score == pytest.approx((2 + 4) / 2, abs=1e-2)


def test_summarize_trait_hand_computed() -> None:
    def row(item: str, template: str, order: str, expected: float, keyed: str) -> ItemResponse:
        score = 6 - expected if keyed == "-" else expected
        return ItemResponse(
            item,
            "O",
            keyed,
            template,
            order,
            (0.2,) * 5,
            expected,
            round(expected),
            score,
            round(score),
            0.5,
        )

    rows = [
        row("i1", "t1", "ascending", 4.0, "+"),
        row("i1", "t1", "descending", 3.0, "+"),
        row("i2", "t1", "ascending", 2.0, "-"),
        row("i2", "t1", "descending", 2.0, "-"),
        row("i1", "t2", "ascending", 5.0, "+"),
        row("i1", "t2", "descending", 4.0, "+"),
        row("i2", "t2", "ascending", 1.0, "-"),
        row("i2", "t2", "descending", 2.0, "-"),
    ]
    summary = summarize_trait("O", rows)
    # keyed scores: t1 → 4, 3, 4, 4 (mean 3.75); t2 → 5, 4, 5, 4 (mean 4.5)
    assert summary.score == pytest.approx(4.125)
    assert dict(summary.template_scores) == pytest.approx({"t1": 3.75, "t2": 4.5})
    assert summary.template_sd == pytest.approx(np.std([3.75, 4.5], ddof=1))
    # raw: ascending mean (4+2+5+1)/4 = 3, descending (3+2+4+2)/4 = 2.75
    assert summary.order_asymmetry == pytest.approx(0.25)
    assert summary.acquiescence == pytest.approx((23 / 8) - 3)
    # α over administrations (rows) × items (columns): [[4,4],[3,4],[5,5],[4,4]]
    assert summary.alpha == pytest.approx(cronbach_alpha([[4, 4], [3, 4], [5, 5], [4, 4]]))


def test_questionnaire_result_round_trip(planted_likert: Any, tmp_path: Any) -> None:
    result = run_questionnaire(planted_likert, STATEMENTS, templates=["likert"])
    result.save(tmp_path)
    loaded = QuestionnaireResult.load(tmp_path)
    assert loaded.items == result.items
    assert loaded.traits[0].score == result.traits[0].score
    assert math.isnan(loaded.traits[0].alpha) == math.isnan(result.traits[0].alpha)
    header = (tmp_path / "questionnaire_items.csv").read_text().splitlines()[0]
    assert header.startswith("item_id,trait,keyed,template,order") and "p5" in header
    data = json.loads((tmp_path / "questionnaire.json").read_text())  # strict JSON: no NaN
    assert data["kind"] == "questionnaire" and data["config"]["n_items"] == 5
    assert (tmp_path / "questionnaire_traits.csv").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"statements": []}, "questionnaire is empty"),
        ({"traits": ["Z"]}, "unknown trait"),
        ({"traits": "C"}, "no statements for trait(s) C"),
        ({"templates": ["nope"]}, "unknown questionnaire template"),
        ({"orders": ["sideways"]}, "unknown option order"),
        ({"statements": [Item("x", "Q", "I am.", "+")]}, "unknown trait 'Q'"),
        ({"statements": [Item("x", "E", "I am.", "?")]}, "keyed='?'"),
        ({"statements": [STATEMENTS[0], STATEMENTS[0]]}, "appears twice"),
    ],
)
def test_questionnaire_bad_inputs(tiny: Any, kwargs: dict[str, Any], message: str) -> None:
    statements = kwargs.pop("statements", STATEMENTS)
    with pytest.raises(DataError, match=re.escape(message)):
        run_questionnaire(tiny, statements, **kwargs)


# --------------------------------------------------------------------- prefix sharing


@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_sharing_and_batching_match_plain_path(family: str) -> None:
    tm = build_tiny(family)
    labels = resolve_label_tokens(tm, ["1", "2", "3", "4", "5"])
    # short prompts: gpt2's tiny config has only 128 positions
    sequences = [
        tm.format(None, f"Rate it, 1 to 5.\n\nStatement: {s.text}").input_ids for s in STATEMENTS
    ]
    widths: list[int] = []
    handle = tm.model.register_forward_pre_hook(
        lambda module, args, kwargs: widths.append(kwargs["input_ids"].shape[1]),
        with_kwargs=True,
    )
    try:
        shared = label_distribution(tm, sequences, labels, batch_size=3, share_prefix=True)
    finally:
        handle.remove()
    assert len(widths) == 3 and widths[0] >= 8  # one prefix pass, then two suffix batches
    assert max(widths[1:]) < min(len(s) for s in sequences)
    plain = label_distribution(tm, sequences, labels, batch_size=1, share_prefix=False)
    batched = label_distribution(tm, sequences, labels, batch_size=5, share_prefix=False)
    assert np.allclose(shared.probs, plain.probs, atol=1e-5)
    assert np.allclose(batched.probs, plain.probs, atol=1e-5)
    assert np.allclose(shared.label_mass, plain.label_mass, atol=1e-5)
    # and the plain path is the model's own logits at the last position
    with torch.inference_mode():
        logits = tm.model(input_ids=torch.tensor([sequences[0]])).logits[0, -1]
    expected = torch.softmax(logits[list(labels.ids)], -1).numpy()
    assert np.allclose(plain.probs[0], expected, atol=1e-5)


def test_measurement_sees_an_active_hook(tiny: Any) -> None:
    """What a steering context does is measured: an all-position hook changes the
    answers, identically with and without prefix sharing."""
    baseline = run_questionnaire(tiny, STATEMENTS, templates=["likert"])

    def push(hidden: torch.Tensor) -> torch.Tensor:
        return hidden + 3.0

    with hooks_installed(tiny.adapter, [("resid[1]", push)]):
        shared = run_questionnaire(tiny, STATEMENTS, templates=["likert"])
        plain = run_questionnaire(tiny, STATEMENTS, templates=["likert"], share_prefix=False)
    moved = [
        abs(a.expected - b.expected) for a, b in zip(baseline.items, shared.items, strict=True)
    ]
    assert max(moved) > 1e-4
    assert [r.expected for r in shared.items] == pytest.approx(
        [r.expected for r in plain.items], abs=1e-5
    )


def test_label_tokens_resolved_with_plain_format() -> None:
    tm = build_tiny("gpt2", template=None)  # base model: "Question: ...\nAnswer:" format
    labels = resolve_label_tokens(tm, ["1", "2", "3", "4", "5"])
    assert len(set(labels.ids)) == 5
    decoded = [tm.tokenizer.decode([i]) for i in labels.ids]
    assert [d.strip() for d in decoded] == ["1", "2", "3", "4", "5"]


# --------------------------------------------------------------------- forced choice


def test_forced_choice_label_bias_is_symmetric() -> None:
    tm = build_tiny("llama")
    a, b = resolve_label_tokens(tm, ["A", "B"]).ids
    tm = _plant_bias(tm, {a: 0.8, b: 0.2})  # always prefers the label "A"
    result = run_forced_choice(tm, CHOICES)
    for trait in result.traits:
        assert trait.score == pytest.approx(0.5, abs=1e-6)  # cancels over both orders
        assert trait.order_bias == pytest.approx(0.3, abs=1e-6)
        assert trait.consistency == 0.0  # the content winner flips with the order
    assert len(result.items) == 2 * len(CHOICES)
    assert [t.trait for t in result.traits] == ["C", "E"]


def test_forced_choice_content_preference(tiny: Any, tmp_path: Any) -> None:
    a, b = resolve_label_tokens(tiny, ["A", "B"]).ids
    highs = {c.high_option for c in CHOICES}

    def prefers_high(text: str) -> dict[int, float]:
        option_a = re.search(r"\nA\) (.*)\n", text)
        assert option_a is not None
        return {a: 6.0} if option_a.group(1) in highs else {b: 6.0}

    result = run_forced_choice(
        _with_model(tiny, prefers_high), CHOICES, traits="E", share_prefix=False
    )
    summary = result.trait("E")
    p_high = 1 / (1 + math.exp(-6.0))
    assert summary.score == pytest.approx(p_high, abs=1e-6)
    assert summary.order_bias == pytest.approx(0.0, abs=1e-6)
    assert summary.consistency == 1.0
    result.save(tmp_path)
    assert ForcedChoiceResult.load(tmp_path).items == result.items


def test_forced_choice_bad_inputs(tiny: Any) -> None:
    with pytest.raises(DataError, match="no forced-choice items"):
        run_forced_choice(tiny, [])
    with pytest.raises(DataError, match="trait"):
        run_forced_choice(tiny, CHOICES, traits="openness")
    with pytest.raises(DataError, match="unknown trait"):
        run_forced_choice(tiny, CHOICES, traits=["Z"])


# --------------------------------------------------------------------- statistics


def test_cronbach_alpha_hand_computed() -> None:
    scores = [[1, 2, 3], [2, 3, 3], [3, 3, 4], [4, 5, 5]]
    # item variances 5/3, 19/12, 11/12 (sum 25/6); total variance 35/3 → α = 1.5 · 9/14
    assert cronbach_alpha(scores) == pytest.approx(27 / 28)
    assert cronbach_alpha([[1, 1, 1], [2, 2, 2], [3, 3, 3]]) == pytest.approx(1.0)
    assert math.isnan(cronbach_alpha([[2, 2], [2, 2]]))  # no variance: undefined
    assert math.isnan(cronbach_alpha([[1], [2]]))  # one item
    with pytest.raises(DataError):
        cronbach_alpha([1, 2, 3])


def test_bootstrap_ci_hand_checkable() -> None:
    ci = bootstrap_ci([0.0, 1.0], n_boot=2000, seed=1)
    # resampled means are 0, 0.5, 1 with probability 1/4, 1/2, 1/4
    assert (ci.estimate, ci.low, ci.high) == (0.5, 0.0, 1.0)
    constant = bootstrap_ci([2.0, 2.0, 2.0])
    assert (constant.low, constant.high) == (2.0, 2.0)
    again = bootstrap_ci([1.0, 4.0, 2.0, 8.0], seed=3)
    assert again == bootstrap_ci([1.0, 4.0, 2.0, 8.0], seed=3)  # seeded → reproducible
    assert again.contains(again.estimate)
    paired = paired_bootstrap_ci([1.0, 2.0, 5.0], [0.0, 1.0, 4.0])
    assert (paired.estimate, paired.low, paired.high) == (1.0, 1.0, 1.0)
    median = bootstrap_ci([1.0, 2.0, 100.0], stat=np.median)
    assert median.estimate == 2.0
    with pytest.raises(DataError):
        bootstrap_ci([])
    with pytest.raises(DataError):
        bootstrap_ci([1.0, float("nan")])
    with pytest.raises(DataError):
        paired_bootstrap_ci([1.0], [1.0, 2.0])
    with pytest.raises(DataError):
        bootstrap_ci([1.0], level=1.5)


def test_effect_sizes_hand_computed() -> None:
    assert cohens_d([1, 2, 3], [3, 4, 5]) == pytest.approx(-2.0)
    # means 5 and 2; variances 20/3 and 1 → pooled (20 + 2)/5 = 4.4
    assert cohens_d([2, 4, 6, 8], [1, 2, 3]) == pytest.approx(3 / math.sqrt(4.4))
    assert math.isnan(cohens_d([1, 1], [1, 1]))
    # differences 2, 3, 2, 3: mean 2.5, sd sqrt(1/3)
    assert paired_effect_size([3, 5, 4, 6], [1, 2, 2, 3]) == pytest.approx(2.5 / math.sqrt(1 / 3))
    assert math.isnan(paired_effect_size([1, 2], [0, 1]))  # constant difference


# --------------------------------------------------------------------- cost


def test_perplexity_equals_exp_mean_nll(tiny: Any) -> None:
    text = "You are a calm and friendly person who enjoys quiet evenings."
    ids = torch.tensor([tiny.tokenizer(text)["input_ids"]])
    with torch.inference_mode():
        logits = tiny.model(input_ids=ids).logits[0]
    nll = torch.nn.functional.cross_entropy(logits[:-1], ids[0, 1:])
    result = perplexity(tiny, text)
    assert result.perplexity == pytest.approx(math.exp(nll.item()), rel=1e-5)
    assert result.n_tokens == ids.shape[1] - 1


def test_perplexity_sliding_window_scores_each_token_once(tiny: Any) -> None:
    text = "How would you spend a free Saturday afternoon? I like parties and people. " * 3
    ids = tiny.tokenizer(text)["input_ids"]
    window, stride = 12, 5
    nll: dict[int, float] = {}
    with torch.inference_mode():
        for begin in range(0, len(ids), stride):
            chunk = torch.tensor([ids[begin : begin + window]])
            log_probs = torch.log_softmax(tiny.model(input_ids=chunk).logits[0], -1)
            for offset in range(1, chunk.shape[1]):
                position = begin + offset
                nll.setdefault(position, -log_probs[offset - 1, chunk[0, offset]].item())
            if begin + window >= len(ids):
                break
    result = perplexity(tiny, text, max_length=window, stride=stride)
    assert result.n_tokens == len(ids) - 1 == len(nll)
    assert result.mean_nll == pytest.approx(np.mean(list(nll.values())), rel=1e-5)
    # a window as long as the text is the plain full-context perplexity
    assert perplexity(tiny, text, max_length=len(ids)).perplexity == pytest.approx(
        perplexity(tiny, text).perplexity, rel=1e-6
    )
    with pytest.raises(DataError, match="stride"):
        perplexity(tiny, text, max_length=8, stride=8)


def test_perplexity_default_text_on_gpt2_with_short_context() -> None:
    tm = build_tiny("gpt2")  # 128 learned positions < length of the neutral text
    assert len(tm.tokenizer(NEUTRAL_TEXT)["input_ids"]) > 128
    result = perplexity(tm)
    assert result.window == 128 and math.isfinite(result.perplexity)
    assert 280 <= len(NEUTRAL_TEXT.split()) <= 340


def test_distinct_n_and_repetition_hand_computed() -> None:
    texts = ["the cat sat", "The cat ran"]
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)  # the, cat, sat, ran
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)  # "the cat" twice
    assert distinct_n(["Hi, hi!"], 1) == pytest.approx(3 / 4)  # hi , hi !
    assert math.isnan(distinct_n(["", "  "], 1))
    # "a b a b a b": 5 bigrams, 2 distinct → 0.6; "x y z": no repeat; "q": skipped
    assert repetition_rate(["a b a b a b", "x y z", "q"], n=2) == pytest.approx(0.3)
    assert math.isnan(repetition_rate(["short"], n=4))
    cost = text_cost(["I love I love I love it", "A calm day."])
    assert cost.n_texts == 2 and cost.mean_words == pytest.approx((7 + 4) / 2)
    assert cost.distinct_1 == pytest.approx(7 / 11)  # i, love, it, a, calm, day, .
    # text 1: 4-grams (i love i love) ×2, (love i love i), (love i love it) → 1 − 3/4;
    # text 2: "a calm day ." is one 4-gram → 0; mean 0.125
    assert cost.repetition_rate == pytest.approx(0.125)
    with pytest.raises(DataError):
        text_cost([])


# --------------------------------------------------------------------- probe judge


class SumReadout:
    """A representational judge stand-in: trait 0 = sum of the hidden state, trait 1 = −sum."""

    traits = ["E", "N"]
    pooling = "mean"

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[int, ...], int]] = []

    def readout(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        self.calls.append((tuple(hidden.shape), layer))
        total = hidden.sum(-1, keepdim=True)
        return torch.cat([total, -total], dim=-1)


def test_probe_scores_read_the_answer_span(tiny: Any) -> None:
    from traitlens.capture import capture_activations

    prompts = [Prompt("Do you like parties?", None, "p0")] * 3
    answers = ["Yes, I love parties and people.", "No, I like quiet evenings.", "  "]
    judge = SumReadout()
    scores = probe_scores(tiny, prompts, answers, judge, layer=-1)
    assert scores.traits == ("E", "N") and scores.scores.shape == (3, 2)
    assert judge.calls == [((3, tiny.identity.d_model), tiny.n_layers - 1)]
    assert scores.scores[0, 0] != pytest.approx(scores.scores[1, 0])  # same prompt, answers differ
    assert np.isnan(scores.scores[2]).all()  # empty answer: nothing to read
    acts = capture_activations(
        tiny,
        prompts[:2],
        answers=answers[:2],
        span="answer",
        poolings=("mean",),
        layers=[tiny.n_layers - 1],
        neuron_stats=False,
        progress=False,
    )
    direct = acts.layer(tiny.n_layers - 1, "resid", "mean").sum(-1).numpy()
    assert scores.scores[:2, 0] == pytest.approx(direct, rel=1e-5)
    assert scores.mean()["E"] == pytest.approx(direct.mean(), rel=1e-5)
    assert scores.to_dict()["scores"][2] == [None, None]
    with pytest.raises(DataError, match="answers"):
        probe_scores(tiny, prompts, answers[:2], judge, layer=0)


# --------------------------------------------------------------------- embedding judge


def _planted_embedder(dim: int = 6) -> Any:
    """Texts containing "HIGH-<T>" / "LOW-<T>" point along +/- axis T (plus a shared
    offset the judge must centre away); anything else sits at the offset."""
    axes = {t: i for i, t in enumerate("OCEAN")}
    offset = np.full(dim, 5.0)

    def embed(texts: Any) -> np.ndarray:
        rows = []
        for text in texts:
            v = offset.copy()
            for t, i in axes.items():
                if f"HIGH-{t}" in text:
                    v[i] += 1.0 + 0.1 * len(text) % 3
                if f"LOW-{t}" in text:
                    v[i] -= 1.0 + 0.1 * len(text) % 3
            rows.append(v)
        return np.array(rows)

    return embed


def _keyed(trait: str, n: int = 3) -> list[Any]:
    from traitlens.data.schema import Statement

    return [
        Statement(id=f"{trait}{pole}{i}", trait=trait, text=f"I am {pole}-{trait} {i}", keyed=key)
        for pole, key in (("HIGH", "+"), ("LOW", "-"))
        for i in range(n)
    ]


def test_embedding_judge_on_planted_embeddings() -> None:
    from traitlens.evaluate.embedding import embedding_scores, fit_embedding_judge

    embed = _planted_embedder()
    judge = fit_embedding_judge(embed, _keyed("E", 6) + _keyed("N", 6), traits="E,N")
    assert judge.traits == ("E", "N")
    assert judge.loo_auc == {"E": 1.0, "N": 1.0}  # held-out statements land on their pole
    assert judge.loo_p["E"] < 0.05 and judge.loo_p["N"] < 0.05
    scores = embedding_scores(["so HIGH-E", "very LOW-E", "HIGH-N", ""], judge, embed)
    assert scores.source == "embedding" and scores.scores.shape == (4, 2)
    assert scores.scores[0, 0] > 0.5 and scores.scores[1, 0] < -0.5
    assert scores.scores[2, 1] > 0.5 and abs(scores.scores[2, 0]) < scores.scores[2, 1]
    assert np.isnan(scores.scores[3]).all()  # empty answer: nothing to embed


def test_embedding_judge_loo_auc_is_unbiased_for_unrelated_text() -> None:
    """On random embeddings the leave-one-out AUC must average 0.5. Keeping the held-out
    statement in the centring mean biases it to about 0.1 (an earlier bug)."""
    from traitlens.evaluate.embedding import fit_embedding_judge

    aucs = []
    for seed in range(30):
        rng = np.random.default_rng(seed)
        table: dict[str, np.ndarray] = {}

        def embed(texts: Any, table: Any = table, rng: Any = rng) -> np.ndarray:
            return np.array([table.setdefault(t, rng.normal(size=16)) for t in texts])

        judge = fit_embedding_judge(embed, _keyed("O", 12), traits="O", permutations=0)
        aucs.append(judge.loo_auc["O"])
    assert 0.42 < float(np.mean(aucs)) < 0.58  # single draws vary widely at n = 24


def test_embedding_judge_bad_inputs(tiny: Any) -> None:
    from traitlens.data.schema import Statement
    from traitlens.evaluate.embedding import (
        embedding_scores,
        fit_embedding_judge,
        model_embedder,
    )

    embed = _planted_embedder()
    only_plus = [s for s in _keyed("A") if s.keyed == "+"]
    with pytest.raises(DataError, match="keyed both"):
        fit_embedding_judge(embed, only_plus, traits="A")
    with pytest.raises(DataError, match="one finite vector per text"):
        fit_embedding_judge(lambda texts: np.zeros((1, 3)), _keyed("A"), traits="A")
    with pytest.raises(DataError, match="one finite vector per text"):
        fit_embedding_judge(lambda texts: np.full((len(texts), 3), np.nan), _keyed("A"))
    judge = fit_embedding_judge(embed, _keyed("A"), traits="A")
    with pytest.raises(DataError, match="same embedder"):
        judge.score(np.zeros((2, 4)))
    with pytest.raises(DataError, match="no answers"):
        embedding_scores([], judge, embed)
    with pytest.raises(Exception, match="layer"):
        model_embedder(tiny, layer=99)
    assert isinstance(Statement, type)


def test_model_embedder_reads_answer_tokens(tiny: Any) -> None:
    from traitlens.evaluate.embedding import default_embedding_layer, model_embedder

    embed = model_embedder(tiny)
    vectors = embed(["I love parties.", "I prefer quiet evenings.", "I love parties."])
    assert vectors.shape == (3, tiny.identity.d_model)
    assert np.allclose(vectors[0], vectors[2], atol=1e-5)  # same text, same vector
    assert not np.allclose(vectors[0], vectors[1])
    assert embed.layer == default_embedding_layer(tiny.n_layers)


# --------------------------------------------------------------------- HTTP judge


class _JudgeHandler(BaseHTTPRequestHandler):
    bodies: list[dict[str, Any]] = []
    hits: dict[str, int] = {}

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length))
        type(self).bodies.append({"path": self.path, **body})
        hits = type(self).hits
        hits[self.path] = hits.get(self.path, 0) + 1
        if self.path.startswith("/slow"):
            time.sleep(1.5)
        if self.path.startswith(("/flaky", "/busy", "/bad")) and (
            self.path.startswith(("/busy", "/bad")) or hits[self.path] <= 2
        ):
            # /flaky: 503 twice, then fine; /busy: always 429; /bad: always 400
            self.send_response(
                400 if self.path.startswith("/bad") else 503 if "flaky" in self.path else 429
            )
            self.send_header("Retry-After-Ms", "1")  # honoured by the client: a fast test
            self.end_headers()
            self.wfile.write(b"try later")
            return
        if self.path.startswith("/echo"):
            # rates an answer by the digit it holds, so order and pairing can be checked
            answer = body["messages"][1]["content"]
            payload = json.dumps({"choices": [{"message": {"content": answer[-1]}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        if self.path.startswith("/error"):
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"boom")
            return
        payload: bytes
        if self.path.startswith(("/good", "/flaky")):
            payload = json.dumps({"choices": [{"message": {"content": "Rating: 4/5"}}]}).encode()
        elif self.path.startswith("/ramble"):
            payload = json.dumps({"choices": [{"message": {"content": "I cannot say."}}]}).encode()
        elif self.path.startswith("/nochoices"):
            payload = json.dumps({"error": "model not found"}).encode()
        else:
            payload = b"<html>not json</html>"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        try:
            self.wfile.write(payload)
        except OSError:  # the client gave up (timeout test)
            pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture(scope="module")
def judge_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _JudgeHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_judge_good_reply(judge_server: str) -> None:
    judge = HttpJudge(f"{judge_server}/good/v1", model="rater", timeout=5)
    assert judge.endpoint == f"{judge_server}/good/v1/chat/completions"
    assert judge.rate("E", "I love parties!", question="Weekend plans?") == 4.0
    body = _JudgeHandler.bodies[-1]
    assert body["path"] == "/good/v1/chat/completions" and body["model"] == "rater"
    assert (
        body["messages"][0]["role"] == "system" and "extraversion" in body["messages"][0]["content"]
    )
    assert "I love parties!" in body["messages"][1]["content"]
    full = HttpJudge(f"{judge_server}/good/chat/completions")
    assert full.endpoint == f"{judge_server}/good/chat/completions"  # used as given
    scores = endpoint_scores(full, ["a", "b"], traits=["openness", "N"])
    assert scores.traits == ("O", "N") and scores.scores.tolist() == [[4.0, 4.0], [4.0, 4.0]]


def test_judge_malformed_replies(judge_server: str) -> None:
    with pytest.warns(JudgeReplyWarning, match="no rating"):
        assert math.isnan(HttpJudge(f"{judge_server}/ramble").rate("A", "hm"))
    with pytest.raises(JudgeError, match="did not reply with JSON"):
        HttpJudge(f"{judge_server}/html").rate("A", "hm")
    with pytest.raises(JudgeError, match=r"choices\[0\]\.message\.content"):
        HttpJudge(f"{judge_server}/nochoices").rate("A", "hm")
    with pytest.raises(JudgeError, match="HTTP 500"):
        HttpJudge(f"{judge_server}/error").rate("A", "hm")


def test_judge_retries_transient_errors_only(judge_server: str) -> None:
    hits = _JudgeHandler.hits
    assert HttpJudge(f"{judge_server}/flaky/a", retries=2).rate("E", "hi") == 4.0
    assert hits["/flaky/a/chat/completions"] == 3  # two 503s, then the answer
    with pytest.raises(JudgeError, match=r"HTTP 503.*after 1 retries"):
        HttpJudge(f"{judge_server}/flaky/b", retries=1).rate("E", "hi")
    with pytest.raises(JudgeError, match="HTTP 429"):
        HttpJudge(f"{judge_server}/busy", retries=3).rate("E", "hi")
    assert hits["/busy/chat/completions"] == 4  # Retry-After-Ms honoured, 1 + 3 retries
    with pytest.raises(JudgeError, match="HTTP 400"):
        HttpJudge(f"{judge_server}/bad", retries=3).rate("E", "hi")
    assert hits["/bad/chat/completions"] == 1  # a client error is not retried
    with pytest.raises(JudgeError, match="must be ≥ 0"):
        HttpJudge(f"{judge_server}/good", retries=-1).rate("E", "hi")
    with pytest.raises(JudgeError, match=r"HTTP 500.*after 0 retries"):
        HttpJudge(f"{judge_server}/error", retries=0).rate("A", "hm")
    assert hits["/error/chat/completions"] >= 1


def test_judge_ratings_concurrent_keep_order(judge_server: str) -> None:
    judge = HttpJudge(f"{judge_server}/echo", timeout=5)
    answers = [f"answer {i % 5 + 1}" for i in range(12)]
    expected = [[float(i % 5 + 1)] * 2 for i in range(12)]
    assert judge_ratings(judge, answers, traits=["O", "N"], workers=4) == expected
    assert judge_ratings(judge, answers, traits=["O", "N"], workers=1) == expected
    with pytest.raises(DataError, match="workers"):
        judge_ratings(judge, answers, workers=0)


def test_judge_timeout(judge_server: str) -> None:
    with pytest.raises(JudgeUnavailableError, match=r"did not answer within 0\.3 s"):
        HttpJudge(f"{judge_server}/slow", timeout=0.3, retries=1).rate("C", "I plan.")


def test_judge_unreachable_url_names_url_and_fix() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(JudgeUnavailableError) as info:
        HttpJudge(url, timeout=2).rate("O", "text")
    message = str(info.value)
    assert f"127.0.0.1:{port}/v1/chat/completions" in message and "start the server" in message
    assert isinstance(info.value, TraitlensError)
    with pytest.raises(JudgeError, match="http://"):
        _ = HttpJudge("localhost:8000").endpoint
    with pytest.raises(DataError, match="unknown trait"):
        HttpJudge(url).rate("charisma", "text")


def test_parse_rating() -> None:
    assert parse_rating("4") == 4.0
    assert parse_rating("I'd say 3 out of 5") == 3.0
    assert parse_rating("10/10, or 2") == 2.0  # "10" is not a rating
    assert math.isnan(parse_rating("zero"))


# --------------------------------------------------------------------- real model


def test_cli_questionnaire_on_a_user_csv(tmp_path: Any) -> None:
    from typer.testing import CliRunner

    from traitlens.cli.main import app

    tm = build_tiny("llama")
    tm.model.save_pretrained(tmp_path / "model")
    tm.tokenizer.save_pretrained(tmp_path / "model")
    inventory = tmp_path / "inventory.csv"
    inventory.write_text(
        "id,trait,text,keyed\n"
        "ipip1,Extraversion,Am the life of the party.,+\n"
        "ipip2,E,Don't talk a lot.,R\n"
        "ipip3,agreeableness,Feel little concern for others.,-\n"
        "ipip4,A,Sympathize with others' feelings.,+\n"
    )
    args = [
        "evaluate",
        "questionnaire",
        "--model",
        str(tmp_path / "model"),
        "--statements",
        str(inventory),
        "--templates",
        "likert,accuracy",
        "--out",
        str(tmp_path / "out"),
        "--device",
        "cpu",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "tmpl sd" in result.output and "Cronbach" in result.output
    saved = QuestionnaireResult.load(tmp_path / "out")
    assert [t.trait for t in saved.traits] == ["E", "A"] and len(saved.items) == 16
    bad = CliRunner().invoke(app, [*args, "--traits", "N"])
    assert isinstance(bad.exception, DataError) and "no statements for trait(s) N" in str(
        bad.exception
    )


def test_cli_scores_an_answer_file(tmp_path: Any, judge_server: str) -> None:
    from typer.testing import CliRunner

    from traitlens.cli.main import app
    from traitlens.errors import ArtifactError

    tm = build_tiny("llama")
    tm.model.save_pretrained(tmp_path / "model")
    tm.tokenizer.save_pretrained(tmp_path / "model")
    answers = tmp_path / "answers.jsonl"
    answers.write_text(
        '{"id": "a", "question": "Weekend plans?", "answer": "A big party with friends!"}\n'
        '{"id": "b", "answer": "Reading alone at home."}\n'
        '{"id": "c", "answer": ""}\n'
    )
    base = ["evaluate", "answers", str(answers), "--model", str(tmp_path / "model")]
    args = [*base, "--traits", "E,N", "--out", str(tmp_path / "out"), "--device", "cpu"]
    result = CliRunner().invoke(app, [*args, "--judge-url", f"{judge_server}/good/v1"])
    assert result.exit_code == 0, result.output
    assert "LOO AUC" in result.output and "permutation p" in result.output
    saved = json.loads((tmp_path / "out" / "answer_scores.json").read_text())
    assert set(saved["means"]) == {"embedding", "judge"} and saved["traits"] == ["E", "N"]
    assert saved["means"]["judge"] == {"E": 4.0, "N": 4.0}  # the test server always says 4
    rows = (tmp_path / "out" / "answer_scores.csv").read_text().splitlines()
    assert rows[0].startswith("id,question,embedding_E,embedding_N,judge_E,judge_N")
    assert len(rows) == 4 and rows[3].startswith("c,,,")  # empty answer: blank (NaN) scores
    missing = CliRunner().invoke(app, [*args, "--probes", str(tmp_path / "nowhere")])
    assert isinstance(missing.exception, ArtifactError) and "probes.json not found" in str(
        missing.exception
    )
    malformed = tmp_path / "bad.csv"
    malformed.write_text("id,response\n1,hello\n")
    bad = CliRunner().invoke(app, ["evaluate", "answers", str(malformed), "--model", "x"])
    assert isinstance(bad.exception, DataError) and "answer" in str(bad.exception)


@pytest.mark.slow
def test_embedded_model_full_questionnaire(smol: Any) -> None:
    try:
        from traitlens.data import load_statements

        statements: list[Any] = list(load_statements())
    except ImportError:  # data stage not available: a few inline statements
        statements = STATEMENTS
    # Budget in single-thread CPU seconds: a machine shared with other jobs makes wall
    # time meaningless, and one thread keeps OpenMP spin-waiting out of the count.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cpu, wall = time.process_time(), time.perf_counter()
        result = run_questionnaire(smol, statements)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        torch.set_num_threads(threads)
    assert len(result.items) == len(statements) * 6
    for summary in result.traits:
        assert 1.0 <= summary.score <= 5.0
        assert math.isfinite(summary.alpha)
        assert 0.0 < summary.label_mass <= 1.0
    assert cpu < 60, f"questionnaire used {cpu:.1f} CPU s ({wall:.1f} s wall)"


@pytest.mark.slow
def test_embedded_model_cli(tmp_path: Any) -> None:
    from typer.testing import CliRunner

    from traitlens.cli.main import app

    runner = CliRunner()
    common = ["--traits", "E", "--out", str(tmp_path), "--device", "cpu"]
    for args in (
        ["evaluate", "questionnaire", "--templates", "likert", *common],
        ["evaluate", "forced-choice", *common],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["evaluate", "perplexity", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert QuestionnaireResult.load(tmp_path).traits[0].trait == "E"
    assert ForcedChoiceResult.load(tmp_path).traits[0].trait == "E"
    ppl = json.loads((tmp_path / "perplexity.json").read_text())
    assert 1.0 < ppl["perplexity"] < 100.0


def test_readouts_read_the_hook_point_the_probes_were_fitted_on() -> None:
    """`readouts()` used to read "resid" whatever the probe was fitted on; a probe fitted
    on attn_out must be applied to attn_out states."""
    from traitlens.capture import capture_activations
    from traitlens.data import build_contrastive_set
    from traitlens.evaluate.interventions import ReadoutSpec, readouts
    from traitlens.probe import fit_probes

    tm = build_tiny("llama")
    prompts = build_contrastive_set(["E"], n_personas_per_pole=2, n_questions=4, seed=0)
    act = capture_activations(
        tm,
        prompts,
        kinds=("resid", "attn_out"),
        poolings=("mean",),
        neuron_stats=False,
        progress=False,
    )
    probes = fit_probes(
        act, prompts, ["E"], kind="attn_out", pooling="mean", folds=2, progress=False
    )
    layer = probes.layers[-1]
    got = readouts(tm, prompts, ReadoutSpec(probes, {"E": layer}, pooling="mean"), ["E"])[:, 0]
    want = probes.readout(act.layer(layer, "attn_out", "mean"), layer)[:, 0].numpy()
    wrong = probes.readout(act.layer(layer, "resid", "mean"), layer)[:, 0].numpy()
    assert np.allclose(got, want, atol=1e-4)
    assert not np.allclose(got, wrong, atol=1e-3)
