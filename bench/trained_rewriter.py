"""The rewrite step, CoT prompt vs a trained rewriter: seconds and prompt tokens per call on KdConv
follow-ups, cold and warm, beside the bare llama.cpp speeds of each model, in one run.

For a seeded sample of the KdConv film turns whose entity is named only in the history, the bot's
own rewrite step (``RagBot.rewrite_step``: the cheap check, the prompt, the guards) runs with

* ``cot``: the default rewrite role (``--cot-model``, the chain-of-thought prompt with examples);
* ``trained``: ``--trained-model`` with the LoRA ``--lora`` and the short prompt
  (``rewrite_trained``), its history budget ``--trained-history-tokens``.

Each turn is timed twice per configuration:

* cold: no saved prompt state at all (llama.cpp's context and RAM prompt cache emptied), as in a
  new process: every prompt token is evaluated;
* warm: the static prefixes saved (as after any earlier rewrite in the process) and the bot's own
  warm-up for that history finished (``warm_up_prompts``' rewrite prompt), as in a chat where the
  user reads the answer before asking.

Beside them, the bare library (``llama_cpp.Llama``, no ragbot code) with the same file, adapter
and threads: prompt tokens/s over a ``--bare-prompt-tokens`` prompt and generated tokens/s over
32 greedy tokens, the median of three, so that each time can be read as a multiple of what the
machine can do. Run it on an idle machine (the JSON records how busy it was)::

    python bench/trained_rewriter.py --lora rewriter.gguf [--sample 40] [--seed 7] [--threads 2]

Output: a table on stdout and ``bench/out/trained_rewriter.json`` (or ``--out``), with each turn's
standalone question under both configurations.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from _common import (
    KDCONV_QUESTIONS,
    bare_speeds,
    cpu_snapshot,
    log,
    machine_info,
    others_cpu_share,
    percentile,
    print_table,
    write_result,
)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ragbot.config import load_settings  # noqa: E402
from ragbot.conversation.bot import RagBot  # noqa: E402
from ragbot.conversation.warmup import warm_up_prompts  # noqa: E402
from ragbot.evaluation.question_sets import history_messages  # noqa: E402
from ragbot.models.local import LlamaCppChatModel, unload_models  # noqa: E402
from ragbot.models.local_files import DEFAULT_MODEL  # noqa: E402


def sample_turns(n: int, seed: int) -> list[dict]:
    rows = [json.loads(line) for line in KDCONV_QUESTIONS.read_text(encoding="utf-8").splitlines() if line.strip()]
    follow_ups = [r for r in rows if r["turn"] > 0 and not r["entity_in_question"]]
    return random.Random(seed).sample(follow_ups, n)


def keep_only(llm: LlamaCppChatModel, keys: set) -> None:
    """The live context reset and every saved prompt state dropped but ``keys``."""
    llama = llm.llama
    for key in [k for k in llama.cache.cache_state if k not in keys]:
        del llama.cache.cache_state[key]
    llama.reset()


def run_config(name: str, settings, turns: list[dict], threads: int) -> dict:
    unload_models()
    llm = LlamaCppChatModel(
        settings.rewrite_model,
        n_ctx=settings.n_ctx,
        n_threads=threads,
        lora_path=settings.rewrite_lora_path,
        seed=1,
        models_dir=settings.models_dir,
    )
    _ = llm.llama  # loaded before timing
    bot = RagBot(None, llm, settings=settings)  # type: ignore[arg-type]  # the rewrite step alone: nothing is searched
    # the static prefixes a chat that has made a rewrite before keeps in its cache
    for prompt in warm_up_prompts(bot, []):
        if prompt.name.startswith("rewrite"):
            prompt.model.warm(prompt.variants)
    static = set(llm.llama.cache.cache_state)
    rows = []
    for i, row in enumerate(turns, 1):
        history = history_messages(row["history"], row.get("history_roles", ()))
        entry = {"id": row["id"], "question": row["question"]}
        for mode in ("cold", "warm"):
            keep_only(llm, set() if mode == "cold" else static)
            if mode == "warm":
                for prompt in warm_up_prompts(bot, history):
                    if prompt.name.startswith("rewrite"):
                        prompt.model.warm(prompt.variants)
                        break
            result = bot.rewrite_step(row["question"], history)
            entry[mode] = {
                "called_model": result.called_model,
                "seconds": round(result.seconds, 3),
                "prompt_tokens": result.usage.prompt_tokens,
                "evaluated_tokens": result.usage.prompt_tokens - result.usage.cached_tokens,
                "completion_tokens": result.usage.completion_tokens,
                "standalone": result.question,
            }
        rows.append(entry)
        log(f"{name} {i}/{len(turns)} {row['question']} -> {entry['cold']['standalone']} ({entry['cold']['seconds']}s)")
    unload_models()
    return {"model": llm.name, "rows": rows}


def summary(rows: list[dict], mode: str) -> dict:
    called = [r[mode] for r in rows if r[mode]["called_model"]]
    return {
        "calls": len(called),
        "p50_s": round(percentile([c["seconds"] for c in called], 50), 3),
        "p95_s": round(percentile([c["seconds"] for c in called], 95), 3),
        "p50_prompt_tokens": percentile([c["prompt_tokens"] for c in called], 50),
        "p50_evaluated_tokens": percentile([c["evaluated_tokens"] for c in called], 50),
        "p50_completion_tokens": percentile([c["completion_tokens"] for c in called], 50),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lora", required=True, help="the trained rewriter's GGUF LoRA adapter")
    parser.add_argument("--trained-model", default="qwen2.5-0.5b")
    parser.add_argument("--cot-model", default=None, help="default: the rewrite role's model of the settings")
    parser.add_argument("--trained-history-tokens", type=int, default=300)
    parser.add_argument("--sample", type=int, default=40)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bare-prompt-tokens", type=int, default=256)
    parser.add_argument("--out", default=None)
    parser.add_argument("--bare-only", action="store_true", help="only the bare library's speeds")
    args = parser.parse_args()

    base = load_settings().replace(temperature=0.0)
    cot = base.replace(rewrite_prompt="rewrite", rewrite_lora_path=None)
    if args.cot_model:
        cot = cot.replace(rewrite_model=args.cot_model)
    cot = cot.replace(rewrite_model=cot.rewrite_model or cot.model or DEFAULT_MODEL)
    trained = base.replace(
        rewrite_model=args.trained_model,
        rewrite_lora_path=str(Path(args.lora).resolve()),
        rewrite_prompt="rewrite_trained",
        rewrite_history_tokens=args.trained_history_tokens,
    )
    turns = sample_turns(args.sample, args.seed)
    since = cpu_snapshot()
    configs = {"cot": cot, "trained": trained}
    result = {"machine": machine_info(), "args": vars(args), "bare": {}, "configs": {}}
    for name, settings in configs.items():
        log(f"bare llama.cpp speeds: {name}")
        result["bare"][name] = bare_speeds(
            settings.rewrite_model,
            settings.rewrite_lora_path,
            args.threads,
            args.bare_prompt_tokens,
            settings.models_dir,
        )
    if args.bare_only:
        print(json.dumps(result["bare"], indent=2))
        return
    for name, settings in configs.items():
        result["configs"][name] = run_config(name, settings, turns, args.threads)
    for run in result["configs"].values():
        run["summary"] = {mode: summary(run["rows"], mode) for mode in ("cold", "warm")}
    result["ratios"] = {
        mode: round(
            result["configs"]["trained"]["summary"][mode]["p50_s"] / result["configs"]["cot"]["summary"][mode]["p50_s"],
            3,
        )
        for mode in ("cold", "warm")
    }
    result["others_cpu_share"] = round(others_cpu_share(since), 3)
    table = []
    for name, run in result["configs"].items():
        bare = result["bare"][name]
        for mode in ("cold", "warm"):
            s = run["summary"][mode]
            table.append(
                [
                    f"{name} ({run['model']})",
                    mode,
                    s["calls"],
                    s["p50_s"],
                    s["p95_s"],
                    s["p50_prompt_tokens"],
                    s["p50_evaluated_tokens"],
                    s["p50_completion_tokens"],
                    f"{bare['prompt_tokens_per_s']} / {bare['generated_tokens_per_s']}",
                ]
            )
    print_table(
        [
            "rewrite",
            "state",
            "calls",
            "p50 s",
            "p95 s",
            "p50 prompt tok",
            "p50 evaluated",
            "p50 generated",
            "bare prompt / gen tok/s",
        ],
        table,
        title=f"rewrite step on {args.sample} KdConv follow-ups (seed {args.seed}), {args.threads} threads",
    )
    print(f"trained / cot p50: cold {result['ratios']['cold']}x, warm {result['ratios']['warm']}x")
    write_result("trained_rewriter", result, args.out)


if __name__ == "__main__":
    main()
