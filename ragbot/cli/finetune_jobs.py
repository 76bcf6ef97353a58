"""``ragbot finetune create/follow/list/show/metrics/cancel/use``: thin commands over
``ragbot.finetune.jobs`` and ``ragbot.finetune.swap``."""

from __future__ import annotations

import datetime as dt
import json
import sys

import click

from ragbot.cli.finetune_group import finetune
from ragbot.storage.jobs import JobRecord

_BASE_URL = click.option(
    "--base-url", default=None, help="OpenAI-compatible fine-tuning API (default: base_url from the config)."
)
_POLL = click.option(
    "--poll-seconds", type=float, default=None, help="Seconds between polls while following (default 5)."
)


def _jobs(ctx: click.Context, base_url: str | None = None, poll_seconds: float | None = None):
    from ragbot.config import load_settings
    from ragbot.finetune.jobs import DEFAULT_POLL_SECONDS, FineTuningJobs

    settings = load_settings(ctx.find_root().obj["config"], overrides={"base_url": base_url})
    poll = DEFAULT_POLL_SECONDS if poll_seconds is None else poll_seconds
    return FineTuningJobs.from_settings(settings, poll_seconds=poll)


def _when(seconds: float | None) -> str:
    if not seconds:
        return "-"
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


class _EventPrinter:
    """Messages as lines; training steps as a progress bar on a terminal, else one line each."""

    def __init__(self) -> None:
        self.bar = None

    def __call__(self, event, record: JobRecord) -> None:
        from tqdm import tqdm

        if not event.is_metrics:
            (self.bar.write if self.bar else click.echo)(f"{_when(event.created_at)}  {event.message}")
            return
        loss = f"loss {event.train_loss:.4f}" if event.train_loss is not None else "loss -"
        accuracy = f"  token accuracy {event.train_accuracy:.3f}" if event.train_accuracy is not None else ""
        if sys.stderr.isatty() and event.total_steps:
            if self.bar is None:
                # No rate or ETA: steps arrive in bursts, one burst per poll.
                layout = "{desc}: {percentage:3.0f}%|{bar}| step {n_fmt}/{total_fmt}{postfix}"
                self.bar = tqdm(total=event.total_steps, desc="training", bar_format=layout, file=sys.stderr)
            self.bar.n = event.step
            self.bar.set_postfix_str(f"{loss}{accuracy}")
            return
        total = f"/{event.total_steps}" if event.total_steps else ""
        click.echo(f"step {event.step}{total}  {loss}{accuracy}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _follow(jobs, job_id: str) -> None:
    printer = _EventPrinter()
    try:
        record = jobs.follow(job_id, on_event=printer)
    except KeyboardInterrupt:
        printer.close()
        click.echo(
            f"\nStopped following {job_id}; the job goes on on the server. "
            f"Resume with: ragbot finetune follow {job_id}",
            err=True,
        )
        raise
    finally:
        printer.close()
    click.echo(f"Job {record.id} {record.status}.")
    if record.fine_tuned_model:
        click.echo(f"Fine-tuned model: {record.fine_tuned_model}")
        click.echo(f"Use it with: ragbot finetune use {record.id} --role answer")


@finetune.command()
@click.argument("train_file", type=click.Path(dir_okay=False))
@click.option(
    "--validation", "validation_file", type=click.Path(dir_okay=False), default=None, help="Validation JSONL."
)
@click.option("--model", default=None, help="Base model to fine-tune (e.g. gpt-4o-mini).")
@click.option("--suffix", default=None, help="Added to the fine-tuned model's name.")
@click.option("--epochs", type=int, default=None, help="Passes over the training file (default: provider's auto).")
@click.option("--batch-size", type=int, default=None, help="Examples per step (default: auto).")
@click.option("--lr-multiplier", type=float, default=None, help="Learning-rate multiplier (default: auto).")
@click.option("--beta", type=float, default=None, help="DPO only: strength of the pull towards the base model.")
@click.option("--method", type=click.Choice(["sft", "dpo"]), default="sft", show_default=True)
@click.option("--from", "continue_from", default=None, help="Continue training an earlier job's model (id or model).")
@click.option("--follow", "follow_it", is_flag=True, help="Follow the job's progress until it ends.")
@_BASE_URL
@_POLL
@click.pass_context
def create(
    ctx,
    train_file,
    validation_file,
    model,
    suffix,
    epochs,
    batch_size,
    lr_multiplier,
    beta,
    method,
    continue_from,
    follow_it,
    base_url,
    poll_seconds,
) -> None:
    """Upload TRAIN_FILE and start a fine-tuning job (SFT or DPO); --from continues an earlier one."""
    from ragbot.finetune.jobs import Hyperparameters

    jobs = _jobs(ctx, base_url, poll_seconds)
    record = jobs.create(
        train_file,
        model,
        validation_file=validation_file,
        suffix=suffix,
        hyperparameters=Hyperparameters(epochs, batch_size, lr_multiplier, beta),
        method=method,
        continue_from=continue_from,
    )
    parent = f", continuing {record.parent_job}" if record.parent_job else ""
    click.echo(f"Created job {record.id} on {record.base_model}{parent} ({record.status}).")
    if follow_it:
        _follow(jobs, record.id)
    else:
        click.echo(f"Follow it with: ragbot finetune follow {record.id}")


@finetune.command()
@click.argument("job_id")
@_BASE_URL
@_POLL
@click.pass_context
def follow(ctx, job_id, base_url, poll_seconds) -> None:
    """Show a job's events and training progress until it ends (Ctrl-C stops following, not the job)."""
    _follow(_jobs(ctx, base_url, poll_seconds), job_id)


@finetune.command(name="list")
@click.option("--limit", type=int, default=20, show_default=True)
@click.option("--local", "local_only", is_flag=True, help="Only the local records (works offline).")
@_BASE_URL
@click.pass_context
def list_jobs(ctx, limit, local_only, base_url) -> None:
    """List fine-tuning jobs, newest first: at the endpoint, or (--local) from the local records."""
    jobs = _jobs(ctx, base_url)
    records = jobs.records.all()[:limit] if local_only else jobs.list_jobs(limit)
    if not records:
        click.echo("No fine-tuning jobs.")
        return
    rows = [("job", "status", "created", "base model", "fine-tuned model")]
    rows += [(r.id, r.status, _when(r.created_at), r.base_model, r.fine_tuned_model or "-") for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        click.echo("  ".join([*(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True)), row[4]]))


@finetune.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
@_BASE_URL
@click.pass_context
def show(ctx, job_id, as_json, base_url) -> None:
    """Show one job (refreshed from the endpoint) with its local record: files, settings, lineage."""
    record = _jobs(ctx, base_url).refresh(job_id)
    if as_json:
        click.echo(json.dumps(record.to_dict(), ensure_ascii=False, indent=2))
        return
    for key, value in record.to_dict().items():
        if key in ("created_at", "finished_at", "updated_at"):
            value = _when(value)
        if value not in (None, "", [], {}):
            click.echo(f"{key:>18}: {value}")


@finetune.command()
@click.argument("job_id")
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False), default=None, help="Write a PNG plot here.")
@_BASE_URL
@click.pass_context
def metrics(ctx, job_id, plot_file, base_url) -> None:
    """Training loss and token accuracy per step, as a table and (--plot) a PNG."""
    from ragbot.finetune.jobs import format_metrics_table, plot_metrics

    rows = _jobs(ctx, base_url).metrics(job_id)
    if not rows:
        click.echo(f"Job {job_id} has reported no training steps yet.")
        return
    click.echo(format_metrics_table(rows))
    if plot_file:
        click.echo(f"Wrote {plot_metrics(rows, plot_file, title=job_id)}", err=True)


@finetune.command()
@click.argument("job_id")
@_BASE_URL
@click.pass_context
def cancel(ctx, job_id, base_url) -> None:
    """Cancel a job that is still validating, queued or running."""
    record = _jobs(ctx, base_url).cancel(job_id)
    click.echo(f"Job {record.id} {record.status}.")


@finetune.command()
@click.argument("job_or_model", required=False)
@click.option("--role", type=click.Choice(["answer", "rewrite"]), default="answer", show_default=True)
@click.option(
    "--lora",
    "lora",
    type=click.Path(dir_okay=False),
    default=None,
    help="GGUF LoRA adapter for the role's local model.",
)
@click.option("--unset", is_flag=True, help="Go back to the base model for this role.")
@_BASE_URL
@click.pass_context
def use(ctx, job_or_model, role, lora, unset, base_url) -> None:
    """Make the answer or rewrite role use a fine-tuned model (job id, model name or .gguf file),
    written into the config file (./ragbot.toml or --config)."""
    from pathlib import Path

    from ragbot.finetune.jobs import FineTuningJobs
    from ragbot.finetune.swap import use_model

    config = ctx.find_root().obj["config"]
    # A named config file that does not exist yet is created; settings come from the defaults then.
    jobs = _jobs(ctx, base_url) if config is None or Path(config).exists() else FineTuningJobs(base_url)
    change = use_model(job_or_model, role=role, config_file=config, lora=lora, unset=unset, jobs=jobs)
    click.echo(change.describe())
    for warning in change.warnings:
        click.echo(f"note: {warning}", err=True)
