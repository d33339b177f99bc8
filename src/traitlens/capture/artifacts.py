"""Capture artifacts: pooled activations and per-neuron statistics (safetensors + JSON)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from traitlens import __version__
from traitlens.artifact_io import read_artifact, write_artifact
from traitlens.errors import ArtifactError
from traitlens.models.loading import ModelIdentity


@dataclass
class NeuronStats:
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

    def firing_rate(self, group: str) -> torch.Tensor:
        """P(act > 0) per layer and neuron for one group, ``[L, d_mlp]``."""
        g = self.group_index(group)
        return self.positive[g] / self.tokens[g].clamp(min=1)

    def mean_activation(self, group: str) -> torch.Tensor:
        g = self.group_index(group)
        return self.total[g] / self.tokens[g].clamp(min=1)

    def group_index(self, group: str) -> int:
        if group not in self.groups:
            raise ArtifactError(
                f"group {group!r} is not in these neuron statistics "
                f"(have: {', '.join(self.groups)})"
            )
        return self.groups.index(group)

    def save(self, directory: str | Path) -> None:
        meta = {
            "kind": "neuron_stats",
            "traitlens_version": __version__,
            "model": self.identity.to_dict(),
            "groups": self.groups,
            "layers": self.layers,
            "config": self.config,
        }
        tensors = {
            "positive": self.positive,
            "tokens": self.tokens,
            "total": self.total,
            "a95": self.a95,
        }
        write_artifact(tensors, meta, Path(directory) / "neuron_stats")

    @classmethod
    def load(cls, directory: str | Path, expect: ModelIdentity | None = None) -> NeuronStats:
        stem = Path(directory) / "neuron_stats"
        meta, identity, tensors = read_artifact(stem, "neuron statistics file", expect)
        return cls(
            identity,
            list(meta["groups"]),
            list(meta["layers"]),
            tensors["positive"],
            tensors["tokens"],
            tensors["total"],
            tensors["a95"],
            dict(meta["config"]),
        )


@dataclass
class Activations:
    """Pooled per-prompt vectors: ``pooled["resid.mean"]`` is ``[n_prompts, n_layers, d_model]``.

    ``prompt_ids[i]`` names row i; ``layers[j]`` is the model layer of column j.
    """

    identity: ModelIdentity
    prompt_ids: list[str]
    layers: list[int]
    pooled: dict[str, torch.Tensor]
    config: dict[str, Any] = field(default_factory=dict)
    neuron_stats: NeuronStats | None = None

    @property
    def key(self) -> str | None:
        """The input key this capture was saved under (None for one built by hand)."""
        value = self.config.get("cache_key")
        return None if value is None else str(value)

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
        if layer not in self.layers:
            raise ArtifactError(f"layer {layer} was not captured (have {self.layers})")
        return self.get(kind, pooling)[:, self.layers.index(layer)]

    def save(self, directory: str | Path) -> None:
        meta = {
            "kind": "activations",
            "traitlens_version": __version__,
            "model": self.identity.to_dict(),
            "prompt_ids": self.prompt_ids,
            "layers": self.layers,
            "config": self.config,
        }
        write_artifact(self.pooled, meta, Path(directory) / "activations")
        if self.neuron_stats is not None:
            self.neuron_stats.save(directory)

    @classmethod
    def load(cls, directory: str | Path, expect: ModelIdentity | None = None) -> Activations:
        stem = Path(directory) / "activations"
        meta, identity, pooled = read_artifact(stem, "activations file", expect)
        stats = None
        if (Path(directory) / "neuron_stats.json").exists():
            stats = NeuronStats.load(directory, expect)
        return cls(
            identity,
            list(meta["prompt_ids"]),
            list(meta["layers"]),
            pooled,
            dict(meta["config"]),
            stats,
        )
