"""The summary of a run: rewrite, retrieval, routing, answer and cost figures over its rows, overall
and per group."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ragbot.evaluation import metrics
from ragbot.evaluation.scoring import QUERY_KINDS

# Boolean fields of a row that split the retrieval figures into subsets (KdConv marks the
# turns whose entity is only reachable through the history).
SUBSET_FIELDS = ("entity_in_question",)


# --------------------------------------------------------------------------- the summary
def summarise(
    rows: Sequence[Mapping[str, Any]], ks: Sequence[int] = (1, 5, 10), group_by: str | None = None
) -> dict[str, Any]:
    """The figures of a run, each over the rows that have its gold field; with ``group_by``,
    routing and retrieval are also given per value of that field of the rows."""
    ok = [r for r in rows if r.get("status") == "ok"]
    summary: dict[str, Any] = {
        "rows": len(rows),
        "ok": len(ok),
        "failed": len(rows) - len(ok),
        "rewrite": _rewrite_summary(ok),
        "retrieval": _retrieval_summary(ok, ks),
        "routing": _routing_summary(ok),
        "answers": _answer_summary(ok),
        "cost": _cost_summary(ok),
    }
    if group_by:
        summary["groups"] = _group_summary(ok, ks, group_by)
    return summary


def group_value(row: Mapping[str, Any], name: str) -> str:
    """The value of field ``name`` of a result row, as text ("-" when the row has none)."""
    if name in ("conv_id", "turn", "id"):
        value = row.get(name)
    else:
        value = row.get("fields", {}).get(name)
    if isinstance(value, bool):
        return str(value).lower()
    return "-" if value is None else str(value)


def _group_summary(rows: Sequence[Mapping[str, Any]], ks: Sequence[int], name: str) -> dict[str, Any]:
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(group_value(r, name), []).append(r)
    out: dict[str, Any] = {"field": name, "values": {}}
    for value, chosen in sorted(groups.items()):
        entry: dict[str, Any] = {"n": len(chosen), "routing": _routing_summary(chosen)}
        entry["routing"].pop("threshold", None)
        retrieval = _retrieval_summary(chosen, ks)
        retrieval.pop("subsets", None)
        if retrieval.get("n"):
            entry["retrieval"] = retrieval
        out["values"][value] = entry
    return out


def _rewrite_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    with_part = [r for r in rows if "rewrite" in r]
    parts = [r["rewrite"] for r in with_part]
    out: dict[str, Any] = {"rows": len(parts)}
    if not parts:
        return out
    out["model_calls"] = sum(p["called_model"] for p in parts)
    out["skipped_calls"] = sum(not p["check_needed"] for p in parts)
    out["skipped_share"] = out["skipped_calls"] / len(parts)
    out["changed"] = sum(not p["unchanged"] for p in parts)
    gold = [r for r in with_part if "gold" in r["rewrite"]]
    out["n"] = len(gold)
    if gold:
        out.update(_text_scores(gold))
        out["typed_baseline"] = _text_scores(gold, typed=True)
        needed = [r for r in gold if r["rewrite"].get("already_standalone") is False]
        if needed:
            out["needed"] = {"n": len(needed), **_text_scores(needed)}
            out["needed"]["typed_baseline"] = _text_scores(needed, typed=True)
        standalone = [r["rewrite"] for r in gold if r["rewrite"].get("already_standalone")]
        out["standalone_rows"] = len(standalone)
        out["standalone_unchanged"] = (
            sum(p["unchanged"] for p in standalone) / len(standalone) if standalone else float("nan")
        )
        if needed and standalone:
            # published rewriters on the Su et al. corpus are scored on its positives plus as many
            # negatives: the mean of the two subsets' exact match, whatever this file's mix
            kept = [r for r in gold if r["rewrite"].get("already_standalone")]
            out["balanced_exact_match"] = (out["needed"]["exact_match"] + _text_scores(kept)["exact_match"]) / 2
    labelled = [p for p in parts if "gold_needs_rewrite" in p]
    if labelled:
        tp = sum(p["check_needed"] and p["gold_needs_rewrite"] for p in labelled)
        fp = sum(p["check_needed"] and not p["gold_needs_rewrite"] for p in labelled)
        fn = sum(not p["check_needed"] and p["gold_needs_rewrite"] for p in labelled)
        tn = len(labelled) - tp - fp - fn
        out["check"] = {
            "n": len(labelled),
            "accuracy": (tp + tn) / len(labelled),
            "recall_of_needed": tp / (tp + fn) if tp + fn else float("nan"),
            "precision_of_called": tp / (tp + fp) if tp + fp else float("nan"),
        }
    return out


def _text_scores(rows: Sequence[Mapping[str, Any]], typed: bool = False) -> dict[str, float]:
    """EM, corpus BLEU-4 and mean ROUGE-L against the gold rewrite, of the bot's standalone
    question, or (``typed``) of the question as typed: the no-rewrite baseline."""
    refs = [r["rewrite"]["gold"] for r in rows]
    hyps = [r["question"] if typed else r["rewrite"]["standalone"] for r in rows]
    return {
        "exact_match": metrics.mean(metrics.exact_match(h, g) for h, g in zip(hyps, refs, strict=True)),
        "bleu4": metrics.corpus_bleu(hyps, refs),
        "rouge_l": metrics.mean(metrics.rouge_l(h, g) for h, g in zip(hyps, refs, strict=True)),
    }


def _retrieval_summary(rows: Sequence[Mapping[str, Any]], ks: Sequence[int]) -> dict[str, Any]:
    with_gold = [r for r in rows if r.get("retrieval")]
    out: dict[str, Any] = {"n": len(with_gold)}
    if not with_gold:
        return out
    out.update(_ranks(with_gold, ks))
    sources: dict[str, int] = {}
    for r in with_gold:
        sources[r["retrieval"]["gold_query_from"]] = sources.get(r["retrieval"]["gold_query_from"], 0) + 1
    out["gold_query_from"] = sources
    subsets = {}
    for name in SUBSET_FIELDS:
        for value in (False, True):
            chosen = [r for r in with_gold if r.get("fields", {}).get(name) is value]
            if chosen and len(chosen) < len(with_gold):  # a subset equal to all rows says nothing new
                subsets[f"{name}={str(value).lower()}"] = {"n": len(chosen), **_ranks(chosen, ks)}
    if subsets:
        out["subsets"] = subsets
    return out


def _ranks(rows: Sequence[Mapping[str, Any]], ks: Sequence[int]) -> dict[str, Any]:
    out = {}
    for kind in QUERY_KINDS:
        figures = metrics.ranking_metrics([r["retrieval"][kind]["rank"] for r in rows], ks)
        figures.pop("n")
        out[kind] = figures
    return out


def _routing_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    labelled = [r for r in rows if r.get("routing", {}).get("expected")]
    out: dict[str, Any] = {"n": len(labelled)}
    thresholds = {r["routing"]["threshold"] for r in rows if r.get("routing")}
    if thresholds:
        out["threshold"] = thresholds.pop() if len(thresholds) == 1 else sorted(thresholds)
    predicted = [r["routing"]["predicted"] for r in rows if r.get("routing")]
    out["predicted"] = {route: predicted.count(route) for route in sorted(set(predicted))}
    if labelled:
        out.update(
            metrics.routing_metrics(
                [r["routing"]["expected"] for r in labelled], [r["routing"]["predicted"] for r in labelled]
            )
        )
        out["expected_inferred"] = sum(bool(r["routing"].get("expected_inferred")) for r in labelled)
    out.update(_grounded_precision(rows))
    return out


def _grounded_precision(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Of the turns routed grounded that have gold passages, the share whose shown passages (the
    sources the answer model was given) include a gold document."""
    judged = [
        r["routing"]["shown_gold"]
        for r in rows
        if r.get("routing", {}).get("predicted") == "grounded" and r["routing"].get("shown_gold") is not None
    ]
    if not judged:
        return {}
    return {"grounded_with_gold": len(judged), "grounded_precision_gold": sum(judged) / len(judged)}


def _answer_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    parts = [r["answer"] for r in rows if "answer" in r and "gold" in r["answer"]]
    out: dict[str, Any] = {"generated": sum("answer" in r for r in rows), "n": len(parts)}
    if parts:
        out["token_f1"] = metrics.mean(p["token_f1"] for p in parts)
        out["cosine"] = metrics.mean(p["cosine"] for p in parts)
        judged = [p["judge"] for p in parts if p.get("judge") is not None]
        if any("judge" in p for p in parts):
            out["judge"] = metrics.mean(judged)
            out["judged"] = len(judged)
    with_facts = [r for r in rows if "fact_recall" in r.get("answer", {})]
    if with_facts:
        out["facts"] = _fact_summary(with_facts)
        routes = sorted({r.get("routing", {}).get("predicted") or "-" for r in with_facts})
        if len(routes) > 1:
            out["facts"]["by_route"] = {
                route: _fact_summary([r for r in with_facts if (r.get("routing", {}).get("predicted") or "-") == route])
                for route in routes
            }
    return out


def _fact_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Fact recall: the mean share of a row's gold facts its answer states, and the share of rows
    whose answer states all of them."""
    recalls = [r["answer"]["fact_recall"] for r in rows]
    return {"n": len(rows), "recall": metrics.mean(recalls), "all_found": sum(x == 1 for x in recalls) / len(rows)}


def _cost_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for stage, usage_key in (("rewrite", "rewrite"), ("retrieval", None), ("generation", "answer")):
        usage = [r["usage"][usage_key] for r in rows if usage_key and usage_key in r.get("usage", {})]
        if stage == "rewrite":
            seconds = [r["timings"]["rewrite"] for r in rows if r.get("rewrite", {}).get("called_model")]
        else:
            seconds = [r["timings"][stage] for r in rows if stage in r.get("timings", {})]
        if not seconds and not any(u["calls"] for u in usage):
            continue
        figures: dict[str, Any] = {"latency": metrics.latency_summary(seconds)}
        if usage_key:
            figures.update(
                calls=sum(u["calls"] for u in usage),
                prompt_tokens=sum(u["prompt_tokens"] for u in usage),
                completion_tokens=sum(u["completion_tokens"] for u in usage),
            )
        out[stage] = figures
    totals = [r["timings"]["total"] for r in rows if "total" in r.get("timings", {})]
    out["total"] = {"latency": metrics.latency_summary(totals)}
    return out
