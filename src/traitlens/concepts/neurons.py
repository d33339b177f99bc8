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
from dataclasses import replace

import numpy as np
import torch

from traitlens.concepts.capture import ItemActivations
from traitlens.concepts.items import ItemLike
from traitlens.errors import DataError
from traitlens.neurons.artifact import NeuronSet
from traitlens.neurons.rules import dpn_mask, get_rule
from traitlens.neurons.selected import SelectedNeurons
from traitlens.neurons.stats import jaccard_matrix
from traitlens.provenance import Job, Provenance, computed, provenance
from traitlens.stats import fdr_bh


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


DPN_MIN_D = 0.8
"""DPN-LE's effect-size threshold on |Cohen's d| (a "large" effect by Cohen's convention)."""

DPN_PERCENTILE = 99.5
"""DPN-LE keeps neurons whose |mean difference| is above this percentile of their layer."""


def neurons_provenance(
    acts: ItemActivations,
    train_ids: Sequence[str],
    traits: Sequence[str],
    threshold: float,
    fdr: float,
    null_permutations: int = 0,
    seed: int = 0,
    dpn: dict[str, float] | None = None,
) -> Provenance:
    return provenance(
        "concepts.neurons",
        model=acts.identity,
        config={
            "threshold": threshold,
            "fdr": fdr,
            "traits": list(traits),
            "unit": "item",
            "null_permutations": null_permutations,
            # the permutations are seeded: a null of another seed is another artifact
            **({"null_seed": seed} if null_permutations else {}),
            **({"dpn": dpn} if dpn else {}),
        },
        data=sorted(train_ids),
        upstream={"concepts.capture": acts.key},
    )


def concept_neurons_job(
    acts: ItemActivations,
    items: Sequence[ItemLike],
    train_ids: Sequence[str],
    *,
    traits: Sequence[str],
    threshold: float = 0.1,
    fdr: float = 0.05,
    null_permutations: int = 0,
    seed: int = 0,
    dpn_min_d: float = DPN_MIN_D,
    dpn_percentile: float = DPN_PERCENTILE,
) -> Job[NeuronSet]:
    """One-vs-rest concept neurons of every domain from training items only (this builds
    the job; :func:`select_concept_neurons` computes it).

    With ``null_permutations`` > 0 the artifact's ``config["null"]`` also holds how many
    neurons pass the δ rule when the domain labels are permuted (:func:`selection_null`).
    When the capture holds per-item mean activations, DPN-LE's statistics (Cohen's d and
    the mean difference, :func:`dpn_statistics`) are stored beside δ, with the rule's
    thresholds in ``config["dpn"]``.
    """
    if not dpn_min_d > 0.0 or not 0.0 < dpn_percentile < 100.0:
        raise DataError(
            f"DPN-LE needs |d| > 0 and a percentile in (0, 100), got d {dpn_min_d} and "
            f"percentile {dpn_percentile} (DPN-LE: 99.5)"
        )
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
    if null_permutations < 0:
        raise DataError(f"null_permutations must be ≥ 0 (e.g. 20), got {null_permutations}")
    dpn = None
    if acts.means is not None:
        dpn = {"min_d": float(dpn_min_d), "percentile": float(dpn_percentile)}
    prov = neurons_provenance(acts, train, traits, threshold, fdr, null_permutations, seed, dpn)
    facets = [by_id[i].facet for i in train]

    def compute() -> NeuronSet:
        neuron_set = _concept_neurons(acts, train, labels, traits, threshold, fdr, prov)
        if dpn is not None:
            means = acts.item_means(train)
            stats = [dpn_statistics(means, labels == trait) for trait in traits]
            neuron_set = replace(
                neuron_set,
                effect=torch.stack([d for d, _ in stats]),
                mean_diff=torch.stack([diff for _, diff in stats]),
            )
            neuron_set.config["dpn"] = {
                **dpn,
                "statistic": "mean mlp_act per item; Cohen's d (pooled SD) and mean "
                "difference, the domain's items minus the rest",
            }
        if null_permutations:
            rates = acts.item_rates(train)
            neuron_set.config["null"] = selection_null(
                rates, labels, facets, traits, threshold, null_permutations, seed
            )
        return neuron_set

    return Job(NeuronSet, "concepts.neurons", prov, compute, acts.identity, "concept neuron set")


select_concept_neurons = computed(concept_neurons_job, "select_concept_neurons")


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


def dpn_statistics(means: torch.Tensor, members: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Cohen's d and the mean difference of every neuron, ``[L, d_mlp]`` each, between the
    items in ``members`` and the rest, from per-item mean activations ``[n, L, d_mlp]``
    (DPN-LE's selection statistics; d uses the pooled SD with n − 1, and is 0 where a
    neuron never varies)."""
    inside = torch.as_tensor(members, dtype=torch.bool)
    a, b = means[inside].double(), means[~inside].double()
    if len(a) < 2 or len(b) < 2:
        raise DataError("Cohen's d needs ≥ 2 items on each side of the comparison")
    diff = a.mean(0) - b.mean(0)
    pooled = ((len(a) - 1) * a.var(0) + (len(b) - 1) * b.var(0)) / (len(a) + len(b) - 2)
    sd = pooled.sqrt()
    d = torch.where(sd > 0, diff / sd.clamp(min=1e-12), torch.zeros_like(diff))
    return d.float(), diff.float()


def dpn_neurons(neuron_set: NeuronSet, trait: str, layers: Sequence[int]) -> SelectedNeurons:
    """Both sides of a domain's DPN-LE set inside ``layers``, each neuron's ``delta``
    holding its mean difference: the additive edit γ·Δ raises the neurons more active for
    the domain and lowers the ones less active (DPN-LE's dual edit)."""
    assert neuron_set.mean_diff is not None
    t = neuron_set.traits.index(trait.strip().upper())
    mask = dpn_mask(neuron_set, trait, "high") | dpn_mask(neuron_set, trait, "low")
    chosen = SelectedNeurons.from_mask(
        mask, neuron_set.layers, neuron_set.mean_diff[t], neuron_set.a95
    )
    return chosen.in_layers(layers)


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


def thirds_of(n_columns: int) -> list[np.ndarray]:
    """Column indices of the first, middle and last third of the captured layers."""
    return np.array_split(np.arange(n_columns), 3)


def selection_null(
    rates: torch.Tensor,
    labels: np.ndarray,
    facets: Sequence[str],
    traits: Sequence[str],
    threshold: float,
    permutations: int,
    seed: int,
) -> dict[str, object]:
    """How many neurons pass NPTI's δ ≥ threshold by chance, per domain and depth third.

    The null permutes whole facets across domains (each facet keeps its items and each
    domain its number of facets; a bank without facets permutes items), so wording
    shared within a facet is kept and only the domain label is broken. ``observed`` and
    the null's mean and 95th percentile are counts ``[early, middle, late]``.
    """
    units = sorted({(lab, f) for lab, f in zip(labels, facets, strict=True)})
    unit_of = np.array([units.index((lab, f)) for lab, f in zip(labels, facets, strict=True)])
    unit_labels = np.array([u[0] for u in units])
    parts = thirds_of(rates.shape[1])
    x = rates.double()

    def counts(item_labels: np.ndarray) -> dict[str, list[int]]:
        out = {}
        for trait in traits:
            inside = torch.from_numpy(item_labels == trait)
            if not inside.any() or inside.all():
                out[trait] = [0, 0, 0]
                continue
            delta = x[inside].mean(0) - x[~inside].mean(0)
            per_layer = (delta >= threshold).sum(-1)
            out[trait] = [int(per_layer[torch.from_numpy(p)].sum()) for p in parts]
        return out

    rng = np.random.default_rng(seed)
    null = [counts(rng.permutation(unit_labels)[unit_of]) for _ in range(permutations)]
    stacked = {t: np.array([n[t] for n in null]) for t in traits}
    return {
        "permutations": permutations,
        "unit": "facet" if len(units) < len(labels) else "item",
        "threshold": threshold,
        "observed": counts(labels),
        "null_mean": {t: stacked[t].mean(0).round(1).tolist() for t in traits},
        "null_p95": {t: np.percentile(stacked[t], 95, axis=0).round(1).tolist() for t in traits},
        # all domains together, per permutation: the null of the summed counts
        "null_total": np.sum([stacked[t] for t in traits], axis=0).tolist(),
    }


def matched_random(
    neuron_set: NeuronSet,
    real: SelectedNeurons,
    seed: int,
    name: str,
    *,
    avoid: SelectedNeurons | None = None,
    a95_bins: int = 5,
) -> SelectedNeurons:
    """Random neurons matched to ``real`` layer by layer in count, δ and a95.

    In each layer the eligible neurons (selectable for no domain or pole under NPTI's
    δ rule, a superset of the FDR-selected ones, so the control carries no known
    domain signal and never overlaps ``real``; nor in ``avoid``) are split into
    ``a95_bins`` quantile bins of their a95, and each real neuron is matched by a random
    neuron of its bin, which takes its δ (so the NPTI gate f(δ) is the same and the
    boost γ·a95·f(δ) has the same distribution). Seeded by ``name`` and ``seed``.
    """
    generator = torch.Generator().manual_seed(zlib.crc32(f"{name}|{seed}".encode()))
    exclude = torch.zeros(neuron_set.delta.shape[1:], dtype=torch.bool)
    for trait in neuron_set.traits:
        for pole in ("high", "low"):
            exclude |= neuron_set.npti_mask(trait, pole)
    if avoid is not None and len(avoid):
        columns = torch.tensor([neuron_set.layers.index(int(x)) for x in avoid.layers])
        exclude[columns, avoid.indices] = True
    layers, indices, deltas, a95s = [], [], [], []
    for layer in sorted({int(x) for x in real.layers}):
        column = neuron_set.layers.index(layer)
        here = real.layers == layer
        eligible = torch.nonzero(~exclude[column]).reshape(-1)
        a95 = neuron_set.a95[column, eligible]
        edges = torch.quantile(a95.float(), torch.linspace(0, 1, a95_bins + 1)[1:-1])
        eligible_bin = torch.bucketize(a95.float(), edges)
        real_bin = torch.bucketize(real.a95[here].float(), edges)
        used = torch.zeros(eligible.numel(), dtype=torch.bool)
        for k in range(a95_bins):
            want = real.delta[here][real_bin == k]
            pool = torch.nonzero((eligible_bin == k) & ~used).reshape(-1)
            if pool.numel() < want.numel():  # a thin bin (toy widths): fill from the rest
                pool = torch.cat([pool, torch.nonzero((eligible_bin != k) & ~used).reshape(-1)])
            pick = pool[torch.randperm(pool.numel(), generator=generator)[: want.numel()]]
            used[pick] = True
            layers.append(torch.full((pick.numel(),), layer, dtype=torch.long))
            indices.append(eligible[pick])
            deltas.append(want[: pick.numel()])
            a95s.append(neuron_set.a95[column, eligible[pick]])
    if not layers:
        return SelectedNeurons.empty()
    random = SelectedNeurons(
        torch.cat(layers), torch.cat(indices), torch.cat(deltas).float(), torch.cat(a95s)
    )
    order = torch.argsort(random.layers * 10**7 + random.indices)
    return SelectedNeurons(
        random.layers[order], random.indices[order], random.delta[order], random.a95[order]
    )


def rule_mask(neuron_set: NeuronSet, trait: str, rule: str, pole: str = "high") -> torch.Tensor:
    """The neurons a registered rule selects, bool ``[L, d_mlp]`` (``npti``: δ alone;
    ``fdr``: δ + FDR; ``npti_top``: NPTI's top 2000 ∪ δ; or a user's rule)."""

    return get_rule(rule).mask(neuron_set, trait, pole)


def depth_thirds(
    neuron_set: NeuronSet, trait: str, pole: str = "high", rule: str = "fdr"
) -> list[int]:
    """Selected neurons of one domain in the first, middle and last third of the layers."""
    counts = rule_mask(neuron_set, trait, rule, pole).sum(-1).tolist()
    return [int(sum(counts[i] for i in part)) for part in thirds_of(len(counts))]


def overlap(neuron_set: NeuronSet, pole: str = "high", rule: str = "fdr") -> np.ndarray:
    """5×5 Jaccard overlap of the domains' selected neurons."""
    return jaccard_matrix([rule_mask(neuron_set, t, rule, pole) for t in neuron_set.traits])
