"""Concept-selective MLP neurons: one-vs-rest δ over items, tested per neuron with BH-FDR.

For domain d, ``δ = P(act > 0 | d's items) − P(act > 0 | other items)`` where
P(act > 0 | item) is the share of the statement's tokens on which the neuron
fires, averaged over templates (one value per item). NPTI's |δ| ≥ threshold
rule is kept; beyond it each neuron gets a two-sided Mann–Whitney test of its
per-item shares (d's items vs the others — items, not tokens, are the unit, so
a long item does not count more and correlated tokens do not shrink p), and the
p-values of one domain (all layers × neurons) are BH-adjusted. Only training
items enter; evaluation later uses held-out items.

The result is a :class:`traitlens.neurons.NeuronSet` whose "high" pole is "fires
more for the domain" and "low" is "fires less", so selection, matched random
controls, overlap and figures are the persona design's own.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from traitlens.concepts.capture import ItemActivations
from traitlens.concepts.items import ItemLike
from traitlens.errors import DataError
from traitlens.neurons.artifact import NeuronSet
from traitlens.neurons.selected import SelectedNeurons
from traitlens.neurons.stats import jaccard_matrix, matched_random_neurons
from traitlens.provenance import Provenance, provenance
from traitlens.stats import fdr_bh
from traitlens.study.rows import matched_control


def domain_tests(
    rates: torch.Tensor, is_domain: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """δ, p and q ``[L, d_mlp]`` for one domain from per-item firing shares ``[I, L, d_mlp]``."""
    from scipy.stats import mannwhitneyu

    inside, outside = rates[torch.from_numpy(is_domain)], rates[torch.from_numpy(~is_domain)]
    delta = inside.double().mean(0) - outside.double().mean(0)
    a = inside.reshape(inside.shape[0], -1).double().numpy()
    b = outside.reshape(outside.shape[0], -1).double().numpy()
    # a neuron that never varies has no test: p = 1 (mannwhitneyu returns NaN there)
    varies = (np.ptp(np.concatenate([a, b]), axis=0)) > 0
    pvalue = np.ones(a.shape[1])
    if varies.any():
        result = mannwhitneyu(a[:, varies], b[:, varies], axis=0, method="asymptotic")
        pvalue[varies] = np.nan_to_num(result.pvalue, nan=1.0)
    shaped = pvalue.reshape(delta.shape)
    qvalue = fdr_bh(shaped)
    return delta.float(), torch.from_numpy(shaped).float(), torch.from_numpy(qvalue).float()


def neurons_provenance(
    acts: ItemActivations,
    train_ids: Sequence[str],
    traits: Sequence[str],
    threshold: float,
    fdr: float,
) -> Provenance:
    return provenance(
        "concepts.neurons",
        model=acts.identity,
        config={"threshold": threshold, "fdr": fdr, "traits": list(traits), "unit": "item"},
        data=sorted(train_ids),
        upstream={"concepts.capture": acts.key},
    )


def select_concept_neurons(
    acts: ItemActivations,
    items: Sequence[ItemLike],
    train_ids: Sequence[str],
    *,
    traits: Sequence[str],
    threshold: float = 0.1,
    fdr: float = 0.05,
    out_dir: str | Path | None = None,
    run_dir: str | Path | None = None,
    force: bool = False,
) -> NeuronSet:
    """One-vs-rest concept neurons of every domain from training items only."""
    if not 0.0 < threshold < 1.0:
        raise DataError(f"threshold must lie in (0, 1) (NPTI uses 0.1), got {threshold}")
    if not 0.0 < fdr < 1.0:
        raise DataError(f"fdr must lie in (0, 1) (e.g. 0.05), got {fdr}")
    by_id = {i.id: i for i in items}
    train = sorted(i for i in set(train_ids) if i in by_id and i in set(acts.item_ids))
    labels = np.array([by_id[i].trait for i in train])
    for trait in traits:
        n = int((labels == trait).sum())
        if n < 2 or n > len(train) - 2:
            raise DataError(
                f"domain {trait} has {n} training items; neuron tests need ≥ 2 each side"
            )
    prov = neurons_provenance(acts, train, traits, threshold, fdr)

    return NeuronSet.keyed(
        out_dir,
        "concepts.neurons",
        prov,
        lambda: _concept_neurons(acts, train, labels, traits, threshold, fdr, prov),
        expect=acts.identity,
        run_dir=run_dir,
        force=force,
        what="concept neuron set",
    )


def _concept_neurons(
    acts: ItemActivations,
    train: list[str],
    labels: np.ndarray,
    traits: Sequence[str],
    threshold: float,
    fdr: float,
    prov: Provenance,
) -> NeuronSet:
    rates = acts.item_rates(train)
    tests = [domain_tests(rates, labels == trait) for trait in traits]
    return NeuronSet.from_tests(
        acts.identity,
        traits,
        acts.layers,
        tests,
        acts.a95,
        threshold=threshold,
        fdr=fdr,
        config={
            "threshold": threshold,
            "fdr": fdr,
            "traits": list(traits),
            "design": "concept",
            "poles": {"high": "fires more for the domain's items", "low": "fires less"},
            "effective_n": "items",
            "n_train_items": len(train),
            "test": "Mann-Whitney U over per-item firing shares (one-vs-rest), two-sided; "
            "BH within each domain",
            "inputs_key": prov.key,
            "provenance": prov.to_dict(),
        },
    )


def strongest(neurons: SelectedNeurons, fraction: float) -> SelectedNeurons:
    """The ``fraction`` of a set with the largest δ (at least one neuron of a non-empty set)."""
    if not 0.0 < fraction <= 1.0:
        raise DataError(
            f"fraction {fraction} is outside (0, 1]: it is the share of the selected neurons "
            "edited, strongest first (e.g. 0.25)"
        )
    if not len(neurons):
        return neurons
    count = max(1, int(np.ceil(fraction * len(neurons))))
    order = torch.argsort(neurons.delta, descending=True, stable=True)[:count]
    order = order[torch.argsort(neurons.layers[order] * 10**7 + neurons.indices[order])]
    return SelectedNeurons(
        neurons.layers[order], neurons.indices[order], neurons.delta[order], neurons.a95[order]
    )


def matched_random(
    neuron_set: NeuronSet, real: SelectedNeurons, seed: int, name: str
) -> SelectedNeurons:
    """Random neurons, as many per layer as ``real``, none selectable for any domain, carrying
    ``real``'s δ values (so an NPTI boost of the control has the same size) and their own
    a95; seeded by ``name`` and ``seed``, so the same call returns the same set."""
    columns = torch.tensor([neuron_set.layers.index(int(x)) for x in real.layers], dtype=torch.long)
    counts = torch.bincount(columns, minlength=len(neuron_set.layers))
    generator = torch.Generator().manual_seed(zlib.crc32(f"{name}|{seed}".encode()))
    # excluded: every neuron NPTI's δ rule selects for any domain or pole (a superset of
    # the FDR-selected ones), so the control carries no known domain signal whichever
    # rule chose the real set
    exclude = torch.zeros(neuron_set.delta.shape[1:], dtype=torch.bool)
    for trait in neuron_set.traits:
        for pole in ("high", "low"):
            exclude |= neuron_set.npti_mask(trait, pole)
    picked, indices = matched_random_neurons(counts, exclude, generator)
    layer_of = torch.tensor(neuron_set.layers, dtype=torch.long)
    random = SelectedNeurons(
        layer_of[picked] if picked.numel() else picked,
        indices,
        torch.zeros(len(indices)),
        neuron_set.a95[picked, indices],
    )
    return matched_control(real, random)


def depth_thirds(neuron_set: NeuronSet, trait: str, pole: str = "high") -> list[int]:
    """Selected neurons of one domain in the first, middle and last third of the layers."""
    counts = neuron_set.mask(trait, pole).sum(-1).tolist()
    thirds = np.array_split(np.arange(len(counts)), 3)
    return [int(sum(counts[i] for i in part)) for part in thirds]


def overlap(neuron_set: NeuronSet, pole: str = "high") -> np.ndarray:
    """5×5 Jaccard overlap of the domains' selected neurons."""
    return jaccard_matrix([neuron_set.mask(t, pole) for t in neuron_set.traits])
