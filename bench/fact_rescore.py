"""Fact recall of a finished `ragbot eval` run, recomputed with the current scoring, no model.

Takes each row's answer text and gold facts from ``results.jsonl`` and scores them as
``ragbot eval`` now does (route label and citation markers dropped, see
``ragbot/evaluation/scoring.py``), so runs made before a change of the scoring compare with
runs made after it. Prints the run's recorded figure next to the recomputed one; with several
runs, only the rows all of them answered count.

    python bench/fact_rescore.py facts-gen/results.jsonl facts-gen-new/results.jsonl
    python bench/fact_rescore.py --facts kdconv_facts.jsonl facts-gen/results.jsonl

``--facts QUESTIONS.jsonl``: take each row's gold facts from that question set (by id) instead,
to score finished runs against regenerated gold facts.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ragbot.evaluation.facts import fact_recall  # noqa: E402
from ragbot.evaluation.scoring import answer_body  # noqa: E402


def _jsonl(path: str) -> list[dict]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _rows(path: str, facts: dict[str, list[str]] | None) -> dict[str, dict]:
    rows = _jsonl(path)
    if facts is not None:
        for r in rows:
            r.setdefault("answer", {})["gold_facts"] = facts.get(r["id"], [])
    return {r["id"]: r for r in rows if r.get("answer", {}).get("gold_facts")}


def main() -> None:
    args = sys.argv[1:]
    facts = None
    if args[:1] == ["--facts"] and len(args) >= 2:
        facts = {r["id"]: r.get("gold_facts") or [] for r in _jsonl(args[1])}
        args = args[2:]
    if not args:
        sys.exit("usage: python bench/fact_rescore.py [--facts QUESTIONS.jsonl] RUN/results.jsonl [RUN2/...]")
    runs = [_rows(p, facts) for p in args]
    common = [i for i in runs[0] if all(i in r for r in runs)]
    for path, rows in zip(args, runs, strict=True):
        recorded = [rows[i]["answer"]["fact_recall"] for i in common]
        now = [fact_recall(answer_body(rows[i]["answer"]["text"]), rows[i]["answer"]["gold_facts"])[0] for i in common]
        n = len(common)
        print(
            f"{path}: {n} rows with gold facts: fact recall recorded {sum(recorded) / n:.3f}, "
            f"now {sum(now) / n:.3f} (all stated {sum(math.isclose(x, 1) for x in now) / n:.1%})"
        )


if __name__ == "__main__":
    main()
