"""Reciprocal rank fusion: one ranking from several, by rank alone (scores need not be comparable)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TypeVar

from ragbot.knowledge.hits import Hit

Key = TypeVar("Key", bound=Hashable)

RRF_K = 60  # the constant of Cormack et al. (2009); damps the weight of the very first ranks


def fuse_rrf(lists: Sequence[Sequence[Key]], k: int = RRF_K) -> list[tuple[Key, float]]:
    """Items of the ranked ``lists`` (best first) by the sum of ``1 / (k + rank)`` over the
    lists they appear in, best first; ties keep the order of first appearance."""
    fused: dict[Key, float] = {}
    for ranking in lists:
        for rank, item in enumerate(ranking, start=1):
            fused[item] = fused.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(fused.items(), key=lambda pair: -pair[1])


def fuse_hits(lists: Sequence[Sequence[Hit]]) -> list[Hit]:
    """Hits of several searches in one ranking, by reciprocal rank fusion of their ids; a hit found
    by several searches keeps its highest cosine (so the threshold means what it did), and equal
    fused ranks go to the higher cosine."""
    best: dict[str, Hit] = {}
    for hit in (h for hits in lists for h in hits):
        if hit.id not in best or hit.score > best[hit.id].score:
            best[hit.id] = hit
    fused = fuse_rrf([[h.id for h in hits] for hits in lists])
    return [best[i] for i, _ in sorted(fused, key=lambda pair: (-pair[1], -best[pair[0]].score))]
