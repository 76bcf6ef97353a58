"""Conversation memory: validated user/assistant history and token-budget trimming.

Saved conversations live in a store (``ragbot.conversation.store``: a SQLite file or PostgreSQL);
the names this module exported before there were two stores keep working below.
"""

from __future__ import annotations

from collections.abc import Sequence

from ragbot.conversation.store import RATINGS, Feedback, StoredTurn, make_feedback
from ragbot.conversation.store_sqlite import MIGRATIONS, store_error
from ragbot.conversation.store_sqlite import SQLiteStore as ConversationStore  # its name before PostgreSQL
from ragbot.errors import ConversationError
from ragbot.models.chat import Message
from ragbot.tokens import count_tokens


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


__all__ = [
    "MIGRATIONS",
    "RATINGS",
    "ConversationStore",
    "Feedback",
    "StoredTurn",
    "make_feedback",
    "messages_from_pairs",
    "store_error",
    "trim_history",
    "validate_history",
]
