"""llama.cpp control vectors: export a :class:`TraitVector` as GGUF, import one back.

The format, as llama.cpp reads it (``common.cpp: llama_control_vector_load_one``,
``llama-adapter.cpp: llama_adapter_cvec``) and as repeng's
``ControlVector.export_gguf`` and llama.cpp's own ``cvector-generator`` write it:

- ``general.architecture = "controlvector"``;
- ``controlvector.model_hint`` (string, informational: the model family, e.g.
  ``"llama"``) and ``controlvector.layer_count`` (uint32: number of direction
  tensors written);
- one 1-D float32 tensor ``direction.{il}`` of length ``n_embd`` per layer.

Layer numbering: llama.cpp adds ``direction.{il}`` to the output of decoder
block ``il`` of its 0-based layer loop (``cur = build_cvec(cur, il)`` at the
end of each block) — exactly traitlens' ``resid[il]`` and repeng's
``hidden_states[il + 1]``. So there is *no* index shift between traitlens'
layer numbers and the tensor names. What makes the names look 1-indexed is
that block 0 cannot be steered: the loader rejects a file containing
``direction.0`` ("direction tensor invalid") and keeps no slot for it. Export
therefore leaves layer 0 out by default and refuses it when asked for.

Scaling: llama.cpp adds ``file_tensor × scale`` (``--control-vector-scaled
FILE SCALE``; plain ``--control-vector`` means scale 1). We write
``strength × spread[l] × û[l]``, i.e. the exact vector
``AddDirection(vector, strength)`` would add, so loading the file at scale 1 in
llama.cpp reproduces traitlens' steering (on every token, like
``positions="all"``). Extra ``traitlens.*`` keys (ignored by llama.cpp) record
the model identity, trait, method, strength and spread, so import can check the
model and recover the strength unit.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from traitlens import __version__
from traitlens.artifact_io import ModelIdentity, atomic_path
from traitlens.errors import ArtifactError, InterventionError
from traitlens.limits import MAX_STRENGTH, STRENGTH_FIX, checked_size
from traitlens.steer.artifact import TraitVector

if TYPE_CHECKING:
    from traitlens.models.loading import TraitModel

ARCH = "controlvector"
META_KEY = "traitlens.metadata"
_DIRECTION = re.compile(r"^direction\.(\d+)$")


def model_hint(identity: ModelIdentity) -> str:
    """llama.cpp-style family name from the HF class name (``LlamaForCausalLM`` → ``llama``)."""
    name = identity.architecture
    for suffix in ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration", "Model"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.lower() or identity.architecture.lower()


def export_gguf(
    vector: TraitVector,
    path: str | Path,
    strength: float = 1.0,
    layers: Sequence[int] | None = None,
) -> Path:
    """Write ``vector`` × ``strength`` (spread units) as a llama.cpp control-vector GGUF.

    ``layers=None`` exports every layer the vector covers except layer 0 (which
    llama.cpp cannot steer). Only ``resid`` vectors can be exported: llama.cpp
    adds control vectors to block outputs. Returns the path written.
    """
    import gguf

    # the same validation as steering: finite, |strength| within range
    strength = checked_size("strength", strength, MAX_STRENGTH, STRENGTH_FIX)
    if vector.hook != "resid":
        raise InterventionError(
            f"llama.cpp control vectors act on block outputs (resid); this vector lives at "
            f"{vector.hook} — build a resid vector to export it"
        )
    chosen = [layer for layer in vector.layers if layer != 0] if layers is None else list(layers)
    if 0 in chosen:
        raise InterventionError(
            "llama.cpp never steers layer 0 (its loader rejects a direction.0 tensor); export "
            "layers from 1 up, e.g. --layers 1-" + str(max(vector.layers))
        )
    if not chosen:
        raise InterventionError(
            "no layers to export (layer 0 cannot be exported); pick layers >= 1"
        )
    chosen = sorted(set(chosen))
    rows = [vector.layer_index(layer) for layer in chosen]
    data = (vector.vectors[rows] * strength).to(torch.float32).numpy()
    meta = {
        "traitlens_version": __version__,
        "model": vector.identity.to_dict(),
        "trait": vector.trait,
        "method": vector.method,
        "pole": vector.pole,
        "strength": strength,
        "layers": chosen,
        "spread": [float(vector.spread[r]) for r in rows],
        "norms": [float(vector.norms[r]) for r in rows],
        "source": vector.source,
    }
    out = Path(path)
    with atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(str(tmp), ARCH)
        writer.add_string(f"{ARCH}.model_hint", model_hint(vector.identity))
        writer.add_uint32(f"{ARCH}.layer_count", len(chosen))
        writer.add_string(META_KEY, json.dumps(meta))
        for layer, row in zip(chosen, data, strict=True):
            writer.add_tensor(f"direction.{layer}", np.ascontiguousarray(row, dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return out


def _field(reader: Any, key: str) -> Any:
    field = reader.get_field(key)
    return None if field is None else field.contents()


def read_gguf(path: str | Path) -> tuple[dict[int, np.ndarray], dict[str, Any]]:
    """``({layer: float32 [n_embd]}, {key: value})`` of a control-vector GGUF."""
    import gguf

    source = Path(path)
    if not source.is_file():
        raise ArtifactError(f"control vector file not found: {source}")
    with source.open("rb") as handle:
        if handle.read(4) != b"GGUF":
            raise ArtifactError(
                f"{source} is not a GGUF file (no GGUF magic bytes); pass a control-vector "
                ".gguf written by traitlens, repeng or llama.cpp"
            )
    try:
        reader = gguf.GGUFReader(str(source))
    except Exception as exc:  # gguf raises ValueError/IndexError on cut-off files
        raise ArtifactError(
            f"{source} is truncated or corrupt: its header or tensor data ends before what it "
            "declares; export or download it again"
        ) from exc
    arch = _field(reader, "general.architecture")
    if arch != ARCH:
        raise ArtifactError(
            f"{source} has general.architecture={arch!r}, not {ARCH!r}: it is not a control "
            "vector (a model file?); pass a file written by traitlens, repeng or "
            "llama.cpp's cvector-generator"
        )
    directions: dict[int, np.ndarray] = {}
    readable = {gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16}
    for tensor in reader.tensors:
        match = _DIRECTION.match(tensor.name)
        if match is None:
            continue
        if tensor.tensor_type not in readable:
            kind = getattr(tensor.tensor_type, "name", tensor.tensor_type)
            raise ArtifactError(
                f"{source}: tensor {tensor.name} is stored as {kind}; a control vector's "
                "directions must be F32 or F16 (a quantized block would be read as floats) — "
                "export it again unquantized"
            )
        if int(np.prod(tensor.shape)) != int(max(tensor.shape, default=0)):
            raise ArtifactError(
                f"{source}: tensor {tensor.name} has shape {[int(n) for n in tensor.shape]}; "
                "a direction is one vector per layer — this is not a control vector"
            )
        values = np.array(tensor.data, dtype=np.float32).reshape(-1)
        if not np.isfinite(values).all():
            raise ArtifactError(f"{source}: tensor {tensor.name} holds NaN or inf")
        directions[int(match.group(1))] = values
    if not directions:
        raise ArtifactError(f"{source} holds no direction.N tensors; it is empty or corrupt")
    keys = {
        "model_hint": _field(reader, f"{ARCH}.model_hint"),
        "layer_count": _field(reader, f"{ARCH}.layer_count"),
        "metadata": _field(reader, META_KEY),
    }
    return directions, keys


def import_gguf(path: str | Path, model: TraitModel) -> TraitVector:
    """Read a control-vector GGUF as a :class:`TraitVector` for ``model``.

    Strength 1 of the imported vector adds exactly the file's tensors (what
    llama.cpp adds at scale 1). Files written by traitlens carry the model
    identity — a file for another model is refused — and their spread, so the
    strength unit survives the round trip (exactly, for an export at strength 1).
    Foreign files (repeng, llama.cpp) are checked for width and layer range.
    """
    source = Path(path)
    directions, keys = read_gguf(source)
    identity = model.identity
    width = {values.shape[0] for values in directions.values()}
    if width != {identity.d_model}:
        raise ArtifactError(
            f"{source} holds directions of width {sorted(width)} but {identity.name} has "
            f"d_model={identity.d_model}; this control vector was made for another model"
        )
    too_deep = [layer for layer in directions if layer >= identity.n_layers]
    if too_deep:
        raise ArtifactError(
            f"{source} has directions for layer(s) {sorted(too_deep)} but {identity.name} has "
            f"{identity.n_layers} layers; this control vector was made for another model"
        )
    meta: dict[str, Any] = {}
    if keys["metadata"]:
        try:
            meta = json.loads(str(keys["metadata"]))
            recorded = ModelIdentity.from_dict(meta["model"])
        except (
            json.JSONDecodeError,
            KeyError,
            TypeError,
            ValueError,
            AttributeError,
            ArtifactError,
        ) as exc:
            raise ArtifactError(
                f"{source} has a corrupt {META_KEY} entry ({type(exc).__name__}: {exc}); "
                "export the vector again with `traitlens vectors export`"
            ) from exc
        recorded.check_matches(identity, "control vector")
    layers = tuple(sorted(directions))
    vectors = torch.from_numpy(np.stack([directions[layer] for layer in layers]))
    try:
        strength = float(meta.get("strength", 1.0))
        if meta.get("layers") == list(layers):
            spread = torch.tensor(meta["spread"], dtype=torch.float32) * abs(strength)
            norms = torch.tensor(meta["norms"], dtype=torch.float32) * abs(strength)
            if spread.shape != (len(layers),) or norms.shape != (len(layers),):
                raise ValueError(f"spread/norms hold {list(spread.shape)} values")
        else:
            norms = vectors.double().norm(dim=1).float()
            spread = norms.clone()  # two tensors: safetensors refuses shared memory on save
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(
            f"{source} has a corrupt {META_KEY} entry ({type(exc).__name__}: {exc}); export "
            "the vector again with `traitlens vectors export`"
        ) from exc
    if not (math.isfinite(strength) and strength != 0):
        raise ArtifactError(f"{source} records strength {strength}; export it again")
    pole = str(meta.get("pole", "high"))
    if strength < 0:
        pole = {"high": "low", "low": "high"}.get(pole, pole)
    return TraitVector(
        identity=identity,
        trait=str(meta.get("trait", "unknown")),
        method=str(meta.get("method", "gguf")),
        layers=layers,
        vectors=vectors,
        spread=spread,
        norms=norms,
        hook="resid",
        pole=pole,
        source={
            "gguf": str(source),
            "model_hint": keys["model_hint"],
            "exported_strength": strength,
            **({"exported_from": meta.get("source", {})} if meta else {}),
        },
    )
