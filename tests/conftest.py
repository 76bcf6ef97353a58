"""Shared fixtures: an isolated ragbot home per test, sample files of every type, an ingested chat setup."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from ragbot.config import Settings
from ragbot.storage.conversations import open_conversation_store

from helpers import run_cli, write_sample_corpus
from postgres_server import postgres_server, postgres_stores_closed  # noqa: F401 -- a throwaway PostgreSQL; leaks fail

# Real servers and models: a test that uses one runs in the whole suite (CI), not in the fast part
# (`pytest -m "not slow"`, about a minute); a store test's PostgreSQL variant counts, its SQLite one not.
REAL_SERVER_FIXTURES = {
    "postgres_server",
    "llama_server",
    "llama_server_with_key",
    "local_models_dir",
    "milvus_settings",
}


def pytest_collection_modifyitems(items):
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_postgres = callspec is not None and callspec.params.get("location") == "postgresql"
        if on_postgres or REAL_SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


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


@pytest.fixture(scope="session")
def _corpus_template(tmp_path_factory) -> dict[str, Path]:
    return write_sample_corpus(tmp_path_factory.mktemp("corpus") / "docs")


@pytest.fixture
def corpus(tmp_path, _corpus_template) -> dict[str, Path]:
    """The sample files in the test's own ``docs`` folder (a copy: writing the PDF and DOCX is slower)."""
    folder = tmp_path / "docs"
    shutil.copytree(_corpus_template["md"].parent, folder)
    return {kind: folder / path.name for kind, path in _corpus_template.items()}


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


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request, tmp_path) -> str | Path:
    """Where a test's store lives: a new SQLite file, or a new database on the test PostgreSQL server."""
    if request.param == "sqlite":
        return tmp_path / "conversations.sqlite"
    return request.getfixturevalue("postgres_server").new_database()


@pytest.fixture
def stores(location):
    """``stores()`` opens the test's store (again); every store opened is closed at the end."""
    opened = []

    def make():
        opened.append(open_conversation_store(location))
        return opened[-1]

    yield make
    for store in opened:
        store.close()
