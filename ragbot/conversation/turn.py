"""The values of a turn: the route, what retrieval found (``Retrieval``), the prepared ``Turn`` and the
``Answer``, with the record a saved turn keeps (``turn_meta``) and reads back (``passages_from_meta``).

``RagBot.prepare`` builds a ``Turn`` once, from the values its steps return; ``RagBot.generate``
wraps it in the ``Answer``. Neither is changed afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ragbot.conversation.rewrite import RewriteResult
from ragbot.conversation.routing import Evidence
from ragbot.conversation.topic import Topic
from ragbot.conversation.translation import Translation
from ragbot.knowledge.knowledge_base import Hit, SearchResult, display_source
from ragbot.models.chat import Message, Usage


class Route(StrEnum):
    """How a turn is answered; a ``str``, so ``answer.route == "grounded"`` and JSON keep working."""

    GROUNDED = "grounded"  # from the confident passages, which it cites
    FALLBACK = "fallback"  # nothing confident: a labelled general answer, a refusal or a fixed reply
    MEMORY = "memory"  # a question about the conversation itself, answered from the history


@dataclass(frozen=True)
class Retrieval:
    """What the search found for a standalone question: the scored hits, the confident passages
    about what the question (or its topic) names, and whether the topic was searched with it."""

    search: SearchResult
    evidence: Evidence
    entities: tuple[str, ...] = ()  # whom the confident passages must be about
    topic_query: str = ""  # the question joined with the topic entity, when the topic was used
    topic_reason: str = ""  # why the topic was (or was not) used


@dataclass(frozen=True)
class Turn:
    """A turn prepared for the answer model (``RagBot.prepare``). ``reply`` is set when no generation
    is needed (a question about the conversation, a refusal, a fixed reply); ``prefix`` is the label
    put before a general answer."""

    question: str  # as the user typed it, cleaned
    language: str  # "zh" | "en": which prompts and labels
    started: float  # perf_counter() when the turn began
    route: Route
    route_reason: str  # why this route: shown by /why and in --json
    topic: Topic = field(default_factory=Topic)  # what the conversation was about before this turn
    history: list[Message] = field(default_factory=list)  # trimmed to ``history_tokens``
    rewrite: RewriteResult | None = None
    retrieval: Retrieval | None = None  # the search that decided the route (the translation's, if it grounded)
    translation: Translation | None = None  # the question in the other language, or why not
    sources: list[Hit] = field(default_factory=list)  # the passages shown as [1], [2], ...
    reply: str | None = None
    prefix: str = ""
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step

    @property
    def standalone_question(self) -> str:
        return self.rewrite.question if self.rewrite else self.question

    @property
    def search(self) -> SearchResult | None:
        return self.retrieval.search if self.retrieval else None

    @property
    def topic_query(self) -> str:
        return self.retrieval.topic_query if self.retrieval else ""

    @property
    def topic_reason(self) -> str:
        return self.retrieval.topic_reason if self.retrieval else ""


@dataclass(kw_only=True, frozen=True)
class Answer:
    """What one turn produced: the text, the prepared ``turn`` it answered (route, standalone question,
    passages, the reasons), and the bookkeeping."""

    text: str
    turn: Turn
    hits: list[Hit] = field(default_factory=list)  # everything retrieved (top_k), best first
    usage: dict[str, Usage] = field(default_factory=dict)  # per stage: "rewrite", "translation", "answer"
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    models: dict[str, str] = field(default_factory=dict)  # the model each stage used
    topic: Topic = field(default_factory=Topic)  # what the conversation is about after this turn

    @property
    def route(self) -> Route:
        return self.turn.route

    @property
    def question(self) -> str:
        return self.turn.question

    @property
    def standalone_question(self) -> str:
        return self.turn.standalone_question

    @property
    def sources(self) -> list[Hit]:
        """The passages given to the model as [1], [2], ..."""
        return self.turn.sources

    @property
    def rewrite(self) -> RewriteResult | None:
        return self.turn.rewrite

    @property
    def threshold(self) -> float | None:
        return self.turn.search.threshold if self.turn.search else None

    @property
    def topic_query(self) -> str:
        return self.turn.topic_query

    @property
    def topic_reason(self) -> str:
        return self.turn.topic_reason

    @property
    def route_reason(self) -> str:
        return self.turn.route_reason

    @property
    def translation(self) -> Translation | None:
        return self.turn.translation

    @property
    def total_usage(self) -> Usage:
        total = Usage()
        for usage in self.usage.values():
            total = total + usage
        return total

    def to_dict(self) -> dict[str, Any]:
        """The answer record: ``--json``, the server's ``ragbot`` field, an idempotent replay."""
        return {
            "question": self.question,
            "standalone_question": self.standalone_question,
            "route": self.route,
            "route_reason": self.route_reason,
            "answer": self.text,
            "threshold": self.threshold,
            "sources": [
                {"n": i, **h.to_dict(), "source": display_source(h.source)} for i, h in enumerate(self.sources, 1)
            ],
            "hits": [{**h.to_dict(), "source": display_source(h.source)} for h in self.hits],
            "rewrite": {
                "called_model": self.rewrite.called_model if self.rewrite else False,
                "reason": self.rewrite.reason if self.rewrite else "",
                "reasoning": self.rewrite.reasoning if self.rewrite else "",
            },
            "usage": {stage: u.to_dict() for stage, u in self.usage.items()},
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
            "models": self.models,
            "topic": {
                **self.topic.to_dict(),
                "used_in_retrieval": bool(self.topic_query),
                "query": self.topic_query,
                "reason": self.topic_reason,
            },
            "translation": self.translation.to_dict() if self.translation else None,
        }


def turn_meta(answer: Answer) -> dict[str, Any]:
    """What a saved turn keeps besides its text: the route, the standalone question and the
    passages the model was shown, so training data can later include the same evidence."""
    return {
        "route": answer.route,
        "standalone_question": answer.standalone_question,
        "passages": [
            {
                "chunk_id": h.id,
                "doc_id": h.doc_id,
                "title": h.title,
                "headings": list(h.headings),
                "source": h.source,
                "text": h.text,
                "score": round(h.score, 4),
            }
            for h in answer.sources
        ],
    }


def passages_from_meta(meta: dict[str, Any]) -> list[Hit]:
    """The passages a saved turn used, as hits that ``format_passages`` renders as the bot did."""
    return [
        Hit(
            id=p.get("chunk_id", ""),
            text=p.get("text", ""),
            source=p.get("source", ""),
            title=p.get("title", ""),
            score=float(p.get("score", 0.0)),
            above_threshold=True,
            doc_id=p.get("doc_id"),
            headings=tuple(p.get("headings", ())),
        )
        for p in meta.get("passages", [])
    ]
