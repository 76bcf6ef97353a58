"""Deterministic stand-ins for the real models, for fast tests and examples.

They ship with the library (not only in ``tests/``) so users can test their own code
against ragbot without loading a model. ``llm = "fake"`` and ``embedder = "hash"`` choose them.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ragbot.models.chat import ChatModel, Delta, GenerationSettings, Message
from ragbot.models.embedders import Embedder, Kind
from ragbot.registry import chat_models, embedders
from ragbot.tokens import count_tokens


class HashEmbedder(Embedder):
    """Bag of character bigrams hashed into 256 dimensions: texts sharing words (or Chinese
    characters) score higher. Instant, deterministic, and good enough to tell topics apart."""

    name = "hash:char-bigrams-256"
    version = "1"
    dim = 256
    default_threshold = 0.3

    def _embed(self, texts: list[str], kind: Kind) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            text = text.lower()
            for gram in (text[i : i + 2] for i in range(max(len(text) - 1, 1))):
                if gram.strip():
                    h = int.from_bytes(hashlib.blake2b(gram.encode(), digest_size=4).digest(), "little")
                    out[row, h % self.dim] += 1.0
        return out


@dataclass
class _Recorded:
    messages: list[Message]
    generation: GenerationSettings


class ScriptedChatModel(ChatModel):
    """A fake model that answers from a script, for tests and examples.

    ``replies`` are returned in order (then ``default``); a callable reply gets the
    messages and returns the text. Every call's messages (and generation settings) are
    recorded in ``calls`` so a test can check what the model was shown. ``limit_tokens``:
    a reply stops after ``max_tokens`` tokens (tiktoken's count), as a real model's does.
    """

    def __init__(
        self, replies: Sequence[str] = (), default: str = "OK", name: str = "scripted", *, limit_tokens: bool = False
    ):
        self.replies = list(replies)
        self.default = default
        self.name = name
        self.limit_tokens = limit_tokens
        self.calls: list[_Recorded] = []

    def enqueue(self, *replies: str) -> None:
        self.replies.extend(replies)

    def _stream(self, messages: Sequence[Message], generation: GenerationSettings) -> Iterator[Delta]:
        self.calls.append(_Recorded(list(messages), generation))
        reply = self.replies.pop(0) if self.replies else self.default
        if callable(reply):
            reply = reply(messages)
        if isinstance(reply, BaseException):
            raise reply
        if self.limit_tokens:
            reply = _first_tokens(reply, generation.max_tokens)
        so_far = ""
        for piece in _pieces(reply):
            so_far += piece
            yield Delta(text=piece)
            if generation.reached(so_far):
                return


def _first_tokens(text: str, limit: int) -> str:
    """The longest start of ``text`` of at most ``limit`` tokens (whole characters)."""
    low, high = 0, len(text)
    while low < high:  # the token count grows with the length
        middle = (low + high + 1) // 2
        low, high = (middle, high) if count_tokens(text[:middle]) <= limit else (low, middle - 1)
    return text[:low]


def _pieces(text: str, size: int = 4) -> Iterator[str]:
    for i in range(0, len(text), size):
        yield text[i : i + size]


class PacedChatModel(ScriptedChatModel):
    """A scripted model that takes ``delay`` seconds per piece, like a real one streaming, and counts
    the pieces it made (``pieces``), so a test can see a generation stop when its reader went away;
    ``then_raise`` is raised after the reply, like an endpoint that drops a stream half-way."""

    def __init__(
        self,
        replies: Sequence[str] = (),
        default: str = "OK",
        delay: float = 0.05,
        name: str = "paced",
        then_raise: BaseException | None = None,
    ):
        super().__init__(replies, default, name)
        self.delay = delay
        self.then_raise = then_raise
        self.pieces = 0

    def _stream(self, messages: Sequence[Message], generation: GenerationSettings) -> Iterator[Delta]:
        for delta in super()._stream(messages, generation):
            time.sleep(self.delay)
            self.pieces += 1
            yield delta
        if self.then_raise is not None:
            raise self.then_raise


class EchoChatModel(ScriptedChatModel):
    """A fake chat model for trying the whole pipeline with no model at all (``llm = "fake"``).

    Rewrite prompts get the question back unchanged (in the expected two-line format), and so do
    translation prompts (so the bot searches no translation: "the model returned the question
    untranslated"); answer prompts get a reply quoting the question and citing passage [1] when there is one.
    """

    def __init__(self) -> None:
        super().__init__(name="fake-echo")
        self.default = self._reply

    @staticmethod
    def _reply(messages) -> str:
        system, user = messages[0].content, messages[-1].content
        lines = user.strip().splitlines()
        marked = [ln for ln in lines if ln.startswith(("问题：", "Question: ", "最后的问题：", "Last question: "))]
        question = (marked[-1] if marked else lines[-1]).split("：", 1)[-1].split(": ", 1)[-1].strip()
        if "改写：" in system:
            return f"思考：问题已完整。\n改写：{question}"
        if "Rewrite:" in system:
            return f"Reasoning: already standalone.\nRewrite: {question}"
        if user.startswith(("中文问题：", "English question: ")):  # prompts/translate.*.txt
            return question
        cite = " [1]" if "[1]" in user else ""
        return f"(fake model) You asked: {question}{cite}"


@chat_models.register("fake")
def _fake_chat_model(settings, role: str = "answer") -> EchoChatModel:
    return EchoChatModel()


@embedders.register("hash")
def _hash_embedder(settings) -> HashEmbedder:
    return HashEmbedder()
