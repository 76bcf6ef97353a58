"""Text facts every layer asks: is it Chinese, is it valid text, is it a question a turn can take.

One definition of each, so the chunker, the lexical index, the rewrite, the router and the metrics
agree on what a Chinese character is.
"""

from __future__ import annotations

import re
from typing import Any

from ragbot.errors import ConversationError, RagbotError

# CJK Unified Ideographs with Extension A and the compatibility block: what the metrics, the
# lexical index and the language checks count as a Chinese character
CJK_IDEOGRAPHS = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
CJK = re.compile(f"[{CJK_IDEOGRAPHS}]")
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
LONE_SURROGATE = re.compile("[\ud800-\udfff]")
MAX_QUESTION_CHARS = 4000


def is_chinese(text: str) -> bool:
    """Whether ``text`` holds a Chinese character: which prompts, labels and checks a text gets."""
    return bool(CJK.search(text))


def not_utf8(text: str) -> str | None:
    """Where ``text`` stops being valid UTF-8, or None if it is. The shell hands Python bytes that
    are not UTF-8 as lone surrogates (``"caf\\xe9"`` arrives as ``"caf\\udce9"``), which no embedder,
    model or file can take."""
    match = LONE_SURROGATE.search(text)
    if match is None:
        return None
    code = ord(match.group())
    what = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"lone surrogate U+{code:04X}"
    return f"{what} at character {match.start() + 1}"


def clean_text(text: Any, what: str, error: type[RagbotError]) -> str:
    """``text`` with control characters blanked and the ends stripped; ``error`` naming ``what`` when it
    is not text, not valid UTF-8, or empty."""
    if not isinstance(text, str):
        raise error(f"the {what} must be text, got {type(text).__name__}")
    problem = not_utf8(text)
    if problem:
        raise error(
            f"the {what} is not valid UTF-8 text ({problem}); set your terminal or file encoding to UTF-8 and retype it"
        )
    text = CONTROL_CHARS.sub(" ", text).strip()
    if not text:
        raise error(f"the {what} is empty; type a question")
    return text


def clean_question(question: Any) -> str:
    """The question without control characters; empty or oversized questions are refused."""
    question = clean_text(question, "question", ConversationError)
    if len(question) > MAX_QUESTION_CHARS:
        raise ConversationError(
            f"the question is {len(question):,} characters long; the limit is {MAX_QUESTION_CHARS:,}. "
            "Shorten it, or save the text to a file and `ragbot ingest` it"
        )
    return question
