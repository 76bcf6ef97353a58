"""Rewrite: the cheap anaphora check, and the model's rewrites, on the human-annotated dev sets.

Two parts, both on ../shared/data/rewrite_zh_su2019_dev.jsonl (1000 follow-ups + 500
already-standalone rows) and rewrite_en_trec_cast_2019_2020.jsonl (695 turns):

1. ``needs_rewrite`` over every row (no model): the share of rows whose model call is
   skipped, and the accuracy of that decision against the gold ``needs_rewrite`` label.
2. the full ``RagBot.rewrite`` with a model on a seeded sample of rows: exact match
   (punctuation/whitespace-normalised), corpus BLEU-4 (sacrebleu; character-level for
   Chinese), and the share of already-standalone rows left unchanged. With the default
   local model (Qwen2.5-1.5B on 2 cores) one rewrite call takes seconds, hence the sample.

    python bench/rewrite_quality.py --sample 100            # default local model
    python bench/rewrite_quality.py --sample 0              # part 1 only (seconds)
    python bench/rewrite_quality.py --model qwen2.5-0.5b --sample 100
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import unicodedata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"
SETS = {"zh": "rewrite_zh_su2019_dev.jsonl", "en": "rewrite_en_trec_cast_2019_2020.jsonl"}


def normalise(text: str) -> str:
    """Lower-case, drop punctuation and whitespace: what exact match compares."""
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(ch for ch in text if not (unicodedata.category(ch).startswith(("P", "Z", "S")) or ch.isspace()))


def history_messages(row):
    from ragbot.models.chat import Message

    roles = row.get("history_roles") or ["user", "assistant"] * len(row["history"])
    messages = [Message(r, t) for r, t in zip(roles, row["history"], strict=False)]
    # CAsT histories hold only the user's turns: give each an empty answer so roles alternate
    out = []
    for m in messages:
        if m.role == "user" and out and out[-1].role == "user":
            out.append(Message("assistant", "…"))
        out.append(m)
    if out and out[-1].role == "user":
        out.append(Message("assistant", "…"))
    return out


def decision_part(rows):
    from ragbot.conversation.rewrite import needs_rewrite

    tp = fp = tn = fn = 0
    for row in rows:
        pred = needs_rewrite(row["question"], row["history"]).needed
        gold = bool(row["needs_rewrite"])
        tp += pred and gold
        fp += pred and not gold
        tn += not pred and not gold
        fn += not pred and gold
    n = len(rows)
    return {
        "rows": n,
        "skipped_share": (tn + fn) / n,
        "decision_accuracy": (tp + tn) / n,
        "recall_of_needed": tp / max(tp + fn, 1),
        "precision_of_called": tp / max(tp + fp, 1),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def kdconv_follow_up_part(path: Path) -> dict:
    """KdConv turns with history whose film or person is named only in the history: every one
    needs a rewrite, so each skip of the cheap check is a missed one."""
    from ragbot.conversation.rewrite import needs_rewrite

    rows = [json.loads(line) for line in path.open(encoding="utf-8")]
    follow_ups = [r for r in rows if r["history"] and not r["entity_in_question"]]
    skipped = sum(not needs_rewrite(r["question"], r["history"]).needed for r in follow_ups)
    return {"follow_ups": len(follow_ups), "skipped": skipped, "skipped_share": skipped / len(follow_ups)}


def model_part(rows, lang, bot, sample, seed):
    import sacrebleu

    from ragbot.conversation.rewrite import needs_rewrite

    rng = random.Random(seed)
    picked = rng.sample(rows, min(sample, len(rows)))
    hyps, refs, exact, unchanged, standalone, calls, seconds = [], [], 0, 0, 0, 0, []
    examples = []
    for row in picked:
        history = history_messages(row)
        started = time.perf_counter()
        result = bot.rewrite_details(row["question"], history)
        seconds.append(time.perf_counter() - started)
        calls += result.called_model
        hyps.append(result.question)
        refs.append(row["rewrite"])
        exact += normalise(result.question) == normalise(row["rewrite"])
        if not row["needs_rewrite"]:
            standalone += 1
            unchanged += normalise(result.question) == normalise(row["question"])
        if len(examples) < 8 and row["needs_rewrite"] and needs_rewrite(row["question"], row["history"]).needed:
            examples.append(
                {"question": row["question"], "gold": row["rewrite"], "bot": result.question, "reason": result.reason}
            )
    tokenize = "zh" if lang == "zh" else "13a"
    bleu = sacrebleu.corpus_bleu(hyps, [refs], tokenize=tokenize).score
    seconds.sort()
    return {
        "sample": len(picked),
        "exact_match": exact / len(picked),
        "bleu4": bleu,
        "standalone_rows": standalone,
        "standalone_unchanged": unchanged / max(standalone, 1),
        "model_calls": calls,
        "p50_seconds": seconds[len(seconds) // 2],
        "examples": examples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=100, help="rows per set for the model part (0: skip it)")
    parser.add_argument("--model", default=None, help="local alias or .gguf (default: the bot's default)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--langs", default="zh,en", help="which sets: zh, en or both")
    parser.add_argument("--out", default=str(REPO / "bench" / "out" / "rewrite_quality.json"))
    args = parser.parse_args()
    results = {}
    bot = None
    if args.sample:
        from ragbot.conversation.bot import RagBot

        bot = RagBot.load(**({"model": args.model} if args.model else {}))
    for lang, name in SETS.items():
        if lang not in args.langs.split(","):
            continue
        path = DATA / name
        if not path.exists():
            sys.exit(f"missing {path}: the dev data lives in ../shared/data")
        rows = [json.loads(line) for line in path.open(encoding="utf-8")]
        results[lang] = {"decision": decision_part(rows)}
        d = results[lang]["decision"]
        print(
            f"[{lang}] cheap check on {d['rows']} rows: skipped {d['skipped_share']:.1%} of model calls, "
            f"decision accuracy {d['decision_accuracy']:.1%} (recall of needed {d['recall_of_needed']:.1%})"
        )
        if bot is not None:
            m = model_part(rows, lang, bot, args.sample, args.seed)
            results[lang]["model"] = m
            print(
                f"[{lang}] {bot.rewrite_model.name} on {m['sample']} sampled rows: EM {m['exact_match']:.1%}, "
                f"BLEU-4 {m['bleu4']:.1f}, standalone left unchanged {m['standalone_unchanged']:.1%} "
                f"of {m['standalone_rows']}, {m['model_calls']} model calls, p50 {m['p50_seconds']:.1f}s/row"
            )
            for ex in m["examples"]:
                print(f"      {ex['question']!r} -> {ex['bot']!r} (gold {ex['gold']!r})")
    kdconv = DATA / "convqa_zh_kdconv_film.jsonl"
    if "zh" in args.langs.split(",") and kdconv.exists():
        k = results["kdconv_follow_ups"] = kdconv_follow_up_part(kdconv)
        print(
            f"[kdconv] cheap check skips {k['skipped']} of {k['follow_ups']} follow-ups whose entity is only "
            f"in the history ({k['skipped_share']:.1%})"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, ensure_ascii=False, indent=2), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
