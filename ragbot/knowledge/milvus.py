"""The index in Milvus (``vector_store = "milvus"``), through pymilvus.

``milvus_uri`` is a local file ending in ``.db`` (Milvus Lite, run by pymilvus on this machine) or a
server address such as ``http://host:19530`` (Milvus standalone or a cluster); the same client code
talks to both. The key comes from ``MILVUS_TOKEN`` in the environment only.

Two collections. ``<milvus_collection>`` holds one row per chunk: its content-hash id (the primary
key), the chunk as JSON, and its L2-normalised vector, indexed FLAT (exact) or HNSW with the inner
product metric, so scores are the same cosines FAISS gives. ``<milvus_collection>_meta`` holds the
manifest and the sources (file hashes and their chunk ids) as JSON, written the way FAISS writes
generations: the parts under a new generation name, then one row ``CURRENT`` naming it (a single
upsert), then the parts and chunks that generation no longer lists are deleted. A reader keeps to
the chunks its generation lists, so an interrupted ingest leaves the previous index searchable.

The lexical side of hybrid search stays ragbot's own BM25 (``lexical.py``), built in memory from
the chunk texts at the first hybrid search. Milvus Lite's full-text search was tried and not used:
it scores each segment with that segment's own statistics (``milvus_lite/engine/collection.py``
says so), so BM25 scores drift as incremental ingests add segments, and its analyzers (standard,
or jieba from another package) are not ragbot's tokenizer (titles, stop words, hyphenated names),
so hybrid rankings would differ from the FAISS index's on the same chunks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock, Timeout

from ragbot import registry
from ragbot.errors import IndexCorruptError, IndexLockedError, IndexNotFoundError, VectorStoreError
from ragbot.knowledge.chunking import Chunk
from ragbot.knowledge.index import (
    HNSW_EF_CONSTRUCTION,
    HNSW_EF_SEARCH,
    HNSW_M,
    Manifest,
    SourceRecord,
    StoredIndex,
    _chunk_from_json,
    _chunk_to_json,
)
from ragbot.knowledge.vector_store import IndexUpdate, VectorStore

CONNECT_TIMEOUT = 10.0  # seconds to reach a server at start
BATCH = 256  # rows per insert, get or query page
PART_CHARS = 60_000  # sources JSON is stored in parts under Milvus's 65,535-byte VARCHAR limit
CURRENT = "CURRENT"
MAX_LIMIT = 16_384  # Milvus's largest search limit


def _connect(uri: str) -> Any:
    """A ``MilvusClient`` for ``uri``, or ``VectorStoreError`` naming it (one line, at start)."""
    try:
        from pymilvus import MilvusClient
        from pymilvus.exceptions import MilvusException
    except ImportError:
        raise VectorStoreError(
            "vector_store = 'milvus' needs pymilvus and milvus-lite; pip install 'ragbot[milvus]'"
        ) from None
    # A query iterator asks for a timestamp Milvus Lite does not serve, then uses the client's: pymilvus
    # warns and Lite's in-process gRPC server logs a traceback. Neither is the user's concern.
    logging.getLogger("pymilvus").setLevel(logging.ERROR)
    logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
    logging.getLogger("milvus_lite.server_manager").setLevel(logging.CRITICAL)  # a traceback; ours is one line
    # pymilvus pings every 10 s even between calls; Milvus Lite's local server answers an idle chat's pings
    # with GOAWAY "too_many_pings", which gRPC prints on stderr. A local server needs no keepalive.
    lite = {"grpc_options": {"grpc.keepalive_permit_without_calls": False}} if uri.endswith(".db") else {}
    try:
        return MilvusClient(uri=uri, token=os.environ.get("MILVUS_TOKEN", ""), timeout=CONNECT_TIMEOUT, **lite)
    except MilvusException as exc:
        if uri.endswith(".db") and not Path(uri).expanduser().parent.is_dir():
            raise VectorStoreError(
                f"cannot open the Milvus Lite file {uri}: the folder {Path(uri).parent} does not exist; "
                "create it or fix milvus_uri"
            ) from None
        if uri.endswith(".db"):
            raise VectorStoreError(
                f"cannot open the Milvus Lite file {uri}: another process has it open (Milvus Lite serves one "
                "process per file); stop that process, or run a Milvus server and set milvus_uri to its "
                "address, e.g. http://localhost:19530"
            ) from None
        raise VectorStoreError(
            f"cannot reach Milvus at {uri} ({exc.message}); start the server or fix milvus_uri "
            "(a local file ending in .db runs Milvus Lite)"
        ) from None


class MilvusIndex(StoredIndex):
    """A loaded generation whose vectors stay in Milvus: chunks and sources in memory, searches
    and vectors asked of the collection by chunk id."""

    def __init__(self, manifest: Manifest, chunks: list[Chunk], sources: dict[str, SourceRecord], store: MilvusStore):
        super().__init__(manifest, chunks, None, sources)
        self._store = store
        self._rows = {c.id: i for i, c in enumerate(chunks)}
        # rows this generation does not list (left by an interrupted write): searches ask for that many more
        self._extra = max(store.rows() - len(chunks), 0)

    @property
    def has_stored_lexical(self) -> bool:
        return True  # built from the chunk texts by design (see the module docstring): nothing to store

    @property
    def vectors(self) -> np.ndarray:
        """Every chunk's vector, row for row (one round trip per ``BATCH``; for tools, not for search)."""
        return self._vectors_of(list(range(len(self.chunks))))

    def cosine(self, query_vector: np.ndarray, rows: list[int]) -> list[float]:
        if not rows:
            return []
        return [float(s) for s in self._vectors_of(rows) @ query_vector.astype(np.float32)]

    def search_rows(self, query_vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        if not self.chunks:
            return []
        k = min(k, len(self.chunks))
        limit = min(k + self._extra, MAX_LIMIT)
        while True:
            found = self._search(query_vector, limit)
            hits = [(self._rows[h["id"]], float(h["distance"])) for h in found if h["id"] in self._rows]
            # Rows a newer write added may outrank this generation's: then ask for more.
            if len(hits) >= k or len(found) < limit or limit == MAX_LIMIT:
                return hits[:k]
            limit = min(limit * 4, MAX_LIMIT)

    def _search(self, query_vector: np.ndarray, limit: int) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"metric_type": "IP"}
        if self.manifest.index_type == "hnsw":
            params["params"] = {"ef": max(HNSW_EF_SEARCH, limit)}
        return self._store.client.search(
            self._store.name,
            data=[query_vector.reshape(-1).astype(np.float32).tolist()],
            anns_field="vector",
            limit=limit,
            search_params=params,
            output_fields=[],
        )[0]

    def _vectors_of(self, rows: list[int]) -> np.ndarray:
        ids = [self.chunks[r].id for r in rows]
        got = self._store.get(ids, ["vector"])
        return np.asarray([got[i]["vector"] for i in ids], dtype=np.float32).reshape(len(ids), self.manifest.dim)


class MilvusStore(VectorStore):
    """A Milvus collection (and its ``_meta`` companion) as a ragbot index."""

    def __init__(self, uri: str, name: str, lock_dir: Path):
        self.uri = uri
        self.name = name
        self.meta = f"{name}_meta"
        self.location = f"{uri} (Milvus collection {name!r})"
        self.rebuild_hint = "ragbot ingest PATH... --rebuild"
        self._lock_path = lock_dir / f".{Path(uri).name if uri.endswith('.db') else 'milvus'}-{name}.lock"
        self.client = _connect(uri)
        self._is_loaded = False

    # ------------------------------------------------------------------ reading
    def exists(self) -> bool:
        if not (self.client.has_collection(self.meta) and self.client.has_collection(self.name)):
            return False
        self._loaded()
        return bool(self.client.get(self.meta, ids=[CURRENT], output_fields=["key"]))

    def load(self) -> StoredIndex:
        if not self.exists():
            raise IndexNotFoundError(f"no index at {self.location}; create one with `ragbot ingest PATH...`")
        current = self._current()
        manifest = Manifest(**current["manifest"])
        sources_json = self._sources_json(current)
        try:
            sources = {path: SourceRecord(**rec) for path, rec in json.loads(sources_json).items()}
        except (ValueError, TypeError) as exc:
            raise self._damaged(f"unreadable sources record: {exc}") from None
        by_id = {row["id"]: row["chunk"] for row in self._scan(["id", "chunk"])}
        live = list(dict.fromkeys(cid for rec in sources.values() for cid in rec.chunk_ids))
        lost = [cid for cid in live if cid not in by_id]
        if lost:
            raise self._damaged(f"{len(lost)} chunks its sources list are missing from the collection")
        chunks = [_chunk_from_json(by_id[cid]) for cid in live]
        if manifest.chunks != len(chunks):
            raise self._damaged(f"{len(chunks)} chunks, manifest says {manifest.chunks}")
        return MilvusIndex(manifest, chunks, sources, self)

    def rows(self) -> int:
        """Rows in the chunk collection now (live chunks plus any a newer write added)."""
        return int(self.client.get_collection_stats(self.name).get("row_count", 0))

    def get(self, ids: list[str], fields: list[str]) -> dict[str, dict[str, Any]]:
        """Rows by chunk id."""
        out: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), BATCH):
            for row in self.client.get(self.name, ids=ids[start : start + BATCH], output_fields=fields):
                out[row["id"]] = row
        return out

    def _scan(self, fields: list[str]) -> Iterator[dict[str, Any]]:
        iterator = self.client.query_iterator(self.name, batch_size=BATCH, output_fields=fields)
        try:
            while page := iterator.next():
                yield from page
        finally:
            iterator.close()

    def _current(self) -> dict[str, Any]:
        rows = self.client.get(self.meta, ids=[CURRENT], output_fields=["value"])
        try:
            return json.loads(rows[0]["value"])
        except (IndexError, KeyError, ValueError) as exc:
            raise self._damaged(f"unreadable {CURRENT} record: {exc}") from None

    def _sources_json(self, current: dict[str, Any]) -> str:
        keys = [f"{current['generation']}/sources/{i}" for i in range(current["parts"])]
        rows = {r["key"]: r["value"] for r in self.client.get(self.meta, ids=keys, output_fields=["key", "value"])}
        if len(rows) != len(keys):
            raise self._damaged(f"{len(keys) - len(rows)} of {len(keys)} parts of its sources record are missing")
        return "".join(rows[k] for k in keys)

    def _loaded(self) -> None:
        """Collections reopened from disk start released; search and get need them loaded."""
        if not self._is_loaded:
            for name in (self.name, self.meta):
                self.client.load_collection(name)
            self._is_loaded = True

    def _damaged(self, what: str) -> IndexCorruptError:
        return IndexCorruptError(
            f"the index at {self.location} is damaged ({what}); rebuild it with `{self.rebuild_hint}`"
        )

    # ------------------------------------------------------------------ writing
    @contextlib.contextmanager
    def write_lock(self, timeout: float) -> Iterator[None]:
        """A lock file on this machine: it keeps two ingests here apart (a Milvus server takes no lock
        for ragbot; run one writer at a time across machines)."""
        self._lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self._lock_path))
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            raise IndexLockedError(
                f"another process is writing the index at {self.location} (waited {timeout:g}s); "
                "wait for it to finish, or raise lock_timeout"
            ) from None
        try:
            yield
        finally:
            lock.release()

    def write(self, old: StoredIndex | None, update: IndexUpdate) -> StoredIndex:
        manifest = update.manifest
        if old is None:
            self._create(manifest)
            self._is_loaded = True
            previous = None
        else:  # the vector index was chosen when the collection was made
            manifest.index_type, manifest.hnsw = old.manifest.index_type, old.manifest.hnsw
            previous = self._current()
        now = datetime.now(UTC).isoformat(timespec="seconds")
        manifest.updated_at = now
        manifest.created_at = manifest.created_at or now
        manifest.chunks = len(update.chunks)
        manifest.sources = len(update.sources)

        # 1. chunk rows: the new ones, and those whose place or metadata changed (same text, same id)
        by_id = {c.id: c for c in update.chunks}
        new = dict(zip(update.new_ids, update.new_vectors if update.new_vectors is not None else [], strict=True))
        before = {c.id: c for c in old.chunks} if old else {}
        moved = [cid for cid, c in by_id.items() if cid not in new and before.get(cid) != c]
        kept = {cid: row["vector"] for cid, row in self.get(moved, ["id", "vector"]).items()}
        rows = [
            {"id": cid, "chunk": _chunk_to_json(by_id[cid]), "vector": np.asarray(vector, dtype=np.float32).tolist()}
            for cid, vector in [*new.items(), *kept.items()]
        ]
        for start in range(0, len(rows), BATCH):
            self.client.upsert(self.name, rows[start : start + BATCH])

        # 2. the new generation's records, then CURRENT naming it: one upsert switches readers over
        generation = f"gen-{secrets.token_hex(6)}"
        sources_json = json.dumps({p: asdict(r) for p, r in update.sources.items()})  # ASCII: chars == bytes
        parts = [sources_json[i : i + PART_CHARS] for i in range(0, len(sources_json), PART_CHARS)] or [""]
        zero = [0.0, 0.0]
        self.client.upsert(
            self.meta, [{"key": f"{generation}/sources/{i}", "value": p, "vector": zero} for i, p in enumerate(parts)]
        )
        current = {"generation": generation, "parts": len(parts), "manifest": asdict(manifest)}
        self.client.upsert(self.meta, [{"key": CURRENT, "value": json.dumps(current), "vector": zero}])

        # 3. what the new generation no longer lists
        if previous is not None:
            self.client.delete(
                self.meta, ids=[f"{previous['generation']}/sources/{i}" for i in range(previous["parts"])]
            )
        gone = [row["id"] for row in self._scan(["id"]) if row["id"] not in by_id]
        for start in range(0, len(gone), BATCH):
            self.client.delete(self.name, ids=gone[start : start + BATCH])
        return MilvusIndex(manifest, list(update.chunks), dict(update.sources), self)

    def write_threshold(self, threshold: float, timeout: float) -> None:
        with self.write_lock(timeout):
            current = self._current()
            current["manifest"]["threshold"] = float(threshold)
            self.client.upsert(self.meta, [{"key": CURRENT, "value": json.dumps(current), "vector": [0.0, 0.0]}])

    def _create(self, manifest: Manifest) -> None:
        """Both collections, empty (dropping any there: a rebuild)."""
        from pymilvus import DataType

        for name in (self.name, self.meta):
            if self.client.has_collection(name):
                self.client.drop_collection(name)
        chunks = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        chunks.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
        chunks.add_field("chunk", DataType.VARCHAR, max_length=65_535)
        chunks.add_field("vector", DataType.FLOAT_VECTOR, dim=manifest.dim)
        index = self.client.prepare_index_params()
        if manifest.index_type == "hnsw":
            params = {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION}
            index.add_index("vector", index_type="HNSW", metric_type="IP", params=params)
        else:
            index.add_index("vector", index_type="FLAT", metric_type="IP")
        self.client.create_collection(self.name, schema=chunks, index_params=index, consistency_level="Strong")

        meta = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        meta.add_field("key", DataType.VARCHAR, is_primary=True, max_length=128)
        meta.add_field("value", DataType.VARCHAR, max_length=65_535)
        meta.add_field("vector", DataType.FLOAT_VECTOR, dim=2)  # Milvus wants a vector field in every collection
        index = self.client.prepare_index_params()
        index.add_index("vector", index_type="FLAT", metric_type="IP")
        self.client.create_collection(self.meta, schema=meta, index_params=index, consistency_level="Strong")


@registry.vector_stores.register("milvus")
def milvus_store(settings: Any, embedder: Any = None) -> MilvusStore:
    """``milvus_uri`` (default: ``milvus.db`` in ragbot's data directory) and ``milvus_collection``."""
    from ragbot.config import data_home

    uri = settings.milvus_address
    if settings.milvus_uri is None:  # ragbot's own data directory: made on first use, like the default index
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
    lock_dir = Path(uri).expanduser().resolve().parent if uri.endswith(".db") else data_home()
    return MilvusStore(uri, settings.milvus_collection, lock_dir)
