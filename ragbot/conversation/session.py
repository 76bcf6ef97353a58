"""A conversation: its history and state, a turn at a time, each finished turn saved.

``RagBot.conversation(name)`` gives one; a named conversation lives in the conversation store
(a SQLite file or PostgreSQL) and resumes where it stopped. ``stream`` runs the bot's turn
(``RagBot.stream_answer``), saves the finished turn, then starts the warm-up for the next one.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterator, Mapping, Sequence
from typing import Protocol

from ragbot.conversation.topic import Topic, TopicDocument, topic_from_turns
from ragbot.conversation.turn import Answer, turn_meta
from ragbot.conversation.warmup import WarmUp
from ragbot.errors import ConversationChangedError, ConversationError, ConversationStoreError
from ragbot.knowledge.hits import Hit
from ragbot.models.chat import GenerationSettings, Message
from ragbot.storage.conversations import ConversationStore, Feedback, Reply, TurnKey, make_feedback, new_turn_id


class Engine(Protocol):
    """What a conversation needs of its bot (``RagBot``): the store, the turn, the titles, the warm-up."""

    @property
    def store(self) -> ConversationStore: ...

    def stream_answer(
        self,
        question: str,
        history: Sequence[Message],
        *,
        state: Topic | None,
        last_sources: Sequence[Hit],
        generation: GenerationSettings | None,
    ) -> Iterator[str | Answer]: ...

    def titles(self) -> Mapping[str, TopicDocument]: ...

    def warm_up(self, history: Sequence[Message], sources: Sequence[Hit], *, key: Hashable) -> WarmUp: ...

    def stop_warm_up(self, key: Hashable) -> None: ...


class Conversation:
    """One conversation: its history, and a lock so a conversation is used by one thread at a time."""

    def __init__(self, bot: Engine, name: str | None = None):
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

    def stream(
        self, question: str, key: TurnKey | None = None, generation: GenerationSettings | None = None
    ) -> Iterator[str | Answer]:
        """Text deltas, then the ``Answer``; the turn is saved only once it is complete. A named
        conversation checks its file first, so a turn that could not be saved is never asked.
        ``key``: a client's idempotency key; the turn is saved under its id, with the answer's record.
        ``generation``: this answer's settings (``RagBot.generate``)."""
        with self._lock:
            self.check_storage()
            self.bot.stop_warm_up(self._warm_key)  # this conversation's own; others' go on
            shown = self.last.sources if self.last else ()
            steps = self.bot.stream_answer(
                question, self.history, state=self.topic, last_sources=shown, generation=generation
            )
            for item in steps:
                if isinstance(item, Answer):
                    self._remember(item, key)
                    self.warm_up()  # while the answer is read and the next question typed
                yield item

    def warm_up(self) -> WarmUp:
        """Start computing the next turn's prompt prefixes in the background (``RagBot.warm_up``);
        it replaces this conversation's earlier warm-up, even one a previous object of the same named
        conversation started (``serve`` opens one per request)."""
        self.warming = self.bot.warm_up(self.history, self.last.sources if self.last else (), key=self._warm_key)
        return self.warming

    @property
    def _warm_key(self) -> Hashable:
        return ("conversation", self.name) if self.name else ("unnamed", id(self))

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
