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
import logging
import re
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from ragbot import registry
from ragbot.errors import ConfigError, ConversationStoreError, StoreUnavailableError, StoreUnreachableError
from ragbot.migrations import Migrations, run_script
from ragbot.storage.conversation_sql import ConversationSQL, SQLConversationStore
from ragbot.storage.sql import POSTGRES

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


# The same numbered migrations as ``sqlite.MIGRATIONS`` (tests check the names match), in
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


def mask_url(url: str) -> str:
    """``url`` with its password (in the user part or a ``password=`` parameter) shown as ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        if ":" in user:
            user = user.split(":", 1)[0] + ":***"
        netloc = f"{user}@{host}"
    query = parts.query
    if query:
        pairs = [(k, "***" if k.lower() == "password" else v) for k, v in parse_qsl(query, keep_blank_values=True)]
        query = urlencode(pairs, safe="/*:", quote_via=quote)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def url_secrets(url: str) -> list[str]:
    """The password in ``url`` as written and decoded, to take out of any message a driver returns."""
    parts = urlsplit(url)
    found = [v for k, v in parse_qsl(parts.query, keep_blank_values=True) if k.lower() == "password"]
    if parts.password:
        found += [parts.password, unquote(parts.password)]
    return [s for s in found if s]


_WHAT_TO_DO = "start PostgreSQL or fix the URL in `sessions` (RAGBOT_SESSIONS, --sessions)"


@registry.conversation_stores.register("postgresql")
class PostgresStore(SQLConversationStore):
    """Conversations in a PostgreSQL database, through a pool of up to ``max_size`` connections.

    The URL's ``connect_timeout`` (default 5 s) is also how long a call waits for a connection (so
    for the database to come back) before it raises ``StoreUnavailableError``.
    """

    sql = ConversationSQL(POSTGRES)

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

    def _save(self, name: str, save: Callable[[Any], int]) -> int:
        """A try that loses a race, or whose connection breaks (even during COMMIT, when the turn may be
        saved already), is run again under the same turn id, so the turn is saved once (and a reply saved
        by such a try is this one's)."""
        for attempt in range(RETRIES):
            last = attempt == RETRIES - 1
            try:
                with self._transaction(broken=(psycopg.OperationalError,)) as db:
                    return save(db)
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


__all__ = ["MIGRATIONS", "PostgresStore", "mask_url", "url_secrets"]
