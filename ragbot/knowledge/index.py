"""The on-disk index: FAISS vectors, chunks as JSONL, and a manifest, swapped atomically.

Layout of an index directory::

    CURRENT            name of the live generation (replaced atomically with os.replace)
    gen-<time>/        manifest.json, chunks.jsonl, vectors.npy, index.faiss, sources.json,
                       bm25/ (the lexical index of the same chunks, see ``lexical.py``),
                       bundled.json (default index only: the sources synced from its knowledge folder)
    .lock              held by the one process writing (filelock; released if it dies)

A write builds a complete new generation in a temporary directory, renames it into place,
then switches CURRENT. A crash at any point leaves CURRENT pointing at the previous,
complete generation. The previous generation is kept until the next write so a reader
that resolved CURRENT just before a swap can still open it. No pickle anywhere:
vectors are ``.npy`` loaded with ``allow_pickle=False``.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from filelock import FileLock, Timeout

from ragbot.errors import IndexAccessError, IndexCorruptError, IndexLockedError, IndexNotFoundError
from ragbot.knowledge.chunking import Chunk
from ragbot.knowledge.lexical import LexicalIndex

FORMAT_VERSION = 1
CURRENT = "CURRENT"
# A file of its own, not a field of the manifest or of a source record: an older ragbot sharing the
# same RAGBOT_HOME reads those strictly and would call the index damaged; this file it ignores.
BUNDLED = "bundled.json"
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128


@dataclass
class Manifest:
    """What an index was built with: enough to refuse a wrong embedder and to rebuild."""

    embedder: str
    embedder_version: str
    dim: int
    threshold: float
    index_type: str  # "flat" or "hnsw": what was actually built
    chunk_tokens: int
    chunk_overlap: int
    chunks: int = 0
    sources: int = 0
    metric: str = "cosine (inner product of L2-normalised vectors)"
    format_version: int = FORMAT_VERSION
    created_at: str = ""
    updated_at: str = ""
    hnsw: dict[str, int] = field(default_factory=dict)


@dataclass
class SourceRecord:
    """One ingested file: its content hash and the chunking it was cut with."""

    sha256: str
    chunk_tokens: int
    chunk_overlap: int
    chunk_ids: list[str]


def _chunk_to_json(chunk: Chunk) -> str:
    row = asdict(chunk)
    row["headings"] = list(chunk.headings)
    return json.dumps(row, ensure_ascii=False)


def _chunk_from_json(line: str) -> Chunk:
    row = json.loads(line)
    row["headings"] = tuple(row.get("headings") or ())
    return Chunk(**row)


def build_faiss(vectors: np.ndarray, index_type: str) -> faiss.Index:
    """An inner-product FAISS index over unit vectors: exact (flat) or approximate (HNSW)."""
    dim = vectors.shape[1]
    if index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = HNSW_EF_SEARCH
    else:
        index = faiss.IndexFlatIP(dim)
    if len(vectors):
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


class StoredIndex:
    """A loaded generation: manifest, chunks (row i = FAISS id i), FAISS index, sources.

    ``bundled``: the sources the default index took from its knowledge folder (None: not recorded,
    an index that is not the default one, or one written by an older ragbot)."""

    def __init__(
        self,
        manifest: Manifest,
        chunks: list[Chunk],
        faiss_index: faiss.Index,
        sources: dict[str, SourceRecord],
        vectors_path: Path | None = None,
        vectors: np.ndarray | None = None,
        generation: Path | None = None,
        bundled: set[str] | None = None,
    ):
        self.manifest = manifest
        self.chunks = chunks
        self.faiss_index = faiss_index
        self.sources = sources
        self._vectors_path = vectors_path
        self._vectors = vectors
        self.generation = generation  # the directory it was loaded from, if any
        self.bundled = bundled
        self._lexical: LexicalIndex | None = None
        self.lexical_stored: bool | None = None  # None: not looked for yet

    @property
    def lexical(self) -> LexicalIndex:
        """The BM25 index of the chunks: loaded from the generation (memory-mapped), or built
        from the chunk texts when the generation has none (an index written by an older ragbot)."""
        if self._lexical is None:
            found = LexicalIndex.load(self.generation, len(self.chunks)) if self.generation else None
            self.lexical_stored = found is not None
            self._lexical = found or LexicalIndex.build([c.embedding_text for c in self.chunks])
        return self._lexical

    @property
    def has_stored_lexical(self) -> bool:
        """Whether the BM25 index came from disk (False: built in memory, or never loaded)."""
        _ = self.lexical
        return bool(self.lexical_stored)

    def lexical_search(self, query: str, k: int, floor: float = 0.0) -> list[tuple[int, float]]:
        """Rows of the k chunks with the best BM25 scores for ``query``, best first (see
        ``LexicalIndex.search`` for ``floor``)."""
        return self.lexical.search(query, k, floor)

    def cosine(self, query_vector: np.ndarray, rows: list[int]) -> list[float]:
        """Cosine scores of chunks ``rows`` from their stored vectors (for hits only BM25 found)."""
        if not rows:
            return []
        return [float(s) for s in np.asarray(self.vectors[rows], dtype=np.float32) @ query_vector.astype(np.float32)]

    @property
    def vectors(self) -> np.ndarray:
        """All chunk vectors (memory-mapped from disk for a loaded index)."""
        if self._vectors is None:
            assert self._vectors_path is not None
            self._vectors = _load_vectors(self._vectors_path, len(self.chunks), self.manifest.dim)
        return self._vectors

    def search(self, query_vector: np.ndarray, k: int) -> list[tuple[Chunk, float]]:
        """The k nearest chunks with their cosine scores, best first."""
        return [(self.chunks[i], s) for i, s in self.search_rows(query_vector, k)]

    def search_rows(self, query_vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """Rows of the k nearest chunks with their cosine scores, best first."""
        if not self.chunks:
            return []
        k = min(k, len(self.chunks))
        if isinstance(self.faiss_index, faiss.IndexHNSWFlat):
            self.faiss_index.hnsw.efSearch = max(HNSW_EF_SEARCH, k)
        # One query at a time: FAISS's OpenMP threads only add overhead (bench/query_latency.py
        # measured 6.6 ms with 1 thread vs 15.5 ms with 2 at 100k chunks).
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            scores, ids = self.faiss_index.search(query_vector.reshape(1, -1).astype(np.float32), k)
        finally:
            faiss.omp_set_num_threads(threads)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]


def _damaged(directory: Path, what: str) -> IndexCorruptError:
    return IndexCorruptError(
        f"the index at {directory} is damaged ({what}); rebuild it with "
        f"`ragbot ingest PATH... --index {directory} --rebuild`"
    )


def _file_in_the_way(directory: Path) -> Path | None:
    """The file (if any) standing where ``directory`` or one of its parents should be."""
    for path in (directory, *directory.parents):
        if os.path.exists(path):
            return None if os.path.isdir(path) else path
    return None


def _refused(directory: Path, exc: OSError, doing: str) -> IndexAccessError:
    """The operating system's refusal as one line: which path, why, and what to do."""
    in_the_way = _file_in_the_way(directory)
    if in_the_way is not None:
        return IndexAccessError(
            f"cannot use {directory} as an index directory: {in_the_way} is a file, not a directory; "
            "choose a directory for the index (--index)"
        )
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        advice = "free some disk space and try again; the index is unchanged"
    else:
        advice = "check its permissions (ask its owner for access) or choose another index directory (--index)"
    return IndexAccessError(
        f"cannot {doing} the index at {directory} ({exc.strerror or exc}: {exc.filename or directory}); {advice}"
    )


def _load_vectors(path: Path, rows: int, dim: int) -> np.ndarray:
    """``vectors.npy`` memory-mapped, checked against the chunks; never unpickled."""
    directory = path.parent.parent
    try:
        vectors = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise _damaged(directory, "missing file vectors.npy") from None
    except PermissionError as exc:
        raise _refused(directory, exc, "read") from None
    except (OSError, ValueError, EOFError):  # numpy calls a bad header "pickled (object) data"
        raise _damaged(directory, "vectors.npy is not a valid array file") from None
    if vectors.dtype != np.float32 or vectors.shape != (rows, dim):
        found = f"{vectors.dtype} {vectors.shape}"
        raise _damaged(directory, f"vectors.npy holds {found}, expected float32 ({rows}, {dim})")
    return vectors


def exists(directory: Path) -> bool:
    return (directory / CURRENT).is_file()


def load(directory: Path) -> StoredIndex:
    """Open the live generation of the index at ``directory``."""
    directory = Path(directory)
    try:
        return _load(directory)
    except PermissionError as exc:
        raise _refused(directory, exc, "read") from None


def _load(directory: Path) -> StoredIndex:
    if not exists(directory):
        if directory.is_dir() and any(directory.iterdir()):
            raise _damaged(directory, f"no {CURRENT} file")
        if _file_in_the_way(directory) is not None:
            raise _refused(directory, NotADirectoryError(errno.ENOTDIR, "Not a directory"), "read")
        raise IndexNotFoundError(
            f"no index at {directory}; create one with `ragbot ingest PATH... --index {directory}`"
        )
    try:
        name = (directory / CURRENT).read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise _damaged(directory, f"{CURRENT} is not text") from None
    gen = directory / name
    if not name or "/" in name or not gen.is_dir():
        raise _damaged(directory, f"{CURRENT} names a missing generation {name!r}")
    try:
        raw = json.loads((gen / "manifest.json").read_text(encoding="utf-8"))
        manifest = Manifest(**raw)
        chunks = [
            _chunk_from_json(line) for line in (gen / "chunks.jsonl").read_text(encoding="utf-8").splitlines() if line
        ]
        sources = {
            path: SourceRecord(**rec)
            for path, rec in json.loads((gen / "sources.json").read_text(encoding="utf-8")).items()
        }
        faiss_index = faiss.read_index(str(gen / "index.faiss"))
        bundled = None
        if (gen / BUNDLED).exists():
            bundled = json.loads((gen / BUNDLED).read_text(encoding="utf-8"))
            if not isinstance(bundled, list) or not all(isinstance(p, str) for p in bundled):
                raise ValueError(f"{BUNDLED} is not a list of paths")
            bundled = set(bundled)
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise _damaged(directory, f"missing file {Path(exc.filename).name}") from None
    except (ValueError, TypeError, AttributeError) as exc:  # bad JSON, bad UTF-8, wrong fields
        raise _damaged(directory, f"unreadable metadata: {exc}") from None
    except RuntimeError as exc:  # FAISS reports a bad file this way
        raise _damaged(directory, f"unreadable FAISS file: {str(exc).splitlines()[0]}") from None
    if manifest.format_version != FORMAT_VERSION:
        raise _damaged(directory, f"format version {manifest.format_version}, expected {FORMAT_VERSION}")
    if faiss_index.ntotal != len(chunks) or manifest.chunks != len(chunks):
        raise _damaged(
            directory,
            f"{faiss_index.ntotal} vectors but {len(chunks)} chunks, manifest says {manifest.chunks}",
        )
    vectors = _load_vectors(gen / "vectors.npy", len(chunks), manifest.dim)
    return StoredIndex(
        manifest,
        chunks,
        faiss_index,
        sources,
        vectors_path=gen / "vectors.npy",
        vectors=vectors,
        generation=gen,
        bundled=bundled,
    )


@contextmanager
def write_lock(directory: Path, timeout: float) -> Iterator[None]:
    """Held while writing ``directory``; a second writer waits up to ``timeout`` seconds."""
    lock = FileLock(str(directory / ".lock"))
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for path in (directory, directory / ".lock"):  # else filelock may wait for a lock it can never take
            if os.path.exists(path) and not os.access(path, os.W_OK):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        lock.acquire(timeout=timeout)
    except Timeout:
        raise IndexLockedError(
            f"another process is writing the index at {directory} (waited {timeout:g}s); "
            "wait for it to finish, or raise lock_timeout"
        ) from None
    except OSError as exc:
        raise _refused(directory, exc, "write") from None
    try:
        yield
    finally:
        lock.release()


def save(directory: Path, stored: StoredIndex) -> None:
    """Write ``stored`` as a new generation and make it live atomically. Hold ``write_lock``."""
    directory = Path(directory)
    try:
        _save(directory, stored)
    except OSError as exc:  # the live generation is untouched until the final rename
        raise _refused(directory, exc, "write") from None


def _save(directory: Path, stored: StoredIndex) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for leftover in directory.glob(".tmp-*"):  # from a writer that crashed
        shutil.rmtree(leftover, ignore_errors=True)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    stored.manifest.updated_at = now
    stored.manifest.created_at = stored.manifest.created_at or now
    stored.manifest.chunks = len(stored.chunks)
    stored.manifest.sources = len(stored.sources)

    # A plain mkdir, not mkdtemp: its 0700 would hide a shared index from the other users.
    tmp = directory / f".tmp-{secrets.token_hex(6)}"
    tmp.mkdir()
    with open(tmp / "chunks.jsonl", "w", encoding="utf-8") as fh:
        for chunk in stored.chunks:
            fh.write(_chunk_to_json(chunk) + "\n")
    with open(tmp / "vectors.npy", "wb") as fh:
        np.save(fh, np.ascontiguousarray(stored.vectors, dtype=np.float32), allow_pickle=False)
    faiss.write_index(stored.faiss_index, str(tmp / "index.faiss"))
    stored.lexical.save(tmp)  # built from the chunk texts unless loaded with these chunks
    (tmp / "sources.json").write_text(
        json.dumps({p: asdict(r) for p, r in stored.sources.items()}, ensure_ascii=False),
        encoding="utf-8",
    )
    if stored.bundled is not None:
        (tmp / BUNDLED).write_text(json.dumps(sorted(stored.bundled), ensure_ascii=False), encoding="utf-8")
    (tmp / "manifest.json").write_text(
        json.dumps(asdict(stored.manifest), ensure_ascii=False, indent=2), encoding="utf-8"
    )
    for path in [*tmp.iterdir(), *(tmp / "bm25").iterdir()]:
        _fsync(path)

    previous = (directory / CURRENT).read_text("utf-8", errors="replace").strip() if exists(directory) else None
    name = f"gen-{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 10**9:09d}"
    os.rename(tmp, directory / name)
    pointer = directory / f".{CURRENT}.tmp"
    pointer.write_text(name + "\n", encoding="utf-8")
    _fsync(pointer)
    os.replace(pointer, directory / CURRENT)
    _fsync(directory)
    for old in directory.glob("gen-*"):
        if old.name not in (name, previous):
            shutil.rmtree(old, ignore_errors=True)


def write_manifest_threshold(directory: Path, threshold: float, lock_timeout: float = 60.0) -> None:
    """Store a new default threshold in the live manifest (used by calibration)."""
    with write_lock(directory, lock_timeout):
        stored = load(directory)
        stored.manifest.threshold = float(threshold)
        save(directory, stored)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def manifest_dict(stored: StoredIndex) -> dict[str, Any]:
    return asdict(stored.manifest)
