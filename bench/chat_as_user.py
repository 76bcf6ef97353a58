"""The local chat as a user meets it: each turn's time to the first answer text against its floor, the
time the machine needs for the tokens the turn must evaluate and generate (issue 21).

Each think time runs in its own fresh process (this script with ``--chat``), one process per chat,
which does what ``ragbot chat`` does: the settings (``load_settings``, ``./ragbot.toml`` and
``RAGBOT_*`` as the CLI reads them), ``RagBot.load``, an unnamed conversation and the REPL's start-up
warm-up (``Conversation.warm_up``); then for each question it waits the think time (after the
start-up, then after the previous answer ended: the user reads and types) and reads
``Conversation.stream`` as the REPL does. Per turn:

* ``first_text_s``: question in -> the first text of the answer model (a fallback's label, printed
  before the model is called, is recorded apart as ``label_s``; a reply made without the answer
  model, e.g. from the history, counts itself);
* per model call before it (rewrite, translation, answer): the model, prompt tokens, tokens restored
  from a saved state, tokens evaluated, tokens generated (``Answer.usage``), and ``static_evaluated``:
  the evaluated tokens that lie in the prompt's static prefix (the part a start-up warm-up or a saved
  state covers: the prompt's tokens shared with the warm-up's renderings, ``warm_up_prompts``; for the
  translation prompt, with two renderings of its own);
* ``floor_s``: the sum over those calls of evaluated tokens / the bare prompt speed of the call's model
  + generated tokens / its bare generation speed (rewrite and translation; the answer's first token
  comes from the prompt's own logits). Retrieval is not in it (``timings.retrieval`` has its time).
  ``ratio`` = first text / floor.

The bare speeds are those of the library alone (``llama_cpp.Llama``, same file, adapter and threads;
``_common.bare_speeds``), measured in this parent process before the chats, once per model the chat
uses (the 1.5B answer model; the 0.5B rewriter with its LoRA). Every process shares one
``RAGBOT_HOME`` (a temp dir removed at the end, unless set; the parent builds the index there
first), so a prompt state saved under it by one process is there for the next; ``--prime`` starts
one chat process first that only finishes its start-up warm-up, so even the first measured process
starts after one.

The chats: Chinese (尼罗河 -> its countries -> its length, English follow-ups "How long is the
Nile?" and "And the Yangtze?" (only a Chinese document: the translation step), a topic switch to
LoRA) and English (LoRA -> how -> QLoRA, a topic switch to the Mississippi, a Chinese follow-up about
it: the translation step). Answers are as long as ``ragbot chat`` makes them (``max_tokens``) unless
``--max-tokens``. The defaults make 8 processes and 44 turns: 14 min of think time plus the 44
answers (a whole default run has not been timed yet). Run it alone on an idle machine::

    RAGBOT_MODELS_DIR=~/.local/share/ragbot/models python bench/chat_as_user.py
    python bench/chat_as_user.py --think 5,12 --lang zh --threads 2
    python bench/chat_as_user.py --quick                   # think 0, 2 turns of the zh chat, 48-token answers

Output: a table per think time, the p50s, the targets of issue 21 as measured, and
``bench/out/chat_as_user.json`` (or ``--out``): machine, args, bare speeds, every turn.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OWN_HOME = "RAGBOT_HOME" not in os.environ  # made here, removed at the end; the children inherit it
if OWN_HOME:
    os.environ["RAGBOT_HOME"] = tempfile.mkdtemp(prefix="ragbot-bench-home-")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's ragbot, in the parent and in every child

from _common import bare_speeds, log, percentile, print_table, write_result  # noqa: E402

CHATS = {
    "zh": [
        "尼罗河是什么？",
        "它流经哪些国家？",
        "它有多长？",
        "How long is the Nile?",
        "And the Yangtze?",
        "LoRA 是什么？",
    ],
    "en": [
        "What is LoRA?",
        "How does it reduce the number of trainable parameters?",
        "And QLoRA?",
        "How long is the Mississippi?",
        "它流经哪些州？",
    ],
}
# two questions for each translation prompt (zh -> en, en -> zh): their renderings share its static prefix
_TRANSLATE_SENTINELS = (("甲是什么？", "乙在哪里？"), ("What is Alpha?", "Where is Beta?"))


def overrides(args) -> dict:
    """The settings this run changes (as ``ragbot.toml`` or ``RAGBOT_*`` would); None leaves them as
    ``ragbot chat`` has them."""
    return {"llm_threads": args.threads, "max_tokens": args.max_tokens}


# ---------------------------------------------------------------------------------------- the child
def run_chat(args) -> None:
    """One ``ragbot chat`` process: start-up, then each question after the think time; JSON lines out."""
    from ragbot.config import load_settings
    from ragbot.conversation.bot import RagBot
    from ragbot.conversation.turn import Answer

    started = time.perf_counter()
    bot = RagBot.load(load_settings(overrides=overrides(args)))  # ragbot chat: _settings, then _load_bot
    conv = bot.conversation()  # no --session: unnamed
    loaded = time.perf_counter() - started
    conv.warm_up()  # run_chat: the prompts' static parts while the user types
    questions = CHATS[args.lang][: args.turns]
    turns: list[tuple[Answer, dict]] = []
    for n, question in enumerate(questions):
        time.sleep(args.think)
        warming = conv.warming
        row = {
            "turn": n,
            "question": question,
            "warm_up_done": warming.done if warming else None,
            "warmed": [list(c) for c in warming.computed] if warming else [],  # (prompt, tokens) finished
        }
        pieces: list[tuple[float, str]] = []
        asked = time.perf_counter()
        for item in conv.stream(question):
            if isinstance(item, Answer):
                answer = item
            else:
                pieces.append((time.perf_counter() - asked, item))
        row["answered_s"] = time.perf_counter() - asked
        turns.append((answer, {**row, **first_text(answer, pieces)}))
        log(f"think {args.think:g}s {args.lang} {question}: first text {turns[-1][1]['first_text_s']:.1f}s")
    if conv.warming is not None:  # the warm-up after the last answer: done with, the models are free
        conv.warming.cancel()
        conv.warming.wait()
    statics = static_prefixes(bot)
    for answer, row in turns:
        row.update(answer_record(bot, answer, statics))
        print(json.dumps({"kind": "turn", **row}, ensure_ascii=False), flush=True)
    print(json.dumps({"kind": "process", "load_s": loaded, "models": answer.models}), flush=True)


def prime(args) -> None:
    """A ``ragbot chat`` process that only finishes its start-up warm-up, then leaves."""
    from ragbot.config import load_settings
    from ragbot.conversation.bot import RagBot

    started = time.perf_counter()
    warming = RagBot.load(load_settings(overrides=overrides(args))).conversation().warm_up()
    warming.wait()
    print(json.dumps({"kind": "prime", "seconds": time.perf_counter() - started, "warmed": warming.computed}))


def first_text(answer, pieces: list[tuple[float, str]]) -> dict:
    """When the first text of the answer came (after a fallback's label, which comes before the model)."""
    turn = answer.turn
    label = pieces[0][0] if turn.prefix and pieces and pieces[0][1] == turn.prefix else None
    rest = pieces[1:] if label is not None else pieces
    return {
        "first_text_s": rest[0][0] if rest else float("nan"),
        "label_s": label,
        "model_answered": turn.reply is None,
    }


def answer_record(bot, answer, statics: dict[str, list[list[int]]]) -> dict:
    """The turn's route, questions, timings and, per model call, its tokens (``Answer.usage``)."""
    from ragbot.conversation.translation import translation_messages
    from ragbot.conversation.warmup import rewrite_messages

    turn = answer.turn
    prompts = {  # what each step sent, rendered again the way the step renders it
        "rewrite": lambda: rewrite_messages(bot, turn.question, turn.history),
        "translation": lambda: translation_messages(turn.standalone_question, bot.settings.prompt_dir),
        "answer": lambda: bot.answer_prompt(turn),
    }
    models = {"rewrite": bot.rewrite_model, "translation": bot.translation_model, "answer": bot.answer_model}
    calls = {}
    for stage, usage in answer.usage.items():
        if not usage.calls:
            continue
        evaluated = usage.prompt_tokens - usage.cached_tokens
        call = {
            "model": answer.models[stage],
            "prompt_tokens": usage.prompt_tokens,
            "cached_tokens": usage.cached_tokens,
            "evaluated_tokens": evaluated,
            "generated_tokens": usage.completion_tokens,
        }
        messages = prompts[stage]()
        if messages is not None:
            tokens = models[stage].llama.prompt_tokens([m.to_dict() for m in messages])
            static = max((shared_prefix(tokens, s) for s in statics.get(answer.models[stage], [])), default=0)
            call["static_tokens"] = static
            # evaluation restores a prefix and evaluates the rest: what it evaluated of the static part
            call["static_evaluated"] = max(0, evaluated - (len(tokens) - static))
            call["rendered_tokens_match"] = len(tokens) == usage.prompt_tokens  # else static_* is approximate
        calls[stage] = call
    return {
        "route": str(answer.route),
        "standalone": answer.standalone_question,
        "translated": answer.translation.text if answer.translation else "",
        "timings": {k: round(v, 3) for k, v in answer.timings.items()},
        "calls": calls,
    }


def shared_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def static_prefixes(bot) -> dict[str, list[list[int]]]:
    """Per model name, the static prefixes of its prompts: what the start-up warm-up computes
    (``warm_up_prompts`` without a history) and the translation prompts' shared tokens."""
    from ragbot.conversation.translation import translation_messages
    from ragbot.conversation.warmup import warm_up_prompts

    found: dict[str, list[list[int]]] = {}

    def add(model, variants) -> None:
        rendered = [model.llama.prompt_tokens([m.to_dict() for m in v]) for v in variants]
        shared = rendered[0][: min(shared_prefix(rendered[0], r) for r in rendered[1:])]
        found.setdefault(model.name, []).append(shared)

    for _name, model, variants in warm_up_prompts(bot, []):
        add(model, variants)
    for questions in _TRANSLATE_SENTINELS:
        add(bot.translation_model, [translation_messages(q, bot.settings.prompt_dir) for q in questions])
    return found


# --------------------------------------------------------------------------------------- the parent
def child(args, mode: str, think: float = 0.0, lang: str = "zh") -> list[dict]:
    """Run this script as a fresh process (``mode``: chat or prime); its JSON lines."""
    cmd = [sys.executable, str(Path(__file__).resolve()), f"--{mode}", "--think", str(think), "--lang", lang]
    for flag, value in (("--turns", args.turns), ("--threads", args.threads), ("--max-tokens", args.max_tokens)):
        if value is not None:
            cmd += [flag, str(value)]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, encoding="utf-8")
    if done.returncode:
        raise SystemExit(f"the chat process failed (exit {done.returncode}): {' '.join(cmd)}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def floor(calls: dict, bare: dict) -> dict:
    """The turn's floor: its model calls' evaluated and generated tokens at the bare speeds."""
    seconds = 0.0
    for stage, call in calls.items():
        speed = bare[call["model"]]
        seconds += call["evaluated_tokens"] / speed["prompt_tokens_per_s"]
        if stage != "answer":  # the answer's first token needs no generation step of its own
            seconds += call["generated_tokens"] / speed["generated_tokens_per_s"]
    return {
        "floor_s": seconds,
        "evaluated_tokens": sum(c["evaluated_tokens"] for c in calls.values()),
        "generated_before_first_text": sum(c["generated_tokens"] for s, c in calls.items() if s != "answer"),
        "static_evaluated": sum(c.get("static_evaluated", 0) for c in calls.values()),
    }


def summary(turns: list[dict]) -> dict:
    follow = [t for t in turns if t["turn"] > 0]
    first = [t for t in turns if t["turn"] == 0]

    def p50(rows: list[dict], key: str) -> float:
        return percentile([r[key] for r in rows if r[key] == r[key]], 50)

    return {
        "follow_ups": len(follow),
        "follow_up_p50_first_text_s": p50(follow, "first_text_s"),
        "follow_up_p50_floor_s": p50(follow, "floor_s"),
        "follow_up_p50_ratio": p50(follow, "ratio"),
        "follow_up_max_ratio": max((t["ratio"] for t in follow), default=float("nan")),
        "follow_up_p50_evaluated_tokens": p50(follow, "evaluated_tokens"),
        "first_turn_p50_first_text_s": p50(first, "first_text_s"),
        "first_turn_static_evaluated": [t["static_evaluated"] for t in first],
    }


def report(result: dict) -> None:
    for name, b in result["bare"].items():
        print(
            f"bare llama.cpp, {name}: {b['prompt_tokens_per_s']} prompt tok/s, "
            f"{b['generated_tokens_per_s']} generated tok/s ({b['threads']} threads)"
        )
    headers = [
        "chat",
        "#",
        "question",
        "first text s",
        "floor s",
        "ratio",
        "evaluated",
        "generated",
        "static evaluated",
        "route",
    ]
    for think, turns in result["turns"].items():
        rows = [
            [t["lang"], t["turn"], t["question"], t["first_text_s"], t["floor_s"], t["ratio"]]
            + [t["evaluated_tokens"], t["generated_before_first_text"], t["static_evaluated"], t["route"]]
            for t in turns
        ]
        print_table(headers, rows, title=f"think {think} s: question in -> first answer text, and its floor")
    s = result["summary"]
    print_table(
        ["think s", "follow-ups", "p50 first text s", "p50 floor s", "p50 ratio", "max ratio", "p50 evaluated"]
        + ["first turn p50 s", "first turn static evaluated"],
        [
            [think, v["follow_ups"], v["follow_up_p50_first_text_s"], v["follow_up_p50_floor_s"]]
            + [v["follow_up_p50_ratio"], v["follow_up_max_ratio"], v["follow_up_p50_evaluated_tokens"]]
            + [v["first_turn_p50_first_text_s"], ",".join(map(str, v["first_turn_static_evaluated"]))]
            for think, v in s.items()
        ],
        title="per think time (follow-ups: every turn but the first of each process)",
    )
    t = result["targets"]
    print("\nissue 21's targets as measured here:")
    for name, value in t.items():
        print(f"  {name}: {value}")


def targets(result: dict) -> dict:
    """The issue's targets, read off this run (None where the run lacks the think times)."""
    turns = {float(k): v for k, v in result["turns"].items()}
    follow = {k: [t for t in v if t["turn"] > 0] for k, v in turns.items()}
    late = [t["ratio"] for k, v in follow.items() if k >= 5 for t in v]
    p50 = {
        k: percentile([t["first_text_s"] for t in v if t["first_text_s"] == t["first_text_s"]], 50)
        for k, v in follow.items()
    }
    every = [t for v in follow.values() for t in v]
    # first turns of processes that started after another one in this RAGBOT_HOME
    after = [t for v in turns.values() for t in v if t["turn"] == 0 and (t["process"] > 1 or result["args"]["prime"])]
    restarted = [t["static_evaluated"] for t in after]
    measured = {
        "max ratio of follow-ups at think >= 5 s (<= 1.5)": max(late) if late else None,
        "p50 at think 12 s / p50 at 60 s (<= 1.3)": p50[12.0] / p50[60.0] if 12.0 in p50 and 60.0 in p50 else None,
        "max ratio at think 0 (<= 2.5)": max((t["ratio"] for t in follow.get(0.0, [])), default=None),
        "static tokens evaluated by first turns of later processes (0)": restarted,
        "p50 prompt tokens evaluated per follow-up (<= 250)": percentile([t["evaluated_tokens"] for t in every], 50)
        if every
        else None,
    }
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in measured.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--think", default="0,5,12,60", help="seconds before each question, comma list")
    parser.add_argument("--lang", default="zh,en", help="chats: zh, en")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: free cores)")
    parser.add_argument("--max-tokens", type=int, default=None, help="answer length (default: the setting's)")
    parser.add_argument("--turns", type=int, default=None, help="questions per chat (default: all)")
    parser.add_argument("--bare-prompt-tokens", type=int, default=256)
    parser.add_argument("--prime", action="store_true", help="a start-up-only process before the measured ones")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 think time, 2 turns, 48-token answers")
    parser.add_argument("--out", default=None)
    parser.add_argument("--chat", action="store_true", help=argparse.SUPPRESS)  # a child: one chat
    parser.add_argument("--prime-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    thinks = [float(t) for t in args.think.split(",")]
    langs = args.lang.split(",")
    if unknown := [lang for lang in langs if lang not in CHATS]:
        parser.error(f"--lang {','.join(unknown)}: the chats are {', '.join(CHATS)}")
    if args.chat:
        args.think = thinks[0]
        args.lang = langs[0]
        return run_chat(args)
    if args.prime_child:
        return prime(args)
    if args.quick:
        thinks, langs = thinks[:1], langs[:1]
        args.turns = args.turns or 2
        args.max_tokens = args.max_tokens or 48

    from ragbot.config import load_settings
    from ragbot.knowledge.knowledge_base import KnowledgeBase
    from ragbot.models.chat import chat_backend, make_chat_model
    from ragbot.models.rewriter import with_local_rewriter

    settings = with_local_rewriter(load_settings(overrides=overrides(args)))
    if any(chat_backend(settings, role) != "local" for role in ("answer", "rewrite")):
        raise SystemExit("this benchmark measures the local models: unset base_url / OPENAI_API_KEY and llm")
    result: dict = {"args": vars(args), "ragbot_home": os.environ["RAGBOT_HOME"], "bare": {}}
    started = time.perf_counter()
    KnowledgeBase.open(settings)  # the default index, built once into RAGBOT_HOME before any chat
    result["index_open_s"] = time.perf_counter() - started
    threads = args.threads or os.cpu_count() or 1
    for role in ("answer", "rewrite"):
        model = make_chat_model(settings, role)  # nothing loaded: its name and files
        if model.name not in result["bare"]:
            log(f"bare llama.cpp speeds: {model.name}")
            result["bare"][model.name] = bare_speeds(
                model.model,
                model.lora_path,
                threads,
                args.bare_prompt_tokens,
                settings.models_dir,
                repeats=1 if args.quick else 3,
            )
    if args.prime:
        result["prime"] = child(args, "prime-child")
    result["turns"], result["processes"] = {}, []
    for think in thinks:
        for lang in langs:
            lines = child(args, "chat", think, lang)
            process = len(result["processes"]) + 1
            result["processes"].append({"think_s": think, "lang": lang, **lines[-1]})
            for t in (line for line in lines if line["kind"] == "turn"):
                t.update(floor(t["calls"], result["bare"]), think_s=think, lang=lang, process=process)
                t["ratio"] = t["first_text_s"] / t["floor_s"] if t["floor_s"] > 0 else float("nan")
                result["turns"].setdefault(f"{think:g}", []).append(t)
    result["summary"] = {k: summary(v) for k, v in result["turns"].items()}
    result["targets"] = targets(result)
    report(result)
    write_result("chat_as_user", result, args.out)
    if OWN_HOME:
        shutil.rmtree(os.environ["RAGBOT_HOME"], ignore_errors=True)


if __name__ == "__main__":
    main()
