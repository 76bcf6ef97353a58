"""Few-shot examples for the rewrite, chosen per question from a bank the project writes.

The bank is ``prompts/rewrite_examples.jsonl`` (one example a line: ``lang``, ``history``,
``question``, ``reasoning``, ``rewrite``); a ``rewrite_examples.jsonl`` in the user's own
``prompt_dir`` adds their examples to it (their own corrected rewrites, for instance). The
examples most like the question are shown to the model: a small model copies the pattern
of a close example ("And the Yangtze?" after "How long is the Nile?") far better than it
follows an instruction. Similarity is the cosine of character bigrams (Chinese) or of words
and word pairs (English) of the question, plus, at half weight, of the last message of the
history: the shape of the follow-up matters more than its subject, so function words count.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ragbot.conversation.prompts import bundled_prompt_dir
from ragbot.errors import PromptError

BANK = "rewrite_examples.jsonl"
_CJK = re.compile(r"[\u4e00-\u9fff]")
_WORD = re.compile(r"[a-z0-9']+")


@dataclass(frozen=True)
class RewriteExample:
    lang: str  # "zh" or "en"
    history: tuple[str, ...]  # alternating user / assistant, starting with the user
    question: str
    reasoning: str
    rewrite: str


def features(text: str) -> Counter[str]:
    """Character unigrams and bigrams of Chinese text, words and word pairs of other text."""
    text = text.lower()
    if _CJK.search(text):
        chars = [c for c in text if not c.isspace()]
        return Counter(chars + [a + b for a, b in zip(chars, chars[1:], strict=False)])
    words = _WORD.findall(text)
    return Counter(words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)])


def cosine(a: Counter[str], b: Counter[str]) -> float:
    dot = sum(v * b[k] for k, v in a.items() if k in b)
    norm = math.sqrt(sum(v * v for v in a.values())) * math.sqrt(sum(v * v for v in b.values()))
    return dot / norm if norm else 0.0


def similarity(example: RewriteExample, question: str, last_message: str) -> float:
    score = cosine(features(example.question), features(question))
    if example.history and last_message:
        score += 0.5 * cosine(features(example.history[-1]), features(last_message))
    return score


def select_examples(
    question: str, history: Sequence[str], lang: str, bank: Sequence[RewriteExample], n: int = 2
) -> list[RewriteExample]:
    """The ``n`` examples of ``lang`` most like this question (and its last message), best last,
    so the closest one stands right before the real history."""
    last = history[-1] if history else ""
    scored = [(similarity(e, question, last), i, e) for i, e in enumerate(bank) if e.lang == lang]
    best = sorted(scored, key=lambda t: (-t[0], t[1]))[:n]
    return [e for _, _, e in reversed(best)]


def load_bank(prompt_dir: Path | None = None) -> list[RewriteExample]:
    """The bundled bank, then the user's own ``prompt_dir/rewrite_examples.jsonl`` if present."""
    paths = [bundled_prompt_dir() / BANK]
    if prompt_dir is not None and (Path(prompt_dir) / BANK).is_file():
        paths.append(Path(prompt_dir) / BANK)
    return [e for p in paths if p.is_file() for e in _read(p)]


@functools.cache
def _read_cached(path: str, mtime: float) -> tuple[RewriteExample, ...]:
    out = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            example = RewriteExample(
                str(row["lang"]),
                tuple(str(m) for m in row.get("history", [])),
                str(row["question"]),
                str(row.get("reasoning", "")),
                str(row["rewrite"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise PromptError(
                f"{path} line {number} is not a rewrite example ({exc}); each line needs "
                '{"lang": "zh"|"en", "history": [...], "question": ..., "reasoning": ..., "rewrite": ...}'
            ) from None
        if example.lang not in ("zh", "en"):
            raise PromptError(f"{path} line {number}: lang must be 'zh' or 'en', got {example.lang!r}")
        out.append(example)
    return tuple(out)


def _read(path: Path) -> tuple[RewriteExample, ...]:
    return _read_cached(str(path), path.stat().st_mtime)


def format_examples(examples: Sequence[RewriteExample], chinese: bool) -> str:
    """The examples in the prompt's own layout (history, last question, reasoning, rewrite)."""
    blocks = []
    for number, e in enumerate(examples, 1):
        roles = ("用户", "助手") if chinese else ("User", "Assistant")
        sep = "：" if chinese else ": "
        lines = [f"{roles[i % 2]}{sep}{m}" for i, m in enumerate(e.history)]
        if chinese:
            blocks.append(
                f"参考示例{number}\n对话历史：\n" + "\n".join(lines) + f"\n最后的问题：{e.question}\n"
                f"思考：{e.reasoning}\n改写：{e.rewrite}"
            )
        else:
            blocks.append(
                f"Similar example {number}\nHistory:\n" + "\n".join(lines) + f"\nLast question: {e.question}\n"
                f"Reasoning: {e.reasoning}\nRewrite: {e.rewrite}"
            )
    return "\n\n".join(blocks)
