"""Local records of fine-tuning jobs, so the history survives the provider's retention and a lost
connection: which data trained which model, from which base, with which settings, and where.

One SQLite file (``data_home()/finetune/jobs.sqlite``). Each save is one transaction that merges
the new fields into the stored record, so a crash mid-write leaves the previous record and a
later partial update (a status change) never erases what an earlier one knew. The API key is
never stored: only the endpoint URL.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ragbot.config import data_home
from ragbot.errors import FinetuneError
from ragbot.migrations import Migrations

FINAL_STATUSES = ("succeeded", "failed", "cancelled")


@dataclass
class JobRecord:
    """What ragbot knows about one fine-tuning job."""

    id: str
    endpoint: str
    base_model: str
    status: str = "validating_files"
    method: str = "supervised"  # supervised (SFT) | dpo
    training_file: str | None = None  # the local path it was uploaded from
    training_file_id: str | None = None
    validation_file: str | None = None
    validation_file_id: str | None = None
    suffix: str | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    fine_tuned_model: str | None = None
    parent_job: str | None = None  # the job whose model this one continued from
    error: str | None = None
    trained_tokens: int | None = None
    result_files: list[str] = field(default_factory=list)
    created_at: float | None = None  # Unix seconds, from the server
    finished_at: float | None = None
    updated_at: float | None = None  # when this record last changed

    @property
    def finished(self) -> bool:
        return self.status in FINAL_STATUSES

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


MIGRATIONS = Migrations("job records")


@MIGRATIONS
def m001_initial(db: sqlite3.Connection) -> None:
    """The table from before migrations: ``IF NOT EXISTS``, so a file that code wrote is taken as is."""
    db.execute("CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, created_at REAL, record TEXT NOT NULL)")


class JobRecords:
    """The job history at ``path`` (default ``data_home()/finetune/jobs.sqlite``)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else data_home() / "finetune" / "jobs.sqlite"

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=30)
        except (OSError, sqlite3.Error) as exc:
            raise FinetuneError(f"cannot open the job records {self.path}: {exc}") from None
        try:
            MIGRATIONS.apply(db, self.path, FinetuneError)
            with db:  # one transaction: committed whole or not at all
                yield db
        except sqlite3.Error as exc:
            raise FinetuneError(f"cannot use the job records {self.path}: {exc}") from None
        finally:
            db.close()

    def save(self, job_id: str, **changes: Any) -> JobRecord:
        """Merge ``changes`` into the record of ``job_id`` (created if new); None values keep the old one."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")  # read-merge-write without another writer in between
            row = db.execute("SELECT record FROM jobs WHERE id = ?", (job_id,)).fetchone()
            data = json.loads(row[0]) if row else {"id": job_id}
            data.update({k: v for k, v in changes.items() if v is not None})
            data["updated_at"] = time.time()
            record = JobRecord.from_dict(data)
            db.execute(
                "INSERT OR REPLACE INTO jobs (id, created_at, record) VALUES (?, ?, ?)",
                (job_id, record.created_at or data["updated_at"], json.dumps(record.to_dict(), ensure_ascii=False)),
            )
        return record

    def get(self, job_id: str) -> JobRecord | None:
        with self._connect() as db:
            row = db.execute("SELECT record FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return JobRecord.from_dict(json.loads(row[0])) if row else None

    def all(self) -> list[JobRecord]:
        """Every record, newest first."""
        if not self.path.exists():
            return []
        with self._connect() as db:
            rows = db.execute("SELECT record FROM jobs ORDER BY created_at DESC, id").fetchall()
        return [JobRecord.from_dict(json.loads(r[0])) for r in rows]

    def by_model(self, fine_tuned_model: str) -> JobRecord | None:
        """The job that produced ``fine_tuned_model``, if it is recorded here."""
        return next((r for r in self.all() if r.fine_tuned_model == fine_tuned_model), None)


__all__ = ["FINAL_STATUSES", "JobRecord", "JobRecords"]
