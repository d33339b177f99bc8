"""Select trait-selective MLP neurons from streamed firing statistics (NPTI + FDR)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from traitlens.capture.artifacts import NeuronStats
from traitlens.data import TRAITS, parse_traits
from traitlens.errors import DataError
from traitlens.neurons.artifact import POLES, NeuronSet
from traitlens.neurons.stats import firing_delta, two_proportion_z_test
from traitlens.provenance import Job, Provenance, computed, provenance
from traitlens.stats import fdr_bh


def _group(trait: str, pole: str) -> str:
    return f"{trait}|{pole}"


def prompts_per_group(prompts: Iterable[Any]) -> dict[str, int]:
    """Number of prompts (answers) per ``"trait|pole"`` group — the prompt-level n of
    :func:`select_neurons`' z-test. Prompts need ``trait`` and ``pole`` attributes."""
    return dict(Counter(_group(p.trait, p.pole) for p in prompts))


def _resolve_traits(stats: NeuronStats, traits: str | Sequence[str] | None) -> list[str]:
    if not stats.groups or stats.positive.numel() == 0:
        raise DataError(
            "these neuron statistics are empty (no groups or no neurons); capture answers with "
            "neuron_stats=True and groups=[f'{p.trait}|{p.pole}' ...] first"
        )
    present = {g.split("|", 1)[0] for g in stats.groups if "|" in g}
    if traits is None:
        codes = [t for t in TRAITS if t in present]
        if not codes:
            raise DataError(
                f"no neuron-statistics group is labelled 'TRAIT|POLE' (have: "
                f"{', '.join(stats.groups)}); capture with groups=[f'{{p.trait}}|{{p.pole}}' ...]"
            )
    else:
        codes = parse_traits(traits)
    for code in codes:
        missing = [p for p in POLES if _group(code, p) not in stats.groups]
        if missing:
            raise DataError(
                f"trait {code} has no '{missing[0]}'-pole group ({_group(code, missing[0])}) in "
                f"the neuron statistics (have: {', '.join(stats.groups)}); δ needs both poles — "
                f"capture answers for both poles of {code} or leave it out (--traits)"
            )
        for pole in POLES:
            if float(stats.tokens[stats.group_index(_group(code, pole))]) <= 0:
                raise DataError(
                    f"group {_group(code, pole)} saw no tokens; check that its answers are not "
                    "empty and that the capture span was 'answer'"
                )
    return codes


def neurons_job(
    stats: NeuronStats,
    threshold: float = 0.1,
    fdr: float | None = 0.05,
    traits: str | Sequence[str] | None = None,
    *,
    prompt_counts: Mapping[str, int] | None = None,
) -> Job[NeuronSet]:
    """Trait-selective neurons of both poles of each trait, with FDR control (this
    builds the job; :func:`select_neurons` computes it).

    NPTI's rule (Deng et al. 2024, "Neuron-based Personality Trait
    Induction"): with firing rates over answer tokens from ``stats``
    (groups ``"T|high"`` / ``"T|low"``), ``δ = P(act>0 | high) − P(act>0 | low)``;
    δ ≥ ``threshold`` selects for the high pole, δ ≤ −``threshold`` for the low.

    Beyond NPTI, every neuron gets a two-sided two-proportion z-test and the
    p-values of one trait (all layers × neurons) are adjusted with
    Benjamini–Hochberg (1995); a neuron must also have ``q ≤ fdr``
    (``fdr=None``: NPTI's rule alone). At large widths many neurons pass
    |δ| ≥ 0.1 by chance when answers are few; the FDR keeps those out.

    The effective n of the test: tokens within one answer are not independent
    (a neuron that fires on one token of an answer tends to fire on the next),
    so a token-level test is anticonservative — its p-values are too small by
    roughly the design effect. With ``prompt_counts`` (``{"E|high": 140, ...}``,
    the number of answers per group) each group's n is its number of answers,
    which treats an answer as one observation: conservative when tokens are
    strongly correlated, and the recommended setting (the CLI's default). An
    exact cluster-robust test would need per-answer counts, which the
    streaming capture does not keep. Without ``prompt_counts`` token counts are
    used and the result is marked ``effective_n="tokens"``.
    """
    _check_rule(threshold, fdr)
    codes = _resolve_traits(stats, traits)
    _check_prompt_counts(codes, prompt_counts)
    params: dict[str, Any] = {
        "threshold": threshold,
        "fdr": fdr,
        "traits": codes,
        "effective_n": "tokens" if prompt_counts is None else "prompts",
        "prompt_counts": None if prompt_counts is None else dict(sorted(prompt_counts.items())),
    }
    prov = _neuron_provenance(stats, params)
    tokens = {g: float(stats.tokens[stats.group_index(g)]) for g in stats.groups}
    config = _neuron_config(stats, params, prov, tokens)

    def compute() -> NeuronSet:
        return _neuron_set(stats, codes, threshold, fdr, tokens, prompt_counts, config)

    return Job(NeuronSet, "neurons", prov, compute, stats.identity)


select_neurons = computed(neurons_job, "select_neurons")


def _check_rule(threshold: float, fdr: float | None) -> None:
    if not 0.0 < threshold < 1.0:
        raise DataError(f"threshold must lie in (0, 1) (NPTI uses 0.1), got {threshold}")
    if fdr is not None and not 0.0 < fdr <= 1.0:
        raise DataError(f"fdr must lie in (0, 1] (e.g. 0.05), or be None to skip it; got {fdr}")


def _neuron_config(
    stats: NeuronStats, params: Mapping[str, Any], prov: Provenance, tokens: Mapping[str, float]
) -> dict[str, Any]:
    """What a neuron set records of how it was made: the ``params``, its key and
    provenance, the token counts per group, the test, and the capture's spans."""
    return {
        **params,
        "inputs_key": prov.key,
        "provenance": prov.to_dict(),
        "tokens": {g: tokens[g] for g in sorted(tokens)},
        "test": "two-proportion z-test (pooled), two-sided; BH within each trait",
        "capture": {k: stats.config[k] for k in ("span", "neuron_span") if k in stats.config},
    }


def _neuron_provenance(stats: NeuronStats, params: Mapping[str, Any]) -> Provenance:
    """The neuron set's inputs: the selection ``params`` and the statistics it reads."""
    stats_key = stats.key
    return provenance(
        "neurons",
        model=stats.identity,
        config={**params, "groups": stats.groups, "layers": stats.layers},
        # statistics built by hand have no key: their tensors stand in for it
        tensors=() if stats_key else (stats.positive, stats.tokens, stats.a95),
        upstream={str((stats.config.get("provenance") or {}).get("stage", "capture")): stats_key},
    )


def _check_prompt_counts(codes: Sequence[str], prompt_counts: Mapping[str, int] | None) -> None:
    if prompt_counts is None:
        return
    for code in codes:
        for pole in POLES:
            if int(prompt_counts.get(_group(code, pole), 0)) <= 0:
                raise DataError(
                    f"prompt_counts has no positive count for {_group(code, pole)}; pass the "
                    "number of answers captured per group, or None to use token counts"
                )


def _neuron_set(
    stats: NeuronStats,
    codes: Sequence[str],
    threshold: float,
    fdr: float | None,
    tokens: Mapping[str, float],
    prompt_counts: Mapping[str, int] | None,
    config: dict[str, Any],
) -> NeuronSet:
    """Per trait: NPTI's firing-rate difference δ, the z-test's p-value (n = tokens, or
    answers with ``prompt_counts``) and its BH q-value within the trait, each
    ``[n_traits, n_layers, d_mlp]`` in the set."""
    tests = []
    for code in codes:
        high, low = _group(code, "high"), _group(code, "low")
        rate_high, rate_low = stats.firing_rate(high).double(), stats.firing_rate(low).double()
        if prompt_counts is None:
            n_high, n_low = tokens[high], tokens[low]
        else:
            n_high, n_low = float(prompt_counts[high]), float(prompt_counts[low])
        _, pvalue = two_proportion_z_test(rate_high.numpy(), n_high, rate_low.numpy(), n_low)
        q = torch.from_numpy(fdr_bh(pvalue))
        tests.append((firing_delta(rate_high, rate_low), torch.from_numpy(pvalue), q))
    return NeuronSet.from_tests(
        stats.identity,
        codes,
        stats.layers,
        tests,
        stats.a95,
        threshold=threshold,
        fdr=fdr,
        config=config,
    )
