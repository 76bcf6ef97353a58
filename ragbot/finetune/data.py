"""Training files from what a ragbot deployment accumulates: question sets with good answers,
saved conversations with their feedback, and plain prompt/answer files.

Every example shows the model what the bot itself would show it (``ragbot.conversation.answer_prompt``):
the bot's system prompt in the question's language, the earlier turns as history, and, with
passages, the numbered passages inside the grounded prompt's delimiters. One example per
answered turn; earlier assistant turns are context only (``"weight": 0``), so a conversation
is learnt turn by turn, each with the history the bot had. Train and validation are split by
conversation with a fixed seed, so no conversation is on both sides.
"""

from __future__ import annotations

import contextlib
import csv
import json
import random
import re
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ragbot.config import Settings, load_settings
from ragbot.conversation.answer_prompt import LABELS, answer_messages
from ragbot.conversation.history import trim_history
from ragbot.conversation.retrieval import Retriever
from ragbot.conversation.topic import topic_from_history
from ragbot.conversation.turn import passages_from_meta
from ragbot.errors import FinetuneError, TrainingFileError
from ragbot.evaluation.question_sets import QuestionFileError, jsonl_objects, read_questions
from ragbot.knowledge.knowledge_base import Hit, KnowledgeBase, display_source
from ragbot.models.chat import Message
from ragbot.storage.conversations import ConversationStore, StoredTurn, open_conversation_store
from ragbot.text import is_chinese

# The legacy prompt/completion format: the model learns to answer after the separator and to
# end with the stop sequence; both must be used again when calling a model trained on it.
SEPARATOR = "\n\n###\n\n"
STOP = " END"
LEGACY_PROMPT_FORMAT = (
    "the system prompt, then 'User: ...' and 'Assistant: ...' blocks separated by blank lines, "
    "the last being the user's message, then the separator"
)
MANIFEST = "prepare.json"
FILE_KINDS = ("sft", "dpo", "legacy")
_CITATION = re.compile(r"\s*\[\d+\]")


@dataclass(frozen=True)
class TrainingTurn:
    """One answer to learn from, with the context the bot had when it was asked."""

    group: str  # the conversation it belongs to; never split between train and validation
    origin: str  # where it came from, for messages: "qa.jsonl, line 3", "sessions:trip, turn 2"
    question: str  # as the user typed it
    answer: str  # the target: a good answer, or the user's correction
    standalone: str | None = None  # what the prompt and retrieval used (default: the question)
    history: tuple[Message, ...] = ()
    rejected: str | None = None  # the answer a correction replaces: a preference pair
    passages: tuple[Hit, ...] | None = None  # what the bot was shown; None: unknown, retrieved when asked
    gold_ids: tuple[str, ...] = ()  # documents that hold the answer (question sets)


@dataclass(frozen=True)
class Skipped:
    """A row or turn left out, and why."""

    origin: str
    reason: str


@dataclass(frozen=True)
class Example:
    """A rendered turn: the messages the model is shown, the answer to learn, and the worse one."""

    group: str
    prompt: tuple[Message, ...]  # system, history, this turn's user message
    target: str
    rejected: str | None = None


@dataclass
class PrepareReport:
    """What ``prepare`` wrote: examples per file, the rows it left out, and the manifest."""

    out: Path
    files: dict[str, int]
    skipped: list[Skipped] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        written = ", ".join(f"{name} {n}" for name, n in self.files.items())
        if not any(name.startswith("dpo.") for name in self.files):
            written += ", no preference pairs (no corrected answers)"
        reasons = Counter(s.reason for s in self.skipped)
        skipped = f"; skipped {len(self.skipped)} ({', '.join(f'{r}: {n}' for r, n in reasons.items())})"
        return f"Wrote {written} to {self.out}" + (skipped if self.skipped else "")


# --------------------------------------------------------------------------- sources
def collect(
    sources: Sequence[str | Path], settings: Settings, only_good: bool = False
) -> tuple[list[TrainingTurn], list[Skipped]]:
    """The training turns of every source, and the rows left out with their reasons."""
    turns: list[TrainingTurn] = []
    skipped: list[Skipped] = []
    for source in sources:
        spec = str(source)
        if spec == "sessions" or spec.startswith("sessions:"):
            location = settings.sessions_location
            with contextlib.closing(open_conversation_store(location, settings.postgres_pool_size)) as store:
                found = list(session_turns(store, spec.partition(":")[2], only_good))
        else:
            found = file_turns(Path(spec).expanduser())
        for item in found:
            (turns if isinstance(item, TrainingTurn) else skipped).append(item)
    return turns, skipped


def session_turns(
    store: ConversationStore, name: str = "", only_good: bool = False
) -> Iterator[TrainingTurn | Skipped]:
    """Turns of saved conversations (one, or all when ``name`` is empty); a turn marked bad
    with a correction learns the correction and makes a preference pair."""
    names = store.names()
    if name and name not in names:
        known = ", ".join(names) or "none"
        raise TrainingFileError(f"no saved conversation named {name!r} in {store.location} (saved: {known})")
    for conversation in [name] if name else names:
        history: list[Message] = []
        for turn in store.turns(conversation):
            origin = f"sessions:{conversation}, turn {turn.turn + 1}"
            target, rejected, reason = _session_target(turn, only_good)
            if reason:
                yield Skipped(origin, reason)
            else:
                meta = turn.meta
                yield TrainingTurn(
                    group=f"sessions:{conversation}",
                    origin=origin,
                    question=turn.question,
                    answer=target,
                    standalone=meta.get("standalone_question"),
                    history=tuple(history),
                    rejected=rejected,
                    passages=tuple(passages_from_meta(meta)) if "passages" in meta else None,
                )
            # later turns see the better answer: the one a fine-tuned model should have given
            history += [Message("user", turn.question), Message("assistant", target or without_label(turn.answer))]


def _session_target(turn: StoredTurn, only_good: bool) -> tuple[str, str | None, str]:
    """(answer to learn, answer it replaces, reason to skip) of a saved turn."""
    feedback = turn.feedback
    if feedback and feedback.correction:
        return feedback.correction, without_label(turn.answer), ""
    if feedback and feedback.rating == "bad":
        return "", None, "marked bad, no correction"
    if only_good and not feedback:
        return "", None, "not marked good"
    route = turn.meta.get("route")
    if route == "memory":
        return "", None, "answered from memory, not by the model"
    if route == "fallback" and without_label(turn.answer) == turn.answer:
        return "", None, "a fixed reply, not the model's"
    return without_label(turn.answer), None, ""


def file_turns(path: Path) -> Iterator[TrainingTurn | Skipped]:
    """Turns of a question set (evaluation format) or of a plain prompt/completion file."""
    if not path.is_file():
        raise TrainingFileError(
            f"unknown source {str(path)!r}: no such file; give a .jsonl or .csv file, 'sessions' or 'sessions:NAME'"
        )
    columns = _columns(path)
    if {"prompt", "completion"} <= columns:
        yield from _prompt_completion_turns(path)
    elif "question" in columns:  # rows without an answer are skipped, each with its line
        yield from _question_set_turns(path)
    else:
        raise TrainingFileError(
            f"{path}: found columns {', '.join(sorted(columns)) or 'none'}; a training source needs "
            "'prompt' and 'completion', or 'question' and 'answer' (the evaluation question-set format)"
        )


def _question_set_turns(path: Path) -> Iterator[TrainingTurn | Skipped]:
    try:
        questions = read_questions(path)
    except QuestionFileError as exc:
        raise TrainingFileError(str(exc)) from None
    for bad in questions.bad_rows:
        yield Skipped(f"{path.name}, line {bad.line}", bad.reason.partition(": ")[2] or bad.reason)
    for case in questions.cases:
        origin = f"{path.name}, line {case.line}"
        if not case.answer:
            yield Skipped(origin, "no answer")
            continue
        yield TrainingTurn(
            group=f"{path}#{case.conv_id or case.id}",
            origin=origin,
            question=case.question,
            answer=case.answer.strip(),
            standalone=case.rewrite,
            history=tuple(case.messages),
            gold_ids=case.gold_passage_ids,
        )


def _prompt_completion_turns(path: Path) -> Iterator[TrainingTurn | Skipped]:
    for line, row in _rows(path):
        origin = f"{path.name}, line {line}"
        prompt, completion = str(row.get("prompt") or ""), str(row.get("completion") or "")
        if prompt.endswith(SEPARATOR):  # already in the legacy format: take its markers off
            prompt, completion = prompt.removesuffix(SEPARATOR), completion.removesuffix(STOP)
        prompt, completion = prompt.strip(), completion.strip()
        if not prompt or not completion:
            yield Skipped(origin, "empty prompt or completion")
            continue
        yield TrainingTurn(group=f"{path}#{line}", origin=origin, question=prompt, answer=completion)


def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, row) of a .csv or .jsonl file; a broken line stops with its number."""
    try:
        if path.suffix.lower() != ".csv":
            yield from jsonl_objects(path, TrainingFileError, example='{"prompt": ..., "completion": ...}')
            return
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh)
            for row in reader:
                yield reader.line_num, row
    except UnicodeDecodeError as exc:
        raise TrainingFileError(f"{path} is not UTF-8 text ({exc.reason}); save it as UTF-8") from None


def _columns(path: Path) -> set[str]:
    """The column names of a .csv file, or the keys of the first row of a .jsonl file."""
    if path.suffix.lower() not in (".csv", ".jsonl", ".json", ".ndjson"):
        raise TrainingFileError(f"{path}: unsupported file type {path.suffix or '(none)'!r}; use .jsonl or .csv")
    for _, row in _rows(path):
        return {str(k) for k in row}
    raise TrainingFileError(f"{path} is empty; add one example per line")


# --------------------------------------------------------------------------- rendering
def without_label(answer: str) -> str:
    """The answer without the "not found in the knowledge base" label the bot adds itself."""
    for label in LABELS["general"].values():
        answer = answer.removeprefix(label)
    return answer.strip()


def cite_gold(answer: str, passages: Sequence[Hit], gold_ids: Sequence[str]) -> str | None:
    """The answer citing the first passage from a gold document, as the grounded prompt asks
    (unchanged if it already cites); None when no passage is from one, since a model shown
    those passages could not have found the answer in them."""
    gold = set(gold_ids)
    numbers = [n for n, h in enumerate(passages, 1) if gold & {h.doc_id, h.source, display_source(h.source)}]
    if not numbers:
        return None
    return answer if _CITATION.search(answer) else f"{answer} [{numbers[0]}]"


def render_turn(turn: TrainingTurn, passages: Sequence[Hit], settings: Settings) -> Example:
    """The turn as the bot would have prompted it; with no passages, citation marks are dropped
    from the answers, since there is nothing for them to point at."""
    standalone = turn.standalone or turn.question
    history = trim_history(list(turn.history), settings.history_tokens)
    prompt = answer_messages(
        standalone, passages, history, chinese=is_chinese(turn.question), prompt_dir=settings.prompt_dir
    )

    def clean(text: str | None) -> str | None:
        return text if text is None or passages else _CITATION.sub("", text).strip()

    return Example(turn.group, tuple(prompt), clean(turn.answer), clean(turn.rejected))


def _message(m: Message, context_only: bool = False) -> dict[str, Any]:
    return {"role": m.role, "content": m.content, **({"weight": 0} if context_only else {})}


def sft_record(example: Example) -> dict[str, Any]:
    """``{"messages": [...]}``: earlier answers are context (weight 0), the last one is learnt."""
    messages = [_message(m, context_only=m.role == "assistant") for m in example.prompt]
    return {"messages": [*messages, {"role": "assistant", "content": example.target}]}


def dpo_record(example: Example) -> dict[str, Any]:
    """The OpenAI preference fine-tuning shape: the correction preferred over the original answer."""
    return {
        "input": {"messages": [_message(m) for m in example.prompt]},
        "preferred_output": [{"role": "assistant", "content": example.target}],
        "non_preferred_output": [{"role": "assistant", "content": example.rejected}],
    }


def legacy_prompt(messages: Sequence[Message]) -> str:
    """The prompt text of the legacy format (see ``LEGACY_PROMPT_FORMAT``); call a model trained
    on it with this prompt and ``stop=[STOP]``."""
    blocks = [m.content if m.role == "system" else f"{m.role.capitalize()}: {m.content}" for m in messages]
    return "\n\n".join(blocks) + SEPARATOR


def legacy_record(example: Example) -> dict[str, str]:
    return {"prompt": legacy_prompt(example.prompt), "completion": " " + example.target + STOP}


# --------------------------------------------------------------------------- split and write
def validation_groups(groups: Sequence[str], valid_share: float, seed: int) -> set[str]:
    """The conversations that go to validation: a seeded shuffle of the distinct groups, so the
    same data and seed always give the same split (at least one when the share is above 0)."""
    distinct = sorted(set(groups))
    random.Random(seed).shuffle(distinct)
    count = round(len(distinct) * valid_share)
    if valid_share > 0 and count == 0 and len(distinct) > 1:
        count = 1
    return set(distinct[:count])


def prepare(
    sources: Sequence[str | Path],
    out: str | Path,
    *,
    settings: Settings | None = None,
    with_passages: bool = False,
    only_good: bool = False,
    valid_share: float = 0.1,
    seed: int = 0,
) -> PrepareReport:
    """Write SFT, preference (DPO) and legacy prompt/completion files, each split into train and
    validation, and ``prepare.json`` recording how they were made."""
    if not 0 <= valid_share < 1:
        raise FinetuneError(f"valid_share must be at least 0 and below 1; got {valid_share}")
    if not sources:
        raise FinetuneError("give at least one source: a question set, a prompt/completion file, or 'sessions'")
    settings = settings or load_settings()
    turns, skipped = collect(sources, settings, only_good)
    if not turns:
        reasons = ", ".join(f"{r}: {n}" for r, n in Counter(s.reason for s in skipped).items())
        hint = "".join(
            f"; {s} is a rewrite set: build a rewriter's training files with "
            f"`ragbot finetune rewrite-data {s} --out DIR`"
            for s in sources
            if is_rewrite_set(s)
        )
        raise TrainingFileError(
            f"no examples to write from {', '.join(map(str, sources))}; skipped {reasons or '0'}{hint}"
        )
    examples = []
    finder = _Passages(settings) if with_passages else None
    for turn in turns:
        passages = finder.passages(turn) if finder else ()
        if passages and turn.gold_ids:
            cited = cite_gold(turn.answer, passages, turn.gold_ids)
            if cited is None:
                skipped.append(Skipped(turn.origin, "no retrieved passage is from its gold document"))
                continue
            turn = replace(turn, answer=cited)
        examples.append(render_turn(turn, passages, settings))
    if not examples:
        raise TrainingFileError("no examples left: " + PrepareReport(Path(out), {}, skipped).summary())
    valid = validation_groups([e.group for e in examples], valid_share, seed)

    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    files = _write_files(out, examples, valid)
    manifest = {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sources": [str(s) for s in sources],
        "with_passages": with_passages,
        "only_good": only_good,
        "seed": seed,
        "valid_share": valid_share,
        "split": {
            "by": "conversation",
            "train_conversations": len({e.group for e in examples} - valid),
            "valid_conversations": len(valid),
        },
        "files": files,
        "legacy": {
            "separator": SEPARATOR,
            "stop": STOP,
            "completion_leading_space": True,
            "prompt_format": LEGACY_PROMPT_FORMAT,
        },
        "history_tokens": settings.history_tokens,
        "knowledge_base": finder.retriever.kb.location if finder and finder.used else None,
        "skipped": [{"origin": s.origin, "reason": s.reason} for s in skipped],
    }
    (out / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return PrepareReport(out, files, skipped, manifest)


class _Passages:
    """Passages for turns that did not keep theirs (question-set rows): the bot's own retrieval step
    (``ragbot.conversation.retrieval``: the topic rebuilt from the turn's history, the passages about
    what the question names) over the configured knowledge base, opened only when first needed. The
    cross-lingual step is left out: it needs a model."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.used = False
        self._retriever: Retriever | None = None

    @property
    def retriever(self) -> Retriever:
        if self._retriever is None:
            self._retriever = Retriever(KnowledgeBase.open(self.settings), self.settings)
        return self._retriever

    def passages(self, turn: TrainingTurn) -> tuple[Hit, ...]:
        if turn.passages is not None:
            return turn.passages
        self.used = True
        topic = topic_from_history(turn.history, self.retriever.titles())
        return tuple(self.retriever.step(turn.question, turn.standalone or turn.question, topic).evidence.sources)


def _write_files(out: Path, examples: Sequence[Example], valid: set[str]) -> dict[str, int]:
    """Write each kind's train and validation file (only the non-empty ones; stale ones go)."""
    records = {
        "sft": [(e, sft_record(e)) for e in examples],
        "dpo": [(e, dpo_record(e)) for e in examples if e.rejected],
        "legacy": [(e, legacy_record(e)) for e in examples],
    }
    counts: dict[str, int] = {}
    for kind in FILE_KINDS:
        for part in ("train", "valid"):
            path = out / f"{kind}.{part}.jsonl"
            path.unlink(missing_ok=True)
            rows = [r for e, r in records[kind] if (e.group in valid) == (part == "valid")]
            if rows:
                path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
                counts[path.name] = len(rows)
    return counts


def is_rewrite_set(path: str | Path) -> bool:
    """Whether the first row of a .jsonl file has a question and a rewrite but no answer."""
    path = Path(path)
    if path.suffix.lower() not in (".jsonl", ".ndjson", ".json") or not path.is_file():
        return False
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        for text in fh:
            if text.strip():
                try:
                    first = json.loads(text)
                except json.JSONDecodeError:
                    return False
                return isinstance(first, dict) and {"question", "rewrite"} <= set(first) and "answer" not in first
    return False
