"""The ``postgres_server`` fixture: one throwaway PostgreSQL server (``ragbot.testing.postgres_server``) for
the whole test session, stopped and removed at the end. Without PostgreSQL's server binaries it fails in
CI (``.ci/run`` installs the package) and skips elsewhere, saying how to install them.
"""

from __future__ import annotations

import os
import pwd

import pytest

from ragbot.testing.postgres_server import INSTALL, PostgresServer, find_binaries


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server for the whole test session."""
    bin_dir = find_binaries()
    message = None
    if bin_dir is None:
        message = f"PostgreSQL's initdb and pg_ctl were not found on PATH nor in /usr/lib/postgresql/*/bin: {INSTALL}"
    elif os.geteuid() == 0 and not _has_user("postgres"):
        message = f"tests run as root and initdb refuses root, but there is no 'postgres' user to run it as: {INSTALL}"
    if message:
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    server = PostgresServer(bin_dir)
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture(autouse=True)
def postgres_stores_closed(monkeypatch):
    """Fail the test that leaves a PostgreSQL conversation store open: its pool, collected by the garbage
    collector later, would print an unraisable exception in the middle of an unrelated test."""
    try:
        from ragbot.storage.postgres import PostgresStore
    except ImportError:  # pragma: no cover - without psycopg no store is opened
        yield
        return
    opened = []
    init = PostgresStore.__init__

    def recorded(self, *args, **kwargs):
        opened.append(self)
        init(self, *args, **kwargs)

    monkeypatch.setattr(PostgresStore, "__init__", recorded)
    yield
    leaked = [s for s in opened if getattr(s, "_pool", None) is not None and not s._pool.closed]
    for store in leaked:
        store.close()
    if leaked:
        where = ", ".join(s.location for s in leaked)
        pytest.fail(f"{len(leaked)} PostgreSQL conversation store(s) left open ({where}): close what the test opens")
