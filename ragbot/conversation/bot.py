"""The conversation engine: rewrite -> retrieve -> route -> generate -> remember.

``RagBot.load()`` builds everything from settings; ``bot.conversation()`` gives a
``Conversation`` whose ``ask`` returns an ``Answer`` and whose ``stream`` yields text as it
is generated, then the ``Answer``. One turn:

1. questions about the conversation itself ("我刚才问了什么?") are answered from memory;
2. the question is rewritten into a standalone one when it needs it (``ragbot.conversation.rewrite``);
3. the standalone question is searched in the knowledge base;
4. if the best hit clears the threshold the answer is grounded in the numbered passages
   and cites them; otherwise the fallback policy decides (a labelled general answer, a
   refusal, or a fixed reply);
5. the finished turn is saved (SQLite for named conversations).
"""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from ragbot.config import Settings, load_settings
from ragbot.conversation.citations import CitationFilter
from ragbot.conversation.excerpts import excerpts
from ragbot.conversation.memory import messages_from_pairs, trim_history, validate_history
from ragbot.conversation.prompts import load_prompt
from ragbot.conversation.rewrite import RewriteResult, is_chinese, rewrite_question
from ragbot.conversation.routing import Evidence, evidence, in_prompt_order, topic_gate
from ragbot.conversation.topic import (
    Topic,
    TopicDocument,
    entity_names,
    short_name,
    title_index,
    topic_from_history,
    topic_from_turns,
    update_topic,
)
from ragbot.conversation.translation import LANGUAGE_NAMES, Translation, translate_question
from ragbot.conversation.warmup import WarmUp, start_warm_up
from ragbot.errors import ConversationChangedError, ConversationError, ConversationStoreError
from ragbot.knowledge.fusion import fuse_rrf
from ragbot.knowledge.knowledge_base import CONTROL_CHARS, Hit, KnowledgeBase, SearchResult, display_source, not_utf8
from ragbot.models.chat import ChatModel, GenerationSettings, Message, Usage, make_chat_model
from ragbot.storage.conversations import (
    ConversationStore,
    Feedback,
    Reply,
    TurnKey,
    make_feedback,
    new_turn_id,
)
from ragbot.storage.conversations import open_conversation_store as open_store  # the call sites' name, for now

MAX_QUESTION_CHARS = 4000
CONTEXT_PASSAGES = 3  # passages put in the prompt: prompt processing dominates local latency
LOCAL_PASSAGE_TOKENS = 200  # the passages' share of a local model's answer prompt (docs/evaluation.md)
TOPIC_DOCUMENTS = 2  # the topic's most recent documents whose chunks a follow-up also ranks

LABELS = {
    "general": {
        "zh": "知识库中没有找到相关内容，以下是通用回答：\n\n",
        "en": "Not found in the knowledge base; answering from general knowledge:\n\n",
    },
    "refuse": {
        "zh": "知识库中没有找到相关内容，无法根据知识库回答这个问题。",
        "en": "Not found in the knowledge base, so I can't answer this from it.",
    },
}

_MEMORY_LAST_QUESTION = re.compile(
    r"我(刚才|刚刚|上一个|上个|之前|前面|最后)(一个)?问(了|的)?(什么|啥|是什么|哪个问题)|我的上一个问题|我刚才的问题"
    r"|what (did|was it) i (just )?(ask|asked)|what was my (last|previous) question|my (last|previous) question",
    re.IGNORECASE,
)
_MEMORY_ALL_QUESTIONS = re.compile(
    r"我(都|一共|之前|刚才)?问(过|了)(哪些|几个|什么)问题|what (questions|have i asked)|which questions (did|have) i",
    re.IGNORECASE,
)
_MEMORY_LAST_ANSWER = re.compile(
    r"你(刚才|刚刚|上一句|之前|前面)(说|回答)(了|的)?(什么|啥|是什么)"
    r"|what did you (just )?(say|answer)|repeat (that|your (last )?answer)|what was your (last )?answer",
    re.IGNORECASE,
)


def clean_question(question: Any) -> str:
    """The question without control characters; empty or oversized questions are refused."""
    if not isinstance(question, str):
        raise ConversationError(f"the question must be text, got {type(question).__name__}")
    problem = not_utf8(question)
    if problem:
        raise ConversationError(
            f"the question is not valid UTF-8 text ({problem}); set your terminal or file encoding to UTF-8 "
            "and retype it"
        )
    question = CONTROL_CHARS.sub(" ", question).strip()
    if not question:
        raise ConversationError("the question is empty; type a question")
    if len(question) > MAX_QUESTION_CHARS:
        raise ConversationError(
            f"the question is {len(question):,} characters long; the limit is {MAX_QUESTION_CHARS:,}. "
            "Shorten it, or save the text to a file and `ragbot ingest` it"
        )
    return question


class Route(StrEnum):
    """How a turn is answered; a ``str``, so ``answer.route == "grounded"`` and JSON keep working."""

    GROUNDED = "grounded"  # from the confident passages, which it cites
    FALLBACK = "fallback"  # nothing confident: a labelled general answer, a refusal or a fixed reply
    MEMORY = "memory"  # a question about the conversation itself, answered from the history


@dataclass
class Turn:
    """A turn prepared for the answer model (``RagBot.prepare``): the question, the history it is
    shown, the rewrite, the search and the route. ``reply`` is set when no generation is needed
    (a memory question, a refusal, a fixed reply); ``prefix`` is the label put before a general answer."""

    question: str
    started: float
    language: str  # "zh" | "en": which prompts and labels
    history: list[Message] = field(default_factory=list)  # trimmed to ``history_tokens``
    rewrite: RewriteResult | None = None
    standalone_question: str = ""
    search: SearchResult | None = None
    route: Route = Route.FALLBACK
    sources: list[Hit] = field(default_factory=list)  # the passages shown as [1], [2], ...
    reply: str | None = None
    prefix: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    topic: Topic = field(default_factory=Topic)  # what the conversation was about before this turn
    topic_query: str = ""  # the question joined with the topic entity, when retrieval used the topic
    topic_reason: str = ""  # why the topic was (or was not) used for this question
    entities: list[str] = field(default_factory=list)  # whom the confident passages must be about
    route_reason: str = ""  # why this route: shown by /why and in --json
    translation: Translation | None = None  # the question in the other language, or why not (cross_lingual_step)


@dataclass(kw_only=True)
class Answer:
    """What one turn produced, with the evidence and the bookkeeping."""

    text: str
    route: Route
    question: str  # as the user typed it
    standalone_question: str  # what retrieval used
    hits: list[Hit] = field(default_factory=list)  # everything retrieved, best first
    sources: list[Hit] = field(default_factory=list)  # the passages given to the model as [1], [2], ...
    rewrite: RewriteResult | None = None
    usage: dict[str, Usage] = field(default_factory=dict)  # per stage: "rewrite", "answer"
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    models: dict[str, str] = field(default_factory=dict)
    threshold: float | None = None
    topic: Topic = field(default_factory=Topic)  # what the conversation is about after this turn
    topic_query: str = ""  # the query joined with the topic entity, if this turn's retrieval used it
    topic_reason: str = ""  # why the topic was (or was not) used
    route_reason: str = ""  # why this route ("passages about 尼罗河", "no confident passage is about ...")
    translation: Translation | None = None  # the question searched in the other language, or why it was not

    @property
    def total_usage(self) -> Usage:
        total = Usage()
        for usage in self.usage.values():
            total = total + usage
        return total

    def to_dict(self) -> dict[str, Any]:
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


def format_passages(hits: Sequence[Hit], chinese: bool) -> str:
    """Numbered passages for the prompt, each headed by its title and headings (its file when it
    has no title: a path costs tokens and changes with the working directory); closing delimiters
    inside them are defused."""
    blocks = []
    for n, hit in enumerate(hits, start=1):
        where = " > ".join([hit.title, *[h for h in hit.headings if h != hit.title]]) or display_source(hit.source)
        text = re.sub(r"</\s*(资料|passages)\s*>", "</ \\1>", hit.text, flags=re.IGNORECASE)
        blocks.append(f"[{n}] {where}\n{text}")
    return "\n\n".join(blocks)


def answer_messages(
    question: str,
    sources: Sequence[Hit],
    history: Sequence[Message] = (),
    *,
    chinese: bool,
    prompt_dir: Path | None = None,
    passage_tokens: int | None = None,
) -> list[Message]:
    """What the answer model is shown: the grounded prompt with numbered passages when there
    are any (cut to ``question`` within ``passage_tokens``: ``ragbot.conversation.excerpts``),
    the general one otherwise. Shared with ``ragbot.finetune`` so training examples look exactly
    like the bot's own calls."""
    lang = "zh" if chinese else "en"
    if sources:
        prompt = load_prompt(f"grounded.{lang}", prompt_dir)
        shown = excerpts(sources, question, passage_tokens)
        system, user = prompt.render(passages=format_passages(shown, chinese), question=question)
    else:
        system, user = load_prompt(f"general.{lang}", prompt_dir).render(question=question)
    # static system prompt first, then the (append-only) history, then this turn's part
    return [system, *history, user]


def memory_reply(question: str, history: Sequence[Message]) -> str | None:
    """A reply about the conversation itself, or None if the question is not about it."""
    zh = is_chinese(question)
    asked = [m.content for m in history if m.role == "user"]
    said = [m.content for m in history if m.role == "assistant"]
    if _MEMORY_ALL_QUESTIONS.search(question):
        if not asked:
            return "我们还没有开始对话。" if zh else "We haven't talked yet."
        listed = "\n".join(f"{i}. {q}" for i, q in enumerate(asked, 1))
        return f"你问过这些问题：\n{listed}" if zh else f"You asked:\n{listed}"
    if _MEMORY_LAST_QUESTION.search(question):
        if not asked:
            return "你还没有问过问题。" if zh else "You haven't asked anything yet."
        return f"你刚才问的是：“{asked[-1]}”" if zh else f'You just asked: "{asked[-1]}"'
    if _MEMORY_LAST_ANSWER.search(question):
        if not said:
            return "我还没有回答过问题。" if zh else "I haven't said anything yet."
        return f"我刚才说的是：\n{said[-1]}" if zh else f"I just said:\n{said[-1]}"
    return None


class RagBot:
    """The knowledge base, the models and the settings; stateless per call, so one bot can
    serve many conversations (and threads) at once."""

    def __init__(
        self,
        kb: KnowledgeBase,
        answer_model: ChatModel,
        rewrite_model: ChatModel | None = None,
        settings: Settings | None = None,
        store: ConversationStore | None = None,
    ):
        self.kb = kb
        self.answer_model = answer_model
        self.rewrite_model = rewrite_model or answer_model
        self.settings = settings or kb.settings
        self._store = store
        self._titles: tuple[object, dict[str, TopicDocument]] | None = None  # (index generation, titles)
        self._warming: WarmUp | None = None

    @classmethod
    def load(cls, settings: Settings | None = None, **overrides: Any) -> RagBot:
        """A bot from settings (defaults < ragbot.toml < RAGBOT_* < ``overrides``)."""
        settings = settings.replace(**overrides) if settings else load_settings(overrides=overrides)
        # a database is opened now, so one that cannot be reached fails at start (a SQLite file when first used)
        url = isinstance(settings.sessions, str)
        store = open_store(settings.sessions, settings.postgres_pool_size) if url else None
        kb = KnowledgeBase.open(settings)
        answer = make_chat_model(settings, "answer")
        same = (settings.rewrite_model or settings.model) == (settings.answer_model or settings.model)
        rewrite = answer if same else make_chat_model(settings, "rewrite")
        return cls(kb, answer, rewrite, settings, store)

    @property
    def store(self) -> ConversationStore:
        if self._store is None:
            self._store = open_store(self.settings.sessions_location, self.settings.postgres_pool_size)
        return self._store

    def conversation(self, name: str | None = None) -> Conversation:
        """A conversation; a named one is saved (``sessions``: SQLite or PostgreSQL) and resumes where it stopped."""
        return Conversation(self, name)

    def rewrite(self, question: str, history: Sequence[Message] | Sequence[dict] = ()) -> str:
        """The standalone form of ``question`` given the ``history`` (public for evaluation)."""
        return self.rewrite_details(question, history).question

    def rewrite_details(self, question: str, history: Sequence[Message] | Sequence[dict] = ()) -> RewriteResult:
        question = clean_question(question)
        history = self._history(history)
        return rewrite_question(
            question,
            trim_history(history, self.settings.history_tokens),
            self.rewrite_model,
            self.settings.prompt_dir,
            **self._rewrite_budget(),
        )

    def warm_up(self, history: Sequence[Message] | Sequence[dict] = (), sources: Sequence[Hit] = ()) -> WarmUp:
        """Start computing the next turn's prompt prefixes in the background (a local model only;
        ``sources``: the last answer's passages; see ``ragbot.conversation.warmup``); the next turn
        stops it. Returns the handle."""
        if self._warming is not None:
            self._warming.cancel()
        history = self._history(history)
        warming = self.settings.warm_up
        self._warming = start_warm_up(self, history, sources, answer_messages=answer_messages) if warming else WarmUp()
        return self._warming

    def as_runnable(self):
        """This bot as a LangChain Runnable (see ``ragbot.conversation.runnables``)."""
        from ragbot.conversation.runnables import bot_runnable

        return bot_runnable(self)

    def answer(
        self, question: str, history: Sequence[Message] | Sequence[dict] = (), *, state: Topic | None = None
    ) -> Answer:
        """Answer one question given a finished history (stateless; ``state`` is the previous
        answer's ``topic``, rebuilt from the history text when not given)."""
        *_, answer = self.stream_answer(question, history, state=state)
        return answer

    def stream_answer(
        self,
        question: str,
        history: Sequence[Message] | Sequence[dict] = (),
        *,
        state: Topic | None = None,
        last_sources: Sequence[Hit] = (),
    ) -> Iterator[str | Answer]:
        """Text deltas of the answer as they are generated, then the ``Answer`` (``last_sources``:
        see ``prepare``)."""
        yield from self.generate(self.prepare(question, history, state=state, last_sources=last_sources))

    def titles(self) -> dict[str, TopicDocument]:
        """The knowledge base's document titles (and their short forms) -> the document, for
        finding the entities a text names; computed once per index generation."""
        stored = self.kb.stored
        if self._titles is None or self._titles[0] is not stored:
            index = title_index(TopicDocument(key, title) for key, title in self.kb.documents().items())
            self._titles = (stored, index)
        return self._titles[1]

    # ------------------------------------------------------------------ the steps of a turn
    def prepare(
        self,
        question: str,
        history: Sequence[Message] | Sequence[dict] = (),
        state: Topic | None = None,
        *,
        k: int | None = None,
        last_sources: Sequence[Hit] = (),
    ) -> Turn:
        """Everything decided before the answer model is called: memory, rewrite, retrieval, route.

        ``state`` is what the conversation is about (``Conversation`` passes its own; rebuilt from
        the history text when None). ``k`` searches more hits than ``top_k`` (evaluation ranks
        deeper); the answer still sees the same passages. ``last_sources``, the previous answer's
        passages, are shown first again when this turn repeats them (``in_prompt_order``)."""
        started = time.perf_counter()
        if self._warming is not None:  # this turn needs the model: the warm-up stops after its step
            self._warming.cancel()
        question = clean_question(question)
        history = self._history(history)
        turn = Turn(question=question, started=started, language="zh" if is_chinese(question) else "en")
        turn.topic = state if state is not None else topic_from_history(history, self.titles())

        remembered = memory_reply(question, history)
        if remembered is not None:
            turn.route, turn.reply = Route.MEMORY, remembered
            turn.route_reason = "a question about this conversation, answered from its history"
            return turn

        turn.history = trim_history(history, self.settings.history_tokens)
        turn.rewrite = self.rewrite_step(question, turn.history)
        turn.standalone_question = turn.rewrite.question
        t_rewrite = time.perf_counter()
        turn.timings["rewrite"] = t_rewrite - started

        named = entity_names(f"{question}\n{turn.standalone_question}", self.titles())
        turn.topic_query, turn.topic_reason = self.topic_query(turn.standalone_question, turn.topic, named)
        topic_docs = turn.topic.documents[:TOPIC_DOCUMENTS] if turn.topic_query else ()
        turn.search = self.retrieve(turn.standalone_question, k, topic_query=turn.topic_query, topic_docs=topic_docs)
        turn.timings["retrieval"] = time.perf_counter() - t_rewrite
        # the passages must be about what the question names, or what the topic query added
        turn.entities = named or (topic_names(turn.topic) if turn.topic_query else [])
        # a question that names an entity is still said in a conversation: its topic's passages about it go first
        found = self.evidence(turn.search, turn.entities, topic_names(turn.topic) if named else ())
        turn.route = Route.GROUNDED if found.sources else Route.FALLBACK
        turn.sources, turn.route_reason = found.sources, found.reason
        self.cross_lingual_step(turn, k)
        turn.sources = in_prompt_order(turn.sources, last_sources)
        if turn.route is Route.FALLBACK:
            if self.settings.fallback == "general":
                turn.prefix = LABELS["general"][turn.language]
            elif self.settings.fallback == "refuse":
                turn.reply = LABELS["refuse"][turn.language]
            else:
                turn.reply = self.settings.fallback_reply
        return turn

    def rewrite_step(self, question: str, history: Sequence[Message]) -> RewriteResult:
        """The standalone question (``history`` already trimmed), or the question itself when
        the rewrite is switched off."""
        if not self.settings.rewrite:
            return RewriteResult(question, question, reason="skipped: rewrite disabled")
        return rewrite_question(
            question, history, self.rewrite_model, self.settings.prompt_dir, **self._rewrite_budget()
        )

    def _rewrite_budget(self) -> dict[str, int]:
        """The rewrite sees the most recent messages within its own budget, each clipped."""
        s = self.settings
        return {"history_tokens": s.rewrite_history_tokens, "message_tokens": s.rewrite_message_tokens}

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

    def retrieve(
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

    def cross_lingual_step(self, turn: Turn, k: int | None = None, *, fuse: bool = False) -> None:
        """A turn routed to the fallback, searched again with its standalone question translated
        into the other language (zh <-> en) by the rewrite model: the knowledge base may hold the
        answer only there (the Yangtze in Chinese for "How long is the Yangtze?"). The translation's
        hits are routed like the question's, about what the question or the translation names;
        ``turn.translation`` records what happened. ``fuse`` ranks them fused with the question's
        hits instead (no better on bench/cross_lingual.py: docs/evaluation.md)."""
        if turn.route is not Route.FALLBACK:
            turn.translation = Translation(reason="not needed: grounded without it")
            return
        if not self.settings.translate:
            turn.translation = Translation(reason="not tried: setting translate is off")
            return
        started = time.perf_counter()
        translation = translate_question(turn.standalone_question, self.rewrite_model, self.settings.prompt_dir)
        translated = time.perf_counter()
        turn.timings["translation"] = translated - started
        turn.translation = translation
        if not translation.text:
            return
        depth = max(k or 0, self.settings.top_k)
        found_by_translation = self.kb.search(translation.text, depth, self.settings.threshold)
        search = found_by_translation
        if fuse and turn.search is not None:
            search = SearchResult(
                query=turn.search.query,
                threshold=found_by_translation.threshold,
                hits=fuse_hits([turn.search.hits, found_by_translation.hits])[:depth],
            )
        # "长江" named by the translation counts as much as "Yangtze" named by the question
        names = list(dict.fromkeys([*turn.entities, *entity_names(translation.text, self.titles())]))
        found = self.evidence(search, names)
        turn.search, turn.entities = search, names
        turn.timings["retrieval"] = turn.timings.get("retrieval", 0.0) + time.perf_counter() - translated
        turn.translation = dataclasses.replace(translation, searched=True, grounded=bool(found.sources))
        if found.sources:
            about = f": {found.reason}" if found.reason.startswith("passages about") else ""
            turn.route, turn.sources = Route.GROUNDED, found.sources
            turn.route_reason = (
                f"found through the {LANGUAGE_NAMES[translation.language]} translation “{translation.text}”{about}"
            )
        else:
            turn.route_reason = f"{turn.route_reason}; in {LANGUAGE_NAMES[translation.language]} too: {found.reason}"

    def evidence(self, result: SearchResult, entities: Sequence[str] = (), topic: Sequence[str] = ()) -> Evidence:
        """The confident passages an answer may use, and why: when ``entities`` are given (named by
        the question, or the topic entity a follow-up was searched with), only those about one of
        them, the ``topic``'s own documents first (``ragbot.conversation.routing``)."""
        return evidence(result.confident, entities, min(CONTEXT_PASSAGES, self.settings.top_k), topic)

    def route(self, result: SearchResult, entities: Sequence[str] = ()) -> tuple[Route, list[Hit]]:
        """Grounded on the confident passages (about ``entities``, when given), else the fallback."""
        sources = self.evidence(result, entities).sources
        return (Route.GROUNDED, sources) if sources else (Route.FALLBACK, [])

    def generate(self, turn: Turn) -> Iterator[str | Answer]:
        """Text deltas of the answer to a prepared ``turn``, then its ``Answer``."""
        if turn.reply is not None:  # decided without the answer model
            yield turn.reply
            yield self._finish(turn, turn.reply)
            return
        if turn.prefix:
            yield turn.prefix
        messages = answer_messages(
            turn.standalone_question,
            turn.sources,
            turn.history,
            chinese=turn.language == "zh",
            prompt_dir=self.settings.prompt_dir,
            passage_tokens=self.passage_tokens(),
        )
        begun = time.perf_counter()
        cited = CitationFilter(len(turn.sources))  # drops [n] markers that name no passage shown
        first_token = None
        usage = Usage()
        for delta in self.answer_model.stream(messages, self._generation()):
            if delta.text:
                first_token = first_token if first_token is not None else time.perf_counter()
                if shown := cited.feed(delta.text):
                    yield shown
            if delta.usage is not None:
                usage = delta.usage
        if rest := cited.close():
            yield rest
        done = time.perf_counter()
        turn.timings["first_token"] = (first_token or done) - begun
        turn.timings["generation"] = done - begun
        yield self._finish(turn, turn.prefix + cited.text.strip(), usage)

    def _finish(self, turn: Turn, text: str, answer_usage: Usage | None = None) -> Answer:
        """The ``Answer`` of a turn: its text with the evidence and the bookkeeping."""
        usage: dict[str, Usage] = {}
        models: dict[str, str] = {}
        if turn.rewrite is not None:
            usage["rewrite"] = turn.rewrite.usage
            models["rewrite"] = self.rewrite_model.name
        if turn.translation is not None and turn.translation.called_model:
            usage["translation"] = turn.translation.usage
            models["translation"] = self.rewrite_model.name
        if answer_usage is not None:
            usage["answer"] = answer_usage
            models["answer"] = self.answer_model.name
        search = turn.search
        return Answer(
            text=text,
            route=turn.route,
            question=turn.question,
            standalone_question=turn.standalone_question or turn.question,
            hits=search.hits[: self.settings.top_k] if search else [],
            sources=list(turn.sources),
            rewrite=turn.rewrite,
            usage=usage,
            timings={**turn.timings, "total": time.perf_counter() - turn.started},
            models=models,
            threshold=search.threshold if search else None,
            topic=update_topic(
                turn.topic,
                turn.question,
                text,
                [TopicDocument(h.doc_id or h.source, h.title) for h in turn.sources],
                self.titles(),
            ),
            topic_query=turn.topic_query,
            topic_reason=turn.topic_reason,
            route_reason=turn.route_reason,
            translation=turn.translation,
        )

    def passage_tokens(self) -> int | None:
        """The passages' budget in the answer prompt (``None``: whole passages): the setting, or for
        a local answer model ``LOCAL_PASSAGE_TOKENS``, since each prompt token there costs ~1/37 s."""
        budget = self.settings.passage_tokens
        if budget is None:
            return LOCAL_PASSAGE_TOKENS if self.answer_model.warms_prefixes else None
        return budget or None

    def _generation(self) -> GenerationSettings:
        s = self.settings
        return GenerationSettings(s.temperature, s.top_p, s.max_tokens, s.frequency_penalty, s.presence_penalty, s.stop)

    @staticmethod
    def _history(history: Sequence[Message] | Sequence[dict]) -> list[Message]:
        if isinstance(history, (str, bytes)) or not isinstance(history, Sequence):
            raise ConversationError(
                f"the history must be a list of messages, got {type(history).__name__}; "
                'pass [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}, ...]'
            )
        for i, m in enumerate(history, 1):
            shapeless = isinstance(m, dict) and not {"role", "content"} <= m.keys()
            if shapeless or not isinstance(m, (Message, dict, tuple, list)):
                raise ConversationError(
                    f"history item {i} is {type(m).__name__} {str(m)[:40]!r}; each item must be a "
                    '{"role": ..., "content": ...} dict, a (role, content) pair or a Message'
                )
            if isinstance(m, (tuple, list)) and len(m) != 2:
                raise ConversationError(f"history item {i} has {len(m)} parts; a (role, content) pair has 2")
        messages = [m if isinstance(m, Message) else messages_from_pairs([m])[0] for m in history]
        validate_history(messages)
        return messages


def topic_names(topic: Topic) -> list[str]:
    """What a follow-up searched with the topic is about: the current entity, or one of the topic's
    most recent documents (the one grounded last is often the film when the entity is its actor)."""
    names = [topic.current or "", *(short_name(d.title) for d in topic.documents[:TOPIC_DOCUMENTS] if d.title)]
    return [n for n in dict.fromkeys(names) if n]


def fuse_hits(lists: Sequence[Sequence[Hit]]) -> list[Hit]:
    """Hits of several rankings in one, by reciprocal rank fusion of their ids
    (``ragbot.knowledge.fusion``); a hit found by several queries keeps its highest cosine, and
    equal fused ranks go to the higher cosine."""
    best: dict[str, Hit] = {}
    for hit in (h for hits in lists for h in hits):
        if hit.id not in best or hit.score > best[hit.id].score:
            best[hit.id] = hit
    fused = fuse_rrf([[h.id for h in hits] for hits in lists])
    return [best[i] for i, _ in sorted(fused, key=lambda pair: (-pair[1], -best[pair[0]].score))]


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


class Conversation:
    """One conversation: its history, and a lock so a conversation is used by one thread at a time."""

    def __init__(self, bot: RagBot, name: str | None = None):
        self.bot = bot
        self.name = name
        self._load()
        self.warming: WarmUp | None = None  # the warm-up started after the last answer
        self._lock = threading.Lock()

    def _load(self) -> None:
        """The saved history, feedback and state of a named conversation (nothing for an unnamed one)."""
        name = self.name
        self.history: list[Message] = self.bot.store.history(name) if name else []
        self.ratings: dict[int, Feedback] = self.bot.store.feedback(name) if name else {}  # by turn, 0-based
        self.topic: Topic = self._saved_topic() if name else Topic()  # what the conversation is about
        self.last: Answer | None = None

    def _saved_topic(self) -> Topic:
        """The saved state of this conversation; a file from before the state was saved (or one whose
        state does not cover all its turns) gets it rebuilt from the saved turns and their passages."""
        store, turns = self.bot.store, len(self.history) // 2
        saved = store.state(self.name)
        if saved is not None and saved[0] == turns:
            return Topic.from_dict(saved[1])
        if not turns:
            return Topic()
        stored = store.turns(self.name)
        return topic_from_turns(((t.question, t.answer, t.meta) for t in stored), self.bot.titles())

    def ask(self, question: str) -> Answer:
        *_, answer = self.stream(question)
        return answer

    def stream(self, question: str, key: TurnKey | None = None) -> Iterator[str | Answer]:
        """Text deltas, then the ``Answer``; the turn is saved only once it is complete. A named
        conversation checks its file first, so a turn that could not be saved is never asked.
        ``key``: a client's idempotency key; the turn is saved under its id, with the answer's record."""
        with self._lock:
            self.check_storage()
            shown = self.last.sources if self.last else ()
            for item in self.bot.stream_answer(question, self.history, state=self.topic, last_sources=shown):
                if isinstance(item, Answer):
                    self._remember(item, key)
                    self.warm_up()  # while the answer is read and the next question typed
                yield item

    def warm_up(self) -> WarmUp:
        """Start computing the next turn's prompt prefixes in the background (``RagBot.warm_up``)."""
        self.warming = self.bot.warm_up(self.history, self.last.sources if self.last else ())
        return self.warming

    def feedback(self, rating: str, correction: str | None = None, turn: int = -1) -> Feedback:
        """Mark an answer "good" or "bad" (optionally with the answer it should have been), the
        last one by default; ``turn`` counts from 0, or from the end when negative. A named
        conversation keeps it in SQLite, for ``ragbot finetune prepare``."""
        marked = make_feedback(rating, correction)
        turns = len(self.history) // 2
        if not turns:
            raise ConversationError("there is no answer to mark yet; ask a question first")
        index = turn if turn >= 0 else turns + turn
        if not 0 <= index < turns:
            raise ConversationError(f"there is no turn {turn}; this conversation has {turns} turn(s)")
        with self._lock:
            if self.name:
                self.bot.store.set_feedback(self.name, index, marked)
            self.ratings[index] = marked
        return marked

    def check_storage(self) -> str | None:
        """Before a turn of a named conversation: raise ``ConversationStoreError`` if the turn could not
        be saved. A file deleted (or replaced) while this conversation ran is opened again at its path
        and this conversation's turns are saved back in it; the returned notice says so."""
        if not self.name or not self.bot.store.check():
            return None
        store = self.bot.store
        stored = store.history(self.name)
        if stored and stored != self.history:
            raise ConversationStoreError(
                f"the conversations file {store.location} was replaced while this chat ran, and its session "
                f"{self.name!r} differs from this chat: use another session name, or move the file away"
            )
        if not stored:
            for i in range(0, len(self.history), 2):
                store.append_turn(self.name, self.history[i].content, self.history[i + 1].content)
            for turn, marked in self.ratings.items():
                store.set_feedback(self.name, turn, marked)
        return (
            f"The conversations file {store.location} was deleted or replaced while this chat ran; "
            f"it is open again and holds this chat's {len(self.history) // 2} earlier turn(s)."
        )

    def keep_in_memory(self) -> None:
        """Go on without saving (the file cannot be used): turns and feedback stay in this object only."""
        self.name = None

    def _remember(self, answer: Answer, key: TurnKey | None = None) -> None:
        if self.name:
            store, turns = self.bot.store, len(self.history) // 2
            reply = Reply(key.request, answer.to_dict()) if key else None
            try:  # saved only if no other process added a turn meanwhile, and once (an id made before the save)
                store.append_turn(
                    self.name, answer.question, answer.text, turn_meta(answer), answer.topic.to_dict(),
                    expected_turns=turns, turn_id=key.turn_id if key else new_turn_id(), reply=reply,
                )  # fmt: skip
            except ConversationChangedError:
                self._load()  # what the other process saved: the next message starts from there
                raise
        self.history += [Message("user", answer.question), Message("assistant", answer.text)]
        self.topic = answer.topic
        self.last = answer

    def reset(self) -> None:
        """Forget the history (and delete it from storage for a named conversation)."""
        with self._lock:
            if self.name:
                self.bot.store.clear(self.name)
            self.history = []
            self.ratings = {}
            self.topic = Topic()
            self.last = None
