"""Capture artifacts: pooled activations and per-neuron statistics (safetensors + JSON)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from traitlens import __version__
from traitlens.errors import ArtifactError
from traitlens.models.loading import ModelIdentity, require_identity


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ArtifactError(f"{path} not found; run the stage that writes it first")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}); delete it and recompute") from exc
    if not isinstance(data, dict):
        raise ArtifactError(f"{path} does not hold a JSON object; delete it and recompute")
    return data


def _write_atomic(tensors: dict[str, torch.Tensor], meta: dict[str, Any], stem: Path) -> None:
    """Write tensors then JSON, each via a temp file + rename: the JSON (written last)
    marks the artifact complete, so an interrupted write is never mistaken for a result."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    tensor_path = stem.with_suffix(".safetensors")
    json_path = stem.with_suffix(".json")
    tmp_tensor = tensor_path.with_suffix(".safetensors.tmp")
    save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp_tensor))
    tmp_tensor.replace(tensor_path)
    tmp_json = json_path.with_suffix(".json.tmp")
    tmp_json.write_text(json.dumps(meta, indent=2))
    tmp_json.replace(json_path)


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
        _write_atomic(tensors, meta, Path(directory) / "neuron_stats")

    @classmethod
    def load(cls, directory: str | Path, expect: ModelIdentity | None = None) -> NeuronStats:
        stem = Path(directory) / "neuron_stats"
        meta = _read_json(stem.with_suffix(".json"))
        identity = require_identity(meta, stem.with_suffix(".json"))
        if expect is not None:
            identity.check_matches(expect, "neuron statistics file")
        tensors = _load_tensors(stem.with_suffix(".safetensors"))
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


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise ArtifactError(f"{path} not found; the artifact is incomplete — recompute it")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types on corruption
        raise ArtifactError(f"{path} is unreadable ({exc}); delete it and recompute") from exc


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
        _write_atomic(self.pooled, meta, Path(directory) / "activations")
        if self.neuron_stats is not None:
            self.neuron_stats.save(directory)

    @classmethod
    def load(cls, directory: str | Path, expect: ModelIdentity | None = None) -> Activations:
        stem = Path(directory) / "activations"
        meta = _read_json(stem.with_suffix(".json"))
        identity = require_identity(meta, stem.with_suffix(".json"))
        if expect is not None:
            identity.check_matches(expect, "activations file")
        pooled = _load_tensors(stem.with_suffix(".safetensors"))
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
