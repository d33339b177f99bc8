"""Chat formatting that knows which *tokens* hold the persona, the question and the answer.

Probes must not be able to read a trait off the persona's own words, so every
formatted prompt carries token spans for its parts; capture pools over the span
it is asked for (the question by default) and never over the instruction unless
asked. Three formats, chosen per model and reported as ``mode``:

- ``template``: the model's own chat template, with a system role;
- ``template-merged-system``: the template refuses a system role (e.g. Gemma 2),
  so the persona is prepended to the user turn;
- ``plain``: base models with no template get ``{system}\\n\\nQuestion: ...\\nAnswer:``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SPANS = ("question", "answer", "system", "prompt_end", "all")


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
        if self.mode == "plain":
            head = f"{system}\n\n" if system else ""
            text = f"{head}Question: {user}\nAnswer:"
            return text + (f" {assistant}" if assistant is not None else "")
        messages: list[dict[str, str]] = []
        if system and self.mode == "template":
            messages.append({"role": "system", "content": system})
            messages.append({"role": "user", "content": user})
        elif system:
            messages.append({"role": "user", "content": f"{system}\n\n{user}"})
        else:
            messages.append({"role": "user", "content": user})
        if assistant is None:
            rendered = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
            return str(rendered)
        prompt = self.render(system, user)
        return prompt + assistant

    def format(
        self, system: str | None, user: str, assistant: str | None = None
    ) -> FormattedPrompt:
        """Render and tokenize, returning token spans for each part.

        The answer is appended verbatim after the generation prompt (rather than
        re-rendered as a finished assistant turn) so its tokens are exactly the
        ones the model would have produced next, with no end-of-turn marker.
        """
        text = self.render(system, user, assistant)
        char_spans: dict[str, tuple[int, int]] = {}
        cursor = 0
        if system:
            start = text.find(system)
            char_spans["system"] = (start, start + len(system))
            cursor = start + len(system)
        prompt_end_char = len(text) if assistant is None else len(text) - len(assistant)
        # search from the right: a template may inject a default system prompt
        # that could contain the question's words
        start = text.rfind(user, cursor, prompt_end_char)
        if start < 0:
            raise ValueError(f"question text not found in the rendered prompt: {user[:60]!r}")
        char_spans["question"] = (start, start + len(user))
        char_spans["prompt_end"] = (start + len(user), prompt_end_char)
        if assistant is not None:
            char_spans["answer"] = (prompt_end_char, len(text))
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
