"""Hostile input gets one clear line, never a traceback, and loses nothing.

CLI cases run in-process through ``ragbot.cli.main.main`` (the console script's entry point, which
turns a ``RagbotError`` into ``ragbot: error: ...`` and exit 1); Python API cases call the
library directly. Tests run as root in CI, where ``chmod 000`` stops nobody: each permission
case also has a variant the kernel refuses to everyone (a write-only sysfs file, ``/sys``,
a directory where a file belongs).
"""

from __future__ import annotations

import io
import logging
import os
import stat
import sys
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from ragbot import KnowledgeBase
from ragbot.cli.main import main
from ragbot.config import Settings
from ragbot.conversation.bot import RagBot
from ragbot.errors import (
    ConfigError,
    ConversationError,
    IndexAccessError,
    IndexCorruptError,
    IngestError,
    QueryError,
)

IS_ROOT = os.geteuid() == 0
as_root_chmod_is_ignored = pytest.mark.skipif(IS_ROOT, reason="root reads and writes whatever the file mode says")


@click.command(add_help_option=False, context_settings={"ignore_unknown_options": True})
@click.argument("argv", nargs=-1, type=click.UNPROCESSED)
def _ragbot(argv: tuple[str, ...]) -> None:
    sys.exit(main(list(argv)))


def ragbot(*args: str | Path):
    """Run ``ragbot ARGS...`` as the console script does, capturing what the user sees."""
    return CliRunner().invoke(_ragbot, [str(a) for a in args])


def error_line(result) -> str:
    """The one error line of a failed command (and check it is the only sign of failure)."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("ragbot: error:")]
    assert len(lines) == 1, result.output
    return lines[0]


def unreadable_even_for_root() -> Path:
    """A file the kernel refuses to open for reading whoever asks: a write-only sysfs attribute."""
    for path in sorted(Path("/sys/bus").glob("*/uevent")):
        try:
            with open(path, "rb"):
                pass
        except PermissionError:
            return path
        except OSError:
            continue
    pytest.skip("no write-only sysfs file here to stand in for an unreadable file")


@pytest.fixture(autouse=True)
def fake_backends(monkeypatch):
    monkeypatch.setenv("RAGBOT_EMBEDDER", "hash")
    monkeypatch.setenv("RAGBOT_LLM", "fake")


@pytest.fixture
def docs(tmp_path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "tea.txt").write_text("Green tea is made from unoxidised leaves.\n", encoding="utf-8")
    (folder / "nile.md").write_text("# Nile\n\nThe Nile flows through Egypt and Sudan.\n", encoding="utf-8")
    return folder


@pytest.fixture
def index(tmp_path, docs) -> Path:
    """An index holding ``docs``."""
    path = tmp_path / "idx"
    result = ragbot("ingest", docs, "--index", path)
    assert result.exit_code == 0, result.output
    return path


def sources_in(index: Path) -> set[str]:
    kb = KnowledgeBase.open(Settings(embedder="hash", index=index))
    return {Path(s).name for s in kb.stored.sources}


# --------------------------------------------------------------------------- 1. unreadable files
@as_root_chmod_is_ignored
def test_unreadable_file_in_a_folder_is_skipped_and_the_rest_ingested(tmp_path, docs):
    secret = docs / "secret.txt"
    secret.write_text("hidden\n", encoding="utf-8")
    secret.chmod(0)
    result = ragbot("ingest", docs, "--index", tmp_path / "idx")
    assert result.exit_code == 0, result.output
    assert f"skipped {secret}: cannot be read (Permission denied); check its permissions" in result.output
    assert sources_in(tmp_path / "idx") == {"tea.txt", "nile.md"}


def test_unreadable_file_in_a_folder_is_skipped_even_for_root(tmp_path, docs):
    secret = unreadable_even_for_root()
    (docs / "secret.txt").symlink_to(secret)  # files are known by their resolved path
    result = ragbot("ingest", docs, "--index", tmp_path / "idx")
    assert result.exit_code == 0, result.output
    assert f"skipped {secret}: cannot be read (Permission denied)" in result.output
    assert "1 file(s) failed" in result.output
    assert sources_in(tmp_path / "idx") == {"tea.txt", "nile.md"}


def test_unreadable_file_given_alone_is_one_line(tmp_path):
    secret = unreadable_even_for_root()
    (tmp_path / "secret.txt").symlink_to(secret)
    line = error_line(ragbot("ingest", tmp_path / "secret.txt", "--index", tmp_path / "idx"))
    assert f"nothing was ingested: {secret}: cannot be read (Permission denied)" in line
    assert not (tmp_path / "idx" / "CURRENT").exists()


def test_file_that_becomes_unreadable_keeps_its_chunks(index, docs):
    (docs / "tea.txt").unlink()
    (docs / "tea.txt").symlink_to(unreadable_even_for_root())
    kb = KnowledgeBase.open(Settings(embedder="hash", index=index))
    report = kb.ingest([docs])
    assert [e.path for e in report.failed] == [str(unreadable_even_for_root())]
    assert sources_in(index) == {"tea.txt", "nile.md"}
    assert "Green tea" in kb.search("green tea", k=1).hits[0].text


# --------------------------------------------------------------------------- 2. index location
def test_index_naming_a_regular_file(tmp_path, docs):
    taken = tmp_path / "notes.txt"
    taken.write_text("keep me\n", encoding="utf-8")
    line = error_line(ragbot("ingest", docs, "--index", taken))
    assert f"cannot use {taken} as an index directory: {taken} is a file, not a directory" in line
    assert "choose a directory for the index (--index)" in line
    assert taken.read_text(encoding="utf-8") == "keep me\n"
    line = error_line(ragbot("search", "tea", "--index", taken))
    assert f"{taken} is a file, not a directory" in line
    with pytest.raises(IndexAccessError, match="is a file, not a directory"):
        KnowledgeBase.open(Settings(embedder="hash", index=taken))
    kb = KnowledgeBase.open(Settings(embedder="hash", index=taken), create=True)
    with pytest.raises(IndexAccessError, match="is a file, not a directory"):
        kb.ingest([docs])


def test_index_below_a_regular_file(tmp_path, docs):
    taken = tmp_path / "notes.txt"
    taken.write_text("keep me\n", encoding="utf-8")
    line = error_line(ragbot("ingest", docs, "--index", taken / "idx"))
    assert f"{taken} is a file, not a directory" in line


def test_index_where_nobody_may_write(tmp_path, docs):
    if not Path("/sys").is_dir():
        pytest.skip("no /sys here")
    line = error_line(ragbot("ingest", docs, "--index", "/sys/ragbot-index"))
    assert "cannot write the index at /sys/ragbot-index (" in line
    assert "check its permissions (ask its owner for access) or choose another index directory (--index)" in line


@as_root_chmod_is_ignored
def test_index_in_a_read_only_directory(tmp_path, docs):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    line = error_line(ragbot("ingest", docs, "--index", parent / "idx"))
    assert f"cannot write the index at {parent / 'idx'} (Permission denied" in line


@as_root_chmod_is_ignored
def test_index_whose_files_are_read_only(index, docs):
    (docs / "new.txt").write_text("Something new.\n", encoding="utf-8")
    for path in [index, *index.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)
    line = error_line(ragbot("ingest", docs, "--index", index))
    assert f"cannot write the index at {index} (Permission denied" in line
    for path in [index, *index.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o200)
    assert sources_in(index) == {"tea.txt", "nile.md"}


def test_index_whose_lock_cannot_be_opened(index, docs):
    (docs / "new.txt").write_text("Something new.\n", encoding="utf-8")
    (index / ".lock").unlink(missing_ok=True)
    (index / ".lock").mkdir()  # refused to root too
    line = error_line(ragbot("ingest", docs, "--index", index))
    assert f"cannot write the index at {index} (" in line and ".lock" in line
    assert sources_in(index) == {"tea.txt", "nile.md"}


def test_ragbot_home_naming_a_file(tmp_path, monkeypatch):
    home = tmp_path / "home-file"
    home.write_text("", encoding="utf-8")
    monkeypatch.setenv("RAGBOT_HOME", str(home))
    line = error_line(ragbot("search", "tea"))
    assert f"RAGBOT_HOME={home} is a file, not a directory; point RAGBOT_HOME at a directory" in line
    with pytest.raises(ConfigError, match="RAGBOT_HOME"):
        KnowledgeBase.open(Settings(embedder="hash"))


# --------------------------------------------------------------------------- 3. damaged index
def _live_generation(index: Path) -> Path:
    return index / (index / "CURRENT").read_text(encoding="utf-8").strip()


def test_current_file_that_is_not_text(index):
    (index / "CURRENT").write_bytes(b"gen-\xff\xfe\n")
    line = error_line(ragbot("search", "tea", "--index", index))
    assert f"the index at {index} is damaged (CURRENT is not text)" in line
    assert f"`ragbot ingest PATH... --index {index} --rebuild`" in line
    with pytest.raises(IndexCorruptError, match="CURRENT is not text"):
        KnowledgeBase.open(Settings(embedder="hash", index=index))


def test_current_file_that_is_not_text_is_rebuilt(index, docs):
    (index / "CURRENT").write_bytes(b"gen-\xff\xfe\n")
    result = ragbot("ingest", docs, "--index", index, "--rebuild")
    assert result.exit_code == 0, result.output
    assert sources_in(index) == {"tea.txt", "nile.md"}


@pytest.mark.parametrize(
    "damage",
    [
        lambda path: path.write_bytes(b"\x80\x04garbage that is not an array"),  # numpy would say "pickled data"
        lambda path: path.write_bytes(path.read_bytes()[:200]),  # cut short
        lambda path: np.save(path, np.zeros((1, 3), dtype=np.float32)),  # the wrong shape
    ],
    ids=["garbage", "truncated", "wrong-shape"],
)
def test_damaged_vectors_then_incremental_ingest(index, docs, damage):
    damage(_live_generation(index) / "vectors.npy")
    (docs / "new.txt").write_text("Something new.\n", encoding="utf-8")
    line = error_line(ragbot("ingest", docs, "--index", index))
    assert f"the index at {index} is damaged (vectors.npy" in line
    assert f"--index {index} --rebuild`" in line and "pickled" not in line
    result = ragbot("ingest", docs, "--index", index, "--rebuild")
    assert result.exit_code == 0, result.output
    assert sources_in(index) == {"tea.txt", "nile.md", "new.txt"}


# --------------------------------------------------------------------------- 5. bytes that are not UTF-8
LATIN1_CAFE = "caf\udce9"  # what Python makes of the shell's $'caf\xe9' (surrogateescape)


def test_search_with_bytes_that_are_not_utf8(index):
    line = error_line(ragbot("search", LATIN1_CAFE, "--index", index))
    assert "the query is not valid UTF-8 text (byte 0xe9 at character 4)" in line
    assert "set your terminal or file encoding to UTF-8" in line
    kb = KnowledgeBase.open(Settings(embedder="hash", index=index))
    with pytest.raises(QueryError, match="not valid UTF-8 text \\(byte 0xe9 at character 4\\)"):
        kb.search(LATIN1_CAFE)
    with pytest.raises(QueryError, match="lone surrogate U\\+D800"):
        kb.search("caf\ud800")


def test_question_with_bytes_that_are_not_utf8(index, tmp_path):
    sessions = tmp_path / "s.sqlite"
    line = error_line(ragbot("ask", LATIN1_CAFE, "--index", index, "--session", "s", "--llm", "fake"))
    assert "the question is not valid UTF-8 text (byte 0xe9 at character 4)" in line
    bot = RagBot.load(Settings(embedder="hash", llm="fake", index=index, sessions=sessions))
    conversation = bot.conversation()
    with pytest.raises(ConversationError, match="the question is not valid UTF-8 text \\(byte 0xe9"):
        conversation.ask(LATIN1_CAFE)
    assert conversation.history == []
    assert conversation.ask("café?").text  # the same words in UTF-8 are answered


def test_file_name_that_is_not_utf8_is_skipped(tmp_path, docs):
    (docs / "caf\udce9.txt").write_text("Coffee is roasted.\n", encoding="utf-8")  # the name is b"caf\xe9.txt"
    result = ragbot("ingest", docs, "--index", tmp_path / "idx")
    assert result.exit_code == 0, result.output
    assert f"skipped {docs}/caf\ufffd.txt: its name is not valid UTF-8 text; rename it" in result.output
    assert sources_in(tmp_path / "idx") == {"tea.txt", "nile.md"}


# --------------------------------------------------------------------------- 7. nothing to ingest
def test_empty_folder_is_an_error_and_the_index_is_left_alone(index, tmp_path):
    before = (index / "CURRENT").read_bytes()
    empty = tmp_path / "empty"
    empty.mkdir()
    line = error_line(ragbot("ingest", empty, "--index", index))
    assert f"no supported files in {empty}; add files of a supported type: .md, .markdown, .txt" in line
    assert (index / "CURRENT").read_bytes() == before
    assert sources_in(index) == {"tea.txt", "nile.md"}


def test_folder_without_supported_files(tmp_path):
    folder = tmp_path / "pics"
    folder.mkdir()
    (folder / "cat.png").write_bytes(b"\x89PNG")
    (folder / "notes.rtf").write_text("{\\rtf1}", encoding="utf-8")
    line = error_line(ragbot("ingest", folder, "--index", tmp_path / "idx"))
    assert f"no supported files in {folder} (2 file(s) of other types)" in line and ".docx" in line
    assert not (tmp_path / "idx").exists()
    kb = KnowledgeBase.open(Settings(embedder="hash", index=tmp_path / "idx"), create=True)
    with pytest.raises(IngestError, match="no supported files in"):
        kb.ingest([folder])


def _pdf_bytes(text: str) -> bytes:
    from reportlab.pdfgen import canvas

    buffer = io.BytesIO()
    page = canvas.Canvas(buffer)
    page.drawString(72, 800, text)
    page.save()
    return buffer.getvalue()


def test_damaged_pdfs_give_only_ragbots_lines(tmp_path, docs, caplog):
    good = _pdf_bytes("Glaciers are rivers of ice.")
    cut = docs / "cut.pdf"
    cut.write_bytes(good[: len(good) // 2])  # pypdf: "EOF marker not found", then fails
    moved = docs / "moved.pdf"  # pypdf: "incorrect startxref pointer", then repairs it
    moved.write_bytes(good[: good.rindex(b"startxref")] + b"startxref\n99999\n%%EOF\n")
    with caplog.at_level(logging.WARNING):  # pytest takes the log lines a user would see on stderr
        result = ragbot("ingest", docs, "--index", tmp_path / "idx")
    assert [r.getMessage() for r in caplog.records if r.name.startswith("pypdf")] == []
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 2, result.output
    assert lines[0].startswith(f"skipped {cut}: is not a readable PDF")
    assert lines[1].startswith("Ingested into")
    assert sources_in(tmp_path / "idx") == {"tea.txt", "nile.md", "moved.pdf"}


# --------------------------------------------------------------------------- 8. Python API values
@pytest.mark.parametrize(
    ("field", "value", "kind"),
    [
        ("top_k", "5", "an integer"),
        ("top_k", True, "an integer"),
        ("num_threads", 2.0, "an integer or None"),
        ("temperature", "0.2", "a number"),
        ("threshold", "0.5", "a number or None"),
        ("rewrite", "yes", "true or false"),
        ("embedder", 3, "a string"),
        ("model", 3, "a string or None"),
        ("index", 5, "a path or None"),
        ("stop", ("END", 1), "a list of strings"),
    ],
)
def test_settings_of_the_wrong_type_name_the_field_and_value(field, value, kind):
    with pytest.raises(ConfigError) as caught:
        Settings(**{field: value})
    assert str(caught.value) == f"bad value for {field}: {value!r} is not {kind}"


def test_settings_of_the_right_type_are_still_accepted(tmp_path):
    settings = Settings(temperature=1, threshold=0, index=str(tmp_path), stop="END", lock_timeout=5)
    assert (settings.temperature, settings.threshold, settings.index, settings.stop) == (1, 0, tmp_path, ("END",))
    assert type(Settings(top_k=np.int64(3)).top_k) is int  # e.g. a k chosen with numpy


def test_settings_refuse_nan():
    with pytest.raises(ConfigError, match="bad value for request_timeout: nan"):
        Settings(request_timeout=float("nan"))


@pytest.mark.parametrize(
    ("k", "message"),
    [(0, "k must be at least 1, got 0"), (-3, "k must be at least 1, got -3"), ("5", "k must be a whole number")],
)
def test_search_k_below_one_is_refused(index, k, message):
    kb = KnowledgeBase.open(Settings(embedder="hash", index=index))
    with pytest.raises(QueryError, match=message):
        kb.search("tea", k=k)
    assert len(kb.search("tea", k=1).hits) == 1


def test_search_k_zero_in_the_cli(index):
    line = error_line(ragbot("search", "tea", "--index", index, "-k", "0"))
    assert "bad value for top_k: 0; it must be at least 1" in line


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o755), (0o002, 0o775)])
def test_index_generations_follow_the_umask(tmp_path, docs, umask, mode):
    old = os.umask(umask)
    try:
        result = ragbot("ingest", docs, "--index", tmp_path / "idx")
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    generation = _live_generation(tmp_path / "idx")
    assert stat.S_IMODE(generation.stat().st_mode) == mode
    assert stat.S_IMODE((generation / "vectors.npy").stat().st_mode) == mode & 0o666
