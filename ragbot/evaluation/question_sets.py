"""Question sets for evaluation: JSONL or CSV files of turns with optional gold fields.

One row is one turn::

    {"id": "t1", "conv_id": "c1", "turn": 2,
     "history": ["尼罗河是什么？", "尼罗河是非洲的一条大河。"], "history_roles": ["user", "assistant"],
     "question": "它流经哪些国家？",
     "rewrite": "尼罗河流经哪些国家？",            # gold standalone question
     "gold_passage_ids": ["nile"],                 # documents that answer it
     "answer": "乌干达、南苏丹、苏丹和埃及。",      # a good answer
     "gold_facts": ["乌干达", "埃及"],             # values a good answer states (fact recall)
     "expected_route": "grounded"}                 # or "fallback"

Only ``question`` is required. Without ``gold_facts``, a row with ``gold_triples`` (KdConv's
``[subject, relation, value]`` lists) and an ``answer`` gets as gold facts the values the answer
states (``ragbot.evaluation.facts.facts_in_answer``). Other fields (``gold_entities``, ``entity_in_question``,
``needs_rewrite``, ``lang``, ``meta``, ...) are kept and can be filtered on (``--where``).
In CSV, list fields hold a JSON array (``["a", "b"]``) or values separated by `` | ``.

A line that is not a JSON object (or a CSV row with more cells than the header) makes the
whole file unreadable: ``QuestionFileError`` names the file and the line, before any work
is done. A well-formed row with a bad field (no question, an unknown route) is kept as a
``BadRow`` and reported as a failed row, so one typo does not stop a long run.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragbot.errors import QuestionFileError, RagbotError
from ragbot.evaluation.facts import facts_in_answer
from ragbot.models.chat import Message

ROUTES = ("grounded", "fallback")
# Standing in for a turn the data does not hold (CAsT keeps only the user's side), so that
# history roles alternate user/assistant as the conversation engine requires.
PLACEHOLDER = "…"
_LIST_FIELDS = ("history", "history_roles", "gold_passage_ids", "gold_entities", "gold_facts")
_KNOWN = {
    "id",
    "conv_id",
    "turn",
    "question",
    "rewrite",
    "answer",
    "expected_route",
    "needs_rewrite",
    "lang",
    *_LIST_FIELDS,
}


@dataclass(frozen=True)
class EvalCase:
    """One turn to evaluate, with whichever gold fields the row has."""

    id: str
    question: str
    line: int = 0
    history: tuple[str, ...] = ()
    history_roles: tuple[str, ...] = ()
    conv_id: str | None = None
    turn: int | None = None
    rewrite: str | None = None  # gold standalone question
    gold_passage_ids: tuple[str, ...] = ()
    gold_entities: tuple[str, ...] = ()
    answer: str | None = None  # a good answer
    gold_facts: tuple[str, ...] = ()  # values a good answer states: what fact recall looks for
    expected_route: str | None = None
    needs_rewrite: bool | None = None
    lang: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # any other fields of the row

    @property
    def messages(self) -> list[Message]:
        """The history as alternating user/assistant messages (see ``history_messages``)."""
        return history_messages(self.history, self.history_roles)

    @property
    def expected(self) -> str | None:
        """The expected route: the row's own, else grounded when it names gold passages."""
        if self.expected_route:
            return self.expected_route
        return "grounded" if self.gold_passage_ids else None

    @property
    def gold_query(self) -> tuple[str, str]:
        """(the best query the data allows, where it came from): the gold rewrite, else the
        question with the gold entities it does not name put in front, else the question."""
        if self.rewrite:
            return self.rewrite, "rewrite"
        missing = [e for e in self.gold_entities if e and e not in self.question]
        if missing:
            return " ".join(missing) + " " + self.question, "entities"
        return self.question, "question"

    @property
    def already_standalone(self) -> bool | None:
        """Whether the gold says the question needs no rewrite (None: no gold to tell)."""
        if self.needs_rewrite is not None:
            return not self.needs_rewrite
        if self.rewrite is None:
            return None
        from ragbot.evaluation.metrics import normalise

        return normalise(self.rewrite) == normalise(self.question)

    def field_value(self, name: str) -> Any:
        """A top-level field by name (including ones kept in ``extra``)."""
        if name in _KNOWN:
            value = getattr(self, name)
            return list(value) if isinstance(value, tuple) else value
        return self.extra.get(name)


@dataclass(frozen=True)
class BadRow:
    """A well-formed row whose fields cannot be used; evaluated as a failed row."""

    id: str
    line: int
    reason: str
    question: str = ""


@dataclass
class QuestionSet:
    """The usable cases of a file, the bad rows, and where it came from."""

    cases: list[EvalCase]
    bad_rows: list[BadRow] = field(default_factory=list)
    source: str = "<rows>"

    def __len__(self) -> int:
        return len(self.cases) + len(self.bad_rows)

    @property
    def ids(self) -> list[str]:
        return [c.id for c in self.cases] + [b.id for b in self.bad_rows]


def history_messages(history: Sequence[str], roles: Sequence[str] = ()) -> list[Message]:
    """``history`` as messages that alternate user/assistant and end with the assistant.

    Missing roles are taken to alternate and end with the assistant (the other speaker
    spoke last). Where the data lacks a turn (two user messages in a row, a history that
    starts with the assistant or ends with the user) a ``PLACEHOLDER`` message fills it.
    """
    if not roles:
        roles = ["assistant" if (len(history) - i) % 2 else "user" for i in range(len(history))]
    out: list[Message] = []
    for role, text in zip(roles, history, strict=False):
        expected = "user" if len(out) % 2 == 0 else "assistant"
        if role != expected:
            out.append(Message(expected, PLACEHOLDER))
        out.append(Message(role, str(text)))
    if len(out) % 2:
        out.append(Message("assistant", PLACEHOLDER))
    return out


def read_questions(path: str | Path) -> QuestionSet:
    """The question set in ``path`` (``.jsonl``/``.json`` lines, or ``.csv`` with a header)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise QuestionFileError(f"question file {path} does not exist; give a .jsonl or .csv file of questions")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            numbered = list(_csv_rows(path))
        elif suffix in (".jsonl", ".json", ".ndjson"):
            numbered = list(jsonl_objects(path))
        else:
            raise QuestionFileError(
                f"question file {path} has an unsupported type {suffix or '(none)'!r}; use .jsonl or .csv"
            )
    except UnicodeDecodeError as exc:
        raise QuestionFileError(f"question file {path} is not UTF-8 text ({exc.reason}); save it as UTF-8") from None
    qs = questions_from_rows(numbered, source=str(path))
    if not len(qs):
        raise QuestionFileError(f"question file {path} holds no rows; add one question per line")
    return qs


def questions_from_rows(rows: Iterable[Mapping[str, Any] | tuple[int, Mapping[str, Any]]], source="<rows>"):
    """A ``QuestionSet`` from dicts (or (line, dict) pairs); duplicate ids are refused."""
    cases: list[EvalCase] = []
    bad: list[BadRow] = []
    seen: dict[str, int] = {}
    for n, item in enumerate(rows, start=1):
        line, row = item if isinstance(item, tuple) else (n, item)
        if not isinstance(row, Mapping):
            raise QuestionFileError(f"{source}, line {line}: a row must be an object, got {type(row).__name__}")
        rid = str(row["id"]) if row.get("id") not in (None, "") else f"line-{line}"
        if rid in seen:
            raise QuestionFileError(
                f"{source}, line {line}: id {rid!r} was already used on line {seen[rid]}; "
                "ids must be unique (they are how an interrupted run resumes)"
            )
        seen[rid] = line
        try:
            cases.append(_case(row, rid, line))
        except _RowProblem as problem:
            question = row.get("question")
            bad.append(BadRow(rid, line, f"line {line}: {problem}", question if isinstance(question, str) else ""))
    return QuestionSet(cases, bad, source)


class _RowProblem(Exception):
    pass


def _text(row: Mapping[str, Any], name: str, required: bool = False) -> str | None:
    value = row.get(name)
    if value is None:
        if required:
            raise _RowProblem(f"the row has no {name!r}")
        return None
    if not isinstance(value, str):
        raise _RowProblem(f"{name!r} must be text, got {type(value).__name__} {value!r}")
    if not value.strip():
        if required:
            raise _RowProblem(f"{name!r} is empty")
        return None
    return value


def _strings(row: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = row.get(name)
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise _RowProblem(f"{name!r} must be a list of strings, got {value!r}")
    return tuple(value)


def _case(row: Mapping[str, Any], rid: str, line: int) -> EvalCase:
    question = _text(row, "question", required=True)
    history = _strings(row, "history")
    roles = _strings(row, "history_roles")
    if roles and len(roles) != len(history):
        raise _RowProblem(f"'history_roles' has {len(roles)} roles for {len(history)} history messages")
    if bad := [r for r in roles if r not in ("user", "assistant")]:
        raise _RowProblem(f"'history_roles' must be 'user' or 'assistant', got {bad[0]!r}")
    route = _text(row, "expected_route")
    if route is not None:
        route = route.strip().lower()
        if route not in ROUTES:
            raise _RowProblem(f"'expected_route' must be 'grounded' or 'fallback', got {row['expected_route']!r}")
    turn = row.get("turn")
    if turn is not None and turn != "":
        try:
            turn = int(turn)
        except (TypeError, ValueError):
            raise _RowProblem(f"'turn' must be a whole number, got {turn!r}") from None
    else:
        turn = None
    needs = row.get("needs_rewrite")
    if needs is not None and not isinstance(needs, bool):
        raise _RowProblem(f"'needs_rewrite' must be true or false, got {needs!r}")
    conv = row.get("conv_id")
    answer = _text(row, "answer")
    return EvalCase(
        id=rid,
        question=question,
        line=line,
        history=history,
        history_roles=roles,
        conv_id=str(conv) if conv not in (None, "") else None,
        turn=turn,
        rewrite=_text(row, "rewrite"),
        gold_passage_ids=_strings(row, "gold_passage_ids"),
        gold_entities=_strings(row, "gold_entities"),
        answer=answer,
        gold_facts=_strings(row, "gold_facts") if "gold_facts" in row else _facts_from_triples(row, answer),
        expected_route=route,
        needs_rewrite=needs,
        lang=_text(row, "lang"),
        extra={k: v for k, v in row.items() if k not in _KNOWN},
    )


def _facts_from_triples(row: Mapping[str, Any], answer: str | None) -> tuple[str, ...]:
    triples = row.get("gold_triples")
    if not triples or answer is None:
        return ()
    if not isinstance(triples, list) or not all(
        isinstance(t, (list, tuple)) and len(t) >= 3 and all(isinstance(x, str) for x in t) for t in triples
    ):
        raise _RowProblem(f"'gold_triples' must be a list of [subject, relation, value] lists, got {triples!r:.80}")
    return tuple(facts_in_answer(triples, answer))


def jsonl_objects(path: Path, error: type[RagbotError] = QuestionFileError, example: str = '{"question": ...}'):
    """(line, object) for each non-blank line of a JSONL file; a line that is not a JSON object
    raises ``error`` naming the file and the line (also used for training files)."""
    with open(path, encoding="utf-8-sig") as fh:
        for line, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text.rstrip("\r\n"))  # else a line cut short is blamed on the next line
            except json.JSONDecodeError as exc:
                raise error(
                    f"{path}, line {line}: not valid JSON ({exc.msg} at column {exc.colno}); "
                    "each line must be one JSON object"
                ) from None
            if not isinstance(row, dict):
                raise error(f"{path}, line {line}: expected a JSON object like {example}, got {type(row).__name__}")
            yield line, row


def _csv_cell(name: str, value: str | None, path: Path, line: int) -> Any:
    if value is None:
        return None
    value = value.strip()
    if name in _LIST_FIELDS:
        if not value:
            return []
        if value.startswith("["):
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError as exc:
                raise QuestionFileError(
                    f"{path}, line {line}: column {name!r} starts with '[' but is not a JSON array ({exc.msg})"
                ) from None
            return parsed
        return [v.strip() for v in value.split(" | ")]
    if name == "needs_rewrite" or name == "entity_in_question":
        lowered = value.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        return value or None
    return value


def _csv_rows(path: Path):
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        if "question" not in header:
            raise QuestionFileError(
                f"{path}, line 1: the CSV header has no 'question' column (found: {', '.join(header) or 'nothing'})"
            )
        start = 2
        for record in reader:
            line = start
            start = reader.line_num + 1
            if None in record:
                raise QuestionFileError(
                    f"{path}, line {line}: {len(header) + len(record[None])} cells for {len(header)} columns; "
                    "quote cells that contain commas"
                )
            if not any((v or "").strip() for v in record.values()):
                continue
            yield line, {k: _csv_cell(k, v, path, line) for k, v in record.items()}


def select(
    questions: QuestionSet,
    where: Mapping[str, Any] | None = None,
    sample: int | None = None,
    seed: int = 0,
    limit: int | None = None,
) -> QuestionSet:
    """The rows matching ``where`` (field = value), then a seeded random ``sample`` of them
    (kept in file order, so conversations stay in order), then the first ``limit``."""
    cases, bad = list(questions.cases), list(questions.bad_rows)
    if where:
        cases = [c for c in cases if all(_matches(c.field_value(k), v) for k, v in where.items())]
        bad = []  # a bad row cannot be matched against its fields
    if sample is not None and sample < len(cases):
        chosen = set(random.Random(seed).sample(range(len(cases)), sample))
        cases = [c for i, c in enumerate(cases) if i in chosen]
        bad = []
    if limit is not None:
        rows = sorted([*cases, *bad], key=lambda r: r.line)[:limit]
        cases = [r for r in rows if isinstance(r, EvalCase)]
        bad = [r for r in rows if isinstance(r, BadRow)]
    return QuestionSet(cases, bad, questions.source)


def _matches(value: Any, wanted: Any) -> bool:
    if isinstance(wanted, str):
        if isinstance(value, bool):
            return str(value).lower() == wanted.lower()
        return str(value) == wanted
    return value == wanted


def parse_where(items: Iterable[str]) -> dict[str, Any]:
    """``["entity_in_question=false"]`` -> ``{"entity_in_question": "false"}``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise QuestionFileError(f"bad filter {item!r}: write FIELD=VALUE, e.g. entity_in_question=false")
        out[key.strip()] = value.strip()
    return out
