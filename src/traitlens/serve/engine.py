"""The decoding engine: requests with different trait mixes decoded together, token by token.

:func:`decode_batch` prefills a left-padded batch (attention mask and position
ids from :func:`traitlens.models.batching.left_pad`, so a prompt sees exactly
what it would see alone), then steps one token per row with the KV cache.
Sampling is per row — temperature, top-p and a per-row ``torch.Generator``
seeded from the request — as are stop strings and ``max_tokens``. A finished
row is retired: its slice of the KV cache, attention mask and steering table is
dropped, so the remaining rows stop paying for it.

:class:`Engine` owns the model: one background thread takes up to
``max_batch`` waiting requests at a time and decodes them with
:func:`decode_batch`; everything else that runs the model (the readout) goes
through the same thread, so no forward pass ever runs under another batch's
hooks.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from traitlens.models.batching import forward_accepts, last_logits_kwargs, left_pad
from traitlens.models.loading import TraitModel
from traitlens.serve.prompts import context_length
from traitlens.serve.steering import UNSTEERED, AppliedSteering, RowTable

_log = logging.getLogger("traitlens.serve")


@dataclass(frozen=True)
class Event:
    """What a job reports to its request: ``delta`` (new text), ``done`` or ``error``."""

    kind: str
    text: str = ""


@dataclass(eq=False)
class DecodeJob:
    """One request's decoding settings and, once decoded, its result.

    ``temperature <= 0`` is greedy; ``ignore_eos`` decodes exactly ``max_tokens`` tokens
    (for benchmarks, as vLLM's parameter of that name). ``emit`` is called from the
    engine thread with each :class:`Event` (text deltas never split a stop string or a
    UTF-8 character).
    """

    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    steering: AppliedSteering = UNSTEERED
    emit: Callable[[Event], None] | None = None
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    error: str | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    _emitted: int = 0

    def _send(self, event: Event) -> None:
        if self.emit is None:
            return
        try:
            self.emit(event)
        except RuntimeError:  # the request's event loop is gone (client left): nobody listens
            self.cancelled.set()

    def finish(self, reason: str) -> None:
        if self.finish_reason is None:
            self.finish_reason = reason
            self.finished.set()
            self._send(Event("done"))

    def fail(self, message: str) -> None:
        if self.finish_reason is None:
            self.error = message
            self.finish_reason = "error"
            self.finished.set()
            self._send(Event("error", message))


_TOKENIZER_LOCKS: dict[int, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def tokenizer_lock(tm: TraitModel) -> threading.Lock:
    """The lock every thread holds while using ``tm.tokenizer``: a fast (Rust) tokenizer
    used from two threads at once can fail with "Already borrowed"."""
    with _LOCKS_GUARD:
        return _TOKENIZER_LOCKS.setdefault(id(tm.tokenizer), threading.Lock())


def eos_token_ids(tm: TraitModel) -> set[int]:
    """Every id that ends an answer: the tokenizer's EOS and the generation config's."""
    ids: set[int] = set()
    for value in (
        tm.tokenizer.eos_token_id,
        getattr(getattr(tm.model, "generation_config", None), "eos_token_id", None),
    ):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return ids


class _Row:
    """Incremental detokenisation, stop strings and limits for one job.

    Text is decoded incrementally (the window from ``prefix`` on, less the window's
    already-read part, as text-generation-inference does), so a step costs the same at
    token 10 and at token 10,000; decoding the whole answer every step was O(n²) per
    row. The window keeps a few tokens of context, so a SentencePiece word boundary
    still decodes to its space."""

    def __init__(self, job: DecodeJob, tm: TraitModel, eos: set[int]):
        self.job, self.tokenizer, self.eos = job, tm.tokenizer, eos
        self.lock = tokenizer_lock(tm)
        self.longest_stop = max((len(s) for s in job.stop), default=0)
        self.prefix = 0  # first token of the decoding window
        self.read = 0  # tokens whose text is already in job.text

    def _decode(self, ids: list[int]) -> str:
        # no clean-up of spaces: it could rewrite text already streamed to the client
        return str(
            self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        )

    def _new_text(self, final: bool = False) -> str:
        ids = self.job.token_ids
        with self.lock:
            before = self._decode(ids[self.prefix : self.read])
            after = self._decode(ids[self.prefix :])
        if len(after) > len(before) and (final or not after.endswith("\ufffd")):
            self.prefix, self.read = self.read, len(ids)
            return after[len(before) :]
        return ""  # a partial UTF-8 character: wait for the rest of its bytes

    def push(self, token: int) -> bool:
        """Take the next token; True when the job is finished."""
        job = self.job
        if job.finish_reason is not None:  # failed (or finished) while in the batch
            return True
        if job.cancelled.is_set():
            job.finish("cancelled")
            return True
        if token in self.eos and not job.ignore_eos:
            self._flush(job.text)
            job.finish("stop")
            return True
        job.token_ids.append(token)
        text = job.text + self._new_text(final=len(job.token_ids) >= job.max_tokens)
        if job.stop:
            start = max(0, job._emitted - self.longest_stop)
            hits = [k for k in (text.find(s, start) for s in job.stop) if k >= 0]
            if hits:
                job.text = text[: min(hits)]
                self._flush(job.text)
                job.finish("stop")
                return True
        job.text = text
        if len(job.token_ids) >= job.max_tokens:
            self._flush(text)
            job.finish("length")
            return True
        self._flush(text[: self._safe_end(text)])
        return False

    def _safe_end(self, text: str) -> int:
        """Hold back a trailing partial UTF-8 character and any tail that may start a stop."""
        end = len(text)
        while end > self.job._emitted and text[end - 1] == "\ufffd":
            end -= 1
        safe = end
        for stop in self.job.stop:
            for size in range(min(len(stop) - 1, end), 0, -1):
                if text[end - size : end] == stop[:size]:
                    safe = min(safe, end - size)
                    break
        return max(self.job._emitted, safe)

    def _flush(self, text: str) -> None:
        if len(text) > self.job._emitted:
            delta = text[self.job._emitted :]
            self.job._emitted = len(text)
            self.job._send(Event("delta", delta))


MIN_TEMPERATURE = 1e-5
"""Below this, sampling is greedy: logits / 1e-39 overflow to inf and softmax gives NaN."""


def _generator(job: DecodeJob, device: torch.device) -> torch.Generator | None:
    if not job.temperature >= MIN_TEMPERATURE:  # also NaN
        return None
    seed = job.seed if job.seed is not None else secrets.randbits(63)
    return torch.Generator(device=device).manual_seed(int(seed))


def sample_rows(
    logits: torch.Tensor,
    jobs: Sequence[DecodeJob],
    generators: Sequence[torch.Generator | None],
) -> torch.Tensor:
    """Next token per row of ``logits [rows, vocab]``: greedy, or temperature + top-p
    (nucleus) sampling with each row's own generator."""
    logits = logits.float()
    tokens = logits.argmax(-1)
    for row, (job, generator) in enumerate(zip(jobs, generators, strict=True)):
        if generator is None:
            continue
        probs = torch.softmax(logits[row] / job.temperature, dim=-1)
        if not bool(torch.isfinite(probs).all()) or not float(probs.sum()) > 0:
            # non-finite logits on this row: fail it alone, the batch decodes on
            job.fail("sampling failed: this row's next-token probabilities are not finite")
            continue
        if job.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            # keep the smallest prefix whose mass reaches top_p (always the top token)
            outside = sorted_probs.cumsum(0) - sorted_probs > job.top_p
            sorted_probs = sorted_probs.masked_fill(outside, 0.0)
            pick = torch.multinomial(sorted_probs, 1, generator=generator)
            tokens[row] = order[pick][0]
        else:
            tokens[row] = torch.multinomial(probs, 1, generator=generator)[0]
    return tokens


Admit = Callable[[int], list[DecodeJob]]
"""Called between decoding steps with the number of free rows; returns jobs that join."""


def decode_batch(
    tm: TraitModel,
    jobs: Sequence[DecodeJob],
    eos: set[int] | None = None,
    *,
    admit: Admit | None = None,
    max_rows: int | None = None,
    max_width: int | None = None,
    between: Callable[[], None] | None = None,
    stats: EngineStats | None = None,
) -> None:
    """Decode ``jobs`` together; each job ends with its text, tokens and finish reason.

    One forward hook per steered hook point adds each row's own steering vector
    (:class:`~traitlens.serve.steering.RowTable`); unsteered rows get zeros. With
    ``admit``, requests that arrive meanwhile join the running batch between steps
    (up to ``max_rows`` rows): they are prefilled on their own, then their KV cache
    is left-padded to the batch's length and concatenated (models whose cache is not
    plain full attention, e.g. sliding-window layers, finish the batch first). Leading
    columns no live row attends to are dropped as rows leave, and nobody joins while
    the mask is ``max_width`` (the model's context) wide, so a batch that never ends
    keeps a bounded width and releases every finished job. ``between`` runs before
    every step with the steering hooks paused (the engine runs waiting readouts there,
    so they need not wait for a batch that may never end).
    """
    if not jobs:
        return
    eos = eos_token_ids(tm) if eos is None else eos
    table = RowTable([job.steering for job in jobs], tm)
    with torch.inference_mode(), table.installed():
        batch = _Batch(tm, table, eos, max_width or context_length(tm), between, stats)
        batch.run(list(jobs), admit, max_rows or len(jobs))


def _cache_of(out: Any) -> Any:
    cache = out.get("cache")
    return out.get("past_key_values") if cache is None else cache


def _joinable(cache: Any) -> bool:
    """Whether two caches can be merged along the batch: every layer a plain growing
    ``[batch, heads, seq, head_dim]`` key/value pair."""
    layers: list[Any] = list(getattr(cache, "layers", None) or [])
    return bool(layers) and all(type(layer).__name__ == "DynamicLayer" for layer in layers)


def _pad_left(tensor: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


class _Batch:
    """The state of a running batch: KV cache, attention mask, next positions, and the
    job, detokenizer and generator of each live row (aligned with the batch's rows, so
    a finished job is released when its row is, however long the batch runs)."""

    def __init__(
        self,
        tm: TraitModel,
        table: RowTable,
        eos: set[int],
        max_width: int,
        between: Callable[[], None] | None = None,
        stats: EngineStats | None = None,
    ):
        self.tm, self.table, self.eos = tm, table, eos
        self.between, self.stats = between, stats
        self.device = tm.device
        self.pad = tm.tokenizer.pad_token_id
        self.max_width = max_width
        # transformers 5.2x renamed the cache argument; older releases know the old name
        self.cache_arg = "cache" if forward_accepts(tm.model, "cache") else "past_key_values"
        self.jobs: list[DecodeJob] = []
        self.rows: list[_Row] = []
        self.generators: list[torch.Generator | None] = []
        self.done: list[bool] = []

    def _prefill(self, jobs: list[DecodeJob]) -> tuple[Any, torch.Tensor, torch.Tensor, Any]:
        """Add ``jobs`` and prefill them as one left-padded batch; returns their cache,
        attention mask, next positions and last logits."""
        self.jobs.extend(jobs)
        self.rows.extend(_Row(job, self.tm, self.eos) for job in jobs)
        self.generators.extend(_generator(job, self.device) for job in jobs)
        self.done.extend(False for _ in jobs)
        ids, attention, positions = left_pad([j.prompt_ids for j in jobs], self.pad, self.device)
        out = self.tm.model(
            input_ids=ids,
            attention_mask=attention,
            position_ids=positions,
            use_cache=True,
            **last_logits_kwargs(self.tm.model),
        )
        return _cache_of(out), attention, positions[:, -1] + 1, out.logits[:, -1, :]

    def _sample(self, first: int, logits: torch.Tensor) -> torch.Tensor:
        """Sample rows ``first..`` (their logits) and push each token to its row."""
        rows = range(first, first + logits.shape[0])
        tokens = sample_rows(
            logits, [self.jobs[i] for i in rows], [self.generators[i] for i in rows]
        )
        chosen = tokens.tolist()  # one device sync per step, not one per row
        for offset, index in enumerate(rows):
            if not self.done[index]:
                self.done[index] = self.rows[index].push(chosen[offset])
        return tokens

    def _release(self, keep: list[int]) -> None:
        """Keep only batch rows ``keep``: finished jobs leave the batch's bookkeeping."""
        for name in ("jobs", "rows", "generators", "done"):
            values = getattr(self, name)
            setattr(self, name, [values[i] for i in keep])

    def run(self, jobs: list[DecodeJob], admit: Admit | None, max_rows: int) -> None:
        cache, attention, next_position, logits = self._prefill(jobs)
        can_retire = hasattr(cache, "batch_select_indices")
        plain = _joinable(cache)
        joinable = admit is not None and can_retire and plain
        tokens = self._sample(0, logits)
        while True:
            # a batch kept alive by joiners must stay narrower than the context: joiners
            # wait (and start the next batch) while the mask is that wide
            if (
                joinable
                and admit is not None
                and len(self.jobs) < max_rows
                and attention.shape[1] < self.max_width
            ):
                joining = admit(max_rows - len(self.jobs))
                if joining:
                    start = len(self.jobs)
                    with self.table.admit([job.steering for job in joining]):
                        extra, extra_attention, extra_position, extra_logits = self._prefill(
                            joining
                        )
                    extra_tokens = self._sample(start, extra_logits)
                    width = max(attention.shape[1], extra_attention.shape[1])
                    for layer, other in zip(cache.layers, extra.layers, strict=True):
                        layer.keys = torch.cat(
                            [_pad_left(layer.keys, width, -2), _pad_left(other.keys, width, -2)]
                        )
                        layer.values = torch.cat(
                            [_pad_left(layer.values, width, -2), _pad_left(other.values, width, -2)]
                        )
                    attention = torch.cat(
                        [_pad_left(attention, width, 1), _pad_left(extra_attention, width, 1)]
                    )
                    next_position = torch.cat([next_position, extra_position])
                    tokens = torch.cat([tokens, extra_tokens])
            if all(self.done):
                return
            if can_retire and any(self.done):
                keep = [row for row, done in enumerate(self.done) if not done]
                selected = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(selected)
                attention, next_position = attention[selected], next_position[selected]
                tokens = tokens[selected]
                self.table.keep(selected)
                self._release(keep)
                if plain:
                    attention = _drop_masked_columns(cache, attention)
            else:
                # without retirement a finished row keeps decoding pads that nobody reads
                finished = torch.tensor(self.done, device=tokens.device)
                tokens = tokens.masked_fill(finished, self.pad)
            attention = torch.cat([attention, attention.new_ones((len(self.jobs), 1))], dim=1)
            if self.stats is not None:
                self.stats.widest = max(self.stats.widest, attention.shape[1])
            if self.between is not None:
                with self.table.paused():
                    self.between()
            started = time.perf_counter()
            out = self.tm.model(
                input_ids=tokens[:, None],
                attention_mask=attention,
                position_ids=next_position[:, None],
                use_cache=True,
                **{self.cache_arg: cache},
            )
            cache, logits = _cache_of(out), out.logits[:, -1, :]
            if self.stats is not None:
                self.stats.steps += 1
                self.stats.row_steps += len(self.jobs)
                self.stats.step_seconds += time.perf_counter() - started
            next_position = next_position + 1
            tokens = self._sample(0, logits)


def _drop_masked_columns(cache: Any, attention: torch.Tensor) -> torch.Tensor:
    """Drop the leading columns no live row attends to (the padding and the prompts of
    rows that left), from the mask and every layer's keys and values. Positions are
    explicit, so what each row sees is unchanged; under steady load the width then
    follows the oldest live row instead of growing for as long as the batch runs."""
    seen = attention.any(0)
    lead = int(seen.int().argmax()) if bool(seen.any()) else 0
    if lead == 0:
        return attention
    for layer in cache.layers:
        layer.keys = layer.keys[..., lead:, :]
        layer.values = layer.values[..., lead:, :]
    return attention[:, lead:]


def _abandoned(item: DecodeJob | tuple[Callable[[TraitModel], Any], Future[Any]]) -> bool:
    if isinstance(item, DecodeJob):
        return item.cancelled.is_set()
    return item[1].cancelled()


class QueueFull(Exception):
    """The engine's waiting queue is at its limit (HTTP 429)."""


class EngineClosed(Exception):
    """The engine was shut down."""


@dataclass
class EngineStats:
    batches: int = 0
    rows: int = 0
    largest_batch: int = 0
    joined: int = 0  # requests that joined a batch already running
    tokens: int = 0
    cancelled: int = 0  # requests whose client left (or timed out) before the end
    widest: int = 0  # the widest attention mask a batch has had
    steps: int = 0  # decoding steps (one forward pass of the running batch each)
    row_steps: int = 0  # rows decoded over those steps
    step_seconds: float = 0.0  # time spent in them
    last_error: str | None = None


class EngineGate:
    """What both engines (this one and :class:`traitlens.engines.vllm.VllmEngine`) keep
    in front of their decoding thread: the waiting queue, its lock, the hold count and
    the closed flag."""

    def __init__(self, tm: Any, *, max_batch: int, queue_limit: int, batch_wait: float) -> None:
        self.tm = tm
        self.max_batch = max_batch
        self.queue_limit = queue_limit
        self.batch_wait = batch_wait
        self.stats = EngineStats()
        self.eos = eos_token_ids(tm)
        self._pending: deque[Any] = deque()
        self._cond = threading.Condition()
        self._held = 0
        self._closed = False

    _thread: threading.Thread  # the decoding thread each engine starts

    @property
    def waiting(self) -> int:
        """Requests still wanted in the queue (cancelled ones no longer count)."""
        with self._cond:
            return sum(1 for item in self._pending if not _abandoned(item))

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, job: DecodeJob) -> None:
        """Queue a decode job (QueueFull past the limit, EngineClosed once closed)."""
        self._enqueue(job)

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Take no new work inside the block (jobs queue up; used by tests and to batch
        a known set of requests together)."""
        with self._cond:
            self._held += 1
        try:
            yield
        finally:
            with self._cond:
                self._held -= 1
                self._cond.notify_all()

    def _enqueue(self, item: Any) -> None:
        """Queue ``item``: EngineClosed once closed, QueueFull past ``queue_limit`` waiting
        items (after dropping those nobody waits for any more)."""
        limit = self.queue_limit
        with self._cond:
            if self._closed:
                raise EngineClosed("the server is shutting down")
            if len(self._pending) >= limit:
                self._purge()
            if len(self._pending) >= limit:
                raise QueueFull(
                    f"the server's queue is full ({limit} requests waiting); retry shortly"
                )
            self._pending.append(item)
            self._cond.notify_all()

    def _purge(self) -> None:
        """Drop queued work nobody waits for any more (clients that left or timed out),
        so abandoned requests never hold queue slots (call with ``_cond`` held)."""
        kept: deque[Any] = deque()
        for item in self._pending:
            if not _abandoned(item):
                kept.append(item)
            elif isinstance(item, DecodeJob):
                item.finish("cancelled")
                self.stats.cancelled += 1
        self._pending = kept

    def _shut(self) -> list[Any] | None:
        """Close the gate; returns what was waiting (None when it was already closed)."""
        with self._cond:
            if self._closed:
                return None
            self._closed = True
            leftover = list(self._pending)
            self._pending.clear()
            self._cond.notify_all()
        return leftover


class Engine(EngineGate):
    """One background thread that owns the model and decodes waiting jobs in batches.

    ``submit`` queues a :class:`DecodeJob` (raises :class:`QueueFull` past
    ``queue_limit`` waiting jobs); ``call`` runs any other model work on the same
    thread and returns a :class:`~concurrent.futures.Future`. After the first job
    of a batch arrives the engine waits up to ``batch_wait`` seconds for more; jobs
    that arrive later join the running batch between decoding steps while it has
    fewer than ``max_batch`` rows.
    """

    name = "builtin"

    def __init__(
        self,
        tm: TraitModel,
        *,
        max_batch: int = 8,
        queue_limit: int = 64,
        batch_wait: float = 0.005,
    ):
        super().__init__(tm, max_batch=max_batch, queue_limit=queue_limit, batch_wait=batch_wait)
        self._current: list[DecodeJob] = []
        self._thread = threading.Thread(target=self._loop, name="traitlens-engine", daemon=True)
        self._thread.start()

    def call(self, fn: Callable[[TraitModel], Any]) -> Future[Any]:
        future: Future[Any] = Future()
        self._enqueue((fn, future))
        return future

    def _release(self, joining: Sequence[DecodeJob] = ()) -> None:
        """Forget the running batch's finished jobs (a batch that never ends must not
        keep every request it served), counting their tokens; then add ``joining``."""
        live = []
        for job in self._current:
            if job.finish_reason is None:
                live.append(job)
                continue
            self.stats.tokens += len(job.token_ids)
            self.stats.cancelled += job.finish_reason == "cancelled"
        self._current = live + list(joining)

    def close(self, timeout: float = 10.0) -> None:
        for item in self._shut() or ():
            if isinstance(item, DecodeJob):
                item.fail("the server is shutting down")
            else:
                item[1].set_exception(EngineClosed("the server is shutting down"))
        self._thread.join(timeout)

    def _take(self) -> list[DecodeJob] | tuple[Callable[[TraitModel], Any], Future[Any]] | None:
        with self._cond:
            self._cond.wait_for(lambda: self._closed or (self._pending and not self._held))
            if self._closed:
                return None
            first = self._pending.popleft()
            if not isinstance(first, DecodeJob):
                return first
            if self.batch_wait > 0 and len(self._pending) < self.max_batch - 1:
                self._cond.wait_for(
                    lambda: self._closed or len(self._pending) >= self.max_batch - 1,
                    timeout=self.batch_wait,
                )
            batch = [first]
            rest: deque[DecodeJob | tuple[Callable[[TraitModel], Any], Future[Any]]] = deque()
            while self._pending and len(batch) < self.max_batch:
                item = self._pending.popleft()
                if isinstance(item, DecodeJob):
                    batch.append(item)
                else:
                    rest.append(item)
            rest.extend(self._pending)
            self._pending = rest
        return batch

    def _admit(self, free: int) -> list[DecodeJob]:
        """Waiting jobs that join the running batch (other work waits for the batch)."""
        with self._cond:
            if self._held or self._closed or not self._pending:
                return []
            self._purge()
            joining: list[DecodeJob] = []
            rest: deque[DecodeJob | tuple[Callable[[TraitModel], Any], Future[Any]]] = deque()
            for item in self._pending:
                if isinstance(item, DecodeJob) and len(joining) < free:
                    joining.append(item)
                else:
                    rest.append(item)
            self._pending = rest
        self.stats.rows += len(joining)
        self.stats.joined += len(joining)
        running = self.max_batch - free + len(joining)
        self.stats.largest_batch = max(self.stats.largest_batch, running)
        self._release(joining)
        return joining

    def _call(self, fn: Callable[[TraitModel], Any], future: Future[Any]) -> None:
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn(self.tm))
            except Exception as exc:  # reported to the caller, the engine lives on
                future.set_exception(exc)

    def _between(self) -> None:
        """Between two decoding steps: run the model calls (readouts) waiting in the
        queue, so a batch kept alive by joiners never starves them."""
        with self._cond:
            if self._held or self._closed:
                return
            calls = [item for item in self._pending if not isinstance(item, DecodeJob)]
            if not calls:
                return
            self._pending = deque(i for i in self._pending if isinstance(i, DecodeJob))
        for fn, future in calls:
            self._call(fn, future)

    def _loop(self) -> None:
        while True:
            work = self._take()
            if work is None:
                return
            if isinstance(work, tuple):
                self._call(*work)
                continue
            live = [job for job in work if not job.cancelled.is_set()]
            for job in work:
                if job.cancelled.is_set():
                    job.finish("cancelled")
                    self.stats.cancelled += 1
            self._current = list(live)
            self.stats.batches += 1
            self.stats.rows += len(live)
            self.stats.largest_batch = max(self.stats.largest_batch, len(live))
            try:
                decode_batch(
                    self.tm,
                    live,
                    self.eos,
                    admit=self._admit,
                    max_rows=self.max_batch,
                    between=self._between,
                    stats=self.stats,
                )
            except Exception as exc:  # one bad batch must not take the server down
                # /health is public: it names the error type, the log holds the detail
                self.stats.last_error = type(exc).__name__
                _log.exception("a decoding batch failed")
                # every row of the batch, those that joined it mid-run included (they
                # used to wait for their timeout); the detail stays in the server's log
                for job in self._current:
                    job.fail("generation failed on the server (the error is in its log)")
            self._release()
            self._current = []
