"""The rewrite's guards and comparison rule replayed on a finished `ragbot eval` run, no model.

Takes the ``results.jsonl`` of a rewrite-set run (e.g. main's) and post-processes each row's
standalone question as ``rewrite_question`` now does after the model answers: a pronoun the
model's reasoning resolved is replaced by its referent in the question; a rewrite that
names something found neither in the question nor the history, pastes one of its sentences,
leaves out the question's words,
repeats an earlier question or adds nothing becomes the question
as typed; an English comparison follow-up left as typed takes the previous question's predicate.
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

from ragbot.conversation.rewrite import (  # noqa: E402
    _content,
    comparison_rewrite,
    drops_question,
    introduced_name,
    pasted_sentence,
    repeated_question,
    substitute_referent,
)
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
        if row["rewrite"]["called_model"] and (
            substituted := substitute_referent(question, row["rewrite"].get("reasoning", ""), case["history"])
        ):
            rewrite = substituted[0]
        rejected = (
            introduced_name(rewrite, question, case["history"])
            or drops_question(rewrite, question)
            or pasted_sentence(rewrite, question, case["history"])
            or repeated_question(rewrite, question, users)
        )
        if rewrite != question and (rejected or _content(rewrite) <= _content(question)):
            rewrite = question
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
