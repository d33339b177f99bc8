"""Capture artifacts: pooled activations and per-neuron statistics (safetensors + JSON)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from traitlens.artifact_io import Artifact, ModelIdentity, Saved
from traitlens.errors import ArtifactError, index_of


@dataclass
class NeuronStats(Artifact):
    """Per-group, per-layer, per-neuron firing statistics of ``mlp_act`` over span tokens.

    ``positive[g, l, i]``: tokens with activation > 0; ``tokens[g]``: tokens seen
    in group g (same for every layer); ``total[g, l, i]``: activation sum;
    ``a95[l, i]``: streaming 95th percentile over all groups' tokens.
    """

    identity: ModelIdentity
    groups: list[str]
    layers: list[int]
    positive: torch.Tensor  # [G, L, d_mlp] float64
    tokens: torch.Tensor  # [G] float64
    total: torch.Tensor  # [G, L, d_mlp] float64
    a95: torch.Tensor  # [L, d_mlp] float64
    config: dict[str, Any] = field(default_factory=dict)

    stem = "neuron_stats"
    kind_name = "neuron_stats"
    what = "neuron statistics file"
    key_field = "cache_key"

    def firing_rate(self, group: str) -> torch.Tensor:
        """P(act > 0) per layer and neuron for one group, ``[L, d_mlp]``."""
        g = self.group_index(group)
        return self.positive[g] / self.tokens[g].clamp(min=1)

    def mean_activation(self, group: str) -> torch.Tensor:
        g = self.group_index(group)
        return self.total[g] / self.tokens[g].clamp(min=1)

    def group_index(self, group: str) -> int:
        return index_of(
            self.groups,
            group,
            lambda: ArtifactError(
                f"group {group!r} is not in these neuron statistics "
                f"(have: {', '.join(self.groups)})"
            ),
        )

    @classmethod
    def _from_saved(cls, saved: Saved) -> NeuronStats:
        tensors = saved.tensors
        return cls(
            saved.identity,
            list(saved.meta["groups"]),
            list(saved.meta["layers"]),
            tensors["positive"],
            tensors["tokens"],
            tensors["total"],
            tensors["a95"],
            dict(saved.meta["config"]),
        )

    def _meta(self) -> dict[str, Any]:
        return {"groups": self.groups, "layers": self.layers, "config": self.config}

    def _tensors(self) -> dict[str, torch.Tensor]:
        names = ("positive", "tokens", "total", "a95")
        return {name: getattr(self, name) for name in names}


@dataclass
class Activations(Artifact):
    """Pooled per-prompt vectors: ``pooled["resid.mean"]`` is ``[n_prompts, n_layers, d_model]``.

    ``prompt_ids[i]`` names row i; ``layers[j]`` is the model layer of column j.
    """

    identity: ModelIdentity
    prompt_ids: list[str]
    layers: list[int]
    pooled: dict[str, torch.Tensor]
    config: dict[str, Any] = field(default_factory=dict)
    neuron_stats: NeuronStats | None = None

    stem = "activations"
    kind_name = "activations"
    what = "activations file"
    key_field = "cache_key"

    @property
    def stage(self) -> str:
        """The run-manifest stage this capture was recorded as (e.g. ``capture.answer``)."""
        return str((self.config.get("provenance") or {}).get("stage", "capture"))

    def get(self, kind: str = "resid", pooling: str = "mean") -> torch.Tensor:
        key = f"{kind}.{pooling}"
        if key not in self.pooled:
            raise ArtifactError(
                f"no pooled activations for {key!r} (have: {', '.join(sorted(self.pooled))}); "
                "capture again with that hook kind and pooling"
            )
        return self.pooled[key]

    def layer(self, layer: int, kind: str = "resid", pooling: str = "mean") -> torch.Tensor:
        """``[n_prompts, d_model]`` at one model layer."""
        column = index_of(
            self.layers,
            layer,
            lambda: ArtifactError(f"layer {layer} was not captured (have {self.layers})"),
        )
        return self.get(kind, pooling)[:, column]

    @classmethod
    def _from_saved(cls, saved: Saved) -> Activations:
        directory = saved.stem.parent
        stats = None
        if (directory / "neuron_stats.json").exists():
            stats = NeuronStats.load(directory, saved.identity)
        return cls(
            saved.identity,
            list(saved.meta["prompt_ids"]),
            list(saved.meta["layers"]),
            saved.tensors,
            dict(saved.meta["config"]),
            stats,
        )

    def _meta(self) -> dict[str, Any]:
        return {"prompt_ids": self.prompt_ids, "layers": self.layers, "config": self.config}

    def _tensors(self) -> dict[str, torch.Tensor]:
        return self.pooled

    def save(self, directory: str | Path) -> Path:
        """Write ``activations.*`` (and ``neuron_stats.*`` when it has statistics) into
        ``directory``; returns the activations' JSON path."""
        path = super().save(directory)
        if self.neuron_stats is not None:
            self.neuron_stats.save(directory)
        return path
