"""Chat formatting that knows which *tokens* hold the persona, the question and the answer.

Probes must not be able to read a trait off the persona's own words, so every
formatted prompt carries token spans for its parts; capture pools over the span
it is asked for (the question by default) and never over the instruction unless
asked. Three formats, chosen per model and reported as ``mode``:

- ``template``: the model's own chat template, with a system role;
- ``template-merged-system``: the template refuses a system role (e.g. Gemma 2),
  so the persona is prepended to the (first) user turn;
- ``plain``: base models with no template get ``{system}\\n\\nQuestion: ...\\nAnswer:``,
  earlier exchanges of a conversation as ``Question: ...\\nAnswer: ...\\n\\n`` before it.

A single exchange is a one-turn conversation: :meth:`ChatFormatter.format` and
:meth:`ChatFormatter.format_conversation` render and locate spans the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from traitlens.errors import DataError

SPANS = ("question", "answer", "system", "prompt_end", "all")

Turn = tuple[str, str | None]
"""One exchange of a conversation: the user's text and the assistant's answer (or None)."""


@dataclass(frozen=True)
class FormattedPrompt:
    """Token ids of one rendered chat plus ``spans[name] = (start, end)`` token ranges."""

    text: str
    input_ids: list[int]
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)

    def span(self, name: str) -> tuple[int, int]:
        if name not in self.spans:
            hint = " (did you pass answers?)" if name == "answer" else ""
            raise KeyError(f"span {name!r} is not present in this prompt{hint}")
        return self.spans[name]


def _check_turns(turns: Sequence[Turn]) -> None:
    if not turns:
        raise DataError("a conversation needs at least one (user, answer) turn")
    missing = [i + 1 for i, (_, answer) in enumerate(turns[:-1]) if answer is None]
    if missing:
        raise DataError(
            f"turn(s) {missing} have no assistant answer; only the last turn may be "
            "unanswered (the one the model is asked to answer)"
        )


class ChatFormatter:
    """Renders (system, user, assistant) turns and maps their characters to tokens."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.mode = self._detect_mode()

    def _detect_mode(self) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            return "plain"
        try:
            self.tokenizer.apply_chat_template(
                [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
                tokenize=False,
                add_generation_prompt=True,
            )
        except Exception:  # jinja raises a TemplateError subclass: "System role not supported"
            return "template-merged-system"
        return "template"

    def render(self, system: str | None, user: str, assistant: str | None = None) -> str:
        """The prompt text; with ``assistant`` the answer is appended as the model's turn."""
        return self.render_conversation([(user, assistant)], system)

    def render_conversation(self, turns: Sequence[Turn], system: str | None = None) -> str:
        """The conversation text that asks for the last turn's answer, with that answer
        (if given) appended verbatim after the generation prompt.

        Earlier answers are rendered as finished assistant turns of the template (in
        ``plain`` mode as ``Answer: ...`` lines).
        """
        _check_turns(turns)
        *history, (user, assistant) = turns
        if self.mode == "plain":
            head = f"{system}\n\n" if system else ""
            head += "".join(f"Question: {u}\nAnswer: {a}\n\n" for u, a in history)
            text = f"{head}Question: {user}\nAnswer:"
            return text + (f" {assistant}" if assistant is not None else "")
        messages: list[dict[str, str]] = []
        if system and self.mode == "template":
            messages.append({"role": "system", "content": system})
        for u, a in history:
            messages += [{"role": "user", "content": u}, {"role": "assistant", "content": str(a)}]
        messages.append({"role": "user", "content": user})
        if system and self.mode == "template-merged-system":
            messages[0] = {"role": "user", "content": f"{system}\n\n{messages[0]['content']}"}
        rendered = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return str(rendered) + (assistant if assistant is not None else "")

    def format(
        self,
        system: str | None,
        user: str,
        assistant: str | None = None,
        *,
        marks: dict[str, str] | None = None,
    ) -> FormattedPrompt:
        """Render and tokenize, returning token spans for each part.

        ``marks`` names extra spans *inside the user turn*: ``{"item": statement}``
        adds span ``item`` over the statement's tokens only, so a capture can pool a
        questionnaire item without the instruction wrapped around it.

        The answer is appended verbatim after the generation prompt (rather than
        re-rendered as a finished assistant turn) so its tokens are exactly the
        ones the model would have produced next, with no end-of-turn marker.
        """
        return self.format_conversation([(user, assistant)], system, marks=marks)

    def format_conversation(
        self,
        turns: Sequence[Turn],
        system: str | None = None,
        *,
        marks: dict[str, str] | None = None,
    ) -> FormattedPrompt:
        """A multi-turn conversation, tokenized, with spans on its *last* exchange.

        ``turns`` are ``(user, answer)`` pairs in order; only the last answer may be
        None (the prompt then asks the model for it). ``question`` and ``answer``
        cover the last user turn and the last answer, so a pooled capture reads what
        the model said at this point of the conversation with everything before it
        in context; ``system``, ``prompt_end``, ``all`` and ``marks`` are as in
        :meth:`format`. A one-turn conversation is exactly :meth:`format`.
        """
        text = self.render_conversation(turns, system)
        user, assistant = turns[-1]
        char_spans: dict[str, tuple[int, int]] = {}
        cursor = 0
        if system:
            start = text.find(system)
            char_spans["system"] = (start, start + len(system))
            cursor = start + len(system)
        prompt_end_char = len(text) if assistant is None else len(text) - len(assistant)
        # search from the right: a template may inject a default system prompt
        # that could contain the question's words, and earlier turns may repeat them
        start = text.rfind(user, cursor, prompt_end_char)
        if start < 0:
            raise ValueError(f"question text not found in the rendered prompt: {user[:60]!r}")
        char_spans["question"] = (start, start + len(user))
        char_spans["prompt_end"] = (start + len(user), prompt_end_char)
        if assistant is not None:
            char_spans["answer"] = (prompt_end_char, len(text))
        for name, part in (marks or {}).items():
            at = text.rfind(part, start, start + len(user))
            if at < 0 or not part:
                raise ValueError(f"marked span {name!r} not found in the user turn: {part[:60]!r}")
            char_spans[name] = (at, at + len(part))
        # chat templates already contain the BOS/special tokens; plain text does not
        add_special = self.mode == "plain"
        encoding = self.tokenizer(text, add_special_tokens=add_special, return_offsets_mapping=True)
        ids = list(encoding["input_ids"])
        offsets = [tuple(o) for o in encoding["offset_mapping"]]
        spans = {name: _token_span(offsets, a, b) for name, (a, b) in char_spans.items()}
        if "answer" in spans:  # a token straddling the boundary belongs to the answer
            start, end = spans["prompt_end"]
            spans["prompt_end"] = (start, min(end, spans["answer"][0]))
        spans["all"] = (0, len(ids))
        return FormattedPrompt(text=text, input_ids=ids, spans=spans)


def _token_span(offsets: list[tuple[int, ...]], start: int, end: int) -> tuple[int, int]:
    """Token range [first, last+1) of tokens whose characters overlap [start, end)."""
    inside = [i for i, (a, b) in enumerate(offsets) if b > start and a < end and b > a]
    if not inside:
        return (0, 0)
    return (inside[0], inside[-1] + 1)
