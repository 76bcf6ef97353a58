"""report.md of an evaluation run: the summary tables, the plots and the worst cases of each stage."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ragbot.evaluation.plots import write_plots
from ragbot.evaluation.tables import (
    _QUERY_FROM,
    WORST,
    _confusion_lines,
    _cost_rows,
    _group_table,
    _is_number,
    _md_table,
    _num,
    _ok,
    _pct,
    _retrieval_headers,
    answer_counts,
    answer_figures,
    fact_routes,
    gold_shown,
    retrieval_rows,
)


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
        if "balanced_exact_match" in rw:
            lines.append(
                f"- exact match on the rows needing a rewrite plus as many already-standalone ones (as "
                f"published rewriters on the Su et al. corpus are scored): {_pct(rw['balanced_exact_match'])}"
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
    if "grounded_precision_gold" in ro:
        lines += ["", f"- {gold_shown(ro)}."]
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
    off = [r for r in _ok(rows) if r.get("routing", {}).get("predicted") == "grounded"]
    off = [r for r in off if r["routing"].get("shown_gold") is False]
    if off:
        lines += [f"### Grounded without a gold document ({min(WORST, len(off))} of {len(off)})", ""]
        lines += _md_table(
            ["id", "question", "standalone", "gold", "shown", "why"],
            [
                [
                    r["id"],
                    r["question"],
                    r["rewrite"]["standalone"],
                    ", ".join(r["retrieval"]["gold_ids"]) if r.get("retrieval") else "-",
                    ", ".join(r["routing"]["shown"]),
                    r["routing"].get("reason", ""),
                ]
                for r in off[:WORST]
            ],
        )
        lines.append("")
    return lines


def _answer_section(rows, an) -> list[str]:
    if not an.get("generated"):
        return []
    lines = ["## Answers", ""]
    if not an.get("n") and "facts" not in an:
        generated = an["generated"]
        return lines + [f"{generated} answers generated; no row has a good answer or gold facts to compare with.", ""]
    lines += [f"{answer_counts(an)}: {answer_figures(an)}.", ""]
    if "facts" in an:
        lines += [
            "Fact recall is the share of a row's gold facts (dates, names, numbers a good answer states) "
            "found in the bot's answer, ignoring case, width, spaces and punctuation; numbers match as numbers.",
            "",
        ]
        if "by_route" in an["facts"]:
            lines += [f"- {fact_routes(an['facts'])}", ""]
    scored = sorted((r for r in _ok(rows) if "token_f1" in r.get("answer", {})), key=lambda r: r["answer"]["token_f1"])
    if scored:
        lines += [f"### Answers furthest from the good answer (lowest token-F1, {min(WORST, len(scored))})", ""]
        lines += _md_table(
            ["id", "question", "bot", "good answer", "token-F1", "fact recall", "cosine"],
            [
                [
                    r["id"],
                    r["question"],
                    r["answer"]["text"],
                    r["answer"]["gold"],
                    _num(r["answer"]["token_f1"], 2),
                    _num(r["answer"].get("fact_recall"), 2),
                    _num(r["answer"]["cosine"], 2),
                ]
                for r in scored[:WORST]
            ],
        )
        lines.append("")
    missing = [r for r in _ok(rows) if r.get("answer", {}).get("fact_recall", 1) < 1]
    missing.sort(key=lambda r: r["answer"]["fact_recall"])
    if missing:
        shown = f"{min(WORST, len(missing))} of {len(missing)}"
        lines += [f"### Answers missing gold facts (lowest fact recall, {shown})", ""]
        lines += _md_table(
            ["id", "question", "route", "bot", "missing facts", "fact recall"],
            [
                [
                    r["id"],
                    r["question"],
                    r.get("routing", {}).get("predicted", "-"),
                    r["answer"]["text"],
                    ", ".join(f for f in r["answer"]["gold_facts"] if f not in r["answer"]["facts_found"]),
                    _num(r["answer"]["fact_recall"], 2),
                ]
                for r in missing[:WORST]
            ],
        )
        lines.append("")
    return lines
