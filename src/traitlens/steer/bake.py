"""Bake a trait mix into a plain Hugging Face checkpoint: steering with no traitlens.

A constant addition ``v_l`` to the residual stream at the end of block ``l`` (what
:class:`AddDirection` does with ``positions="all"``) equals a bias ``v_l`` on that
block's last residual-writing projection: the MLP's down projection writes
``h + attn + mlp(x)``, so ``mlp(x) + v_l`` shifts the block output by exactly ``v_l``
at every position. The checkpoint then loads with
``AutoModelForCausalLM.from_pretrained(DIR)`` in any process and runs at unsteered
speed in any engine that loads HF checkpoints.

Families that can be baked, and where the bias goes:

- ``llama``: ``mlp.down_proj`` (``config.mlp_bias = True``; the gate/up biases it
  also creates are zero);
- ``gpt2``: ``mlp.c_proj.bias`` (GPT-2 has MLP biases already).

Others are refused with the reason: Mistral and Qwen2/3 configs have no MLP-bias
switch (a bias the loader does not expect would be dropped), and Gemma 2/3 normalize
the MLP output after the down projection (``post_feedforward_layernorm``), so a bias
there is not a constant addition to the residual stream.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from traitlens.artifact_io import check_writable, write_json
from traitlens.errors import ArtifactError, InterventionError
from traitlens.models.loading import TraitModel
from traitlens.steer.interventions import AddDirection

BAKEABLE: dict[str, str] = {
    "llama": "mlp.down_proj bias (config.mlp_bias)",
    "gpt2": "mlp.c_proj bias",
}
REFUSED: dict[str, str] = {
    "mistral": "its config has no MLP-bias switch, so a baked bias would be dropped on load",
    "qwen2": "its config has no MLP-bias switch, so a baked bias would be dropped on load",
    "qwen3": "its config has no MLP-bias switch, so a baked bias would be dropped on load",
    "gemma2": "the MLP output is normalized after the down projection, so a bias there is "
    "not a constant addition to the residual stream",
    "gemma3": "the MLP output is normalized after the down projection, so a bias there is "
    "not a constant addition to the residual stream",
    "gemma3_text": "the MLP output is normalized after the down projection, so a bias there "
    "is not a constant addition to the residual stream",
}


def check_bake_target(out: Path, force: bool = False) -> None:
    """Refuse a non-empty output folder (it may hold another checkpoint) unless ``force``."""
    if out.is_file():
        raise ArtifactError(f"{out} is a file; choose a folder for the baked checkpoint")
    if not force and out.is_dir() and any(out.iterdir()):
        raise ArtifactError(
            f"{out} already holds files (another checkpoint?); nothing was written. Choose a "
            "new --out, or pass --force to replace its contents"
        )


def mix_record(interventions: Sequence[Any]) -> list[dict[str, Any]]:
    """What a written mix was (trait, method, signed strength, layers), for its JSON sidecar."""
    return [
        {
            "trait": i.vector.trait,
            "method": i.vector.method,
            "strength": i.strength,
            "layers": list(i.layers or i.vector.layers),
        }
        for i in interventions
    ]


def bake_offsets(tm: TraitModel, interventions: Sequence[Any]) -> dict[int, torch.Tensor]:
    """Per layer, the total constant the mix adds to the residual stream (float64)."""
    from traitlens.steer.apply import _check_vector

    offsets: dict[int, torch.Tensor] = {}
    for item in interventions:
        if not isinstance(item, AddDirection):
            raise InterventionError(
                f"only direction additions can be baked into weights, not "
                f"{type(item).__name__}: neuron edits and ablations depend on the activations"
            )
        if item.positions != "all":
            raise InterventionError(
                f"a baked bias acts at every position; this AddDirection uses "
                f"positions={item.positions!r} — bake it with positions='all'"
            )
        if item.vector.hook != "resid":
            raise InterventionError("only residual-stream (resid) vectors can be baked")
        _check_vector(tm, item.vector)
        for layer in item.layers or item.vector.layers:
            point = tm.adapter.resolve(f"resid[{layer}]")
            step = item.vector.step(point.layer).double() * item.strength
            offsets[point.layer] = offsets.get(point.layer, 0) + step
    if not offsets:
        raise InterventionError("the mix adds nothing (no direction, or every strength is 0)")
    return offsets


def _add_bias(linear: Any, offset: torch.Tensor | None) -> None:
    """Give ``linear`` (nn.Linear, or GPT-2's transposed Conv1D) a bias and add ``offset``."""
    weight: torch.Tensor = linear.weight
    out_features = weight.shape[-1] if type(linear).__name__ == "Conv1D" else weight.shape[0]
    if getattr(linear, "bias", None) is None:
        linear.bias = nn.Parameter(torch.zeros(out_features, dtype=weight.dtype))
    if offset is not None:
        bias: torch.Tensor = linear.bias
        with torch.no_grad():
            bias += offset.to(bias.dtype)


def baked_model(tm: TraitModel, interventions: Sequence[Any]) -> Any:
    """A copy of ``tm.model`` with the mix folded into MLP output biases."""
    family = tm.adapter.family
    if family not in BAKEABLE:
        reason = REFUSED.get(family, "traitlens does not know where its MLP writes the residual")
        raise InterventionError(
            f"cannot bake into a {family} model: {reason}. Bakeable families: "
            f"{', '.join(BAKEABLE)}; steer it with hooks (traitlens serve) instead"
        )
    offsets = bake_offsets(tm, interventions)
    model: Any = copy.deepcopy(tm.model).cpu()
    if family == "llama":
        model.config.mlp_bias = True
        for index, layer in enumerate(model.model.layers):
            for name in ("gate_proj", "up_proj"):
                _add_bias(getattr(layer.mlp, name), None)
            _add_bias(layer.mlp.down_proj, offsets.get(index))
    else:  # gpt2
        for index, block in enumerate(model.transformer.h):
            _add_bias(block.mlp.c_proj, offsets.get(index))
    return model


def bake(
    tm: TraitModel, interventions: Sequence[Any], out_dir: str | Path, *, force: bool = False
) -> Path:
    """Write a plain HF checkpoint (safetensors + config + tokenizer) with the mix baked in,
    plus ``traitlens_bake.json`` recording what was baked; returns the folder. A folder that
    already holds files is refused unless ``force`` (never overwrite another checkpoint)."""
    out = Path(out_dir)
    check_bake_target(out, force)
    check_writable(out)
    model = baked_model(tm, interventions)
    model.save_pretrained(out, safe_serialization=True)
    tm.tokenizer.save_pretrained(out)
    write_json(
        out / "traitlens_bake.json",
        {
            "base_model": tm.identity.to_dict(),
            "family": tm.adapter.family,
            "where": BAKEABLE[tm.adapter.family],
            "mix": mix_record(interventions),
        },
    )
    return out
