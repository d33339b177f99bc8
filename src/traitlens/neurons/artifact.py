"""``NeuronSet``: δ, p and q for every MLP neuron and trait, with the selection rule.

Steering consumes it through :meth:`NeuronSet.select` (the trait-selective
neurons of one pole) and :meth:`NeuronSet.random_control` (a matched random
set for the control condition). Tensors in ``neurons.safetensors``, rule and
summary in ``neurons.json``.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from traitlens.artifact_io import Artifact, ModelIdentity, Saved, fields_of
from traitlens.errors import DataError
from traitlens.neurons.selected import SelectedNeurons
from traitlens.neurons.stats import jaccard_matrix, matched_random_neurons

POLES = ("high", "low")


@dataclass(frozen=True, eq=False)
class NeuronSet(Artifact):
    """Per-neuron selectivity statistics for each trait, and the rule that selects from them.

    Tensors (float32): ``delta``, ``pvalue``, ``qvalue`` ``[n_traits, n_layers,
    d_mlp]`` (δ = P(act>0 | high) − P(act>0 | low); two-sided p; BH q within
    the trait), ``a95`` ``[n_layers, d_mlp]`` (95th-percentile activation).
    ``layers[j]`` is the model layer of column j.

    A neuron is selected for a trait's high pole when ``δ ≥ threshold`` and,
    unless ``fdr`` is None, ``q ≤ fdr``; for the low pole when
    ``δ ≤ −threshold`` (and ``q ≤ fdr``). The rule is applied to the stored
    float32 values, so a loaded set selects exactly what the saved one did.
    """

    identity: ModelIdentity
    traits: list[str]
    layers: list[int]
    threshold: float
    fdr: float | None
    delta: torch.Tensor
    pvalue: torch.Tensor
    qvalue: torch.Tensor
    a95: torch.Tensor
    config: dict[str, Any] = field(default_factory=dict)
    # DPN-LE's statistics, [n_traits, n_layers, d_mlp] each (None where the design did not
    # compute them): Cohen's d of the mean activation per item, and its mean difference
    # (the trait's items minus the rest), which is also DPN-LE's edit
    effect: torch.Tensor | None = None
    mean_diff: torch.Tensor | None = None

    stem = "neurons"
    kind_name = "neurons"
    what = "neuron set"

    @classmethod
    def from_tests(
        cls,
        identity: ModelIdentity,
        traits: Sequence[str],
        layers: Sequence[int],
        tests: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
        a95: torch.Tensor,
        *,
        threshold: float,
        fdr: float | None,
        config: dict[str, Any],
    ) -> NeuronSet:
        """A set from one ``(δ, p, q)`` triple of ``[L, d_mlp]`` tensors per trait — what
        every selection design (persona poles, concept domains) computes."""
        return cls(
            identity=identity,
            traits=list(traits),
            layers=list(layers),
            threshold=threshold,
            fdr=fdr,
            delta=torch.stack([t[0].float() for t in tests]),
            pvalue=torch.stack([t[1].float() for t in tests]),
            qvalue=torch.stack([t[2].float() for t in tests]),
            a95=a95.float(),
            config=config,
        )

    def _index(self, trait: str, pole: str) -> int:
        code = trait.strip().upper()
        if code not in self.traits:
            raise DataError(
                f"no neuron statistics for trait {trait!r}; this set has "
                f"{', '.join(self.traits)} — select neurons with that trait included"
            )
        if pole not in POLES:
            raise DataError(f"unknown pole {pole!r}; use 'high' or 'low'")
        return self.traits.index(code)

    def npti_mask(self, trait: str, pole: str) -> torch.Tensor:
        """NPTI's rule alone (|δ| ≥ threshold on the pole's side), bool ``[L, d_mlp]``."""
        delta = self.delta[self._index(trait, pole)]
        return delta >= self.threshold if pole == "high" else delta <= -self.threshold

    def mask(self, trait: str, pole: str) -> torch.Tensor:
        """The selected neurons of one pole, bool ``[L, d_mlp]`` (δ rule and FDR)."""
        selected = self.npti_mask(trait, pole)
        if self.fdr is not None:
            selected = selected & (self.qvalue[self._index(trait, pole)] <= self.fdr)
        return selected

    def _selected(
        self, trait: str, pole: str, columns: torch.Tensor, indices: torch.Tensor
    ) -> SelectedNeurons:
        sign = 1.0 if pole == "high" else -1.0
        delta = self.delta[self._index(trait, pole)]
        layer_of = torch.tensor(self.layers, dtype=torch.long)
        return SelectedNeurons(
            layers=layer_of[columns] if columns.numel() else columns.long(),
            indices=indices.long(),
            delta=sign * delta[columns, indices],
            a95=self.a95[columns, indices],
        )

    def _rule_mask(self, trait: str, pole: str, rule: str) -> torch.Tensor:
        # the rule registry (fdr, npti, or one a user registered); imported here because
        # the rules module reads this one's type
        from traitlens.neurons.rules import get_rule

        delta = self.delta[self._index(trait, pole)]
        mask = get_rule(rule).mask(self, trait, pole)
        if mask.shape != delta.shape or mask.dtype != torch.bool:
            # a rule registered by a user returned something else: say what a rule returns
            raise DataError(
                f"neuron rule {rule!r} returned a {mask.dtype} mask of shape "
                f"{list(mask.shape)}; a rule returns a bool mask [n_layers, d_mlp] = "
                f"{list(delta.shape)}"
            )
        return mask

    def select(self, trait: str, pole: str, rule: str = "fdr") -> SelectedNeurons:
        """The trait's selective neurons for ``pole``, ordered by layer then index.

        ``rule="fdr"`` (default): δ rule and FDR; ``"npti"``: NPTI's δ rule alone
        (what the NPTI paper edits). ``delta`` is signed toward the pole
        (positive = fires more under it), as :class:`SelectedNeurons`
        specifies; ``layers`` are model layers.
        """
        columns, indices = torch.nonzero(self._rule_mask(trait, pole, rule), as_tuple=True)
        return self._selected(trait, pole, columns, indices)

    def union_mask(self) -> torch.Tensor:
        """Neurons selected for any trait and pole, bool ``[L, d_mlp]``."""
        out = torch.zeros(self.delta.shape[1:], dtype=torch.bool)
        for trait in self.traits:
            for pole in POLES:
                out |= self.mask(trait, pole)
        return out

    def random_control(
        self, trait: str, pole: str, seed: int = 0, rule: str = "fdr"
    ) -> SelectedNeurons:
        """A random neuron set matched to ``select(trait, pole)`` layer by layer.

        Same count in every layer, drawn from neurons selected for *no* trait
        or pole (so the control carries no known trait signal), seeded by
        ``(trait, pole, seed)``: the same call always returns the same set.
        ``delta`` holds those neurons' own (small) δ toward the pole.
        """
        counts = self._rule_mask(trait, pole, rule).sum(-1)
        key = f"{trait.strip().upper()}|{pole}|{seed}".encode()
        generator = torch.Generator().manual_seed(zlib.crc32(key))
        columns, indices = matched_random_neurons(counts, self.union_mask(), generator)
        return self._selected(trait, pole, columns, indices)

    def table(self, trait: str, pole: str) -> list[dict[str, float | int]]:
        """One row per selected neuron: layer, neuron, δ, p, q, a95 (δ as stored, unsigned)."""
        t = self._index(trait, pole)
        columns, indices = torch.nonzero(self.mask(trait, pole), as_tuple=True)
        return [
            {
                "layer": self.layers[int(c)],
                "neuron": int(i),
                "delta": float(self.delta[t, c, i]),
                "p": float(self.pvalue[t, c, i]),
                "q": float(self.qvalue[t, c, i]),
                "a95": float(self.a95[c, i]),
            }
            for c, i in zip(columns.tolist(), indices.tolist(), strict=True)
        ]

    def counts(self, npti_only: bool = False) -> torch.Tensor:
        """Selected neurons per trait, pole and layer column, long ``[n_traits, 2, L]``."""
        rule = self.npti_mask if npti_only else self.mask
        return torch.stack(
            [torch.stack([rule(trait, pole).sum(-1) for pole in POLES]) for trait in self.traits]
        )

    def jaccard(self, npti_only: bool = False) -> tuple[list[str], np.ndarray]:
        """Labels ``"T|high"``, ``"T|low"`` per trait and their pairwise Jaccard matrix."""
        labels = [f"{trait}|{pole}" for trait in self.traits for pole in POLES]
        rule = self.npti_mask if npti_only else self.mask
        masks = [rule(trait, pole) for trait in self.traits for pole in POLES]
        return labels, jaccard_matrix(masks)

    def layer_profile(self) -> dict[str, dict[str, float]]:
        """Share of each trait's selected neurons (both poles) in the early, middle and
        late third of the captured layers — answers "is selectivity mid-layer heavy?"
        (a uniform spread gives ⅓ each)."""
        n_layers = len(self.layers)
        thirds = np.array_split(np.arange(n_layers), 3)
        profile: dict[str, dict[str, float]] = {}
        counts = self.counts().sum(1)
        for t, trait in enumerate(self.traits):
            total = int(counts[t].sum())
            profile[trait] = {
                name: (float(counts[t, part].sum()) / total if total and part.size else math.nan)
                for name, part in zip(("early", "middle", "late"), thirds, strict=True)
            }
        return profile

    def summary(self) -> dict[str, Any]:
        """Counts per trait and pole (NPTI rule alone vs surviving FDR), per layer,
        layer profile and overlap."""
        selected, npti = self.counts(), self.counts(npti_only=True)
        labels, matrix = self.jaccard()
        per_trait = {
            trait: {
                pole: {
                    "npti": int(npti[t, p].sum()),
                    "selected": int(selected[t, p].sum()),
                    "per_layer": selected[t, p].tolist(),
                }
                for p, pole in enumerate(POLES)
            }
            for t, trait in enumerate(self.traits)
        }
        return {
            "n_tests_per_trait": int(self.delta[0].numel()) if self.traits else 0,
            "per_trait": per_trait,
            "layer_profile": self.layer_profile(),
            "jaccard": {"labels": labels, "matrix": matrix.tolist()},
        }

    @classmethod
    def _from_saved(cls, saved: Saved) -> NeuronSet:
        meta, tensors = saved.meta, saved.tensors
        fdr = meta["fdr"]
        neurons = cls(
            identity=saved.identity,
            traits=[str(t) for t in meta["traits"]],
            layers=[int(v) for v in meta["layers"]],
            threshold=float(meta["threshold"]),
            fdr=None if fdr is None else float(fdr),
            delta=tensors["delta"],
            pvalue=tensors["pvalue"],
            qvalue=tensors["qvalue"],
            a95=tensors["a95"],
            config=dict(meta.get("config", {})),
            effect=tensors.get("effect"),
            mean_diff=tensors.get("mean_diff"),
        )
        shape = (len(neurons.traits), len(neurons.layers))
        if tuple(neurons.delta.shape[:2]) != shape or neurons.a95.shape != neurons.delta.shape[1:]:
            delta, a95 = tuple(neurons.delta.shape), tuple(neurons.a95.shape)
            raise saved.mismatch(f"δ {delta} and a95 {a95} do not fit {shape} traits × layers")
        return neurons

    def _meta(self) -> dict[str, Any]:
        names = ("traits", "layers", "threshold", "fdr")
        return {**fields_of(self, names), "summary": self.summary(), "config": self.config}

    def _tensors(self) -> dict[str, torch.Tensor]:
        dpn = {"effect": self.effect, "mean_diff": self.mean_diff}
        return {
            "delta": self.delta,
            "pvalue": self.pvalue,
            "qvalue": self.qvalue,
            "a95": self.a95,
            **{name: value for name, value in dpn.items() if value is not None},
        }
