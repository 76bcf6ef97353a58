"""Which confident passages may ground an answer: routing that knows the entity.

A cosine above the threshold says a passage is close to the question's domain, not that it is
about the same film: "《楚门的世界》是哪年上映的？" is close to every passage that gives a release
year. So when the question names an entity (or a follow-up was searched with the topic's
entity), only the confident passages about that entity are evidence: their document title names
it, or their title, headings or text contain it. None left -> the fallback, with the reason.

A name in one script cannot be checked against a passage in another ("Yangtze" against a
Chinese passage on 长江): such a passage is not rejected on that name (cross-lingual hits stay
evidence when their cosine says so).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ragbot.conversation.rewrite import EN_PRONOUN, ZH_PRONOUN
from ragbot.conversation.topic import has_name, title_names
from ragbot.knowledge.knowledge_base import Hit
from ragbot.text import is_chinese


def refers_back(question: str) -> bool:
    """Whether the question points back with a pronoun or demonstrative ("它", "这部", "her"): a
    follow-up on the topic far more often than a new subject is (71% of the KdConv follow-ups,
    13% of the other-subject questions put after them; docs/evaluation.md)."""
    return bool((ZH_PRONOUN if is_chinese(question) else EN_PRONOUN).search(question))


def topic_gate(threshold: float, margin: float, question: str) -> float:
    """How close (cosine) the question alone must come to the topic's documents for a follow-up to
    keep the topic: within ``margin`` of the threshold when it points back, half of it otherwise."""
    return threshold - (margin if refers_back(question) else margin / 2)


@dataclass(frozen=True)
class Evidence:
    """The passages an answer may use (best first) and why: shown by ``/why`` and ``--json``."""

    sources: list[Hit]
    reason: str


def titled(hit: Hit, name: str) -> bool:
    """Whether the hit's document is ``name``: its title, or the title's head before a colon or a
    bracket, is the name ("尼罗河" for "尼罗河：非洲的生命之河", "喜剧之王" for
    "喜剧之王（1999年周星驰主演并执导电影）"). A name in the bracket ("周星驰" there) only mentions
    it: that film is not the person's document."""
    return name.casefold() in {n.casefold() for n in title_names(hit.title)}


def mentions(hit: Hit, name: str) -> bool:
    """Whether the passage's title, headings or text contain ``name``."""
    return any(has_name(text, name) >= 0 for text in (hit.title, *hit.headings, hit.text))


def checkable(hit: Hit, name: str) -> bool:
    """Whether ``name`` could be written in the passage: a Latin-script name in a Chinese passage
    (or a Chinese name in a passage without Chinese) cannot be looked for there."""
    return is_chinese(name) == is_chinese(f"{hit.title}\n{hit.text}")


def one_per_document(hits: Sequence[Hit], limit: int) -> list[Hit]:
    """``limit`` of the ``hits``, in their order, from as many documents as there are: a second
    chunk of a document is kept only when no other document is left. Three chunks of the top
    film leave out the actor a follow-up asks about; one of each lets the answer see both
    (grounded precision on KdConv, docs/evaluation.md)."""
    seen: set[str] = set()
    first: list[Hit] = []
    rest: list[Hit] = []
    for hit in hits:
        key = hit.doc_id or hit.source
        (rest if key in seen else first).append(hit)
        seen.add(key)
    chosen = {id(h) for h in (first + rest)[:limit]}
    return [h for h in hits if id(h) in chosen]


def evidence(confident: Sequence[Hit], names: Sequence[str], limit: int, topic: Sequence[str] = ()) -> Evidence:
    """``limit`` of the ``confident`` hits (best first, one per document first) that are about one
    of ``names`` (all of them when ``names`` is empty): the documents of those names first, then
    the passages that mention one, then those that cannot be checked for it (another script).
    Within each of these, a passage of the conversation's ``topic`` documents comes first:
    "编剧是宫崎骏，这是在哪里制片的呢？" after 《魔女宅急便》 asks about the film, and its passage
    names 宫崎骏 too, so it goes before other films that name him. ``topic`` only orders the
    passages about ``names``; it admits none."""
    if not confident:
        return Evidence([], "no passage reaches the threshold")
    if not names:
        return Evidence(one_per_document(confident, limit), "passages above the threshold")
    named = ", ".join(names[:3])
    tiers: list[list[Hit]] = [[], [], []]
    for hit in confident:
        if any(titled(hit, n) for n in names):
            tiers[0].append(hit)
        elif any(mentions(hit, n) for n in names):
            tiers[1].append(hit)
        elif all(not checkable(hit, n) for n in names):
            tiers[2].append(hit)
    if topic:
        tiers = [sorted(tier, key=lambda h: not any(titled(h, n) for n in topic)) for tier in tiers]
    kept = one_per_document([h for tier in tiers for h in tier], limit)
    if not kept:
        return Evidence([], f"no confident passage is about {named}")
    if not tiers[0] and not tiers[1]:
        return Evidence(kept, f"passages above the threshold (not in the language of {named})")
    return Evidence(kept, f"passages about {named}")


def in_prompt_order(sources: Sequence[Hit], shown: Sequence[Hit]) -> list[Hit]:
    """``sources`` with the longest run of the previous answer's passages ``shown`` that they
    repeat put first, in the order it saw them; the others follow in rank order. The warm-up
    computed the prompt up to those passages (``ragbot.conversation.warmup``), so a follow-up on
    the same passages evaluates only its question instead of ~200 tokens per passage."""
    ids = {h.id for h in sources}
    run: list[str] = []
    for hit in shown:
        if hit.id not in ids:
            break
        run.append(hit.id)
    if not run:
        return list(sources)
    by_id = {h.id: h for h in sources}
    return [by_id[i] for i in run] + [h for h in sources if h.id not in run]
