"""llama.cpp thread counts under load: prompt and generation tokens/s of the local model with 1..N
threads, on an idle machine and while other processes keep cores busy, as ratios.

llama.cpp's threads wait for each other at every layer by spinning: when another process takes one
of the cores, the thread that lost its core holds all the others up, and a model run with all
threads slowed down about 8x here (docs/OFFLINE.md). This measures it on one loaded model (the
thread counts are switched with ``llama_set_n_threads``, so every count sees the same weights and
the same prompts):

    prompt: the Chinese rewrite prompt (~650 tokens) evaluated from scratch (prompt tokens/s);
    generation: ``--max-tokens`` greedy tokens after it (tokens/s after the first token).

"auto" is ragbot's default (``n_threads=None``): the cores other processes leave free, checked
before each call (``ragbot.models.local.free_cores``). Each cell is the median of ``--repeats``
runs. "N busy" starts N busy-looping processes (like another helper's benchmark or an ingest)
for its cells. Run it under the shared CPU lock so "idle" means idle::

    flock /tmp/ragbot-cpu.lock python bench/threads_under_load.py               # ~4 min, 1.5B
    python bench/threads_under_load.py --model qwen2.5-0.5b --competitors 1 2
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
import time

from _common import log, print_table, write_result

from ragbot.conversation.prompts import load_prompt
from ragbot.conversation.rewrite import format_history
from ragbot.models.chat import GenerationSettings, Message
from ragbot.models.local import LlamaCppChatModel
from ragbot.models.local_files import DEFAULT_MODEL

HISTORY = [
    Message("user", "尼罗河是什么？"),
    Message("assistant", "尼罗河是非洲东北部的一条大河，全长约6650公里，流经十一个国家，最后注入地中海。"),
]


def _busy() -> None:
    while True:
        pass


def measure(model: LlamaCppChatModel, threads: int | None, repeats: int, max_tokens: int) -> dict[str, float]:
    model.n_threads = threads  # None: ragbot's default, the cores free at each call
    prompt = load_prompt("rewrite.zh").render(history=format_history(HISTORY, True), question="它流经哪些国家？")
    greedy = GenerationSettings(temperature=0.0, max_tokens=max_tokens)
    prompt_rates, gen_rates = [], []
    for _ in range(repeats):
        model.reset_cache()
        started = time.perf_counter()
        first = last = None
        tokens = 0
        for delta in model.stream(prompt, greedy):
            now = time.perf_counter()
            if delta.text:
                first = first or now
                last = now
            if delta.usage is not None:
                tokens = delta.usage.completion_tokens
                prompt_tokens = delta.usage.prompt_tokens
        prompt_rates.append(prompt_tokens / ((first or last or started) - started))
        if first and last and last > first and tokens > 1:
            gen_rates.append((tokens - 1) / (last - first))
    return {
        "threads_used": model.llama.ragbot_threads,
        "prompt_tok_s": statistics.median(prompt_rates),
        "generation_tok_s": statistics.median(gen_rates) if gen_rates else float("nan"),
        "prompt_tokens": prompt_tokens,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--competitors", type=int, nargs="+", default=[1], help="busy processes per loaded run")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    os.environ.setdefault("RAGBOT_HOME", tempfile.mkdtemp(prefix="ragbot-bench-"))

    model = LlamaCppChatModel(args.model, n_threads=max(args.threads), n_ctx=2048, cache_bytes=1 << 28)
    _ = model.llama
    results: dict[str, dict[str, dict[str, float]]] = {}
    for competitors in [0, *args.competitors]:
        label = "idle" if competitors == 0 else f"{competitors} busy"
        procs = [multiprocessing.Process(target=_busy, daemon=True) for _ in range(competitors)]
        for p in procs:
            p.start()
        time.sleep(0.5 if procs else 0)
        try:
            for threads in [*args.threads, None]:
                log(f"{label}, {threads or 'auto'} thread(s)")
                results.setdefault(label, {})[str(threads or "auto")] = measure(
                    model, threads, args.repeats, args.max_tokens
                )
        finally:
            for p in procs:
                p.terminate()
                p.join()

    rows = []
    base = results["idle"][str(min(args.threads))]
    for label, by_threads in results.items():
        for threads, r in by_threads.items():
            rows.append(
                [
                    label,
                    threads if threads != "auto" else f"auto ({r['threads_used']})",
                    r["prompt_tok_s"],
                    r["generation_tok_s"],
                    r["prompt_tok_s"] / base["prompt_tok_s"],
                    r["generation_tok_s"] / base["generation_tok_s"],
                ]
            )
    print_table(
        ["machine", "threads", "prompt tok/s", "gen tok/s", "prompt vs idle 1", "gen vs idle 1"],
        rows,
        title=f"{args.model}: tokens/s by llama.cpp threads ({os.cpu_count()} cores; ratios to 1 thread, idle)",
    )
    write_result("threads_under_load", {"model": args.model, "results": results}, args.out)


if __name__ == "__main__":
    main()
