"""Conversation memory: validated user/assistant history, token-budget trimming, SQLite storage.

A turn (the question and its answer) is written in one transaction when the answer is
complete, so a process killed between turns (or in the middle of one) never leaves a
half turn behind: the saved history always alternates user/assistant.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragbot.chat_models import Message
from ragbot.errors import ConversationError
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


_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    name TEXT PRIMARY KEY,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation TEXT NOT NULL REFERENCES conversations(name) ON DELETE CASCADE,
    turn INTEGER NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    content TEXT NOT NULL,
    meta TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages(conversation, id);
CREATE TABLE IF NOT EXISTS feedback (
    conversation TEXT NOT NULL REFERENCES conversations(name) ON DELETE CASCADE,
    turn INTEGER NOT NULL,
    rating TEXT NOT NULL CHECK (rating IN ('good', 'bad')),
    correction TEXT,
    created_at REAL NOT NULL,
    PRIMARY KEY (conversation, turn)
);
"""
RATINGS = ("good", "bad")


@dataclass(frozen=True)
class Feedback:
    """A user's verdict on one answer: good, or bad with an optional corrected answer."""

    rating: str
    correction: str | None = None

    def __post_init__(self) -> None:
        if self.rating not in RATINGS:
            raise ConversationError(f"unknown rating {self.rating!r}; use 'good' or 'bad'")
        if self.rating == "good" and self.correction:
            raise ConversationError("a correction goes with a 'bad' rating; mark the answer 'bad' to correct it")


def make_feedback(rating: str, correction: str | None = None) -> Feedback:
    """Feedback from loose input: the rating in any case, a blank correction taken as none."""
    correction = correction.strip() if isinstance(correction, str) else correction
    return Feedback(str(rating).strip().lower(), correction or None)


@dataclass(frozen=True)
class StoredTurn:
    """One saved turn: the question, the answer, what the turn used (``meta``) and its feedback."""

    conversation: str
    turn: int
    question: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)
    feedback: Feedback | None = None


class ConversationStore:
    """Conversations in one SQLite file (WAL mode; safe for several threads and processes)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._connect() as db:
            db.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA foreign_keys=ON")
            self._local.db = db
        return db

    def history(self, name: str) -> list[Message]:
        rows = (
            self._connect()
            .execute("SELECT role, content FROM messages WHERE conversation = ? ORDER BY id", (name,))
            .fetchall()
        )
        return [Message(role, content) for role, content in rows]

    def append_turn(self, name: str, question: str, answer: str, meta: dict[str, Any] | None = None) -> None:
        """Save one finished turn atomically."""
        now = time.time()
        db = self._connect()
        with db:  # one transaction: both messages or neither
            db.execute("INSERT OR IGNORE INTO conversations(name, created_at) VALUES (?, ?)", (name, now))
            (turn,) = db.execute("SELECT COUNT(*) / 2 FROM messages WHERE conversation = ?", (name,)).fetchone()
            db.execute(
                "INSERT INTO messages(conversation, turn, role, content, created_at) VALUES (?, ?, 'user', ?, ?)",
                (name, turn, question, now),
            )
            db.execute(
                "INSERT INTO messages(conversation, turn, role, content, meta, created_at) "
                "VALUES (?, ?, 'assistant', ?, ?, ?)",
                (name, turn, answer, json.dumps(meta or {}, ensure_ascii=False), now),
            )

    def clear(self, name: str) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM messages WHERE conversation = ?", (name,))
            db.execute("DELETE FROM feedback WHERE conversation = ?", (name,))

    def set_feedback(self, name: str, turn: int, feedback: Feedback) -> None:
        """Record (or replace) the feedback on turn ``turn`` (0-based) of conversation ``name``."""
        db = self._connect()
        with db:
            exists = db.execute(
                "SELECT 1 FROM messages WHERE conversation = ? AND turn = ? AND role = 'assistant'", (name, turn)
            ).fetchone()
            if not exists:
                raise ConversationError(f"conversation {name!r} has no saved turn {turn + 1}; nothing to mark")
            db.execute(
                "INSERT OR REPLACE INTO feedback(conversation, turn, rating, correction, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (name, turn, feedback.rating, feedback.correction, time.time()),
            )

    def feedback(self, name: str) -> dict[int, Feedback]:
        """The feedback of a conversation by turn (0-based)."""
        rows = self._connect().execute("SELECT turn, rating, correction FROM feedback WHERE conversation = ?", (name,))
        return {turn: Feedback(rating, correction) for turn, rating, correction in rows}

    def turns(self, name: str) -> list[StoredTurn]:
        """The saved turns of a conversation, in order, with their meta and feedback."""
        rows = (
            self._connect()
            .execute(
                "SELECT turn, role, content, meta FROM messages WHERE conversation = ? ORDER BY id",
                (name,),
            )
            .fetchall()
        )
        ratings = self.feedback(name)
        questions: dict[int, str] = {}
        out = []
        for turn, role, content, meta in rows:
            if role == "user":
                questions[turn] = content
            elif turn in questions:
                out.append(
                    StoredTurn(name, turn, questions[turn], content, json.loads(meta or "{}"), ratings.get(turn))
                )
        return out

    def names(self) -> list[str]:
        return [r[0] for r in self._connect().execute("SELECT name FROM conversations ORDER BY created_at")]
