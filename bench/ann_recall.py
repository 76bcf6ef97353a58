"""ANN quality and speed: ragbot's HNSW index vs exact search on clustered synthetic vectors.

What it measures
    recall@1/5/10 of the HNSW index *exactly as ragbot builds it*
    (``ragbot.knowledge.index.build_faiss(vectors, "hnsw")``: M=32, efConstruction=80, efSearch=128)
    against an exact ``faiss.IndexFlatIP`` on the same vectors, the per-query latency of
    both (one query per ``search`` call, as ``KnowledgeBase.search`` does), and the build
    time of both. The HNSW search is repeated for several efSearch values (default
    64,128,256,512) so a maintainer can pick the trade-off; the row with ragbot's current
    value is marked.

Why
    ragbot switches to HNSW from ``hnsw_min_chunks`` (200k) chunks. The target is
    recall@10 >= 0.95 at 1M chunks of dim 384 (multilingual-e5-small).

Data
    ``--clusters`` Gaussian cluster centres (random unit vectors), each point = centre +
    isotropic Gaussian noise of norm ~``--noise`` x the centre's norm, then L2-normalised
    (so inner product = cosine, as in ragbot). Queries are drawn the same way from a
    separate random stream, so none is in the base set. Fixed seed, generated in blocks
    of 100k to bound temporary memory. Isotropic noise in 384 dimensions is a pessimistic
    model of real embeddings (it has the full intrinsic dimension, where distances
    concentrate); ``--noise-dim R`` puts the noise in a random R-dimensional subspace
    instead, closer to real text embeddings.

Run (default n=200k, ~2 minutes on 2 cores)::

    . .venv/bin/activate && python bench/ann_recall.py

The 1M measurement (HNSW build ~8 minutes on 2 cores, ~5 GiB RAM; run it in the background)::

    nohup python bench/ann_recall.py --n 1000000 --out bench/out/ann_recall_1m.json \\
        > bench/out/ann_recall_1m.log 2>&1 &

Output: a table on stdout and ``bench/out/ann_recall.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np
from _common import log, print_table, rss_mib, summary_ms, write_result

from ragbot.knowledge import index as store


def normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    x /= norms
    return x


def clustered(
    n: int, centers: np.ndarray, noise: float, rng: np.random.Generator, basis: np.ndarray | None, block: int = 100_000
) -> np.ndarray:
    """n unit vectors: a random centre each plus Gaussian noise, built block by block."""
    dim = centers.shape[1]
    out = np.empty((n, dim), dtype=np.float32)
    if basis is None:
        sigma = noise / np.sqrt(dim)  # per-coordinate std so that |noise| ~ noise
    else:
        sigma = noise / np.sqrt(basis.shape[0])
    for start in range(0, n, block):
        m = min(block, n - start)
        labels = rng.integers(len(centers), size=m)
        if basis is None:
            eps = rng.standard_normal((m, dim), dtype=np.float32)
        else:
            eps = rng.standard_normal((m, basis.shape[0]), dtype=np.float32) @ basis
        eps *= sigma
        eps += centers[labels]
        out[start : start + m] = normalise(eps)
    return out


def recall(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    hits = sum(len(set(f[:k].tolist()) & set(t[:k].tolist())) for f, t in zip(found, truth, strict=True))
    return hits / (k * len(truth))


def single_query_search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[float]]:
    ids = np.empty((len(queries), k), dtype=np.int64)
    times = []
    for i in range(len(queries)):
        q = queries[i : i + 1]
        t0 = time.perf_counter()
        _, found = index.search(q, k)
        times.append(time.perf_counter() - t0)
        ids[i] = found[0]
    return ids, times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200_000, help="base vectors (default 200k; the target is 1M)")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument(
        "--noise",
        type=float,
        default=1.0,
        help="noise norm relative to the (unit) centre norm (default 1.0: same-cluster cos ~0.5)",
    )
    ap.add_argument(
        "--noise-dim",
        type=int,
        default=0,
        help="put the noise in a random subspace of this dimension (0 = isotropic, full dim)",
    )
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--ef", default="64,128,256,512", help="efSearch values to sweep (comma-separated)")
    ap.add_argument(
        "--flat-latency-queries",
        type=int,
        default=200,
        help="how many queries to time one by one on the exact index (slow at 1M)",
    )
    ap.add_argument("--threads", type=int, default=0, help="faiss OpenMP threads (0 = all cores)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON output path (default bench/out/ann_recall.json)")
    args = ap.parse_args()

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    threads = faiss.omp_get_max_threads()
    efs = [int(e) for e in args.ef.split(",") if e.strip()]
    if store.HNSW_EF_SEARCH not in efs:
        efs.append(store.HNSW_EF_SEARCH)
    efs.sort()

    rng = np.random.default_rng(args.seed)
    centers = normalise(rng.standard_normal((args.clusters, args.dim), dtype=np.float32))
    basis = None
    if args.noise_dim:
        basis, _ = np.linalg.qr(rng.standard_normal((args.dim, args.noise_dim)).astype(np.float32))
        basis = np.ascontiguousarray(basis.T)  # (noise_dim, dim), orthonormal rows
    log(f"generating {args.n:,} x {args.dim} vectors in {args.clusters} clusters")
    t0 = time.perf_counter()
    base = clustered(args.n, centers, args.noise, rng, basis)
    queries = clustered(args.queries, centers, args.noise, np.random.default_rng(args.seed + 1), basis)
    gen_s = time.perf_counter() - t0

    log("building exact IndexFlatIP")
    t0 = time.perf_counter()
    flat = store.build_faiss(base, "flat")
    flat_build_s = time.perf_counter() - t0

    log(
        f"building HNSW via ragbot.knowledge.index.build_faiss (M={store.HNSW_M}, "
        f"efConstruction={store.HNSW_EF_CONSTRUCTION}, {threads} threads)"
    )
    t0 = time.perf_counter()
    hnsw = store.build_faiss(base, "hnsw")
    hnsw_build_s = time.perf_counter() - t0
    log(f"HNSW built in {hnsw_build_s:.1f}s")
    del base
    _, peak = rss_mib()

    # Ground truth: one batched exact search (BLAS), not timed.
    _, truth = flat.search(queries, args.k)

    # Exact single-query latency on a subset (each query scans all n vectors).
    nflat = min(args.flat_latency_queries, args.queries)
    log(f"timing exact search, {nflat} single queries")
    flat_ids, flat_times = single_query_search(flat, queries[:nflat], args.k)
    assert recall(flat_ids, truth[:nflat], args.k) > 0.999

    rows, results = [], []
    flat_lat = summary_ms(flat_times)
    rows.append(
        [
            f"exact IndexFlatIP, {threads} threads",
            "-",
            1.0,
            1.0,
            1.0,
            flat_lat["p50_ms"],
            flat_lat["p95_ms"],
            flat_build_s,
        ]
    )
    results.append(
        {
            "index": "flat",
            "efSearch": None,
            "faiss_threads": threads,
            "recall@1": 1.0,
            "recall@5": 1.0,
            "recall@10": 1.0,
            "latency": flat_lat,
            "build_s": flat_build_s,
        }
    )
    if threads > 1:  # one query per call: FAISS's OpenMP split of a single query can cost more than it gains
        faiss.omp_set_num_threads(1)
        _, flat1_times = single_query_search(flat, queries[:nflat], args.k)
        faiss.omp_set_num_threads(threads)
        flat1 = summary_ms(flat1_times)
        rows.append(["exact IndexFlatIP, 1 thread", "-", 1.0, 1.0, 1.0, flat1["p50_ms"], flat1["p95_ms"], flat_build_s])
        results.append(
            {
                "index": "flat",
                "efSearch": None,
                "faiss_threads": 1,
                "recall@1": 1.0,
                "recall@5": 1.0,
                "recall@10": 1.0,
                "latency": flat1,
                "build_s": flat_build_s,
            }
        )
    for ef in efs:
        log(f"HNSW efSearch={ef}: {args.queries} single queries")
        hnsw.hnsw.efSearch = ef
        single_query_search(hnsw, queries[:20], args.k)  # warm-up
        ids, times = single_query_search(hnsw, queries, args.k)
        lat = summary_ms(times)
        r = {f"recall@{kk}": recall(ids, truth, kk) for kk in (1, 5, args.k)}
        mark = " (ragbot)" if ef == store.HNSW_EF_SEARCH else ""
        rows.append(
            [
                f"HNSW ef={ef}{mark}",
                ef,
                r["recall@1"],
                r["recall@5"],
                r[f"recall@{args.k}"],
                lat["p50_ms"],
                lat["p95_ms"],
                hnsw_build_s,
            ]
        )
        results.append(
            {
                "index": "hnsw",
                "efSearch": ef,
                **r,
                "latency": lat,
                "build_s": hnsw_build_s,
                "ragbot_default": ef == store.HNSW_EF_SEARCH,
            }
        )

    print(
        f"\nANN recall: n={args.n:,} dim={args.dim} clusters={args.clusters} noise={args.noise}"
        f"{f' noise_dim={args.noise_dim}' if args.noise_dim else ' (isotropic)'} "
        f"queries={args.queries} k={args.k} faiss threads={threads}"
    )
    print(
        f"HNSW M={store.HNSW_M} efConstruction={store.HNSW_EF_CONSTRUCTION} "
        f"(ragbot efSearch={store.HNSW_EF_SEARCH}); data generation {gen_s:.1f}s; peak RSS {peak:,.0f} MiB"
    )
    print_table(["index", "efSearch", "R@1", "R@5", f"R@{args.k}", "p50 ms", "p95 ms", "build s"], rows)
    ragbot_row = next(r for r in results if r.get("ragbot_default"))
    verdict = "PASS" if ragbot_row[f"recall@{args.k}"] >= 0.95 else "FAIL"
    print(
        f"\nrecall@{args.k} at ragbot's efSearch={store.HNSW_EF_SEARCH}: "
        f"{ragbot_row[f'recall@{args.k}']:.3f} (target >= 0.95: {verdict})"
    )
    write_result(
        "ann_recall",
        {
            "params": vars(args),
            "faiss_threads": threads,
            "hnsw_params": {
                "M": store.HNSW_M,
                "efConstruction": store.HNSW_EF_CONSTRUCTION,
                "efSearch_ragbot": store.HNSW_EF_SEARCH,
            },
            "generation_s": gen_s,
            "flat_build_s": flat_build_s,
            "hnsw_build_s": hnsw_build_s,
            "peak_rss_mib": peak,
            "results": results,
            "target": {"recall@10": 0.95, "verdict": verdict},
        },
        args.out,
    )


if __name__ == "__main__":
    main()
