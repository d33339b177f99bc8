"""``traitlens serve``: an OpenAI-compatible server with per-request trait steering."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from traitlens.cli.common import (
    DEVICE_OPTION,
    DTYPE_OPTION,
    MAX_BATCH_SIZE,
    MAX_NEW_TOKENS,
    MODEL_OPTION,
    check_float,
    check_int,
    check_model,
    console,
    load,
)
from traitlens.errors import DataError

if TYPE_CHECKING:
    from traitlens.models.loading import TraitModel
    from traitlens.steer.vector_set import VectorSet


def _vector_source(path: Path) -> Path:
    """A run directory holding ``vectors.json``, or one vector's ``.json``/``.safetensors``."""
    if path.is_dir():
        if not (path / "vectors.json").exists():
            raise DataError(
                f"--vectors {path}: the folder has no vectors.json; build vectors with "
                "`traitlens steer --run RUN` or pass one vector file"
            )
        return path
    stem = path.with_suffix("") if path.suffix in (".json", ".safetensors") else path
    if not stem.with_suffix(".json").exists():
        raise DataError(
            f"--vectors {path}: no such run directory or vector file (expected "
            f"{stem.with_suffix('.json')})"
        )
    return stem


def _check_limits(
    port: int, max_batch: int, queue: int, max_tokens: int, timeout: float, max_strength: float
) -> None:
    """The server's numbers, checked before the model loads."""
    check_int("--port", port, 0, 65535, example=8000)
    check_int("--max-batch", max_batch, 1, MAX_BATCH_SIZE, example=8)
    check_int("--queue", queue, 1, 1_000_000, example=64)
    check_int("--max-tokens", max_tokens, 1, MAX_NEW_TOKENS, example=512)
    check_float("--timeout", timeout, 0.0, low_open=True)
    check_float("--max-strength", max_strength, 0.0, 50.0, low_open=True)


def _served_vectors(tm: TraitModel, source: Path | None, calibrated: list[Path]) -> VectorSet:
    """The vectors to serve, each checked against ``tm``: the run's (or the one vector
    file's), then one per calibrated file."""
    from traitlens.steer.artifact import TraitVector
    from traitlens.steer.calibrate import CalibratedVector
    from traitlens.steer.vector_set import VectorSet

    if source is not None and source.is_dir():
        vector_set = VectorSet.load(source, expect=tm.identity)
    else:
        vector_set = VectorSet(tm.identity)
        if source is not None:
            vector_set.add(TraitVector.load(source, expect=tm.identity))
    for path in calibrated:
        vector = CalibratedVector.load(path, expect=tm.identity).as_vector()
        if (vector.trait, vector.method) in vector_set:
            raise DataError(
                f"--calibrated {path}: a calibrated {vector.trait} vector is already loaded; "
                "serve one calibration per trait (requests choose the sign)"
            )
        vector_set.add(vector)
    return vector_set


def _engine_args(engine: str, pairs: list[str]) -> dict[str, Any] | None:
    """vLLM's engine arguments for ``--engine vllm`` (None for the built-in engine),
    checked before the model loads: the engine name, KEY=VALUE syntax, and vLLM itself."""
    if engine not in ("builtin", "vllm"):
        raise DataError(f"--engine {engine!r}: choose builtin or vllm")
    if engine == "builtin":
        if pairs:
            raise DataError("--vllm-arg is for --engine vllm; drop it or add --engine vllm")
        return None
    parsed: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip().isidentifier():
            raise DataError(
                f"--vllm-arg {pair!r}: write KEY=VALUE with a vLLM engine argument name, "
                "e.g. --vllm-arg tensor_parallel_size=2"
            )
        try:
            parsed[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            parsed[key.strip()] = value
    if importlib.util.find_spec("vllm") is None:
        raise DataError(
            "--engine vllm needs vLLM, which lives in its own environment (its pins differ "
            "from the project's): run `make vllm`, then .venv-vllm/bin/traitlens serve ..."
        )
    return parsed


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def served_hosts(host: str, allowed: list[str]) -> list[str] | None:
    """The Host names served: the ones given, or for a loopback address only loopback
    names (None: any, for a public address without --allowed-host)."""
    if allowed:
        return [h.strip().lower() for h in allowed if h.strip()]
    if host in LOOPBACK:
        return ["localhost", "127.0.0.1", "::1", "[::1]"]
    return None


def serve_cmd(
    vectors: Path | None = typer.Option(
        None, "--vectors", help="run directory with vectors.json, or one vector file"
    ),
    calibrated: list[Path] = typer.Option(
        [],
        "--calibrated",
        help="a calibrated vector from `traitlens calibrate` (repeatable): served as "
        "method 'calibrated', strength 1 = the calibrated strength on its band",
    ),
    model: str | None = MODEL_OPTION,
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on"),
    port: int = typer.Option(8000, "--port"),
    allowed_hosts: list[str] = typer.Option(
        [],
        "--allowed-host",
        help="a name the Host header may carry (repeatable); default on a loopback "
        "--host: localhost, 127.0.0.1 and ::1 only (a page on another origin cannot "
        "rebind its name to this server)",
    ),
    api_key: str | None = typer.Option(
        None,
        "--api-key",
        envvar="TRAITLENS_API_KEY",
        help="require 'Authorization: Bearer KEY'",
    ),
    max_batch: int = typer.Option(8, "--max-batch", help="requests decoded together"),
    queue: int = typer.Option(64, "--queue", help="waiting requests before HTTP 429"),
    max_tokens: int = typer.Option(512, "--max-tokens", help="cap on max_tokens per request"),
    timeout: float = typer.Option(120.0, "--timeout", help="seconds per request"),
    max_strength: float = typer.Option(
        3.0, "--max-strength", help="safe |strength| per trait, in spread units per layer"
    ),
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
    engine: str = typer.Option(
        "builtin",
        "--engine",
        help="builtin (transformers, continuous batching; the default) or vllm (stock vLLM "
        "with the traitlens worker extension; needs the vLLM environment: make vllm)",
    ),
    vllm_args: list[str] = typer.Option(
        [],
        "--vllm-arg",
        help="a vLLM engine argument as KEY=VALUE, VALUE read as JSON when it parses "
        "(repeatable), e.g. tensor_parallel_size=2 or kv_cache_memory_bytes=2000000000",
    ),
) -> None:
    """Serve the model behind /v1/chat/completions and /v1/completions; add
    "steering": {"traits": {"E": 1.0}} to a request body to steer it. Playground at /."""
    from traitlens.serve import require_serve_extra

    require_serve_extra()
    _check_limits(port, max_batch, queue, max_tokens, timeout, max_strength)
    engine_args = _engine_args(engine, vllm_args)
    if vectors is None and not calibrated:
        raise DataError("pass --vectors RUN (or a vector file) and/or --calibrated FILE")
    source = _vector_source(vectors) if vectors is not None else None
    from traitlens.steer.calibrate import CalibratedVector

    for path in calibrated:
        CalibratedVector.load(path)  # unreadable or foreign files fail before the model
    check_model(model, device, dtype)
    tm = load(model, device, dtype)

    from traitlens.serve import create_app
    from traitlens.serve.server import serve_forever

    vector_set = _served_vectors(tm, source, calibrated)
    offered = ", ".join(f"{v.trait}/{v.method}" for v in vector_set)
    sources = ", ".join(str(p) for p in ([vectors] if vectors else []) + list(calibrated))
    console.print(f"vectors: {offered} from [bold]{sources}[/]")
    decoder = None
    if engine_args is not None:
        from traitlens.engines.vllm import VllmEngine, check_vectors

        check_vectors(vector_set)
        decoder = VllmEngine(
            tm,
            max_batch=max_batch,
            queue_limit=queue,
            engine_args=engine_args,
        )
        console.print(f"vLLM engine loaded in {decoder.load_seconds:.1f} s")
    server = create_app(
        tm,
        vector_set,
        api_key=api_key,
        max_tokens_cap=max_tokens,
        max_batch=max_batch,
        queue_limit=queue,
        request_timeout=timeout,
        max_strength=max_strength,
        allowed_hosts=served_hosts(host, allowed_hosts),
        engine=decoder,
    )
    if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        console.print(f"[yellow]warning:[/] listening on {host} without --api-key")
    console.print(f"serving on [bold]http://{host}:{port}[/] (playground at /, API at /v1)")
    try:
        serve_forever(server, host, port)
    finally:
        if decoder is not None:
            decoder.close()


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_cmd)
