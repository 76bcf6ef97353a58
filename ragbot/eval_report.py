"""Reports of an evaluation run: the terminal summary, ``report.md``, the plots, comparisons.

Plots are drawn with matplotlib's object API on the Agg canvas (no display, and no change
to the caller's pyplot backend). Their text is English: the default fonts have no Chinese
glyphs, so questions are quoted only in ``report.md``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ragbot import metrics

KIND_LABELS = {"typed": "question as typed", "rewritten": "bot's standalone question", "gold": "gold query (ceiling)"}
KIND_COLOURS = {"typed": "#d62728", "rewritten": "#1f77b4", "gold": "#2ca02c"}
# the typed and rewritten curves often coincide: a wide pale line under a thin one keeps both visible
_CURVE_STYLES = {
    "typed": {"linewidth": 6, "alpha": 0.35, "solid_capstyle": "round"},
    "rewritten": {"linewidth": 2, "marker": "o", "markersize": 4},
    "gold": {"linewidth": 2, "linestyle": "--", "marker": "^", "markersize": 5},
}
ROUTE_COLOURS = {"grounded": "#1f77b4", "fallback": "#ff7f0e", "all": "#7f7f7f"}
WORST = 10
_QUERY_FROM = {"rewrite": "gold rewrite", "entities": "question + entities", "question": "question alone"}


# --------------------------------------------------------------------------- numbers as text
def _pct(value: Any) -> str:
    return "-" if not _is_number(value) else f"{100 * value:.1f}%"


def _num(value: Any, digits: int = 3) -> str:
    return "-" if not _is_number(value) else f"{value:.{digits}f}"


def _secs(value: Any) -> str:
    if not _is_number(value):
        return "-"
    if value < 0.01:
        return f"{value * 1000:.2f} ms"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        pairs = enumerate(zip(row, widths, strict=True))
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs))
    return lines


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table with aligned columns."""
    return "\n".join(_table(headers, rows))


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _cell(value: Any, width: int = 90) -> str:
    text = " ".join(str(value if value is not None else "-").split()).replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"


# --------------------------------------------------------------------------- the summary
def retrieval_rows(retrieval: Mapping[str, Any]) -> list[list[str]]:
    keys = [k for k in retrieval.get("typed", {}) if k.startswith("recall@")] + ["mrr"]
    return [[KIND_LABELS[kind], *(_num(retrieval[kind].get(k)) for k in keys)] for kind in KIND_LABELS]


def _retrieval_headers(retrieval: Mapping[str, Any]) -> list[str]:
    return ["query", *[k for k in retrieval.get("typed", {}) if k.startswith("recall@")], "MRR"]


def format_summary(summary: Mapping[str, Any]) -> str:
    """The figures of a run as a few plain-text tables, for the terminal."""
    lines = [f"{summary['rows']} rows: {summary['ok']} evaluated, {summary['failed']} failed"]
    rw = summary.get("rewrite", {})
    if rw.get("n"):
        base = rw["typed_baseline"]
        lines += ["", f"Rewrite ({rw['n']} rows with a gold rewrite)"]
        rows = [
            ["bot's standalone question", _pct(rw["exact_match"]), _num(rw["bleu4"], 1), _num(rw["rouge_l"])],
            ["question as typed (baseline)", _pct(base["exact_match"]), _num(base["bleu4"], 1), _num(base["rouge_l"])],
        ]
        if "needed" in rw:
            nd, nb = rw["needed"], rw["needed"]["typed_baseline"]
            rows.append(
                [f"  needing a rewrite (n={nd['n']}): bot", _pct(nd["exact_match"]), _num(nd["bleu4"], 1),
                 _num(nd["rouge_l"])]
            )  # fmt: skip
            rows.append(
                ["  needing a rewrite: as typed", _pct(nb["exact_match"]), _num(nb["bleu4"], 1), _num(nb["rouge_l"])]
            )
        lines += _table(["", "exact match", "BLEU-4", "ROUGE-L"], rows)
        if rw.get("standalone_rows"):
            lines.append(
                f"already-standalone questions left unchanged: {_pct(rw['standalone_unchanged'])} "
                f"of {rw['standalone_rows']}"
            )
    if rw.get("rows"):
        lines.append(
            f"rewrite model calls: {rw['model_calls']} of {rw['rows']} rows; the cheap check skips "
            f"{rw['skipped_calls']} ({_pct(rw['skipped_share'])})"
            + (f", agreeing with the gold label on {_pct(rw['check']['accuracy'])}" if "check" in rw else "")
        )
    rt = summary.get("retrieval", {})
    if rt.get("n"):
        lines += ["", f"Retrieval ({rt['n']} rows with gold passages; document level)"]
        lines += _table(_retrieval_headers(rt), retrieval_rows(rt))
        for name, sub in rt.get("subsets", {}).items():
            lines += ["", f"  only {name} (n={sub['n']})"]
            lines += _table(_retrieval_headers(sub), retrieval_rows(sub))
    ro = summary.get("routing", {})
    if ro.get("n"):
        lines += ["", f"Routing ({ro['n']} rows with an expected route; threshold {_num(ro.get('threshold'))})"]
        lines.append(
            f"accuracy {_pct(ro['accuracy'])}, grounded precision {_pct(ro['precision'])}, "
            f"recall {_pct(ro['recall'])}; fallback recall {_pct(ro['fallback_recall'])}"
        )
        lines += _confusion_lines(ro["confusion"], markdown=False)
    if "groups" in summary:
        lines += ["", f"By {summary['groups']['field']}"]
        lines += _table(*_group_table(summary["groups"]))
    an = summary.get("answers", {})
    if an.get("n"):
        lines += ["", f"Answers ({an['n']} rows with a good answer)"]
        line = f"token-F1 {_num(an['token_f1'])}, embedding cosine {_num(an['cosine'])}"
        if "judge" in an:
            line += f", judge {_num(an['judge'], 2)} / 5 ({an['judged']} judged)"
        lines.append(line)
    cost = summary.get("cost", {})
    if cost:
        lines += ["", "Cost per stage"]
        lines += _table(["stage", "calls", "tokens", "n", "p50", "p95"], _cost_rows(cost))
    return "\n".join(lines)


def _group_table(groups: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    headers = [groups["field"], "n", "routing accuracy", "bot grounded", "bot fallback", "recall@5 typed",
               "recall@5 bot"]  # fmt: skip
    rows = []
    for value, g in groups["values"].items():
        ro, rt = g["routing"], g.get("retrieval", {})
        rows.append(
            [
                value,
                g["n"],
                _pct(ro.get("accuracy")),
                ro["predicted"].get("grounded", 0),
                ro["predicted"].get("fallback", 0),
                _num(rt.get("typed", {}).get("recall@5")),
                _num(rt.get("rewritten", {}).get("recall@5")),
            ]
        )
    return headers, rows


def _cost_rows(cost: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for stage in ("rewrite", "retrieval", "generation", "total"):
        if stage not in cost:
            continue
        c, lat = cost[stage], cost[stage]["latency"]
        tokens = c.get("prompt_tokens", 0) + c.get("completion_tokens", 0) if "calls" in c else "-"
        rows.append([stage, c.get("calls", "-"), tokens, lat["n"], _secs(lat["p50_s"]), _secs(lat["p95_s"])])
    return rows


def _confusion_lines(confusion: Mapping[str, Mapping[str, int]], markdown: bool) -> list[str]:
    predicted = sorted({p for row in confusion.values() for p in row})
    rows = [[f"expected {e}", *(confusion[e].get(p, 0) for p in predicted)] for e in sorted(confusion)]
    headers = ["", *(f"bot: {p}" for p in predicted)]
    return _md_table(headers, rows) if markdown else _table(headers, rows)


# --------------------------------------------------------------------------- report.md
def write_report(run) -> dict[str, Path]:
    """``report.md`` and the PNG plots in the run's output folder; returns their paths."""
    out = Path(run.out)
    try:
        files = write_plots(run.rows, run.summary, out)
    except ImportError:  # matplotlib missing from a partial install: the report is still worth having
        files = {}
    text = report_markdown(run.rows, run.summary, {k: p.name for k, p in files.items()})
    if not files:
        text += "\n_Plots were skipped: matplotlib is not installed (pip install matplotlib)._\n"
    (out / "report.md").write_text(text, encoding="utf-8")
    return {"report": out / "report.md", **files}


def report_markdown(rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any], plots: Mapping[str, str]) -> str:
    run = summary.get("run", {})
    lines = [f"# Evaluation of {Path(run.get('questions', '?')).name}", ""]
    lines += [
        f"- questions: `{run.get('questions')}`"
        + (f", rows where {run['where']}" if run.get("where") else "")
        + (f", sample of {run['sample']} (seed {run['seed']})" if run.get("sample") else "")
        + (f", first {run['limit']}" if run.get("limit") else ""),
        f"- rows: {summary['rows']} ({summary['ok']} evaluated, {summary['failed']} failed; "
        f"{run.get('resumed_rows', 0)} already in results.jsonl from an earlier run)",
        f"- knowledge base: `{run.get('index')}`, embedder `{run.get('embedder')}`, "
        f"threshold {_num(run.get('threshold'))}",
        f"- rewrite: {run.get('rewrite_model') or 'off (question as typed)'}; generation: "
        f"{run.get('answer_model') or 'off'}"
        + ("; history replayed from the bot's own answers" if run.get("replay") else ""),
        "",
    ]
    lines += _rewrite_section(rows, summary.get("rewrite", {}))
    lines += _retrieval_section(rows, summary.get("retrieval", {}), plots)
    lines += _routing_section(rows, summary.get("routing", {}), plots)
    if "groups" in summary:
        lines += [f"## By {summary['groups']['field']}", ""]
        lines += _md_table(*_group_table(summary["groups"]))
        lines.append("")
    lines += _answer_section(rows, summary.get("answers", {}))
    cost = summary.get("cost", {})
    if cost:
        lines += ["## Cost per stage", ""]
        lines += _md_table(["stage", "model calls", "tokens", "n", "p50", "p95"], _cost_rows(cost))
        if "latency" in plots:
            lines += ["", f"![latency per stage]({plots['latency']})"]
        lines.append("")
    failed = [r for r in rows if r.get("status") == "failed"]
    if failed:
        lines += [f"## Failed rows ({len(failed)})", ""]
        lines += _md_table(["id", "line", "reason"], [[r["id"], r.get("line"), r.get("reason")] for r in failed[:50]])
        lines.append("")
    return "\n".join(lines)


def _ok(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [r for r in rows if r.get("status") == "ok"]


def _rewrite_section(rows, rw) -> list[str]:
    if not rw.get("rows"):
        return []
    lines = ["## Rewrite", ""]
    if rw.get("n"):
        base = rw["typed_baseline"]
        table = [
            ["bot's standalone question", _pct(rw["exact_match"]), _num(rw["bleu4"], 1), _num(rw["rouge_l"])],
            ["question as typed (baseline)", _pct(base["exact_match"]), _num(base["bleu4"], 1), _num(base["rouge_l"])],
        ]
        if "needed" in rw:
            nd = rw["needed"]
            table.append(
                [
                    f"rows needing a rewrite (n={nd['n']}): bot",
                    _pct(nd["exact_match"]),
                    _num(nd["bleu4"], 1),
                    _num(nd["rouge_l"]),
                ]
            )
            nb = nd["typed_baseline"]
            table.append(
                ["rows needing a rewrite: as typed", _pct(nb["exact_match"]), _num(nb["bleu4"], 1), _num(nb["rouge_l"])]
            )
        lines += [
            f"{rw['n']} rows with a gold rewrite. Exact match ignores punctuation and spaces; BLEU-4 is "
            "corpus-level (sacrebleu, Chinese by character); ROUGE-L is the LCS F1, by character for Chinese.",
            "",
        ]
        lines += _md_table(["", "exact match", "BLEU-4", "ROUGE-L"], table)
        lines.append("")
        if rw.get("standalone_rows"):
            lines.append(
                f"- already-standalone questions left unchanged: {_pct(rw['standalone_unchanged'])} "
                f"of {rw['standalone_rows']}"
            )
    lines.append(
        f"- rewrite model calls: {rw['model_calls']} of {rw['rows']} rows; the cheap check skips "
        f"{rw['skipped_calls']} ({_pct(rw['skipped_share'])})"
    )
    if "check" in rw:
        ch = rw["check"]
        lines.append(
            f"- the cheap check against the gold `needs_rewrite`: accuracy {_pct(ch['accuracy'])}, "
            f"recall of the rows that need a rewrite {_pct(ch['recall_of_needed'])}, precision of the calls "
            f"{_pct(ch['precision_of_called'])}"
        )
    lines.append("")
    worst = [r for r in _ok(rows) if "gold" in r.get("rewrite", {}) and not r["rewrite"]["exact_match"]]
    worst.sort(key=lambda r: r["rewrite"]["rouge_l"])
    if worst:
        lines += [f"### Worst rewrites (lowest ROUGE-L, {min(WORST, len(worst))} of {len(worst)} misses)", ""]
        lines += _md_table(
            ["id", "question", "bot", "gold", "ROUGE-L", "why"],
            [
                [
                    r["id"],
                    r["question"],
                    r["rewrite"]["standalone"],
                    r["rewrite"]["gold"],
                    _num(r["rewrite"]["rouge_l"], 2),
                    r["rewrite"]["reason"],
                ]
                for r in worst[:WORST]
            ],
        )
        lines.append("")
    return lines


def _rank(value) -> str:
    return "-" if value is None else str(value)


def _retrieval_section(rows, rt, plots) -> list[str]:
    if not rt.get("n"):
        return []
    lines = [
        "## Retrieval",
        "",
        f"{rt['n']} rows with gold passages; recall@k and MRR at document level. The gold query is the gold "
        "rewrite where the row has one, else the question with the gold entities it does not name put in front ("
        + ", ".join(f"{_QUERY_FROM[k]}: {v} rows" for k, v in rt.get("gold_query_from", {}).items())
        + ").",
        "",
    ]
    lines += _md_table(_retrieval_headers(rt), retrieval_rows(rt))
    lines.append("")
    for name, sub in rt.get("subsets", {}).items():
        lines += [f"Only the rows with {name} (n={sub['n']}):", ""]
        lines += _md_table(_retrieval_headers(sub), retrieval_rows(sub))
        lines.append("")
    for label, figures in [("all rows", rt), *[(f"{n} rows", s) for n, s in rt.get("subsets", {}).items()]]:
        gain = figures["rewritten"].get("recall@5", float("nan")) - figures["typed"].get("recall@5", float("nan"))
        room = figures["gold"].get("recall@5", float("nan")) - figures["typed"].get("recall@5", float("nan"))
        if _is_number(gain):
            share = f" ({gain / room:.0%} of the way to the gold query)" if _is_number(room) and room > 0 else ""
            lines.append(f"- rewrite gain, {label}: recall@5 {gain * 100:+.1f} points{share}")
    lines.append("")
    if "recall" in plots:
        lines += [f"![recall@k]({plots['recall']})", ""]
    with_gold = [r for r in _ok(rows) if r.get("retrieval")]
    missed = [r for r in with_gold if r["retrieval"]["rewritten"]["rank"] is None]
    hurt = [
        r
        for r in with_gold
        if r["retrieval"]["typed"]["rank"] is not None
        and (r["retrieval"]["rewritten"]["rank"] or 10**6) > r["retrieval"]["typed"]["rank"]
    ]
    for title, chosen in (
        ("Gold passage not found with the bot's query", missed),
        ("Where the rewrite made retrieval worse", hurt),
    ):
        if not chosen:
            continue
        lines += [f"### {title} ({min(WORST, len(chosen))} of {len(chosen)})", ""]
        lines += _md_table(
            ["id", "question", "bot's query", "gold", "rank typed", "rank bot", "rank gold", "rewrite"],
            [
                [
                    r["id"],
                    r["question"],
                    r["retrieval"]["rewritten"]["query"],
                    ", ".join(r["retrieval"]["gold_ids"]),
                    _rank(r["retrieval"]["typed"]["rank"]),
                    _rank(r["retrieval"]["rewritten"]["rank"]),
                    _rank(r["retrieval"]["gold"]["rank"]),
                    r["rewrite"]["reason"],
                ]
                for r in chosen[:WORST]
            ],
        )
        lines.append("")
    return lines


def _routing_section(rows, ro, plots) -> list[str]:
    if "predicted" not in ro:
        return []
    lines = ["## Routing", ""]
    lines.append(
        f"Threshold {_num(ro.get('threshold'))}; the bot routed "
        + ", ".join(f"{n} {route}" for route, n in ro["predicted"].items())
        + "."
    )
    if ro.get("n"):
        inferred = ro.get("expected_inferred", 0)
        lines += [
            "",
            f"{ro['n']} rows with an expected route"
            + (f" ({inferred} inferred as grounded because they name gold passages)" if inferred else "")
            + f": accuracy {_pct(ro['accuracy'])}, grounded precision {_pct(ro['precision'])}, grounded recall "
            f"{_pct(ro['recall'])}, fallback recall {_pct(ro['fallback_recall'])}.",
            "",
        ]
        lines += _confusion_lines(ro["confusion"], markdown=True)
    lines.append("")
    if "scores" in plots:
        lines += [f"![score distributions]({plots['scores']})", ""]
    wrong = [r for r in _ok(rows) if r.get("routing", {}).get("correct") is False]
    wrong.sort(key=lambda r: -abs((r["routing"]["top_score"] or 0) - (r["routing"]["threshold"] or 0)))
    if wrong:
        lines += [f"### Misrouted (furthest from the threshold first; {min(WORST, len(wrong))} of {len(wrong)})", ""]
        lines += _md_table(
            ["id", "question", "standalone", "expected", "bot", "top score", "top hit"],
            [
                [
                    r["id"],
                    r["question"],
                    r["rewrite"]["standalone"],
                    r["routing"]["expected"],
                    r["routing"]["predicted"],
                    _num(r["routing"]["top_score"]),
                    r["hits"][0]["title"] if r.get("hits") else "-",
                ]
                for r in wrong[:WORST]
            ],
        )
        lines.append("")
    return lines


def _answer_section(rows, an) -> list[str]:
    if not an.get("generated"):
        return []
    lines = ["## Answers", ""]
    if not an.get("n"):
        return lines + [f"{an['generated']} answers generated; no row has a good answer to compare with.", ""]
    line = f"{an['n']} rows with a good answer: token-F1 {_num(an['token_f1'])}, embedding cosine {_num(an['cosine'])}"
    if "judge" in an:
        line += f", LLM judge {_num(an['judge'], 2)} / 5 over {an['judged']} judged rows"
    lines += [line + ".", ""]
    scored = sorted((r for r in _ok(rows) if "token_f1" in r.get("answer", {})), key=lambda r: r["answer"]["token_f1"])
    if scored:
        lines += [f"### Answers furthest from the good answer (lowest token-F1, {min(WORST, len(scored))})", ""]
        lines += _md_table(
            ["id", "question", "bot", "good answer", "token-F1", "cosine"],
            [
                [
                    r["id"],
                    r["question"],
                    r["answer"]["text"],
                    r["answer"]["gold"],
                    _num(r["answer"]["token_f1"], 2),
                    _num(r["answer"]["cosine"], 2),
                ]
                for r in scored[:WORST]
            ],
        )
        lines.append("")
    return lines


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


# --------------------------------------------------------------------------- comparing runs
def _flatten(value: Any, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(value, Mapping):
        for key, inner in value.items():
            if key in ("run", "confusion", "predicted", "gold_query_from"):
                continue
            out.update(_flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
    elif _is_number(value):
        out[prefix] = float(value)
    return out


def _run_settings(out: Path | None) -> dict[str, Any]:
    """The settings a run recorded in its ``run.json`` (empty for a run made in memory)."""
    path = Path(out) / "run.json" if out else None
    if path is None or not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def compare_runs(a, b) -> str:
    """A markdown comparison of two runs (``EvalRun``s): every figure side by side with the
    change, then the rows whose outcome changed."""
    fa, fb = _flatten(a.summary), _flatten(b.summary)
    name_a, name_b = str(a.out or "A"), str(b.out or "B")
    lines = [f"# {name_a} vs {name_b}", ""]
    settings_a, settings_b = _run_settings(a.out), _run_settings(b.out)
    differ = [k for k in dict.fromkeys([*settings_a, *settings_b]) if settings_a.get(k) != settings_b.get(k)]
    if differ:  # what was changed between the runs, e.g. the base vs the fine-tuned answer model
        lines += _md_table(
            ["setting", "A", "B"], [[k, str(settings_a.get(k, "-")), str(settings_b.get(k, "-"))] for k in differ]
        )
        lines.append("")
    keys = [k for k in fa if k in fb] + [k for k in fb if k not in fa] + [k for k in fa if k not in fb]
    rows = []
    for key in dict.fromkeys(keys):
        va, vb = fa.get(key), fb.get(key)
        delta = f"{vb - va:+.4g}" if va is not None and vb is not None else "-"
        rows.append([key, "-" if va is None else f"{va:.4g}", "-" if vb is None else f"{vb:.4g}", delta])
    lines += _md_table(["figure", "A", "B", "B - A"], rows)
    by_a = {r["id"]: r for r in _ok(a.rows)}
    changes = {
        "routing fixed": [],
        "routing broken": [],
        "retrieval better": [],
        "retrieval worse": [],
        "answer closer to the good one": [],
        "answer further from the good one": [],
    }
    for rb in _ok(b.rows):
        ra = by_a.get(rb["id"])
        if ra is None:
            continue
        ca, cb = ra.get("routing", {}).get("correct"), rb.get("routing", {}).get("correct")
        if ca is False and cb is True:
            changes["routing fixed"].append(rb["id"])
        elif ca is True and cb is False:
            changes["routing broken"].append(rb["id"])
        if ra.get("retrieval") and rb.get("retrieval"):
            a_rank = ra["retrieval"]["rewritten"]["rank"] or 10**6
            b_rank = rb["retrieval"]["rewritten"]["rank"] or 10**6
            if b_rank < a_rank:
                changes["retrieval better"].append(rb["id"])
            elif b_rank > a_rank:
                changes["retrieval worse"].append(rb["id"])
        fa1, fb1 = ra.get("answer", {}).get("token_f1"), rb.get("answer", {}).get("token_f1")
        if fa1 is not None and fb1 is not None and fa1 != fb1:
            changes["answer closer to the good one" if fb1 > fa1 else "answer further from the good one"].append(
                rb["id"]
            )
    lines += [
        "",
        "Rows whose outcome changed from A to B (retrieval: rank of the gold document with the bot's query;"
        " answers: token-F1):",
        "",
    ]
    for what, ids in changes.items():
        shown = ", ".join(ids[:15]) + (" ..." if len(ids) > 15 else "")
        lines.append(f"- {what}: {len(ids)}" + (f" ({shown})" if ids else ""))
    return "\n".join(lines) + "\n"
