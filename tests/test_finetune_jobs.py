"""Fine-tuning jobs against ``ragbot.testing.fake_finetune_server``: a real HTTP server on 127.0.0.1 with the
OpenAI fine-tuning endpoints and payloads, talked to by the real ``openai`` client (no mocks).

The fake advances a job by a few training steps per poll, so a whole job runs in well under a
second when followed with ``poll_seconds=0``.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from openai import OpenAI

from ragbot.errors import FinetuneError, TrainingFileError
from ragbot.finetune.jobs import FineTuningJobs, Hyperparameters, format_metrics_table, parse_step_metrics
from ragbot.storage.jobs import JobRecords
from ragbot.testing.fake_finetune_server import FakeFineTuningServer

from helpers import CliResult, run_cli
from llama_server import free_port

SECRET = "sk-test-do-not-store-0123456789"


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    """A key the client sends; the records must never contain it."""
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)


@pytest.fixture
def api():
    with FakeFineTuningServer(steps_per_poll=8) as server:
        yield server


@pytest.fixture
def jobs(api) -> FineTuningJobs:
    return FineTuningJobs(api.base_url, poll_seconds=0, max_retries=0)


def write_examples(path: Path, count: int, topic: str = "rivers") -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(count):
            messages = [
                {"role": "system", "content": "Answer from the passages."},
                {"role": "user", "content": f"Question {i} about {topic}?"},
                {"role": "assistant", "content": f"Answer {i} about {topic}."},
            ]
            fh.write(json.dumps({"messages": messages}) + "\n")
    return path


def write_preferences(path: Path, count: int) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(count):
            row = {
                "input": {"messages": [{"role": "user", "content": f"How long is river {i}?"}]},
                "preferred_output": [{"role": "assistant", "content": f"River {i} is {100 + i} km long [1]."}],
                "non_preferred_output": [{"role": "assistant", "content": "I don't know."}],
            }
            fh.write(json.dumps(row) + "\n")
    return path


@pytest.fixture
def train_file(tmp_path) -> Path:
    return write_examples(tmp_path / "train.jsonl", 12)


def cli(api, *args: str, env: dict | None = None) -> CliResult:
    return run_cli("finetune", *args, "--base-url", api.base_url, env=env)


def assert_one_line_error(result: CliResult, *fragments: str) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("ragbot: error: ")
    for fragment in fragments:
        assert fragment in line, line
    return line


# --- the lifecycle through the Python API ----------------------------------------------------------


def test_create_and_follow_to_success_shows_progress_and_records_the_model(api, jobs, train_file):
    record = jobs.create(
        train_file, "gpt-4o-mini", suffix="kb", hyperparameters=Hyperparameters(epochs=2, batch_size=3)
    )
    assert record.status == "validating_files" and record.id.startswith("ftjob-")

    seen = []
    final = jobs.follow(record.id, on_event=lambda event, rec: seen.append(event))

    assert final.status == "succeeded"
    assert final.fine_tuned_model == api.jobs[record.id].fine_tuned_model
    assert final.fine_tuned_model.startswith("ft:gpt-4o-mini-2024-07-18:") and ":kb:" in final.fine_tuned_model
    messages = [e.message for e in seen if not e.is_metrics]
    assert messages[0] == f"Created fine-tuning job: {record.id}"
    assert "Files validated, moving job to queued state" in messages
    assert messages[-1] == "The job has successfully completed"
    steps = [e.step for e in seen if e.is_metrics]
    assert steps == list(range(1, 9))  # 12 examples / batch 3 = 4 steps per epoch, 2 epochs
    assert {e.total_steps for e in seen if e.is_metrics} == {8}
    assert len({e.id for e in seen}) == len(seen)  # each event passed once

    stored = JobRecords().get(record.id)
    assert stored.status == "succeeded" and stored.fine_tuned_model == final.fine_tuned_model
    assert stored.base_model == "gpt-4o-mini" and stored.suffix == "kb" and stored.method == "supervised"
    assert stored.hyperparameters["n_epochs"] == 2 and stored.hyperparameters["batch_size"] == 3
    assert stored.training_file == str(train_file.resolve())
    assert stored.training_file_id in api.files and stored.endpoint == api.base_url
    assert stored.created_at and stored.finished_at and stored.trained_tokens


def test_the_api_key_is_never_written_to_the_records(api, jobs, train_file):
    jobs.follow(jobs.create(train_file, "gpt-4o-mini").id)
    path = JobRecords().path
    assert path.is_file()
    assert SECRET.encode() not in path.read_bytes()


def test_dpo_job_sends_the_method_and_beta(api, jobs, tmp_path):
    record = jobs.create(
        write_preferences(tmp_path / "pairs.jsonl", 10),
        "gpt-4o-mini",
        method="dpo",
        hyperparameters=Hyperparameters(beta=0.2),
    )
    final = jobs.follow(record.id)
    assert final.status == "succeeded" and final.method == "dpo"
    assert final.hyperparameters["beta"] == 0.2
    assert api.jobs[record.id].method == {"type": "dpo"}


def test_sft_examples_sent_as_dpo_fail_naming_the_example(jobs, train_file):
    record = jobs.create(train_file, "gpt-4o-mini", method="dpo")
    with pytest.raises(FinetuneError, match=rf"job {record.id} failed on the server: Example 1 .* missing 'input'"):
        jobs.follow(record.id)


def test_continue_from_an_earlier_job_trains_its_model_and_records_the_parent(api, jobs, train_file, tmp_path):
    first = jobs.follow(jobs.create(train_file, "gpt-4o-mini", suffix="v1").id)
    more = write_examples(tmp_path / "more.jsonl", 10, topic="tea")

    second = jobs.create(more, continue_from=first.id, suffix="v2")

    assert second.base_model == first.fine_tuned_model
    assert second.parent_job == first.id
    assert api.jobs[second.id].model == first.fine_tuned_model  # what the server was asked to train
    done = jobs.follow(second.id)
    assert done.status == "succeeded" and ":v2:" in done.fine_tuned_model
    assert JobRecords().get(second.id).parent_job == first.id
    # Continuing starts from a trained model: the first loss is lower than the first job's.
    assert jobs.metrics(second.id)[0].train_loss < jobs.metrics(first.id)[0].train_loss


def test_continue_from_a_model_name_finds_the_parent_job(jobs, train_file):
    first = jobs.follow(jobs.create(train_file, "gpt-4o-mini").id)
    second = jobs.create(train_file, continue_from=first.fine_tuned_model)
    assert second.base_model == first.fine_tuned_model and second.parent_job == first.id


def test_continue_from_a_job_that_did_not_succeed_says_why(jobs, train_file, tmp_path):
    failed = jobs.create(write_examples(tmp_path / "few.jsonl", 3), "gpt-4o-mini")
    with pytest.raises(FinetuneError):
        jobs.follow(failed.id)
    with pytest.raises(FinetuneError, match=rf"job {failed.id} has no fine-tuned model: it is failed: .*at least 10"):
        jobs.create(train_file, continue_from=failed.id)


def test_list_returns_newest_first_and_pages(api, jobs, train_file):
    ids = [jobs.create(train_file, "gpt-4o-mini").id for _ in range(3)]
    assert [r.id for r in jobs.list_jobs()] == ids[::-1]
    assert [r.id for r in jobs.list_jobs(limit=2)] == ids[:0:-1]
    # The server's cursor pagination, as the openai client walks it.
    client = OpenAI(api_key="x", base_url=api.base_url)
    page = client.fine_tuning.jobs.list(limit=2)
    assert [j.id for j in page.data] == ids[:0:-1] and page.has_next_page()
    assert [j.id for j in page.get_next_page().data] == ids[:1]


def test_metrics_come_from_the_result_file_with_validation_columns(api, jobs, train_file, tmp_path):
    valid = write_examples(tmp_path / "valid.jsonl", 4)
    record = jobs.follow(jobs.create(train_file, "gpt-4o-mini", validation_file=valid).id)
    rows = jobs.metrics(record.id)
    server_rows = api.jobs[record.id].metrics
    assert [r.step for r in rows] == [r["step"] for r in server_rows] == list(range(1, 37))
    assert rows[0].train_loss == server_rows[0]["train_loss"] and rows[-1].train_loss == server_rows[-1]["train_loss"]
    assert rows[-1].train_loss < rows[0].train_loss and rows[-1].train_accuracy > rows[0].train_accuracy
    assert rows[-1].valid_loss == server_rows[-1]["valid_loss"]
    table = format_metrics_table(rows).splitlines()
    assert table[0].split() == ["step", "train_loss", "train_acc", "valid_loss", "valid_acc"]
    assert table[1].split() == ["1", *(f"{v:.4f}" for v in (rows[0].train_loss, rows[0].train_accuracy,
                                                            rows[0].valid_loss, rows[0].valid_accuracy))]  # fmt: skip


def test_metrics_of_a_running_job_come_from_its_events(api, jobs, train_file):
    record = jobs.create(train_file, "gpt-4o-mini")
    for _ in range(4):  # validating -> queued -> running -> some steps
        jobs.refresh(record.id)
    rows = jobs.metrics(record.id)
    assert jobs.records.get(record.id).status == "running"
    assert 0 < len(rows) < 36 and [r.step for r in rows] == list(range(1, len(rows) + 1))


def test_result_file_is_read_whether_base64_or_plain():
    plain = "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy\n1,2.5,0.4,,\n2,2.0,0.5,2.2,0.45\n"
    import base64

    for text in (plain, base64.b64encode(plain.encode()).decode()):
        rows = parse_step_metrics(text)
        assert [(r.step, r.train_loss, r.valid_loss) for r in rows] == [(1, 2.5, None), (2, 2.0, 2.2)]


def test_cancel_stops_the_job_on_the_server(api, jobs, train_file):
    record = jobs.create(train_file, "gpt-4o-mini")
    cancelled = jobs.cancel(record.id)
    assert cancelled.status == "cancelled" and api.jobs[record.id].status == "cancelled"
    assert jobs.records.get(record.id).status == "cancelled"
    assert jobs.follow(record.id).status == "cancelled"  # nothing left to follow
    with pytest.raises(FinetuneError, match=rf"could not cancel job {record.id} \(HTTP 400\).*already cancelled"):
        jobs.cancel(record.id)


def test_one_dropped_connection_is_retried_by_the_client(api, train_file):
    jobs = FineTuningJobs(api.base_url, poll_seconds=0, max_retries=2)
    record = jobs.create(train_file, "gpt-4o-mini")
    api.drop_event_requests = 1
    assert jobs.follow(record.id).status == "succeeded"


def test_bad_inputs_name_the_file_the_model_or_the_job(api, jobs, train_file, tmp_path):
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"messages": []}\n{"messages": [oops\n', encoding="utf-8")
    with pytest.raises(TrainingFileError, match=r"refused training file .*broken.jsonl: .*line 2 is not valid JSON"):
        jobs.create(broken, "gpt-4o-mini")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(TrainingFileError, match=r"empty.jsonl is empty"):
        jobs.create(empty, "gpt-4o-mini")
    with pytest.raises(TrainingFileError, match=r"missing.jsonl does not exist"):
        jobs.create(tmp_path / "missing.jsonl", "gpt-4o-mini")
    with pytest.raises(FinetuneError, match=r"model 'gpt-9-turbo' does not exist or cannot be fine-tuned"):
        jobs.create(train_file, "gpt-9-turbo")
    with pytest.raises(FinetuneError, match=r"no fine-tuning job ftjob-nope at http://127\.0\.0\.1"):
        jobs.refresh("ftjob-nope")
    with pytest.raises(FinetuneError, match="epochs must be at least 1"):
        Hyperparameters(epochs=0)
    assert JobRecords().all() == []  # nothing half-recorded


# --- the CLI ------------------------------------------------------------------------------------


def test_cli_create_follow_then_list_show_and_metrics_plot(api, train_file, tmp_path):
    created = cli(api, "create", str(train_file), "--model", "gpt-4o-mini", "--suffix", "kb", "--epochs", "2",
                  "--follow", "--poll-seconds", "0")  # fmt: skip
    assert created.returncode == 0, created.stderr
    job_id = created.stdout.split()[2]
    model = api.jobs[job_id].fine_tuned_model
    out = created.stdout
    assert f"Created job {job_id} on gpt-4o-mini (validating_files)." in out
    assert "step 1/24  loss " in out and "step 24/24  loss " in out  # not a terminal: one line per step
    assert f"Job {job_id} succeeded.\nFine-tuned model: {model}\n" in out
    assert f"ragbot finetune use {job_id} --role answer" in out

    listed = cli(api, "list")
    assert listed.returncode == 0
    row = listed.stdout.splitlines()[1].split()
    assert row[0] == job_id and row[1] == "succeeded" and row[-1] == model

    shown = run_cli("finetune", "show", job_id, "--json")  # the record knows the endpoint
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["fine_tuned_model"] == model and data["endpoint"] == api.base_url

    plot = tmp_path / "plots" / "loss.png"
    metrics = cli(api, "metrics", job_id, "--plot", str(plot))
    assert metrics.returncode == 0, metrics.stderr
    lines = metrics.stdout.splitlines()
    assert lines[0].split() == ["step", "train_loss", "train_acc"] and len(lines) == 25
    first = api.jobs[job_id].metrics[0]
    assert lines[1].split() == ["1", f"{first['train_loss']:.4f}", f"{first['train_mean_token_accuracy']:.4f}"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000


def test_cli_continue_with_from(api, train_file):
    first = cli(api, "create", str(train_file), "--model", "gpt-4o-mini", "--follow", "--poll-seconds", "0")
    parent = first.stdout.split()[2]
    second = cli(api, "create", str(train_file), "--from", parent, "--follow", "--poll-seconds", "0")
    assert second.returncode == 0, second.stderr
    child = second.stdout.split()[2]
    earlier_model = api.jobs[parent].fine_tuned_model
    assert f"Created job {child} on {earlier_model}, continuing {parent}" in second.stdout
    assert api.jobs[child].model == earlier_model and api.jobs[child].status == "succeeded"
    assert JobRecords().get(child).parent_job == parent


def test_cli_cancel_and_cancelling_twice(api, train_file):
    created = cli(api, "create", str(train_file), "--model", "gpt-4o-mini")
    job_id = created.stdout.split()[2]
    assert f"Follow it with: ragbot finetune follow {job_id}" in created.stdout
    cancelled = cli(api, "cancel", job_id)
    assert cancelled.returncode == 0 and cancelled.stdout == f"Job {job_id} cancelled.\n"
    assert_one_line_error(cli(api, "cancel", job_id), job_id, "already cancelled")


def test_cli_failing_job_gives_one_line_with_the_id_and_keeps_the_record(api, tmp_path):
    few = write_examples(tmp_path / "few.jsonl", 3)
    result = cli(api, "create", str(few), "--model", "gpt-4o-mini", "--follow", "--poll-seconds", "0")
    job_id = result.stdout.split()[2]
    assert_one_line_error(result, f"job {job_id} failed on the server", "at least 10 examples")
    assert JobRecords().get(job_id).status == "failed"


def test_cli_network_drop_while_following_then_follow_resumes(api, train_file):
    created = cli(api, "create", str(train_file), "--model", "gpt-4o-mini")
    job_id = created.stdout.split()[2]
    api.drop_event_requests = 1000
    dropped = cli(api, "follow", job_id, "--poll-seconds", "0", env={"RAGBOT_MAX_RETRIES": "0"})
    assert_one_line_error(dropped, f"while following job {job_id}", f"Resume with: ragbot finetune follow {job_id}")
    assert JobRecords().get(job_id).status == api.jobs[job_id].status == "queued"  # polled before the drop, intact

    api.drop_event_requests = 0
    resumed = cli(api, "follow", job_id, "--poll-seconds", "0")
    assert resumed.returncode == 0, resumed.stderr
    assert f"Job {job_id} succeeded." in resumed.stdout
    assert JobRecords().get(job_id).fine_tuned_model == api.jobs[job_id].fine_tuned_model


@pytest.mark.slow
def test_cli_ctrl_c_stops_following_not_the_job(api, train_file):
    api.steps_per_poll = 0  # the job runs until cancelled: only Ctrl-C ends the following
    created = cli(api, "create", str(train_file), "--model", "gpt-4o-mini", "--epochs", "20")
    job_id = created.stdout.split()[2]
    cmd = [sys.executable, "-m", "ragbot", "finetune", "follow", job_id, "--base-url", api.base_url]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        cmd + ["--poll-seconds", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        # as from a terminal: a test run started in the background inherits SIGINT ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert "Created fine-tuning job" in proc.stdout.readline()
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, out + err
    assert f"Stopped following {job_id}; the job goes on on the server." in err
    assert "Traceback" not in err
    assert api.jobs[job_id].status in ("queued", "running")  # not cancelled


def test_cli_unknown_job_id_for_each_command(api):
    for command in ("follow", "show", "metrics", "cancel"):
        assert_one_line_error(cli(api, command, "ftjob-doesnotexist"), "no fine-tuning job ftjob-doesnotexist")


def test_cli_unknown_base_model(api, train_file):
    result = cli(api, "create", str(train_file), "--model", "gpt-unknown")
    assert_one_line_error(result, "model 'gpt-unknown' does not exist or cannot be fine-tuned")
    assert JobRecords().all() == []


def test_cli_unreachable_server(train_file):
    closed = f"http://127.0.0.1:{free_port()}/v1"
    env = {"RAGBOT_MAX_RETRIES": "0"}
    result = run_cli("finetune", "create", str(train_file), "--model", "gpt-4o-mini", "--base-url", closed, env=env)
    assert_one_line_error(result, f"cannot reach {closed} to upload", "check base_url")
    listed = run_cli("finetune", "list", "--base-url", closed, env=env)
    assert_one_line_error(listed, f"cannot reach {closed} to list jobs")


def test_records_outlive_the_server_and_list_offline(api, train_file):
    created = cli(api, "create", str(train_file), "--model", "gpt-4o-mini", "--follow", "--poll-seconds", "0")
    job_id = created.stdout.split()[2]
    api.stop()  # the endpoint is gone; the history is not
    listed = run_cli("finetune", "list", "--local")
    assert listed.returncode == 0, listed.stderr
    assert job_id in listed.stdout and api.jobs[job_id].fine_tuned_model in listed.stdout
    with sqlite3.connect(JobRecords().path) as db:
        assert db.execute("SELECT count(*) FROM jobs").fetchone()[0] == 1


def test_fake_server_serves_checkpoints_and_models_like_the_api(api, jobs, train_file):
    record = jobs.follow(jobs.create(train_file, "gpt-4o-mini", hyperparameters=Hyperparameters(epochs=4)).id)
    client = OpenAI(api_key="x", base_url=api.base_url)
    checkpoints = client.fine_tuning.jobs.checkpoints.list(record.id).data
    assert [c.step_number for c in checkpoints] == [48, 36, 24]  # the last three epochs, newest first
    assert checkpoints[0].metrics.train_loss == api.jobs[record.id].metrics[-1]["train_loss"]
    assert checkpoints[1].fine_tuned_model_checkpoint == f"{record.fine_tuned_model}:ckpt-step-36"
    assert record.fine_tuned_model in [m.id for m in client.models.list()]
    reply = client.chat.completions.create(model=record.fine_tuned_model, messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content.startswith(f"[{record.fine_tuned_model}]")
    result = client.files.retrieve(record.result_files[0])
    assert result.purpose == "fine-tune-results" and result.filename == "step_metrics.csv"


# --- the local records ------------------------------------------------------------------------------


def test_a_partial_update_keeps_what_the_record_knew(tmp_path):
    records = JobRecords(tmp_path / "jobs.sqlite")
    records.save("ftjob-a", endpoint="http://x/v1", base_model="m", parent_job="ftjob-0", created_at=1.0)
    records.save("ftjob-a", status="succeeded", fine_tuned_model="ft:m::a", parent_job=None)
    record = JobRecords(tmp_path / "jobs.sqlite").get("ftjob-a")
    assert (record.status, record.fine_tuned_model, record.parent_job, record.endpoint) == (
        "succeeded", "ft:m::a", "ftjob-0", "http://x/v1")  # fmt: skip


def test_concurrent_writers_lose_no_record(tmp_path):
    import threading

    path = tmp_path / "jobs.sqlite"

    def write(worker: int) -> None:
        records = JobRecords(path)
        for n in range(15):
            records.save(f"ftjob-{worker}-{n}", endpoint="http://x/v1", base_model="m", created_at=float(n))
            records.save(f"ftjob-{worker}-{n}", status="running")

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    saved = JobRecords(path).all()
    assert len(saved) == 60 and {r.status for r in saved} == {"running"} and {r.base_model for r in saved} == {"m"}
