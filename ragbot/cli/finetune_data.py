"""``ragbot finetune prepare`` and ``ragbot finetune validate``: thin commands over
``ragbot.finetune.data`` and ``ragbot.finetune.validate``."""

from __future__ import annotations

import json

import click

from ragbot.cli.finetune_group import finetune
from ragbot.config import load_settings
from ragbot.errors import TrainingFileError


@finetune.command()
@click.argument("sources", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the training files.")
@click.option("--with-passages", is_flag=True, help="Put the retrieved passages in each prompt, as the bot does.")
@click.option("--only-good", is_flag=True, help="From saved conversations, only turns marked good (or corrected).")
@click.option(
    "--valid-share",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.1,
    show_default=True,
    help="Share of conversations held out for validation.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the train/validation split.")
@click.option("--index", default=None, help="Index directory for --with-passages (default: the bundled KB's).")
@click.option("--embedder", default=None, help="Embedder the index was built with.")
@click.option(
    "--sessions",
    default=None,
    help="Saved conversations: a SQLite file or postgresql:// URL (default: the configured one).",
)
@click.pass_context
def prepare(ctx, sources, out, with_passages, only_good, valid_share, seed, **flags) -> None:
    """Build training files from SOURCES: question sets (.jsonl/.csv with question and answer),
    prompt/completion files, and saved conversations ('sessions' or 'sessions:NAME').

    Writes chat SFT, DPO preference pairs (from corrected answers) and legacy prompt/completion
    files, each split into train and valid, and prepare.json recording how.
    """
    from ragbot.finetune.data import prepare as prepare_files

    settings = load_settings(ctx.find_root().obj["config"], overrides=flags)
    report = prepare_files(
        sources,
        out,
        settings=settings,
        with_passages=with_passages,
        only_good=only_good,
        valid_share=valid_share,
        seed=seed,
    )
    click.echo(report.summary())


@finetune.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--fix", is_flag=True, help="Write FILE.fixed.jsonl with the fixable problems fixed.")
@click.option("--model", default=None, help="Model to check context length and price for (default: the table's).")
@click.option("--prices", default=None, type=click.Path(dir_okay=False), help="Your own price table (TOML).")
@click.option("--epochs", type=click.IntRange(min=1), default=3, show_default=True, help="Epochs to price.")
@click.option("--min-examples", type=click.IntRange(min=0), default=None, help="Default 10 (1 for validation files).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def validate(file, fix, model, prices, epochs, min_examples, as_json) -> None:
    """Check a training FILE: format, roles, empty and duplicate examples, length, and the
    token count and estimated training cost. Exits non-zero while problems remain."""
    from ragbot.finetune.validate import validate_file

    report = validate_file(file, model=model, prices=prices, epochs=epochs, fix=fix, min_examples=min_examples)
    click.echo(json.dumps(report.to_dict(), ensure_ascii=False, indent=2) if as_json else report.summary())
    if report.problems:
        fixable = sum(p.fixable for p in report.problems)
        hint = f"; --fix can fix {fixable} of them" if fixable and not fix else ""
        raise TrainingFileError(f"{len(report.problems)} problem(s) remain in {report.path}{hint}")


@finetune.command("rewrite-data")
@click.argument("source", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the training files.")
@click.option("--sample", type=click.IntRange(min=1), default=None, help="A seeded sample of this many rows.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sample and the split.")
@click.option(
    "--valid-share",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.1,
    show_default=True,
    help="Share of dialogs held out for validation.",
)
@click.option(
    "--drop-inconsistent", is_flag=True, help="Leave out rows whose gold rewrite the bot's guards would reject."
)
@click.option(
    "--gated",
    is_flag=True,
    help="Only rows the cheap check sends to the model (the questions a trained rewriter is asked in a chat).",
)
def rewrite_data(source, out, sample, seed, valid_share, drop_inconsistent, gated) -> None:
    """Build a rewriter's training files from a rewrite set (rows with question, rewrite, history).

    Each example is the short prompt (prompts/rewrite_trained.*) and the two lines the bot
    parses: a reasoning built from the gold rewrite, then the rewrite. Writes sft.train.jsonl,
    sft.valid.jsonl and rewrite_data.json (source sha256, counts, skipped rows, self-consistency).
    """
    from ragbot.finetune.rewrite_data import write_rewrite_data

    report = write_rewrite_data(
        source, out, sample=sample, seed=seed, valid_share=valid_share, drop_inconsistent=drop_inconsistent, gated=gated
    )
    click.echo(report.summary())
    for skipped in report.skipped[:20]:
        click.echo(f"  skipped {skipped.origin}: {skipped.reason}", err=True)
    if len(report.skipped) > 20:
        click.echo(f"  ... and {len(report.skipped) - 20} more, listed in {report.out}/rewrite_data.json", err=True)
