"""Plain helpers shared by the tests: run the ``ragbot`` command, sample files, the dev data.

Tests import them with ``from helpers import ...`` (never from conftest, which only holds fixtures).
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from ragbot.cli.main import main
from ragbot.conversation.bot import RagBot
from ragbot.testing.fakes import ScriptedChatModel

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


@dataclass
class CliResult:
    """What a user sees of one ``ragbot`` run: the exit status and the two output streams."""

    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None, input: str | None = None) -> CliResult:
    """Run ``ragbot ARGS`` in this process, through the same ``main`` as the ``ragbot`` command.

    ``main`` turns a ``RagbotError`` into one line on stderr and exit status 1, as in a real run;
    any other exception propagates and fails the test (a real run would print a traceback).
    ``env`` adds environment variables (``None`` removes one) for this run only; ``cwd`` is where
    ``ragbot.toml`` is looked for (default: the test's own directory).
    """
    runner = CliRunner()
    with contextlib.chdir(cwd or os.getcwd()), runner.isolation(input=input, env=env) as (out, err, _):
        try:
            code = main(list(args))
        except SystemExit as exc:  # main returns its status; this is for a command that exits itself
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
        return CliResult(code, out.getvalue().decode("utf-8"), err.getvalue().decode("utf-8"))


def run_cli_process(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real ``python -m ragbot`` in a subprocess, as a user would (slower: a new interpreter)."""
    return subprocess.run(
        [sys.executable, "-m", "ragbot", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=600,
    )


def spawn_chat(env: dict, *args: str):
    """``ragbot chat ARGS`` in a pseudo-terminal (pexpect), once it shows its prompt line."""
    import pexpect

    child = pexpect.spawn(
        sys.executable, ["-m", "ragbot", "chat", *args], env=env, encoding="utf-8", timeout=60, dimensions=(40, 200)
    )
    child.expect("/help for commands")
    return child


def shared_file(name: str) -> Path:
    """A file of the development data beside the repository, or skip the test if it is not there."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"development data {path} is not present (see ../shared/data/README.md)")
    return path


def write_sample_corpus(folder: Path) -> dict[str, Path]:
    """One small file of each supported type, each about a distinct topic."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    files["md"] = folder / "nile.md"
    files["md"].write_text(
        "# 尼罗河\n\n## 概况\n\n尼罗河是非洲的一条大河。它全长约六千六百公里！\n\n"
        "## 流经国家\n\n尼罗河干流流经乌干达、南苏丹、苏丹和埃及。\n",
        encoding="utf-8",
    )
    files["txt"] = folder / "tea.txt"
    files["txt"].write_text(
        "Green tea is made from unoxidised leaves. It is popular in China and Japan.\n", encoding="utf-8"
    )
    files["jsonl"] = folder / "films.jsonl"
    files["jsonl"].write_text(
        "\n".join(
            json.dumps(r, ensure_ascii=False)
            for r in [
                {
                    "id": "film-1",
                    "title": "卧虎藏龙",
                    "text": "卧虎藏龙是李安执导的武侠电影，2000年上映。",
                    "year": 2000,
                },
                {
                    "id": "film-2",
                    "title": "霸王别姬",
                    "text": "霸王别姬是陈凯歌执导的电影，讲述京剧演员的故事。",
                },
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    files["csv"] = folder / "faq.csv"
    files["csv"].write_text(
        "id,title,text\nfaq-1,Refunds,Refunds are paid within 14 days of the request.\n"
        "faq-2,Shipping,Parcels ship from Rotterdam every weekday.\n",
        encoding="utf-8",
    )
    files["html"] = folder / "volcano.html"
    files["html"].write_text(
        "<html><head><title>Volcanoes</title><script>var x = 'ignored script text';</script></head>"
        "<body><nav>Home | About</nav><h1>Volcanoes</h1><h2>Eruptions</h2>"
        "<p>Magma rises through the crust and erupts as lava.</p></body></html>",
        encoding="utf-8",
    )
    files["pdf"] = folder / "glaciers.pdf"
    _write_pdf(files["pdf"], ["Glaciers are rivers of ice.", "They carve valleys over thousands of years."])
    files["docx"] = folder / "orchids.docx"
    _write_docx(files["docx"])
    return files


def _write_pdf(path: Path, lines: list[str]) -> None:
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    c = canvas.Canvas(str(path), pagesize=A4)
    c.setTitle("Glaciers")
    y = 800
    for line in lines:
        c.drawString(72, y, line)
        y -= 20
    c.save()


def _write_docx(path: Path) -> None:
    import docx

    d = docx.Document()
    d.add_heading("Orchids", level=1)
    d.add_heading("Care", level=2)
    d.add_paragraph("Orchids need bright indirect light and should be watered once a week.")
    table = d.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text = "Genus"
    table.rows[0].cells[1].text = "Phalaenopsis"
    d.save(str(path))


# --- the import graph of the package, read with ast (tests/test_layout.py, tests/test_registry.py)

PACKAGE = REPO / "ragbot"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(name: str) -> str | None:
    """The ragbot module an imported name lives in (``ragbot.x.y`` may name a module or an attribute)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str, typing: bool = False) -> set[str]:
    """The ragbot modules ``module`` imports, anywhere in the file; those in ``if TYPE_CHECKING:``
    blocks only with ``typing``."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if not typing and isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            names = [f"{base}.{alias.name}" for alias in node.names] or [base]
        else:
            continue
        for name in names:
            if name == "ragbot" or name.startswith("ragbot."):
                target = resolve(name)
                if target and target != module:
                    found.add(target)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


# --- the conversation engine on a scripted model -----------------------------------------------

NILE_REWRITE = "思考：“它”指尼罗河。\n改写：尼罗河流经哪些国家？"  # the rewrite model's reply to "它流经哪些国家？"


def make_bot(kb, replies=(), **settings):
    """A bot over ``kb`` whose model answers ``replies`` in order (then "默认回答"), and that model."""
    model = ScriptedChatModel(list(replies), default="默认回答")
    return RagBot(kb, model, settings=kb.settings.replace(**settings)), model
