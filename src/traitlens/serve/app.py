"""The FastAPI application: OpenAI-compatible endpoints plus steering, traits, readout
and the playground page.

Every request is validated before it reaches the engine; anything wrong comes
back as HTTP 4xx in OpenAI's error shape ``{"error": {"message", "type",
"param", "code"}}`` and the server carries on. Generation runs on the engine's
thread (:class:`traitlens.serve.engine.Engine`); handlers only wait for events.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import logging
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any, TypeVar

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from traitlens.errors import DataError
from traitlens.models.chat import ChatFormatter
from traitlens.models.loading import TraitModel
from traitlens.serve.engine import (
    DecodeJob,
    Engine,
    EngineClosed,
    Event,
    QueueFull,
)
from traitlens.serve.prompts import chat_prompt_ids, completion_prompt_ids, context_length
from traitlens.serve.readout import trait_readout
from traitlens.serve.schema import (
    ChatRequest,
    CompletionRequest,
    ReadoutRequest,
    SamplingRequest,
    error_body,
)
from traitlens.serve.steering import SAFE_STRENGTH, AppliedSteering, SteeringCatalog, SteeringError
from traitlens.steer.vector_set import VectorSet

_log = logging.getLogger("traitlens.serve")

STEERING_HEADER = "X-Traitlens-Steering"

T = TypeVar("T")


class ApiError(Exception):
    """An error returned to the client in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = (
            status,
            message,
            kind,
            param,
            code,
        )

    def response(self) -> JSONResponse:
        return JSONResponse(
            error_body(self.message, self.kind, self.param, self.code), status_code=self.status
        )


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request body", None, None
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(loc) or None
    if first.get("type") == "json_invalid":
        return f"malformed JSON body: {first.get('msg', '')}", None, "json_invalid"
    if first.get("type") == "missing" and not loc:
        return "the request needs a JSON body", None, "missing_body"
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    where = f"{param}: " if param else ""
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"{where}{message}{more}", param, str(first.get("type"))


def create_app(
    tm: TraitModel,
    vectors: VectorSet,
    *,
    api_key: str | None = None,
    max_tokens_cap: int = 512,
    max_batch: int = 8,
    queue_limit: int = 64,
    request_timeout: float = 120.0,
    max_strength: float = SAFE_STRENGTH,
    batch_wait: float = 0.005,
    max_body_bytes: int = 4_000_000,
    allowed_hosts: Sequence[str] | None = None,
    engine: Any = None,
) -> FastAPI:
    """An app serving ``tm`` steered by ``vectors``; the engine thread starts now and
    stops at shutdown (or with ``app.state.engine.close()``).

    ``max_tokens_cap`` bounds ``max_tokens``; ``max_batch`` requests decode together;
    past ``queue_limit`` waiting requests the answer is 429; a request unfinished after
    ``request_timeout`` seconds gets 504; ``api_key`` requires ``Authorization: Bearer``;
    strengths beyond ±``max_strength`` spread units are refused; bodies over
    ``max_body_bytes`` get 413 (counted as they arrive, after the key is checked);
    ``allowed_hosts`` (names the ``Host`` header may carry) refuses every other host.
    ``engine`` replaces the built-in engine with another of its interface (``submit``,
    ``call``, ``waiting``, ``alive``, ``stats``, ``hold``, ``close``), e.g.
    :class:`traitlens.engines.vllm.VllmEngine`; requests are validated and their mixes
    compiled the same way whichever engine decodes them; the caller closes an engine
    it passes in (the app closes only the one it made).
    """
    if api_key is not None and not api_key.strip():
        raise DataError(
            "the API key is empty: an empty key would let every request in while looking "
            "protected; pass a real key, or none to serve without one"
        )
    catalog = SteeringCatalog(tm, vectors, max_strength=max_strength)
    owned = engine is None  # the app stops the engine it made; a given one is the caller's
    if engine is None:
        engine = Engine(tm, max_batch=max_batch, queue_limit=queue_limit, batch_wait=batch_wait)
    service = _Service(
        tm,
        catalog,
        engine,
        api_key=api_key,
        max_tokens_cap=max_tokens_cap,
        request_timeout=request_timeout,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if owned:
            engine.close()

    app = FastAPI(title="traitlens", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.engine = engine
    app.state.catalog = catalog
    _install_error_handlers(app, max_body_bytes)
    _install_routes(app, service)
    app.add_middleware(
        RequestGuard,
        max_body_bytes=max_body_bytes,
        key_ok=service.key_ok,
        allowed_hosts=allowed_hosts,
    )
    return app


class RequestGuard:
    """ASGI middleware that checks what it can before the app reads a request body.

    In order: the ``Host`` header (with ``allowed_hosts``: a web page on another origin
    that rebinds its name to this address cannot drive a local server), the API key on
    protected paths (a client without it never gets its body read), the content type of
    a body (JSON only: a cross-site "simple" form POST is refused), then the body itself
    counted as it arrives — a chunked upload past ``max_body_bytes`` is cut off at the
    limit, not read whole (the ``Content-Length`` check alone missed it).
    """

    OPEN_PATHS = ("/health", "/")

    def __init__(
        self,
        app: Any,
        *,
        max_body_bytes: int,
        key_ok: Callable[[str], bool],
        allowed_hosts: Sequence[str] | None,
    ):
        self.app, self.max_body_bytes, self.key_ok = app, max_body_bytes, key_ok
        self.allowed_hosts = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._refusal(scope, headers)
        if refusal is None and scope["method"] in ("POST", "PUT", "PATCH"):
            body, refusal = await self._read(receive, headers)
            if refusal is None:
                receive = _replay(body, receive)
        if refusal is not None:
            await refusal.response()(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Any, headers: dict[str, str]) -> ApiError | None:
        host = headers.get("host", "").lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if self.allowed_hosts is not None and name not in self.allowed_hosts:
            return ApiError(400, f"host {host!r} is not served here", code="invalid_host")
        if scope["path"] not in self.OPEN_PATHS and not self.key_ok(
            headers.get("authorization", "")
        ):
            return WRONG_KEY
        if scope["method"] in ("POST", "PUT", "PATCH"):
            kind = headers.get("content-type", "").split(";")[0].strip().lower()
            if kind != "application/json":
                return ApiError(
                    415,
                    f"send the body as JSON (Content-Type: application/json), not {kind!r}",
                    code="unsupported_media_type",
                )
        size = headers.get("content-length", "")
        if size.isdigit() and int(size) > self.max_body_bytes:
            return self._too_large(int(size))
        return None

    def _too_large(self, size: int | None) -> ApiError:
        told = f" ({size} bytes)" if size is not None else ""
        return ApiError(
            413,
            f"the request body{told} is larger than this server's limit of "
            f"{self.max_body_bytes} bytes",
            code="body_too_large",
        )

    async def _read(self, receive: Any, headers: dict[str, str]) -> tuple[bytes, ApiError | None]:
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return bytes(body), ApiError(400, "the client went away", code="disconnected")
            body += message.get("body", b"")
            if len(body) > self.max_body_bytes:  # stop reading at the limit
                return b"", self._too_large(None)
            if not message.get("more_body", False):
                return bytes(body), None


def _replay(body: bytes, receive: Any) -> Any:
    """A ``receive`` that hands the app the body already read, then the real channel
    (so a disconnect is still seen)."""
    sent = False

    async def replay() -> Any:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


WRONG_KEY = ApiError(
    401,
    "missing or wrong API key: send the header 'Authorization: Bearer YOUR_KEY'",
    param=None,
    code="invalid_api_key",
)


def _install_error_handlers(app: FastAPI, max_body_bytes: int) -> None:
    """Every failure leaves as an OpenAI-shaped error body."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param, code = _validation_message(exc)
        return ApiError(400, message, param=param, code=code).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return ApiError(exc.status_code, str(exc.detail), kind).response()

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception) -> JSONResponse:
        # the detail goes to the server's log, never to the client (it can hold paths,
        # prompts of other requests or library internals)
        _log.exception("unhandled error in a request")
        return ApiError(
            500, "internal error (the server's log has the details)", "server_error"
        ).response()


def _install_routes(app: FastAPI, service: _Service) -> None:
    """The endpoints; all but ``/health`` and the playground need the API key (if set)."""
    auth = [Depends(service.authorized)]
    app.get("/health")(service.health)
    app.get("/v1/models", dependencies=auth)(service.models)
    app.get("/v1/traits", dependencies=auth)(service.traits)
    app.post("/v1/chat/completions", dependencies=auth)(service.chat_completions)
    app.post("/v1/completions", dependencies=auth)(service.completions)
    app.post("/v1/traitlens/readout", dependencies=auth)(service.readout)
    app.get("/", response_class=HTMLResponse, include_in_schema=False)(service.playground)


def _usage(prompt_tokens: int, job: DecodeJob) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": len(job.token_ids),
        "total_tokens": prompt_tokens + len(job.token_ids),
    }


def _queued(submit: Callable[[], T]) -> T:
    """``submit()`` to the engine, a full queue answered 429 and a closing engine 503."""
    try:
        return submit()
    except QueueFull as exc:
        raise ApiError(429, str(exc), "rate_limit_error", code="queue_full") from None
    except EngineClosed as exc:
        raise ApiError(503, str(exc), "server_error", code="shutting_down") from None


DISCONNECT_POLL = 0.25
"""Seconds between checks that the client of a non-streamed request is still there."""


class TextSide:
    """The request side's own tokenizer (a copy of the model's) and chat formatter: the
    prompt builders of :mod:`traitlens.serve.prompts` take it in place of the model."""

    def __init__(self, tm: TraitModel):
        self.tokenizer = copy.deepcopy(tm.tokenizer)
        self.formatter = ChatFormatter(self.tokenizer)
        vocab = self.tokenizer.get_vocab()
        # byte-level spellings are at least as long as the text they decode to
        self.longest_token = max((len(t) for t in vocab), default=1) or 1


class _Service:
    """What the endpoints share: the model and its tokenizer lock, the steering catalog,
    the engine thread, and the server's limits. Handlers validate, then wait for the
    engine; none of them runs the model on the event loop."""

    def __init__(
        self,
        tm: TraitModel,
        catalog: SteeringCatalog,
        engine: Engine,
        *,
        api_key: str | None,
        max_tokens_cap: int,
        request_timeout: float,
    ) -> None:
        self.tm, self.catalog, self.engine = tm, catalog, engine
        self.api_key = api_key
        self.max_tokens_cap = max_tokens_cap
        self.request_timeout = request_timeout
        self.context = context_length(tm)
        # requests are tokenized in worker threads with a copy of the tokenizer under its
        # own lock: a huge prompt never blocks the event loop, nor the engine thread's
        # detokenizer (which holds the model tokenizer's lock every step)
        self.texts = TextSide(tm)
        self.text_lock = threading.Lock()
        # no text longer than this fits the context (each token is at most this many
        # characters): refused before any tokenizing
        self.max_chars = self.context * self.texts.longest_token
        self.model_name = tm.identity.name
        self.started = int(time.time())

    def key_ok(self, header: str) -> bool:
        """Whether an ``Authorization`` header carries the key (always, without one)."""
        if self.api_key is None:
            return True
        scheme, _, token = header.partition(" ")
        # bytes, not str: compare_digest raises on non-ASCII text (that was a 500)
        given = token.strip().encode("utf-8", "surrogateescape")
        return scheme.lower() == "bearer" and secrets.compare_digest(
            given, self.api_key.encode("utf-8")
        )

    async def authorized(self, request: Request) -> None:
        if not self.key_ok(request.headers.get("authorization", "")):
            raise WRONG_KEY

    def steering_for(self, body: Any) -> AppliedSteering:
        spec = body.steering
        try:
            if spec is None:
                return self.catalog.resolve(None)
            if spec.positions != "all":
                raise SteeringError(
                    "per-request steering acts on all positions; leave out steering.positions",
                    "steering.positions",
                )
            return self.catalog.resolve(spec.traits, spec.method, spec.layers)
        except SteeringError as exc:
            raise ApiError(400, str(exc), param=exc.param, code="invalid_steering") from None

    def budget(self, body: SamplingRequest, prompt_ids: Sequence[int]) -> int:
        """The ``max_tokens`` to decode: the request's, checked against the cap and the
        room the prompt leaves in the context, or as much as both allow."""
        if not prompt_ids:
            raise ApiError(400, "the prompt is empty", param="prompt", code="empty_prompt")
        context, cap = self.context, self.max_tokens_cap
        room = context - len(prompt_ids)
        if room < 1:
            raise ApiError(
                400,
                f"the prompt has {len(prompt_ids)} tokens but this model's context is {context} "
                "tokens; shorten it",
                param="messages",
                code="context_length_exceeded",
            )
        requested = body.requested_tokens()
        if requested is not None and requested > cap:
            raise ApiError(
                400,
                f"max_tokens {requested} is above this server's cap of {cap}",
                param="max_tokens",
                code="max_tokens_exceeded",
            )
        if requested is not None and requested > room:
            raise ApiError(
                400,
                f"the prompt ({len(prompt_ids)} tokens) plus max_tokens ({requested}) exceeds "
                f"this model's context of {context} tokens; lower max_tokens to at most {room}",
                param="max_tokens",
                code="context_length_exceeded",
            )
        return requested if requested is not None else min(cap, room)

    async def generate(
        self,
        body: SamplingRequest,
        prompt_ids: list[int],
        chat: bool,
        request: Request | None = None,
    ) -> Response:
        """Queue one decode and answer with the finished completion, or stream it."""
        steering = self.steering_for(body)
        max_tokens = self.budget(body, prompt_ids)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()

        def emit(event: Event) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        job = DecodeJob(
            prompt_ids=prompt_ids,
            max_tokens=max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            seed=body.seed,
            stop=body.stops(),
            ignore_eos=body.ignore_eos,
            steering=steering,
            emit=emit,
        )
        _queued(lambda: self.engine.submit(job))
        deadline = loop.time() + self.request_timeout
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        headers = {STEERING_HEADER: steering.header()}
        echo = steering.describe()
        if body.stream:
            with_usage = body.stream_options is not None and body.stream_options.include_usage
            stream = _stream(
                job,
                events,
                deadline,
                ident,
                created,
                self.model_name,
                chat,
                echo,
                with_usage,
                len(prompt_ids),
            )
            return StreamingResponse(stream, media_type="text/event-stream", headers=headers)
        await self._finished(job, events, deadline, request)
        content = {
            "id": ident,
            "object": "chat.completion" if chat else "text_completion",
            "created": created,
            "model": self.model_name,
            "choices": [_choice(job, chat)],
            "usage": _usage(len(prompt_ids), job),
            "steering": echo,
        }
        return JSONResponse(content, headers=headers)

    async def _finished(
        self,
        job: DecodeJob,
        events: asyncio.Queue[Event],
        deadline: float,
        request: Request | None = None,
    ) -> None:
        """Wait for ``job``'s last event; a timeout cancels it (504), an error is a 500,
        and a client that leaves cancels it (its row leaves the batch at the next step,
        a queued job its queue slot), instead of decoding an answer nobody reads."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                wait = min(DISCONNECT_POLL, deadline - loop.time())
                try:
                    event = await asyncio.wait_for(events.get(), timeout=max(wait, 0.0))
                except (asyncio.TimeoutError, TimeoutError):
                    if loop.time() >= deadline:
                        raise
                    if request is not None and await request.is_disconnected():
                        job.cancelled.set()
                        raise ApiError(
                            499, "the client went away", code="client_closed_request"
                        ) from None
                    continue
                if event.kind != "delta":
                    break
        except (asyncio.TimeoutError, TimeoutError):
            job.cancelled.set()
            raise ApiError(
                504,
                f"the request did not finish within {self.request_timeout:g} s",
                "timeout_error",
                code="timeout",
            ) from None
        if event.kind == "error":
            raise ApiError(500, event.text, "server_error", code="generation_failed")

    async def health(self) -> JSONResponse:
        engine = self.engine
        stats = engine.stats
        body = {
            "status": "ok" if engine.alive else "engine_stopped",
            "model": self.model_name,
            "engine": getattr(engine, "name", "builtin"),
            "waiting": engine.waiting,
            "batches": stats.batches,
            "requests": stats.rows,
            "largest_batch": stats.largest_batch,
            "joined_running_batch": stats.joined,
            "generated_tokens": stats.tokens,
            "cancelled": stats.cancelled,
            "widest_batch_columns": stats.widest,
            "decode_steps": stats.steps,
            "decoded_rows": stats.row_steps,
            "decode_seconds": round(stats.step_seconds, 6),
            "last_error": stats.last_error,
        }
        return JSONResponse(body, status_code=200 if engine.alive else 503)

    async def models(self) -> dict[str, Any]:
        model = {
            "id": self.model_name,
            "object": "model",
            "created": self.started,
            "owned_by": "traitlens",
        }
        return {"object": "list", "data": [model]}

    async def traits(self) -> dict[str, Any]:
        return self.catalog.describe()

    def check_length(self, param: str, *texts: str) -> None:
        """Refuse text that cannot fit the context before spending time tokenizing it."""
        total = sum(len(t) for t in texts)
        if total > self.max_chars:
            raise ApiError(
                400,
                f"{param} has {total} characters; no text over {self.max_chars} characters "
                f"fits this model's context of {self.context} tokens",
                param=param,
                code="context_length_exceeded",
            )

    async def tokenized(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker thread, under the request tokenizer's lock."""

        def run() -> T:
            with self.text_lock:
                return fn(*args)

        return await asyncio.to_thread(run)

    async def chat_completions(self, body: ChatRequest, request: Request) -> Response:
        self.check_length("messages", *(m.text() for m in body.messages))
        prompt_ids = await self.tokenized(self.chat_ids, body.messages)
        return await self.generate(body, prompt_ids, chat=True, request=request)

    def chat_ids(self, messages: Any) -> list[int]:
        """The conversation's token ids; a conversation the chat template refuses (e.g.
        roles that do not alternate) is the client's error (400), not the server's."""
        from jinja2 import TemplateError

        try:
            return chat_prompt_ids(self.texts, messages)
        except TemplateError as exc:
            raise ApiError(
                400,
                f"the model's chat template refused this conversation: {exc}",
                param="messages",
                code="invalid_conversation",
            ) from None

    async def completions(self, body: CompletionRequest, request: Request) -> Response:
        self.check_length("prompt", body.text())
        prompt_ids = await self.tokenized(completion_prompt_ids, self.texts, body.text())
        return await self.generate(body, prompt_ids, chat=False, request=request)

    async def readout(self, body: ReadoutRequest) -> dict[str, Any]:
        """Trait readouts of an answer, computed on the engine's thread."""
        if not body.messages and body.prompt is None:
            raise ApiError(400, "send messages or prompt with the answer", param="messages")
        texts = [m.text() for m in body.messages or ()] + [str(body.prompt or "")]
        self.check_length("answer", body.answer, *texts)

        def tokenize() -> tuple[list[int], list[int]]:
            if body.messages:
                prompt_ids = self.chat_ids(body.messages)
            else:
                prompt_ids = completion_prompt_ids(self.texts, str(body.prompt))
            # the answer is text a client supplied: special-token text in it stays text
            answer = self.texts.tokenizer(
                body.answer, add_special_tokens=False, split_special_tokens=True
            )
            return prompt_ids, list(answer["input_ids"])

        prompt_ids, answer_ids = await self.tokenized(tokenize)
        if len(prompt_ids) + len(answer_ids) > self.context:
            raise ApiError(
                400,
                f"prompt and answer ({len(prompt_ids) + len(answer_ids)} tokens) exceed this "
                f"model's context of {self.context} tokens",
                param="answer",
                code="context_length_exceeded",
            )
        catalog = self.catalog

        def work(model: TraitModel) -> dict[str, Any]:
            return trait_readout(model, catalog, prompt_ids, answer_ids, body.method, body.layers)

        future = _queued(lambda: self.engine.call(work))
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout=self.request_timeout)
        except SteeringError as exc:
            raise ApiError(400, str(exc), param=exc.param, code="invalid_readout") from None
        except (asyncio.TimeoutError, TimeoutError):
            future.cancel()
            raise ApiError(504, "the readout timed out", "timeout_error", code="timeout") from None

    async def playground(self) -> HTMLResponse:
        page, policy = _playground_page()
        return HTMLResponse(page, headers={"Content-Security-Policy": policy})


@functools.cache
def _playground_page() -> tuple[str, str]:
    """The shipped page and its policy, read and hashed once per process."""
    page = resources.files("traitlens.serve").joinpath("static/index.html").read_text("utf-8")
    return page, playground_csp(page)


def playground_csp(page: str) -> str:
    """A Content-Security-Policy that lets the page run only its own inline script and
    style (by hash) and talk only to this server: an injected tag or handler does not run,
    and nothing is sent elsewhere."""
    import base64
    import hashlib
    import re

    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.S)
        return " ".join(
            "'sha256-" + base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() + "'"
            for b in blocks
        )

    return (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


def _choice(job: DecodeJob, chat: bool) -> dict[str, Any]:
    """The one choice of a finished, non-streamed completion."""
    reason = job.finish_reason
    if chat:
        message = {"role": "assistant", "content": job.text}
        return {"index": 0, "message": message, "logprobs": None, "finish_reason": reason}
    return {"index": 0, "text": job.text, "logprobs": None, "finish_reason": reason}


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


async def _stream(
    job: DecodeJob,
    events: asyncio.Queue[Event],
    deadline: float,
    ident: str,
    created: int,
    model: str,
    chat: bool,
    steering: dict[str, Any] | None,
    include_usage: bool = False,
    prompt_tokens: int = 0,
) -> AsyncIterator[bytes]:
    """Server-sent events in OpenAI's chunk format, ending with ``data: [DONE]`` (with
    ``stream_options.include_usage``, a last chunk with no choices carries the usage)."""
    loop = asyncio.get_running_loop()
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(text: str | None, reason: str | None, first: bool = False) -> dict[str, Any]:
        if chat:
            delta: dict[str, Any] = {} if text is None else {"content": text}
            if first:
                delta["role"] = "assistant"
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": reason}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": reason}
        return {
            "id": ident,
            "object": kind,
            "created": created,
            "model": model,
            "choices": [choice],
            "steering": steering,
        }

    try:
        if chat:
            yield _sse(chunk("", None, first=True))
        while True:
            try:
                event = await asyncio.wait_for(events.get(), timeout=deadline - loop.time())
            except (asyncio.TimeoutError, TimeoutError):
                job.cancelled.set()
                yield _sse(error_body("the request timed out", "timeout_error", code="timeout"))
                break
            if event.kind == "delta":
                yield _sse(chunk(event.text, None))
            elif event.kind == "error":
                yield _sse(error_body(event.text, "server_error", code="generation_failed"))
                break
            else:
                yield _sse(chunk(None, job.finish_reason))
                if include_usage:
                    final = {**chunk(None, None), "choices": []}
                    final["usage"] = _usage(prompt_tokens, job)
                    yield _sse(final)
                break
        yield _sse("[DONE]")
    finally:
        # the client went away (or we are done): stop decoding a row nobody reads
        job.cancelled.set()
