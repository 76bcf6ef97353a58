"""SQL written once for SQLite and PostgreSQL: what differs between the two engines, as data.

Queries are written with SQLite's ``?`` placeholder (so no literal ``?`` or ``%`` in them) and the
standard ``ON CONFLICT`` upsert both engines accept; a ``Dialect`` turns the placeholder into
psycopg's ``%s``. A connection of either driver runs them: ``db.execute(sql, params)`` returns a
cursor with ``fetchone`` and ``fetchall``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Dialect:
    """An engine's placeholder, and whether its writers lock the rows they number (PostgreSQL's
    ``SELECT ... FOR UPDATE``); SQLite's first write already holds the whole file's write lock."""

    placeholder: str
    locks_rows: bool

    def sql(self, text: str) -> str:
        return text if self.placeholder == "?" else text.replace("?", self.placeholder)

    def execute(self, db: Any, text: str, params: tuple[Any, ...] = ()) -> Any:
        """Run one statement on ``db`` in the caller's transaction; the cursor."""
        return db.execute(self.sql(text), params)


SQLITE = Dialect("?", locks_rows=False)
POSTGRES = Dialect("%s", locks_rows=True)

__all__ = ["POSTGRES", "SQLITE", "Dialect"]
