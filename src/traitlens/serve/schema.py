"""Request bodies of the OpenAI-compatible endpoints (the subset traitlens serves), plus
the ``steering`` extension, validated with pydantic at the boundary."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from traitlens.steer.spec import SteeringSpec


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


UNSUPPORTED_FIELDS: dict[str, tuple[Any, ...]] = {
    # field: the values that ask for nothing (accepted, as clients often send them)
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "echo": (None, False),
    "best_of": (None, 1),
    "suffix": (None, ""),
    "response_format": (None, {"type": "text"}),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "function_call": (None, "none"),
    "logit_bias": (None, {}),
    "guided_json": (None,),
    "guided_regex": (None,),
    "guided_choice": (None,),
}
"""Request fields traitlens does not implement, and the values of each that are harmless."""


def check_text(value: str, what: str) -> str:
    """Refuse text that is not valid Unicode (a lone surrogate from a JSON ``\\ud800``
    escape): no tokenizer can encode it, and it used to fail deep inside one (a 500)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{what} is not valid Unicode (a lone surrogate at character {exc.start}); "
            "send UTF-8 text"
        ) from None
    return value


MAX_STOP_CHARS = 128
"""Longest stop string accepted."""


class SamplingRequest(BaseModel):
    # OpenAI clients send fields we do not use (user, logprobs, ...)
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stop: str | list[str] | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    # vLLM's extension: keep decoding past end-of-sequence (fixed-length benchmarks)
    ignore_eos: bool = False
    steering: SteeringSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        """Fields that would change the answer but that traitlens does not implement get a
        400 naming them (as vLLM does), instead of being silently ignored."""
        if isinstance(data, dict):
            used = [
                name
                for name, inert in UNSUPPORTED_FIELDS.items()
                if name in data and data[name] not in inert
            ]
            if used:
                raise ValueError(
                    f"unsupported field(s) {', '.join(used)}: traitlens serve does not "
                    "implement them; leave them out"
                )
        return data

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int) -> int:
        if value != 1:
            raise ValueError("only n=1 is supported; send several requests for several answers")
        return value

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes up to 4 non-empty strings")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            # each decoding step scans the text's tail as long as the longest stop
            raise ValueError(f"a stop string may be at most {MAX_STOP_CHARS} characters")
        for stop in stops:
            check_text(stop, "a stop string")
        return value

    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    def requested_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart]

    @field_validator("content")
    @classmethod
    def _unicode(cls, value: str | list[ContentPart]) -> str | list[ContentPart]:
        for text in [value] if isinstance(value, str) else [p.text for p in value]:
            check_text(text, "the message content")
        return value

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


MAX_MESSAGES = 1024
"""Most messages in one conversation (each costs template work before any token)."""


class ChatRequest(SamplingRequest):
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)


class CompletionRequest(SamplingRequest):
    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("send one prompt per request (a string or a list of one string)")
        check_text(value if isinstance(value, str) else value[0], "the prompt")
        return value

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class ReadoutRequest(BaseModel):
    """``POST /v1/traitlens/readout``: a conversation (or prompt) and the answer to read."""

    model_config = ConfigDict(extra="ignore")

    messages: list[Message] | None = Field(default=None, max_length=MAX_MESSAGES)
    prompt: str | None = None
    answer: str
    method: str | None = None
    layers: str | list[int] | None = None

    @field_validator("prompt", "answer")
    @classmethod
    def _unicode(cls, value: str | None) -> str | None:
        return value if value is None else check_text(value, "the text")


def error_body(
    message: str, kind: str = "invalid_request_error", param: str | None = None, code: Any = None
) -> dict[str, Any]:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
