"""Prefix warm-up: while the user reads an answer or types, a local model computes the parts of the
next turn's prompts that are already known, so the turn does not pay for them.

Every prompt keeps its static text first (system instructions and examples, then the append-only
history, then this turn's question and passages). After an answer the next turn's history is known,
only its question is not: the rewrite prompt up to "最后的问题：" / "Last question:" and the answer
prompts up to this turn's passages are evaluated here, in the conversation's language first, then the
static prefixes of the other language. Each prefix is found by rendering a prompt with two different
sentinel values and keeping the tokens the renderings share, so it is exactly what the bot's own
steps (``RagBot.rewrite_step``, ``answer_messages``) send. The states go to llama.cpp's RAM prompt
cache, which a later prompt sharing the prefix restores. The static prefixes (rendered with sentinel
histories, the same in every process) are also kept on disk when the setting ``prompt_states`` is on
(``ragbot.models.prompt_states``), so a new process loads them instead of evaluating them again.

A turn that asks for the model meanwhile waits for the step in progress (``WARM_STEP`` tokens) and
the warm-up stops; what it evaluated so far stays usable. Models that cannot warm (an
OpenAI-compatible endpoint, the fakes) make it a no-op that starts no thread.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from ragbot.config import Settings
from ragbot.conversation.answer_prompt import answer_messages
from ragbot.conversation.history import trim_history
from ragbot.conversation.rewrite import RewriteResult
from ragbot.knowledge.knowledge_base import Hit
from ragbot.models.chat import ChatModel, GenerationSettings, Message
from ragbot.text import is_chinese


class Steps(Protocol):
    """What the warm-up renders the next turn's prompts with (``RagBot``): its settings, models and steps."""

    settings: Settings
    rewrite_model: ChatModel
    answer_model: ChatModel

    def rewrite_step(self, question: str, history: Sequence[Message]) -> RewriteResult: ...

    def passage_tokens(self) -> int | None: ...


log = logging.getLogger(__name__)

# Two fillings of each prompt's variable parts; every sentinel question asks for a rewrite (a pronoun).
_QUESTIONS = {"zh": ("它呢？", "那这个在哪里？"), "en": ("What about it?", "And where is that one?")}
_HISTORIES = {
    "zh": (("甲是什么？", "甲是一种东西。"), ("乙在哪里？", "乙在北方。")),
    "en": (("What is Alpha?", "Alpha is a thing."), ("Where is Beta?", "Beta is up north.")),
}
_PASSAGES = (("甲", "甲是一种东西。"), ("Beta", "Beta is up north."))


class WarmPrompt(NamedTuple):
    """One prompt to warm: two renderings of it; ``static``: rendered with sentinel histories only, so
    its shared prefix is the same in every process (worth keeping on disk)."""

    name: str
    model: ChatModel
    variants: list[list[Message]]
    static: bool


@dataclass
class WarmUp:
    """A warm-up in progress (or done): ``wait()`` for it, ``cancel()`` it; ``computed`` lists
    (prompt, tokens evaluated) in the order they were warmed."""

    thread: threading.Thread | None = None
    computed: list[tuple[str, int]] = field(default_factory=list)
    _cancelled: threading.Event = field(default_factory=threading.Event)

    def wait(self, timeout: float | None = None) -> bool:
        """Whether the warm-up has finished (after waiting up to ``timeout`` seconds)."""
        if self.thread is not None:
            self.thread.join(timeout)
        return self.done

    @property
    def done(self) -> bool:
        return self.thread is None or not self.thread.is_alive()

    def cancel(self) -> None:
        """Stop after the step in progress (a turn is about to use the model)."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


class _Recorded(Exception):  # noqa: N818 - a signal carrying the messages the step would send
    def __init__(self, messages: Sequence[Message]):
        super().__init__("messages recorded")
        self.messages = list(messages)


class _Recorder(ChatModel):
    """Stands in for the rewrite model: records the messages of the bot's own rewrite step, unsent."""

    name = "recorder"

    def _stream(self, messages: Sequence[Message], generation: GenerationSettings):
        raise _Recorded(messages)


def rewrite_messages(bot: Steps, question: str, history: Sequence[Message]) -> list[Message] | None:
    """What ``bot.rewrite_step(question, history)`` would send the rewrite model (None: no model call)."""
    recording = copy.copy(bot)  # the same bot with a recorder as its rewrite model; ``bot`` is untouched
    recording.rewrite_model = _Recorder()
    try:
        recording.rewrite_step(question, history)
    except _Recorded as recorded:
        return recorded.messages
    return None


def _pairs(pairs: Sequence[tuple[str, str]]) -> list[Message]:
    return [m for q, a in pairs for m in (Message("user", q), Message("assistant", a))]


def _hit(title: str, text: str) -> Hit:
    return Hit(id=title, text=text, source=f"{title}.md", title=title, score=1.0, above_threshold=True)


def warm_up_prompts(bot: Steps, history: Sequence[Message], sources: Sequence[Hit] = ()) -> list[WarmPrompt]:
    """The prompts to warm, most useful first.

    With a history, the next turn's prompts in the language of its last question (rewrite, grounded
    and general answer, each with that history); then the static prefixes of the other language.
    The grounded prompt is warmed with the last answer's passages ``sources`` when passages are
    shown whole: a follow-up about the same thing often retrieves them again, in the same order
    (``routing.in_prompt_order``), and then evaluates only its question. Without a history, the
    static prefixes of both languages, the answer prompts first (a first turn needs no rewrite)."""
    settings = bot.settings
    history = trim_history(list(history), settings.history_tokens)
    last = next((m.content for m in reversed(history) if m.role == "user"), None)
    first = "en" if last is not None and not is_chinese(last) else "zh"
    languages = [first, "en" if first == "zh" else "zh"]
    prompts: list[WarmPrompt] = []

    def rewrite(lang: str, histories: Sequence[Sequence[Message]], static: bool) -> None:
        if not bot.rewrite_model.warms_prefixes:
            return
        variants = [rewrite_messages(bot, q, h) for q, h in zip(_QUESTIONS[lang], histories, strict=True)]
        if all(variants):
            prompts.append(WarmPrompt(f"rewrite.{lang}", bot.rewrite_model, variants, static))  # type: ignore[arg-type]

    def answer(lang: str, turns: Sequence[Message], last: Sequence[Hit] = ()) -> None:
        if not bot.answer_model.warms_prefixes:
            return
        chinese = lang == "zh"
        # cut passages change with the question: then only the prompt up to the first one is known
        cut = bot.passage_tokens() is not None
        grounded = [list(last), list(last)] if last and not cut else [[_hit(*p)] for p in _PASSAGES]
        for name, passages in (("grounded", grounded), ("general", [[], []])):
            variants = [
                answer_messages(
                    q,
                    hits,
                    turns,
                    chinese=chinese,
                    prompt_dir=settings.prompt_dir,
                    passage_tokens=bot.passage_tokens(),
                )
                for q, hits in zip(_QUESTIONS[lang], passages, strict=True)
            ]
            # no history: the prompt up to the question (or the sentinel passages) is the same in every process
            prompts.append(WarmPrompt(f"{name}.{lang}", bot.answer_model, variants, static=not turns))

    sentinel_histories = {lang: [_pairs([pair]) for pair in _HISTORIES[lang]] for lang in languages}
    if history:
        rewrite(first, [history, history], static=False)
        answer(first, history, sources)
        rewrite(languages[1], sentinel_histories[languages[1]], static=True)
        answer(languages[1], [])
    else:
        for lang in languages:
            answer(lang, [])
        for lang in languages:
            rewrite(lang, sentinel_histories[lang], static=True)
    return prompts


def restore_saved(bot: Steps, question: str) -> list[str]:
    """Load the static prompt prefixes an earlier process saved for a turn in ``question``'s language,
    evaluating nothing (``ragbot ask``: a process for one question starts from them); the names of
    the prompts now ready."""
    if not bot.settings.prompt_states:
        return []
    lang = "zh" if is_chinese(question) else "en"
    mine = [p for p in warm_up_prompts(bot, []) if p.static and p.name.endswith(f".{lang}")]
    return [p.name for p in mine if p.model.restore(p.variants)]


def start_warm_up(bot: Steps, history: Sequence[Message], sources: Sequence[Hit]) -> WarmUp:
    """Warm the next turn's prompt prefixes in a background thread (none if no model can warm)."""
    handle = WarmUp()
    if not (bot.rewrite_model.warms_prefixes or bot.answer_model.warms_prefixes):
        return handle

    def run() -> None:
        try:
            for prompt in warm_up_prompts(bot, history, sources):
                if handle.cancelled:
                    return
                persist = prompt.static and bot.settings.prompt_states
                evaluated = prompt.model.warm(prompt.variants, stop=lambda: handle.cancelled, persist=persist)
                handle.computed.append((prompt.name, evaluated))
        except Exception as exc:  # best effort: the turn computes whatever is missing
            log.warning("prompt warm-up stopped: %s", exc)

    handle.thread = threading.Thread(target=run, name="ragbot-warm-up", daemon=True)
    handle.thread.start()
    return handle
