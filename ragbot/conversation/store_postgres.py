"""Conversations in PostgreSQL: one database shared by any number of ragbot processes.

psycopg 3 with a connection pool (``psycopg_pool``; ``pip install "ragbot[postgres]"``). Each
finished turn is one transaction that locks its conversation's row (``SELECT ... FOR UPDATE``)
before numbering the turn, so workers appending to one conversation take turns; a unique index
on (conversation, turn, role) refuses a duplicate whatever else writes, and a transaction that
loses a race (deadlock, unique violation) is run again. A turn answered from n turns is saved only
if its conversation still has n (else ``ConversationChangedError``: two workers answered one
conversation at once), under a turn id made before the first try, so a try run again after a
connection broke during COMMIT finds the turn saved instead of saving it twice. The schema comes
from the same numbered migrations as the SQLite file, recorded in the database's ``_migrations`` table.

A database that cannot be reached when the store opens is a ``StoreUnreachableError`` naming the
URL (password masked). One that goes away later is a ``StoreUnavailableError`` for each call
until it is back; the pool checks a connection before lending it and opens new ones, so the
store works again without a restart.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections.abc import Iterator
from typing import Any

from ragbot import registry
from ragbot.conversation.store import (
    ConversationStore,
    Feedback,
    Reply,
    StoredTurn,
    answered,
    changed,
    mask_url,
    new_turn_id,
    turns_from_rows,
    url_secrets,
)
from ragbot.errors import (
    ConfigError,
    ConversationError,
    ConversationStoreError,
    StoreUnavailableError,
    StoreUnreachableError,
)
from ragbot.migrations import Migrations, run_script
from ragbot.models.chat import Message

try:
    import psycopg
    from psycopg import errors as pg_errors
    from psycopg.conninfo import conninfo_to_dict
    from psycopg_pool import ConnectionPool, PoolTimeout
except ImportError:  # pragma: no cover - depends on the install
    psycopg = None

# The pool logs each failed reconnection as a warning: kept for an application that configures logging,
# not printed by Python's last-resort handler in the middle of a terminal chat.
logging.getLogger("psycopg.pool").addHandler(logging.NullHandler())

# Transactions that lost a race with another writer; run again.
RETRIES = 5
_RACES = (
    () if psycopg is None else (pg_errors.UniqueViolation, pg_errors.DeadlockDetected, pg_errors.SerializationFailure)
)
_MIGRATION_LOCK = 0x7261_6762  # pg_advisory_xact_lock key: one process migrates at a time ("ragb")


class PostgresMigrations(Migrations):
    """The migrations machinery on PostgreSQL: an advisory lock instead of SQLite's write lock."""

    def _lock(self, db: Any) -> None:
        db.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        db.execute(
            "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
        )

    def _applied(self, db: Any) -> set[str]:
        (table,) = db.execute("SELECT to_regclass('_migrations')").fetchone()
        return {name for (name,) in db.execute("SELECT name FROM _migrations")} if table else set()

    def _record(self, db: Any, name: str) -> None:
        db.execute("INSERT INTO _migrations (name, applied_at) VALUES (%s, %s)", (name, time.time()))


# The same numbered migrations as ``store_sqlite.MIGRATIONS`` (tests check the names match), in
# PostgreSQL's dialect; append a new one to both lists.
MIGRATIONS = PostgresMigrations("conversation database")


@MIGRATIONS
def m001_initial(db: Any) -> None:
    """Conversations, their messages (one user and one assistant row per turn) and feedback."""
    run_script(db, _SCHEMA_1)


_SCHEMA_1 = """
CREATE TABLE conversations (
    name TEXT PRIMARY KEY,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE messages (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    conversation TEXT NOT NULL REFERENCES conversations(name) ON DELETE CASCADE,
    turn INTEGER NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    content TEXT NOT NULL,
    meta TEXT NOT NULL DEFAULT '{}',
    created_at DOUBLE PRECISION NOT NULL,
    UNIQUE (conversation, turn, role)
);
CREATE INDEX messages_by_conversation ON messages(conversation, id);
CREATE TABLE feedback (
    conversation TEXT NOT NULL REFERENCES conversations(name) ON DELETE CASCADE,
    turn INTEGER NOT NULL,
    rating TEXT NOT NULL CHECK (rating IN ('good', 'bad')),
    correction TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (conversation, turn)
)
"""


@MIGRATIONS
def m002_conversation_state(db: Any) -> None:
    """What each conversation is about (``ragbot.conversation.topic``), as JSON, and how many turns it covers."""
    run_script(db, _SCHEMA_2)


_SCHEMA_2 = """
CREATE TABLE conversation_state (
    conversation TEXT PRIMARY KEY REFERENCES conversations(name) ON DELETE CASCADE,
    turns INTEGER NOT NULL,
    state TEXT NOT NULL
)
"""


@MIGRATIONS
def m003_turn_ids(db: Any) -> None:
    """An id per saved turn (both its rows), unique in its conversation, so a save that is tried again
    after a lost answer from the database (a connection dropped during COMMIT) cannot save the turn twice."""
    run_script(db, _SCHEMA_3)


_SCHEMA_3 = """
ALTER TABLE messages ADD COLUMN turn_id TEXT;
CREATE UNIQUE INDEX messages_by_turn_id ON messages(conversation, turn_id, role)
"""


@MIGRATIONS
def m004_replies(db: Any) -> None:
    """What a turn asked with an idempotency key answered (the request's digest and the answer's record),
    saved with the turn, so a client's resend gets the same answer without the model being called."""
    run_script(db, _SCHEMA_4)


_SCHEMA_4 = """
CREATE TABLE replies (
    conversation TEXT NOT NULL REFERENCES conversations(name) ON DELETE CASCADE,
    turn_id TEXT NOT NULL,
    request TEXT NOT NULL,
    record TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (conversation, turn_id)
)
"""

_WHAT_TO_DO = "start PostgreSQL or fix the URL in `sessions` (RAGBOT_SESSIONS, --sessions)"


@registry.conversation_stores.register("postgresql")
class PostgresStore(ConversationStore):
    """Conversations in a PostgreSQL database, through a pool of up to ``max_size`` connections.

    The URL's ``connect_timeout`` (default 5 s) is also how long a call waits for a connection (so
    for the database to come back) before it raises ``StoreUnavailableError``.
    """

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 8):
        if psycopg is None:
            raise ConfigError(
                'a postgresql:// URL in `sessions` needs psycopg: pip install "ragbot[postgres]" '
                "(or set `sessions` to a SQLite file)"
            )
        self.url = url
        self.location = mask_url(url)
        self._secrets = url_secrets(url)
        try:
            params = conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            raise ConfigError(
                f"bad value for sessions: {self.location} is not a usable URL ({self._reason(exc)})"
            ) from None
        try:  # seconds; libpq's default is to wait forever, and below 2 it waits 2
            self._connect_timeout = max(2, int(params.get("connect_timeout") or 5))
        except ValueError:
            raise ConfigError(
                f"bad value for sessions: {self.location} has a connect_timeout that is not whole seconds"
            ) from None
        timeout = float(self._connect_timeout)
        self._migrate()
        self._pool = ConnectionPool(
            url,
            kwargs={"connect_timeout": self._connect_timeout},
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            # a connection broken while the database was away fails this check and is replaced
            check=ConnectionPool.check_connection,
            # a round of reconnection (backing off from 1 s) gives up within half the wait, so a call made
            # just after the database is back finds it before its own wait is over
            reconnect_timeout=timeout / 2,
            name="ragbot-conversations",
            open=True,
        )

    def _connect(self) -> Any:
        try:
            return psycopg.connect(self.url, connect_timeout=self._connect_timeout)
        except psycopg.OperationalError as exc:
            raise StoreUnreachableError(
                f"cannot reach the conversation database {self.location} ({self._reason(exc)}): {_WHAT_TO_DO}"
            ) from None

    def _migrate(self) -> None:
        """Check the database can be reached, and apply its pending migrations (one process at a time)."""
        with contextlib.closing(self._connect()) as db:
            try:
                MIGRATIONS.apply(db, self.location, ConversationStoreError)
                db.commit()
            except psycopg.Error as exc:
                raise ConversationStoreError(
                    f"cannot set up the conversation database {self.location} ({self._reason(exc)}): "
                    "check that its user may create tables, or set `sessions` to another database"
                ) from None

    def _reason(self, exc: BaseException) -> str:
        """The driver's message on one line, without libpq's prefixes and with no password in it."""
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        text = re.sub(r"^connection (failed|is bad): ", "", text)
        text = re.sub(r'^connection to server (on socket "[^"]*"|at "[^"]*"(, port \d+)?) failed: ', "", text)
        text = text.replace("FATAL:  ", "").strip()
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    @contextlib.contextmanager
    def _transaction(self, broken: tuple[type[BaseException], ...] = ()) -> Iterator[Any]:
        """A pooled connection in one transaction (committed at the end, rolled back on an error);
        a database that is away becomes ``StoreUnavailableError``. ``broken``: pass a connection that
        broke during the transaction (``psycopg.OperationalError``) on to a caller that tries again."""
        try:
            with self._pool.connection() as db:
                yield db
        except _RACES:
            raise  # the caller runs the transaction again
        except PoolTimeout:
            raise StoreUnavailableError(self._unavailable(self._probe())) from None
        except broken:
            raise
        except psycopg.OperationalError as exc:
            raise StoreUnavailableError(self._unavailable(self._reason(exc))) from None
        except psycopg.Error as exc:
            raise ConversationStoreError(
                f"cannot use the conversation database {self.location} ({self._reason(exc)}): check the database"
            ) from None

    def _probe(self) -> str:
        """Why no connection came: what a fresh connection attempt says."""
        try:
            psycopg.connect(self.url, connect_timeout=2).close()
        except psycopg.Error as exc:
            return self._reason(exc)
        return f"no free connection within {self._pool.timeout:g} s"

    def _unavailable(self, reason: str) -> str:
        return (
            f"the conversation database {self.location} is unavailable ({reason}); nothing was saved: "
            "try again once it is back"
        )

    def close(self) -> None:
        self._pool.close()

    def check(self) -> bool:
        with self._transaction() as db:
            db.execute("SELECT 1")
        return False

    def history(self, name: str) -> list[Message]:
        with self._transaction() as db:
            rows = db.execute(
                "SELECT role, content FROM messages WHERE conversation = %s ORDER BY turn, id", (name,)
            ).fetchall()
        return [Message(role, content) for role, content in rows]

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
        """Save one finished turn (``ConversationStore.append_turn``). A try that loses a race, or whose
        connection breaks (even during COMMIT, when the turn may be saved already), is run again under
        the same turn id, so the turn is saved once (and a reply saved by such a try is this one's)."""
        row = (question, answer, json.dumps(meta or {}, ensure_ascii=False))
        state_text = None if state is None else json.dumps(state, ensure_ascii=False)
        turn_id = turn_id or new_turn_id()
        saved_reply = None if reply is None else (reply.request, json.dumps(reply.record, ensure_ascii=False))
        for attempt in range(RETRIES):
            last = attempt == RETRIES - 1
            try:
                with self._transaction(broken=(psycopg.OperationalError,)) as db:
                    return self._append(db, name, row, state_text, expected_turns, turn_id, saved_reply)
            except psycopg.OperationalError as exc:  # the COMMIT may have reached the database: try once more
                if attempt >= 1:  # a database that went away is not back for a third try
                    raise StoreUnavailableError(self._unavailable(self._reason(exc))) from None
            except _RACES as exc:
                if last:
                    raise ConversationStoreError(
                        f"could not save the turn of conversation {name!r} in {self.location} after {RETRIES} "
                        f"tries ({self._reason(exc)}): try again"
                    ) from None
        raise AssertionError("unreachable")

    @staticmethod
    def _append(
        db: Any,
        name: str,
        row: tuple[str, str, str],
        state: str | None,
        expected: int | None,
        turn_id: str,
        reply: tuple[str, str] | None,
    ) -> int:
        question, answer, meta = row
        now = time.time()
        db.execute(
            "INSERT INTO conversations(name, created_at) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING", (name, now)
        )
        db.execute("SELECT 1 FROM conversations WHERE name = %s FOR UPDATE", (name,))  # one writer per conversation
        saved = db.execute(
            "SELECT turn FROM messages WHERE conversation = %s AND turn_id = %s AND role = 'assistant'",
            (name, turn_id),
        ).fetchone()
        if saved is not None:
            if reply is not None:
                found = db.execute(
                    "SELECT record FROM replies WHERE conversation = %s AND turn_id = %s", (name, turn_id)
                ).fetchone()
                if found is None or found[0] != reply[1]:
                    raise answered(name)  # another request with the same key saved its answer first
            return int(saved[0])  # saved by an earlier try whose COMMIT's answer was lost
        (turn,) = db.execute("SELECT COUNT(*) / 2 FROM messages WHERE conversation = %s", (name,)).fetchone()
        if expected is not None and turn != expected:
            raise changed(name, expected, int(turn))
        db.execute(
            "INSERT INTO messages(conversation, turn, role, content, created_at, turn_id) "
            "VALUES (%s, %s, 'user', %s, %s, %s)",
            (name, turn, question, now, turn_id),
        )
        db.execute(
            "INSERT INTO messages(conversation, turn, role, content, meta, created_at, turn_id) "
            "VALUES (%s, %s, 'assistant', %s, %s, %s, %s)",
            (name, turn, answer, meta, now, turn_id),
        )
        if state is not None:
            db.execute(
                "INSERT INTO conversation_state(conversation, turns, state) VALUES (%s, %s, %s) "
                "ON CONFLICT (conversation) DO UPDATE SET turns = EXCLUDED.turns, state = EXCLUDED.state",
                (name, turn + 1, state),
            )
        if reply is not None:
            db.execute(
                "INSERT INTO replies(conversation, turn_id, request, record, created_at) VALUES (%s, %s, %s, %s, %s)",
                (name, turn_id, *reply, now),
            )
        return int(turn)

    def reply(self, name: str, turn_id: str) -> Reply | None:
        with self._transaction() as db:
            row = db.execute(
                "SELECT request, record, created_at FROM replies WHERE conversation = %s AND turn_id = %s",
                (name, turn_id),
            ).fetchone()
        return None if row is None else Reply(row[0], json.loads(row[1]), row[2])

    def state(self, name: str) -> tuple[int, dict[str, Any]] | None:
        with self._transaction() as db:
            row = db.execute("SELECT turns, state FROM conversation_state WHERE conversation = %s", (name,)).fetchone()
        if row is None:
            return None
        try:
            state = json.loads(row[1])
        except ValueError:
            return None  # rebuilt from the turns
        return (row[0], state) if isinstance(state, dict) else None

    def clear(self, name: str) -> None:
        with self._transaction() as db:
            db.execute("SELECT 1 FROM conversations WHERE name = %s FOR UPDATE", (name,))
            for table in ("messages", "feedback", "conversation_state", "replies"):
                db.execute(f"DELETE FROM {table} WHERE conversation = %s", (name,))

    def set_feedback(self, name: str, turn: int, feedback: Feedback) -> None:
        with self._transaction() as db:
            exists = db.execute(
                "SELECT 1 FROM messages WHERE conversation = %s AND turn = %s AND role = 'assistant'", (name, turn)
            ).fetchone()
            if not exists:
                raise ConversationError(f"conversation {name!r} has no saved turn {turn + 1}; nothing to mark")
            db.execute(
                "INSERT INTO feedback(conversation, turn, rating, correction, created_at) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (conversation, turn) DO UPDATE SET rating = EXCLUDED.rating, "
                "correction = EXCLUDED.correction, created_at = EXCLUDED.created_at",
                (name, turn, feedback.rating, feedback.correction, time.time()),
            )

    def feedback(self, name: str) -> dict[int, Feedback]:
        with self._transaction() as db:
            rows = db.execute("SELECT turn, rating, correction FROM feedback WHERE conversation = %s", (name,))
            return {turn: Feedback(rating, correction) for turn, rating, correction in rows.fetchall()}

    def turns(self, name: str) -> list[StoredTurn]:
        with self._transaction() as db:
            rows = db.execute(
                "SELECT turn, role, content, meta FROM messages WHERE conversation = %s ORDER BY turn, id", (name,)
            ).fetchall()
            ratings = db.execute("SELECT turn, rating, correction FROM feedback WHERE conversation = %s", (name,))
            feedback = {turn: Feedback(rating, correction) for turn, rating, correction in ratings.fetchall()}
        return turns_from_rows(name, [(t, r, c, json.loads(m or "{}")) for t, r, c, m in rows], feedback)

    def names(self) -> list[str]:
        with self._transaction() as db:
            return [r[0] for r in db.execute("SELECT name FROM conversations ORDER BY created_at, name").fetchall()]


__all__ = ["MIGRATIONS", "PostgresStore"]
