"""Conversations in one SQLite file: the default store, for one machine.

A turn (the question and its answer) is written in one transaction when the answer is
complete, so a process killed between turns (or in the middle of one) never leaves a
half turn behind: the saved history always alternates user/assistant. The transaction takes
SQLite's write lock before it counts the turns, so processes sharing the file number turns
one after another.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from ragbot import registry
from ragbot.errors import ConversationStoreError
from ragbot.migrations import Migrations, run_script
from ragbot.storage.conversation_sql import ConversationSQL, SQLConversationStore
from ragbot.storage.sql import SQLITE

MIGRATIONS = Migrations("conversations file")


@MIGRATIONS
def m001_initial(db: sqlite3.Connection) -> None:
    """The schema from before migrations: ``IF NOT EXISTS``, so a file that code wrote is taken as is."""
    run_script(db, _SCHEMA_1)


_SCHEMA_1 = """
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


@MIGRATIONS
def m002_conversation_state(db: sqlite3.Connection) -> None:
    """What each conversation is about (``ragbot.conversation.topic``), as JSON, and how many turns
    it covers: a state that does not cover every saved turn is rebuilt from the turns."""
    run_script(db, _SCHEMA_2)


_SCHEMA_2 = """
CREATE TABLE IF NOT EXISTS conversation_state (
    conversation TEXT PRIMARY KEY REFERENCES conversations(name) ON DELETE CASCADE,
    turns INTEGER NOT NULL,
    state TEXT NOT NULL
);
"""


@MIGRATIONS
def m003_turn_ids(db: sqlite3.Connection) -> None:
    """An id per saved turn (both its rows), unique in its conversation, so a save that is tried again
    after a lost answer from the database cannot save the turn twice."""
    run_script(db, _SCHEMA_3)


_SCHEMA_3 = """
ALTER TABLE messages ADD COLUMN turn_id TEXT;
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_turn_id ON messages(conversation, turn_id, role);
"""


@MIGRATIONS
def m004_replies(db: sqlite3.Connection) -> None:
    """What a turn asked with an idempotency key answered (the request's digest and the answer's record),
    saved with the turn, so a client's resend gets the same answer without the model being called."""
    run_script(db, _SCHEMA_4)


_SCHEMA_4 = """
CREATE TABLE IF NOT EXISTS replies (
    conversation TEXT NOT NULL REFERENCES conversations(name) ON DELETE CASCADE,
    turn_id TEXT NOT NULL,
    request TEXT NOT NULL,
    record TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (conversation, turn_id)
);
"""


def store_error(path: Path, exc: sqlite3.Error) -> ConversationStoreError:
    """One line saying what is wrong with the conversations file and what to do about it."""
    text = str(exc)
    other = "or set `sessions` (RAGBOT_SESSIONS) to another file"
    if "not a database" in text or "malformed" in text:
        return ConversationStoreError(f"the conversations file {path} is damaged ({text}): move it away {other}")
    if "readonly" in text or "read-only" in text:
        return ConversationStoreError(
            f"the conversations file {path} is read-only ({text}): make it and its folder writable, {other}"
        )
    if "locked" in text or "busy" in text:
        return ConversationStoreError(
            f"the conversations file {path} is busy ({text}): another program holds it; try again"
        )
    if "unable to open" in text:
        return ConversationStoreError(
            f"cannot open the conversations file {path} ({text}): make sure it and its folder can be read and "
            f"written, {other}"
        )
    return ConversationStoreError(f"cannot use the conversations file {path} ({text}): check it {other}")


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


@registry.conversation_stores.register("sqlite")
class SQLiteStore(SQLConversationStore):
    """Conversations in one SQLite file (WAL mode; safe for several threads and processes).

    Opening applies the file's pending migrations. ``check`` runs before each turn, so a file
    that became read-only, or was deleted or replaced, is noticed before the model is called.
    """

    sql = ConversationSQL(SQLITE)

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.location = str(self.path)
        self._lock = threading.RLock()  # one connection, used by one thread at a time
        self._db: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None  # the file the connection has open
        self._open()

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConversationStoreError(
                f"cannot create the folder of the conversations file {self.path} ({exc.strerror}): "
                "set `sessions` (RAGBOT_SESSIONS) to another file"
            ) from None
        with self._use() as db:
            MIGRATIONS.apply(db, self.path, ConversationStoreError)
            self._identity = _identity(self.path)

    @contextlib.contextmanager
    def _use(self) -> Iterator[sqlite3.Connection]:
        """The connection, for one thread at a time, with SQLite's errors turned into one line for the user."""
        with self._lock:
            try:
                if self._db is None:
                    db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
                    try:
                        db.execute("PRAGMA journal_mode=WAL")
                        db.execute("PRAGMA foreign_keys=ON")
                    except sqlite3.Error:
                        db.close()
                        raise
                    self._db = db
                yield self._db
            except sqlite3.Error as exc:
                raise store_error(self.path, exc) from None

    def close(self) -> None:
        """Close the connection (the next call opens it again)."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _reopen(self) -> None:
        """Let go of the old file and open the one now at the path (creating it if it is gone)."""
        if self._db is not None:
            # SQLite leaves an unlinked file's -wal at the path's name; emptied, it cannot leak into the new file.
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._db.close()
            self._db = None
        self._open()

    def check(self) -> bool:
        """Make sure the next turn can be saved: raise ``ConversationStoreError`` if the file cannot be
        written. A file deleted or replaced since it was opened is opened again at the path (created
        if missing); returns True then, so the caller can save again what the old file held."""
        with self._lock:
            reopened = _identity(self.path) != self._identity
            if reopened:
                self._reopen()
            with self._use() as db:
                db.execute("BEGIN IMMEDIATE")  # succeeds on a read-only file; the write below does not
                try:
                    (version,) = db.execute("PRAGMA user_version").fetchone()
                    db.execute(f"PRAGMA user_version = {int(version)}")
                finally:
                    db.rollback()
        return reopened

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._use() as db, db:  # one transaction: a turn's rows all saved or none
            yield db


__all__ = ["MIGRATIONS", "SQLiteStore", "store_error"]
