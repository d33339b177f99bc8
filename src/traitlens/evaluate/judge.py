"""An optional external judge: any OpenAI-compatible chat endpoint rates answers 1–5.

Uses only ``urllib.request`` (no new dependency). The endpoint is
``{url}/chat/completions`` unless the URL already ends in ``/chat/completions``;
the body is ``{"model", "messages", "temperature": 0, "max_tokens"}``.

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
import re
import urllib.error
import urllib.request
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
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


class JudgeUnavailableError(JudgeError):
    """The judge endpoint could not be reached (connection refused, DNS, timeout)."""


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
    ``.../chat/completions`` URL. ``api_key`` is sent as a Bearer token when given.
    """

    url: str
    model: str = "default"
    timeout: float = 30.0
    api_key: str | None = None
    max_tokens: int = 8

    @property
    def endpoint(self) -> str:
        url = self.url.strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise JudgeError(
                f"judge URL {self.url!r} must start with http:// or https:// "
                "(e.g. http://localhost:8000/v1)"
            )
        return url if url.endswith("/chat/completions") else f"{url}/chat/completions"

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
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
            raise JudgeError(
                f"judge endpoint {endpoint} answered HTTP {exc.code} {exc.reason}: "
                f"{detail.strip()!r}; {hint}"
            ) from exc
        except (urllib.error.URLError, TimeoutError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, TimeoutError) or isinstance(exc, TimeoutError):
                raise JudgeUnavailableError(
                    f"judge endpoint {endpoint} did not answer within {self.timeout:g} s; "
                    "check the server is up and not overloaded, or raise the timeout"
                ) from exc
            raise JudgeUnavailableError(
                f"cannot reach the judge endpoint {endpoint} ({reason}); start the server or "
                "fix the URL — it should be an OpenAI-compatible base URL such as "
                "http://localhost:8000/v1 (or the full .../chat/completions URL)"
            ) from exc
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
) -> list[list[float]]:
    """``[n_answers][n_traits]`` judge ratings (one request per answer and trait)."""
    if not answers:
        raise DataError("no answers to judge")
    if questions is not None and len(questions) != len(answers):
        raise DataError(f"got {len(questions)} questions for {len(answers)} answers")
    codes = parse_traits(traits)
    return [
        [judge.rate(code, answer, None if questions is None else questions[i]) for code in codes]
        for i, answer in enumerate(answers)
    ]
