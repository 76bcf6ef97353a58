"""Two evaluation runs side by side: the settings that differ, the figures, and the rows that changed."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ragbot.evaluation.tables import _is_number, _md_table, _ok


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


def _on_gold(row: Mapping[str, Any]) -> bool | None:
    """Whether a row with gold passages was answered grounded on one (None: no gold passages)."""
    routing = row.get("routing", {})
    if routing.get("shown_gold") is None:
        return None
    return routing.get("predicted") == "grounded" and routing["shown_gold"]


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
        "now grounded on a gold document": [],
        "no longer grounded on a gold document": [],
        "retrieval better": [],
        "retrieval worse": [],
        "answer closer to the good one": [],
        "answer further from the good one": [],
        "more gold facts stated": [],
        "fewer gold facts stated": [],
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
        ga, gb = _on_gold(ra), _on_gold(rb)
        if ga is not None and gb is not None and ga != gb:
            changes["now grounded on a gold document" if gb else "no longer grounded on a gold document"].append(
                rb["id"]
            )
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
        ra1, rb1 = ra.get("answer", {}).get("fact_recall"), rb.get("answer", {}).get("fact_recall")
        if ra1 is not None and rb1 is not None and ra1 != rb1:
            changes["more gold facts stated" if rb1 > ra1 else "fewer gold facts stated"].append(rb["id"])
    lines += [
        "",
        "Rows whose outcome changed from A to B (retrieval: rank of the gold document with the bot's query;"
        " answers: token-F1, and the share of gold facts stated):",
        "",
    ]
    for what, ids in changes.items():
        shown = ", ".join(ids[:15]) + (" ..." if len(ids) > 15 else "")
        lines.append(f"- {what}: {len(ids)}" + (f" ({shown})" if ids else ""))
    return "\n".join(lines) + "\n"
