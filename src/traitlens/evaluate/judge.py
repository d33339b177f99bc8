"""An optional external judge: any OpenAI-compatible chat endpoint rates answers 1–5.

Uses only ``urllib.request`` (no new dependency). The endpoint is
``{url}/chat/completions`` unless the URL already ends in ``/chat/completions``;
the body is ``{"model", "messages", "temperature": 0, "max_tokens"}``.

Transient failures (HTTP 429/5xx, a timeout, a dropped connection) are retried
``retries`` times with exponential backoff, honouring ``Retry-After``; a refused
connection or a 4xx is a configuration problem and fails at once. Requests can run
``workers`` at a time (a hosted judge is latency-bound, not compute-bound).

Failure policy (why two kinds): problems with the *endpoint* — unreachable,
timeout, HTTP error, a reply that is not a chat completion — affect every item
and raise :class:`JudgeError` at once, naming the URL and the fix. A well-formed
reply whose *text* holds no rating 1–5 is one rambling answer from the judge
model; it becomes NaN with a :class:`JudgeReplyWarning`, so one bad reply does
not throw away a long run, and NaNs stay visible in every table.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import re
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from traitlens.data import TRAIT_NAMES, TRAITS, load_traits, parse_traits
from traitlens.errors import DataError, TraitlensError

_RATING = re.compile(r"(?<!\d)[1-5](?!\d)")

RUBRIC = (
    "You rate how strongly a piece of text expresses one personality trait.\n"
    "Trait: {name}. High {name}: {high} Low {name}: {low}\n"
    "Rate the ANSWER on a scale from 1 to 5: 1 = very low {name}, 2 = low, "
    "3 = neutral or not apparent, 4 = high, 5 = very high {name}.\n"
    "Reply with the single number only."
)


class JudgeError(TraitlensError):
    """The judge endpoint failed or replied with something that is not a chat completion."""

    transient: bool = False  # a retry may succeed (HTTP 429/5xx, timeout, dropped link)
    retry_after: float | None = None


class JudgeUnavailableError(JudgeError):
    """The judge endpoint could not be reached (connection refused, DNS, timeout)."""


_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


def _retryable(error: JudgeError, wait: float | None = None) -> JudgeError:
    """Mark ``error`` as worth retrying (after ``wait`` s if the server said so)."""
    error.retry_after = wait
    error.transient = True
    return error


def _retry_after(headers: Any) -> float | None:
    try:
        value = float(headers.get("Retry-After")) if headers is not None else None
    except (TypeError, ValueError):
        return None  # absent, or an HTTP date: use our own backoff
    return None if value is None else min(max(value, 0.0), 30.0)


def _checked_url(url: str) -> str:
    """``url`` stripped of a trailing slash, or JudgeError saying what is malformed."""
    from urllib.parse import urlsplit

    text = url.strip()
    example = "e.g. http://localhost:8000/v1"
    if not text.lower().startswith(("http://", "https://")):
        raise JudgeError(f"judge URL {url!r} must start with http:// or https:// ({example})")
    text = text.rstrip("/")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise JudgeError(f"judge URL {url!r} is malformed ({exc}); {example}") from None
    if not parts.hostname:
        raise JudgeError(f"judge URL {url!r} names no host; {example}")
    if port == 0:
        raise JudgeError(f"judge URL {url!r} has port 0; {example}")
    return text


def check_judge_url(url: str, timeout: float = 3.0) -> None:
    """Fail now, before any scoring, when ``url`` is malformed or nothing listens there
    (a TCP connect to its host and port; no request is sent)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(_checked_url(url))
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme.lower())
    if proxy and not urllib.request.proxy_bypass(host):
        # urllib will go through this proxy, so that is what must answer
        via = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        try:
            host, port = via.hostname or host, via.port or 80
        except ValueError:
            return  # a proxy setting urllib itself will complain about
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise JudgeUnavailableError(
            f"cannot reach the judge endpoint {url} ({host}:{port}: {reason}); start the "
            "server or fix --judge-url — an OpenAI-compatible base URL such as "
            "http://localhost:8000/v1"
        ) from None


class JudgeReplyWarning(UserWarning):
    """A judge reply held no rating 1–5; the score is NaN."""


@lru_cache(maxsize=1)
def _trait_descriptions() -> dict[str, tuple[str, str]]:
    return {info.code: (info.description_high, info.description_low) for info in load_traits()}


def rubric(trait: str) -> str:
    """The system prompt asking for a 1–5 rating of ``trait`` (code or name)."""
    (code,) = parse_traits([trait])
    high, low = _trait_descriptions()[code]
    return RUBRIC.format(name=TRAIT_NAMES[code], high=high, low=low)


def parse_rating(text: str) -> float:
    """The first stand-alone digit 1–5 in ``text`` (so "10" or "2024" do not count); NaN if none."""
    match = _RATING.search(text)
    return float(match.group()) if match else math.nan


@dataclass(frozen=True)
class HttpJudge:
    """An OpenAI-compatible chat endpoint used as a trait rater.

    ``url``: a base URL (``http://localhost:8000/v1``) or the full
    ``.../chat/completions`` URL. ``api_key`` is sent as a Bearer token when given
    (default: ``$TRAITLENS_JUDGE_API_KEY``, so the CLI's ``--judge-url`` can reach a
    server started with ``--api-key``).
    """

    url: str
    model: str = "default"
    timeout: float = 30.0
    api_key: str | None = field(default_factory=lambda: os.environ.get("TRAITLENS_JUDGE_API_KEY"))
    max_tokens: int = 8
    retries: int = 2
    backoff: float = 0.5

    @property
    def endpoint(self) -> str:
        url = _checked_url(self.url)
        return url if url.endswith("/chat/completions") else f"{url}/chat/completions"

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST with retries: transient failures wait ``backoff·2^k`` s (or the
        server's ``Retry-After``, capped at 30 s) and try again."""
        if self.retries < 0 or self.backoff < 0:
            raise JudgeError(f"retries ({self.retries}) and backoff ({self.backoff}) must be ≥ 0")
        for attempt in range(self.retries + 1):
            try:
                return self._post_once(body)
            except JudgeError as exc:
                if not exc.transient or attempt == self.retries:
                    raise
                wait = exc.retry_after
                time.sleep(wait if wait is not None else self.backoff * 2**attempt)
        raise AssertionError("unreachable")  # the loop returns or raises

    def _post_once(self, body: dict[str, Any]) -> dict[str, Any]:
        endpoint = self.endpoint
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(
            endpoint, data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", "replace") if exc.fp else ""
            hint = {
                401: "check the API key",
                403: "check the API key",
                404: "check the URL path (it must reach .../chat/completions)",
            }.get(exc.code, "check the server's log")
            error = JudgeError(
                f"judge endpoint {endpoint} answered HTTP {exc.code} {exc.reason}: "
                f"{detail.strip()!r}; {hint}"
                + (f" (after {self.retries} retries)" if exc.code in _RETRY_STATUS else "")
            )
            if exc.code in _RETRY_STATUS:
                raise _retryable(error, _retry_after(exc.headers)) from exc
            raise error from exc
        except (urllib.error.URLError, TimeoutError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, TimeoutError) or isinstance(exc, TimeoutError):
                raise _retryable(
                    JudgeUnavailableError(
                        f"judge endpoint {endpoint} did not answer within {self.timeout:g} s "
                        f"({self.retries + 1} attempts); check the server is up and not "
                        "overloaded, or raise the timeout"
                    )
                ) from exc
            unreachable = JudgeUnavailableError(
                f"cannot reach the judge endpoint {endpoint} ({reason}); start the server or "
                "fix the URL — it should be an OpenAI-compatible base URL such as "
                "http://localhost:8000/v1 (or the full .../chat/completions URL)"
            )
            if isinstance(exc, urllib.error.URLError):
                raise unreachable from exc  # refused or unknown host: retrying cannot help
            raise _retryable(unreachable) from exc  # a dropped connection: try again
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise JudgeError(
                f"judge endpoint {endpoint} did not reply with JSON ({raw[:120]!r}); "
                "is it an OpenAI-compatible chat completions endpoint?"
            ) from exc
        if not isinstance(data, dict):
            raise JudgeError(
                f"judge endpoint {endpoint} replied with {type(data).__name__}, "
                "not a chat completion object"
            )
        return data

    def complete(self, system: str, user: str) -> str:
        """One chat completion; returns the reply text."""
        body = {
            "model": self.model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "temperature": 0,
            "max_tokens": self.max_tokens,
        }
        data = self._post(body)
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise JudgeError(
                f"judge endpoint {self.endpoint} replied without choices[0].message.content "
                f"({json.dumps(data)[:200]}); is it an OpenAI-compatible chat endpoint?"
            ) from exc
        return "" if content is None else str(content)

    def rate(self, trait: str, answer: str, question: str | None = None) -> float:
        """Rating 1–5 of how strongly ``answer`` expresses ``trait``; NaN (with a
        :class:`JudgeReplyWarning`) if the reply holds no rating."""
        user = f"QUESTION: {question}\nANSWER: {answer}" if question else f"ANSWER: {answer}"
        reply = self.complete(rubric(trait), user)
        rating = parse_rating(reply)
        if math.isnan(rating):
            warnings.warn(
                f"judge {self.endpoint} gave no rating 1-5 for trait {trait} (reply: "
                f"{reply[:80]!r}); scoring it NaN",
                JudgeReplyWarning,
                stacklevel=2,
            )
        return rating


def judge_ratings(
    judge: HttpJudge,
    answers: Sequence[str],
    *,
    traits: Sequence[str] = TRAITS,
    questions: Sequence[str | None] | None = None,
    workers: int = 4,
) -> list[list[float]]:
    """``[n_answers][n_traits]`` judge ratings (one request per answer and trait),
    ``workers`` requests in flight at a time; the result keeps the input order and
    the first endpoint error stops the run."""
    if not answers:
        raise DataError("no answers to judge")
    if questions is not None and len(questions) != len(answers):
        raise DataError(f"got {len(questions)} questions for {len(answers)} answers")
    if workers < 1:
        raise DataError(f"workers must be ≥ 1, got {workers}")
    codes = parse_traits(traits)
    jobs = [
        (code, answer, None if questions is None else questions[i])
        for i, answer in enumerate(answers)
        for code in codes
    ]
    if workers == 1:
        flat = [judge.rate(*job) for job in jobs]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            flat = list(pool.map(lambda job: judge.rate(*job), jobs))
    n = len(codes)
    return [flat[i * n : (i + 1) * n] for i in range(len(answers))]
