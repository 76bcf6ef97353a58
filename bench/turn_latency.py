"""Time to first token of a follow-up turn with the local model, split by stage, with and
without llama.cpp's prefix-state cache.

A three-turn Nile conversation (尼罗河是什么? -> 它流经哪些国家? -> 它有多长?) runs with the
default local model (Qwen2.5-1.5B, 2 threads). For each turn: rewrite (the whole rewrite
call), retrieval, prompt processing (retrieval end -> first answer token) and generation
(first -> last token). The prompts keep their static text first (system instructions and
examples, then the append-only history, then this turn's passages and question), so with
the RAM cache the rewrite prompt's static prefix and the answer prompt's system+history
are restored instead of recomputed. "no cache" runs the same turns with the RAM cache
disabled (llama.cpp then only reuses the prefix of the prompt it ran last, which
alternates between the rewrite and the answer prompt).

    python bench/turn_latency.py                 # ~6 minutes on 2 cores
    python bench/turn_latency.py --model qwen2.5-0.5b
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TURNS = ["尼罗河是什么？", "它流经哪些国家？", "它有多长？"]


def run(cache_bytes: int, model: str) -> list[dict]:
    from ragbot.config import load_settings
    from ragbot.conversation.bot import RagBot
    from ragbot.knowledge.knowledge_base import KnowledgeBase
    from ragbot.models.local import LlamaCppChatModel, unload_models

    unload_models()
    settings = load_settings(overrides={"temperature": 0.0, "max_tokens": 96})
    llm = LlamaCppChatModel(
        model, n_ctx=settings.n_ctx, cache_bytes=cache_bytes, seed=1, models_dir=settings.models_dir
    )
    _ = llm.llama  # load before timing
    bot = RagBot(KnowledgeBase.open(settings), llm, settings=settings)
    conv = bot.conversation()
    rows = []
    for question in TURNS:
        answer = conv.ask(question)
        t = answer.timings
        rows.append(
            {
                "question": question,
                "standalone": answer.standalone_question,
                "route": answer.route,
                "rewrite_s": t.get("rewrite", 0.0),
                "retrieval_s": t.get("retrieval", 0.0),
                "prompt_processing_s": t.get("first_token", 0.0),
                "generation_s": t.get("generation", 0.0) - t.get("first_token", 0.0),
                "time_to_first_token_s": t.get("rewrite", 0.0) + t.get("retrieval", 0.0) + t.get("first_token", 0.0),
                "rewrite_prompt_tokens": answer.usage["rewrite"].prompt_tokens,
                "answer_prompt_tokens": answer.usage["answer"].prompt_tokens,
                "answer_tokens": answer.usage["answer"].completion_tokens,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-1.5b")
    parser.add_argument("--out", default=str(REPO / "bench" / "out" / "turn_latency.json"))
    args = parser.parse_args()
    os.environ.setdefault("RAGBOT_HOME", tempfile.mkdtemp(prefix="ragbot-bench-"))
    results = {"cache": run(1 << 30, args.model), "no_cache": run(0, args.model)}
    print(
        f"{'mode':9} {'turn':18} {'rewrite':>8} {'retrieve':>8} {'prompt':>8} {'generate':>8} {'TTFT':>7}  standalone"
    )
    for mode, rows in results.items():
        for r in rows:
            print(
                f"{mode:9} {r['question']:18} {r['rewrite_s']:8.1f} {r['retrieval_s']:8.2f} "
                f"{r['prompt_processing_s']:8.1f} {r['generation_s']:8.1f} {r['time_to_first_token_s']:7.1f}  "
                f"{r['standalone']} ({r['route']})"
            )
    for i in (1, 2):
        c, n = results["cache"][i], results["no_cache"][i]
        print(
            f"turn {i + 1}: time to first token {c['time_to_first_token_s']:.1f}s with the cache vs "
            f"{n['time_to_first_token_s']:.1f}s without "
            f"({n['time_to_first_token_s'] / c['time_to_first_token_s']:.2f}x)"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, ensure_ascii=False, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
