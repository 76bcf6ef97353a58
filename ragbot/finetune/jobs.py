"""Fine-tuning jobs on any OpenAI-compatible fine-tuning API, through the ``openai`` package.

``FineTuningJobs`` uploads training files, creates jobs (SFT or DPO; epochs, batch size,
learning-rate multiplier; optionally continuing from an earlier fine-tuned model), follows
their events, lists, cancels, and reads the training metrics. Every job it sees is kept in
the local ``JobRecords``, so the history and the lineage (which job continued which) survive.

The endpoint is ``base_url`` from the settings (default: OpenAI's); the key comes from the
``OPENAI_API_KEY`` environment variable only and is never stored. Failures become
``FinetuneError``/``TrainingFileError`` messages that name the job, the model or the file.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import csv
import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragbot.errors import FinetuneError, TrainingFileError
from ragbot.models import openai_api
from ragbot.storage.jobs import JobRecord, JobRecords

OPENAI_ENDPOINT = openai_api.OPENAI_ENDPOINT
METHODS = {"sft": "supervised", "supervised": "supervised", "dpo": "dpo"}
DEFAULT_POLL_SECONDS = 5.0


@dataclass(frozen=True)
class Hyperparameters:
    """Training knobs; None leaves the choice to the provider ("auto")."""

    epochs: int | None = None
    batch_size: int | None = None
    lr_multiplier: float | None = None
    beta: float | None = None  # DPO only: how far the model may move from the reference

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise FinetuneError(f"{name} must be at least 1; got {name}={value}")
        for name in ("lr_multiplier", "beta"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise FinetuneError(f"{name} must be greater than 0; got {name}={value}")

    def to_api(self, method: str) -> dict[str, Any]:
        values = {
            "n_epochs": self.epochs,
            "batch_size": self.batch_size,
            "learning_rate_multiplier": self.lr_multiplier,
        }
        if method == "dpo":
            values["beta"] = self.beta
        return {k: v for k, v in values.items() if v is not None}


@dataclass(frozen=True)
class JobEvent:
    """One event of a job: a message, or (``step`` set) the metrics of a training step."""

    id: str
    created_at: int
    level: str
    message: str
    step: int | None = None
    total_steps: int | None = None
    train_loss: float | None = None
    train_accuracy: float | None = None
    valid_loss: float | None = None
    valid_accuracy: float | None = None

    @property
    def is_metrics(self) -> bool:
        return self.step is not None


@dataclass(frozen=True)
class StepMetrics:
    """Loss and mean token accuracy at one training step (validation ones when a validation file was given)."""

    step: int
    train_loss: float | None = None
    train_accuracy: float | None = None
    valid_loss: float | None = None
    valid_accuracy: float | None = None


EventHandler = Callable[[JobEvent, JobRecord], None]


class FineTuningJobs:
    """Fine-tuning jobs at one endpoint, recorded locally.

    A job created elsewhere can still be followed or shown by id; a recorded job is always
    asked of the endpoint it was created at.
    """

    def __init__(
        self,
        base_url: str | None = None,
        records: JobRecords | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        poll_seconds: float = DEFAULT_POLL_SECONDS,
    ):
        self.endpoint = (base_url or OPENAI_ENDPOINT).rstrip("/")
        self.records = records or JobRecords()
        self.timeout = timeout
        self.max_retries = max_retries
        self.poll_seconds = poll_seconds
        self._clients: dict[str, Any] = {}

    @classmethod
    def from_settings(cls, settings, **kwargs: Any) -> FineTuningJobs:
        """Jobs at the settings' ``base_url``, with its timeout and retries."""
        kwargs.setdefault("timeout", settings.request_timeout)
        kwargs.setdefault("max_retries", settings.max_retries)
        return cls(settings.base_url, **kwargs)

    # --- creating -----------------------------------------------------------------------------

    def upload(self, path: str | Path) -> str:
        """Upload a JSONL training file (purpose ``fine-tune``); returns the file id."""
        path = Path(path)
        if not path.is_file():
            raise TrainingFileError(f"training file {path} does not exist")
        if path.stat().st_size == 0:
            raise TrainingFileError(f"training file {path} is empty; build one with `ragbot finetune prepare`")
        with self._calling(self.endpoint, f"upload {path}", training_file=path):
            with open(path, "rb") as fh:
                uploaded = self._client(self.endpoint).files.create(file=(path.name, fh), purpose="fine-tune")
        return uploaded.id

    def create(
        self,
        training_file: str | Path,
        model: str | None = None,
        *,
        validation_file: str | Path | None = None,
        suffix: str | None = None,
        hyperparameters: Hyperparameters | None = None,
        method: str = "sft",
        continue_from: str | None = None,
    ) -> JobRecord:
        """Upload the files and start a job on ``model``, or on the model of ``continue_from``
        (a job id or a fine-tuned model name) to train it further with new data."""
        if method not in METHODS:
            raise FinetuneError(f"unknown method {method!r}; choose sft (supervised) or dpo")
        api_method = METHODS[method]
        parent = None
        if continue_from:
            earlier, parent = self.resolve_base(continue_from)
            if model and model != earlier:
                raise FinetuneError(
                    f"--model {model} and --from {continue_from} disagree: continuing trains {earlier}; drop --model"
                )
            model = earlier
        if not model:
            raise FinetuneError("no base model: give --model (e.g. gpt-4o-mini) or --from an earlier job")
        hyperparameters = hyperparameters or Hyperparameters()
        training_id = self.upload(training_file)
        validation_id = self.upload(validation_file) if validation_file else None
        kwargs: dict[str, Any] = {
            "model": model,
            "training_file": training_id,
            "method": {"type": api_method, api_method: {"hyperparameters": hyperparameters.to_api(api_method)}},
        }
        if validation_id:
            kwargs["validation_file"] = validation_id
        if suffix:
            kwargs["suffix"] = suffix
        with self._calling(self.endpoint, f"create a job on {model}", model=model):
            job = self._client(self.endpoint).fine_tuning.jobs.create(**kwargs)
        return self.records.save(
            job.id,
            endpoint=self.endpoint,
            training_file=str(Path(training_file).resolve()),
            validation_file=str(Path(validation_file).resolve()) if validation_file else None,
            parent_job=parent,
            **_record_fields(job),
        )

    def resolve_base(self, job_or_model: str) -> tuple[str, str | None]:
        """(model to train, parent job id) for ``--from``: a job id gives its fine-tuned model."""
        if self.is_job_id(job_or_model):
            return self.fine_tuned_model(job_or_model), job_or_model
        parent = self.records.by_model(job_or_model)
        return job_or_model, parent.id if parent else None

    def is_job_id(self, text: str) -> bool:
        """A recorded job id, or one in the API's ``ftjob-`` form."""
        return text.startswith("ftjob-") or self.records.get(text) is not None

    def fine_tuned_model(self, job_id: str) -> str:
        """The model a job produced; ``FinetuneError`` if it has not succeeded (yet)."""
        record = self.records.get(job_id)
        if record is None or not (record.status == "succeeded" and record.fine_tuned_model):
            record = self.refresh(job_id)
        if record.status != "succeeded" or not record.fine_tuned_model:
            why = f": {record.error}" if record.error else ""
            hint = f"; wait for it with `ragbot finetune follow {job_id}`" if not record.finished else ""
            raise FinetuneError(f"job {job_id} has no fine-tuned model: it is {record.status}{why}{hint}")
        return record.fine_tuned_model

    # --- watching -----------------------------------------------------------------------------

    def refresh(self, job_id: str) -> JobRecord:
        """The job as the server sees it now, saved to the local record."""
        endpoint = self._endpoint_of(job_id)
        with self._calling(endpoint, f"look up job {job_id}", job_id=job_id):
            job = self._client(endpoint).fine_tuning.jobs.retrieve(job_id)
        return self.records.save(job.id, endpoint=endpoint, **_record_fields(job))

    def follow(self, job_id: str, on_event: EventHandler | None = None, poll_seconds: float | None = None) -> JobRecord:
        """Poll the job until it ends, passing each new event (oldest first) to ``on_event``.

        Returns the final record; raises ``FinetuneError`` if the job failed on the server or the
        connection was lost (the job itself goes on; following again picks up from the server).
        Ctrl-C (``KeyboardInterrupt``) stops following, not the job.
        """
        poll = self.poll_seconds if poll_seconds is None else poll_seconds
        endpoint = self._endpoint_of(job_id)
        seen: set[str] = set()
        record = self.refresh(job_id)
        try:
            while True:
                for event in self._new_events(endpoint, job_id, seen):
                    if on_event:
                        on_event(event, record)
                if record.finished:
                    break
                time.sleep(poll)
                record = self.refresh(job_id)
        except FinetuneError as exc:
            if not isinstance(exc, _ConnectionLost):
                raise
            raise FinetuneError(
                f"lost the connection to {endpoint} while following job {job_id} ({exc}); the job goes on "
                f"on the server and its local record is kept. Resume with: ragbot finetune follow {job_id}"
            ) from None
        if record.status == "failed":
            raise FinetuneError(f"job {job_id} failed on the server: {record.error or 'no reason given'}")
        return record

    def events(self, job_id: str) -> list[JobEvent]:
        """All events of a job so far, oldest first."""
        return self._new_events(self._endpoint_of(job_id), job_id, set())

    def _new_events(self, endpoint: str, job_id: str, seen: set[str]) -> list[JobEvent]:
        """Events not in ``seen`` (which is updated), oldest first; the API pages them newest first."""
        fresh = []
        with self._calling(endpoint, f"read the events of job {job_id}", job_id=job_id):
            page = self._client(endpoint).fine_tuning.jobs.list_events(job_id, limit=100)
            while True:
                known = [e for e in page.data if e.id in seen]
                fresh += [e for e in page.data if e.id not in seen]
                if known or not page.has_next_page():
                    break
                page = page.get_next_page()
        seen.update(e.id for e in fresh)
        return [_event(e) for e in reversed(fresh)]

    # --- listing, metrics, cancelling ---------------------------------------------------------

    def list_jobs(self, limit: int = 20) -> list[JobRecord]:
        """The newest ``limit`` jobs at the endpoint, merged with what the local records know."""
        with self._calling(self.endpoint, "list jobs"):
            page = self._client(self.endpoint).fine_tuning.jobs.list(limit=limit)
        listed = []
        for job in page.data[:limit]:
            if self.records.get(job.id) is not None:
                listed.append(self.records.save(job.id, **_record_fields(job)))
            else:  # made elsewhere: shown, not recorded
                listed.append(JobRecord.from_dict({"id": job.id, "endpoint": self.endpoint, **_record_fields(job)}))
        return listed

    def cancel(self, job_id: str) -> JobRecord:
        endpoint = self._endpoint_of(job_id)
        with self._calling(endpoint, f"cancel job {job_id}", job_id=job_id):
            job = self._client(endpoint).fine_tuning.jobs.cancel(job_id)
        return self.records.save(job.id, endpoint=endpoint, **_record_fields(job))

    def metrics(self, job_id: str) -> list[StepMetrics]:
        """Loss and token accuracy per step: from the result file once the job succeeded, else
        from the metrics events so far."""
        record = self.refresh(job_id)
        endpoint = self._endpoint_of(job_id)
        if record.result_files:
            file_id = record.result_files[0]
            with self._calling(endpoint, f"download the results {file_id} of job {job_id}", job_id=job_id):
                text = self._client(endpoint).files.content(file_id).text
            return parse_step_metrics(text)
        return [
            StepMetrics(e.step, e.train_loss, e.train_accuracy, e.valid_loss, e.valid_accuracy)
            for e in self.events(job_id)
            if e.step is not None
        ]

    # --- plumbing -----------------------------------------------------------------------------

    def _endpoint_of(self, job_id: str) -> str:
        record = self.records.get(job_id)
        return record.endpoint if record and record.endpoint else self.endpoint

    def _client(self, endpoint: str):
        if endpoint not in self._clients:
            no_key = FinetuneError(
                "no API key: set the OPENAI_API_KEY environment variable, or set base_url to an "
                "OpenAI-compatible fine-tuning server"
            )
            self._clients[endpoint] = openai_api.client(
                endpoint, timeout=self.timeout, max_retries=self.max_retries, no_key=no_key
            )
        return self._clients[endpoint]

    @contextlib.contextmanager
    def _calling(
        self,
        endpoint: str,
        doing: str,
        job_id: str | None = None,
        model: str | None = None,
        training_file: Path | None = None,
    ) -> Iterator[None]:
        """Turn the openai client's exceptions into one-line messages naming the job, model or file."""
        import openai

        try:
            yield
        except openai.APIConnectionError as exc:  # includes timeouts
            raise _ConnectionLost(openai_api.error_message(exc, endpoint, doing)) from None
        except openai.APIStatusError as exc:
            message = openai_api.redact(openai_api.server_message(exc))
            code = getattr(exc, "code", None)
            if job_id and exc.status_code == 404:
                raise FinetuneError(
                    f"no fine-tuning job {job_id} at {endpoint}; `ragbot finetune list` shows the jobs there"
                ) from None
            if model and (exc.status_code == 404 or code in ("model_not_available", "model_not_found")):
                raise FinetuneError(
                    f"model {model!r} does not exist or cannot be fine-tuned at {endpoint}: {message}"
                ) from None
            if training_file and exc.status_code == 400:
                raise TrainingFileError(f"{endpoint} refused training file {training_file}: {message}") from None
            raise FinetuneError(openai_api.error_message(exc, endpoint, doing)) from None


class _ConnectionLost(FinetuneError):
    """The endpoint could not be reached (or stopped answering)."""


def _record_fields(job) -> dict[str, Any]:
    """The fields of a ``fine_tuning.job`` object that a ``JobRecord`` keeps."""
    method = getattr(job, "method", None)
    kind = getattr(method, "type", None) or "supervised"
    chosen = getattr(getattr(method, kind, None), "hyperparameters", None) or job.hyperparameters
    hyperparameters = chosen.model_dump(exclude_none=True) if chosen is not None else {}
    error = job.error
    return {
        "base_model": job.model,
        "status": job.status,
        "method": kind,
        "training_file_id": job.training_file,
        "validation_file_id": job.validation_file,
        "suffix": (job.model_extra or {}).get("user_provided_suffix"),
        "hyperparameters": hyperparameters,
        "fine_tuned_model": job.fine_tuned_model,
        "error": f"{error.message} ({error.code})" if error and error.message else None,
        "trained_tokens": job.trained_tokens,
        "result_files": list(job.result_files or []),
        "created_at": job.created_at,
        "finished_at": job.finished_at,
    }


def _event(event) -> JobEvent:
    data = event.data if isinstance(event.data, dict) else {}
    step = data.get("step")
    return JobEvent(
        id=event.id,
        created_at=event.created_at,
        level=event.level,
        message=event.message,
        step=int(step) if step is not None else None,
        total_steps=data.get("total_steps"),
        train_loss=data.get("train_loss"),
        train_accuracy=data.get("train_mean_token_accuracy"),
        valid_loss=data.get("valid_loss"),
        valid_accuracy=data.get("valid_mean_token_accuracy"),
    )


def parse_step_metrics(text: str) -> list[StepMetrics]:
    """Rows of a job's result file (``step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy``).

    The hosted API serves the CSV base64-encoded; plain CSV is accepted too.
    """
    if not text.lstrip().startswith("step"):
        try:
            text = base64.b64decode(text.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise FinetuneError("the job's result file is neither CSV nor base64-encoded CSV") from None

    def number(row: dict[str, str], *names: str) -> float | None:
        for name in names:
            if row.get(name) not in (None, ""):
                return float(row[name])
        return None

    rows = []
    for row in csv.DictReader(io.StringIO(text)):
        if not row.get("step"):
            continue
        rows.append(
            StepMetrics(
                step=int(float(row["step"])),
                train_loss=number(row, "train_loss"),
                train_accuracy=number(row, "train_accuracy", "train_mean_token_accuracy"),
                valid_loss=number(row, "valid_loss"),
                valid_accuracy=number(row, "valid_mean_token_accuracy", "valid_accuracy"),
            )
        )
    return sorted(rows, key=lambda m: m.step)


def format_metrics_table(metrics: list[StepMetrics]) -> str:
    """A fixed-width table, one line per step; validation columns only when there are values."""
    with_valid = any(m.valid_loss is not None for m in metrics)
    header = ["step", "train_loss", "train_acc"] + (["valid_loss", "valid_acc"] if with_valid else [])
    lines = ["  ".join(f"{h:>10}" for h in header)]
    for m in metrics:
        cells = [m.train_loss, m.train_accuracy] + ([m.valid_loss, m.valid_accuracy] if with_valid else [])
        lines.append("  ".join([f"{m.step:>10}", *(f"{c:>10.4f}" if c is not None else f"{'-':>10}" for c in cells)]))
    return "\n".join(lines)


def plot_metrics(metrics: list[StepMetrics], path: str | Path, title: str = "") -> Path:
    """Loss and mean token accuracy per step (train, and validation if any) as a PNG."""
    if not metrics:
        raise FinetuneError("no training metrics yet: the job has not reported a training step")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    steps = [m.step for m in metrics]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, attr, label in ((loss_ax, "loss", "loss"), (acc_ax, "accuracy", "mean token accuracy")):
        for split in ("train", "valid"):
            values = [getattr(m, f"{split}_{attr}") for m in metrics]
            if any(v is not None for v in values):
                ax.plot(steps, [float("nan") if v is None else v for v in values], label=split, marker=".")
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    except OSError as exc:
        raise FinetuneError(f"cannot write the plot {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
    return path


__all__ = [
    "FineTuningJobs",
    "Hyperparameters",
    "JobEvent",
    "StepMetrics",
    "format_metrics_table",
    "parse_step_metrics",
    "plot_metrics",
]
