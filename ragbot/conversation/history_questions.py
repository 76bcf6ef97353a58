"""Questions about the conversation itself ("我刚才问了什么？", "What did you just say?"), answered from
its history without searching or calling a model."""

from __future__ import annotations

import re
from collections.abc import Sequence

from ragbot.models.chat import Message
from ragbot.text import is_chinese

_LAST_QUESTION = re.compile(
    r"我(刚才|刚刚|上一个|上个|之前|前面|最后)(一个)?问(了|的)?(什么|啥|是什么|哪个问题)|我的上一个问题|我刚才的问题"
    r"|what (did|was it) i (just )?(ask|asked)|what was my (last|previous) question|my (last|previous) question",
    re.IGNORECASE,
)
_ALL_QUESTIONS = re.compile(
    r"我(都|一共|之前|刚才)?问(过|了)(哪些|几个|什么)问题|what (questions|have i asked)|which questions (did|have) i",
    re.IGNORECASE,
)
_LAST_ANSWER = re.compile(
    r"你(刚才|刚刚|上一句|之前|前面)(说|回答)(了|的)?(什么|啥|是什么)"
    r"|what did you (just )?(say|answer)|repeat (that|your (last )?answer)|what was your (last )?answer",
    re.IGNORECASE,
)


def history_reply(question: str, history: Sequence[Message]) -> str | None:
    """A reply about the conversation itself, or None if the question is not about it."""
    zh = is_chinese(question)
    asked = [m.content for m in history if m.role == "user"]
    said = [m.content for m in history if m.role == "assistant"]
    if _ALL_QUESTIONS.search(question):
        if not asked:
            return "我们还没有开始对话。" if zh else "We haven't talked yet."
        listed = "\n".join(f"{i}. {q}" for i, q in enumerate(asked, 1))
        return f"你问过这些问题：\n{listed}" if zh else f"You asked:\n{listed}"
    if _LAST_QUESTION.search(question):
        if not asked:
            return "你还没有问过问题。" if zh else "You haven't asked anything yet."
        return f"你刚才问的是：“{asked[-1]}”" if zh else f'You just asked: "{asked[-1]}"'
    if _LAST_ANSWER.search(question):
        if not said:
            return "我还没有回答过问题。" if zh else "I haven't said anything yet."
        return f"我刚才说的是：\n{said[-1]}" if zh else f"I just said:\n{said[-1]}"
    return None
