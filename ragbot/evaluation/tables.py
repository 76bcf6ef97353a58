"""Plain-text tables of an evaluation summary, for the terminal and for report.md."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

KIND_LABELS = {"typed": "question as typed", "rewritten": "bot's standalone question", "gold": "gold query (ceiling)"}


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
        if "balanced_exact_match" in rw:
            lines.append(
                f"exact match, rows needing a rewrite plus as many standalone ones: {_pct(rw['balanced_exact_match'])}"
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
    if "grounded_precision_gold" in ro:
        lines += ["", gold_shown(ro)]
    if "groups" in summary:
        lines += ["", f"By {summary['groups']['field']}"]
        lines += _table(*_group_table(summary["groups"]))
    an = summary.get("answers", {})
    if an.get("n") or "facts" in an:
        lines += ["", f"Answers ({answer_counts(an)})"]
        lines.append(answer_figures(an))
        if "by_route" in an.get("facts", {}):
            lines.append(fact_routes(an["facts"]))
    cost = summary.get("cost", {})
    if cost:
        lines += ["", "Cost per stage"]
        lines += _table(["stage", "calls", "tokens", "n", "p50", "p95"], _cost_rows(cost))
    return "\n".join(lines)


def answer_counts(an: Mapping[str, Any]) -> str:
    """How many rows the answer figures are over: "12 rows with a good answer, 10 with gold facts"."""
    counts = [f"{an['n']} rows with a good answer"] if an.get("n") else []
    if "facts" in an:
        counts.append(f"{an['facts']['n']} {'with' if counts else 'rows with'} gold facts")
    return ", ".join(counts)


def answer_figures(an: Mapping[str, Any]) -> str:
    """token-F1, fact recall (with the share of answers stating every gold fact), cosine, judge."""
    figures = [f"token-F1 {_num(an['token_f1'])}"] if an.get("n") else []
    if "facts" in an:
        figures.append(
            f"fact recall {_num(an['facts']['recall'])} (all gold facts stated: {_pct(an['facts']['all_found'])})"
        )
    if an.get("n"):
        figures.append(f"embedding cosine {_num(an['cosine'])}")
        if "judge" in an:
            figures.append(f"judge {_num(an['judge'], 2)} / 5 ({an['judged']} judged)")
    return ", ".join(figures)


def fact_routes(facts: Mapping[str, Any]) -> str:
    """Fact recall per route the bot took: "fact recall by route: grounded 0.700 (n=8), ..."."""
    return "fact recall by route: " + ", ".join(
        f"{route} {_num(f['recall'])} (n={f['n']})" for route, f in facts["by_route"].items()
    )


def gold_shown(ro: Mapping[str, Any]) -> str:
    """The grounded precision against the gold documents, as one line."""
    n, share = ro["grounded_with_gold"], ro["grounded_precision_gold"]
    return (
        f"grounded on a gold document: {_pct(share)} ({round(share * n)} of the {n} turns routed grounded that "
        "have gold passages were shown one)"
    )


def _group_table(groups: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    headers = [groups["field"], "n", "routing accuracy", "bot grounded", "bot fallback", "grounded on gold",
               "recall@5 typed", "recall@5 bot"]  # fmt: skip
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
                _pct(ro.get("grounded_precision_gold")),
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


def _ok(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [r for r in rows if r.get("status") == "ok"]
