"""Shared fixtures: an isolated ragbot home per test, sample files of every type, the dev data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ragbot.config import Settings

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Each test gets its own RAGBOT_HOME and working directory, and no RAGBOT_* settings."""
    for key in list(os.environ):
        if key.startswith("RAGBOT_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("RAGBOT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "home" / "tiktoken"))
    # the local GGUF models (up to 1.1 GB) are assembled once per test session, not per test
    monkeypatch.setenv("RAGBOT_MODELS_DIR", str(_shared_models_dir(tmp_path)))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _shared_models_dir(tmp_path: Path) -> Path:
    path = tmp_path.parent.parent / "ragbot-models"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def hash_settings(tmp_path) -> Settings:
    """Settings with the instant deterministic embedder and a private index directory."""
    return Settings(embedder="hash", index=tmp_path / "index")


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real ``ragbot`` command in a subprocess, as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "ragbot", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=600,
    )


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


@pytest.fixture
def corpus(tmp_path) -> dict[str, Path]:
    return write_sample_corpus(tmp_path / "docs")


def shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"development data {path} is not present (see ../shared/data/README.md)")
    return path


@pytest.fixture
def chat_env(tmp_path, corpus):
    """Environment for a `ragbot chat` subprocess: hash embedder, fake model, an ingested corpus."""
    env = {
        **os.environ,
        "RAGBOT_EMBEDDER": "hash",
        "RAGBOT_LLM": "fake",
        "RAGBOT_INDEX": str(tmp_path / "idx"),
        "RAGBOT_SESSIONS": str(tmp_path / "s.sqlite"),
        "RAGBOT_THRESHOLD": "0.35",
        "PROMPT_TOOLKIT_NO_CPR": "1",
        "TERM": "xterm",
    }
    assert run_cli("ingest", str(corpus["md"].parent), env=env).returncode == 0
    return env
