"""Translate a standalone question into the other language (zh <-> en), for searching again.

The bundled knowledge base (and many real ones) holds some documents in one language only: the
Yangtze in Chinese, RLHF in English. A question in the other language often misses them (the
embedder's cross-lingual margins are thin). ``RagBot.cross_lingual_step`` searches a turn that
found nothing with the question translated by the rewrite model; this module makes that
translation: the prompt (``prompts/translate.zh.txt`` for a Chinese question, ``translate.en.txt``
for an English one), the parse (the first line, labels and quotes stripped) and the guards (a
reply not in the target language, the question returned as it was, or a statement for a question,
such as an answer, is not used).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragbot.conversation.prompts import load_prompt
from ragbot.errors import ModelError
from ragbot.models.chat import ChatModel, GenerationSettings, Message, Usage
from ragbot.text import is_chinese

log = logging.getLogger("ragbot.conversation.translation")

LANGUAGE_NAMES = {"zh": "Chinese", "en": "English"}
MAX_TRANSLATION_CHARS = 300
# a label the model may put before the translation: "English: ...", "译文：...", "**Translation:** ..."
_LABEL = re.compile(
    r"^\W*(?:(?:english|chinese|英文|中文)\s*)?"
    r"(?:translation|translated question|question|english|chinese|英文|中文|英语|汉语|翻译|译文|问题)\W*?[:：]\s*",
    re.IGNORECASE,
)
_QUOTES = "\"'“”‘’「」『』*` "


@dataclass(frozen=True)
class Translation:
    """The standalone question in the other language, or why there is none (``text`` empty).
    ``searched`` once retrieval used it; ``grounded`` when the answer was found through it."""

    text: str = ""
    language: str = ""  # "zh" | "en": the language translated into
    reason: str = ""  # why it was not tried or not used; "" when it was used
    called_model: bool = False
    raw_output: str = ""
    usage: Usage = field(default_factory=Usage)
    seconds: float = 0.0
    searched: bool = False
    grounded: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "language": self.language,
            "reason": self.reason,
            "called_model": self.called_model,
            "searched": self.searched,
            "grounded": self.grounded,
        }


def _asks(text: str) -> bool:
    return text.rstrip().endswith(("?", "？"))


def target_language(question: str) -> str:
    """The language a question is translated into: English for a Chinese question, else Chinese."""
    return "en" if is_chinese(question) else "zh"


def parse_translation(text: str) -> str:
    """The translated question in the model's reply: its first non-empty line, without a label
    ("English:", "译文：") or quotes around it; "" when there is none."""
    for line in text.strip().splitlines():
        line = _LABEL.sub("", line.strip()).strip(_QUOTES)
        if line:
            return line
    return ""


def translation_messages(question: str, prompt_dir: Path | None = None) -> list[Message]:
    """What the model is asked to translate ``question`` with: the prompt of the question's language."""
    prompt = "translate.zh" if target_language(question) == "en" else "translate.en"
    return load_prompt(prompt, prompt_dir).render(question=question)


def translate_question(
    question: str, model: ChatModel, prompt_dir: Path | None = None, generation: GenerationSettings | None = None
) -> Translation:
    """``question`` in the other language, by ``model``; ``text`` is "" (with the reason) when the
    model fails or its reply is not a translation into that language."""
    started = time.perf_counter()
    language = target_language(question)
    messages = translation_messages(question, prompt_dir)
    try:
        completion = model.complete(messages, generation or GenerationSettings(temperature=0.0, max_tokens=80))
    except ModelError as exc:
        log.warning("translation failed, searching the question as it is: %s", exc)
        seconds = time.perf_counter() - started
        return Translation(language=language, reason=f"model failed: {exc}", called_model=True, seconds=seconds)

    def done(text: str = "", reason: str = "") -> Translation:
        return Translation(
            text=text,
            language=language,
            reason=reason,
            called_model=True,
            raw_output=completion.text,
            usage=completion.usage,
            seconds=time.perf_counter() - started,
        )

    text = parse_translation(completion.text)
    name = LANGUAGE_NAMES[language]
    if not text:
        return done(reason="the model returned nothing")
    if text.casefold() == question.strip().casefold():
        return done(reason="the model returned the question untranslated")
    asked = _asks(question)
    if len(text) > MAX_TRANSLATION_CHARS or is_chinese(text) != (language == "zh") or (asked and not _asks(text)):
        # an answer instead of a translation ("What is photosynthesis?" -> a sentence about it) is not searched
        log.warning("translation rejected (not a question in %s): %r", name, completion.text[:200])
        return done(reason=f"the model's reply is not a question in {name}: {text[:60]!r}")
    return done(text)
