"""The conversation engine: a turn as named steps over the knowledge base and the models.

``RagBot.load()`` builds everything from settings; ``bot.conversation()`` gives a
``Conversation`` (``ragbot.conversation.session``) that runs turns and saves them. A turn:

``prepare`` (no answer model yet) composes the steps, each returning its value:
1. ``history_reply``: a question about the conversation itself ("我刚才问了什么?") is answered
   from the history (``Route.MEMORY``);
2. ``rewrite_step``: the standalone question (``ragbot.conversation.rewrite``);
3. ``retriever.step``: the search (with the conversation's topic for a follow-up that names
   nothing) and the confident passages about what the question names;
4. ``cross_lingual_step``: nothing confident -> searched again in the other language;
5. the route, decided once: grounded on the passages, or the fallback policy (a labelled
   general answer, a refusal, or a fixed reply).
``generate`` then streams the answer and returns the ``Answer`` (``ragbot.conversation.turn``).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Hashable, Iterator, Sequence
from typing import Any

from ragbot.config import Settings, load_settings
from ragbot.conversation.answer_prompt import LABELS, LOCAL_PASSAGE_TOKENS, answer_messages
from ragbot.conversation.citations import CitationFilter
from ragbot.conversation.history import as_messages, trim_history
from ragbot.conversation.history_questions import history_reply
from ragbot.conversation.retrieval import Retriever
from ragbot.conversation.rewrite import RewriteResult, rewrite_question
from ragbot.conversation.routing import Evidence, in_prompt_order
from ragbot.conversation.session import Conversation
from ragbot.conversation.topic import Topic, TopicDocument, topic_from_history, update_topic
from ragbot.conversation.translation import LANGUAGE_NAMES, Translation, translate_question
from ragbot.conversation.turn import Answer, Retrieval, Route, Turn
from ragbot.conversation.warmup import WarmUp, restore_saved, start_warm_up
from ragbot.knowledge.knowledge_base import Hit, KnowledgeBase
from ragbot.models.chat import ChatModel, GenerationSettings, Message, Usage, make_chat_model, role_model
from ragbot.models.rewriter import with_local_rewriter
from ragbot.storage.conversations import ConversationStore, open_conversation_store
from ragbot.text import clean_question, is_chinese

__all__ = ["Answer", "Conversation", "RagBot", "Route", "Turn"]


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
        self.retriever = Retriever(kb, self.settings)  # the retrieval step: search, topic, evidence
        self._warmings: dict[Hashable, WarmUp] = {}  # by whose they are: a conversation, None for calls
        self._warmings_lock = threading.Lock()

    @classmethod
    def load(cls, settings: Settings | None = None, **overrides: Any) -> RagBot:
        """A bot from settings (defaults < ragbot.toml < RAGBOT_* < ``overrides``)."""
        settings = settings.replace(**overrides) if settings else load_settings(overrides=overrides)
        settings = with_local_rewriter(settings)  # the bundled trained rewriter, unless the role is configured
        # a database is opened now, so one that cannot be reached fails at start (a SQLite file when first used)
        url = isinstance(settings.sessions, str)
        store = open_conversation_store(settings.sessions, settings.postgres_pool_size) if url else None
        kb = KnowledgeBase.open(settings)
        answer = make_chat_model(settings, "answer")
        same = (role_model(settings, "rewrite"), settings.rewrite_lora_path) == (
            role_model(settings, "answer"),
            settings.lora_path,
        )
        rewrite = answer if same else make_chat_model(settings, "rewrite")
        return cls(kb, answer, rewrite, settings, store)

    @property
    def store(self) -> ConversationStore:
        if self._store is None:
            self._store = open_conversation_store(self.settings.sessions_location, self.settings.postgres_pool_size)
        return self._store

    def conversation(self, name: str | None = None) -> Conversation:
        """A conversation; a named one is saved (``sessions``: SQLite or PostgreSQL) and resumes where it stopped."""
        return Conversation(self, name)

    def rewrite(self, question: str, history: Sequence[Message] | Sequence[dict] = ()) -> str:
        """The standalone form of ``question`` given the ``history`` (public for evaluation)."""
        return self.rewrite_details(question, history).question

    def rewrite_details(self, question: str, history: Sequence[Message] | Sequence[dict] = ()) -> RewriteResult:
        question = clean_question(question)
        history = as_messages(history)
        return rewrite_question(
            question,
            trim_history(history, self.settings.history_tokens),
            self.rewrite_model,
            self.settings.prompt_dir,
            **self._rewrite_options(),
        )

    def warm_up(
        self, history: Sequence[Message] | Sequence[dict] = (), sources: Sequence[Hit] = (), *, key: Hashable = None
    ) -> WarmUp:
        """Start computing the next turn's prompt prefixes in the background (a local model only;
        ``sources``: the last answer's passages; see ``ragbot.conversation.warmup``). Returns the handle.

        ``key`` says whose next turn it is (a conversation's; None: this bot's own calls, whose next
        turn stops it): it replaces that key's earlier warm-up only. Warm-ups of other keys go on,
        and only give way to a turn's model call for one small step (``WARM_STEP``), so in ``serve``
        one conversation's warm-up never holds up another's turn."""
        history = as_messages(history)
        with self._warmings_lock:
            self.stop_warm_up(key)
            for done in [k for k, w in self._warmings.items() if w.done]:
                del self._warmings[done]
            handle = start_warm_up(self, history, sources) if self.settings.warm_up else WarmUp()
            self._warmings[key] = handle
        return handle

    def restore_prompt_states(self, question: str) -> list[str]:
        """Load the static prompt prefixes an earlier process saved for a turn in ``question``'s
        language (nothing is evaluated; see ``warmup.restore_saved``): for a process that answers
        one question and exits. The names of the prompts restored."""
        return restore_saved(self, question)

    def stop_warm_up(self, key: Hashable = None) -> None:
        """Stop ``key``'s warm-up after its step in progress (its turn is about to use the model)."""
        warming = self._warmings.get(key)
        if warming is not None:
            warming.cancel()

    def as_runnable(self):
        """This bot as a LangChain Runnable (see ``ragbot.conversation.runnables``)."""
        from ragbot.conversation.runnables import bot_runnable

        return bot_runnable(self.answer, self.stream_answer)

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
        generation: GenerationSettings | None = None,
    ) -> Iterator[str | Answer]:
        """Text deltas of the answer as they are generated, then the ``Answer`` (``last_sources``:
        see ``prepare``; ``generation``: see ``generate``)."""
        turn = self.prepare(question, history, state=state, last_sources=last_sources)
        yield from self.generate(turn, generation)

    def titles(self) -> dict[str, TopicDocument]:
        """The knowledge base's document titles -> the document (``Retriever.titles``)."""
        return self.retriever.titles()

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
        self.stop_warm_up()  # this turn needs the model (a conversation stops its own before it asks)
        question = clean_question(question)
        history = as_messages(history)
        language = "zh" if is_chinese(question) else "en"
        topic = state if state is not None else topic_from_history(history, self.titles())

        remembered = history_reply(question, history)
        if remembered is not None:
            reason = "a question about this conversation, answered from its history"
            return Turn(question, language, started, Route.MEMORY, reason, topic, reply=remembered)

        trimmed = trim_history(history, self.settings.history_tokens)
        rewrite = self.rewrite_step(question, trimmed)
        rewritten = time.perf_counter()
        retrieval = self.retriever.step(question, rewrite.question, topic, k)
        searched = time.perf_counter()
        translation, retrieval = self.cross_lingual_step(rewrite.question, retrieval, k)
        timings = {"rewrite": rewritten - started, "retrieval": searched - rewritten}
        if translation.called_model:
            timings["translation"] = time.perf_counter() - searched  # the model's translation and its search

        found = retrieval.evidence
        route = Route.GROUNDED if found.sources else Route.FALLBACK
        reply, prefix = self.fallback(language) if route is Route.FALLBACK else (None, "")
        return Turn(
            question,
            language,
            started,
            route,
            found.reason,
            topic,
            history=trimmed,
            rewrite=rewrite,
            retrieval=retrieval,
            translation=translation,
            sources=in_prompt_order(found.sources, last_sources),
            reply=reply,
            prefix=prefix,
            timings=timings,
        )

    def rewrite_step(self, question: str, history: Sequence[Message]) -> RewriteResult:
        """The standalone question (``history`` already trimmed), or the question itself when
        the rewrite is switched off."""
        if not self.settings.rewrite:
            return RewriteResult(question, question, reason="skipped: rewrite disabled")
        return rewrite_question(
            question, history, self.rewrite_model, self.settings.prompt_dir, **self._rewrite_options()
        )

    @property
    def translation_model(self) -> ChatModel:
        """The model that translates a question for the cross-lingual search: the rewrite model (a
        short call), unless that one is a trained rewriter, which knows only its own prompt."""
        return self.answer_model if self.settings.rewrite_prompt != "rewrite" else self.rewrite_model

    def _rewrite_options(self) -> dict[str, Any]:
        """The rewrite sees the most recent messages within its own budget, each clipped, through the
        prompt its model was made for (``rewrite_prompt``)."""
        s = self.settings
        return {
            "history_tokens": s.rewrite_history_tokens,
            "message_tokens": s.rewrite_message_tokens,
            "prompt": s.rewrite_prompt,
        }

    def cross_lingual_step(
        self, standalone: str, retrieval: Retrieval, k: int | None = None, *, fuse: bool = False
    ) -> tuple[Translation, Retrieval]:
        """A question with no confident passage about it, searched again with its standalone question
        translated into the other language (zh <-> en) by ``translation_model``: the knowledge base may
        hold the answer only there (the Yangtze in Chinese for "How long is the Yangtze?"). Returns
        what happened to the translation and the retrieval the route is decided on: the
        translation's once it was searched. ``fuse`` ranks its hits fused with the question's
        instead (no better on bench/cross_lingual.py: docs/evaluation.md)."""
        if retrieval.evidence.sources:
            return Translation(reason="not needed: grounded without it"), retrieval
        if not self.settings.translate:
            return Translation(reason="not tried: setting translate is off"), retrieval
        translation = translate_question(standalone, self.translation_model, self.settings.prompt_dir)
        if not translation.text:
            return translation, retrieval
        found = self.retriever.translated(translation.text, retrieval, k, fuse=fuse)
        language = LANGUAGE_NAMES[translation.language]
        if found.evidence.sources:
            about = f": {found.evidence.reason}" if found.evidence.reason.startswith("passages about") else ""
            reason = f"found through the {language} translation “{translation.text}”{about}"
        else:
            reason = f"{retrieval.evidence.reason}; in {language} too: {found.evidence.reason}"
        translation = dataclasses.replace(translation, searched=True, grounded=bool(found.evidence.sources))
        return translation, dataclasses.replace(found, evidence=Evidence(found.evidence.sources, reason))

    def fallback(self, language: str) -> tuple[str | None, str]:
        """A fallback turn's (reply, prefix) by the ``fallback`` setting: a labelled general answer
        (no reply: the model answers after the prefix), a refusal, or the fixed reply."""
        if self.settings.fallback == "general":
            return None, LABELS["general"][language]
        if self.settings.fallback == "refuse":
            return LABELS["refuse"][language], ""
        return self.settings.fallback_reply, ""

    def generate(self, turn: Turn, generation: GenerationSettings | None = None) -> Iterator[str | Answer]:
        """Text deltas of the answer to a prepared ``turn``, then its ``Answer``. ``generation``: this
        answer's settings (a server request's ``temperature``, ``max_tokens``...), else the bot's."""
        if turn.reply is not None:  # decided without the answer model
            yield turn.reply
            yield self._finish(turn, turn.reply)
            return
        if turn.prefix:
            yield turn.prefix
        messages = self.answer_prompt(turn)
        begun = time.perf_counter()
        cited = CitationFilter(len(turn.sources))  # drops [n] markers that name no passage shown
        first_token = None
        usage = Usage()
        for delta in self.answer_model.stream(messages, generation or GenerationSettings.from_settings(self.settings)):
            if delta.text:
                first_token = first_token if first_token is not None else time.perf_counter()
                if shown := cited.feed(delta.text):
                    yield shown
            if delta.usage is not None:
                usage = delta.usage
        if rest := cited.close():
            yield rest
        done = time.perf_counter()
        timings = {"first_token": (first_token or done) - begun, "generation": done - begun}
        yield self._finish(turn, turn.prefix + cited.text.strip(), usage, timings)

    def answer_prompt(self, turn: Turn) -> list[Message]:
        """What the answer model is sent for a prepared ``turn`` (``generate`` sends it; benchmarks
        count its tokens)."""
        return answer_messages(
            turn.standalone_question,
            turn.sources,
            turn.history,
            chinese=turn.language == "zh",
            prompt_dir=self.settings.prompt_dir,
            passage_tokens=self.passage_tokens(),
        )

    def _finish(
        self, turn: Turn, text: str, answer_usage: Usage | None = None, timings: dict[str, float] | None = None
    ) -> Answer:
        """The ``Answer`` of a turn: its text, the usage and model of each stage that called one,
        and the topic after it."""
        usage: dict[str, Usage] = {}
        models: dict[str, str] = {}
        if turn.rewrite is not None:
            usage["rewrite"] = turn.rewrite.usage
            models["rewrite"] = self.rewrite_model.name
        if turn.translation is not None and turn.translation.called_model:
            usage["translation"] = turn.translation.usage
            models["translation"] = self.translation_model.name
        if answer_usage is not None:
            usage["answer"] = answer_usage
            models["answer"] = self.answer_model.name
        used = [TopicDocument(h.doc_id or h.source, h.title) for h in turn.sources]
        return Answer(
            text=text,
            turn=turn,
            hits=turn.search.hits[: self.settings.top_k] if turn.search else [],
            usage=usage,
            timings={**turn.timings, **(timings or {}), "total": time.perf_counter() - turn.started},
            models=models,
            topic=update_topic(turn.topic, turn.question, text, used, self.titles()),
        )

    def passage_tokens(self) -> int | None:
        """The passages' budget in the answer prompt (``None``: whole passages): the setting, or for
        a local answer model ``LOCAL_PASSAGE_TOKENS``, since each prompt token there costs ~1/37 s."""
        budget = self.settings.passage_tokens
        if budget is None:
            return LOCAL_PASSAGE_TOKENS if self.answer_model.warms_prefixes else None
        return budget or None
