"""The knowledge base: ingest files into an index, retrieve scored evidence from it.

``KnowledgeBase.open(settings)`` loads the embedder and the index (building the default
index from the bundled knowledge base on first use); ``ingest(paths)`` adds, replaces and
removes chunks incrementally; ``search(query)`` returns hits whose ``score`` is a cosine
similarity in [-1, 1], each marked with whether it clears the confidence threshold. With
``hybrid`` on (the default) the ranking fuses the dense (FAISS) and the lexical (BM25) hits
by reciprocal rank fusion, but the threshold is still judged on each hit's cosine.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ragbot.config import Settings, bundled_dir, load_settings
from ragbot.errors import (
    DocumentError,
    EmbedderMismatchError,
    IngestError,
    QueryError,
)
from ragbot.files import sha256_file
from ragbot.knowledge import index as index_files
from ragbot.knowledge.chunking import Chunk, chunk_document
from ragbot.knowledge.documents import find_files, iter_documents
from ragbot.knowledge.fusion import fuse_rrf
from ragbot.knowledge.hits import Hit, SearchResult
from ragbot.knowledge.vector_store import FaissStore, IndexUpdate, VectorStore, open_vector_store
from ragbot.models.embedders import Embedder, make_embedder
from ragbot.text import clean_text, not_utf8

HYBRID_POOL = 20  # candidates taken from each of the dense and the BM25 rankings before fusion
# A lexical hit takes part in the fusion only if it scores at least this share of the best BM25
# score: a chunk sharing one common word with the question is not lexical evidence, and letting it
# in gives the dense favourites a second vote that outweighs the chunk naming the exact entity.
LEXICAL_FLOOR = 0.5
MAX_QUERY_CHARS = 8000  # embedders only read the first few hundred tokens anyway


@dataclass
class IngestReport:
    """What an ingest did, at file and chunk level."""

    files: int = 0
    chunks: int = 0  # chunks in the index afterwards
    added: int = 0
    removed: int = 0
    unchanged: int = 0
    failed: list[DocumentError] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)  # unsupported types found in folders
    seconds: float = 0.0

    def summary(self) -> str:
        line = (
            f"{self.files} files, {self.chunks} chunks in index: {self.added} added, "
            f"{self.removed} removed, {self.unchanged} unchanged in {self.seconds:.1f}s"
        )
        if self.failed:
            line += f"; {len(self.failed)} file(s) failed"
        if self.skipped:
            line += f"; {len(self.skipped)} unsupported file(s) skipped"
        return line


def bundled_knowledge_dir() -> Path:
    """The knowledge base shipped with ragbot (inside the wheel, or the repo's ``knowledge/``)."""
    folder = bundled_dir("knowledge")
    if folder is not None:
        return folder
    raise IngestError("the bundled knowledge base is missing from this install; reinstall ragbot")


def display_source(source: str) -> str:
    """Bundled files as ``knowledge/...``, others relative to the working directory if inside it."""
    path = Path(source)
    try:
        bundled = bundled_knowledge_dir()
        if path.is_relative_to(bundled):
            return str(Path("knowledge") / path.relative_to(bundled))
        rel = os.path.relpath(path)
    except (ValueError, IngestError):
        return source
    return source if rel.startswith("..") else rel


def bundled_copies(stored: index_files.StoredIndex, folder: Path, digests: dict[str, str]) -> list[str]:
    """The sources in the default index that came from the knowledge folder of a ragbot at another
    path sharing the same RAGBOT_HOME (a second venv, a moved checkout, another git worktree): each
    would be listed again beside the same document under ``folder``. They are the sources that
    install marked as synced from its folder, and any source that is the same file as one of
    ``folder``'s (``digests``: its files' sha256): a path ending in ``<folder name>/<relative
    path>`` with the same sha256 (an index written before the mark, or by an older ragbot). A
    user's own documents carry no mark, and an exact copy of a bundled file adds nothing, so
    dropping these loses nothing the user ingested."""
    same_file: dict[tuple[str, ...], str] = {}
    for path, digest in digests.items():
        if Path(path).is_relative_to(folder):
            same_file[(folder.name, *Path(path).relative_to(folder).parts)] = digest
    lengths = {len(key) for key in same_file}
    marked = stored.bundled or set()
    copies = []
    for source, record in stored.sources.items():
        path = Path(source)
        if path.is_relative_to(folder):
            continue
        if source in marked or any(same_file.get(path.parts[-n:]) == record.sha256 for n in lengths):
            copies.append(source)
    return copies


def clean_query(query: str) -> str:
    """The query without control characters and surplus length; empty raises ``QueryError``."""
    return clean_text(query, "query", QueryError)[:MAX_QUERY_CHARS]


class KnowledgeBase:
    """An index (FAISS files or a Milvus collection, see ``vector_store.py``) plus the embedder it was built with."""

    def __init__(
        self, settings: Settings, embedder: Embedder, directory: Path | None = None, store: VectorStore | None = None
    ):
        self.settings = settings
        self.embedder = embedder
        self.store = store if store is not None else FaissStore(directory)
        self.directory = self.store.directory  # None for an index not kept in files
        self._stored: index_files.StoredIndex | None = None

    @property
    def location(self) -> str:
        """Where the index lives, as messages name it: a directory, or a Milvus URI and collection."""
        return self.store.location

    @classmethod
    def open(
        cls,
        settings: Settings | None = None,
        embedder: Embedder | str | None = None,
        create: bool = False,
        **overrides: Any,
    ) -> KnowledgeBase:
        """Open the index the settings name; build the default one from the bundled knowledge
        base if it does not exist yet. ``create=True`` defers loading to the first use, so a
        missing index can be created (and a mismatched one rebuilt) by ``ingest``. ``embedder``: an
        ``Embedder``, or the name of one (the ``embedder`` setting, like any other override)."""
        if isinstance(embedder, str):
            embedder, overrides = None, {**overrides, "embedder": embedder}
        settings = settings.replace(**overrides) if settings is not None else load_settings(overrides=overrides)
        embedder = embedder or make_embedder(settings)
        kb = cls(settings, embedder, store=open_vector_store(settings, embedder))  # a Milvus URI is reached here
        if settings.uses_default_index:
            knowledge = (settings.knowledge_dir or bundled_knowledge_dir()).expanduser().resolve()
            if not kb.store.exists():
                print(
                    "Building the default index from the bundled knowledge base (first run only)...",
                    file=sys.stderr,
                )
                kb.ingest([knowledge], knowledge_folder=knowledge)
            elif kb._is_stale(knowledge):
                print("The bundled knowledge base changed; updating the default index...", file=sys.stderr)
                kb.ingest([knowledge], knowledge_folder=knowledge)
            elif not kb.stored.has_stored_lexical or kb.stored.bundled is None:
                kb.ingest([knowledge], knowledge_folder=knowledge)  # written by an older ragbot: store what it lacks
            else:
                kb._load()
        elif not create:
            kb._load()  # fails early: missing, damaged, or built with another embedder
        return kb

    def _is_stale(self, folder: Path) -> bool:
        """Whether files under ``folder`` differ from what the index holds, or the index still holds
        another install's copy of them (cheap: hashes only)."""
        files, _ = find_files([folder])
        stored = self._load()
        folder = folder.resolve()
        known = {s for s in stored.sources if Path(s).is_relative_to(folder)}
        if known != {str(f) for f in files}:
            return True
        try:
            digests = {str(f): sha256_file(f) for f in files}
        except OSError:
            return True  # an unreadable file: ingest reports it
        return any(stored.sources[f].sha256 != d for f, d in digests.items()) or bool(
            bundled_copies(stored, folder, digests)
        )

    # ------------------------------------------------------------------ reading
    def _load(self) -> index_files.StoredIndex:
        stored = self.store.load()
        built, configured = repr(stored.manifest.embedder), repr(self.embedder.name)
        if built == configured and stored.manifest.dim != self.embedder.dim:
            built, configured = f"{built} (dim {stored.manifest.dim})", f"{configured} (dim {self.embedder.dim})"
        if built != configured:
            raise EmbedderMismatchError(
                f"the index at {self.location} was built with embedder {built}, "
                f"but the configured embedder is {configured}; use the same embedder, or "
                f"rebuild with `{self.store.rebuild_hint}`"
            )
        self._stored = stored
        return stored

    @property
    def stored(self) -> index_files.StoredIndex:
        return self._stored if self._stored is not None else self._load()

    def write_threshold(self, threshold: float) -> float:
        """Store ``threshold`` as the index's default (calibration); the threshold now stored."""
        self.store.write_threshold(threshold, self.settings.lock_timeout)
        self._stored = None
        return self.manifest.threshold

    @property
    def manifest(self) -> index_files.Manifest:
        return self.stored.manifest

    @property
    def threshold(self) -> float:
        """The user's threshold if set, else the one stored in the index for its embedder."""
        if self.settings.threshold is not None:
            return self.settings.threshold
        return self.manifest.threshold

    def __len__(self) -> int:
        return len(self.stored.chunks)

    def search(self, query: str, k: int | None = None, threshold: float | None = None) -> SearchResult:
        """Top-k hits for ``query`` (best first), each judged against ``threshold`` (default:
        ``self.threshold``) by its cosine score. With ``hybrid`` on, "best first" is the reciprocal
        rank fusion of the dense and the BM25 rankings; a hit only BM25 found gets its cosine from
        the stored vectors. The hit with the best cosine is always among the hits, so whether any
        hit clears the threshold does not depend on ``hybrid``."""
        query = clean_query(query)
        k = self.settings.top_k if k is None else k
        if isinstance(k, bool) or not isinstance(k, int):
            raise QueryError(f"k must be a whole number, got {k!r}")
        if k < 1:
            raise QueryError(f"k must be at least 1, got {k}")
        if threshold is not None and (
            isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not -1 <= threshold <= 1
        ):
            raise QueryError(f"threshold must be a cosine similarity between -1 and 1, got {threshold!r}")
        vector = self.embedder.embed_query(query)
        threshold = self.threshold if threshold is None else threshold
        stored = self.stored
        if not self.settings.hybrid:
            hits = [self._hit(stored.chunks[row], cosine, threshold) for row, cosine in stored.search_rows(vector, k)]
            return SearchResult(query=query, threshold=threshold, hits=hits)
        pool = max(k, HYBRID_POOL)
        dense = dict(stored.search_rows(vector, pool))
        lexical = dict(self._lexical_search(query, pool))
        ranked = fuse_rrf([list(dense), list(lexical)])
        fused = ranked[:k]
        # The best cosine always stays among the hits (last, if fusion ranked it lower), so the
        # threshold decision, "does any hit clear it", is exactly the one dense search makes.
        best = next(iter(dense), None)
        if best is not None and all(row != best for row, _ in fused):
            fused[-1] = next(pair for pair in ranked if pair[0] == best)
        only_lexical = [row for row, _ in fused if row not in dense]
        dense.update(zip(only_lexical, stored.cosine(vector, only_lexical), strict=True))
        hits = [self._hit(stored.chunks[row], dense[row], threshold, lexical.get(row), rrf) for row, rrf in fused]
        return SearchResult(query=query, threshold=threshold, hits=hits)

    def documents(self) -> dict[str, str]:
        """Each document's key (its ``doc_id``, or its source file when it has none) -> its title."""
        return {key: title for key, (title, _) in self._documents().items()}

    def search_documents(
        self, query: str, keys: Sequence[str], k: int | None = None, threshold: float | None = None
    ) -> SearchResult:
        """The chunks of the documents ``keys`` (see ``documents``), best first by cosine with ``query``:
        a conversation's topic documents, scored like ``search`` scores."""
        query = clean_query(query)
        threshold = self.threshold if threshold is None else threshold
        rows = [row for key in dict.fromkeys(keys) for row in self._documents().get(key, ("", []))[1]]
        if not rows:
            return SearchResult(query=query, threshold=threshold, hits=[])
        scores = np.asarray(self.stored.cosine(self.embedder.embed_query(query).reshape(-1), rows))
        order = np.argsort(-scores, kind="stable")[: self.settings.top_k if k is None else k]
        hits = []
        for i in order:
            hits.append(self._hit(self.stored.chunks[rows[i]], float(scores[i]), threshold))
        return SearchResult(query=query, threshold=threshold, hits=hits)

    def _documents(self) -> dict[str, tuple[str, list[int]]]:
        """Document key -> (title, chunk rows), computed once per loaded index generation."""
        stored = self.stored
        cached = getattr(self, "_documents_cache", None)
        if cached is None or cached[0] is not stored:
            docs: dict[str, tuple[str, list[int]]] = {}
            for row, chunk in enumerate(stored.chunks):
                docs.setdefault(chunk.doc_id or chunk.source, (chunk.title, []))[1].append(row)
            cached = self._documents_cache = (stored, docs)
        return cached[1]

    def _lexical_search(self, query: str, k: int) -> list[tuple[int, float]]:
        stored = self.stored
        if stored.lexical_stored is None and stored.generation is not None:
            stored.lexical  # noqa: B018 -- loads it, or builds it for an index an older ragbot wrote
            if not stored.lexical_stored:
                print(
                    f"note: the index at {self.location} has no usable stored BM25 index (written by an older "
                    "ragbot, or damaged); built it in memory for this run; `ragbot ingest` of the same paths stores it",
                    file=sys.stderr,
                )
        return stored.lexical_search(query, k, LEXICAL_FLOOR)

    @staticmethod
    def _hit(
        chunk: Chunk, cosine: float, threshold: float, lexical: float | None = None, fused: float | None = None
    ) -> Hit:
        return Hit(
            id=chunk.id,
            text=chunk.text,
            source=chunk.source,
            title=chunk.title,
            score=cosine,
            above_threshold=cosine >= threshold,
            doc_id=chunk.doc_id,
            position=chunk.position,
            headings=chunk.headings,
            lexical_score=lexical,
            fused_score=fused,
        )

    def retrieve(self, query: str, k: int | None = None) -> list[Hit]:
        """The top-k hits for ``query``; ``hit.above_threshold`` carries the threshold decision."""
        return self.search(query, k).hits

    # ------------------------------------------------------------------ writing
    def _embed(self, chunks: list[Chunk], reuse: index_files.StoredIndex | None, show: bool) -> np.ndarray:
        """The unit vectors of ``chunks``, row for row; the texts ``reuse`` holds are not embedded again."""
        vectors = np.empty((len(chunks), self.embedder.dim), dtype=np.float32)
        rows = {c.embedding_text: row for row, c in enumerate(reuse.chunks)} if reuse is not None else {}
        known = [(i, rows[c.embedding_text]) for i, c in enumerate(chunks) if c.embedding_text in rows]
        if known:
            vectors[[i for i, _ in known]] = reuse.vectors[[row for _, row in known]]
        todo = [i for i, c in enumerate(chunks) if c.embedding_text not in rows]
        if todo:
            bar = tqdm(total=len(todo), unit="chunk", desc="Embedding", disable=not show, file=sys.stderr)
            with bar:
                texts = [chunks[i].embedding_text for i in todo]
                vectors[todo] = self.embedder.embed_passages(texts, progress=bar.update)
        return vectors

    def ingest(
        self,
        paths: Sequence[str | Path],
        rebuild: bool = False,
        progress: bool | None = None,
        *,
        knowledge_folder: Path | None = None,
    ) -> IngestReport:
        """Add files and folders to the index. Unchanged files are skipped, changed files
        replace their old chunks, and files gone from an ingested folder are removed.
        ``rebuild=True`` starts from an empty index (e.g. to change embedder).
        ``knowledge_folder`` (``open`` syncing the default index with it, one of ``paths``): its
        files are marked as the knowledge base's, and another install's copies of a knowledge base
        (``bundled_copies``) are removed in the same write."""
        started = time.perf_counter()
        files, skipped = find_files(list(paths))
        folders = [Path(p).expanduser().resolve() for p in paths if Path(p).expanduser().is_dir()]
        knowledge = knowledge_folder.expanduser().resolve() if knowledge_folder is not None else None
        show = sys.stderr.isatty() if progress is None else progress
        report = IngestReport(files=len(files), skipped=skipped)

        with self.store.write_lock(self.settings.lock_timeout):
            old = None
            if not rebuild and self.store.exists():
                old = self._load()
            old_chunks = {c.id: i for i, c in enumerate(old.chunks)} if old else {}
            sources: dict[str, index_files.SourceRecord] = dict(old.sources) if old else {}
            by_id: dict[str, Chunk] = {c.id: c for c in old.chunks} if old else {}

            # Sources that vanished from a folder being ingested are dropped.
            for source in list(sources):
                if any(Path(source).is_relative_to(f) for f in folders) and not Path(source).exists():
                    del sources[source]

            to_read, hashes = [], {}
            for path in files:
                if not_utf8(str(path)):  # its name could not be stored as JSON text
                    shown = str(path).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                    report.failed.append(DocumentError(shown, "its name is not valid UTF-8 text; rename it"))
                    continue
                try:
                    digest = sha256_file(path)
                except OSError as exc:  # e.g. no read permission: skipped like any bad file
                    report.failed.append(DocumentError(path, f"cannot be read ({exc.strerror}); check its permissions"))
                    continue
                hashes[str(path)] = digest
                rec = sources.get(str(path))
                if rec and (rec.sha256, rec.chunk_tokens, rec.chunk_overlap) == (
                    digest,
                    self.settings.chunk_tokens,
                    self.settings.chunk_overlap,
                ):
                    continue
                to_read.append(path)
            if knowledge is not None and old is not None:
                for source in bundled_copies(old, knowledge, hashes):
                    del sources[source]

            new_chunks: dict[str, Chunk] = {}
            for path, result in iter_documents(to_read):
                if isinstance(result, DocumentError):
                    report.failed.append(result)
                    continue
                ids = []
                for doc in result:
                    for chunk in chunk_document(doc, self.settings.chunk_tokens, self.settings.chunk_overlap):
                        new_chunks[chunk.id] = chunk
                        ids.append(chunk.id)
                sources[str(path)] = index_files.SourceRecord(
                    hashes[str(path)], self.settings.chunk_tokens, self.settings.chunk_overlap, ids
                )
            if report.failed and len(report.failed) == len(files):
                raise IngestError(
                    "nothing was ingested: "
                    + "; ".join(str(e) for e in report.failed[:3])
                    + ("; ..." if len(report.failed) > 3 else "")
                )

            live_ids = [cid for rec in sources.values() for cid in rec.chunk_ids]
            live_ids = list(dict.fromkeys(live_ids))
            chunks = [new_chunks.get(cid) or by_id[cid] for cid in live_ids]
            missing = [c for c in chunks if c.id not in old_chunks]
            report.added = len(missing)
            report.removed = len(set(old_chunks) - set(live_ids))
            report.unchanged = len(live_ids) - report.added
            report.chunks = len(chunks)

            bundled = None if old is None or old.bundled is None else frozenset(old.bundled & sources.keys())
            if knowledge is not None:
                bundled = frozenset(s for s in sources if Path(s).is_relative_to(knowledge))

            # An index from an older ragbot (no stored BM25, no bundled mark) is written again, to store it.
            unchanged = not report.added and not report.removed and not to_read
            if old is not None and unchanged and old.has_stored_lexical and bundled == old.bundled:
                report.seconds = time.perf_counter() - started
                return report  # nothing changed: leave the index exactly as it is

            # Syncing the default index, a chunk whose text it already holds (the copy just dropped,
            # from an install at another path) takes that vector: the same embedder, the same vector.
            new_vectors = self._embed(missing, old if knowledge is not None else None, show)

            index_type = self.settings.index_type
            if index_type == "auto":
                index_type = "hnsw" if len(chunks) >= self.settings.hnsw_min_chunks else "flat"
            manifest = index_files.Manifest(
                embedder=self.embedder.name,
                embedder_version=self.embedder.version,
                dim=self.embedder.dim,
                threshold=old.manifest.threshold if old else self.embedder.default_threshold,
                index_type=index_type,
                chunk_tokens=self.settings.chunk_tokens,
                chunk_overlap=self.settings.chunk_overlap,
                created_at=old.manifest.created_at if old else "",
                hnsw={
                    "M": index_files.HNSW_M,
                    "efConstruction": index_files.HNSW_EF_CONSTRUCTION,
                    "efSearch": index_files.HNSW_EF_SEARCH,
                }
                if index_type == "hnsw"
                else {},
            )
            update = IndexUpdate(manifest, chunks, sources, [c.id for c in missing], new_vectors, bundled)
            del new_vectors  # the store may drop its copy once written (peak memory)
            self._stored = self.store.write(old, update)
        report.seconds = time.perf_counter() - started
        return report
