"""The conversation tables' reads and writes, written once for the SQLite file and PostgreSQL.

``ConversationSQL`` runs each query on an open connection in the caller's transaction;
``SQLConversationStore`` is a ``ConversationStore`` made of them, leaving a store only how it opens
a transaction (and retries a save). Turns are ordered by their number, then by row id (the
question before its answer): the number is what the store gives, while ids need not follow it
(rows copied in from another database).
"""

from __future__ import annotations

import contextlib
import json
import time
from abc import abstractmethod
from collections.abc import Callable
from typing import Any

from ragbot.errors import ConversationError
from ragbot.models.chat import Message
from ragbot.storage.conversations import ConversationStore, Feedback, Reply, StoredTurn, answered, changed, new_turn_id
from ragbot.storage.sql import Dialect

TABLES = ("messages", "feedback", "conversation_state", "replies")  # what a conversation holds besides its name


class ConversationSQL:
    """The conversation queries in one ``Dialect``."""

    def __init__(self, dialect: Dialect):
        self.dialect = dialect

    def _one(self, db: Any, sql: str, params: tuple[Any, ...]) -> Any:
        return self.dialect.execute(db, sql, params).fetchone()

    def _all(self, db: Any, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        return self.dialect.execute(db, sql, params).fetchall()

    def _lock(self, db: Any, name: str) -> None:
        """Keep other writers of ``name`` out until this transaction ends."""
        if self.dialect.locks_rows:
            self._one(db, "SELECT 1 FROM conversations WHERE name = ? FOR UPDATE", (name,))

    # --- reads ---------------------------------------------------------------------------------

    def history(self, db: Any, name: str) -> list[Message]:
        rows = self._all(db, "SELECT role, content FROM messages WHERE conversation = ? ORDER BY turn, id", (name,))
        return [Message(role, content) for role, content in rows]

    def turns(self, db: Any, name: str) -> list[StoredTurn]:
        """The turns with their feedback, read by one statement: one snapshot in either engine."""
        rows = self._all(
            db,
            "SELECT m.turn, m.role, m.content, m.meta, f.rating, f.correction FROM messages m "
            "LEFT JOIN feedback f ON f.conversation = m.conversation AND f.turn = m.turn "
            "WHERE m.conversation = ? ORDER BY m.turn, m.id",
            (name,),
        )
        questions: dict[int, str] = {}
        out = []
        for turn, role, content, meta, rating, correction in rows:
            if role == "user":
                questions[turn] = content
            elif turn in questions:
                feedback = None if rating is None else Feedback(rating, correction)
                out.append(StoredTurn(name, turn, questions[turn], content, json.loads(meta or "{}"), feedback))
        return out

    def feedback(self, db: Any, name: str) -> dict[int, Feedback]:
        rows = self._all(db, "SELECT turn, rating, correction FROM feedback WHERE conversation = ?", (name,))
        return {turn: Feedback(rating, correction) for turn, rating, correction in rows}

    def state(self, db: Any, name: str) -> tuple[int, dict[str, Any]] | None:
        row = self._one(db, "SELECT turns, state FROM conversation_state WHERE conversation = ?", (name,))
        if row is None:
            return None
        try:
            state = json.loads(row[1])
        except ValueError:
            return None  # rebuilt from the turns
        return (row[0], state) if isinstance(state, dict) else None

    def reply(self, db: Any, name: str, turn_id: str) -> Reply | None:
        sql = "SELECT request, record, created_at FROM replies WHERE conversation = ? AND turn_id = ?"
        row = self._one(db, sql, (name, turn_id))
        return None if row is None else Reply(row[0], json.loads(row[1]), row[2])

    def names(self, db: Any) -> list[str]:
        return [name for (name,) in self._all(db, "SELECT name FROM conversations ORDER BY created_at, name")]

    def _saved_turn(self, db: Any, name: str, turn_id: str) -> int | None:
        row = self._one(
            db,
            "SELECT turn FROM messages WHERE conversation = ? AND turn_id = ? AND role = 'assistant'",
            (name, turn_id),
        )
        return None if row is None else int(row[0])

    def _saved_record(self, db: Any, name: str, turn_id: str) -> str | None:
        row = self._one(db, "SELECT record FROM replies WHERE conversation = ? AND turn_id = ?", (name, turn_id))
        return None if row is None else row[0]

    def _count_turns(self, db: Any, name: str) -> int:
        (turns,) = self._one(db, "SELECT COUNT(*) / 2 FROM messages WHERE conversation = ?", (name,))
        return int(turns)

    def _has_turn(self, db: Any, name: str, turn: int) -> bool:
        sql = "SELECT 1 FROM messages WHERE conversation = ? AND turn = ? AND role = 'assistant'"
        return self._one(db, sql, (name, turn)) is not None

    # --- writes --------------------------------------------------------------------------------

    def append_turn(
        self,
        db: Any,
        name: str,
        question: str,
        answer: str,
        meta: dict[str, Any] | None,
        state: dict[str, Any] | None,
        expected_turns: int | None,
        turn_id: str,
        reply: Reply | None,
    ) -> int:
        """``ConversationStore.append_turn`` inside the caller's transaction; the turn's number."""
        now = time.time()
        # SQLite: this first write takes the file's write lock; PostgreSQL: the row lock below
        self.dialect.execute(
            db, "INSERT INTO conversations(name, created_at) VALUES (?, ?) ON CONFLICT (name) DO NOTHING", (name, now)
        )
        self._lock(db, name)
        record = None if reply is None else json.dumps(reply.record, ensure_ascii=False)
        saved = self._saved_turn(db, name, turn_id)
        if saved is not None:
            if record is not None and self._saved_record(db, name, turn_id) != record:
                raise answered(name)  # another request with the same key saved its answer first
            return saved  # saved by an earlier try
        turn = self._count_turns(db, name)
        if expected_turns is not None and turn != expected_turns:
            raise changed(name, expected_turns, turn)
        self.dialect.execute(
            db,
            "INSERT INTO messages(conversation, turn, role, content, created_at, turn_id) "
            "VALUES (?, ?, 'user', ?, ?, ?)",
            (name, turn, question, now, turn_id),
        )
        self.dialect.execute(
            db,
            "INSERT INTO messages(conversation, turn, role, content, meta, created_at, turn_id) "
            "VALUES (?, ?, 'assistant', ?, ?, ?, ?)",
            (name, turn, answer, json.dumps(meta or {}, ensure_ascii=False), now, turn_id),
        )
        if state is not None:
            self.dialect.execute(
                db,
                "INSERT INTO conversation_state(conversation, turns, state) VALUES (?, ?, ?) "
                "ON CONFLICT (conversation) DO UPDATE SET turns = excluded.turns, state = excluded.state",
                (name, turn + 1, json.dumps(state, ensure_ascii=False)),
            )
        if reply is not None:
            self.dialect.execute(
                db,
                "INSERT INTO replies(conversation, turn_id, request, record, created_at) VALUES (?, ?, ?, ?, ?)",
                (name, turn_id, reply.request, record, now),
            )
        return turn

    def clear(self, db: Any, name: str) -> None:
        self._lock(db, name)
        for table in TABLES:
            self.dialect.execute(db, f"DELETE FROM {table} WHERE conversation = ?", (name,))

    def set_feedback(self, db: Any, name: str, turn: int, feedback: Feedback) -> None:
        if not self._has_turn(db, name, turn):
            raise ConversationError(f"conversation {name!r} has no saved turn {turn + 1}; nothing to mark")
        self.dialect.execute(
            db,
            "INSERT INTO feedback(conversation, turn, rating, correction, created_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (conversation, turn) DO UPDATE SET rating = excluded.rating, "
            "correction = excluded.correction, created_at = excluded.created_at",
            (name, turn, feedback.rating, feedback.correction, time.time()),
        )


class SQLConversationStore(ConversationStore):
    """A conversation store on a SQL database: each call one transaction running ``sql``'s queries."""

    sql: ConversationSQL

    @abstractmethod
    def _transaction(self) -> contextlib.AbstractContextManager[Any]:
        """A connection in one transaction: committed at the end, rolled back on an error."""

    def _save(self, name: str, save: Callable[[Any], int]) -> int:
        """Run ``save`` (a turn's writes) in one transaction; a store whose transactions can lose a race
        runs it again here."""
        with self._transaction() as db:
            return save(db)

    def history(self, name: str) -> list[Message]:
        with self._transaction() as db:
            return self.sql.history(db, name)

    def append_turn(
        self,
        name: str,
        question: str,
        answer: str,
        meta: dict[str, Any] | None = None,
        state: dict[str, Any] | None = None,
        *,
        expected_turns: int | None = None,
        turn_id: str | None = None,
        reply: Reply | None = None,
    ) -> int:
        turn_id = turn_id or new_turn_id()  # made once, so a save run again finds a turn already saved
        return self._save(
            name,
            lambda db: self.sql.append_turn(db, name, question, answer, meta, state, expected_turns, turn_id, reply),
        )

    def reply(self, name: str, turn_id: str) -> Reply | None:
        with self._transaction() as db:
            return self.sql.reply(db, name, turn_id)

    def state(self, name: str) -> tuple[int, dict[str, Any]] | None:
        with self._transaction() as db:
            return self.sql.state(db, name)

    def clear(self, name: str) -> None:
        with self._transaction() as db:
            self.sql.clear(db, name)

    def set_feedback(self, name: str, turn: int, feedback: Feedback) -> None:
        with self._transaction() as db:
            self.sql.set_feedback(db, name, turn, feedback)

    def feedback(self, name: str) -> dict[int, Feedback]:
        with self._transaction() as db:
            return self.sql.feedback(db, name)

    def turns(self, name: str) -> list[StoredTurn]:
        with self._transaction() as db:
            return self.sql.turns(db, name)

    def names(self) -> list[str]:
        with self._transaction() as db:
            return self.sql.names(db)


__all__ = ["ConversationSQL", "SQLConversationStore"]
