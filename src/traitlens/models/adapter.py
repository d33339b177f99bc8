"""Uniform hook-point names across architecture families.

Families differ in attribute names (``model.layers`` vs ``transformer.h``,
``self_attn`` vs ``attn``, ``act_fn`` vs ``act`` vs ``activation_fn``), so the
adapter finds the pieces by *structure*: the ModuleList of decoder blocks is the
one whose length matches the config's layer count and whose blocks each own an
attention module and an MLP; the per-neuron activation is the MLP's activation
module (for gated MLPs that is σ(x W_gate), the quantity whose sign NPTI counts;
for GPT-2-style MLPs the post-GELU hidden).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from traitlens.errors import HookPointError, ModelError

KINDS = ("resid", "mlp_act", "attn_out")
_HOOK_RE = re.compile(r"^\s*(resid|mlp_act|attn_out)\s*\[\s*(-?\d+)\s*\]\s*$")
_ATTN_NAMES = ("self_attn", "attn", "attention", "self_attention")
_MLP_NAMES = ("mlp", "feed_forward", "ffn")
_ACT_NAMES = ("act_fn", "activation_fn", "act")


@dataclass(frozen=True, order=True)
class HookPoint:
    """A named place in the model, e.g. ``resid[12]``."""

    kind: str
    layer: int

    def __str__(self) -> str:
        return f"{self.kind}[{self.layer}]"

    @classmethod
    def parse(cls, spec: str | HookPoint) -> HookPoint:
        if isinstance(spec, HookPoint):
            return spec
        match = _HOOK_RE.match(spec)
        if not match:
            raise HookPointError(
                f"bad hook point {spec!r}: write it as KIND[LAYER] with KIND one of "
                f"{', '.join(KINDS)}, e.g. 'resid[12]'"
            )
        return cls(match.group(1), int(match.group(2)))


@dataclass
class _Block:
    block: nn.Module
    attn: nn.Module
    mlp: nn.Module
    act: nn.Module


class ArchitectureAdapter:
    """Maps hook-point names to modules of one loaded model."""

    def __init__(self, model: nn.Module, blocks: list[_Block], family: str, gated: bool):
        self.model = model
        self._blocks = blocks
        self.family = family
        self.gated = gated

    @property
    def n_layers(self) -> int:
        return len(self._blocks)

    def resolve(self, spec: str | HookPoint) -> HookPoint:
        """Parse and range-check a hook point; negative layers count from the end."""
        point = HookPoint.parse(spec)
        layer = point.layer + self.n_layers if point.layer < 0 else point.layer
        if not 0 <= layer < self.n_layers:
            raise HookPointError(
                f"layer {point.layer} is out of range for {point}: this model has "
                f"{self.n_layers} layers (valid: 0..{self.n_layers - 1}, or -1 for the last)"
            )
        return HookPoint(point.kind, layer)

    def module(self, spec: str | HookPoint) -> nn.Module:
        """The module whose forward *output* is the hook point's value."""
        point = self.resolve(spec)
        block = self._blocks[point.layer]
        return {"resid": block.block, "attn_out": block.attn, "mlp_act": block.act}[point.kind]

    def hook_points(self, kind: str | None = None) -> list[HookPoint]:
        kinds = KINDS if kind is None else (kind,)
        return [HookPoint(k, layer) for k in kinds for layer in range(self.n_layers)]


def _child(module: nn.Module, names: tuple[str, ...]) -> nn.Module | None:
    for name in names:
        child = getattr(module, name, None)
        if isinstance(child, nn.Module):
            return child
    return None


def _n_layers_from_config(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    if config is None:
        return None
    config = getattr(config, "text_config", None) or config
    for attr in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, attr, None)
        if isinstance(value, int):
            return value
    return None


def detect_adapter(model: nn.Module) -> ArchitectureAdapter:
    """Find decoder blocks, attention, MLP and the MLP activation by structure.

    Raises ModelError naming what was missing, so an unknown layout fails here
    rather than deep inside a hook.
    """
    expected = _n_layers_from_config(model)
    candidates: list[tuple[str, nn.ModuleList]] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            first = module[0]
            if _child(first, _ATTN_NAMES) is not None and _child(first, _MLP_NAMES) is not None:
                candidates.append((name, module))
    if expected is not None:
        matching = [c for c in candidates if len(c[1]) == expected]
        candidates = matching or candidates
    if not candidates:
        raise ModelError(
            f"unsupported architecture {type(model).__name__}: found no list of decoder blocks "
            "each holding an attention module (self_attn/attn) and an MLP (mlp). traitlens "
            "supports Llama, Mistral, Qwen2/3, Gemma2/3, Phi-3 and GPT-2 style decoders; "
            "please open an issue with `print(model)` for other layouts"
        )
    _, layers = max(candidates, key=lambda c: len(c[1]))
    blocks: list[_Block] = []
    gated = False
    for index, block in enumerate(layers):
        attn = _child(block, _ATTN_NAMES)
        mlp = _child(block, _MLP_NAMES)
        act = _child(mlp, _ACT_NAMES) if mlp is not None else None
        if attn is None or mlp is None or act is None:
            raise ModelError(
                f"unsupported MLP layout in block {index} of {type(model).__name__}: expected an "
                "activation module named act_fn, activation_fn or act inside the MLP, so "
                "mlp_act hooks can see per-neuron activations"
            )
        gated = any(hasattr(mlp, n) for n in ("gate_proj", "gate_up_proj", "w1"))
        blocks.append(_Block(block, attn, mlp, act))
    acts = [b.act for b in blocks]
    if len({id(a) for a in acts}) != len(acts):
        raise ModelError(
            f"{type(model).__name__} shares one activation module across layers, so mlp_act "
            "hooks could not tell layers apart; this layout is not supported"
        )
    family = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    return ArchitectureAdapter(model, blocks, str(family), gated)
