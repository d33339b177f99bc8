"""One way to write and read artifacts (safetensors + JSON), shared by every stage.

Writes go through a temporary sibling and a rename (:func:`atomic_path`), tensors
first and JSON last: the JSON marks an artifact complete, so an interrupted write is
never mistaken for a result. Reads turn every failure (missing, truncated, corrupt,
wrong model) into one :class:`~traitlens.errors.ArtifactError` that names the file
and the fix.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from functools import cache
from pathlib import Path
from types import UnionType
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    TypeVar,
    Union,
    cast,
    get_args,
    get_origin,
    get_type_hints,
)

import numpy as np

from traitlens import __version__
from traitlens.errors import ArtifactError

if TYPE_CHECKING:  # torch only in annotations: the CLI imports this module for --help
    import torch


__all__ = [
    "Artifact",
    "ModelIdentity",
    "Record",
    "Saved",
    "atomic_path",
    "atomic_write",
    "require_identity",
    "check_writable",
    "jsonable",
    "read_json",
    "write_json",
    "load_tensors",
    "write_artifact",
    "read_artifact",
]


def fields_of(obj: Any, names: Sequence[str]) -> dict[str, Any]:
    """``{name: obj.name}`` for ``names``: the plain-value part of an artifact's JSON."""
    return {name: getattr(obj, name) for name in names}


class Record:
    """Mixin for the dataclasses results are made of: one codec instead of a hand-written
    ``to_dict``/``from_dict`` pair in every result class.

    ``to_dict`` writes exactly the declared fields in order, nested records (also inside
    lists, tuples and dicts) as their own ``to_dict``; with ``OMIT_NONE`` a field that is
    None is left out (optional parts of a row appear only when measured).
    ``from_dict`` is the inverse, typed by the field annotations: nested records are
    rebuilt, ``tuple[...]`` fields become tuples, a JSON ``null`` in a ``float`` field is
    NaN again, unknown keys are ignored (a newer writer), a missing required field is one
    :class:`~traitlens.errors.ArtifactError` naming it; ``DEFAULTS`` fills fields that
    rows written by older versions lack.
    """

    OMIT_NONE: ClassVar[bool] = False
    DEFAULTS: ClassVar[Mapping[str, Any]] = {}

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: _encode(getattr(self, f.name)) for f in fields(cast(Any, self))}
        return {k: v for k, v in out.items() if v is not None} if self.OMIT_NONE else out

    @classmethod
    def from_dict(cls: type[R], data: Mapping[str, Any]) -> R:
        if not isinstance(data, Mapping):
            raise ArtifactError(
                f"{cls.__name__}: expected a JSON object, got {type(data).__name__}"
            )
        data = {**cls.DEFAULTS, **data}
        declared = [f for f in fields(cast(Any, cls)) if f.init]
        missing = [
            f.name
            for f in declared
            if f.name not in data and f.default is MISSING and f.default_factory is MISSING
        ]
        if missing:
            raise ArtifactError(
                f"{cls.__name__} lacks {', '.join(missing)}; it was written by another "
                "version of traitlens: delete it (or its run's rows folder) and measure again"
            )
        hints = _hints(cast(Any, cls))
        values = {f.name: _decode(hints[f.name], data[f.name]) for f in declared if f.name in data}
        return cls(**values)


R = TypeVar("R", bound=Record)


def _encode(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_dict()
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, list | tuple):
        return type(value)(_encode(v) for v in value)
    if isinstance(value, Mapping):
        return {k: _encode(v) for k, v in value.items()}
    return value


@cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _decode(hint: Any, value: Any) -> Any:
    """``value`` read from JSON, as the annotation ``hint`` declares it."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, UnionType):
        inner = [a for a in args if a is not type(None)]
        if value is None:
            return None if len(inner) < len(args) else value
        return _decode(inner[0], value) if len(inner) == 1 else value
    if value is None:
        return math.nan if hint is float else None
    if isinstance(hint, type) and issubclass(hint, Record):
        return hint.from_dict(value)
    if origin in (tuple, list):
        item = args[0] if args else Any
        if item is float:  # the common case, kept fast: long per-item lists of numbers
            items = [math.nan if v is None else v for v in value]
        elif item in (int, str, bool, Any):
            items = list(value)
        else:
            items = [_decode(item, v) for v in value]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping) and len(args) == 2:
        return {k: _decode(args[1], v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class ModelIdentity(Record):
    """What an artifact records about the model it was made with, checked on load."""

    name: str
    architecture: str
    n_layers: int
    d_model: int
    d_mlp: int
    digest: str
    # recorded beside the digest, never part of it (a bf16/fp32 switch or a transformers
    # upgrade loads the same weights): what the artifact was made with
    dtype: str = field(default="", compare=False)
    transformers: str = field(default="", compare=False)
    # how the digest was computed: 1 = config + 8 embedding rows (before 0.x), 2 = every
    # weight (bf16 bytes), the config without volatile fields and the chat template
    scheme: int = field(default=1, compare=False)

    def check_matches(self, other: ModelIdentity, what: str = "artifact") -> None:
        """Raise ArtifactError when ``other`` (the loaded model) is not this model."""
        if self.digest == other.digest:
            return
        if self.scheme != other.scheme:
            raise ArtifactError(
                f"this {what} was made by an earlier traitlens, whose model digest covered "
                "only the config and the first embedding rows (two fine-tunes of one base "
                "could not be told apart); it cannot be checked against the loaded model — "
                f"recompute the {what} (write to a new --out, or pass --force)"
            )
        raise ArtifactError(
            f"this {what} was made for model {self.name!r} ({self.architecture}, "
            f"{self.n_layers} layers, d_model={self.d_model}, digest {self.digest}) but the "
            f"loaded model is {other.name!r} ({other.architecture}, {other.n_layers} layers, "
            f"d_model={other.d_model}, digest {other.digest}); load the matching model or "
            f"recompute the {what} for this one"
        )


def require_identity(data: dict[str, Any], path: Path) -> ModelIdentity:
    """Parse the ``model`` block of an artifact's JSON, with a clear error if absent."""
    try:
        return ModelIdentity.from_dict(data["model"])
    except (KeyError, TypeError, ArtifactError) as exc:
        raise ArtifactError(
            f"{path} has no valid model identity ({exc}); it was not written by traitlens or "
            "is corrupt — recompute it"
        ) from exc


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
        # a fresh name, created exclusively and never through a symlink: a planted
        # ``.write-test-*`` link must not make us truncate what it points to
        probe = directory / f".write-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        os.close(os.open(probe, flags, 0o600))
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


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A fresh temporary path beside ``path`` to write to: renamed over ``path`` when the
    block succeeds, removed when it raises.

    Readers therefore see the old file or the complete new one, never a half-written
    one — the rename is atomic because the temporary lives in the same folder (same
    file system). For writers that need a path, not bytes (safetensors' ``save_file``,
    a GGUF writer, a CSV writer). The name is unique per call, so concurrent writers of
    one path cannot clobber each other's temporary, and it starts with ``.tmp-`` so a
    leftover from a killed process is easy to spot. Interruption-safe, not power-loss
    durable (no fsync): artifacts can be recomputed, and fsync would slow every write.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:12]}-{path.name}")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: Path, data: bytes | str) -> Path:
    """Write ``data`` (``str`` as UTF-8) to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
    return path


def write_json(path: Path, data: Any, *, allow_nan: bool = False) -> Path:
    """Strict JSON (see :func:`jsonable`), written atomically. ``allow_nan`` keeps NaN as
    Python's ``NaN`` token instead (measured rows, where NaN means "undefined" and is
    read back as a float)."""
    payload = json.loads(json.dumps(data, default=_plain)) if allow_nan else jsonable(data)
    return atomic_write(
        path, json.dumps(payload, indent=2, ensure_ascii=False, allow_nan=allow_nan)
    )


def read_json(path: Path, missing: str = "run the stage that writes it first") -> dict[str, Any]:
    """A JSON object from ``path``; ``missing`` is the fix named when the file is absent."""
    if not path.exists():
        raise ArtifactError(f"{path} not found; {missing}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
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


BINDING = "traitlens_json"
"""The safetensors metadata entry that names the JSON its tensors were written with."""


def json_digest(meta: Mapping[str, Any]) -> str:
    """A digest of ``meta`` as its JSON file holds it (canonical: sorted keys)."""
    canonical = json.dumps(jsonable(dict(meta)), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def tensor_binding(path: Path) -> str | None:
    """The JSON digest recorded in a safetensors file (None: none recorded, or unreadable)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return (handle.metadata() or {}).get(BINDING)
    except Exception:  # a missing or corrupt file is reported where it is loaded
        return None


def bound_to(json_path: Path, meta: Mapping[str, Any]) -> bool:
    """Whether the tensors beside ``json_path`` were written with this JSON (True when
    there are none, or they predate the binding)."""
    recorded = tensor_binding(json_path.with_suffix(".safetensors"))
    return recorded is None or recorded == json_digest(meta)


def write_artifact(
    tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], stem: Path
) -> Path:
    """Write ``stem.safetensors`` then ``stem.json``; returns the JSON path.

    The two files are renamed into place one after the other, so a crash (or another
    process) between the renames could pair new tensors with an old JSON. The tensors
    therefore record the digest of the JSON they belong to, and :func:`read_artifact`
    refuses a pair that does not match (a stage then recomputes instead of reusing it).
    """
    from safetensors.torch import save_file

    with atomic_path(stem.with_suffix(".safetensors")) as tmp:
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in tensors.items()},
            str(tmp),
            metadata={BINDING: json_digest(meta)},
        )
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
    json_path = stem.with_suffix(".json")
    meta = read_json(json_path, missing)
    if kind is not None and meta.get("kind") != kind:
        raise ArtifactError(f"{json_path} is not a {what}; recompute it")
    identity = require_identity(meta, json_path)
    if expect is not None:
        identity.check_matches(expect, what)
    tensors = load_tensors(stem.with_suffix(".safetensors"))
    if not bound_to(json_path, meta):
        raise ArtifactError(
            f"{stem}.safetensors does not match {json_path.name}: it was not written with "
            f"it (the two files come from different writes, e.g. an interrupted save); "
            f"delete {stem.name}.* and recompute"
        )
    return meta, identity, tensors


ArtifactT = TypeVar("ArtifactT", bound="Artifact")


@dataclass(frozen=True)
class Saved:
    """What :meth:`Artifact.load` read from ``stem.json`` / ``stem.safetensors``: the
    metadata, the (checked) model identity and the tensors."""

    stem: Path
    meta: dict[str, Any]
    identity: ModelIdentity
    tensors: dict[str, torch.Tensor]

    def mismatch(self, detail: str) -> ArtifactError:
        """The error for tensors that do not fit the JSON beside them (``detail`` says how):
        the two files come from different writes, so the artifact must be recomputed."""
        return ArtifactError(
            f"{self.stem}.safetensors does not match {self.stem}.json: {detail}; the two "
            f"files come from different runs — delete {self.stem.name}.* and recompute"
        )


class Artifact:
    """Base of the stage artifacts saved as ``directory/{stem}.safetensors`` + ``.json``.

    :meth:`save` writes the tensors, then the JSON, which opens with what every artifact
    records (its ``kind``, the traitlens version, the model identity) followed by the
    subclass's own metadata; :meth:`load` reads both back, refuses another model's
    artifact when ``expect`` is given (and, with ``check_kind``, another stage's JSON),
    and turns a missing or garbled field into one :class:`ArtifactError` naming the file.
    A subclass names its file (``stem``, ``kind_name``, ``what``) and says what it holds:
    :meth:`_tensors`, :meth:`_meta` and how to rebuild itself, :meth:`_from_saved`;
    :attr:`key` is the input key its ``config`` records under ``key_field``.
    """

    stem: ClassVar[str]
    kind_name: ClassVar[str]
    what: ClassVar[str]
    missing: ClassVar[str] = "run the stage that writes it first"
    check_kind: ClassVar[bool] = False
    key_field: ClassVar[str] = "inputs_key"

    if TYPE_CHECKING:  # dataclass fields of every subclass
        identity: ModelIdentity
        config: dict[str, Any]

    def __init_subclass__(
        cls,
        *,
        stem: str | None = None,
        kind_name: str | None = None,
        what: str | None = None,
        check_kind: bool | None = None,
        **kwargs: Any,
    ) -> None:
        """Name the file in the class line: ``class X(Artifact, stem="x", kind_name="x",
        what="x file", check_kind=True)``."""
        super().__init_subclass__(**kwargs)
        named = {"stem": stem, "kind_name": kind_name, "what": what, "check_kind": check_kind}
        for name, value in named.items():
            if value is not None:
                setattr(cls, name, value)

    @property
    def key(self) -> str | None:
        """The input key this artifact was made under (None for one built by hand)."""
        value = self.config.get(self.key_field)
        return None if value is None else str(value)

    def _tensors(self) -> Mapping[str, torch.Tensor]:
        raise NotImplementedError

    def _meta(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def _from_saved(cls: type[ArtifactT], saved: Saved) -> ArtifactT:
        raise NotImplementedError

    def save(self, directory: str | Path) -> Path:
        """Write ``directory/{stem}.safetensors`` then ``{stem}.json``; returns the JSON path."""
        meta = {
            "kind": self.kind_name,
            "traitlens_version": __version__,
            "model": self.identity.to_dict(),
            **self._meta(),
        }
        return write_artifact(self._tensors(), meta, Path(directory) / self.stem)

    @classmethod
    def load(
        cls: type[ArtifactT], directory: str | Path, expect: ModelIdentity | None = None
    ) -> ArtifactT:
        """Read a saved artifact; with ``expect``, refuse one made for another model."""
        stem = Path(directory) / cls.stem
        kind = cls.kind_name if cls.check_kind else None
        meta, identity, tensors = read_artifact(stem, cls.what, expect, cls.missing, kind)
        try:
            return cls._from_saved(Saved(stem, meta, identity, tensors))
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(
                f"{stem}.json is incomplete or corrupt ({exc!r}); delete {cls.stem}.* and recompute"
            ) from exc
