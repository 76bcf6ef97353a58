"""A test double of the OpenAI fine-tuning API: a small local HTTP server with the same endpoints
and payload shapes, so the job commands can be exercised with no network and no cost.

It is not a trainer. Jobs move through the real statuses (``validating_files`` -> ``queued`` ->
``running`` -> ``succeeded`` / ``failed`` / ``cancelled``) one step per poll: every
``GET /v1/fine_tuning/jobs/{id}`` or ``.../events`` request advances a job by one tick
(``steps_per_poll`` training steps while running), so a run is deterministic and as fast as
the client polls. The loss falls and the token accuracy rises along a fixed curve.

Endpoints (under ``/v1``): ``POST /files`` (multipart, ``purpose=fine-tune``; JSONL checked
line by line, a broken line is refused with HTTP 400 naming it), ``GET /files/{id}``,
``GET /files/{id}/content``; ``POST /fine_tuning/jobs``, ``GET /fine_tuning/jobs`` (newest
first; ``after``, ``limit``), ``GET /fine_tuning/jobs/{id}``, ``POST .../cancel``,
``GET .../events`` (newest first), ``GET .../checkpoints``; the result file
``step_metrics.csv`` (base64-encoded, as the hosted API serves it); ``GET /models`` and
``POST /chat/completions`` (streamed or not) for the base models and every fine-tuned model,
so ``ragbot ask`` can be pointed at it: a reply starts with ``[model-name]``.

Failures to test against, as the hosted API shows them:
- a job on a training file with fewer than 10 examples, or with lines that do not fit the
  method (``messages`` for supervised, ``input``/``preferred_output``/``non_preferred_output``
  for dpo), fails during ``validating_files`` with an ``error`` object;
- an unknown base model is refused (HTTP 400, ``model_not_available``);
- ``server.drop_event_requests = N`` closes the connection of the next N events requests
  without an answer (a network drop while following).

Run it by hand with ``python -m ragbot.testing.fake_finetune_server --port 8765`` and set
``base_url = "http://127.0.0.1:8765/v1"``; from Python or tests, ``with FakeFineTuningServer()
as server:`` serves on a free port in a background thread (``server.base_url``).
"""

from __future__ import annotations

import argparse
import base64
import email.parser
import email.policy
import json
import math
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

BASE_MODELS = (
    "gpt-4o-mini-2024-07-18",
    "gpt-4o-2024-08-06",
    "gpt-4.1-mini-2025-04-14",
    "gpt-4.1-nano-2025-04-14",
    "gpt-3.5-turbo-0125",
    "babbage-002",
    "davinci-002",
)
# Short names the API accepts for fine-tuning and resolves to a dated snapshot.
MODEL_ALIASES = {"gpt-4o-mini": "gpt-4o-mini-2024-07-18", "gpt-4.1-mini": "gpt-4.1-mini-2025-04-14"}
MIN_EXAMPLES = 10
FINAL_STATUSES = ("succeeded", "failed", "cancelled")


class ApiError(Exception):
    """An error answered in the API's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(18).replace("-", "x").replace("_", "y")[:24]


@dataclass
class _File:
    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
            "expires_at": None,
        }


@dataclass
class _Job:
    id: str
    model: str
    root_model: str  # the base snapshot under any earlier fine-tunes, used in the new model's name
    training_file: str
    validation_file: str | None
    suffix: str | None
    method: dict[str, Any]
    requested: dict[str, Any]  # hyperparameters as asked ("auto" or a value)
    seed: int
    created_at: int
    status: str = "validating_files"
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    error: dict[str, Any] | None = None
    trained_tokens: int | None = None
    result_files: list[str] = field(default_factory=list)
    step: int = 0
    total_steps: int = 0
    steps_per_epoch: int = 0
    tokens_per_epoch: int = 0
    continued: bool = False
    events: list[dict[str, Any]] = field(default_factory=list)  # oldest first
    checkpoints: list[dict[str, Any]] = field(default_factory=list)  # oldest first
    metrics: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self, organization: str) -> dict[str, Any]:
        method = {"type": self.method["type"], self.method["type"]: {"hyperparameters": self.hyperparameters}}
        return {
            "object": "fine_tuning.job",
            "id": self.id,
            "model": self.model,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "fine_tuned_model": self.fine_tuned_model,
            "organization_id": organization,
            "result_files": list(self.result_files),
            "status": self.status,
            "validation_file": self.validation_file,
            "training_file": self.training_file,
            "hyperparameters": self.hyperparameters or dict(self.requested),
            "method": method if self.hyperparameters else {"type": self.method["type"]},
            "trained_tokens": self.trained_tokens,
            "error": self.error,
            "seed": self.seed,
            "estimated_finish": None,
            "integrations": [],
            "metadata": None,
            "user_provided_suffix": self.suffix,
        }


class FakeFineTuningServer:
    """The fake API's state and its HTTP server; ``start()`` serves it from a daemon thread."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        steps_per_poll: int = 4,
        organization: str = "org-ragbot-fake",
        api_key: str | None = None,
    ):
        self.host, self.port = host, port
        self.steps_per_poll = steps_per_poll
        self.organization = organization
        self.api_key = api_key  # None: any bearer token is accepted, as local servers do
        self.drop_event_requests = 0
        self.files: dict[str, _File] = {}
        self.jobs: dict[str, _Job] = {}  # insertion order = creation order
        self.lock = threading.RLock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- running ------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> FakeFineTuningServer:
        server = self

        class Handler(_Handler):
            fake = server

        self._httpd = ThreadingHTTPServer((self.host, self.port), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        # a short poll interval: stop() waits for it, and tests start and stop a server each
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-finetune-api", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FakeFineTuningServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- files --------------------------------------------------------------------------------

    def upload_file(self, filename: str, purpose: str, content: bytes) -> dict[str, Any]:
        if purpose != "fine-tune":
            raise ApiError(400, f"This fake server only accepts purpose 'fine-tune', got {purpose!r}.", param="purpose")
        if not filename.endswith(".jsonl"):
            raise ApiError(400, "Invalid file format for Fine-Tuning API. Must be .jsonl", code="invalid_file_format")
        _parse_jsonl(content)  # raises ApiError naming the first broken line
        with self.lock:
            record = _File(_new_id("file-"), filename, purpose, content, int(time.time()))
            self.files[record.id] = record
        return record.to_dict()

    def file(self, file_id: str) -> _File:
        with self.lock:
            if file_id not in self.files:
                raise ApiError(404, f"No such File object: {file_id}", code="not_found", param="id")
            return self.files[file_id]

    # --- jobs ---------------------------------------------------------------------------------

    def create_job(self, body: dict[str, Any]) -> dict[str, Any]:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ApiError(400, "Missing required parameter: 'model'.", param="model")
        root, continued = self._base_of(model)
        training = body.get("training_file")
        if not training:
            raise ApiError(400, "Missing required parameter: 'training_file'.", param="training_file")
        for param in ("training_file", "validation_file"):
            if body.get(param) and body[param] not in self.files:
                raise ApiError(400, f"invalid {param}: {body[param]}", code="invalid_request_error", param=param)
        suffix = body.get("suffix")
        if suffix is not None and (not isinstance(suffix, str) or len(suffix) > 64):
            raise ApiError(400, "suffix must be a string of at most 64 characters", param="suffix")
        method = body.get("method") or {"type": "supervised"}
        kind = method.get("type")
        if kind not in ("supervised", "dpo"):
            raise ApiError(400, f"Unsupported fine-tuning method: {kind!r}", param="method.type")
        requested = {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"}
        if kind == "dpo":
            requested["beta"] = "auto"
        requested.update(body.get("hyperparameters") or {})
        requested.update((method.get(kind) or {}).get("hyperparameters") or {})
        _check_hyperparameters(requested)
        with self.lock:
            job = _Job(
                id=_new_id("ftjob-"),
                model=model,
                root_model=root,
                training_file=training,
                validation_file=body.get("validation_file"),
                suffix=suffix,
                method={"type": kind},
                requested=requested,
                seed=int(body.get("seed") or 42),
                created_at=int(time.time()),
                continued=continued,
            )
            self.jobs[job.id] = job
            self._event(job, f"Created fine-tuning job: {job.id}")
            return job.to_dict(self.organization)

    def _base_of(self, model: str) -> tuple[str, bool]:
        """The root snapshot of ``model`` and whether it is an earlier fine-tune (continued training)."""
        model = MODEL_ALIASES.get(model, model)
        if model in BASE_MODELS:
            return model, False
        with self.lock:
            for job in self.jobs.values():
                if job.fine_tuned_model == model and job.status == "succeeded":
                    return job.root_model, True
        raise ApiError(
            400,
            f"Model {model} is not available for fine-tuning or does not exist.",
            code="model_not_available",
            param="model",
        )

    def job(self, job_id: str) -> _Job:
        with self.lock:
            if job_id not in self.jobs:
                raise ApiError(404, f"Could not find fine-tuning job: {job_id}", code="fine_tune_not_found")
            return self.jobs[job_id]

    def poll_job(self, job_id: str) -> dict[str, Any]:
        with self.lock:
            job = self.job(job_id)
            self._advance(job)
            return job.to_dict(self.organization)

    def list_jobs(self, after: str | None, limit: int) -> dict[str, Any]:
        with self.lock:
            newest_first = [j.to_dict(self.organization) for j in reversed(self.jobs.values())]
        return _page(newest_first, after, limit)

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        with self.lock:
            job = self.job(job_id)
            if job.status in FINAL_STATUSES:
                raise ApiError(400, f"Job {job_id} is already {job.status}; it cannot be cancelled.", code="invalid")
            job.status, job.finished_at = "cancelled", int(time.time())
            self._event(job, "Fine-tuning job cancelled")
            return job.to_dict(self.organization)

    def list_events(self, job_id: str, after: str | None, limit: int) -> dict[str, Any]:
        with self.lock:
            job = self.job(job_id)
            self._advance(job)
            return _page(list(reversed(job.events)), after, limit)

    def list_checkpoints(self, job_id: str, after: str | None, limit: int) -> dict[str, Any]:
        with self.lock:
            return _page(list(reversed(self.job(job_id).checkpoints)), after, limit)

    # --- the simulated run --------------------------------------------------------------------

    def _event(self, job: _Job, message: str, level: str = "info", data: dict | None = None) -> None:
        job.events.append(
            {
                "object": "fine_tuning.job.event",
                "id": f"ftevent-{job.id[6:18]}{len(job.events):05d}",
                "created_at": int(time.time()),
                "level": level,
                "message": message,
                "data": data or {},
                "type": "metrics" if data else "message",
            }
        )

    def _advance(self, job: _Job) -> None:
        """One tick of the job's life; called on every poll."""
        if job.status == "validating_files":
            self._validate(job)
        elif job.status == "queued":
            job.status = "running"
            self._event(job, "Fine-tuning job started")
        elif job.status == "running":
            for _ in range(self.steps_per_poll):
                self._train_step(job)
                if job.step == job.total_steps:
                    self._succeed(job)
                    break

    def _validate(self, job: _Job) -> None:
        self._event(job, f"Validating training file: {job.training_file}")
        try:
            examples = _check_examples(self.files[job.training_file], job.method["type"])
            if job.validation_file:
                _check_examples(self.files[job.validation_file], job.method["type"], minimum=1)
        except ApiError as exc:
            job.status, job.finished_at = "failed", int(time.time())
            job.error = {"code": exc.code, "message": exc.message, "param": exc.param}
            self._event(job, f"The job failed due to an invalid training file. {exc.message}", level="error")
            return
        requested = job.requested
        epochs = 3 if requested["n_epochs"] == "auto" else int(requested["n_epochs"])
        batch = max(1, len(examples) // 50) if requested["batch_size"] == "auto" else int(requested["batch_size"])
        lr = 1.8 if requested["learning_rate_multiplier"] == "auto" else float(requested["learning_rate_multiplier"])
        job.hyperparameters = {"n_epochs": epochs, "batch_size": batch, "learning_rate_multiplier": lr}
        if job.method["type"] == "dpo":
            job.hyperparameters["beta"] = 0.1 if requested.get("beta", "auto") == "auto" else float(requested["beta"])
        job.steps_per_epoch = math.ceil(len(examples) / batch)
        job.total_steps = epochs * job.steps_per_epoch
        job.tokens_per_epoch = sum(max(1, len(line) // 4) for line in examples)
        job.status = "queued"
        self._event(job, "Files validated, moving job to queued state")

    def _train_step(self, job: _Job) -> None:
        job.step += 1
        row = _curve(job.step, job.total_steps, job.continued, bool(job.validation_file))
        job.metrics.append(row)
        data = {"step": job.step, "total_steps": job.total_steps, **{k: v for k, v in row.items() if k != "step"}}
        self._event(job, f"Step {job.step}/{job.total_steps}: training loss={row['train_loss']:.4f}", data=data)
        epochs = job.hyperparameters["n_epochs"]
        if (
            job.step % job.steps_per_epoch == 0
            and job.step // job.steps_per_epoch > epochs - 3
            and job.step < job.total_steps
        ):
            job.checkpoints.append(self._checkpoint(job, row))

    def _succeed(self, job: _Job) -> None:
        job.fine_tuned_model = self._model_name(job)
        job.checkpoints.append(self._checkpoint(job, job.metrics[-1]))
        job.trained_tokens = job.tokens_per_epoch * job.hyperparameters["n_epochs"]
        job.result_files = [self._result_file(job)]
        job.status, job.finished_at = "succeeded", int(time.time())
        self._event(job, f"New fine-tuned model created: {job.fine_tuned_model}")
        self._event(job, "The job has successfully completed")

    def _model_name(self, job: _Job) -> str:
        """``ft:<base snapshot>:<org>:<suffix>:<id>``, the hosted API's naming."""
        return f"ft:{job.root_model}:{self.organization.removeprefix('org-')}:{job.suffix or ''}:{job.id[6:14]}"

    def _checkpoint(self, job: _Job, row: dict[str, Any]) -> dict[str, Any]:
        return {
            "object": "fine_tuning.job.checkpoint",
            "id": f"ftckpt_{job.id[6:18]}{job.step:05d}",
            "created_at": int(time.time()),
            "fine_tuned_model_checkpoint": f"{self._model_name(job)}:ckpt-step-{job.step}",
            "fine_tuning_job_id": job.id,
            "step_number": job.step,
            "metrics": {"step": float(job.step), **{k: v for k, v in row.items() if k != "step"}},
        }

    def _result_file(self, job: _Job) -> str:
        lines = ["step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"]
        for row in job.metrics:
            valid = (row.get("valid_loss"), row.get("valid_mean_token_accuracy"))
            cells = [row["step"], row["train_loss"], row["train_mean_token_accuracy"], *valid]
            lines.append(",".join("" if c is None else str(c) for c in cells))
        content = base64.b64encode(("\n".join(lines) + "\n").encode())
        record = _File(_new_id("file-"), "step_metrics.csv", "fine-tune-results", content, int(time.time()))
        self.files[record.id] = record
        return record.id

    # --- models and chat ----------------------------------------------------------------------

    def model_names(self) -> list[str]:
        with self.lock:
            tuned = [j.fine_tuned_model for j in self.jobs.values() if j.fine_tuned_model]
            points = [c["fine_tuned_model_checkpoint"] for j in self.jobs.values() for c in j.checkpoints]
        return [*BASE_MODELS, *MODEL_ALIASES, *tuned, *points]

    def chat_reply(self, body: dict[str, Any]) -> tuple[str, str, dict[str, int]]:
        model = body.get("model")
        if model not in self.model_names():
            raise ApiError(
                404, f"The model `{model}` does not exist or you do not have access to it.", "model_not_found"
            )
        messages = body.get("messages") or []
        text = f"[{model}] A canned answer from the fake fine-tuning server, to a prompt of {len(messages)} messages."
        prompt_tokens = sum(max(1, len(str(m.get("content", ""))) // 4) for m in messages)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(text.split()), "total_tokens": 0}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return model, text, usage


def _curve(step: int, total: int, continued: bool, with_validation: bool) -> dict[str, Any]:
    """A plausible training curve: loss from ~2.1 (~1.0 when continuing a fine-tune) down to ~0.3."""
    progress = step / max(total, 1)
    start = 1.0 if continued else 2.1
    wobble = 0.04 * math.sin(step * 1.7)
    loss = 0.3 + (start - 0.3) * math.exp(-3.0 * progress) + wobble
    accuracy = min(0.99, 0.95 - 0.5 * math.exp(-3.0 * progress) * (start / 2.1) + wobble / 4)
    row: dict[str, Any] = {
        "step": step,
        "train_loss": round(loss, 5),
        "train_mean_token_accuracy": round(accuracy, 5),
    }
    if with_validation:
        row["valid_loss"] = round(loss + 0.08, 5)
        row["valid_mean_token_accuracy"] = round(accuracy - 0.03, 5)
    return row


def _model_object(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "system" if name in BASE_MODELS else "user"}


def _page(items: list[dict[str, Any]], after: str | None, limit: int) -> dict[str, Any]:
    """A cursor page as the API pages: the ``limit`` items following the one with id ``after``."""
    start = 0
    if after:
        ids = [item["id"] for item in items]
        start = ids.index(after) + 1 if after in ids else len(items)
    chunk = items[start : start + limit]
    return {"object": "list", "data": chunk, "has_more": start + limit < len(items)}


def _parse_jsonl(content: bytes) -> list[dict[str, Any]]:
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "Invalid file format: the file is not UTF-8 text.", code="invalid_file_format") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ApiError(
                400, f"Invalid file format: line {number} is not valid JSON ({exc.msg}).", code="invalid_file_format"
            ) from None
        if not isinstance(row, dict):
            raise ApiError(400, f"Invalid file format: line {number} is not a JSON object.", code="invalid_file_format")
        rows.append(row)
    if not rows:
        raise ApiError(400, "Invalid file format: the file is empty.", code="invalid_file_format")
    return rows


def _check_examples(file: _File, method: str, minimum: int = MIN_EXAMPLES) -> list[str]:
    """The file's examples as JSON text; ``ApiError`` (``invalid_training_file``) if they do not fit."""
    rows = _parse_jsonl(file.content)
    for number, row in enumerate(rows, start=1):
        if method == "dpo":
            ok = isinstance(row.get("input"), dict) and "preferred_output" in row and "non_preferred_output" in row
            need = "'input', 'preferred_output' and 'non_preferred_output'"
        else:
            ok = isinstance(row.get("messages"), list) or ("prompt" in row and "completion" in row)
            need = "'messages' (or 'prompt' and 'completion')"
        if not ok:
            raise ApiError(
                400,
                f"Example {number} of {file.id} is missing {need} for {method} fine-tuning.",
                code="invalid_training_file",
                param="training_file",
            )
    if len(rows) < minimum:
        raise ApiError(
            400,
            f"Training file {file.id} has {len(rows)} example(s), but must have at least {minimum} examples.",
            code="invalid_training_file",
            param="training_file",
        )
    return [json.dumps(row, ensure_ascii=False) for row in rows]


def _check_hyperparameters(values: dict[str, Any]) -> None:
    limits = {"n_epochs": (1, 50, int), "batch_size": (1, 256, int), "learning_rate_multiplier": (1e-6, 100.0, float)}
    for name, (low, high, kind) in limits.items():
        value = values.get(name, "auto")
        if value == "auto":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise ApiError(
                400, f"Invalid hyperparameter {name}: {value!r}; expected {kind.__name__} in [{low}, {high}]."
            )


class _Handler(BaseHTTPRequestHandler):
    """Routes requests to the ``fake`` server state; every answer is JSON (or SSE for streamed chat)."""

    fake: FakeFineTuningServer
    server_version = "ragbot-fake-finetune/1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read their own output
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, verb: str) -> None:
        url = urlsplit(self.path)
        parts = [p for p in url.path.split("/") if p]
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            if parts[:1] != ["v1"]:
                raise ApiError(404, f"Unknown path {url.path}", code="unknown_url")
            self._check_key()
            route = tuple(parts[1:])
            if verb == "POST" and route == ("files",):
                self._upload()
            elif verb == "GET" and len(route) == 2 and route[0] == "files":
                self._json(self.fake.file(route[1]).to_dict())
            elif verb == "GET" and len(route) == 3 and route[0] == "files" and route[2] == "content":
                self._raw(self.fake.file(route[1]).content)
            elif route[:2] == ("fine_tuning", "jobs"):
                self._jobs(verb, route[2:], query)
            elif verb == "GET" and route == ("models",):
                data = [
                    {"id": m, "object": "model", "created": 0, "owned_by": "system"} for m in self.fake.model_names()
                ]
                self._json({"object": "list", "data": data})
            elif verb == "POST" and route == ("chat", "completions"):
                self._chat()
            else:
                raise ApiError(404, f"Unknown request {verb} {url.path}", code="unknown_url")
        except ApiError as exc:
            self._json(exc.body(), status=exc.status)
        except _DropConnection:
            self.close_connection = True

    def _jobs(self, verb: str, rest: tuple[str, ...], query: dict[str, str]) -> None:
        limit = int(query.get("limit", 20))
        after = query.get("after")
        if verb == "POST" and not rest:
            self._json(self.fake.create_job(self._body()))
        elif verb == "GET" and not rest:
            self._json(self.fake.list_jobs(after, limit))
        elif verb == "GET" and len(rest) == 1:
            self._json(self.fake.poll_job(rest[0]))
        elif verb == "POST" and rest[1:] == ("cancel",):
            self._json(self.fake.cancel_job(rest[0]))
        elif verb == "GET" and rest[1:] == ("events",):
            self._maybe_drop()
            self._json(self.fake.list_events(rest[0], after, limit))
        elif verb == "GET" and rest[1:] == ("checkpoints",):
            self._json(self.fake.list_checkpoints(rest[0], after, limit))
        else:
            raise ApiError(404, f"Unknown request {verb} /v1/fine_tuning/jobs/{'/'.join(rest)}", code="unknown_url")

    def _maybe_drop(self) -> None:
        with self.fake.lock:
            if self.fake.drop_event_requests > 0:
                self.fake.drop_event_requests -= 1
                raise _DropConnection

    def _check_key(self) -> None:
        given = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not given or (self.fake.api_key is not None and given != self.fake.api_key):
            raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")

    def _upload(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        header = f"Content-Type: {self.headers.get('Content-Type', '')}\r\n\r\n".encode()
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(header + raw)
        fields: dict[str, Any] = {}
        filename = ""
        for part in message.iter_parts() if message.is_multipart() else []:
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True) or b""
            if part.get_filename():
                filename, fields[name] = part.get_filename(), payload
            else:
                fields[name] = payload.decode("utf-8")
        if "file" not in fields:
            raise ApiError(400, "Missing required parameter: 'file'.", param="file")
        self._json(self.fake.upload_file(filename, fields.get("purpose", ""), fields["file"]))

    def _chat(self) -> None:
        body = self._body()
        model, text, usage = self.fake.chat_reply(body)
        ident, created = f"chatcmpl-{secrets.token_hex(8)}", int(time.time())
        if not body.get("stream"):
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            reply = {"id": ident, "object": "chat.completion", "created": created, "model": model}
            self._json({**reply, "choices": [choice], "usage": usage})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        base = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model}
        pieces = [text[i : i + 16] for i in range(0, len(text), 16)]
        chunks = [{**base, "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]} for p in pieces]
        chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            chunks.append({**base, "choices": [], "usage": usage})
        for chunk in chunks:
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")
        self.close_connection = True

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except json.JSONDecodeError:
            raise ApiError(400, "We could not parse the JSON body of your request.") from None
        if not isinstance(body, dict):
            raise ApiError(400, "The request body must be a JSON object.")
        return body

    def _json(self, payload: dict[str, Any], status: int = 200) -> None:
        self._raw(json.dumps(payload, ensure_ascii=False).encode("utf-8"), status, "application/json")

    def _raw(self, data: bytes, status: int = 200, content_type: str = "application/octet-stream") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _DropConnection(Exception):
    """Close the connection without an answer (simulates a network drop)."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A local test double of the OpenAI fine-tuning API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--steps-per-poll", type=int, default=4, help="training steps a job advances per poll")
    args = parser.parse_args(argv)
    server = FakeFineTuningServer(args.host, args.port, steps_per_poll=args.steps_per_poll).start()
    print(f"Fake fine-tuning API on {server.base_url} (Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()


__all__ = ["FakeFineTuningServer", "BASE_MODELS", "MIN_EXAMPLES"]
