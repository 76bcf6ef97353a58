"""The knowledge base in Milvus: Milvus Lite through the real pymilvus client, the instant hash embedder.

The FAISS index is the reference: the same corpus ingested into both must give the same hits with
the same cosine scores and the same threshold decision."""

from __future__ import annotations

import json
import socket

import pytest

pytest.importorskip("pymilvus", reason="pip install -e '.[milvus]' for the Milvus vector store")

from ragbot.config import Settings  # noqa: E402
from ragbot.errors import ConfigError, EmbedderMismatchError, IndexNotFoundError, VectorStoreError  # noqa: E402
from ragbot.knowledge.knowledge_base import KnowledgeBase  # noqa: E402
from ragbot.testing.fakes import HashEmbedder  # noqa: E402

from helpers import make_bot, run_cli, run_cli_process  # noqa: E402

QUERIES = ["卧虎藏龙是谁执导的", "尼罗河流经哪些国家", "Glaciers are rivers of ice", "green tea leaves", "怎么烤面包"]


@pytest.fixture
def milvus_settings(tmp_path) -> Settings:
    return Settings(embedder="hash", vector_store="milvus", milvus_uri=str(tmp_path / "kb.db"))


def open_kb(settings: Settings, **kw) -> KnowledgeBase:
    return KnowledgeBase.open(settings, create=True, **kw)


def hits(result) -> list[tuple[str, float, bool]]:
    return [(h.id, round(h.score, 5), h.above_threshold) for h in result.hits]


@pytest.mark.parametrize("hybrid", [True, False])
def test_milvus_gives_the_same_hits_scores_and_threshold_decision_as_faiss(
    hash_settings, milvus_settings, corpus, hybrid
):
    faiss_kb, milvus_kb = open_kb(hash_settings), open_kb(milvus_settings)
    for kb in (faiss_kb, milvus_kb):
        kb.ingest([corpus["md"].parent])
    reopened = KnowledgeBase.open(milvus_settings.replace(hybrid=hybrid))  # read back from the collection
    faiss_kb.settings = faiss_kb.settings.replace(hybrid=hybrid)
    assert len(reopened) == len(faiss_kb) > 7
    for query in QUERIES:
        expected, got = faiss_kb.search(query, k=4), reopened.search(query, k=4)
        assert hits(got) == hits(expected), query
        assert bool(got.confident) == bool(expected.confident)
    top = reopened.search("卧虎藏龙是谁执导的").hits[0]
    assert (top.title, top.doc_id, top.source) == ("卧虎藏龙", "film-1", str(corpus["jsonl"]))
    assert reopened.search("怎么烤面包").confident == []  # nothing about bread: below the threshold
    # a conversation's topic documents are scored the same way
    assert hits(reopened.search_documents("李安", ["film-1", "film-2"])) == hits(
        faiss_kb.search_documents("李安", ["film-1", "film-2"])
    )


def test_a_bot_on_milvus_answers_grounded_and_cites_the_passage(milvus_settings, corpus):
    kb = open_kb(milvus_settings)
    kb.ingest([corpus["md"].parent])
    bot, _ = make_bot(KnowledgeBase.open(milvus_settings), replies=["李安执导了《卧虎藏龙》[1]。"])
    answer = bot.conversation().ask("卧虎藏龙是谁执导的？")
    assert answer.route.value == "grounded"
    assert answer.sources[0].doc_id == "film-1" and "李安" in answer.text


class OtherEmbedder(HashEmbedder):
    name = "hash:other"


class NarrowEmbedder(HashEmbedder):
    dim = 128  # same name, another dimension


@pytest.mark.parametrize("other", [OtherEmbedder, NarrowEmbedder])
def test_an_embedder_mismatch_is_refused_with_the_faiss_message(hash_settings, milvus_settings, corpus, other):
    messages = []
    for settings in (hash_settings, milvus_settings):
        kb = open_kb(settings)
        kb.ingest([corpus["md"]])
        with pytest.raises(EmbedderMismatchError) as info:
            KnowledgeBase.open(settings, embedder=other())
        messages.append(str(info.value).replace(kb.store.rebuild_hint, "REBUILD").replace(kb.location, "LOCATION"))
    assert messages[0] == messages[1]
    assert messages[1].startswith("the index at LOCATION was built with embedder 'hash:char-bigrams-256'")
    assert messages[1].endswith("use the same embedder, or rebuild with `REBUILD`")
    # --rebuild starts the collection over with the configured embedder
    report = open_kb(milvus_settings, embedder=other()).ingest([corpus["md"]], rebuild=True)
    rebuilt = KnowledgeBase.open(milvus_settings, embedder=other())
    assert report.added == report.chunks == len(rebuilt)
    assert (rebuilt.manifest.embedder, rebuilt.manifest.dim) == (other.name, other.dim)


def test_incremental_reingest_skips_unchanged_replaces_changed_and_removes_deleted(milvus_settings, corpus):
    kb = open_kb(milvus_settings)
    folder = corpus["md"].parent
    kb.ingest([folder])
    before = len(kb)
    again = open_kb(milvus_settings).ingest([folder])
    assert (again.added, again.removed, again.unchanged) == (0, 0, before)

    corpus["txt"].write_text("Oolong tea is partly oxidised.\n", encoding="utf-8")
    corpus["csv"].unlink()
    report = kb.ingest([folder])
    assert report.added == 1 and report.removed == 1 + 2  # old tea chunk + two FAQ rows
    reopened = KnowledgeBase.open(milvus_settings)
    assert len(reopened) == before - 2 == reopened.store.rows()  # nothing left behind in the collection
    texts = [h.text for h in reopened.retrieve("tea", k=len(reopened))]
    assert "Oolong tea is partly oxidised." in texts
    assert not any("Green tea" in t or "Refunds" in t for t in texts)
    assert reopened.search("Refunds are paid within 14 days").hits[0].source != str(corpus["csv"])


@pytest.mark.slow
def test_cli_ingest_in_one_process_then_search_in_another_with_the_milvus_setting(tmp_path, corpus):
    (tmp_path / "ragbot.toml").write_text(
        'embedder = "hash"\nvector_store = "milvus"\nmilvus_uri = "./kb.db"\nmilvus_collection = "films"\n',
        encoding="utf-8",
    )
    ingest = run_cli_process("ingest", str(corpus["md"].parent), cwd=tmp_path)
    assert ingest.returncode == 0, ingest.stderr
    assert "Ingested into ./kb.db (Milvus collection 'films'): 7 files" in ingest.stdout
    found = run_cli("search", "卧虎藏龙是谁执导的", "-k", "2")
    assert found.returncode == 0, found.stderr
    first = found.stdout.split("\n\n")[1]
    assert "[above threshold] 卧虎藏龙" in first and "films.jsonl  (id film-1)" in first
    info = run_cli("info")
    assert '"index": "./kb.db (Milvus collection \'films\')"' in info.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_milvus_uri_is_one_line_naming_it_and_exit_1(tmp_path):
    uri = f"http://127.0.0.1:{_free_port()}"
    result = run_cli("search", "尼罗河", env={"RAGBOT_VECTOR_STORE": "milvus", "RAGBOT_MILVUS_URI": uri})
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ragbot: error: cannot reach Milvus at {uri} (")
    assert "start the server or fix milvus_uri" in lines[0]
    with pytest.raises(
        VectorStoreError, match=r"cannot open the Milvus Lite file .*missing/kb\.db: the folder .*missing does not"
    ):
        KnowledgeBase.open(Settings(embedder="hash", vector_store="milvus", milvus_uri=str(tmp_path / "missing/kb.db")))


def test_bad_milvus_settings_name_the_value(milvus_settings):
    with pytest.raises(ConfigError, match=r"bad value for vector_store: 'milvs' \(did you mean 'milvus'\?\)"):
        Settings(vector_store="milvs")
    with pytest.raises(ConfigError, match=r"bad value for milvus_uri: 'kb\.sqlite'; give a local file ending in \.db"):
        Settings(vector_store="milvus", milvus_uri="kb.sqlite")
    with pytest.raises(ConfigError, match=r"bad value for milvus_collection: 'my-kb'; use letters, digits"):
        Settings(milvus_collection="my-kb")
    with pytest.raises(IndexNotFoundError, match=r"no index at .*kb\.db \(Milvus collection 'ragbot'\); create one"):
        KnowledgeBase.open(milvus_settings)


def test_rows_an_interrupted_ingest_left_behind_are_never_hits_and_the_next_write_removes_them(milvus_settings, corpus):
    folder = corpus["md"].parent
    kb = open_kb(milvus_settings)
    kb.ingest([folder])
    question = "卧虎藏龙是谁执导的"
    # what a crash between inserting the new chunks and switching CURRENT leaves: a row nothing lists
    chunk = {"id": "stray", "text": "x", "source": "gone.md", "title": "gone", "position": 0}
    stray = {"id": "stray", "chunk": json.dumps(chunk)}
    kb.store.client.upsert(kb.store.name, [{**stray, "vector": kb.embedder.embed_query(question).tolist()}])
    reopened = KnowledgeBase.open(milvus_settings)
    found = reopened.search(question, k=3).hits
    assert [h.doc_id for h in found][:1] == ["film-1"] and "stray" not in [h.id for h in found]
    corpus["txt"].write_text("Oolong tea is partly oxidised.\n", encoding="utf-8")
    reopened.ingest([folder])
    assert reopened.store.rows() == len(reopened)


def test_a_calibrated_threshold_is_stored_in_the_collection(milvus_settings, corpus):
    open_kb(milvus_settings).ingest([corpus["md"].parent])
    assert KnowledgeBase.open(milvus_settings).write_threshold(0.42) == 0.42
    reopened = KnowledgeBase.open(milvus_settings)
    assert reopened.threshold == 0.42 and reopened.search("卧虎藏龙").threshold == 0.42


def test_a_lite_file_another_process_has_open_is_refused_with_what_to_do(milvus_settings, corpus):
    open_kb(milvus_settings).ingest([corpus["md"].parent])  # this process now holds the file (Lite serves one)
    env = {"RAGBOT_EMBEDDER": "hash", "RAGBOT_VECTOR_STORE": "milvus", "RAGBOT_MILVUS_URI": milvus_settings.milvus_uri}
    second = run_cli_process("search", "尼罗河", env=env)
    assert second.returncode == 1 and "Traceback" not in second.stderr
    assert second.stderr.strip().splitlines() == [
        f"ragbot: error: cannot open the Milvus Lite file {milvus_settings.milvus_uri}: another process has it open "
        "(Milvus Lite serves one process per file); stop that process, or run a Milvus server and set milvus_uri "
        "to its address, e.g. http://localhost:19530"
    ]
