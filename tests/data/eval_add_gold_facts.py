"""Add ``gold_facts`` to a conversational QA set, for fact recall in ``ragbot eval``.

    python tests/data/eval_add_gold_facts.py ../shared/data/convqa_zh_kdconv_film.jsonl kdconv_facts.jsonl \\
        [--passages ../shared/data/passages_zh_kdconv_film.jsonl]

A row's gold facts are the values of knowledge triples that its good ``answer`` states (dates,
names, numbers; the items of a list value; the year of a date the answer gives only in part):
the row's own ``gold_triples`` (KdConv annotates the triples each answer was built from), else,
with ``--passages``, the ``triples`` of its ``gold_passage_ids`` documents. The same rule as
``ragbot eval`` applies to rows with ``gold_triples`` and no ``gold_facts``
(``ragbot.evaluation.facts.facts_in_answer``); the written file shows each row's facts, so they
can be read and corrected by hand. Rows whose answer states no triple value get ``gold_facts: []``
and are left out of fact recall.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ragbot.evaluation.facts import facts_in_answer


def passage_triples(path: Path) -> dict[str, list[list[str]]]:
    """The ``triples`` of each document of a passages file, by id."""
    out = {}
    for line in path.open(encoding="utf-8"):
        if line.strip():
            doc = json.loads(line)
            out[doc["id"]] = doc.get("triples") or []
    return out


def add_gold_facts(rows: list[dict], triples_by_doc: dict[str, list] | None = None) -> list[dict]:
    out = []
    for row in rows:
        triples = row.get("gold_triples")
        if not triples and triples_by_doc:
            triples = [t for doc in row.get("gold_passage_ids") or [] for t in triples_by_doc.get(doc, [])]
        facts = facts_in_answer(triples or [], row["answer"]) if row.get("answer") else []
        out.append({**row, "gold_facts": facts})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("questions", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--passages", type=Path, help="documents with `triples`, for rows without gold_triples")
    args = parser.parse_args(argv)
    rows = [json.loads(line) for line in args.questions.open(encoding="utf-8") if line.strip()]
    rows = add_gold_facts(rows, passage_triples(args.passages) if args.passages else None)
    args.out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    with_facts = [r for r in rows if r["gold_facts"]]
    n_facts = sum(len(r["gold_facts"]) for r in with_facts)
    print(f"{args.out}: {len(rows)} rows, {len(with_facts)} with gold facts ({n_facts} facts)")


if __name__ == "__main__":
    main()
