"""The lexical (BM25) index beside FAISS: exact names and rare terms win here.

Tokens: Chinese runs are segmented by rjieba (the Rust port of jieba, same dictionary,
built into its wheel, so it works offline and writes no cache file) in search mode, which
adds the words inside long words (尼罗河 -> 尼罗, 尼罗河); other text gives lowercased
alphanumeric words, keeping "gpt-4" and "lora" whole (and the parts of a hyphenated word);
function and question words (的, 是, 谁, "what") are dropped.
A book title 《七里香》 also counts as one token, so it matches as a unit and by its words.

Scoring is bm25s (Lucene BM25, sparse matrices). It is saved as ``.npy`` arrays and JSON
and loaded with ``allow_pickle=False``; nothing is pickled.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ragbot.text import CJK_IDEOGRAPHS

if TYPE_CHECKING:
    import bm25s

# Bumped when tokenization changes: a stored index with another version is rebuilt at load.
TOKENIZER = "rjieba-search+words+titles/1"
DIRECTORY = "bm25"
_INFO = "tokenizer.json"

# Function and question words: they match everywhere, so without them a question's
# "是谁唱的" outweighs the one name it asks about. Kept short: content words stay searchable.
STOPWORDS = frozenset(
    """的 了 着 过 是 在 和 与 及 或 也 都 就 还 又 而 把 被 对 从 向 给 让 吗 呢 吧 啊 呀 哦 嗯 么 之 其
    这 那 这个 那个 这些 那些 这首 那首 这部 那部 这是 那是 一个 一部 一首 有 没有 有没有 会 能 要 想 请 请问
    我 你 您 他 她 它 我们 你们 他们 她们 它们 谁 什么 哪 哪个 哪些 哪里 哪儿 哪年 怎么 怎样 怎么样 如何
    为什么 多少 几 吗 知道 告诉 一下 是不是 还是 呢 就是 可以 一些 以及 或者 因为 所以 但是 如果
    a an and are as at be but by for if in into is it no not of on or such that the their then there
    these they this to was will with what which who whom whose how when where why do does did can
    could would should i me my you your we our he she his her its about tell know""".split()
)
_CJK_RUN = re.compile(f"[{CJK_IDEOGRAPHS}]+")
_WORD = re.compile(r"[0-9a-z\u00c0-\u024f]+(?:[-.+][0-9a-z\u00c0-\u024f]+)*\+*")
_TITLE = re.compile(r"《([^《》]{1,50})》")
_TITLE_NOTE = re.compile(r"[（(].*$")  # 《我是山姆（I am Sam）》 is also 《我是山姆》


def tokenize(text: str) -> list[str]:
    """Index and query tokens of ``text`` (see the module docstring)."""
    text = text.lower()
    tokens: list[str] = []
    for title in _TITLE.findall(text):
        title = title.strip()
        short = _TITLE_NOTE.sub("", title).strip()
        tokens.append("《" + title + "》")
        if short and short != title:
            tokens.append("《" + short + "》")
    pos = 0
    for match in _CJK_RUN.finditer(text):
        tokens.extend(_words(text[pos : match.start()]))
        tokens.extend(_segment(match.group()))
        pos = match.end()
    tokens.extend(_words(text[pos:]))
    return [t for t in tokens if t not in STOPWORDS]


def _segment(chinese: str) -> list[str]:
    """jieba's search mode. Imported on first use: loading its dictionary takes ~0.5 s."""
    import rjieba

    return rjieba.cut_for_search(chinese)


def _words(text: str) -> list[str]:
    out = []
    for word in _WORD.findall(text):
        out.append(word)
        parts = re.split(r"[-.]", word)
        if len(parts) > 1:
            out.extend(p for p in parts if p)
    return out


class LexicalIndex:
    """BM25 over the chunks of one index generation; row i is chunk i (and FAISS id i)."""

    def __init__(self, bm25: bm25s.BM25, rows: int):
        self.bm25 = bm25
        self.rows = rows

    @classmethod
    def build(cls, texts: Sequence[str]) -> LexicalIndex:
        import bm25s  # imported when needed: it brings scipy.sparse, ~0.1-0.2 s

        bm25 = bm25s.BM25()
        corpus = [tokenize(t) or [""] for t in texts]  # bm25s wants a token in every row
        if corpus:
            bm25.index(corpus, show_progress=False)
        return cls(bm25, len(texts))

    def search(self, query: str, k: int, floor: float = 0.0) -> list[tuple[int, float]]:
        """Rows of the k best-scoring chunks with their BM25 scores, best first: only rows that
        share a token with the query and score at least ``floor`` times the best score."""
        tokens = [t for t in tokenize(query) if t in self.bm25.vocab_dict] if self.rows else []
        if not tokens:
            return []
        scores = self.bm25.get_scores(tokens)
        k = min(k, self.rows)
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        least = max(float(scores[top[0]]) * floor, 0.0)
        return [(int(i), float(scores[i])) for i in top if scores[i] > least]

    def save(self, generation: Path) -> None:
        folder = generation / DIRECTORY
        folder.mkdir()
        if self.rows:
            self.bm25.save(str(folder), allow_pickle=False, show_progress=False)
        (folder / _INFO).write_text(json.dumps({"tokenizer": TOKENIZER, "rows": self.rows}), encoding="utf-8")

    @classmethod
    def load(cls, generation: Path, rows: int) -> LexicalIndex | None:
        """The stored index of ``generation``, or None if it has none (an older ragbot wrote
        it), it was made with another tokenizer, or it does not match the chunks."""
        import bm25s

        folder = generation / DIRECTORY
        try:
            info = json.loads((folder / _INFO).read_text(encoding="utf-8"))
            if info.get("tokenizer") != TOKENIZER or info.get("rows") != rows:
                return None
            if not rows:
                return cls(bm25s.BM25(), 0)
            bm25 = bm25s.BM25.load(str(folder), mmap=True, allow_pickle=False, show_progress=False)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        if bm25.scores.get("num_docs") != rows:
            return None
        return cls(bm25, rows)
