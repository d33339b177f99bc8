"""The concept design: item-token capture, planted concept neurons and directions
recovered, facet-grouped folds, the control task, the targeted success rate and
spillover on hand-computed cases, domain-label tokens on three tokenizer families,
bad inputs refused with one clear message, and a resumable end-to-end run.

Tiny random-weight models and hand-made activations keep this file fast; the
embedded SmolLM2 is loaded only where its real tokenizer matters (label tokens).
"""

from __future__ import annotations

import csv
import math
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from conftest import CHATML, build_tiny
from traitlens.artifact_io import ModelIdentity
from traitlens.concepts import (
    ITEM_TEMPLATES,
    ConceptConfig,
    ConceptMeasurement,
    ItemActivations,
    capture_items,
    concept_effect,
    domain_labels,
    facet_folds,
    fit_domain_probes,
    format_items,
    matched_random,
    resolve_domain_tokens,
    run_concepts,
    select_concept_neurons,
    strongest,
    study_claims,
)
from traitlens.concepts.labels import check_labels
from traitlens.concepts.neurons import concept_neurons_job
from traitlens.concepts.pipeline import domain_direction
from traitlens.concepts.probes import control_domains
from traitlens.data import TRAITS, ConceptItem, check_item_bank, load_items
from traitlens.errors import DataError, ModelError
from traitlens.models import hooks_installed
from traitlens.models.loading import wrap_model
from traitlens.provenance import RunConflictError, persist

# A small user bank in the library's CSV layout: 5 domains × 2 facets × 4 items.
BANK: dict[str, dict[str, list[str]]] = {
    "O": {
        "imagination": [
            "I often daydream about faraway places.",
            "I enjoy inventing stories in my head.",
            "I rarely picture things that are not real.",
            "My mind wanders into fantasy worlds.",
        ],
        "curiosity": [
            "I like to read about new ideas.",
            "I enjoy thinking about abstract puzzles.",
            "I avoid philosophical discussions.",
            "I love learning how things work.",
        ],
    },
    "C": {
        "order": [
            "I keep my desk neat and tidy.",
            "I put things back where they belong.",
            "I often leave a mess around me.",
            "I follow a daily schedule.",
        ],
        "diligence": [
            "I finish tasks before the deadline.",
            "I work hard to do things well.",
            "I give up when work gets boring.",
            "I check my work twice.",
        ],
    },
    "E": {
        "sociability": [
            "I love going to big parties.",
            "I talk to strangers easily.",
            "I prefer to stay home alone.",
            "I make friends quickly.",
        ],
        "energy": [
            "I am always on the go.",
            "I laugh loudly and often.",
            "I feel tired around crowds.",
            "I enjoy lively, busy days.",
        ],
    },
    "A": {
        "kindness": [
            "I go out of my way to help others.",
            "I feel sympathy for people in need.",
            "I insult people when I am annoyed.",
            "I am gentle with everyone I meet.",
        ],
        "trust": [
            "I believe most people mean well.",
            "I trust what others tell me.",
            "I suspect hidden motives in others.",
            "I assume the best about people.",
        ],
    },
    "N": {
        "anxiety": [
            "I worry about things that might go wrong.",
            "I get nervous before small events.",
            "I rarely feel anxious.",
            "I fear the worst will happen.",
        ],
        "moodiness": [
            "My mood changes quickly.",
            "I get upset over small things.",
            "I stay calm under pressure.",
            "I often feel sad for no reason.",
        ],
    },
}
KEYS = ["+", "+", "-", "+"]


def bank_rows(drop: str | None = None, one_facet: str | None = None) -> list[dict[str, str]]:
    """BANK as CSV rows; ``drop`` leaves a domain out, ``one_facet`` merges its facets."""
    rows = []
    for trait, facets in BANK.items():
        if trait == drop:
            continue
        for facet, texts in facets.items():
            for text, key in zip(texts, KEYS, strict=True):
                label = "all" if trait == one_facet else facet
                rows.append({"text": text, "trait": trait, "facet": label, "keyed": key})
    return rows


def write_bank(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def bank_items() -> list[ConceptItem]:
    return [ConceptItem(id=f"{r['trait']}-{n:02d}", **r) for n, r in enumerate(bank_rows())]


def synthetic_bank(n_facets: int = 3, per_facet: int = 4) -> list[ConceptItem]:
    """Five domains × ``n_facets`` facets × ``per_facet`` items (texts are placeholders)."""
    return [
        ConceptItem(
            id=f"{t}{f}{k}",
            trait=t,
            facet=f"facet_{f}",
            keyed="+" if k % 2 == 0 else "-",
            text=f"statement {k} of facet {f} in domain {t}",
        )
        for t in TRAITS
        for f in range(n_facets)
        for k in range(per_facet)
    ]


def identity(n_layers: int, d_model: int, d_mlp: int) -> ModelIdentity:
    return ModelIdentity("hand-made", "none", n_layers, d_model, d_mlp, "0" * 16)


# --------------------------------------------------------------------------- capture


@pytest.mark.parametrize("template", list(ITEM_TEMPLATES))
def test_item_span_covers_exactly_the_statement(tiny_any: Any, template: str) -> None:
    items = bank_items()[::5]
    for item, formatted in zip(items, format_items(tiny_any, items, template), strict=True):
        start, end = formatted.span("item")
        q_start, q_end = formatted.span("question")
        assert q_start <= start < end <= q_end
        decoded = tiny_any.tokenizer.decode(formatted.input_ids[start:end])
        assert decoded.strip() == item.text
        assert "Statement" not in decoded and "describes" not in decoded
        # the template's own words sit before the span, outside it
        before = tiny_any.tokenizer.decode(formatted.input_ids[q_start:start])
        assert before.strip() == ITEM_TEMPLATES[template].split("{text}")[0].strip()


def _manual_states(tm: Any, input_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpadded forward pass: block outputs ``[L, seq, d]`` (plain torch hooks on the
    Llama decoder layers) and ``mlp_act`` ``[L, seq, d_mlp]`` (via hooks_installed)."""
    blocks: dict[int, torch.Tensor] = {}
    acts: dict[int, torch.Tensor] = {}
    handles = []

    def keep_block(layer: int) -> Any:
        def hook(module: Any, args: Any, output: Any) -> None:
            blocks[layer] = (output[0] if isinstance(output, tuple) else output)[0].clone()

        return hook

    def keep_act(layer: int) -> Any:
        def hook(tensor: torch.Tensor) -> None:
            acts[layer] = tensor[0].clone()

        return hook

    try:
        for layer, module in enumerate(tm.model.model.layers):
            handles.append(module.register_forward_hook(keep_block(layer)))
        points = [(f"mlp_act[{layer}]", keep_act(layer)) for layer in range(tm.n_layers)]
        with torch.inference_mode(), hooks_installed(tm.adapter, points):
            tm.model(input_ids=torch.tensor([input_ids]))
    finally:
        for handle in handles:
            handle.remove()
    return (
        torch.stack([blocks[i] for i in range(tm.n_layers)]).float(),
        torch.stack([acts[i] for i in range(tm.n_layers)]).float(),
    )


def test_capture_pools_and_counts_over_the_statement_tokens_only(tiny_llama: Any) -> None:
    items = bank_items()[::4]
    by_id = {i.id: i for i in items}
    acts = capture_items(
        tiny_llama,
        items,
        templates=["bare", "statement"],
        poolings=["mean"],
        batch_size=3,
        progress=False,
    )
    assert acts.templates == ["bare"] * len(items) + ["statement"] * len(items)
    assert acts.pooled["mean"].shape == (2 * len(items), tiny_llama.n_layers, 32)
    assert acts.rates.shape == (2 * len(items), tiny_llama.n_layers, 64)
    span_acts = []
    for row, (item_id, template) in enumerate(zip(acts.item_ids, acts.templates, strict=True)):
        formatted = format_items(tiny_llama, [by_id[item_id]], template)[0]
        start, end = formatted.span("item")
        assert acts.n_tokens[row] == end - start
        states, mlp = _manual_states(tiny_llama, formatted.input_ids)
        span_acts.append(mlp[:, start:end])
        torch.testing.assert_close(
            acts.pooled["mean"][row], states[:, start:end].mean(1), atol=1e-4, rtol=0
        )
        share = (mlp[:, start:end] > 0).float().mean(1)
        # stored as float16: a share k/n is exact to ~5e-4
        torch.testing.assert_close(acts.rates[row].float(), share, atol=1e-3, rtol=0)
        # the template's tokens are not pooled: pooling the whole question differs
        if template == "statement":
            q_start, q_end = formatted.span("question")
            whole = states[:, q_start:q_end].mean(1)
            assert (acts.pooled["mean"][row] - whole).abs().max() > 1e-3
    # a95 is each neuron's exact 95th percentile over every statement token
    every = torch.cat(span_acts, dim=1).double()  # [L, tokens, d_mlp]
    torch.testing.assert_close(
        acts.a95.double(), torch.quantile(every, 0.95, dim=1), atol=1e-5, rtol=1e-5
    )


def test_capture_is_batch_size_invariant(tiny_llama: Any) -> None:
    items = bank_items()[1::3]  # lengths differ, so batches are left-padded
    kwargs: dict[str, Any] = dict(
        templates=["bare", "self_report"], poolings=["mean", "last", "decay"], progress=False
    )
    one = capture_items(tiny_llama, items, batch_size=1, **kwargs)
    seven = capture_items(tiny_llama, items, batch_size=7, **kwargs)
    assert one.item_ids == seven.item_ids and one.n_tokens == seven.n_tokens
    for pooling in ("mean", "last", "decay"):
        torch.testing.assert_close(one.pooled[pooling], seven.pooled[pooling])
    torch.testing.assert_close(one.rates.float(), seven.rates.float(), atol=1e-3, rtol=0)


# --------------------------------------------------------------------------- planted signal

# (layer, neuron, extra firing share on E's items): δ differs per neuron so the
# strongest-first order is known
PLANTED = [
    (1, 3, 0.30),
    (1, 17, 0.45),
    (1, 40, 0.60),
    (1, 51, 0.35),
    (2, 5, 0.50),
    (2, 22, 0.40),
    (2, 63, 0.55),
]


def planted_neuron_acts(
    items: list[ConceptItem], seed: int = 0, plant: bool = True
) -> ItemActivations:
    """Two templates per item; background firing shares in [0.3, 0.4]; PLANTED neurons
    fire more on E's items (unless not ``plant``)."""
    rng = np.random.default_rng(seed)
    rows = [(i, t) for t in ("bare", "statement") for i in items]
    rates = 0.3 + 0.1 * rng.random((len(rows), 3, 64))
    for r, (item, _) in enumerate(rows):
        if plant and item.trait == "E":
            for layer, neuron, extra in PLANTED:
                rates[r, layer, neuron] += extra
    return ItemActivations(
        identity(3, 8, 64),
        [i.id for i, _ in rows],
        [t for _, t in rows],
        [0, 1, 2],
        {"mean": torch.zeros(len(rows), 3, 8)},
        torch.from_numpy(rates).half(),
        torch.from_numpy(rng.random((3, 64))).float() + 1.0,
        [5] * len(rows),
    )


def test_planted_concept_neurons_are_recovered_and_controls_match() -> None:
    items = synthetic_bank()
    acts = planted_neuron_acts(items)
    neurons = select_concept_neurons(acts, items, [i.id for i in items], traits=TRAITS)
    planted = {(layer, neuron) for layer, neuron, _ in PLANTED}
    e = TRAITS.index("E")
    for layer, neuron, extra in PLANTED:
        assert neurons.qvalue[e, layer, neuron] <= 0.05
        assert neurons.delta[e, layer, neuron] == pytest.approx(extra, abs=0.03)
    selected = neurons.select("E", "high")
    assert {(int(a), int(b)) for a, b in zip(selected.layers, selected.indices, strict=True)} == (
        planted
    )
    false_positives = sum(int(neurons.mask(t, "high").sum()) for t in TRAITS if t != "E")
    assert false_positives <= 2

    top = strongest(selected, 0.4)
    assert len(top) == math.ceil(0.4 * len(PLANTED)) == 3
    by_size = sorted(PLANTED, key=lambda p: -p[2])[:3]
    assert {(int(a), int(b)) for a, b in zip(top.layers, top.indices, strict=True)} == {
        (layer, neuron) for layer, neuron, _ in by_size
    }
    assert len(strongest(selected, 1.0)) == len(PLANTED)
    assert len(strongest(selected, 0.01)) == 1

    control = matched_random(neurons, top, seed=0, name="E|0.4")
    assert torch.equal(
        torch.bincount(control.layers, minlength=3), torch.bincount(top.layers, minlength=3)
    )
    union = neurons.union_mask()
    assert union[1, 40] and union[2, 63]
    # over many draws (a single small draw could miss the selected neurons by luck)
    for seed in range(25):
        drawn = matched_random(neurons, strongest(selected, 1.0), seed=seed, name="E|1.0")
        assert torch.equal(drawn.layers, torch.tensor([1, 1, 1, 1, 2, 2, 2]))
        assert not any(
            bool(union[int(a), int(b)]) for a, b in zip(drawn.layers, drawn.indices, strict=True)
        )
    # δ travels layer by layer (matched within a95 bins, so the order inside a layer may
    # differ); each control neuron keeps its own a95
    for layer in (1, 2):
        torch.testing.assert_close(
            control.delta[control.layers == layer].sort().values,
            top.delta[top.layers == layer].sort().values,
        )
    torch.testing.assert_close(control.a95, neurons.a95[control.layers, control.indices])
    again = matched_random(neurons, top, seed=0, name="E|0.4")
    assert torch.equal(again.indices, control.indices)


def test_no_planted_neurons_no_selection() -> None:
    items = synthetic_bank()
    acts = planted_neuron_acts(items, plant=False)
    neurons = select_concept_neurons(acts, items, [i.id for i in items], traits=TRAITS)
    assert sum(int(neurons.mask(t, "high").sum()) for t in TRAITS) <= 2


def test_matched_control_avoids_neurons_the_npti_rule_selected() -> None:
    items = synthetic_bank()
    rng = np.random.default_rng(0)
    rates = 0.3 + 0.1 * rng.random((len(items), 3, 64))
    for r, item in enumerate(items):
        if item.trait == "E":
            rates[r, 1, :24] += 0.5  # 24 of layer 1's 64 neurons fire more on E
    acts = ItemActivations(
        identity(3, 8, 64),
        [i.id for i in items],
        ["bare"] * len(items),
        [0, 1, 2],
        {"mean": torch.zeros(len(items), 3, 8)},
        torch.from_numpy(rates).half(),
        torch.ones(3, 64),
        [5] * len(items),
    )
    # an FDR level nothing survives: what the pipeline's npti fallback edits
    neurons = select_concept_neurons(acts, items, [i.id for i in items], traits=TRAITS, fdr=1e-30)
    real = strongest(neurons.select("E", "high", "npti"), 1.0)
    assert len(real) == 24
    control = matched_random(neurons, real, seed=0, name="E|1.0")
    selected = torch.zeros(3, 64, dtype=torch.bool)
    for trait in TRAITS:
        for pole in ("high", "low"):
            selected |= neurons.npti_mask(trait, pole)
    picked = [
        bool(selected[int(a), int(b)]) for a, b in zip(control.layers, control.indices, strict=True)
    ]
    assert not any(picked), f"{sum(picked)} of {len(picked)} control neurons are npti-selected"


def planted_direction_acts(
    items: list[ConceptItem], seed: int = 0
) -> tuple[ItemActivations, torch.Tensor]:
    """Noise at every layer; at layer 1 each domain is offset along its own axis
    (E along ``u``; O/C and A/N at ± two axes orthogonal to ``u``, so the others'
    centroid is a shared offset and E − others points along ``u``)."""
    generator = torch.Generator().manual_seed(seed)
    d = 16
    basis, _ = torch.linalg.qr(torch.randn(d, 4, generator=generator, dtype=torch.float64))
    u, v1, v2, shared = basis.T
    offsets = {"E": u, "O": v1, "C": -v1, "A": v2, "N": -v2}
    rows = [(i, t) for t in ("bare", "statement") for i in items]
    pooled = torch.randn(len(rows), 3, d, generator=generator, dtype=torch.float64)
    for r, (item, _) in enumerate(rows):
        # a shared offset too: only a centroid *difference* cancels it
        pooled[r, 1] += 4.0 * offsets[item.trait] + 6.0 * shared
    acts = ItemActivations(
        identity(3, d, 8),
        [i.id for i, _ in rows],
        [t for _, t in rows],
        [0, 1, 2],
        {"mean": pooled.float()},
        torch.zeros(len(rows), 3, 8, dtype=torch.float16),
        torch.ones(3, 8),
        [6] * len(rows),
    )
    return acts, u


def test_planted_direction_is_decoded_and_recovered() -> None:
    items = synthetic_bank()
    acts, u = planted_direction_acts(items)
    train = [i.id for i in items]
    probes = fit_domain_probes(acts, items, train, traits=TRAITS, folds=3, progress=False)
    assert probes.fold_unit == "facet" and probes.n_folds == 3
    assert probes.accuracy[1] > 0.9
    assert probes.control[1] < 0.45  # chance is 0.2
    assert probes.accuracy[0] < 0.45 and probes.accuracy[2] < 0.45  # noise only
    assert probes.best_layer() == 1
    assert probes.auc[TRAITS.index("E")][1] > 0.95
    vector = domain_direction(acts, items, train, "E", [1], "mean")
    cosine = float(torch.dot(vector.direction(1).double(), u) / u.norm())
    assert cosine > 0.9
    # the readout probe fitted on all items assigns a planted E row to E
    row = acts.rows([next(i.id for i in items if i.trait == "E")])[0]
    probs = probes.probs(1, acts.pooled["mean"][row : row + 1, 1])
    assert int(probs.argmax(1)[0]) == TRAITS.index("E")


# --------------------------------------------------------------------------- folds and control


def test_facet_folds_never_train_on_a_test_facet() -> None:
    items = synthetic_bank(n_facets=3, per_facet=4)
    by_id = {i.id: i for i in items}
    row_items = [i.id for i in items] * 2  # two templates
    folds, unit = facet_folds(items, row_items, 3, seed=0)
    assert unit == "facet" and len(folds) == 3
    tested: Counter[int] = Counter()
    for fold in folds:
        train = {(by_id[row_items[r]].trait, by_id[row_items[r]].facet) for r in fold.train}
        test = {(by_id[row_items[r]].trait, by_id[row_items[r]].facet) for r in fold.test}
        assert not train & test
        assert {t for t, _ in test} == set(TRAITS)  # facets dealt within each domain
        assert set(fold.train.tolist()) | set(fold.test.tolist()) == set(range(len(row_items)))
        tested.update(fold.test.tolist())
    assert sorted(tested) == list(range(len(row_items)))
    assert set(tested.values()) == {1}


def test_folds_without_facets_hold_out_whole_items(tmp_path: Path) -> None:
    rows = [{k: v for k, v in r.items() if k != "facet"} for r in bank_rows()]
    items = load_items(write_bank(tmp_path / "no_facets.csv", rows))
    assert all(i.facet == re.sub(r"\W+", "_", i.id.lower()) for i in items)
    row_items = [i.id for i in items] * 2
    folds, unit = facet_folds(items, row_items, 4, seed=1)
    assert unit == "item"
    tested: Counter[int] = Counter()
    for fold in folds:
        train = {row_items[r] for r in fold.train}
        test = {row_items[r] for r in fold.test}
        assert not train & test  # no item on both sides, under any template
        tested.update(fold.test.tolist())
    assert sorted(tested) == list(range(len(row_items))) and set(tested.values()) == {1}


def test_control_domains_permute_the_real_labels() -> None:
    items = synthetic_bank()
    n_tokens = {i.id: 4 + n % 5 for n, i in enumerate(items)}
    first = control_domains(items, n_tokens, seed=3)
    assert set(first) == {i.id for i in items}
    assert Counter(first.values()) == Counter(i.trait for i in items)
    assert control_domains(items, n_tokens, seed=3) == first
    other = control_domains(items, n_tokens, seed=4)
    assert other != first
    assert Counter(other.values()) == Counter(i.trait for i in items)
    assert first != {i.id: i.trait for i in items}


# --------------------------------------------------------------------------- the effect maths


IDS = ["O1", "O2", "C1", "C2", "E1", "E2"]


def _measurement(
    probe: list[list[float]],
    labels: list[list[float]],
    mass: list[float],
    likert: list[float],
    ppl: float,
) -> ConceptMeasurement:
    return ConceptMeasurement(IDS, probe, labels, mass, likert, ppl)


def test_concept_effect_hand_computed() -> None:
    traits = ["O", "C", "E"]
    items = [ConceptItem(id=i, trait=i[0], facet="f", keyed="+", text=f"item {i}") for i in IDS]
    nan = float("nan")
    baseline = _measurement(
        [
            [0.7, 0.2, 0.1],
            [0.6, 0.3, 0.1],
            [0.2, 0.5, 0.3],
            [0.4, 0.35, 0.25],
            [0.1, 0.3, 0.6],
            [0.3, 0.4, 0.3],
        ],
        [
            [0.5, 0.3, 0.2],
            [0.2, 0.5, 0.3],
            [0.3, 0.4, 0.3],
            [0.4, 0.3, 0.3],
            [0.2, 0.2, 0.6],
            [0.3, 0.3, 0.4],
        ],
        [0.9, 0.8, 0.7, 0.9, 0.6, 0.5],
        [4, 2, 3, 5, 1, nan],
        20.0,
    )
    steered = _measurement(
        [
            [0.3, 0.6, 0.1],
            [0.5, 0.4, 0.1],
            [0.1, 0.8, 0.1],
            [0.2, 0.7, 0.1],
            [0.2, 0.2, 0.6],
            [0.1, 0.8, 0.1],
        ],
        [
            [0.3, 0.6, 0.1],
            [0.1, 0.7, 0.2],
            [0.1, 0.8, 0.1],
            [0.3, 0.5, 0.2],
            [0.2, 0.3, 0.5],
            [0.2, 0.5, 0.3],
        ],
        [0.5] * 6,
        [5, 2, 1, 5, 2, 3],
        25.0,
    )
    effect = concept_effect(baseline, steered, items, traits, "C", seed=0)
    rep = effect.representation
    # other domains' items: O1, O2, E1, E2; steered argmax C on O1 and E2, baseline on E2
    assert rep.tsr == pytest.approx(0.5)
    assert rep.tsr_baseline == pytest.approx(0.25)
    assert rep.retention == pytest.approx(1.0)  # C1, C2 both read as C
    assert rep.retention_baseline == pytest.approx(0.5)  # C2 read as O
    assert rep.shares == pytest.approx([0.25, 0.5, 0.25])
    assert rep.shares_baseline == pytest.approx([0.5, 0.25, 0.25])
    assert rep.n_items == 4

    def logit(p: float) -> float:
        return math.log(p / (1 - p))

    shifts = [logit(0.6) - logit(0.2), logit(0.4) - logit(0.3), logit(0.2) - logit(0.3)]
    shifts.append(logit(0.8) - logit(0.4))
    shift = rep.log_odds_shift
    assert shift.mean == pytest.approx(sum(shifts) / 4)
    assert shift.low <= shift.mean <= shift.high

    labels = effect.labels
    assert labels.tsr == pytest.approx(0.75)  # O1, O2, E2
    assert labels.tsr_baseline == pytest.approx(0.25)  # O2
    assert labels.accuracy == pytest.approx(3 / 6)  # C1, C2, E1
    assert labels.accuracy_baseline == pytest.approx(4 / 6)  # O1, C1, E1, E2
    assert labels.delta_p_target.mean == pytest.approx((0.3 + 0.2 + 0.1 + 0.2) / 4)
    assert labels.delta_p == pytest.approx([-0.1, 0.2, -0.1])
    assert labels.label_mass == pytest.approx(0.5)
    assert labels.label_mass_baseline == pytest.approx(4.4 / 6)

    # per domain mean Likert change; E2's baseline is missing, so E is E1's alone
    assert effect.likert == pytest.approx({"O": 0.5, "C": -1.0, "E": 1.0})
    assert effect.cost.to_dict() == pytest.approx({"perplexity": 25.0, "perplexity_ratio": 1.25})

    # steering toward E instead reads the same rows from E's side
    toward_e = concept_effect(baseline, steered, items, traits, "E")
    assert toward_e.representation.tsr == pytest.approx(0.0)
    assert toward_e.representation.retention == pytest.approx(0.5)


# --------------------------------------------------------------------------- label tokens


def metaspace_model() -> Any:
    """A SentencePiece-style (Unigram + Metaspace "▁") tokenizer with a chat template,
    on a tiny random Llama."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<unk>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=300, special_tokens=specials, unk_token="<unk>")
    corpus = [
        "Openness Conscientiousness Extraversion Agreeableness Neuroticism",
        "Which personality domain does the statement describe? Answer with one word.",
        "user\nassistant\nReply with one label.",
        "I love going to big parties and talking to strangers.",
    ] * 30
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
        additional_special_tokens=specials[3:],
    )
    fast.chat_template = CHATML
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    model = AutoModelForCausalLM.from_config(config).eval()
    return wrap_model(model, fast, name="tiny-metaspace")


@pytest.fixture(params=["smollm2", "byte_bpe", "metaspace"])
def label_model(request: pytest.FixtureRequest) -> Any:
    if request.param == "smollm2":
        return request.getfixturevalue("smol")
    if request.param == "byte_bpe":
        return request.getfixturevalue("tiny_llama")
    return metaspace_model()


def answer_tokens(tm: Any, label: str) -> list[int]:
    """The tokens of ``label`` as the assistant's reply after the generation prompt."""
    question = "Which personality domain does the statement describe?"
    prompt = tm.format(None, question).input_ids
    full = tm.format(None, question, label).input_ids
    assert full[: len(prompt)] == prompt
    return full[len(prompt) :]


@pytest.mark.parametrize("prefix", ["", "Domain "])
def test_domain_label_tokens_on_three_tokenizer_families(label_model: Any, prefix: str) -> None:
    names = domain_labels(TRAITS)
    assert names == [
        "Openness",
        "Conscientiousness",
        "Extraversion",
        "Agreeableness",
        "Neuroticism",
    ]
    # with a shared prefix the labels share leading tokens, which the read-out skips
    labels = [prefix + name for name in names]
    answers = [answer_tokens(label_model, label) for label in labels]
    shared = 0  # the leading tokens every answer has in common
    while all(len(a) > shared for a in answers) and len({a[shared] for a in answers}) == 1:
        shared += 1
    if not all(len(a) > shared for a in answers) or len({a[shared] for a in answers}) < len(labels):
        # one position cannot tell these apart (the toy Unigram vocabulary has a piece
        # "▁A" but not "▁O"): refused, never read from a shared token. The design's
        # own names must always be readable.
        assert prefix
        with pytest.raises(ModelError, match="distinct tokens"):
            resolve_domain_tokens(label_model, labels)
        return
    tokens = resolve_domain_tokens(label_model, labels)
    assert tokens.labels == tuple(labels)
    assert tokens.lead == tuple(answers[0][:shared]) and bool(tokens.lead) == bool(prefix)
    assert tokens.ids == tuple(a[shared] for a in answers)
    assert len(set(tokens.ids)) == len(labels)


def test_labels_sharing_a_first_token_are_refused(label_model: Any) -> None:
    prefix = next(
        p
        for p in ("Extra", "Ext", "Ex", "E")
        if answer_tokens(label_model, p)[0] == answer_tokens(label_model, "Extraversion")[0]
    )
    labels = ["Openness", "Conscientiousness", "Extraversion", prefix, "Neuroticism"]
    firsts = [answer_tokens(label_model, label)[0] for label in labels]
    assert len(set(firsts)) == len(labels) - 1  # only the chosen pair collides
    with pytest.raises(ModelError, match="distinct tokens"):
        resolve_domain_tokens(label_model, labels)


def test_duplicate_label_names_are_refused_before_any_model() -> None:
    labels = ["Openness", "Openness", "Extraversion", "Agreeableness", "Neuroticism"]
    with pytest.raises(DataError, match="duplicates"):
        check_labels(labels)
    with pytest.raises(DataError, match="duplicates"):
        resolve_domain_tokens(None, labels)
    with pytest.raises(DataError, match="empty"):
        check_labels(["Openness", " "])


# --------------------------------------------------------------------------- bad inputs


def test_bank_missing_a_domain_is_refused(tmp_path: Path, tiny_llama: Any) -> None:
    rows = bank_rows(drop="N")
    items = [ConceptItem(id=f"i{n}", **r) for n, r in enumerate(rows)]
    with pytest.raises(DataError, match=r"no items for N \(neuroticism\)"):
        check_item_bank(items, TRAITS)
    path = write_bank(tmp_path / "no_n.csv", rows)
    config = ConceptConfig(items_file=str(path), templates=["bare"], poolings=["mean"])
    run = tmp_path / "run"
    with pytest.raises(DataError, match=r"no_n\.csv has no items for N") as info:
        run_concepts(tiny_llama, run, config, log=lambda _: None, progress=False)
    assert len(str(info.value).splitlines()) == 1
    assert not (run / "concepts" / "activations").exists()
    # the same bank without N is fine once N is not asked for
    check_item_bank(items, ["O", "C", "E", "A"])


def test_domain_with_one_facet_is_refused() -> None:
    rows = bank_rows(one_facet="E")
    items = [ConceptItem(id=f"i{n}", **r) for n, r in enumerate(rows)]
    with pytest.raises(DataError, match=r"1 distinct facet\(s\) for E") as info:
        check_item_bank(items, TRAITS)
    assert len(str(info.value).splitlines()) == 1


@pytest.mark.parametrize("fractions", [[0], [1.5], [0.5, -0.1]])
def test_fraction_outside_unit_interval_is_refused(fractions: list[float]) -> None:
    with pytest.raises(ValidationError, match=r"fractions .* outside \(0, 1\]"):
        ConceptConfig(fractions=fractions)


def test_strongest_zero_fraction_is_refused() -> None:
    items = synthetic_bank()
    neurons = select_concept_neurons(
        planted_neuron_acts(items), items, [i.id for i in items], traits=TRAITS
    )
    with pytest.raises(DataError, match=r"fraction 0 is outside \(0, 1\]"):
        strongest(neurons.select("E", "high"), 0)


def test_unknown_template_and_pooling_are_refused(tiny_llama: Any) -> None:
    with pytest.raises(ValidationError, match="unknown item templates"):
        ConceptConfig(templates=["questionnaire"])
    with pytest.raises(DataError, match="unknown item templates"):
        capture_items(tiny_llama, bank_items()[:2], templates=["questionnaire"], progress=False)
    with pytest.raises(ValidationError, match="probe_pooling 'last' is not among poolings"):
        ConceptConfig(poolings=["mean"], probe_pooling="last")
    with pytest.raises(ValidationError, match="eval_template 'statement' is not among templates"):
        ConceptConfig(templates=["bare"], eval_template="statement")


def test_format_items_refuses_an_unknown_template(tiny_llama: Any) -> None:
    with pytest.raises(DataError, match="unknown item template"):
        format_items(tiny_llama, bank_items()[:1], "questionnaire")


# --------------------------------------------------------------------------- resumability

SMALL: dict[str, Any] = dict(
    templates=["bare"],
    poolings=["mean"],
    folds=2,
    fractions=[1.0],
    eval_items_per_domain=2,
    shots_per_domain=0,
    likert_templates=0,
    held_out=0.25,
    neuron_rule="npti",
    control_draws=2,
    null_permutations=2,
)


def _stamps(run: Path) -> dict[Path, int]:
    """mtimes of the stage artifacts and rows (``eval.json``/``eval.csv`` are summaries
    rebuilt from the rows on every run, so they are left out)."""
    return {
        p: p.stat().st_mtime_ns
        for p in (run / "concepts").rglob("*")
        if p.is_file() and p.name not in ("eval.json", "eval.csv")
    }


@pytest.mark.heavy
def test_concept_run_resumes_and_recomputes_exactly_what_changed(tmp_path: Path) -> None:
    tm = build_tiny("llama")
    # the label read-out needs the five names to start with distinct tokens here
    resolve_domain_tokens(tm, domain_labels(TRAITS))
    bank = str(write_bank(tmp_path / "bank.csv", bank_rows()))
    run = tmp_path / "run"
    config = ConceptConfig(items_file=bank, **SMALL)
    run_concepts(tm, run, config, log=lambda _: None, progress=False)
    rows_dir = run / "concepts" / "eval" / "rows"
    first_rows = {p.name for p in rows_dir.iterdir()}
    # baseline + per domain: boost per fraction, suppress and direction, each with its draws
    n = 1 + len(TRAITS) * (len(config.fractions) + 2) * (1 + config.control_draws)
    assert len(first_rows) == n
    stamps = _stamps(run)
    assert {"items.json", "probes.json", "neurons.json", "item_activations.json"} <= {
        p.name for p in stamps
    }

    log: list[str] = []
    context = run_concepts(tm, run, config, log=log.append, progress=False)
    assert f"  {n} of {n} rows reused (same inputs)" in log
    assert not [line for line in log if "row(s) to measure" in line]
    assert _stamps(run) == stamps  # nothing new, nothing rewritten
    evaluation = context.evaluation
    assert len(evaluation.results) == n - 1
    # every real edit is compared with its own draws; the claims read the finished run
    assert all(r.vs_controls.n_draws == config.control_draws for r in evaluation.real)
    claims = study_claims(context.probes, context.neurons, evaluation)
    assert [c.name for c in claims] == ["a", "b", "c", "d"]
    assert {c.verdict for c in claims} <= {
        "reproduced",
        "not reproduced",
        "not testable on this model",
    }
    label_claim = claims[3].verdict == "not testable on this model"
    assert label_claim == (not evaluation.baseline.labels_interpretable)

    log.clear()
    regamma = ConceptConfig(items_file=bank, gammas=[3.0], **SMALL)
    run_concepts(tm, run, regamma, log=log.append, progress=False)
    # real + control draws per domain and fraction
    boost = (1 + config.control_draws) * len(TRAITS) * len(config.fractions)
    assert f"  {boost} row(s) to measure: gamma 2.0 → 3.0" in log
    assert f"  {n - boost} of {n} rows reused (same inputs)" in log
    now = _stamps(run)
    new = {p.name for p in now} - {p.name for p in stamps}
    assert len(new) == boost and all("__boost__" in name for name in new)
    assert all(now[p] == stamp for p, stamp in stamps.items()), "an old artifact was rewritten"

    changed = ConceptConfig(items_file=bank, items_per_domain=6, **SMALL)
    with pytest.raises(RunConflictError, match="concept item split made from other inputs"):
        run_concepts(tm, run, changed, log=lambda _: None, progress=False)
    assert _stamps(run) == now
    context = run_concepts(tm, run, changed, log=lambda _: None, progress=False, force=True)
    assert context.items is not None and len(context.items.items) == 6 * len(TRAITS)
    assert context.capture is not None and len(context.capture.item_ids) == 6 * len(TRAITS)


@pytest.mark.slow
def test_cli_loads_an_ipip_layout_bank_without_editing(tmp_path: Path) -> None:
    """`--items` on a CSV laid out like a public IPIP item set (text, label_raw,
    label_ocean with full names, key 1/-1, no id column) runs the concept stages."""
    import json
    import os
    import subprocess
    import sys

    bank = Path(__file__).resolve().parents[1] / "examples" / "items_ipip_layout.csv"
    assert bank.read_text().splitlines()[0] == "text,label_raw,label_ocean,key"
    out = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "traitlens.cli.main",
            "concepts",
            "probe",
            "--profile",
            "quick",
            "--items",
            str(bank),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    items = json.loads((out / "concepts" / "items.json").read_text())
    assert items["source"] == str(bank)
    assert {i["trait"] for i in items["items"]} == {"O", "C", "E", "A", "N"}
    assert all(i["id"].startswith(i["trait"] + "-") for i in items["items"])  # generated ids
    probes = json.loads((out / "concepts" / "probes.json").read_text())
    assert probes["fold_unit"] == "facet"
    assert not (out / "concepts" / "eval.json").exists()  # stopped after the probe stage


# --------------------------------------------------------------------------- the study's setup


def test_held_out_items_cover_every_facet() -> None:
    """The shipped bank (6 facets per domain): 24 items per domain, a quarter held out
    — the 6 held-out items of each domain come from 6 different facets."""
    from traitlens.concepts.items import choose_items

    bank = load_items()
    for seed in range(5):
        items, split = choose_items(bank, TRAITS, per_domain=24, held_out=0.25, seed=seed)
        by_id = {i.id: i for i in items}
        for trait in TRAITS:
            facets = {i.facet for i in items if i.trait == trait}
            held = [by_id[i] for i in split.held_out if by_id[i].trait == trait]
            assert len(held) == 6 == len(facets)
            assert {i.facet for i in held} == facets, (seed, trait)
    # more held-out items than facets: every facet, and no facet twice before all are used
    items, split = choose_items(bank, TRAITS, per_domain=None, held_out=0.25, seed=0)
    by_id = {i.id: i for i in items}
    counts = Counter(by_id[i].facet for i in split.held_out if by_id[i].trait == "O")
    assert len(counts) == 6 and max(counts.values()) - min(counts.values()) <= 1


def test_k_shot_examples_are_balanced_and_chat_turns() -> None:
    from traitlens.concepts.labels import label_prompt, shots

    items = synthetic_bank()
    for per_domain in (1, 2):
        chosen = shots(items, TRAITS, per_domain, seed=3)
        assert Counter(i.trait for i in chosen) == {t: per_domain for t in TRAITS}
        assert len({i.id for i in chosen}) == 5 * per_domain
    prompt = label_prompt(items, TRAITS, 1, seed=0)
    turns = prompt.turns("my statement", rotation=2)
    # the examples are earlier exchanges whose answers are the domain names
    assert [a for _, a in turns[:-1]] == [label for _, label in prompt.examples]
    assert turns[-1] == (
        "Options: Extraversion, Agreeableness, Neuroticism, Openness, Conscientiousness\n"
        'Statement: "my statement"',
        None,
    )
    assert turns[0][0].startswith("Which personality domain")
    # everything before the asked turn is one prefix whatever the item's option order,
    # and the examples' own orders are balanced (the first turn lists them canonically)
    assert prompt.turns("other", rotation=4)[:-1] == turns[:-1]
    orders = [turns[0][0].split(": ")[1].split(",")[0]] + [
        user.split(": ")[1].split(",")[0] for user, _ in turns[1:-1]
    ]
    assert sorted(orders) == sorted(prompt.labels)
    assert label_prompt(items, TRAITS, 0, seed=0).turns("x", 3) == [(prompt.question("x", 3), None)]
    # option order rotates across items, so the first-listed name differs
    firsts = {
        prompt.question("x", prompt.rotation(n)).split(": ")[1].split(",")[0] for n in range(5)
    }
    assert len(firsts) == 5
    fixed = label_prompt(items, TRAITS, 1, seed=0, counterbalance=False)
    assert {fixed.rotation(n) for n in range(7)} == {0}


def test_control_draws_are_distinct_disjoint_and_matched() -> None:
    items = synthetic_bank()
    acts = planted_neuron_acts(items)
    neurons = select_concept_neurons(acts, items, [i.id for i in items], traits=TRAITS)
    real = strongest(neurons.select("E", "high"), 1.0)
    selectable = torch.zeros(neurons.delta.shape[1:], dtype=torch.bool)
    for trait in TRAITS:
        for pole in ("high", "low"):
            selectable |= neurons.npti_mask(trait, pole)
    draws = [matched_random(neurons, real, seed=0, name=f"E|1.0|all|{k}") for k in range(20)]
    seen = set()
    for drawn in draws:
        pairs = frozenset(zip(drawn.layers.tolist(), drawn.indices.tolist(), strict=True))
        assert pairs not in seen  # distinct draws
        seen.add(pairs)
        assert not pairs & set(zip(real.layers.tolist(), real.indices.tolist(), strict=True))
        assert not any(bool(selectable[a, b]) for a, b in pairs)
        assert torch.equal(torch.bincount(drawn.layers), torch.bincount(real.layers))
        torch.testing.assert_close(drawn.delta.sort().values, real.delta.sort().values)
    # a control for the silenced set never reuses the boosted control's neurons
    other = matched_random(neurons, real, seed=0, name="x", avoid=draws[0])
    taken = set(zip(draws[0].layers.tolist(), draws[0].indices.tolist(), strict=True))
    assert not taken & set(zip(other.layers.tolist(), other.indices.tolist(), strict=True))


def test_control_draws_match_the_a95_distribution() -> None:
    """Real neurons with high a95 get controls with high a95 (quantile bins per layer)."""
    items = synthetic_bank()
    acts = planted_neuron_acts(items)
    a95 = torch.linspace(0.1, 10.0, 64).repeat(3, 1)
    acts = ItemActivations(
        acts.identity,
        acts.item_ids,
        acts.templates,
        acts.layers,
        acts.pooled,
        acts.rates,
        a95,
        acts.n_tokens,
    )
    neurons = select_concept_neurons(acts, items, [i.id for i in items], traits=TRAITS)
    real = strongest(neurons.select("E", "high"), 1.0)
    top_bin = float(torch.quantile(a95[1], 0.8))
    for k in range(10):
        drawn = matched_random(neurons, real, seed=k, name="E")
        for layer in (1, 2):
            high_real = int((real.a95[real.layers == layer] >= top_bin).sum())
            high_drawn = int((drawn.a95[drawn.layers == layer] >= top_bin).sum())
            assert high_real == high_drawn


def _layer_measurement(layer_probs: list[list[list[float]]], labels: list[list[float]]) -> Any:
    return ConceptMeasurement(
        IDS,
        layer_probs[-1],
        labels,
        [1.0] * len(IDS),
        [float("nan")] * len(IDS),
        10.0,
        layers=[3, 7],
        layer_probs=layer_probs,
    )


def test_tsr_per_layer_and_against_controls_hand_computed() -> None:
    from traitlens.concepts.evaluate import compare_with_controls

    traits = ["O", "C", "E"]
    items = [ConceptItem(id=i, trait=i[0], facet="f", keyed="+", text=f"item {i}") for i in IDS]
    o, c, e = [0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]
    # items O1 O2 C1 C2 E1 E2; target C → judged on O1, O2, E1, E2
    baseline = _layer_measurement([[o, o, c, c, e, e], [o, o, c, c, e, e]], [o, o, c, c, e, e])
    # layer 3: one of four moved to C; layer 7: three of four
    real = _layer_measurement([[c, o, c, c, e, e], [c, c, c, c, c, e]], [c, o, c, c, e, e])
    effect = concept_effect(baseline, real, items, traits, "C")
    assert effect.representation.tsr_by_layer == pytest.approx([0.25, 0.75])
    assert effect.representation.tsr_by_layer_baseline == pytest.approx([0.0, 0.0])
    assert effect.representation.tsr_last == pytest.approx(0.75)
    # spillover at the last layer: O1, O2, E1 → C, E2 stays E (baseline O, O, E, E)
    assert effect.representation.shares_last == pytest.approx([0.0, 0.75, 0.25])
    assert effect.representation.shares_last_baseline == pytest.approx([0.5, 0.0, 0.5])
    quiet = _layer_measurement([[o, o, c, c, e, e], [o, o, c, c, c, e]], [o, o, c, c, e, e])
    noisy = _layer_measurement([[o, c, c, c, e, e], [o, o, c, c, e, e]], [o, c, c, c, e, e])
    vs = compare_with_controls(
        baseline, real, [quiet, noisy, quiet, quiet], items, traits, "C", "boost", 7
    )
    assert vs.success_by_layer == pytest.approx([0.25, 0.75])
    # controls at layer 3: 0, .25, 0, 0; at layer 7: .25, 0, .25, .25
    assert vs.control_by_layer == pytest.approx([1 / 16, 3 / 16])
    assert vs.success.mean == pytest.approx(0.75) and vs.success_last.mean == pytest.approx(0.75)
    assert vs.success.low < 0.75 < vs.success.high  # Wilson, n = 4
    assert vs.control.mean == pytest.approx(3 / 16)
    assert vs.gain.mean == pytest.approx(0.75 - 3 / 16)
    # no draw reaches 0.75: p = (1 + 0) / (1 + 4)
    assert vs.p_value == pytest.approx(0.2)
    assert vs.p_last == vs.p_value and vs.gain_last == vs.gain  # the headline is the last layer
    assert vs.p_by_layer == pytest.approx([0.4, 0.2])  # layer 3: one draw ties .25
    assert vs.label_success.mean == pytest.approx(0.25)
    assert vs.label_control.mean == pytest.approx(0.25 / 4)
    # a suppression is judged on the target's own items: C1, C2 no longer read as C
    gone = _layer_measurement([[o, o, o, c, e, e], [o, o, o, o, e, e]], [o, o, o, c, e, e])
    vs = compare_with_controls(baseline, gone, [quiet, noisy], items, traits, "C", "suppress", 7)
    assert vs.success_by_layer == pytest.approx([0.5, 1.0])
    with pytest.raises(ValueError, match="≥ 2"):
        compare_with_controls(baseline, real, [quiet], items, traits, "C", "boost", 7)


def test_edit_band_reaches_a_planted_late_neuron_only_when_it_covers_that_layer() -> None:
    """A neuron planted in the last layer: boosting the domain's set moves the last
    layer's readout along that neuron's output direction only when the edit band
    includes the last layer (never silently clipped to an earlier window)."""
    from traitlens.neurons.selected import SelectedNeurons
    from traitlens.steer import NeuronEdit, steering
    from traitlens.steer.layers import edit_band_layers

    tm = build_tiny("llama")
    last = tm.n_layers - 1
    planted = SelectedNeurons(
        torch.tensor([last]), torch.tensor([3]), torch.tensor([0.6]), torch.tensor([2.0])
    )
    readout = tm.model.model.layers[last].mlp.down_proj.weight[:, 3].detach()
    ids = tm.tokenizer("I love going to big parties.", return_tensors="pt").input_ids

    def read() -> float:
        with torch.inference_mode():
            out = tm.model(ids, output_hidden_states=True)
        return float(out.hidden_states[last + 1][0, -1] @ readout)

    before = read()
    moved = {}
    for band in ("early", "middle", "late", "all", f"{last}"):
        layers = edit_band_layers(tm.n_layers, band)
        selected = planted.in_layers(layers)
        if not len(selected):
            moved[band] = 0.0
            continue
        with steering(tm, [NeuronEdit(selected, gamma=2.0)]):
            moved[band] = read() - before
    assert moved["early"] == 0.0 and moved["middle"] == 0.0
    assert moved["late"] > 0 and moved["all"] > 0 and moved[f"{last}"] > 0
    assert edit_band_layers(tm.n_layers, "all") == list(range(tm.n_layers))


def test_boost_silences_the_opposite_neurons_in_the_hooked_activations() -> None:
    """NPTI's boost holds the domain's opposite neurons at min(0, n) — visible at
    ``mlp_act`` — and the concept plan passes them (``silence_opposite``) by default."""
    from traitlens.concepts.pipeline import _neuron_plan
    from traitlens.design.stages import StageContext
    from traitlens.neurons.selected import SelectedNeurons
    from traitlens.steer import NeuronEdit, steering

    tm = build_tiny("llama")
    ids = tm.tokenizer("I keep my desk neat.", return_tensors="pt").input_ids
    seen: dict[str, torch.Tensor] = {}

    def grab(acts: torch.Tensor, **_: Any) -> None:
        seen["act"] = acts.detach().clone()

    with torch.inference_mode(), hooks_installed(tm.adapter, [("mlp_act[1]", grab)]):
        tm.model(ids)
    plain = seen["act"][0]
    firing = [int(n) for n in torch.nonzero(plain.max(0).values > 0).reshape(-1)[:4]]
    opposite = SelectedNeurons(
        torch.tensor([1] * len(firing)),
        torch.tensor(firing),
        torch.full((len(firing),), 0.5),
        torch.ones(len(firing)),
    )
    spare = next(n for n in range(plain.shape[-1]) if n not in firing)
    target = SelectedNeurons(
        torch.tensor([1]), torch.tensor([spare]), torch.tensor([0.5]), torch.tensor([1.0])
    )
    with (
        torch.inference_mode(),
        steering(tm, [NeuronEdit(target, opposite, gamma=1.0)]),
        hooks_installed(tm.adapter, [("mlp_act[1]", grab)]),
    ):
        tm.model(ids)
    edited = seen["act"][0]
    assert plain[:, firing].max() > 0
    assert edited[:, firing].max() <= 0  # silenced where they fired
    torch.testing.assert_close(edited[:, firing], plain[:, firing].clamp(max=0))
    assert (edited[:, spare] > plain[:, spare]).all()  # the boosted one, in the same pass

    # the concept plan: every boost carries the opposite set, every draw a matched one
    items = synthetic_bank()
    acts = planted_neuron_acts(items)
    is_e = torch.tensor([i.startswith("E") for i in acts.item_ids])
    acts.rates[is_e, 1, 10:14] -= 0.25  # four neurons that fire less on E's items
    neurons = select_concept_neurons(acts, items, [i.id for i in items], traits=TRAITS)
    config = ConceptConfig(fractions=[1.0], control_draws=3, neuron_rule="npti")
    ctx = StageContext(tm, Path("."), config, lambda _: None, artifacts={"neurons": neurons})
    plan = _neuron_plan(ctx, "E", "all", [0, 1, 2])
    boosts = [c for c in plan if c.kind == "boost"]
    assert len(boosts) == 4 and [c.draw for c in boosts] == [None, 0, 1, 2]
    low = neurons.select("E", "low", "npti")
    assert len(low) and all(len(c.interventions[0].opposite) == len(low) for c in boosts)
    off = ConceptConfig(fractions=[1.0], control_draws=3, silence_opposite=False)
    ctx = StageContext(tm, Path("."), off, lambda _: None, artifacts={"neurons": neurons})
    assert all(
        not len(c.interventions[0].opposite)
        for c in _neuron_plan(ctx, "E", "all", [0, 1, 2])
        if c.kind == "boost"
    )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"edit_bands": [""]}, "edit band is empty"),
        ({"edit_bands": []}, "edit_bands is empty"),
        ({"edit_bands": ["middle-ish"]}, "neither one of all, early, middle, late"),
        ({"gammas": [0.0]}, "outside \\(0, 10\\]"),
        ({"gammas": [-1.0, 1.0]}, "outside \\(0, 10\\]"),
        ({"control_draws": 1}, "greater than or equal to 2"),
        ({"shots_per_domain": -1}, "greater than or equal to 0"),
        ({"label_draws": 1}, "greater than or equal to 2"),
        ({"instruction": "Which domain? {options}"}, "must contain the item as \\{text\\}"),
        ({"instruction": 'Describe "{text}"'}, "must contain the item as \\{text\\}"),
        ({"instruction": "{text} {text} {options}"}, "once each"),
        ({"instruction": "{options} {text} {extra}"}, "once each"),
        ({"instruction": "{options} {text"}, "not a valid template"),
        ({"context": "instructed", "templates": ["bare"]}, "does not apply"),
        ({"templates": ["instructed"], "eval_template": "instructed"}, "set context"),
    ],
)
def test_concept_design_bad_settings_are_refused(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ConceptConfig(**settings)


def test_a_listed_layer_outside_the_model_is_refused_not_clipped() -> None:
    from traitlens.steer.layers import edit_band_layers

    with pytest.raises(DataError, match="outside this model's layers 0..29"):
        edit_band_layers(30, "10-30")
    assert edit_band_layers(30, "0,29") == [0, 29]


def test_selection_null_counts_what_permuted_labels_pass() -> None:
    """The permutation null keeps facets whole: a planted domain signal passes the δ rule
    far more often than under permuted labels; with no signal the two agree."""
    from traitlens.concepts.neurons import selection_null

    items = synthetic_bank(n_facets=4, per_facet=4)
    ids = [i.id for i in items]
    labels = np.array([i.trait for i in items])
    facets = [i.facet for i in items]
    for plant in (True, False):
        acts = planted_neuron_acts(items, plant=plant)
        null = selection_null(acts.item_rates(ids), labels, facets, TRAITS, 0.1, 20, seed=0)
        assert null["permutations"] == 20 and null["unit"] == "facet"
        totals = np.asarray(null["null_total"])
        assert totals.shape == (20, 3)
        observed_e = null["observed"]["E"]
        if plant:  # PLANTED: 4 in layer 1 (the middle third of 3 layers), 3 in layer 2
            assert observed_e[1] >= 4 and observed_e[2] >= 3
            assert observed_e[1] > null["null_mean"]["E"][1] + 1
        else:
            assert sum(observed_e) <= np.percentile(totals.sum(1), 95) + 1
    with pytest.raises(DataError, match="null_permutations must be ≥ 0"):
        select_concept_neurons(acts, items, ids, traits=TRAITS, null_permutations=-1)


def test_npti_top_rule_keeps_the_strongest_2000_then_the_delta_rule() -> None:
    from traitlens.concepts.neurons import rule_mask
    from traitlens.neurons.rules import NPTI_TOP

    items = synthetic_bank()
    neurons = select_concept_neurons(
        planted_neuron_acts(items), items, [i.id for i in items], traits=TRAITS
    )
    e = neurons.delta[TRAITS.index("E")]
    top = rule_mask(neurons, "E", "npti_top")
    # fewer than NPTI_TOP neurons here: every neuron with δ toward the pole, plus δ rule
    assert e.numel() < NPTI_TOP
    assert torch.equal(top, (e > 0) | neurons.npti_mask("E", "high"))
    assert torch.equal(rule_mask(neurons, "E", "npti"), neurons.npti_mask("E", "high"))
    low = rule_mask(neurons, "E", "npti_top", "low")
    assert torch.equal(low, (e < 0) | neurons.npti_mask("E", "low"))


def test_whole_facet_hold_out_keeps_every_held_out_facet_out_of_training() -> None:
    from traitlens.concepts.items import choose_items

    bank = load_items()
    items, split = choose_items(bank, TRAITS, per_domain=24, held_out=0.25, seed=0, unit="facet")
    by_id = {i.id: i for i in items}
    for trait in TRAITS:
        held = {by_id[i].facet for i in split.held_out if by_id[i].trait == trait}
        trained = {by_id[i].facet for i in split.train if by_id[i].trait == trait}
        assert held and trained and not held & trained
        assert len(held) == round(0.25 * 6)  # of six facets
    # two facets of 1 and 5 items: whichever is held out, one side has a single item
    lopsided = [
        ConceptItem(id=f"{t}{k}", trait=t, facet="a" if k == 0 else "b", keyed="+", text=f"{t} {k}")
        for t in TRAITS
        for k in range(6)
    ]
    with pytest.raises(DataError, match="each side needs ≥ 2"):
        choose_items(lopsided, TRAITS, per_domain=None, held_out=0.25, seed=0, unit="facet")
    one = [
        ConceptItem(id=f"{i.id}", trait=i.trait, facet="all", keyed=i.keyed, text=i.text)
        for i in bank_items()
    ]
    with pytest.raises(DataError, match="whole-facet hold-out needs ≥ 2"):
        choose_items(one, TRAITS, per_domain=None, held_out=0.25, seed=0, unit="facet")
    with pytest.raises(ValidationError, match="held_out_unit"):
        ConceptConfig(held_out_unit="domain")


# --------------------------------------------------------------------------- instructed context


@pytest.mark.parametrize("calibrate", [False, True])
def test_instructed_pass_reads_states_and_label_from_one_pass_as_separate_reads_do(
    tiny_llama: Any, calibrate: bool
) -> None:
    """The instructed context reads the probe's states and the label from one forward pass
    (k-shot turns shared as a cached prefix by every option order). Both must equal what a
    full, separate pass gives: the states over the statement inside the label question,
    and the label distribution :func:`label_probs` reads."""
    from traitlens.capture.capture import pool_formatted
    from traitlens.concepts.evaluate import ConceptSets, instructed_pass
    from traitlens.concepts.labels import label_probs, label_prompt

    bank = synthetic_bank()
    items = bank[1::4]
    prompt = label_prompt(bank[::4], TRAITS, 1, seed=0, calibrate=calibrate)
    tokens = resolve_domain_tokens(tiny_llama, prompt.labels)
    sets = ConceptSets(tuple(TRAITS), tuple(items), "instructed", (0, 1), 1, prompt, (), 4)
    states, read = instructed_pass(tiny_llama, sets, "mean", tokens)
    assert read is not None
    probs, mass = read
    want_probs, want_mass = label_probs(tiny_llama, items, prompt, tokens, batch_size=3)
    np.testing.assert_allclose(probs, want_probs, atol=1e-5)
    np.testing.assert_allclose(mass, want_mass, rtol=1e-4)
    formatted = [
        prompt.formatted(tiny_llama, i.text, prompt.rotation(n)) for n, i in enumerate(items)
    ]
    for f, item in zip(formatted, items, strict=True):
        start, end = f.span("item")
        # the statement asked about, in the last user turn (after every k-shot example)
        assert tiny_llama.tokenizer.decode(f.input_ids[start:end]).strip() == item.text
        last_answer = f.text.rfind(prompt.examples[-1][1])
        assert len(tiny_llama.tokenizer(f.text[:last_answer])["input_ids"]) <= start
    full = pool_formatted(tiny_llama, formatted, span="item", layers=[0, 1], batch_size=1)
    torch.testing.assert_close(states, full["resid.mean"], atol=1e-4, rtol=1e-4)
    no_labels, nothing = instructed_pass(tiny_llama, sets, "mean", tokens, labels=False)
    assert nothing is None
    torch.testing.assert_close(no_labels, states, atol=1e-5, rtol=1e-5)


def test_instructed_context_leaves_k_shot_examples_out_of_what_probes_learn() -> None:
    from traitlens.concepts.items import choose_items
    from traitlens.concepts.labels import shots
    from traitlens.concepts.pipeline import ConceptItems

    bank = synthetic_bank()
    items, split = choose_items(bank, TRAITS, per_domain=None, held_out=0.25, seed=0)
    chosen = ConceptItems(tuple(items), split, "synthetic", "k")
    bare = ConceptConfig()
    instructed = ConceptConfig(context="instructed", shots_per_domain=2)
    assert instructed.templates == ["instructed"] and instructed.eval_template == "instructed"
    assert chosen.fit_ids(bare) == list(split.train)
    shown = {i.id for i in shots(chosen.train(), TRAITS, 2, 0)}
    assert len(shown) == 10
    assert chosen.fit_ids(instructed) == [i for i in split.train if i not in shown]
    prompt = chosen.label_prompt(instructed)
    assert {text for text, _ in prompt.examples} == {i.text for i in items if i.id in shown}


def test_instructed_context_replaces_only_a_profiles_templates() -> None:
    from traitlens.errors import DataError
    from traitlens.study import resolve_config

    quick = resolve_config("quick", None, {}, {"context": "instructed"}).concept_config()
    assert quick.templates == ["instructed"] and quick.context == "instructed"
    assert resolve_config("quick").concept_config().templates == ["bare", "statement"]
    with pytest.raises(DataError, match="does not apply"):
        resolve_config("quick", None, {}, {"context": "instructed", "templates": ["bare"]})


def test_npti_random_mask_boosts_a_fresh_seeded_share_of_neurons_each_pass() -> None:
    """``keep`` < 1 (NPTI: 0.9) boosts a random share of the target neurons on each
    forward pass: about ``keep`` of them, a different draw per pass, the same draws on a
    rerun with the same seed, and every one of them with ``keep`` = 1."""
    from traitlens.errors import InterventionError
    from traitlens.neurons.selected import SelectedNeurons
    from traitlens.steer import NeuronEdit, steering

    tm = build_tiny("llama")
    ids = tm.tokenizer("I keep my desk neat.", return_tensors="pt").input_ids
    d_mlp = tm.identity.d_mlp
    target = SelectedNeurons(
        torch.ones(d_mlp, dtype=torch.long),
        torch.arange(d_mlp),
        torch.full((d_mlp,), 0.5),
        torch.ones(d_mlp),
    )
    seen: list[torch.Tensor] = []

    def grab(acts: torch.Tensor, **_: Any) -> None:
        seen.append(acts.detach().clone())

    def boosted(edit: NeuronEdit, passes: int) -> list[torch.Tensor]:
        seen.clear()
        with torch.inference_mode():
            with hooks_installed(tm.adapter, [("mlp_act[1]", grab)]):
                tm.model(ids)
            # installed after the edit, the grab sees the edited activation
            with steering(tm, [edit]), hooks_installed(tm.adapter, [("mlp_act[1]", grab)]):
                for _ in range(passes):
                    tm.model(ids)
        plain = seen[0]
        return [(s - plain)[0, 0] > 1e-3 for s in seen[1:]]

    full = boosted(NeuronEdit(target, gamma=1.0), 1)
    assert bool(full[0].all())
    masked = boosted(NeuronEdit(target, gamma=1.0, keep=0.5, mask_seed=3), 2)
    shares = [float(m.float().mean()) for m in masked]
    assert all(0.35 < s < 0.65 for s in shares)
    assert not torch.equal(masked[0], masked[1])  # drawn afresh on every pass
    again = boosted(NeuronEdit(target, gamma=1.0, keep=0.5, mask_seed=3), 2)
    assert all(torch.equal(a, b) for a, b in zip(masked, again, strict=True))
    for keep in (0.0, 1.5, float("nan")):
        with pytest.raises(InterventionError, match="must be a share in"):
            NeuronEdit(target, gamma=1.0, keep=keep)
    with pytest.raises(ValidationError, match="less than or equal to 1"):
        ConceptConfig(edit_keep=1.5)


# --------------------------------------------------------------------------- DPN-LE


def dpn_acts(items: list[ConceptItem], seed: int = 0) -> ItemActivations:
    """Per-item mean activations N(0, 1) with, on E's items: neuron (1, 7) shifted by +3
    (large d, large Δ), neuron (1, 9) by −3, and neuron (2, 5) shifted by +3 on half of
    E's items and −… never (large Δ in mean but a small d: its spread is large too)."""
    rng = np.random.default_rng(seed)
    base = planted_neuron_acts(items, plant=False)
    means = rng.normal(0.0, 1.0, (len(base.item_ids), 3, 64))
    is_e = np.array([i.startswith("E") for i in base.item_ids])
    means[is_e, 1, 7] += 3.0
    means[is_e, 1, 9] -= 3.0
    # (2, 5): a huge spread everywhere and a mean gap that is large in Δ but small in d
    means[:, 2, 5] = rng.normal(0.0, 20.0, len(base.item_ids))
    means[is_e, 2, 5] += 4.0
    return replace(base, means=torch.from_numpy(means).half())


def test_dpn_statistics_hand_computed() -> None:
    from traitlens.concepts.neurons import dpn_statistics

    values = torch.tensor([[1.0, 2.0, 3.0, 10.0, 12.0]]).T[:, :, None].repeat(1, 1, 2)
    values[:, 0, 1] = 5.0  # a neuron that never varies: d = 0, Δ = 0
    members = np.array([False, False, False, True, True])
    d, diff = dpn_statistics(values, members)
    pooled = math.sqrt(((3 - 1) * 1.0 + (2 - 1) * 2.0) / 3)  # variances 1 and 2 (n − 1)
    assert float(diff[0, 0]) == pytest.approx(11.0 - 2.0)
    assert float(d[0, 0]) == pytest.approx(9.0 / pooled, rel=1e-5)
    assert float(d[0, 1]) == 0.0 and float(diff[0, 1]) == 0.0
    with pytest.raises(DataError, match="≥ 2 items on each side"):
        dpn_statistics(values, np.array([True, False, False, False, False]))


def test_dpn_rule_keeps_large_d_and_large_difference_on_each_side() -> None:
    from traitlens.concepts.neurons import dpn_neurons
    from traitlens.neurons.rules import dpn_mask

    items = synthetic_bank(per_facet=8)
    acts = dpn_acts(items)
    # 64 neurons per toy layer: the top 5 % (3 neurons) stands in for DPN-LE's top 0.5 %
    # of a real layer's thousands
    neurons = select_concept_neurons(
        acts, items, [i.id for i in items], traits=TRAITS, dpn_percentile=95.0
    )
    assert neurons.effect is not None and neurons.config["dpn"]["percentile"] == 95.0
    top = select_concept_neurons(acts, items, [i.id for i in items], traits=TRAITS)
    assert int(dpn_mask(top, "E", "high").sum() + dpn_mask(top, "E", "low").sum()) <= 3
    high, low = dpn_mask(neurons, "E", "high"), dpn_mask(neurons, "E", "low")
    assert {tuple(x) for x in torch.nonzero(high).tolist()} == {(1, 7)}
    assert {tuple(x) for x in torch.nonzero(low).tolist()} == {(1, 9)}
    e = TRAITS.index("E")
    # (2, 5) has the largest Δ of its layer but its d is small: not selected
    assert int(neurons.mean_diff[e, 2].abs().argmax()) == 5
    assert abs(float(neurons.effect[e, 2, 5])) < 0.8 and not bool(high[2, 5])
    both = dpn_neurons(neurons, "E", [0, 1, 2])
    assert sorted(zip(both.layers.tolist(), both.indices.tolist(), strict=True)) == [
        (1, 7),
        (1, 9),
    ]
    assert both.delta.sign().tolist() == [1.0, -1.0]  # each carries its signed Δ
    assert len(dpn_neurons(neurons, "E", [0, 2])) == 0
    assert len(neurons.select("E", "high", "dpn")) == 1  # registered as a rule
    # the statistics survive a save and load, and a capture without them is refused
    # with the fix, not a traceback
    old = replace(acts, means=None)
    plain = select_concept_neurons(old, items, [i.id for i in items], traits=TRAITS)
    assert plain.effect is None
    with pytest.raises(DataError, match="rerun the concept capture"):
        dpn_mask(plain, "E", "high")
    with pytest.raises(DataError, match="rerun the capture stage"):
        old.item_means(old.item_ids)


def test_dpn_statistics_are_saved_and_loaded(tmp_path: Path) -> None:
    from traitlens.neurons.artifact import NeuronSet

    items = synthetic_bank(per_facet=8)
    neurons = persist(
        concept_neurons_job(
            dpn_acts(items), items, [i.id for i in items], traits=TRAITS, dpn_percentile=95.0
        ),
        tmp_path,
    )
    loaded = NeuronSet.load(tmp_path)
    assert loaded.effect is not None and loaded.mean_diff is not None
    torch.testing.assert_close(loaded.effect, neurons.effect)
    torch.testing.assert_close(loaded.mean_diff, neurons.mean_diff)
    assert torch.equal(loaded.select("E", "low", "dpn").indices, torch.tensor([9]))


def test_shift_neurons_adds_gamma_times_its_amounts_in_the_hooked_activations() -> None:
    from traitlens.errors import InterventionError
    from traitlens.neurons.selected import SelectedNeurons
    from traitlens.steer import ShiftNeurons, steering

    tm = build_tiny("llama")
    ids = tm.tokenizer("I keep my desk neat.", return_tensors="pt").input_ids
    seen: list[torch.Tensor] = []

    def grab(acts: torch.Tensor, **_: Any) -> None:
        seen.append(acts.detach().clone())

    chosen = SelectedNeurons(
        torch.tensor([1, 1]), torch.tensor([3, 8]), torch.zeros(2), torch.ones(2)
    )
    edit = ShiftNeurons(chosen, torch.tensor([0.5, -2.0]), gamma=1.5)
    with torch.inference_mode():
        with hooks_installed(tm.adapter, [("mlp_act[1]", grab)]):
            tm.model(ids)
        with steering(tm, [edit]), hooks_installed(tm.adapter, [("mlp_act[1]", grab)]):
            tm.model(ids)
    change = seen[1] - seen[0]
    torch.testing.assert_close(change[..., 3], torch.full_like(change[..., 3], 0.75))
    torch.testing.assert_close(change[..., 8], torch.full_like(change[..., 8], -3.0))
    others = [n for n in range(change.shape[-1]) if n not in (3, 8)]
    assert float(change[..., others].abs().max()) == 0.0
    with pytest.raises(InterventionError, match="one amount per neuron"):
        ShiftNeurons(chosen, torch.tensor([1.0]))
    with pytest.raises(InterventionError, match="NaN or inf"):
        ShiftNeurons(chosen, torch.tensor([1.0, float("nan")]))
    with pytest.raises(InterventionError, match="outside the allowed range"):
        ShiftNeurons(chosen, torch.tensor([1.0, 1.0]), gamma=11.0)


def test_dpn_plan_draws_move_the_same_amounts_onto_other_neurons() -> None:
    from traitlens.concepts.neurons import dpn_neurons
    from traitlens.concepts.pipeline import _neuron_plan
    from traitlens.design.stages import StageContext

    items = synthetic_bank(per_facet=8)
    neurons = select_concept_neurons(
        dpn_acts(items), items, [i.id for i in items], traits=TRAITS, dpn_percentile=95.0
    )
    config = ConceptConfig(edits=["dpn"], gammas=[1.0, 2.0], control_draws=4)
    tm = build_tiny("llama")
    ctx = StageContext(tm, Path("."), config, lambda _: None, artifacts={"neurons": neurons})
    plan = _neuron_plan(ctx, "E", "all", [0, 1, 2])
    assert [c.kind for c in plan] == ["dpn"] * 10
    assert [c.draw for c in plan[:5]] == [None, 0, 1, 2, 3]
    real = plan[0].interventions[0]
    target = dpn_neurons(neurons, "E", [0, 1, 2])
    assert torch.equal(real.neurons.indices, target.indices) and real.gamma == 1.0
    taken = set()
    for t in TRAITS:
        found = dpn_neurons(neurons, t, [0, 1, 2])
        taken |= set(zip(found.layers.tolist(), found.indices.tolist(), strict=True))
    for condition in plan[1:5]:
        drawn = condition.interventions[0]
        pairs = set(zip(drawn.neurons.layers.tolist(), drawn.neurons.indices.tolist(), strict=True))
        assert not pairs & taken  # never a DPN-LE neuron of any domain
        assert torch.equal(torch.bincount(drawn.neurons.layers), torch.bincount(target.layers))
        torch.testing.assert_close(drawn.shift.sort().values, real.shift.sort().values)
    assert plan[5].interventions[0].gamma == 2.0 and plan[5].size["neuron_rule"] == "dpn"
