"""Turning an OpenAI ``messages`` list (or a raw ``prompt``) into the model's token ids,
with the same chat formatting steering vectors were built with
(:class:`traitlens.models.chat.ChatFormatter`)."""

from __future__ import annotations

from collections.abc import Sequence

from traitlens.models.loading import TraitModel
from traitlens.serve.schema import Message

SYSTEM_ROLES = ("system", "developer")


def chat_prompt_ids(tm: TraitModel, messages: Sequence[Message]) -> list[int]:
    """Token ids of a conversation, ending where the assistant's next turn begins.

    A single user turn (with an optional system prompt) goes through
    ``tm.format`` exactly as capture and steering format their prompts; longer
    conversations go through the model's chat template (system merged into the
    first user turn where the template refuses a system role), or the plain
    ``Question:/Answer:`` layout for base models.
    """
    system = "\n\n".join(m.text() for m in messages if m.role in SYSTEM_ROLES)
    turns = [m for m in messages if m.role not in SYSTEM_ROLES]
    if not turns:
        turns = [Message(role="user", content="")]
    if len(turns) == 1 and turns[0].role == "user":
        return list(tm.format(system or None, turns[0].text()).input_ids)
    mode = tm.formatter.mode
    if mode == "plain":
        text = f"{system}\n\n" if system else ""
        for turn in turns:
            if turn.role == "user":
                text += f"Question: {turn.text()}\nAnswer:"
            else:
                text += f" {turn.text()}\n"
        if turns[-1].role == "assistant":
            text += "Answer:"
        return list(tm.tokenizer(text, add_special_tokens=True)["input_ids"])
    chat = [{"role": m.role, "content": m.text()} for m in turns]
    if system and mode == "template":
        chat.insert(0, {"role": "system", "content": system})
    elif system:
        first_user = next((i for i, m in enumerate(chat) if m["role"] == "user"), None)
        if first_user is None:
            chat.insert(0, {"role": "user", "content": system})
        else:
            chat[first_user]["content"] = f"{system}\n\n{chat[first_user]['content']}"
    text = tm.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    return list(tm.tokenizer(str(text), add_special_tokens=False)["input_ids"])


def completion_prompt_ids(tm: TraitModel, prompt: str) -> list[int]:
    """Token ids of a raw completion prompt (the tokenizer's own special tokens added)."""
    return list(tm.tokenizer(prompt, add_special_tokens=True)["input_ids"])


def context_length(tm: TraitModel) -> int:
    """The model's context window (positions it was configured for)."""
    config = getattr(tm.model.config, "text_config", None) or tm.model.config
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048
