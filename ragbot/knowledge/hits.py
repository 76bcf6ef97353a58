"""What a search returns: scored hits and the threshold they were judged against.

Its own module, below the knowledge base, so ranking helpers (``ragbot.knowledge.fusion``) can use
the types without importing the knowledge base that uses them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Hit:
    """A retrieved chunk with its cosine score and whether it clears the threshold.

    In a hybrid search ``lexical_score`` is the chunk's BM25 score (None: BM25 did not rank
    it) and ``fused_score`` its reciprocal-rank-fusion score, which decided its place."""

    id: str
    text: str
    source: str
    title: str
    score: float
    above_threshold: bool
    doc_id: str | None = None
    position: int = 0
    headings: tuple[str, ...] = ()
    lexical_score: float | None = None
    fused_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "doc_id": self.doc_id,
            "source": self.source,
            "title": self.title,
            "text": self.text,
            "score": round(self.score, 4),
            "above_threshold": self.above_threshold,
        }


@dataclass(frozen=True)
class SearchResult:
    """The hits for one query, best first, and the threshold they were judged against."""

    query: str
    threshold: float
    hits: list[Hit]

    @property
    def confident(self) -> list[Hit]:
        """The hits that clear the threshold: the evidence a grounded answer may use."""
        return [h for h in self.hits if h.above_threshold]

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.query, "threshold": self.threshold, "hits": [h.to_dict() for h in self.hits]}
