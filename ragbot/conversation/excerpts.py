"""Passages cut to the sentences a question asks about, so a local model's answer prompt stays short.

On 2 cores the in-process model evaluates ~40 prompt tokens a second: three whole chunks (~350-700
tokens) cost 9-18 s before the first answer token, while the fact a follow-up asks for ("那它是哪年
上映的？") is one line of them ("我是山姆的上映时间：2001年12月28日"). ``excerpts`` keeps the sentences
that match the question best, in their original order, within a token budget for all passages, and
marks what it left out with "…" (``bench/passage_budget.py`` measures what share of the gold facts
the cut passages still hold, docs/evaluation.md).

A sentence's match is the question's words it contains (the lexical index's tokens: jieba for
Chinese, function and question words dropped), each weighted by how few of the shown sentences
contain it, so the entity name every line of a KdConv passage repeats counts for little and "上映"
for a lot. Adding the embedder's cosine to the question found 5 more of 875 gold facts at 200 tokens
and cost an embedding of every shown sentence per turn: left out (docs/evaluation.md).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import replace

from ragbot.conversation.history import clip_tokens
from ragbot.knowledge.knowledge_base import Hit
from ragbot.knowledge.lexical import tokenize
from ragbot.text import is_chinese
from ragbot.tokens import count_tokens

GAP = "…"
# after a sentence end (an English one when a space follows) or at a line break
_SENTENCE_END = re.compile(r"(?<=[。！？!?])|(?<=[.!?])\s+|\n+")
_GOES_ON = ("；", ";", "，", ",", "、")


def sentences(text: str) -> list[str]:
    """``text`` split after each sentence end and at line breaks (empty pieces dropped); a line
    ending in "；", "，" or "、" goes on in the next one (a value listed over two lines), after a
    space if it ended in a Latin "," or ";"."""
    out: list[str] = []
    for piece in _SENTENCE_END.split(text):
        piece = piece.strip() if piece else ""
        if not piece:
            continue
        if out and out[-1].endswith(_GOES_ON):
            out[-1] += (" " if out[-1][-1] in ",;" else "") + piece
        else:
            out.append(piece)
    return out


# "盗梦空间的类型：动作": a key (up to its colon) and its value (not a time "10:30" or an address "https://")
_KEYED = re.compile(r"^(?P<key>[^：:\n]{0,39}[^：:\n\d][：:])(?!//)\s*(?P<value>\S.*)$")


def merged_keys(pieces: Sequence[str]) -> list[str]:
    """Consecutive "key：value" sentences with the same key as one ("盗梦空间的类型：动作、悬疑、
    惊悚、科幻"). Knowledge exported one fact a line (KdConv's passages) lists a film's four types
    on four lines; merged, a question about the key is shown every item, and the key costs its
    tokens once."""
    out: list[str] = []
    last = None
    for piece in pieces:
        m = _KEYED.match(piece)
        key = m.group("key") if m else None
        if key is not None and key == last:
            joiner = "" if out[-1].endswith(_GOES_ON) else ("、" if is_chinese(key) else ", ")
            out[-1] += joiner + m.group("value")
        else:
            out.append(piece)
        last = key
    return out


def excerpts(hits: Sequence[Hit], question: str, budget: int | None) -> list[Hit]:
    """``hits`` with their texts cut to the sentences that best match ``question``, all of them
    within ``budget`` tokens (``None``: as they are). Each passage keeps its best sentence (its
    first when none matches; clipped to an equal share if too long); the rest of the budget goes
    to the best-matching sentences of any passage, then to the top passages' beginnings."""
    if not budget or not hits or sum(count_tokens(h.text) for h in hits) <= budget:
        return list(hits)
    parts = [merged_keys(sentences(h.text)) or [h.text] for h in hits]
    words = set(tokenize(question))
    bags = [[set(tokenize(p)) for p in ps] for ps in parts]
    every = [bag for bs in bags for bag in bs]
    weight = {w: math.log(1 + len(every) / (1 + sum(w in bag for bag in every))) for w in words}
    score = [[sum(weight[w] for w in words & bag) for bag in bs] for bs in bags]
    chosen: list[dict[int, str]] = [{} for _ in hits]
    used = 0
    share = max(budget // len(hits), 8)
    for i, ps in enumerate(parts):  # one sentence of each passage first
        j = max(range(len(ps)), key=lambda j: (score[i][j], -j))
        text = ps[j] if count_tokens(ps[j]) < share else clip_tokens(ps[j], share)
        chosen[i][j] = text
        used += count_tokens(text) + 1
    rest = sorted(
        ((i, j) for i, ps in enumerate(parts) for j in range(len(ps)) if j not in chosen[i]),
        key=lambda ij: (-score[ij[0]][ij[1]], ij[0], ij[1]),
    )
    for i, j in rest:
        cost = count_tokens(parts[i][j]) + 1
        if used + cost <= budget:
            chosen[i][j] = parts[i][j]
            used += cost
    return [replace(hit, text=_joined(chosen[i], len(parts[i]))) for i, hit in enumerate(hits)]


def _joined(chosen: dict[int, str], total: int) -> str:
    """The chosen sentences in their order, "…" where sentences were left out."""
    order = sorted(chosen)
    pieces: list[str] = [] if order[0] == 0 else [GAP]
    for n, j in enumerate(order):
        if n and j != order[n - 1] + 1:
            pieces.append(GAP)
        pieces.append(chosen[j])
    if order[-1] != total - 1:
        pieces.append(GAP)
    return "\n".join(pieces)
