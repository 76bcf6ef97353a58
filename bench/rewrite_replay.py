"""The rewrite's guards and comparison rule replayed on a finished `ragbot eval` run, no model.

Takes the ``results.jsonl`` of a rewrite-set run (e.g. main's) and post-processes each row's
standalone question with the code ``rewrite_question`` runs after the model answers
(``checked_candidate``: the referent substitution and the guards), then the English comparison
rule (a follow-up left as typed takes the previous question's predicate).
Prints exact match, corpus BLEU-4 and the share of already-standalone questions left unchanged.
Exact for these rules (greedy decoding gives the same model outputs); blind to prompt changes.

    python bench/rewrite_replay.py zh-model/results.jsonl
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ragbot.conversation.rewrite import checked_candidate, comparison_rewrite  # noqa: E402
from ragbot.evaluation.metrics import corpus_bleu, exact_match, normalise  # noqa: E402

DATA = REPO.parent / "shared" / "data"
SETS = ("rewrite_zh_su2019_dev.jsonl", "rewrite_en_trec_cast_2019_2020.jsonl")


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python bench/rewrite_replay.py RUN/results.jsonl")
    rows = [json.loads(line) for line in Path(sys.argv[1]).read_text(encoding="utf-8").splitlines() if line.strip()]
    cases = {}
    for name in SETS:
        for line in (DATA / name).read_text(encoding="utf-8").splitlines():
            case = json.loads(line)
            cases[case["id"]] = case
    hypotheses, references, exact, standalone, kept = [], [], 0, 0, 0
    for row in rows:
        question, rewrite = row["question"], row["rewrite"]["standalone"]
        case = cases[row["id"]]
        users = [t for t, role in zip(case["history"], case["history_roles"], strict=True) if role == "user"]
        if row["rewrite"]["called_model"]:
            reasoning = row["rewrite"].get("reasoning", "")
            rewrite, _ = checked_candidate(question, rewrite, reasoning, case["history"], users, "")
        if rewrite == question and (built := comparison_rewrite(question, users)):
            rewrite = built
        gold = row["rewrite"]["gold"]
        hypotheses.append(rewrite)
        references.append(gold)
        exact += exact_match(rewrite, gold)
        if row["rewrite"]["already_standalone"]:
            standalone += 1
            kept += normalise(rewrite) == normalise(question)
    print(
        f"rows {len(rows)}: EM {100 * exact / len(rows):.1f}%, BLEU-4 {corpus_bleu(hypotheses, references):.1f}, "
        f"standalone unchanged {100 * kept / max(standalone, 1):.1f}% of {standalone}"
    )


if __name__ == "__main__":
    main()
