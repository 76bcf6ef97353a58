"""What the rewrite's history budget keeps in view, with no model: KdConv film follow-ups.

For each budget pair (``rewrite_history_tokens`` / ``rewrite_message_tokens``), over the KdConv
turns whose film or person is named only in the history (``entity_in_question: false``): the
share of turns whose gold entity is still named in the history the rewrite sees, and the mean
tokens of that history (what every rewrite call processes). Baseline: main's rewrite input, the
whole turns within ``history_tokens`` (1200). Seconds; no model, no index.

    python bench/rewrite_budget.py
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ragbot.conversation.history import recent_messages, trim_history  # noqa: E402
from ragbot.models.chat import Message  # noqa: E402
from ragbot.tokens import count_tokens  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "convqa_zh_kdconv_film.jsonl"
BUDGETS = [(200, 120), (300, 120), (400, 120), (400, 60), (600, 120), (800, 120), (1200, 1200)]


def main() -> None:
    if not DATA.is_file():
        sys.exit(f"{DATA} not found: this benchmark reads the shared development data")
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if not r["entity_in_question"] and r["history"]]
    print(f"{len(rows)} KdConv follow-ups with the entity only in the history\n")
    print(f"| {'history the rewrite sees':34} | entity in view | mean tokens |")
    print(f"|{'-' * 36}|----------------|-------------|")
    results = {}
    for name, window in [
        ("main: whole turns within 1200", None),
        *[(f"recent {b} / clip {m}", (b, m)) for b, m in BUDGETS],
    ]:
        in_view, tokens = 0, []
        for row in rows:
            pairs = zip(row["history"], row["history_roles"], strict=True)
            history = trim_history([Message(role, text) for text, role in pairs], 1200)
            seen = history if window is None else recent_messages(history, *window)
            text = "\n".join(m.content for m in seen)
            tokens.append(sum(count_tokens(m.content) + 4 for m in seen))
            in_view += any(e and e in text for e in row.get("gold_entities", []))
        results[name] = {"entity_in_view": in_view / len(rows), "mean_tokens": statistics.mean(tokens)}
        print(f"| {name:34} | {in_view / len(rows):14.3f} | {statistics.mean(tokens):11.0f} |")
    out = REPO / "bench" / "out" / "rewrite_budget.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"turns": len(rows), "results": results}, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
