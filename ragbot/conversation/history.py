"""A conversation's history as the steps see it: validated user/assistant messages, trimmed to a token budget.

Saved conversations live in a store (``ragbot.storage``: a SQLite file or PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Sequence

from ragbot.errors import ConversationError
from ragbot.models.chat import Message
from ragbot.tokens import count_tokens, encoding


def validate_history(history: Sequence[Message]) -> None:
    """Roles must alternate user, assistant, user, ... (a finished history ends with the assistant)."""
    for i, message in enumerate(history):
        expected = "user" if i % 2 == 0 else "assistant"
        if message.role != expected:
            raise ConversationError(
                f"history message {i + 1} has role {message.role!r} but {expected!r} was expected: "
                "roles must alternate user/assistant, starting with the user"
            )
    if len(history) % 2:
        raise ConversationError("history ends with a user message that has no answer; drop it or answer it")


def as_messages(history: Sequence[Message] | Sequence[dict] | Sequence[tuple[str, str]]) -> list[Message]:
    """A caller's history as validated ``Message``s: ``Message``s, ``{"role", "content"}`` dicts or
    ``(role, content)`` pairs, user and assistant alternating."""
    if isinstance(history, (str, bytes)) or not isinstance(history, Sequence):
        raise ConversationError(
            f"the history must be a list of messages, got {type(history).__name__}; "
            'pass [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}, ...]'
        )
    for i, m in enumerate(history, 1):
        shapeless = isinstance(m, dict) and not {"role", "content"} <= m.keys()
        if shapeless or not isinstance(m, (Message, dict, tuple, list)):
            raise ConversationError(
                f"history item {i} is {type(m).__name__} {str(m)[:40]!r}; each item must be a "
                '{"role": ..., "content": ...} dict, a (role, content) pair or a Message'
            )
        if isinstance(m, (tuple, list)) and len(m) != 2:
            raise ConversationError(f"history item {i} has {len(m)} parts; a (role, content) pair has 2")
    messages = [m if isinstance(m, Message) else messages_from_pairs([m])[0] for m in history]
    validate_history(messages)
    return messages


def messages_from_pairs(pairs: Sequence[tuple[str, str]] | Sequence[dict[str, str]]) -> list[Message]:
    """Accept ``[{"role", "content"}]`` dicts or ``(role, content)`` pairs from callers."""
    out = []
    for item in pairs:
        role, content = (item["role"], item["content"]) if isinstance(item, dict) else item
        if role not in ("user", "assistant"):
            raise ConversationError(f"history role must be 'user' or 'assistant', got {role!r}")
        out.append(Message(role, str(content)))
    return out


def trim_history(history: Sequence[Message], budget: int) -> list[Message]:
    """The most recent whole turns whose messages fit in ``budget`` tokens (oldest dropped first)."""
    kept: list[Message] = []
    used = 0
    for i in range(len(history) - 2, -1, -2):
        pair = list(history[i : i + 2])
        cost = sum(count_tokens(m.content) + 4 for m in pair)
        if used + cost > budget:
            break
        kept[:0] = pair
        used += cost
    return kept


def recent_messages(history: Sequence[Message], budget: int, message_tokens: int) -> list[Message]:
    """The history the rewrite sees: the most recent messages first, each clipped to
    ``message_tokens``, while they fit in ``budget`` tokens (in their original order).

    The rewrite needs the latest mention of what a follow-up points back to; a long answer
    earlier in the conversation would otherwise crowd it out, or drown it for a small model.
    A message is clipped at its end: an answer names its subject in its first sentences.
    """
    kept: list[Message] = []
    used = 0
    for message in reversed(history):
        content = clip_tokens(message.content, message_tokens)
        cost = count_tokens(content) + 4
        if used + cost > budget:
            break
        kept.insert(0, Message(message.role, content))
        used += cost
    return kept


def clip_tokens(text: str, limit: int) -> str:
    """``text`` cut to its first ``limit`` tokens (marked with an ellipsis when cut)."""
    tokens = encoding().encode(text, disallowed_special=())
    if len(tokens) <= limit:
        return text
    return encoding().decode(tokens[:limit]).rstrip("\ufffd") + "…"


__all__ = [
    "clip_tokens",
    "as_messages",
    "messages_from_pairs",
    "recent_messages",
    "trim_history",
    "validate_history",
]
