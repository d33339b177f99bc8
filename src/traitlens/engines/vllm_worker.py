"""Per-request trait mixes inside stock vLLM: the worker extension and the general plugin
(the engine ``traitlens serve --engine vllm`` runs on is :mod:`traitlens.engines.vllm`).

How a mix travels. The server validates a request's mix and compiles it to rows exactly
as the built-in engine does (:func:`traitlens.steer.apply.direction_rows`: one float32
``[d_model]`` row per decoder layer). :func:`encode_rows` packs those rows into a small
JSON-safe payload that rides in the request's ``SamplingParams.extra_args``; vLLM copies
``extra_args`` to every worker with the request, once, when it is first scheduled. So a
worker holds no trait vectors and no trait semantics: it adds what the request carries.

How rows reach tokens. vLLM flattens the prefill and decode tokens of every running
request into one ``[tokens, d_model]`` batch. Before each forward pass the model runner
orders its requests (``input_batch.req_ids``) and writes where each one's tokens start
(``query_start_loc``). On the first hooked layer of a pass, :class:`RowSteering` turns
that into one index per token (0 = unsteered, k = the k-th distinct mix of the step) and
stacks the step's distinct mixes into a ``[mixes + 1, d_model]`` table per layer, on the
worker's own device. Each decoder-layer hook then adds ``table[index]``: one gather and
one add. A step with no steered request builds nothing and every hook returns at once.

Why a separate payload and not the trait names: the rows are what the built-in engine
adds, bit for bit, so "a steered request equals ``traitlens steer``" holds by
construction, and a worker needs no copy of the vectors. The price is the payload size
(4 bytes × d_model per steered layer, base64), sent once per request.

Parallelism. Under tensor parallelism vLLM's decoder layers end in an all-reduce, so the
hidden states a layer returns are whole (``[tokens, d_model]``) and identical on every
rank: each rank adds the whole row, on its own device; nothing is split by rank. Under
pipeline parallelism a rank holds only its stage's layers (the others are
``PPMissingLayer``); :func:`hooked_layers` hooks only the layers a rank holds, so a mix's
rows apply on the rank that runs that layer. See docs/serving.md.

Prefix caching. A steered prompt's KV cache differs from the unsteered one, so the
engine gives each steered request a ``cache_salt`` derived from its rows: requests with
the same mix share cached prefixes, requests with different mixes never do.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from traitlens.errors import EngineError

PAYLOAD_KEY = "traitlens"
"""The ``SamplingParams.extra_args`` key a request's rows ride under."""

PAYLOAD_VERSION = 1
EXTENSION = "traitlens.engines.vllm_worker.SteeringExtension"
"""vLLM's ``worker_extension_cls`` for per-request steering."""

ENABLE_ENV = "TRAITLENS_VLLM_STEERING"
"""Set to 1 to let the general plugin turn steering on in any vLLM engine it sees."""

MAX_CACHED_MIXES = 256
"""Distinct mixes a worker keeps decoded (least recently used first out)."""


# -- the payload --------------------------------------------------------------------


def _layer_of(point: str) -> int:
    kind, _, rest = point.partition("[")
    if kind != "resid" or not rest.endswith("]") or not rest[:-1].isdigit():
        raise EngineError(
            f"vLLM steering adds rows to decoder-layer outputs (resid[L]); {point!r} is "
            "another hook point. Build the vectors at resid hook points, or serve them "
            "with the built-in engine"
        )
    return int(rest[:-1])


def encode_rows(rows: Mapping[str, torch.Tensor]) -> dict[str, Any] | None:
    """The ``extra_args`` payload for ``rows`` (``{"resid[10]": [d_model] tensor}``, as
    :func:`~traitlens.steer.apply.direction_rows` returns), or None for no rows."""
    if not rows:
        return None
    layers = sorted(_layer_of(point) for point in rows)
    by_layer = {_layer_of(point): row for point, row in rows.items()}
    table = torch.stack([by_layer[layer].detach().float().cpu() for layer in layers])
    if not torch.isfinite(table).all():
        raise EngineError("a steering row is not finite (NaN or inf); nothing was sent")
    raw = table.numpy().astype("<f4", copy=False).tobytes()
    return {
        "v": PAYLOAD_VERSION,
        "layers": layers,
        "d": int(table.shape[1]),
        "rows": base64.b64encode(raw).decode("ascii"),
        "key": _key(layers, raw),
    }


def _key(layers: Sequence[int], raw: bytes) -> str:
    """What names a mix (in a worker's cache and in the prefix-cache salt): its layers and
    row bytes, hashed."""
    return hashlib.sha256(repr(list(layers)).encode() + raw).hexdigest()[:24]


def decode_rows(payload: Mapping[str, Any]) -> tuple[str, list[int], torch.Tensor]:
    """``(key, layers, [layers, d_model] float32)`` from an :func:`encode_rows` payload;
    EngineError names what is malformed."""
    try:
        if payload.get("v") != PAYLOAD_VERSION:
            raise ValueError(f"payload version {payload.get('v')!r}, expected {PAYLOAD_VERSION}")
        layers = [int(layer) for layer in payload["layers"]]
        d = int(payload["d"])
        raw = base64.b64decode(payload["rows"], validate=True)
        key = str(payload["key"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise EngineError(f"malformed traitlens steering payload: {exc}") from None
    if not layers or d < 1 or len(raw) != 4 * d * len(layers):
        raise EngineError(
            f"malformed traitlens steering payload: {len(raw)} bytes for {len(layers)} "
            f"layer(s) of width {d}"
        )
    if key != _key(layers, raw):  # a worker caches mixes by key: it must name these rows
        raise EngineError(
            "malformed traitlens steering payload: its key does not match its rows; build "
            "payloads with traitlens.engines.vllm_worker.encode_rows"
        )
    table = torch.from_numpy(np.frombuffer(raw, dtype="<f4").copy()).view(len(layers), d)
    return key, layers, table


# -- the worker side ----------------------------------------------------------------


def decoder_layers(model: Any) -> Sequence[Any]:
    """The decoder-layer list of a vLLM model (``model.model.layers`` for Llama-likes,
    ``model.language_model.model.layers`` for multimodal wrappers)."""
    for path in ("model.layers", "language_model.model.layers", "model.decoder.layers"):
        obj = model
        for name in path.split("."):
            obj = getattr(obj, name, None)
            if obj is None:
                break
        if obj is not None:
            return obj  # type: ignore[no-any-return]
    raise EngineError(
        f"cannot find the decoder layers of {type(model).__name__} (looked for "
        "model.layers, language_model.model.layers, model.decoder.layers)"
    )


def hooked_layers(layers: Sequence[Any]) -> list[int]:
    """Indices of the layers this rank runs: under pipeline parallelism the layers of
    other stages are placeholders (vLLM's ``PPMissingLayer``) and get no hook."""
    return [i for i, layer in enumerate(layers) if type(layer).__name__ != "PPMissingLayer"]


def token_index(
    mix_of_request: Sequence[int], starts: Sequence[int], n_tokens: int
) -> torch.Tensor:
    """One table row per token of a flattened batch: request ``i`` owns tokens
    ``starts[i]:starts[i+1]`` and reads row ``mix_of_request[i]``; tokens past the last
    request (padding) read row 0, the zero row."""
    bounds = np.asarray(starts[: len(mix_of_request) + 1], dtype=np.int64)
    counts = bounds[1:] - bounds[:-1]
    index = np.zeros(n_tokens, dtype=np.int64)
    owned = np.repeat(np.asarray(mix_of_request, dtype=np.int64), counts)
    index[: owned.size] = owned
    return torch.from_numpy(index)


class RowSteering:
    """A worker's per-step row tables and the decoder-layer hook that adds them.

    ``requests()`` returns ``(payload or None per running request, query starts)`` for
    the current step; ``step_id()`` changes once per forward pass."""

    def __init__(
        self,
        requests: Callable[[], tuple[list[Mapping[str, Any] | None], Sequence[int]]],
        step_id: Callable[[], object],
        device: torch.device,
    ) -> None:
        self.requests, self.step_id, self.device = requests, step_id, device
        self._mixes: OrderedDict[str, tuple[list[int], torch.Tensor]] = OrderedDict()
        self._step: object = None
        self._tables: dict[int, torch.Tensor] = {}
        self._signature: tuple[Any, ...] = ()
        self._index: torch.Tensor | None = None
        self.steps = 0  # forward passes that carried at least one steered request

    def _mix(self, payload: Mapping[str, Any]) -> tuple[str, list[int], torch.Tensor]:
        key = str(payload.get("key", ""))
        hit = self._mixes.get(key)
        if hit is not None:
            self._mixes.move_to_end(key)
            return key, *hit
        key, layers, table = decode_rows(payload)
        self._mixes[key] = (layers, table.to(self.device))
        while len(self._mixes) > MAX_CACHED_MIXES:
            self._mixes.popitem(last=False)
        return key, layers, self._mixes[key][1]

    def _refresh(self, n_tokens: int, dtype: torch.dtype) -> None:
        step = self.step_id()
        if step is self._step and step is not None:
            return
        self._step = step
        self._index = None
        payloads, starts = self.requests()
        if not any(payloads):
            return
        keys: dict[str, int] = {}
        mixes: list[tuple[list[int], torch.Tensor]] = []
        mix_of_request = []
        for payload in payloads:
            if not payload:
                mix_of_request.append(0)
                continue
            key, layers, table = self._mix(payload)
            if key not in keys:
                keys[key] = len(mixes) + 1
                mixes.append((layers, table))
            mix_of_request.append(keys[key])
        signature = (tuple(keys), dtype)
        if signature != self._signature:  # decode steps mostly keep the same mixes
            self._signature = signature
            self._tables = _stack(mixes, dtype, self.device)
        self._index = token_index(mix_of_request, starts, n_tokens).to(self.device)
        self.steps += 1

    def hook(self, layer: int, _module: Any, _args: Any, output: Any) -> Any:
        """A forward hook on decoder layer ``layer``: vLLM's layers return
        ``(hidden, residual)``, whose sum is the residual stream; adding to ``hidden``
        adds to the stream (the next layer's norm or the final norm sums them)."""
        hidden = output[0] if isinstance(output, tuple) else output
        self._refresh(hidden.shape[0], hidden.dtype)
        table = self._tables.get(layer)
        if table is None or self._index is None:
            return None
        index = self._index
        if index.shape[0] != hidden.shape[0]:  # padded batch: padding reads the zero row
            index = torch.nn.functional.pad(index, (0, hidden.shape[0] - index.shape[0]))
        steered = hidden + table.index_select(0, index)
        return (steered, *output[1:]) if isinstance(output, tuple) else steered


def _stack(
    mixes: Sequence[tuple[list[int], torch.Tensor]], dtype: torch.dtype, device: torch.device
) -> dict[int, torch.Tensor]:
    """One ``[mixes + 1, d_model]`` table per steered layer; row 0 (unsteered) is zero."""
    d = mixes[0][1].shape[1]
    tables = {}
    for layer in sorted({layer for layers, _ in mixes for layer in layers}):
        table = torch.zeros(len(mixes) + 1, d, dtype=dtype, device=device)
        for k, (layers, rows) in enumerate(mixes, start=1):
            if layer in layers:
                table[k] = rows[layers.index(layer)].to(dtype)
        tables[layer] = table
    return tables


class SteeringExtension:
    """Mixed into vLLM's worker (``worker_extension_cls``); the engine calls
    ``collective_rpc("traitlens_install")`` once after start-up, on every rank."""

    def traitlens_install(self) -> list[int]:
        """Hook every decoder layer this rank runs; returns their indices."""
        state = getattr(self, "_traitlens", None)
        if state is not None:
            return list(state[1])
        runner: Any = getattr(self, "model_runner")  # noqa: B009 - set by vLLM's worker
        from vllm.forward_context import get_forward_context, is_forward_context_available

        def requests() -> tuple[list[Mapping[str, Any] | None], Sequence[int]]:
            n = runner.input_batch.num_reqs
            payloads: list[Mapping[str, Any] | None] = []
            for req_id in runner.input_batch.req_ids[:n]:
                cached = runner.requests.get(req_id)
                params = getattr(cached, "sampling_params", None)
                extra = getattr(params, "extra_args", None) or {}
                payloads.append(extra.get(PAYLOAD_KEY))
            return payloads, runner.query_start_loc.np[: n + 1].tolist()

        def step_id() -> object:
            return get_forward_context() if is_forward_context_available() else None

        steering = RowSteering(requests, step_id, torch.device(runner.device))
        layers = decoder_layers(runner.get_model())
        held = hooked_layers(layers)
        for index in held:
            layers[index].register_forward_hook(_bind(steering.hook, index))
        self._traitlens = (steering, held)
        return held

    def traitlens_steps(self) -> int:
        """Forward passes on this rank that carried a steered request."""
        state = getattr(self, "_traitlens", None)
        return 0 if state is None else state[0].steps


def _bind(hook: Callable[..., Any], layer: int) -> Callable[..., Any]:
    def bound(module: Any, args: Any, output: Any) -> Any:
        return hook(layer, module, args, output)

    return bound


# -- the general plugin ---------------------------------------------------------------


def register() -> None:
    """vLLM's ``vllm.general_plugins`` entry point: inert unless ``TRAITLENS_VLLM_STEERING``
    is 1, then every engine gets the worker extension and eager mode (the hooks branch
    on each step's requests, which a captured CUDA graph would freeze)."""
    if os.environ.get(ENABLE_ENV) != "1":
        return
    from vllm.engine.arg_utils import EngineArgs

    original = EngineArgs.create_engine_config
    if getattr(original, "_traitlens", False):
        return

    def create_engine_config(self: Any, *args: Any, **kwargs: Any) -> Any:
        configure(self, salted=False)
        return original(self, *args, **kwargs)

    create_engine_config._traitlens = True  # type: ignore[attr-defined]
    EngineArgs.create_engine_config = create_engine_config  # type: ignore[method-assign]


def configure(args: Any, *, salted: bool) -> None:
    """Set what steering needs on vLLM ``EngineArgs``; refuse another worker extension.

    A prompt's cached KV blocks hold the activations of the mix it was computed with, so
    a request must never reuse blocks another mix wrote. ``salted``: the caller gives
    every steered request a ``cache_salt`` from its rows (``VllmEngine`` does), so prefix
    caching stays on; otherwise (the general plugin, where callers build their own
    requests) prefix caching is turned off."""
    current = getattr(args, "worker_extension_cls", "") or ""
    if current and current != EXTENSION:
        raise EngineError(
            f"vLLM already has a worker extension ({current}); traitlens steering needs "
            f"its own ({EXTENSION}). Run without the other one"
        )
    args.worker_extension_cls = EXTENSION
    args.enforce_eager = True
    if not salted:
        args.enable_prefix_caching = False
