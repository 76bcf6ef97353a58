"""Reciprocal rank fusion: one ranking from several, by rank alone (scores need not be comparable)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TypeVar

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
