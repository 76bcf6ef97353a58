"""Threshold calibration: pick the score a best hit must reach, from labelled questions.

Cosine scores are not comparable across embedders ("0.7 finds nothing, 0.4 works"), so the
threshold is chosen per index from questions labelled ``grounded`` (the knowledge base
answers them) and ``fallback`` (it does not). Each question is searched once (as its gold
``rewrite`` when the row has one, else as typed); every cut between two neighbouring scores
is a candidate threshold. The chosen one maximises the objective - by default balanced
accuracy, the mean of the grounded and the fallback recall, so a set with more questions of
one kind does not drag the threshold its way - and, among equally good cuts, sits in the
middle of the widest gap between scores, so it is the least sensitive to small score shifts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from ragbot.errors import CalibrationError, RagbotError
from ragbot.evaluation.question_sets import QuestionSet, questions_from_rows, read_questions
from ragbot.knowledge.knowledge_base import KnowledgeBase

OBJECTIVES = ("balanced", "accuracy", "f1")
SHIPPED_SET = "data/calibration_default_kb.jsonl"


@dataclass(frozen=True)
class ThresholdPoint:
    """How the routing fares at one threshold (grounded when the best score >= threshold)."""

    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int
    gap: tuple[float, float] = (float("-inf"), float("inf"))  # the scores either side of this cut

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    @property
    def accuracy(self) -> float:
        return (self.tp + self.tn) / self.n

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else float("nan")

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")

    @property
    def fallback_recall(self) -> float:
        return self.tn / (self.tn + self.fp) if self.tn + self.fp else float("nan")

    @property
    def balanced_accuracy(self) -> float:
        return (self.recall + self.fallback_recall) / 2

    @property
    def f1(self) -> float:
        return 2 * self.tp / (2 * self.tp + self.fp + self.fn) if self.tp else 0.0

    @property
    def width(self) -> float:
        return self.gap[1] - self.gap[0]

    def score(self, objective: str) -> float:
        value = {"balanced": self.balanced_accuracy, "accuracy": self.accuracy, "f1": self.f1}[objective]
        return -1.0 if value != value else value  # NaN never wins

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "accuracy": self.accuracy,
            "balanced_accuracy": self.balanced_accuracy,
            "precision": self.precision,
            "recall": self.recall,
            "fallback_recall": self.fallback_recall,
            "f1": self.f1,
            "tp": self.tp,
            "fp": self.fp,
            "tn": self.tn,
            "fn": self.fn,
        }


def point_at(scores: Sequence[float], grounded: Sequence[bool], threshold: float) -> ThresholdPoint:
    """The routing outcome of ``threshold`` on labelled best-hit scores."""
    tp = sum(s >= threshold and g for s, g in zip(scores, grounded, strict=True))
    fp = sum(s >= threshold and not g for s, g in zip(scores, grounded, strict=True))
    fn = sum(s < threshold and g for s, g in zip(scores, grounded, strict=True))
    return ThresholdPoint(threshold, tp, fp, len(scores) - tp - fp - fn, fn)


def threshold_sweep(scores: Sequence[float], grounded: Sequence[bool]) -> list[ThresholdPoint]:
    """Every distinct routing: a cut below all scores, between each pair of neighbouring
    distinct scores (at a short round number inside the gap), and above all of them."""
    distinct = sorted(set(scores))
    if not distinct:
        return []
    cuts = [(float("-inf"), distinct[0]), *zip(distinct, distinct[1:], strict=False), (distinct[-1], float("inf"))]
    points = []
    for low, high in cuts:
        if low == float("-inf"):
            t = _round_inside(high - 0.01, high - 0.02, high)
        elif high == float("inf"):
            t = _round_inside(low + 0.01, low, low + 0.02)
        else:
            t = _round_inside((low + high) / 2, low, high)
        p = point_at(scores, grounded, t)
        points.append(ThresholdPoint(t, p.tp, p.fp, p.tn, p.fn, (low, high)))
    return points


def _round_inside(value: float, low: float, high: float) -> float:
    """``value`` rounded to as few decimals as keep it in (low, high]."""
    for digits in range(2, 7):
        rounded = round(value, digits)
        if low < rounded <= high:
            return rounded
    return value


def choose_threshold(
    points: Sequence[ThresholdPoint], objective: str = "balanced", min_precision: float | None = None
) -> ThresholdPoint:
    """The best point for ``objective`` (ties: the widest gap, then the higher threshold);
    with ``min_precision``, the point of highest grounded recall whose precision reaches it."""
    if objective not in OBJECTIVES:
        raise CalibrationError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    candidates = list(points)
    if min_precision is not None:
        if not 0 < min_precision <= 1:
            raise CalibrationError(f"min_precision must be in (0, 1]; got {min_precision}")
        candidates = [p for p in points if p.precision == p.precision and p.precision >= min_precision]
        if not candidates:
            best = max((p.precision for p in points if p.precision == p.precision), default=float("nan"))
            raise CalibrationError(
                f"no threshold reaches a grounded precision of {min_precision:.2f} on this set (best: {best:.2f}); "
                "lower --min-precision or add clearer in-KB questions"
            )
        return max(candidates, key=lambda p: (p.recall, p.score(objective), _finite(p.width), p.threshold))
    return max(candidates, key=lambda p: (p.score(objective), _finite(p.width), p.threshold))


def _finite(width: float) -> float:
    return width if width != float("inf") else 0.0


@dataclass
class Calibration:
    """The labelled scores, the sweep, the chosen threshold and the one it replaces."""

    rows: list[dict[str, Any]]
    points: list[ThresholdPoint]
    chosen: ThresholdPoint
    current: ThresholdPoint
    objective: str
    min_precision: float | None = None
    index: str = ""
    embedder: str = ""
    skipped: list[dict[str, Any]] = field(default_factory=list)  # rows without a label or with an error

    @property
    def threshold(self) -> float:
        return self.chosen.threshold

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "embedder": self.embedder,
            "objective": self.objective,
            "min_precision": self.min_precision,
            "chosen": {**self.chosen.to_dict(), "gap": list(self.chosen.gap)},
            "current": self.current.to_dict(),
            "labelled": {
                "grounded": sum(r["expected"] == "grounded" for r in self.rows),
                "fallback": sum(r["expected"] == "fallback" for r in self.rows),
            },
            "sweep": [p.to_dict() for p in self.points],
            "rows": self.rows,
            "skipped": self.skipped,
        }

    def summary(self) -> str:
        """A few lines for the terminal: before, after, and why."""
        c, b = self.chosen, self.current
        lo, hi = c.gap
        lines = [
            f"{len(self.rows)} labelled questions ({sum(r['expected'] == 'grounded' for r in self.rows)} grounded, "
            f"{sum(r['expected'] == 'fallback' for r in self.rows)} fallback) against {self.index}",
            f"current threshold {b.threshold:.3f}: accuracy {b.accuracy:.1%}, grounded precision "
            f"{_pct(b.precision)}, recall {_pct(b.recall)}, fallback recall {_pct(b.fallback_recall)}",
            f"chosen threshold  {c.threshold:.3f}: accuracy {c.accuracy:.1%}, grounded precision "
            f"{_pct(c.precision)}, recall {_pct(c.recall)}, fallback recall {_pct(c.fallback_recall)}",
            "  why: "
            + (
                f"the highest grounded recall with precision >= {self.min_precision:.2f}"
                if self.min_precision is not None
                else f"best {self.objective.replace('balanced', 'balanced accuracy')} ({c.score(self.objective):.1%})"
            )
            + (
                f"; it sits in the middle of the gap between the scores {lo:.4f} and {hi:.4f}"
                if lo != float("-inf") and hi != float("inf")
                else ""
            ),
        ]
        if self.skipped:
            lines.append(f"{len(self.skipped)} rows skipped (no expected_route and no gold passages, or bad rows)")
        return "\n".join(lines)


def _pct(value: float) -> str:
    return "-" if value != value else f"{value:.1%}"


def shipped_questions() -> QuestionSet:
    """The labelled calibration set shipped for the bundled knowledge base."""
    text = files("ragbot").joinpath(SHIPPED_SET).read_text(encoding="utf-8")
    rows = [(n, json.loads(line)) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    return questions_from_rows(rows, source=f"ragbot/{SHIPPED_SET}")


def calibrate(
    questions: str | Path | QuestionSet | Iterable[Mapping[str, Any]],
    kb: KnowledgeBase,
    objective: str = "balanced",
    min_precision: float | None = None,
) -> Calibration:
    """Search each labelled question in ``kb`` and choose the threshold (see the module doc)."""
    if objective not in OBJECTIVES:
        raise CalibrationError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    if isinstance(questions, QuestionSet):
        qs = questions
    elif isinstance(questions, (str, Path)):
        qs = read_questions(questions)
    else:
        qs = questions_from_rows(list(questions))
    rows, skipped = [], [{"id": b.id, "reason": b.reason} for b in qs.bad_rows]
    for case in qs.cases:
        if case.expected is None:
            skipped.append({"id": case.id, "reason": f"line {case.line}: no expected_route and no gold passages"})
            continue
        query = case.rewrite or case.question
        try:
            hits = kb.search(query, k=1).hits
        except RagbotError as exc:
            skipped.append({"id": case.id, "reason": f"line {case.line}: {exc}"})
            continue
        top = hits[0] if hits else None
        rows.append(
            {
                "id": case.id,
                "question": query,
                "expected": case.expected,
                "score": round(top.score, 6) if top else -1.0,
                "top_title": top.title if top else None,
            }
        )
    grounded = [r["expected"] == "grounded" for r in rows]
    if not any(grounded) or all(grounded):
        raise CalibrationError(
            f"calibration needs both in-KB questions (expected_route grounded) and out-of-KB ones (fallback); "
            f"{qs.source} has {sum(grounded)} grounded and {len(grounded) - sum(grounded)} fallback"
        )
    scores = [r["score"] for r in rows]
    points = threshold_sweep(scores, grounded)
    chosen = choose_threshold(points, objective, min_precision)
    current = point_at(scores, grounded, kb.threshold)
    for r in rows:
        r["grounded_now"] = r["score"] >= kb.threshold
        r["grounded_after"] = r["score"] >= chosen.threshold
    return Calibration(rows, points, chosen, current, objective, min_precision, kb.location, kb.embedder.name, skipped)


def write_threshold(kb: KnowledgeBase, threshold: float) -> float:
    """Store ``threshold`` in the index manifest; returns the value read back from it."""
    return kb.write_threshold(threshold)


def write_files(cal: Calibration, out: str | Path, manifest_threshold: float | None = None) -> dict[str, Path]:
    """``calibration.json`` and ``calibration.png`` in ``out``."""
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    data = cal.to_dict()
    if manifest_threshold is not None:
        data["manifest_threshold"] = manifest_threshold
    from ragbot.evaluation.run import jsonable

    (out / "calibration.json").write_text(
        json.dumps(jsonable(data), ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    plot = plot_calibration(cal, out / "calibration.png", manifest_threshold)
    return {"json": out / "calibration.json", "plot": plot}


def plot_calibration(cal: Calibration, path: Path, manifest_threshold: float | None = None) -> Path:
    """Left: best-hit scores of grounded vs fallback questions with the thresholds; right:
    precision, recall and accuracy as the threshold moves."""
    import numpy as np

    from ragbot.evaluation.plots import ROUTE_COLOURS, integer_ticks, new_figure

    fig, (left, right) = new_figure(width=12, height=4.8, cols=2)
    scores = {route: [r["score"] for r in cal.rows if r["expected"] == route] for route in ("grounded", "fallback")}
    lines = {f"current {cal.current.threshold:.3f}": (cal.current.threshold, "#7f7f7f", "--")}
    if manifest_threshold is not None:
        lines[f"written to manifest {manifest_threshold:.3f}"] = (manifest_threshold, "#d62728", "-")
    else:
        lines[f"chosen {cal.chosen.threshold:.3f}"] = (cal.chosen.threshold, "#d62728", "-")
    every = [r["score"] for r in cal.rows] + [v for v, _, _ in lines.values()]
    pad = (max(every) - min(every)) * 0.05 or 0.01
    bins = np.linspace(min(every) - pad, max(every) + pad, 36)
    for route, values in scores.items():
        left.hist(
            values,
            bins=bins,
            alpha=0.55,
            color=ROUTE_COLOURS[route],
            edgecolor="white",
            label=f"expected {route} (n={len(values)})",
        )
    for axis in (left, right):
        for label, (value, colour, style) in lines.items():
            axis.axvline(value, color=colour, linestyle=style, linewidth=2, label=f"threshold: {label}")
    left.set_xlabel("cosine score of the best hit")
    left.set_ylabel("questions")
    integer_ticks(left)
    left.set_title("Best-hit score by expected route")
    left.legend(loc="upper left", fontsize=8)

    # each point holds on the interval between its neighbouring scores: draw exact stairs
    edges = [bins[0], *[p.gap[1] for p in cal.points[:-1]], bins[-1]]
    for name, attr, colour in (
        ("grounded precision", "precision", "#1f77b4"),
        ("grounded recall", "recall", "#2ca02c"),
        ("fallback recall", "fallback_recall", "#ff7f0e"),
        ("accuracy", "accuracy", "#000000"),
        ("balanced accuracy", "balanced_accuracy", "#9467bd"),
    ):
        values = [getattr(p, attr) for p in cal.points]
        style = "--" if attr == "balanced_accuracy" else "-"
        right.stairs(values, edges, color=colour, label=name, linewidth=1.6, linestyle=style, baseline=None)
    right.set_xlim(bins[0], bins[-1])
    right.set_ylim(-0.02, 1.05)
    right.set_xlabel("threshold")
    right.set_ylabel("share")
    right.set_title(f"Routing vs threshold ({cal.embedder})")
    right.grid(alpha=0.3)
    right.legend(loc="lower left", fontsize=8)
    fig.savefig(path)
    return path


def sweep_table(cal: Calibration, around: int = 4) -> list[list[str]]:
    """Rows of the sweep near the chosen and the current thresholds, for the terminal."""
    points = cal.points
    keep: set[int] = set()
    for target in (cal.chosen.threshold, cal.current.threshold):
        i = min(range(len(points)), key=lambda j: abs(points[j].threshold - target))
        keep.update(range(max(0, i - around), min(len(points), i + around + 1)))
    out = []
    for i in sorted(keep):
        p = points[i]
        mark = " <- chosen" if p.threshold == cal.chosen.threshold else ""
        out.append(
            [
                f"{p.threshold:.4f}{mark}",
                _pct(p.accuracy),
                _pct(p.balanced_accuracy),
                _pct(p.precision),
                _pct(p.recall),
                _pct(p.fallback_recall),
            ]
        )
    return out


__all__ = [
    "Calibration",
    "CalibrationError",
    "ThresholdPoint",
    "calibrate",
    "choose_threshold",
    "point_at",
    "shipped_questions",
    "threshold_sweep",
    "write_files",
    "write_threshold",
]
