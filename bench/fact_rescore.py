"""Fact recall of a finished `ragbot eval` run, recomputed with the current scoring, no model.

Takes each row's answer text and gold facts from ``results.jsonl`` and scores them as
``ragbot eval`` now does (route label and citation markers dropped, see
``ragbot/evaluation/scoring.py``), so runs made before a change of the scoring compare with
runs made after it. Prints the run's recorded figure next to the recomputed one; with several
runs, only the rows all of them answered count.

    python bench/fact_rescore.py facts-gen/results.jsonl facts-gen-new/results.jsonl
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


def _rows(path: str) -> dict[str, dict]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    rows = (json.loads(line) for line in lines if line.strip())
    return {r["id"]: r for r in rows if r.get("answer", {}).get("gold_facts")}


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python bench/fact_rescore.py RUN/results.jsonl [RUN2/results.jsonl ...]")
    runs = [_rows(p) for p in sys.argv[1:]]
    common = [i for i in runs[0] if all(i in r for r in runs)]
    for path, rows in zip(sys.argv[1:], runs, strict=True):
        recorded = [rows[i]["answer"]["fact_recall"] for i in common]
        now = [fact_recall(answer_body(rows[i]["answer"]["text"]), rows[i]["answer"]["gold_facts"])[0] for i in common]
        n = len(common)
        print(
            f"{path}: {n} rows with gold facts: fact recall recorded {sum(recorded) / n:.3f}, "
            f"now {sum(now) / n:.3f} (all stated {sum(math.isclose(x, 1) for x in now) / n:.1%})"
        )


if __name__ == "__main__":
    main()
