"""Numbered schema changes for ragbot's SQLite files (and its PostgreSQL database), applied on open.

Each file kind (the conversations, the fine-tuning job records) keeps an ordered list of
migration functions; the names already applied are kept in the file's ``_migrations`` table.
Opening a file applies the missing ones, in order, in one transaction, so a crash leaves the
file as it was. ``CREATE TABLE IF NOT EXISTS`` can add tables but never columns; a migration
can do both. Only append to a list: never rename, reorder or remove a migration once released.
A file that records a migration this ragbot does not know was written by a newer ragbot, and
is refused rather than used with a schema the code does not understand. Another engine subclasses
``Migrations`` and overrides its three statements (``_lock``, ``_applied``, ``_record``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ragbot.errors import RagbotError

Migration = Callable[[Any], None]  # called with the open connection (sqlite3, or psycopg's)


class Migrations:
    """The ordered migrations of one kind of file; use an instance as a decorator to append one."""

    def __init__(self, what: str):
        self.what = what  # how the file is named in messages, e.g. "conversations file"
        self.steps: list[Migration] = []

    def __call__(self, step: Migration) -> Migration:
        if step.__name__ in self.names:
            raise ValueError(f"two migrations of the {self.what} are named {step.__name__}")  # a coding slip
        self.steps.append(step)
        return step

    @property
    def names(self) -> list[str]:
        return [step.__name__ for step in self.steps]

    def apply(self, db: Any, path: str | Path, error: type[RagbotError]) -> list[str]:
        """Apply the migrations ``db`` lacks; return their names (empty when it is up to date)."""
        if not self._pending(db, path, error):
            return []  # the usual case: a read, no write lock (a read-only file that is up to date opens)
        try:
            self._lock(db)  # one process migrates; another one opening now waits, then sees it done
            done = []
            for step in self.steps:
                if step.__name__ not in self._pending(db, path, error):
                    continue
                step(db)
                self._record(db, step.__name__)
                done.append(step.__name__)
            db.commit()
        except BaseException:
            db.rollback()
            raise
        return done

    def _lock(self, db: Any) -> None:
        """Start the migrating transaction, holding the lock that keeps other processes out, and make sure
        the ``_migrations`` table exists."""
        db.execute("BEGIN IMMEDIATE")
        db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")

    def _applied(self, db: Any) -> set[str]:
        has_table = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_migrations'").fetchone()
        return {name for (name,) in db.execute("SELECT name FROM _migrations")} if has_table else set()

    def _record(self, db: Any, name: str) -> None:
        db.execute("INSERT INTO _migrations (name, applied_at) VALUES (?, ?)", (name, time.time()))

    def _pending(self, db: Any, path: str | Path, error: type[RagbotError]) -> list[str]:
        applied = self._applied(db)
        unknown = sorted(applied - set(self.names))
        if unknown:
            raise error(
                f"the {self.what} {path} was written by a newer ragbot (schema changes {', '.join(unknown)} "
                "are unknown here): upgrade ragbot to use it"
            )
        return [name for name in self.names if name not in applied]


def run_script(db: Any, script: str) -> None:
    """Run ``;``-separated statements inside the current transaction (``executescript`` would commit)."""
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


__all__ = ["Migrations", "run_script"]
