"""Retrieval quality at document level: recall@k and MRR of gold documents.

A gold document counts as found at rank r when any of its chunks is the r-th distinct
document among the hits. Used by the tests that guard retrieval quality and by ``bench/``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ragbot.knowledge.knowledge_base import Hit, KnowledgeBase, display_source


@dataclass(frozen=True)
class RetrievalCase:
    """One query and the ids (``doc_id``) of the documents that answer it."""

    query: str
    gold_ids: frozenset[str]


def doc_key(hit: Hit) -> str:
    """How gold lists name a document: its ``id`` if it has one, else its source as displayed
    (``knowledge/rivers/nile-zh.md`` for a bundled file, wherever ragbot is installed)."""
    return hit.doc_id or display_source(hit.source)


def doc_ranking(hits: Sequence[Hit]) -> list[str]:
    """Distinct documents in hit order (a document's best chunk decides its rank)."""
    return list(dict.fromkeys(doc_key(h) for h in hits))


def first_gold_rank(hits: Sequence[Hit], gold: Iterable[str]) -> int | None:
    """1-based rank of the first gold document among the hits, or None.

    A gold id may also be the document's full source path, as an index stores it."""
    gold = set(gold)
    ranking: dict[str, int] = {}
    for hit in hits:
        rank = ranking.setdefault(doc_key(hit), len(ranking) + 1)
        if doc_key(hit) in gold or hit.source in gold:
            return rank
    return None


def retrieval_metrics(
    kb: KnowledgeBase, cases: Sequence[RetrievalCase], ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """``recall@k`` for each k and ``mrr`` (over the top max(ks) documents)."""
    depth = max(ks)
    ranks = []
    for case in cases:
        # fetch extra chunks so that `depth` distinct documents are usually available
        hits = kb.retrieve(case.query, k=depth * 3)
        ranks.append(first_gold_rank(hits, case.gold_ids))
    n = len(cases) or 1
    metrics = {f"recall@{k}": sum(r is not None and r <= k for r in ranks) / n for k in ks}
    metrics["mrr"] = sum(1 / r for r in ranks if r is not None and r <= depth) / n
    metrics["n"] = len(cases)
    return metrics
