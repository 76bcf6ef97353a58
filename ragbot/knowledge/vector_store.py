"""Where an index lives: the one interface ``KnowledgeBase`` talks to, and its FAISS implementation.

The setting ``vector_store`` picks the backend by name through ``registry.vector_stores``:
``faiss`` (the default: FAISS files in an index directory, ``index.py``) or ``milvus`` (a Milvus
collection, ``milvus.py``). Both keep the same contract: the embedder and its dimension pinned in
the manifest, cosine scores (inner product of unit vectors), chunks keyed by content-hash ids,
and a whole ingest written as one update, so ``KnowledgeBase`` never branches on the backend.
"""

from __future__ import annotations

import contextlib
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ragbot import registry
from ragbot.knowledge import index as faiss_files
from ragbot.knowledge.chunking import Chunk
from ragbot.knowledge.index import Manifest, SourceRecord, StoredIndex


@dataclass
class IndexUpdate:
    """What one ingest decided: the whole new state, and the vectors of the chunks new to the index."""

    manifest: Manifest
    chunks: list[Chunk]  # every live chunk, in index order
    sources: dict[str, SourceRecord]
    new_ids: list[str]  # the chunks the old index did not hold...
    new_vectors: np.ndarray | None  # ...and their unit vectors, row for row (a store may drop them once copied)
    bundled: frozenset[str] | None = None  # the default index's sources from its knowledge folder (FAISS only)


class VectorStore(ABC):
    """An index's home. ``location`` names it in messages ("the index at ..."); ``rebuild_hint``
    is the command that starts it over; ``directory`` is set for an index kept in files."""

    location: str
    rebuild_hint: str
    directory: Path | None = None

    @abstractmethod
    def exists(self) -> bool:
        """Whether an index has been written here."""

    @abstractmethod
    def load(self) -> StoredIndex:
        """The live index (``IndexNotFoundError`` if there is none, ``IndexCorruptError`` if damaged)."""

    @abstractmethod
    def write_lock(self, timeout: float) -> contextlib.AbstractContextManager[None]:
        """Held while writing; a second writer waits up to ``timeout`` seconds."""

    @abstractmethod
    def write(self, old: StoredIndex | None, update: IndexUpdate) -> StoredIndex:
        """Make ``update`` the live index (``old``: what it replaces; None starts over). Hold the lock."""

    @abstractmethod
    def write_threshold(self, threshold: float, timeout: float) -> None:
        """Store a new default threshold in the manifest (calibration)."""


def open_vector_store(settings: Any, embedder: Any) -> VectorStore:
    """The store the settings choose (``vector_store``), for an index built with ``embedder``."""
    return registry.vector_stores.create(settings.vector_store, settings, embedder=embedder)


class FaissStore(VectorStore):
    """FAISS files in one directory, written as atomically swapped generations (see ``index.py``)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.location = str(self.directory)
        self.rebuild_hint = f"ragbot ingest PATH... --index {self.directory} --rebuild"

    def exists(self) -> bool:
        return faiss_files.exists(self.directory)

    def load(self) -> StoredIndex:
        return faiss_files.load(self.directory)

    def write_lock(self, timeout: float) -> contextlib.AbstractContextManager[None]:
        return faiss_files.write_lock(self.directory, timeout)

    def write(self, old: StoredIndex | None, update: IndexUpdate) -> StoredIndex:
        chunks = update.chunks
        vectors = np.empty((len(chunks), update.manifest.dim), dtype=np.float32)
        old_rows = {c.id: i for i, c in enumerate(old.chunks)} if old else {}
        new = set(update.new_ids)
        reuse = [(i, old_rows[c.id]) for i, c in enumerate(chunks) if c.id not in new]
        if reuse:
            rows, previous = zip(*reuse, strict=True)
            vectors[list(rows)] = old.vectors[list(previous)]
        if update.new_ids:
            position = {c.id: i for i, c in enumerate(chunks)}
            vectors[[position[cid] for cid in update.new_ids]] = update.new_vectors
            update.new_vectors = None  # peak memory: one copy of the vectors besides FAISS's
        stored = StoredIndex(
            update.manifest,
            chunks,
            faiss_files.build_faiss(vectors, update.manifest.index_type),
            update.sources,
            vectors=vectors,
            bundled=None if update.bundled is None else set(update.bundled),
        )
        faiss_files.save(self.directory, stored)
        return stored

    def write_threshold(self, threshold: float, timeout: float) -> None:
        faiss_files.write_manifest_threshold(self.directory, threshold, timeout)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:80]


@registry.vector_stores.register("faiss")
def faiss_store(settings: Any, embedder: Any) -> FaissStore:
    """The ``index`` directory; the default index gets one directory per embedder."""
    if settings.uses_default_index:
        return FaissStore(settings.index_dir / _slug(embedder.name))
    return FaissStore(settings.index_dir)
