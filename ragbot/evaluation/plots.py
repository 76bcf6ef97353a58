"""PNG plots of an evaluation run (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ragbot.evaluation import metrics
from ragbot.evaluation.tables import KIND_LABELS, _is_number, _ok, _secs

KIND_COLOURS = {"typed": "#d62728", "rewritten": "#1f77b4", "gold": "#2ca02c"}


# the typed and rewritten curves often coincide: a wide pale line under a thin one keeps both visible
_CURVE_STYLES = {
    "typed": {"linewidth": 6, "alpha": 0.35, "solid_capstyle": "round"},
    "rewritten": {"linewidth": 2, "marker": "o", "markersize": 4},
    "gold": {"linewidth": 2, "linestyle": "--", "marker": "^", "markersize": 5},
}


ROUTE_COLOURS = {"grounded": "#1f77b4", "fallback": "#ff7f0e", "all": "#7f7f7f"}


# --------------------------------------------------------------------------- plots
def new_figure(width: float = 7.5, height: float = 4.5, cols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, cols)
    return fig, axes


def integer_ticks(ax) -> None:
    """Whole numbers on the y axis (counts of questions)."""
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))


def write_plots(rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any], out: Path) -> dict[str, Path]:
    """The PNGs a run has data for: ``scores``, ``recall``, ``latency``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    ok = _ok(rows)
    threshold = summary.get("routing", {}).get("threshold")
    scored = [r for r in ok if r.get("routing", {}).get("top_score") is not None]
    if scored and _is_number(threshold):
        groups: dict[str, list[float]] = {}
        for r in scored:
            groups.setdefault(r["routing"]["expected"] or "all", []).append(r["routing"]["top_score"])
        title = "Best-hit score of the bot's standalone question" + (
            ", by expected route" if set(groups) - {"all"} else " (the rows have no expected route)"
        )
        files["scores"] = plot_score_distributions(groups, {"threshold": threshold}, out / "scores.png", title)
    depth = max((int(k.split("@")[1]) for k in summary.get("retrieval", {}).get("typed", {}) if "@" in k), default=0)
    with_gold = [r for r in ok if r.get("retrieval")]
    if with_gold and depth:
        panels = {"all rows": with_gold}
        for name in summary["retrieval"].get("subsets", {}):
            field, value = name.split("=")
            panels[name] = [r for r in with_gold if str(r.get("fields", {}).get(field)).lower() == value]
        files["recall"] = plot_recall_curves(panels, depth, out / "recall_at_k.png")
    cost = summary.get("cost", {})
    if cost:
        files["latency"] = plot_latency(cost, out / "latency.png")
    return files


def plot_score_distributions(
    groups: Mapping[str, Sequence[float]],
    thresholds: Mapping[str, float],
    path: Path,
    title: str = "Best-hit score of the bot's standalone question, by expected route",
) -> Path:
    """Histograms of the best hit's score per group, with each threshold as a labelled line."""
    import numpy as np

    fig, ax = new_figure()
    values = [v for vs in groups.values() for v in vs]
    lo, hi = min(values + list(thresholds.values())), max(values + list(thresholds.values()))
    pad = (hi - lo) * 0.05 or 0.01
    bins = np.linspace(lo - pad, hi + pad, 31)
    for name in sorted(groups, key=lambda g: ("grounded", "fallback", "all").index(g) if g in ROUTE_COLOURS else 9):
        label = f"expected {name} (n={len(groups[name])})" if name != "all" else f"all questions (n={len(values)})"
        ax.hist(groups[name], bins=bins, alpha=0.55, label=label, color=ROUTE_COLOURS.get(name), edgecolor="white")
    styles = ["-", "--", ":"]
    colours = ["#000000", "#9467bd", "#8c564b"]
    for i, (name, value) in enumerate(thresholds.items()):
        ax.axvline(value, color=colours[i % 3], linestyle=styles[i % 3], linewidth=2, label=f"{name} = {value:.3f}")
    ax.set_xlabel("cosine score of the best hit")
    ax.set_ylabel("questions")
    integer_ticks(ax)
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=9)
    fig.savefig(path)
    return path


def plot_recall_curves(panels: Mapping[str, Sequence[Mapping[str, Any]]], depth: int, path: Path) -> Path:
    """recall@1..depth for the three query kinds, one panel per row subset."""
    fig, axes = new_figure(width=5.5 * len(panels), height=4.3, cols=len(panels))
    axes = [axes] if len(panels) == 1 else list(axes)
    ks = list(range(1, depth + 1))
    for ax, (name, rows) in zip(axes, panels.items(), strict=True):
        for kind, label in KIND_LABELS.items():
            curve = metrics.recall_curve([r["retrieval"][kind]["rank"] for r in rows], depth)
            ax.plot(ks, curve, label=label, color=KIND_COLOURS[kind], **_CURVE_STYLES[kind])
        ax.set_title(f"{name} (n={len(rows)})")
        ax.set_xlabel("k (documents)")
        ax.set_ylabel("recall@k")
        ax.set_ylim(0, 1.02)
        ax.set_xticks(ks)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=9)
    fig.suptitle("Recall@k of the gold document by query kind")
    fig.savefig(path)
    return path


def plot_latency(cost: Mapping[str, Any], path: Path) -> Path:
    """p50 and p95 seconds per stage as horizontal bars (log scale when they span decades)."""
    import numpy as np

    stages = [s for s in ("rewrite", "retrieval", "generation", "total") if s in cost and cost[s]["latency"]["n"]]
    fig, ax = new_figure(height=0.8 + 0.7 * max(len(stages), 1))
    if not stages:
        ax.text(0.5, 0.5, "no timings", ha="center", va="center")
        fig.savefig(path)
        return path
    y = np.arange(len(stages))
    p50 = [cost[s]["latency"]["p50_s"] for s in stages]
    p95 = [cost[s]["latency"]["p95_s"] for s in stages]
    ax.barh(y - 0.18, p50, height=0.36, label="p50", color="#1f77b4")
    ax.barh(y + 0.18, p95, height=0.36, label="p95", color="#aec7e8")
    labels = [
        f"rewrite ({cost[s]['latency']['n']} model calls)" if s == "rewrite" else f"{s} (n={cost[s]['latency']['n']})"
        for s in stages
    ]
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    positive = [v for v in p50 + p95 if v > 0]
    if positive and max(positive) / min(positive) > 100:
        ax.set_xscale("log")
    for yy, value in [*zip(y - 0.18, p50, strict=True), *zip(y + 0.18, p95, strict=True)]:
        ax.text(value, yy, " " + _secs(value), va="center", fontsize=8)
    ax.set_xlabel("seconds per turn")
    ax.set_title("Latency per stage")
    ax.margins(x=0.25)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=9)  # outside: clear of the value labels
    fig.savefig(path)
    return path
