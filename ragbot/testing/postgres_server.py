"""A throwaway PostgreSQL server, for tests and benchmarks of the PostgreSQL conversation store.

Debian's ``initdb`` and ``pg_ctl`` (``apt-get install postgresql``) make a cluster in a temporary
folder, reached over a Unix socket in that folder (no TCP port). ``initdb`` refuses to run as
root, so as root the server runs as the ``postgres`` user (which Debian's package creates) in a
folder it owns. Trust authentication: for throwaway data only.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

INSTALL = "install PostgreSQL's server (Debian: apt-get install postgresql)"


def find_binaries() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``: on PATH, else the newest /usr/lib/postgresql/*/bin."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(os.path.realpath(on_path)).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


class PostgresServer:
    """One cluster in ``root``: ``url`` for the ``postgres`` database, ``new_database()`` for a fresh one;
    ``stop()`` and ``start()`` it to see what a client does while it is away; ``remove()`` at the end.
    ``durable=False`` (tests) turns off fsync: faster, and a crash of the machine may lose data."""

    def __init__(self, bin_dir: Path | None = None, durable: bool = False):
        bin_dir = bin_dir or find_binaries()
        if bin_dir is None:
            raise RuntimeError(
                f"PostgreSQL's initdb and pg_ctl are not on PATH nor in /usr/lib/postgresql/*/bin: {INSTALL}"
            )
        self.bin_dir = bin_dir
        self.durable = durable
        self.root = Path(tempfile.mkdtemp(prefix="ragbot-pg-"))  # short: a socket path has ~100 characters
        self.data = self.root / "data"
        self.port = 5432  # names the socket file only: listen_addresses is empty
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            self._as_user = ["runuser", "-u", "postgres", "--"]
        self._names = itertools.count(1)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        self.start()

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            [*self._as_user, str(self.bin_dir / tool), *args], capture_output=True, text=True, timeout=60
        )
        if done.returncode:
            raise RuntimeError(f"{tool} {' '.join(args)} failed ({done.returncode}): {done.stderr or done.stdout}")

    def url_of(self, database: str) -> str:
        return f"postgresql://postgres@/{database}?host={self.root}&port={self.port}"

    @property
    def url(self) -> str:
        return self.url_of("postgres")

    @property
    def running(self) -> bool:
        status = subprocess.run([*self._as_user, str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "status"],
                                capture_output=True, timeout=30)  # fmt: skip
        return status.returncode == 0

    def start(self) -> None:
        """Start the server (it is running when this returns)."""
        options = f"-k {self.root} -p {self.port} -c listen_addresses=''"
        if not self.durable:
            options += " -c fsync=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-o", options, "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def new_database(self) -> str:
        """The URL of a new, empty database (a test's own, so tests never see each other's conversations)."""
        import psycopg

        name = f"t{next(self._names)}"
        with psycopg.connect(self.url, autocommit=True) as db:
            db.execute(f"CREATE DATABASE {name}")
        return self.url_of(name)

    def remove(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        except RuntimeError:
            pass  # already stopped
        shutil.rmtree(self.root, ignore_errors=True)


__all__ = ["INSTALL", "PostgresServer", "find_binaries"]
