"""Hybrid search: BM25 beside FAISS, fused by reciprocal rank, the threshold still on the cosine."""

import json
import multiprocessing
import shutil

import pytest

from ragbot.config import Settings, load_settings
from ragbot.errors import ConfigError
from ragbot.knowledge import index as store
from ragbot.knowledge.fusion import fuse_rrf
from ragbot.knowledge.knowledge_base import KnowledgeBase
from ragbot.knowledge.lexical import tokenize

from helpers import run_cli

# Songs and albums: the distractors share the question's everyday words ("是谁唱的", "歌曲"), the
# target names the song once, among other text. The hash embedder (character bigrams) ranks by
# the everyday words; BM25 by the rare exact name.
DOCS = {
    "song-questions.md": "# 歌曲问答\n\n这首歌曲是谁唱的？很多人问这首歌曲是谁唱的，歌曲的原唱是谁，歌曲是哪年发行的。",
    "song-charts.md": "# 歌曲排行\n\n流行歌曲排行榜：哪首歌曲最受欢迎，歌曲是谁唱的，谁唱的歌曲最多。",
    "song-covers.md": "# 翻唱\n\n翻唱的歌曲是谁唱的？翻唱歌曲和原唱歌曲有什么不同，谁唱得更好。",
    "albums.md": "# 2004年的专辑\n\n周杰伦在2004年发行了第五张专辑，收录了《七里香》《借口》《外婆》"
    "《搁浅》等十首作品，由方文山作词，专辑销量在亚洲名列前茅，获得多项音乐奖项，也带动了中国风的流行。",
    "fine-tuning.md": "# Fine-tuning\n\nParameter-efficient fine-tuning trains a small number of weights; "
    "methods such as LoRA add low-rank matrices to the attention layers of the model.",
    "training.md": "# Training a model\n\nTraining a model on your data: what is training, what is a model, "
    "how is a model trained, what does training a model cost.",
}
SONGS = [
    "稻香",
    "晴天",
    "夜曲",
    "青花瓷",
    "告白气球",
    "东风破",
    "简单爱",
    "双截棍",
    "菊花台",
    "听妈妈的话",
    "发如雪",
    "兰亭序",
]
DOCS.update(
    {
        f"song-{i}.md": f"# {song}\n\n《{song}》是一首流行歌曲，很多人问这首歌是谁唱的，是谁写的。"
        for i, song in enumerate(SONGS)
    }
)
SONG_QUERY = "《七里香》是谁唱的"


@pytest.fixture
def docs(tmp_path):
    folder = tmp_path / "songs"
    folder.mkdir()
    for name, text in DOCS.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def open_kb(settings: Settings, folder=None) -> KnowledgeBase:
    kb = KnowledgeBase.open(settings, create=True)
    if folder is not None:
        kb.ingest([folder])
    return kb


def rank_of(result, name: str) -> int | None:
    sources = [h.source for h in result.hits]
    return next((i + 1 for i, s in enumerate(sources) if s.endswith(name)), None)


@pytest.mark.parametrize("query", [SONG_QUERY, "七里香是谁唱的"])  # the title as a unit, and by its words
def test_hybrid_finds_the_exact_name_the_dense_search_misses(hash_settings, docs, query):
    dense = open_kb(hash_settings.replace(hybrid=False), docs).search(query, k=5)
    hybrid = open_kb(hash_settings).search(query, k=5)
    assert rank_of(dense, "albums.md") is None
    assert rank_of(hybrid, "albums.md") == 1
    top = hybrid.hits[0]
    # its score is still the cosine, judged against the threshold, and the BM25 score is recorded
    assert top.lexical_score > 0 and top.fused_score > 0
    assert top.above_threshold == (top.score >= hybrid.threshold)
    assert top.score < max(h.score for h in dense.hits)


def test_an_english_term_like_lora_is_matched_whole(hash_settings, docs):
    query = "what is LoRA?"
    dense = open_kb(hash_settings.replace(hybrid=False), docs).search(query, k=2)
    hybrid = open_kb(hash_settings).search(query, k=2)
    assert rank_of(dense, "training.md") == 1 and rank_of(dense, "fine-tuning.md") != 1
    assert rank_of(hybrid, "fine-tuning.md") == 1


@pytest.mark.parametrize("k", [1, 3, 5])
def test_the_threshold_decision_is_the_one_dense_search_makes(hash_settings, docs, k):
    dense_kb = open_kb(hash_settings.replace(hybrid=False), docs)
    hybrid_kb = open_kb(hash_settings)
    queries = [SONG_QUERY, "七里香是谁唱的", "what is LoRA?", "周杰伦 2004 专辑", "如何训练模型", "面包怎么烤"]
    for query in queries:
        dense, hybrid = dense_kb.search(query, k=k), hybrid_kb.search(query, k=k)
        assert max(h.score for h in hybrid.hits) == pytest.approx(max(h.score for h in dense.hits)), query
        assert bool(hybrid.confident) == bool(dense.confident), query
        assert all(h.above_threshold == (h.score >= hybrid.threshold) for h in hybrid.hits)


def test_hybrid_false_gives_the_dense_ranking(hash_settings, docs):
    kb = open_kb(hash_settings.replace(hybrid=False), docs)
    result = kb.search(SONG_QUERY, k=6)
    scores = [h.score for h in result.hits]
    assert scores == sorted(scores, reverse=True)
    assert all(h.lexical_score is None and h.fused_score is None for h in result.hits)


def test_hybrid_is_a_setting_that_is_validated():
    assert Settings().hybrid is True
    assert load_settings(environ={"RAGBOT_HYBRID": "false"}).hybrid is False
    with pytest.raises(ConfigError, match="RAGBOT_HYBRID.*'sometimes' is not true or false"):
        load_settings(environ={"RAGBOT_HYBRID": "sometimes"})


def test_cli_search_is_hybrid_unless_switched_off(hash_settings, docs):
    open_kb(hash_settings, docs)
    out = run_cli("search", SONG_QUERY, "--index", str(hash_settings.index), "--json", env={"RAGBOT_EMBEDDER": "hash"})
    assert out.returncode == 0, out.stderr
    top = json.loads(out.stdout)["hits"][0]
    assert top["source"].endswith("albums.md")
    off = run_cli(
        "search",
        SONG_QUERY,
        "--index",
        str(hash_settings.index),
        "--json",
        env={"RAGBOT_EMBEDDER": "hash", "RAGBOT_HYBRID": "false"},
    )
    assert not json.loads(off.stdout)["hits"][0]["source"].endswith("albums.md")


def test_bm25_files_are_part_of_each_generation_and_never_pickled(hash_settings, docs):
    open_kb(hash_settings, docs)
    gen = hash_settings.index / (hash_settings.index / "CURRENT").read_text().strip()
    files = {p.name for p in (gen / "bm25").iterdir()}
    assert "tokenizer.json" in files and "vocab.index.json" in files
    for npy in (gen / "bm25").glob("*.npy"):
        import numpy as np

        np.load(npy, allow_pickle=False)  # raises if it held pickled objects
    assert store.load(hash_settings.index).has_stored_lexical


def _crash_while_writing_bm25(settings, folder, queue):
    """Child process: die (like a kill) in the middle of writing the new generation's BM25 files."""
    import os

    from ragbot.knowledge.lexical import LexicalIndex

    real = LexicalIndex.save

    def save_then_die(self, generation):
        real(self, generation)
        (generation / "bm25" / "vocab.index.json").write_text("{half", encoding="utf-8")
        os._exit(9)

    LexicalIndex.save = save_then_die
    KnowledgeBase.open(settings, create=True).ingest([folder])
    queue.put("not reached")


@pytest.mark.slow
def test_interrupted_write_leaves_the_old_generations_bm25_intact(hash_settings, docs, tmp_path):
    kb = open_kb(hash_settings, docs)
    before = [(h.id, h.lexical_score) for h in kb.search(SONG_QUERY, k=6).hits]
    (docs / "new.md").write_text("# 新歌\n\n《彩虹》是周杰伦的歌曲。", encoding="utf-8")
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_crash_while_writing_bm25, args=(hash_settings, docs, queue))
    child.start()
    child.join(60)
    assert child.exitcode == 9 and queue.empty()
    again = KnowledgeBase.open(hash_settings)
    assert [(h.id, h.lexical_score) for h in again.search(SONG_QUERY, k=6).hits] == before
    assert again.stored.has_stored_lexical
    assert rank_of(again.search("《彩虹》", k=5), "new.md") is None  # the old generation, without the new file
    # the next write succeeds and its BM25 index has the new file
    again.ingest([docs])
    assert rank_of(KnowledgeBase.open(hash_settings).search("《彩虹》", k=1), "new.md") == 1


def test_an_index_without_bm25_files_is_searched_and_the_next_ingest_stores_them(hash_settings, docs, capsys):
    fresh = [(h.id, h.lexical_score) for h in open_kb(hash_settings, docs).search(SONG_QUERY, k=6).hits]
    gen = hash_settings.index / (hash_settings.index / "CURRENT").read_text().strip()
    shutil.rmtree(gen / "bm25")  # as an older ragbot wrote it
    capsys.readouterr()
    old = KnowledgeBase.open(hash_settings)
    assert [(h.id, h.lexical_score) for h in old.search(SONG_QUERY, k=6).hits] == fresh
    note = capsys.readouterr().err
    assert "no usable stored BM25 index" in note and "ragbot ingest" in note and len(note.strip().splitlines()) == 1
    report = old.ingest([docs])  # nothing changed, but the generation is written again with BM25
    assert report.added == 0 and report.removed == 0
    assert store.load(hash_settings.index).has_stored_lexical
    KnowledgeBase.open(hash_settings).search(SONG_QUERY)
    assert "no stored BM25" not in capsys.readouterr().err


def test_a_damaged_bm25_file_is_rebuilt_not_a_traceback(hash_settings, docs):
    kb = open_kb(hash_settings, docs)
    fresh = [h.id for h in kb.search(SONG_QUERY, k=6).hits]
    gen = hash_settings.index / (hash_settings.index / "CURRENT").read_text().strip()
    (gen / "bm25" / "vocab.index.json").write_text("not json", encoding="utf-8")
    assert [h.id for h in KnowledgeBase.open(hash_settings).search(SONG_QUERY, k=6).hits] == fresh


def test_the_tokenizer_segments_chinese_and_keeps_names_whole():
    tokens = tokenize("看过《七里香》吗？恭王府在哪里，What is LoRA and GPT-4?")
    assert "《七里香》" in tokens and "七里香" in tokens  # as a unit and by its words
    assert "恭王府" in tokens and "lora" in tokens and "gpt-4" in tokens
    assert "《我是山姆》" in tokenize("《我是山姆（I am Sam）》是一部剧情片")
    assert not [t for t in tokens if not t.strip() or t in "？，?"]


def test_fuse_rrf_sums_reciprocal_ranks():
    fused = fuse_rrf([["a", "b", "c"], ["c", "a"]], k=60)
    assert [item for item, _ in fused] == ["a", "c", "b"]
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 62)
    assert fuse_rrf([]) == []


def test_the_default_index_of_an_older_ragbot_gets_its_bm25_index_at_open(capsys):
    KnowledgeBase.open(Settings(embedder="hash"))  # the default index, built on first use
    directory = next(p for p in (Settings().index_dir).iterdir() if p.is_dir())
    shutil.rmtree(directory / (directory / "CURRENT").read_text().strip() / "bm25")
    capsys.readouterr()
    kb = KnowledgeBase.open(Settings(embedder="hash"))
    assert store.load(directory).has_stored_lexical
    assert any(h.source.endswith("nile-zh.md") for h in kb.search("尼罗河流经哪些国家", k=3).hits)
    assert "Traceback" not in capsys.readouterr().err
