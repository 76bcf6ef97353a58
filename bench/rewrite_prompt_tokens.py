"""Prompt tokens of one rewrite call, CoT prompt vs a trained rewriter's short prompt: KdConv follow-ups.

For a seeded sample of the KdConv film turns whose entity is named only in the history, the
messages ``rewrite_question`` sends with ``prompt="rewrite"`` (instructions and examples) and with
``prompt="rewrite_trained"`` (history and question only), counted in the Qwen2.5 vocabulary with
its chat template: what a cold rewrite must evaluate before its first token. No model is run (the
GGUF is opened for its vocabulary only).

    python bench/rewrite_prompt_tokens.py [--sample 60] [--seed 7] [--history-tokens 600]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from _common import KDCONV_QUESTIONS, percentile, print_table, write_result

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ragbot.conversation.rewrite import rewrite_question  # noqa: E402
from ragbot.evaluation.question_sets import history_messages  # noqa: E402
from ragbot.models.chat import ChatModel, Delta, Message  # noqa: E402
from ragbot.models.local_files import resolve_model_path  # noqa: E402

PROMPTS = ("rewrite", "rewrite_trained")


class _Recorder(ChatModel):
    """Keeps the messages it is sent and answers nothing."""

    name = "recorder"

    def _stream(self, messages, generation):
        self.sent = list(messages)
        yield Delta(text="")


def chatml(messages: list[Message]) -> str:
    """Qwen2.5's chat template, up to the assistant's turn."""
    return "".join(f"<|im_start|>{m.role}\n{m.content}<|im_end|>\n" for m in messages) + "<|im_start|>assistant\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=60)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--history-tokens", type=int, default=600)
    parser.add_argument("--message-tokens", type=int, default=120)
    args = parser.parse_args()

    import llama_cpp

    vocab = llama_cpp.Llama(model_path=str(resolve_model_path("qwen2.5-0.5b")), vocab_only=True, verbose=False)
    rows = [json.loads(line) for line in KDCONV_QUESTIONS.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if not r["entity_in_question"] and r.get("history")]
    random.Random(args.seed).shuffle(rows)
    tokens: dict[str, list[int]] = {p: [] for p in PROMPTS}
    for row in rows[: args.sample]:
        history = history_messages(row["history"], row.get("history_roles"))
        for prompt in PROMPTS:
            model = _Recorder()
            rewrite_question(
                row["question"],
                history,
                model,
                force=True,
                history_tokens=args.history_tokens,
                message_tokens=args.message_tokens,
                prompt=prompt,
            )
            tokens[prompt].append(len(vocab.tokenize(chatml(model.sent).encode("utf-8"), special=True)))
    table = [[p, len(t), percentile(t, 50), percentile(t, 95), max(t)] for p, t in tokens.items()]
    print_table(["prompt", "rewrites", "p50 tokens", "p95", "max"], table, "prompt tokens per cold rewrite")
    ratio = percentile(tokens["rewrite_trained"], 50) / percentile(tokens["rewrite"], 50)
    print(f"short / CoT prompt tokens at the median: {ratio:.2f}")
    write_result("rewrite_prompt_tokens", {"args": vars(args), "tokens": tokens, "median_ratio": ratio})


if __name__ == "__main__":
    main()
