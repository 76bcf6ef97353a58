"""What the answer model is shown: the grounded prompt with the numbered passages, or the general
one, after the history; and the labels a fallback answer starts with.

The bot's own turns, the warm-up (which renders these prompts to find their static prefixes) and
``ragbot.finetune`` (whose training examples must look exactly like the bot's calls) all render here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from ragbot.conversation.excerpts import excerpts
from ragbot.conversation.prompts import load_prompt
from ragbot.knowledge.knowledge_base import Hit, display_source
from ragbot.models.chat import Message

CONTEXT_PASSAGES = 3  # passages put in the prompt: prompt processing dominates local latency
LOCAL_PASSAGE_TOKENS = 200  # the passages' share of a local model's answer prompt (docs/evaluation.md)

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


def format_passages(hits: Sequence[Hit]) -> str:
    """Numbered passages for the prompt, each headed by its title and headings (its file when it
    has no title: a path costs tokens and changes with the working directory); closing delimiters
    inside them are defused, so a passage cannot end the block it is quoted in."""
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
    """The grounded prompt with numbered passages when there are any (cut to ``question`` within
    ``passage_tokens``: ``ragbot.conversation.excerpts``), the general one otherwise."""
    lang = "zh" if chinese else "en"
    if sources:
        prompt = load_prompt(f"grounded.{lang}", prompt_dir)
        shown = excerpts(sources, question, passage_tokens)
        system, user = prompt.render(passages=format_passages(shown), question=question)
    else:
        system, user = load_prompt(f"general.{lang}", prompt_dir).render(question=question)
    # static system prompt first, then the (append-only) history, then this turn's part
    return [system, *history, user]
