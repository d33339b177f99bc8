"""One way to write and read artifacts (safetensors + JSON), shared by every stage.

Writes go through a temporary sibling and a rename, tensors first and JSON last: the
JSON marks an artifact complete, so an interrupted write is never mistaken for a
result. Reads turn every failure (missing, truncated, corrupt, wrong model) into one
:class:`~traitlens.errors.ArtifactError` that names the file and the fix.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from traitlens.errors import ArtifactError

if TYPE_CHECKING:
    from traitlens.models.loading import ModelIdentity

__all__ = [
    "check_writable",
    "jsonable",
    "read_json",
    "write_json",
    "load_tensors",
    "write_artifact",
    "read_artifact",
]


def jsonable(value: Any) -> Any:
    """Recursively turn numpy scalars/arrays and tuples into JSON types, NaN/inf → None
    (strict JSON has no NaN, and scores can be undefined, e.g. R² on a constant fold)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def check_writable(directory: Path) -> None:
    """Fail now, before any work, when ``directory`` cannot be created or written."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except FileExistsError as exc:
        raise ArtifactError(
            f"cannot write to {directory}: a file is in the way of that folder; choose another "
            "--out (or move the file)"
        ) from exc
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ArtifactError(
            f"cannot write to {directory} ({reason}); choose a writable --out, or fix the "
            "folder's permissions or free space"
        ) from exc


def write_json(path: Path, data: Any, *, allow_nan: bool = False) -> Path:
    """Strict JSON (see :func:`jsonable`), written atomically. ``allow_nan`` keeps NaN as
    Python's ``NaN`` token instead (measured rows, where NaN means "undefined" and is
    read back as a float)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    payload = json.loads(json.dumps(data, default=_plain)) if allow_nan else jsonable(data)
    tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False, allow_nan=allow_nan))
    tmp.replace(path)
    return path


def read_json(path: Path, missing: str = "run the stage that writes it first") -> dict[str, Any]:
    """A JSON object from ``path``; ``missing`` is the fix named when the file is absent."""
    if not path.exists():
        raise ArtifactError(f"{path} not found; {missing}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}); delete it and recompute") from exc
    if not isinstance(data, dict):
        raise ArtifactError(f"{path} does not hold a JSON object; delete it and recompute")
    return data


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.exists():
        raise ArtifactError(f"{path} not found; the artifact is incomplete — recompute it")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types on corruption
        raise ArtifactError(f"{path} is unreadable ({exc}); delete it and recompute") from exc


def write_artifact(
    tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], stem: Path
) -> Path:
    """Write ``stem.safetensors`` then ``stem.json``; returns the JSON path."""
    from safetensors.torch import save_file

    stem.parent.mkdir(parents=True, exist_ok=True)
    tensor_path = stem.with_suffix(".safetensors")
    tmp_tensor = tensor_path.with_suffix(".safetensors.tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp_tensor))
    tmp_tensor.replace(tensor_path)
    return write_json(stem.with_suffix(".json"), meta)


def read_artifact(
    stem: Path,
    what: str,
    expect: ModelIdentity | None = None,
    missing: str = "run the stage that writes it first",
    kind: str | None = None,
) -> tuple[dict[str, Any], ModelIdentity, dict[str, torch.Tensor]]:
    """``(meta, identity, tensors)`` of the artifact at ``stem``; with ``expect``, refuse
    one made for another model (``what`` names the artifact in that message); with
    ``kind``, refuse a JSON whose ``kind`` field differs (another stage's artifact)."""
    from traitlens.models.loading import require_identity

    json_path = stem.with_suffix(".json")
    meta = read_json(json_path, missing)
    if kind is not None and meta.get("kind") != kind:
        raise ArtifactError(f"{json_path} is not a {what}; recompute it")
    identity = require_identity(meta, json_path)
    if expect is not None:
        identity.check_matches(expect, what)
    return meta, identity, load_tensors(stem.with_suffix(".safetensors"))
