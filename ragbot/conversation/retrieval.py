"""A turn's retrieval step: the standalone question searched in the knowledge base (with the
conversation's topic when a follow-up names nothing of its own), and the confident passages about
what the question names (``ragbot.conversation.routing``).

``RagBot.prepare`` calls it for every turn; ``ragbot.finetune`` calls it for training turns that
did not keep their passages, so their prompts show what the bot would have shown.
"""

from __future__ import annotations

from collections.abc import Sequence

from ragbot.config import Settings
from ragbot.conversation.answer_prompt import CONTEXT_PASSAGES
from ragbot.conversation.routing import Evidence, evidence, topic_gate
from ragbot.conversation.topic import (
    TOPIC_DOCUMENTS,
    Topic,
    TopicDocument,
    entity_names,
    short_name,
    title_index,
    topic_names,
)
from ragbot.conversation.turn import Retrieval
from ragbot.knowledge.fusion import fuse_hits
from ragbot.knowledge.knowledge_base import KnowledgeBase, SearchResult


class Retriever:
    """The retrieval step over one knowledge base with the bot's settings (``top_k``, ``threshold``,
    ``topic``, ``topic_margin``); safe to share between threads."""

    def __init__(self, kb: KnowledgeBase, settings: Settings):
        self.kb = kb
        self.settings = settings
        self._titles: tuple[object, dict[str, TopicDocument]] | None = None  # (index generation, titles)

    def titles(self) -> dict[str, TopicDocument]:
        """The knowledge base's document titles (and their short forms) -> the document, for
        finding the entities a text names; computed once per index generation."""
        stored = self.kb.stored
        if self._titles is None or self._titles[0] is not stored:
            index = title_index(TopicDocument(key, title) for key, title in self.kb.documents().items())
            self._titles = (stored, index)
        return self._titles[1]

    def step(self, question: str, standalone: str, topic: Topic, k: int | None = None) -> Retrieval:
        """The standalone question searched (with the topic when a follow-up names no entity of its
        own: ``topic_query``), and the confident passages about the entities the question names, or
        about the topic's when the topic was searched with it."""
        named = entity_names(f"{question}\n{standalone}", self.titles())
        topic_query, topic_reason = self.topic_query(standalone, topic, named)
        topic_docs = topic.documents[:TOPIC_DOCUMENTS] if topic_query else ()
        search = self.search(standalone, k, topic_query=topic_query, topic_docs=topic_docs)
        entities = named or (topic_names(topic) if topic_query else [])
        # a question that names an entity is still said in a conversation: its topic's passages about it go first
        found = self.evidence(search, entities, topic_names(topic) if named else ())
        return Retrieval(search, found, tuple(entities), topic_query, topic_reason)

    def translated(
        self, translation: str, retrieval: Retrieval, k: int | None = None, *, fuse: bool = False
    ) -> Retrieval:
        """The search of a question's translation (``RagBot.cross_lingual_step``), judged about what
        the question or the translation names; ``fuse`` ranks its hits fused with the question's."""
        depth = max(k or 0, self.settings.top_k)
        search = self.kb.search(translation, depth, self.settings.threshold)
        if fuse:
            hits = fuse_hits([retrieval.search.hits, search.hits])[:depth]
            search = SearchResult(query=retrieval.search.query, threshold=search.threshold, hits=hits)
        # "长江" named by the translation counts as much as "Yangtze" named by the question
        names = tuple(dict.fromkeys([*retrieval.entities, *entity_names(translation, self.titles())]))
        return Retrieval(search, self.evidence(search, names), names, retrieval.topic_query, retrieval.topic_reason)

    def topic_query(self, standalone: str, topic: Topic, named: Sequence[str] = ()) -> tuple[str, str]:
        """The standalone question joined with the conversation's current entity, for a follow-up
        that names no entity of its own ("那它是哪年发行的？"), and why; "" when the question names
        one (``named``: a new topic takes over), there is no topic yet, or the question alone is
        far from the topic's documents (a new subject: "怎么烤面包？" after the Nile)."""
        if not self.settings.topic or topic.current is None:
            return "", ""
        if named:
            return "", f"not used: the question names {', '.join(named[:3])}"
        gate = topic_gate(self.kb.threshold, self.settings.topic_margin, standalone)
        docs = [d.doc_id for d in topic.documents[:TOPIC_DOCUMENTS]]
        hits = (self.kb.search_documents(standalone, docs, 1) if docs else self.kb.search(standalone, 1)).hits
        closest = hits[0].score if hits else -1.0
        where = "the topic's documents" if docs else "the knowledge base"
        if closest < gate:
            return "", f"not used: the question alone is far from {where} ({closest:.3f} < {gate:.3f})"
        return f"{topic.current} {standalone}", f"used: the question alone is close to {where} ({closest:.3f})"

    def search(
        self,
        query: str,
        k: int | None = None,
        *,
        topic_query: str = "",
        topic_docs: Sequence[TopicDocument] = (),
    ) -> SearchResult:
        """The knowledge-base hits for the standalone question, scored against the threshold.

        With a ``topic_query`` (a follow-up), the hits of the standalone question, of the topic
        query and of each of the topic's documents ``topic_docs`` are fused by reciprocal rank;
        each hit keeps its best dense cosine as ``score``, so the threshold means what it did.
        Each topic document is searched with its own name joined to the question: "他是哪年出生的？"
        after a film's two directors may be about either, and the topic query names only the
        current one, so the other's chunks would score below the threshold."""
        depth = max(k or 0, self.settings.top_k)
        threshold = self.settings.threshold
        result = self.kb.search(query, depth, threshold)
        if not topic_query:
            return result
        lists = [result.hits, self.kb.search(topic_query, depth, threshold).hits]
        for doc in topic_docs:
            about = f"{short_name(doc.title)} {query}" if doc.title.strip() else topic_query
            lists.append(self.kb.search_documents(about, [doc.doc_id], depth, threshold).hits)
        return SearchResult(query=query, threshold=result.threshold, hits=fuse_hits(lists)[:depth])

    def evidence(self, result: SearchResult, entities: Sequence[str] = (), topic: Sequence[str] = ()) -> Evidence:
        """The confident passages an answer may use, and why: when ``entities`` are given (named by
        the question, or the topic entity a follow-up was searched with), only those about one of
        them, the ``topic``'s own documents first (``ragbot.conversation.routing``)."""
        return evidence(result.confident, entities, min(CONTEXT_PASSAGES, self.settings.top_k), topic)
