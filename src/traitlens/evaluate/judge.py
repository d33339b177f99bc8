"""An optional external judge: any OpenAI-compatible chat endpoint rates answers 1–5.

The endpoint is reached through the ``openai`` client (``pip install
'traitlens[judge]'``), which owns what a hand-written HTTP loop gets wrong: retries of
transient failures (HTTP 408/409/429/5xx, timeouts, dropped connections) with
exponential backoff that honours ``Retry-After``, timeouts, proxies from the
environment and connection reuse across the ``workers`` threads. The URL is a base URL
(``http://localhost:8000/v1``) or the full ``.../chat/completions`` URL.

Failure policy (why two kinds): problems with the *endpoint* — unreachable,
timeout, HTTP error, a reply that is not a chat completion — affect every item
and raise :class:`JudgeError` at once, naming the URL and the fix. A well-formed
reply whose *text* holds no rating 1–5 is one rambling answer from the judge
model; it becomes NaN with a :class:`JudgeReplyWarning`, so one bad reply does
not throw away a long run, and NaNs stay visible in every table.
"""

from __future__ import annotations

import json
import math
import os
import re
import urllib.request
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
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


def _openai() -> Any:
    """The ``openai`` module, or JudgeError naming the extra that installs it."""
    try:
        import openai
    except ImportError:
        raise JudgeError(
            "the judge needs the openai client: pip install 'traitlens[judge]'"
        ) from None
    return openai


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
    """Fail now, before any scoring, when ``url`` is malformed, the openai client is not
    installed, or nothing listens there (a TCP connect to its host and port; no request
    is sent)."""
    _openai()
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


def _reply_text(raw: str, endpoint: str) -> str:
    """``choices[0].message.content`` of a chat completion's body, or JudgeError saying
    why the body is not one (read here, not by the client's models, so a server that is
    not a chat endpoint gets a message naming what it sent)."""
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        raise JudgeError(
            f"judge endpoint {endpoint} did not reply with JSON ({raw[:120]!r}); "
            "is it an OpenAI-compatible chat completions endpoint?"
        ) from None
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise JudgeError(
            f"judge endpoint {endpoint} replied without choices[0].message.content "
            f"({json.dumps(data)[:200]}); is it an OpenAI-compatible chat endpoint?"
        ) from None
    return "" if content is None else str(content)


@dataclass(frozen=True)
class HttpJudge:
    """An OpenAI-compatible chat endpoint used as a trait rater.

    ``url``: a base URL (``http://localhost:8000/v1``) or the full
    ``.../chat/completions`` URL. ``api_key`` is sent as a Bearer token (default:
    ``$TRAITLENS_JUDGE_API_KEY``, so the CLI's ``--judge-url`` can reach a server
    started with ``--api-key``). ``retries``: how many times the client retries a
    transient failure.
    """

    url: str
    model: str = "default"
    timeout: float = 30.0
    api_key: str | None = field(default_factory=lambda: os.environ.get("TRAITLENS_JUDGE_API_KEY"))
    max_tokens: int = 8
    retries: int = 2

    @property
    def endpoint(self) -> str:
        url = _checked_url(self.url)
        return url if url.endswith("/chat/completions") else f"{url}/chat/completions"

    @cached_property
    def _client(self) -> Any:
        """One client per judge, shared by the worker threads (it is thread-safe)."""
        if self.retries < 0:
            raise JudgeError(f"retries must be ≥ 0, got {self.retries}")
        return _openai().OpenAI(
            base_url=self.endpoint.removesuffix("/chat/completions"),
            # servers without auth ignore the token; "EMPTY" is vLLM's convention
            api_key=self.api_key or "EMPTY",
            timeout=self.timeout,
            max_retries=self.retries,
        )

    def complete(self, system: str, user: str) -> str:
        """One chat completion (temperature 0); returns the reply text."""
        openai = _openai()
        endpoint = self.endpoint
        client = self._client
        try:
            raw = client.chat.completions.with_raw_response.create(
                model=self.model,
                messages=[
                    {"role": "system", "content": system},
                    {"role": "user", "content": user},
                ],
                temperature=0,
                max_tokens=self.max_tokens,
            )
        except openai.APITimeoutError:
            raise JudgeUnavailableError(
                f"judge endpoint {endpoint} did not answer within {self.timeout:g} s "
                f"({self.retries + 1} attempts); check the server is up and not "
                "overloaded, or raise the timeout"
            ) from None
        except openai.APIConnectionError as exc:
            raise JudgeUnavailableError(
                f"cannot reach the judge endpoint {endpoint} ({exc.__cause__ or exc}); start "
                "the server or fix the URL — it should be an OpenAI-compatible base URL such "
                "as http://localhost:8000/v1 (or the full .../chat/completions URL)"
            ) from None
        except openai.APIStatusError as exc:
            hint = {
                401: "check the API key",
                403: "check the API key",
                404: "check the URL path (it must reach .../chat/completions)",
            }.get(exc.status_code, "check the server's log")
            retried = exc.status_code in (408, 409, 429) or exc.status_code >= 500
            raise JudgeError(
                f"judge endpoint {endpoint} answered HTTP {exc.status_code}: "
                f"{exc.response.text[:300].strip()!r}; {hint}"
                + (f" (after {self.retries} retries)" if retried else "")
            ) from None
        return _reply_text(raw.text, endpoint)

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
