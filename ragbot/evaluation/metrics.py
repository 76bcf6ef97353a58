"""Evaluation metrics, as plain functions of strings, ranks and labels.

Text metrics work on characters for Chinese and on words for other scripts, so a Chinese
rewrite is compared character by character (as in the published results on the Su et al.
2019 corpus) and an English one word by word. BLEU-4 is sacrebleu's (``tokenize="zh"`` when
the references hold Chinese, else ``13a``), reported on a 0-100 scale like the literature.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ragbot.errors import RagbotError
from ragbot.text import CJK_IDEOGRAPHS, is_chinese

_TOKEN = re.compile(rf"[{CJK_IDEOGRAPHS}]|[^\W_{CJK_IDEOGRAPHS}]+")

GROUNDED, FALLBACK = "grounded", "fallback"


def normalise(text: str) -> str:
    """Lower-case, drop punctuation, symbols and whitespace: what exact match compares."""
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(ch for ch in text if not (unicodedata.category(ch).startswith(("P", "Z", "S")) or ch.isspace()))


def exact_match(hypothesis: str, reference: str) -> bool:
    """Equal after ``normalise`` (so "北京天气？" matches "北京 天气")."""
    return normalise(hypothesis) == normalise(reference)


def tokens(text: str) -> list[str]:
    """Chinese characters one by one, other words whole, lower-cased; punctuation dropped."""
    return _TOKEN.findall(unicodedata.normalize("NFKC", text).lower())


def has_chinese(texts: Iterable[str]) -> bool:
    return any(is_chinese(t) for t in texts)


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    if not a or not b:
        return 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(hypothesis: str, reference: str) -> float:
    """ROUGE-L F1 (longest common subsequence of ``tokens``), in [0, 1]; two empty texts score 1."""
    hyp, ref = tokens(hypothesis), tokens(reference)
    if not hyp and not ref:
        return 1.0
    lcs = _lcs_length(hyp, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(hyp), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, reference: str) -> float:
    """Bag-of-``tokens`` overlap F1 (SQuAD style, without dropping articles), in [0, 1]."""
    pred, ref = tokens(prediction), tokens(reference)
    if not pred and not ref:
        return 1.0
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _sacrebleu():
    try:
        import sacrebleu
    except ImportError:  # pragma: no cover - a dependency; guards a broken install
        raise RagbotError("BLEU needs the sacrebleu package: pip install sacrebleu") from None
    return sacrebleu


def bleu_tokenizer(references: Iterable[str]) -> str:
    """``zh`` (each Chinese character a token) when any reference holds Chinese, else ``13a``."""
    return "zh" if has_chinese(references) else "13a"


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU-4 (0-100) of the hypotheses against one reference each."""
    if not hypotheses:
        return float("nan")
    tokenize = bleu_tokenizer(references)
    return float(_sacrebleu().corpus_bleu(list(hypotheses), [list(references)], tokenize=tokenize).score)


def sentence_bleu(hypothesis: str, reference: str) -> float:
    """Smoothed sentence BLEU-4 (0-100), for ranking single rows; report ``corpus_bleu``."""
    tokenize = bleu_tokenizer([reference])
    return float(_sacrebleu().sentence_bleu(hypothesis, [reference], tokenize=tokenize).score)


def ranking_metrics(ranks: Sequence[int | None], ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """``recall@k`` for each k and ``mrr`` (cut at max(ks)) from the 1-based rank of the first
    gold document per query (None: not found). NaN when there are no queries."""
    n = len(ranks)
    depth = max(ks)
    out: dict[str, float] = {}
    for k in ks:
        out[f"recall@{k}"] = sum(r is not None and r <= k for r in ranks) / n if n else float("nan")
    out["mrr"] = sum(1 / r for r in ranks if r is not None and r <= depth) / n if n else float("nan")
    out["n"] = n
    return out


def recall_curve(ranks: Sequence[int | None], depth: int) -> list[float]:
    """recall@1 .. recall@depth, for plotting."""
    n = len(ranks) or 1
    return [sum(r is not None and r <= k for r in ranks) / n for k in range(1, depth + 1)]


def routing_metrics(expected: Sequence[str], predicted: Sequence[str]) -> dict[str, Any]:
    """Accuracy, and precision/recall/F1 of the grounded route, with the confusion matrix
    ``confusion[expected][predicted]``; any predicted route other than grounded (fallback,
    memory) counts as not grounded."""
    if len(expected) != len(predicted):
        raise ValueError(f"{len(expected)} expected routes but {len(predicted)} predicted ones")
    tp = sum(e == GROUNDED and p == GROUNDED for e, p in zip(expected, predicted, strict=True))
    fp = sum(e != GROUNDED and p == GROUNDED for e, p in zip(expected, predicted, strict=True))
    fn = sum(e == GROUNDED and p != GROUNDED for e, p in zip(expected, predicted, strict=True))
    tn = len(expected) - tp - fp - fn
    n = len(expected)
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    specificity = tn / (tn + fp) if tn + fp else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if tp else 0.0 if (fp or fn) else float("nan")
    confusion: dict[str, dict[str, int]] = {}
    for e, p in zip(expected, predicted, strict=True):
        confusion.setdefault(e, {}).setdefault(p, 0)
        confusion[e][p] += 1
    return {
        "n": n,
        "accuracy": (tp + tn) / n if n else float("nan"),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "fallback_recall": specificity,
        "balanced_accuracy": _mean_defined([recall, specificity]),
        "confusion": confusion,
    }


def _mean_defined(values: Sequence[float]) -> float:
    defined = [v for v in values if not math.isnan(v)]
    return sum(defined) / len(defined) if defined else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between ranks (numpy's default)."""
    if not len(values):
        return float("nan")
    return float(np.percentile(np.asarray(values, dtype=float), q))


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """n, p50, p95, mean and total of a list of durations in seconds."""
    return {
        "n": len(seconds),
        "p50_s": percentile(seconds, 50),
        "p95_s": percentile(seconds, 95),
        "mean_s": float(np.mean(seconds)) if len(seconds) else float("nan"),
        "total_s": float(np.sum(seconds)) if len(seconds) else 0.0,
    }


def mean(values: Iterable[float | None]) -> float:
    """Mean of the values that are not None; NaN when there are none."""
    kept = [float(v) for v in values if v is not None]
    return sum(kept) / len(kept) if kept else float("nan")
