"""The engine ``traitlens serve --engine vllm`` runs on: vLLM's ``LLMEngine`` behind the
built-in engine's interface, with each request's mix compiled by the server and added by
the worker extension in :mod:`traitlens.engines.vllm_worker` (which says how rows travel,
how they reach tokens, and what tensor and pipeline parallelism do to them)."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any

from traitlens.engines.vllm_worker import PAYLOAD_KEY, configure, encode_rows
from traitlens.errors import DataError, EngineError
from traitlens.serve.engine import (
    MIN_TEMPERATURE,
    DecodeJob,
    EngineGate,
    _Row,
)


def engine_model_path(tm: Any) -> str:
    """What vLLM loads for the server's model: the checkpoint ``tm`` itself was loaded
    from (``TraitModel.source``): the float safetensors copy traitlens caches for a GGUF
    file (the embedded model and the other aliases included), a local directory, or a
    hub id. So both copies are the same weights, whatever ``--model`` spelled."""
    source = str(getattr(tm, "source", "in-memory"))
    if source == "in-memory":
        raise DataError(
            f"{tm.identity.name} was built in memory, so vLLM has no checkpoint to load; "
            "save it with save_pretrained and load that directory"
        )
    return source


_log = logging.getLogger(__name__)

CPU_KV_CACHE_BYTES = 4 << 30
"""The KV cache vLLM's CPU backend gets unless ``kv_cache_memory_bytes`` (or
``gpu_memory_utilization``) is passed: 4 GiB, over 100k tokens of a small model."""


class VllmEngine(EngineGate):
    """:class:`traitlens.serve.engine.Engine`'s interface on vLLM: ``submit`` a
    :class:`~traitlens.serve.engine.DecodeJob` (its steering already validated and
    compiled to rows by the server), ``call`` a function of the transformers model (the
    readout), ``waiting``/``alive``/``stats``/``hold``/``close``.

    One thread drives a vLLM ``LLMEngine``: it adds waiting jobs as requests, steps the
    engine (vLLM schedules, batches and pages the KV cache), and feeds each new token
    through the built-in engine's own detokenizer and stop logic (``_Row``), so text,
    stop strings, EOS and ``max_tokens`` behave as they do there. vLLM decodes with
    ``ignore_eos``; a row that ``_Row`` ends is aborted in vLLM. vLLM loads
    ``model_dir``, by default the checkpoint ``tm`` came from (:func:`engine_model_path`),
    in ``dtype``, by default ``tm``'s (vLLM's own ``auto`` reads bfloat16 from the config,
    whose greedy text parts from float32 at near-ties).
    """

    name = "vllm"

    def __init__(
        self,
        tm: Any,
        model_dir: str | os.PathLike[str] | None = None,
        *,
        max_batch: int = 8,
        queue_limit: int = 64,
        batch_wait: float = 0.005,
        dtype: str | None = None,
        engine_args: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(tm, max_batch=max_batch, queue_limit=queue_limit, batch_wait=batch_wait)
        try:
            from vllm import EngineArgs
            from vllm.v1.engine.llm_engine import LLMEngine
        except ImportError as exc:
            raise EngineError(
                f"the vLLM engine needs vLLM in this environment ({exc}); install it with "
                "`make vllm` and run traitlens from .venv-vllm"
            ) from None
        extra = dict(engine_args or {})
        from vllm.platforms import current_platform

        if current_platform.is_cpu() and not {
            "kv_cache_memory_bytes",
            "gpu_memory_utilization",
        } & set(extra):
            # vLLM's CPU backend otherwise claims 92 % of the machine's memory for its KV
            # cache and refuses to start when less is free (the server's own transformers
            # copy is already loaded)
            extra["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
        try:
            args = EngineArgs(
                model=str(model_dir or engine_model_path(tm)),
                dtype=dtype or str(tm.dtype).removeprefix("torch."),
                max_num_seqs=max_batch,
                seed=0,
                **extra,
            )
        except TypeError as exc:  # an argument EngineArgs does not have
            raise EngineError(
                f"vLLM refused an engine argument: {exc}; --vllm-arg takes the names of "
                "vLLM's engine arguments with underscores (e.g. tensor_parallel_size=2)"
            ) from None
        configure(args, salted=True)
        started = time.perf_counter()
        try:
            self.llm = LLMEngine.from_engine_args(args)
        except Exception as exc:  # vLLM's own checks (head counts, memory, devices)
            detail = str(exc).strip().splitlines()
            raise EngineError(
                f"vLLM could not start: {type(exc).__name__}: "
                f"{' '.join(line.strip() for line in detail[:3])} (its log above has the rest)"
            ) from None
        self.layers = self.llm.collective_rpc("traitlens_install")
        self.load_seconds = time.perf_counter() - started
        self._active: dict[str, tuple[DecodeJob, Any]] = {}
        self._calls = _CallThread(tm)
        self._thread = threading.Thread(target=self._loop, name="traitlens-vllm", daemon=True)
        self._thread.start()

    def call(self, fn: Callable[[Any], Any]) -> Future[Any]:
        return self._calls.submit(fn)

    def close(self, timeout: float = 10.0) -> None:
        """Fail what waits, stop the thread and vLLM's engine core (twice is harmless)."""
        leftover = self._shut()
        if leftover is None:
            return
        for job in leftover:
            job.fail("the server is shutting down")
        self._thread.join(timeout)
        self._calls.close()
        shutdown = getattr(getattr(self.llm, "engine_core", None), "shutdown", None)
        if callable(shutdown):
            shutdown()

    def _request(self, job: DecodeJob) -> tuple[dict[str, Any], Any]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        payload = encode_rows(job.steering.rows) if job.steering.active else None
        prompt: dict[str, Any] = {"prompt_token_ids": list(job.prompt_ids)}
        if payload is not None:
            prompt["cache_salt"] = f"traitlens-{payload['key']}"
        greedy = not job.temperature >= MIN_TEMPERATURE
        params = SamplingParams(
            n=1,
            temperature=0.0 if greedy else float(job.temperature),
            top_p=1.0 if greedy else float(job.top_p),
            seed=job.seed,
            max_tokens=job.max_tokens,
            ignore_eos=True,
            detokenize=False,
            output_kind=RequestOutputKind.DELTA,
            extra_args={PAYLOAD_KEY: payload} if payload is not None else None,
        )
        return prompt, params

    def _admit(self) -> None:
        with self._cond:
            if not self._active:  # idle: sleep until work may start (never spin)
                self._cond.wait_for(lambda: self._closed or bool(self._pending and not self._held))
            if self._held or self._closed:
                return
            if not self._active and self.batch_wait > 0 and len(self._pending) < self.max_batch:
                self._cond.wait_for(
                    lambda: self._closed or len(self._pending) >= self.max_batch,
                    timeout=self.batch_wait,
                )
            # at most a batch in vLLM: the rest wait here, where --queue bounds them (429)
            free = max(0, self.max_batch - len(self._active))
            jobs = [self._pending.popleft() for _ in range(min(free, len(self._pending)))]
        for job in jobs:
            if job.cancelled.is_set():
                job.finish("cancelled")
                self.stats.cancelled += 1
                continue
            request_id = uuid.uuid4().hex
            prompt, params = self._request(job)
            self.llm.add_request(request_id, prompt, params)
            self._active[request_id] = (job, _Row(job, self.tm, self.eos))
            self.stats.rows += 1
        self.stats.largest_batch = max(self.stats.largest_batch, len(self._active))

    def _step(self) -> None:
        started = time.perf_counter()
        outputs = self.llm.step()
        self.stats.steps += 1
        self.stats.row_steps += len(self._active)
        self.stats.step_seconds += time.perf_counter() - started
        ended: list[str] = []
        closed_by_vllm: set[str] = set()
        for out in outputs:
            entry = self._active.get(out.request_id)
            if entry is None:
                continue
            job, row = entry
            done = False
            for token in out.outputs[0].token_ids if out.outputs else ():
                if row.push(int(token)):
                    done = True
                    break
            if out.finished:
                closed_by_vllm.add(out.request_id)
                if not done:
                    job.finish("length")
                    done = True
            if done:
                ended.append(out.request_id)
        for request_id, (job, _) in self._active.items():
            if job.cancelled.is_set() and request_id not in ended:
                job.finish("cancelled")
                ended.append(request_id)
        unfinished = [r for r in ended if r not in closed_by_vllm]
        if unfinished:
            self.llm.abort_request(unfinished)
        for request_id in ended:
            job, _ = self._active.pop(request_id)
            self.stats.tokens += len(job.token_ids)
            self.stats.cancelled += job.finish_reason == "cancelled"

    def _loop(self) -> None:
        while True:
            self._admit()
            if self._closed:
                break
            if not self._active:
                continue
            try:
                self._step()
            except Exception as exc:  # one failed step must not take the server down
                self.stats.last_error = type(exc).__name__
                _log.exception("a vLLM step failed")
                for job, _ in self._active.values():
                    job.fail("generation failed on the server (the error is in its log)")
                with contextlib.suppress(Exception):  # a dead engine core cannot abort
                    self.llm.abort_request(list(self._active))
                self._active.clear()
        for job, _ in self._active.values():
            job.fail("the server is shutting down")
        self._active.clear()


class _CallThread:
    """Runs model calls (the readout) on the server's transformers copy, one at a time."""

    def __init__(self, tm: Any) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.tm = tm
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="traitlens-readout")

    def submit(self, fn: Callable[[Any], Any]) -> Future[Any]:
        return self._pool.submit(fn, self.tm)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def check_vectors(vectors: Any) -> None:
    """Refuse, before vLLM loads, vectors the worker extension cannot add: it hooks
    decoder-layer outputs (``resid``) only."""
    other = sorted({f"{v.trait}/{v.method} ({v.hook})" for v in vectors if v.hook != "resid"})
    if other:
        raise DataError(
            f"--engine vllm adds vectors at decoder-layer outputs (resid) only; "
            f"{', '.join(other)} act elsewhere. Serve them with the built-in engine"
        )
