"""Training data for a rewriter of our own: rewrite rows (``../shared/data/rewrite_*.jsonl``) as
chat examples whose answer has the two parts the chain-of-thought rewrite prompt asks for.

A trained rewriter is shown a short prompt (``prompts/rewrite_trained.zh.txt`` / ``.en.txt``: one
line of instructions, the history formatted by ``format_history`` as the CoT rewrite does, and the
question) and learns to answer::

    思考：“它”指前面说的尼罗河。            Reasoning: "it" refers to the Nile.
    改写：尼罗河流经哪些国家？              Rewrite: Which countries does the Nile flow through?

so that the bot's own post-processing (``parse_rewrite``, the referent substitution and the guards
of ``checked_candidate``, the comparison rule) stays as it is. The reasoning is built from the
question and its gold rewrite, aligned with ``difflib`` (characters for Chinese, words for
English): a pronoun replaced by a span of the rewrite names that span as its referent, a span the
question left out is named as omitted, and an unchanged question is called complete. The Chinese
referent sentence (``“它”指前面说的X。``) is the one ``substitute_referent`` understands; it is
written only when that substitution gives the gold rewrite exactly (else the bot would stop
generating after the reasoning and return the substituted question): other pronouns are named as
``“它”说的是X``, which the substitution leaves alone, and the final line carries the rewrite.

``self_consistency`` feeds each constructed answer to ``rewrite_question`` itself (a scripted model
returns it) and counts how often the standalone question the bot makes of it is the gold rewrite.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import random
import re
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ragbot.config import Settings
from ragbot.conversation.rewrite import (
    SUBSTITUTABLE,
    ZH_FUNCTION_CHARS,
    ZH_PRONOUN,
    RewriteDecision,
    needs_rewrite,
    rewrite_question,
    substitute_referent,
)
from ragbot.errors import FinetuneError, TrainingFileError
from ragbot.evaluation.metrics import exact_match
from ragbot.evaluation.question_sets import history_messages
from ragbot.files import sha256_file
from ragbot.finetune.data import Skipped, validation_groups
from ragbot.models.chat import ChatModel, Delta, GenerationSettings, Message
from ragbot.text import is_chinese

# the rewrite's history budget in the default settings: the prompt shows what the bot would show
_BUDGET = {
    f.name: f.default for f in fields(Settings) if f.name in ("rewrite_history_tokens", "rewrite_message_tokens")
}
TRAINED_PROMPT = "rewrite_trained"  # the prompt files of a trained rewriter (the rewrite_prompt setting)
PROMPTS = {"zh": f"{TRAINED_PROMPT}.zh", "en": f"{TRAINED_PROMPT}.en"}
MANIFEST = "rewrite_data.json"
CONTEXT_ROLES = ("title", "section")  # CANARD: the Wikipedia title and section the dialog is about
ZH_COMPLETE = "问题本身完整。"
EN_COMPLETE = "the question is already complete."


@dataclass(frozen=True)
class RewriteRow:
    """One row of a rewrite set: a follow-up, the history it follows, and its gold rewrite."""

    id: str
    origin: str  # "rewrite_zh_su2019_train.jsonl, line 3"
    question: str
    rewrite: str
    history: tuple[str, ...] = ()
    history_roles: tuple[str, ...] = ()
    group: str = ""  # the dialog: never split between train and validation
    lang: str = ""

    @property
    def chinese(self) -> bool:
        return self.lang == "zh" if self.lang in ("zh", "en") else is_chinese(self.question)

    @property
    def messages(self) -> list[Message]:
        """The history as the bot would hold it: alternating user/assistant messages. CANARD's
        title and section (what the dialog is about) become the user's first message,
        "title: section", as if the user had opened with them."""
        roles = self.history_roles or ()
        context = [t for t, r in zip(self.history, roles, strict=False) if r in CONTEXT_ROLES]
        rest = [(t, r) for t, r in zip(self.history, roles, strict=False) if r not in CONTEXT_ROLES]
        if not roles:
            return history_messages(self.history)
        texts = ([": ".join(context)] if context else []) + [t for t, _ in rest]
        kinds = (["user"] if context else []) + [r for _, r in rest]
        return history_messages(texts, kinds)

    @property
    def negative(self) -> bool:
        return self.question.strip() == self.rewrite.strip()


# --------------------------------------------------------------------------- reading
def read_rewrite_rows(path: str | Path) -> tuple[list[RewriteRow], list[Skipped]]:
    """The usable rows of a rewrite set, and the lines left out (not JSON, no question, an empty
    rewrite, a bad history), each named by file and line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise TrainingFileError(f"rewrite set {path} does not exist; give a .jsonl file of rewrite rows")
    rows: list[RewriteRow] = []
    skipped: list[Skipped] = []
    try:
        with open(path, encoding="utf-8-sig") as fh:
            lines = list(fh)
    except UnicodeDecodeError as exc:
        raise TrainingFileError(f"{path} is not UTF-8 text ({exc.reason}); save it as UTF-8") from None
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        origin = f"{path.name}, line {number}"
        try:
            data = json.loads(text.rstrip("\r\n"))
        except json.JSONDecodeError as exc:
            skipped.append(Skipped(origin, f"not valid JSON ({exc.msg} at column {exc.colno})"))
            continue
        if not isinstance(data, dict):
            skipped.append(Skipped(origin, f"not a JSON object (a {type(data).__name__})"))
            continue
        row = _row(data, origin)
        (rows if isinstance(row, RewriteRow) else skipped).append(row)
    if not rows and not skipped:
        raise TrainingFileError(f"{path} is empty; add one rewrite row per line")
    return rows, skipped


def _row(data: dict[str, Any], origin: str) -> RewriteRow | Skipped:
    question, rewrite = data.get("question"), data.get("rewrite")
    if not isinstance(question, str) or not question.strip():
        return Skipped(origin, "no question")
    if not isinstance(rewrite, str) or not rewrite.strip():
        return Skipped(origin, "empty rewrite (write the standalone question, or the question itself if complete)")
    history, roles = data.get("history") or [], data.get("history_roles") or []
    if not isinstance(history, list) or not all(isinstance(t, str) for t in history):
        return Skipped(origin, "'history' is not a list of strings")
    if not isinstance(roles, list) or (roles and len(roles) != len(history)):
        return Skipped(origin, f"'history_roles' has {len(roles)} roles for {len(history)} history messages")
    if bad := [r for r in roles if r not in ("user", "assistant", *CONTEXT_ROLES)]:
        return Skipped(origin, f"unknown history role {bad[0]!r} (user, assistant, title or section)")
    rid = str(data.get("id") or origin)
    group = str(data.get("conv_id") or "") or rid.removesuffix("-neg")  # a Su row and its negative: one dialog
    lang = data.get("lang") if data.get("lang") in ("zh", "en") else ""
    return RewriteRow(rid, origin, question.strip(), rewrite.strip(), tuple(history), tuple(roles), group, lang)


# --------------------------------------------------------------------------- the reasoning
_EN_TOKEN = re.compile(r"\w+(?:'\w+)?|[^\w\s]")
_EN_PRONOUNS = frozenset(
    "it its it's he him his she her hers they them their theirs this that these those there one".split()
) | {"the same", "the other", "the latter", "the former"}
_BLANK = re.compile(r"^[\s\W]*$")
_EN_POSSESSIVE = re.compile(r"(?P<owner>.+?)'s?(?=\s|$)\s*(?P<rest>.*)")


def _ops(question: str, rewrite: str, chinese: bool) -> list[tuple[str, str, str, int, int, int, int]]:
    """(kind, question span, rewrite span, its start and end in the question, in the rewrite) of each change."""
    if chinese:
        a, b = list(question), list(rewrite)
        qs = [(i, i + 1) for i in range(len(question))]
        rs = [(i, i + 1) for i in range(len(rewrite))]
    else:
        qm, rm = list(_EN_TOKEN.finditer(question)), list(_EN_TOKEN.finditer(rewrite))
        a, b = [m.group().lower() for m in qm], [m.group().lower() for m in rm]
        qs, rs = [m.span() for m in qm], [m.span() for m in rm]
    changes = [op for op in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes() if op[0] != "equal"]
    if chinese:
        changes = _merged(changes, question)
    out = []
    for kind, i1, i2, j1, j2 in changes:
        q_start = qs[i1][0] if i1 < len(qs) else len(question)
        q_end = qs[i2 - 1][1] if i2 > i1 else q_start
        r_start, r_end = (rs[j1][0], rs[j2 - 1][1]) if j2 > j1 else (0, 0)
        out.append((kind, question[q_start:q_end], rewrite[r_start:r_end], q_start, q_end, r_start, r_end))
    return out


def _merged(changes, question: str):
    """Two Chinese changes one kept character apart, joined when together they replace a pronoun:
    "那里的海" -> "毛里求斯的海" aligns 那->毛, keeps 里, inserts 求斯; it is 那里 -> 毛里求斯."""
    out = []
    for op in changes:
        if out:
            _, i1, i2, j1, j2 = out[-1]
            if op[1] - i2 == 1 and op[3] - j2 == 1 and _zh_pronoun(span := question[i1 : op[2]]) and len(span) <= 4:
                out[-1] = ("replace", i1, op[2], j1, op[4])
                continue
        out.append(op)
    return out


# what may stand before an omitted subject or after an omitted object: particles, punctuation, spaces
_ZH_PARTICLES = ZH_FUNCTION_CHARS | set("啊呀嘛哦哈嗯额呗哒")
_ZH_EDGE = re.compile(r"[\s\W吗呢吧啊呀么了嘛哦哈那嗯额]+")


def _trim(span: str) -> str:
    """An inserted span without the joining words at its edges: "的面包蟹" -> "面包蟹"."""
    return span.strip(" 的是和与了在") or span


def _zh_pronoun(span: str) -> bool:
    return bool(span) and (span in SUBSTITUTABLE or ZH_PRONOUN.search(span) is not None)


def _content_insert(span: str, chinese: bool) -> bool:
    if _BLANK.match(span):
        return False
    if chinese:
        return not set(re.sub(r"[\s\W]", "", span)) <= ZH_FUNCTION_CHARS
    return True


def reasoning_for(question: str, rewrite: str, history: Sequence[str], chinese: bool) -> str:
    """One sentence saying what the question's pronouns refer to and what it left out, built
    from the gold ``rewrite`` (see the module's docstring)."""
    if question == rewrite:
        return ZH_COMPLETE if chinese else EN_COMPLETE
    ops = _ops(question, rewrite, chinese)
    return _zh_reasoning(question, rewrite, history, ops) if chinese else _en_reasoning(rewrite, ops)


def _zh_reasoning(question: str, rewrite: str, history: Sequence[str], ops) -> str:
    replaced, inserted = [], []
    for kind, q, r, start, end, *_ in ops:
        if not r or (kind == "insert" and not _content_insert(r, True)):
            continue
        if kind == "insert" or _BLANK.match(q) or (not _zh_pronoun(q) and set(q) <= _ZH_PARTICLES):
            inserted.append((r, start, end))  # "我不认识啊" -> "我不认识巴乔": 巴乔 was left out
        elif _zh_pronoun(q) or len(r) > 1:  # else a one-character change of wording ("哪里" -> "哪儿")
            replaced.append((q, r))
    # the referent sentence, when substituting it gives the rewrite (else the bot would stop there)
    if len(set(replaced)) == 1 and not inserted and _zh_pronoun(replaced[0][0]):
        pronoun, referent = replaced[0]
        sentence = f"“{pronoun}”指前面说的{referent}。"
        done = substitute_referent(question, sentence, history)
        if done is not None and done[0] == rewrite:
            return sentence
    clauses = [f"“{q}”说的是{_trim(r)}" for q, r in dict.fromkeys(replaced)]
    if len(inserted) == 1 and not replaced:
        span, start, end = inserted[0]
        if not _ZH_EDGE.sub("", question[:start]):
            return f"省略了主语，指的是{_trim(span)}。"
        if not _ZH_EDGE.sub("", question[end:]):
            return f"省略了宾语，指的是{_trim(span)}。"
    if inserted:
        clauses.append("省略了" + "和".join(f"“{_trim(r)}”" for r, _, _ in dict.fromkeys(inserted)))
    if not clauses:  # only particles, spaces or deletions changed
        return "问题基本完整，只调整了个别字词。"
    return "，".join(clauses) + "。"


_EN_CAPITALISED = re.compile(r"[A-Z][\w'.-]*")


def _whole_name(rewrite: str, start: int, end: int) -> tuple[int, int]:
    """The span ``start:end`` of ``rewrite`` grown over the capitalised words right beside it
    (not the sentence's first word): "Songz" in "Did Trey Songz enjoy..." -> "Trey Songz"."""
    words = [m for m in re.finditer(r"\S+", rewrite)]
    inside = [i for i, m in enumerate(words) if m.start() >= start and m.end() <= end]
    if not inside:
        return start, end
    first, last = inside[0], inside[-1]
    if not all(_EN_CAPITALISED.fullmatch(words[i].group()) for i in inside):  # not a piece of a name
        return start, end
    while first > 1 and _EN_CAPITALISED.fullmatch(words[first - 1].group()):
        first -= 1
    while last + 1 < len(words) and _EN_CAPITALISED.fullmatch(words[last + 1].group()):
        last += 1
    return words[first].start(), words[last].end()


def _en_reasoning(rewrite: str, ops) -> str:
    clauses = []
    for kind, q, r, _, _, r_start, r_end in ops:
        r = r.strip(" ,.;:?!")
        if not r or not _content_insert(r, False):
            continue
        if kind == "replace" and q.lower() in _EN_PRONOUNS:
            owner = _EN_POSSESSIVE.match(r) if q.lower() in ("his", "her", "its", "their") else None
            if owner and owner.group("rest").strip(" ,.;:?!"):  # "his" -> "Pinhead's supernatural"
                clauses.append(f'"{q}" refers to {owner.group("owner")}')
                clauses.append(f"the question leaves out: {owner.group('rest').strip(' ,.;:?!')}")
            else:
                clauses.append(f'"{q}" refers to {owner.group("owner") if owner else r}')
        elif kind == "replace":
            clauses.append(f'"{q}" is rewritten as "{r}"')
        else:
            grown_start, grown_end = _whole_name(rewrite, r_start, r_end)
            if (grown_start, grown_end) != (r_start, r_end):  # "Trey" -> "Trey Songz": the full name
                named = (rewrite[grown_start:r_start] + rewrite[r_end:grown_end]).strip()
                clauses.append(f'"{named}" is {rewrite[grown_start:grown_end].strip(" ,.;:?!")}')
            else:
                clauses.append(f"the question leaves out: {r}")
    if not clauses:
        return "the question is complete apart from small wording changes."
    return "; ".join(dict.fromkeys(clauses)) + "."


def assistant_text(row: RewriteRow) -> str:
    """The answer a trained rewriter learns for ``row``: the reasoning, then the gold rewrite."""
    reasoning = reasoning_for(row.question, row.rewrite, [m.content for m in row.messages], row.chinese)
    return (
        f"思考：{reasoning}\n改写：{row.rewrite}" if row.chinese else f"Reasoning: {reasoning}\nRewrite: {row.rewrite}"
    )


def prompt_messages(row: RewriteRow, prompt_dir=None) -> list[Message]:
    """The short prompt the bot sends a trained rewriter for ``row`` (``rewrite_prompt =
    "rewrite_trained"``, the default history budget): recorded from ``rewrite_question`` itself, so
    the training prompt and the bot's are one rendering."""
    model = _Answers("")
    with _quiet():
        rewrite_question(
            row.question,
            row.messages,
            model,
            prompt_dir,
            force=True,
            history_tokens=_BUDGET["rewrite_history_tokens"],
            message_tokens=_BUDGET["rewrite_message_tokens"],
            prompt=TRAINED_PROMPT,
        )
    if model.sent is None:
        raise FinetuneError(f"{row.origin}: no history, so the bot would never ask the rewriter")
    return model.sent


def is_rewriter_data(path: str | Path, prompt_dir=None) -> bool:
    """Whether the chat SFT file ``path`` trains a rewriter: its first example's system message is
    the trained rewrite prompt's (what ``write_rewrite_data`` writes), in either language."""
    try:
        with Path(path).open(encoding="utf-8") as lines:
            first = json.loads(next((line for line in lines if line.strip()), "{}"))
        system = first["messages"][0]["content"]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return False
    samples = (
        RewriteRow("zh", "", "它呢？", "甲呢？", ("甲是什么？", "一种东西。"), lang="zh"),
        RewriteRow("en", "", "And it?", "And Alpha?", ("What is Alpha?", "A thing."), lang="en"),
    )
    return any(prompt_messages(row, prompt_dir)[0].content == system for row in samples)


def sft_record(row: RewriteRow, prompt_dir=None) -> dict[str, Any]:
    """``{"messages": [system, user, assistant]}``, the shape ``ragbot finetune prepare`` writes."""
    messages = prompt_messages(row, prompt_dir)
    return {"messages": [m.to_dict() for m in messages] + [{"role": "assistant", "content": assistant_text(row)}]}


# --------------------------------------------------------------------------- self-consistency
@contextlib.contextmanager
def _quiet(name: str = "ragbot.conversation.rewrite") -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class _Answers(ChatModel):
    """A model whose answer is ``text``: what the bot makes of an answer, without a model
    (``ChatModel.stream`` cuts it where the bot's ``until`` would stop a real one)."""

    name = "given"

    def __init__(self, text: str):
        self.text = text
        self.sent: list[Message] | None = None  # the messages of the last call

    def _stream(self, messages: Sequence[Message], generation: GenerationSettings) -> Iterator[Delta]:
        self.sent = list(messages)
        yield Delta(text=self.text)


def bot_standalone(row: RewriteRow, text: str, gate: bool = False) -> tuple[str, str]:
    """(standalone question, why) the bot makes of the model output ``text`` for ``row``:
    ``rewrite_question`` with a scripted model that answers ``text`` (and stops where the bot
    stops it). ``gate``: also apply the cheap check that skips the model."""
    with _quiet():
        result = rewrite_question(
            row.question,
            row.messages,
            _Answers(text),
            force=not gate,
            history_tokens=_BUDGET["rewrite_history_tokens"],
            message_tokens=_BUDGET["rewrite_message_tokens"],
        )
    return result.question, result.reason


@dataclass
class Consistency:
    """How often the bot's post-processing of the constructed answers gives the gold rewrite."""

    rows: int = 0
    exact: int = 0  # identical strings
    em: int = 0  # equal after the evaluation's normalisation (punctuation, spaces, case)
    positives: int = 0
    positives_exact: int = 0
    negatives: int = 0
    negatives_kept: int = 0
    failures: Counter = field(default_factory=Counter)
    inconsistent: set[str] = field(default_factory=set)  # origins of the rows the bot does not give back
    examples: dict[str, list[dict[str, str]]] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.exact / self.rows if self.rows else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "exact": self.exact,
            "exact_rate": round(self.rate, 4),
            "em_normalised_rate": round(self.em / self.rows, 4) if self.rows else 0.0,
            "positives": self.positives,
            "positives_exact_rate": round(self.positives_exact / self.positives, 4) if self.positives else None,
            "negatives": self.negatives,
            "negatives_kept_rate": round(self.negatives_kept / self.negatives, 4) if self.negatives else None,
            "failures": dict(self.failures.most_common()),
        }

    def summary(self) -> str:
        d = self.to_dict()
        rate, em = 100 * self.rate, 100 * d["em_normalised_rate"]
        text = f"self-consistency {rate:.1f}% exact of {self.rows} rows (normalised EM {em:.1f}%)"
        if self.positives:
            text += f"; rewrites {100 * d['positives_exact_rate']:.1f}% of {self.positives}"
        if self.negatives:
            text += f"; complete questions kept {100 * d['negatives_kept_rate']:.1f}% of {self.negatives}"
        return text


def failure_class(row: RewriteRow, got: str, why: str) -> str:
    """A short name for why the bot's result differs from the gold rewrite."""
    if why.startswith("skipped:"):
        return "the cheap check skipped the model (" + why.removeprefix("skipped: ") + ")"
    if why.startswith("rejected: introduces"):
        return "guard: the rewrite has a name in neither the history nor the question"
    if why.startswith("rejected: repeats"):
        return "guard: the rewrite repeats an earlier question"
    if why.startswith("rejected: leaves out"):
        return "guard: the rewrite drops most of the question's words"
    if why.startswith("rejected: pastes"):
        return "guard: the rewrite pastes a sentence of the history"
    if "adds nothing" in why:
        return "the rewrite adds no content word (particles, spaces, rewording): kept as typed"
    if "comparison follow-up" in why:
        return "the comparison rule rebuilt a question the gold keeps"
    if exact_match(got, row.rewrite):
        return "differs only in punctuation or spaces"
    if "as the reasoning resolved it" in why:
        return "the referent substitution differs from the gold"
    return "other"


def self_consistency(rows: Sequence[RewriteRow], gate: bool = False, keep_examples: int = 3) -> Consistency:
    """Feed each row's constructed answer through the bot (``bot_standalone``) and count the
    results equal to the gold rewrite (for a complete question: to the question)."""
    report = Consistency()
    for row in rows:
        got, why = bot_standalone(row, assistant_text(row), gate=gate)
        report.rows += 1
        same = got == row.rewrite
        report.exact += same
        report.em += exact_match(got, row.rewrite)
        if row.negative:
            report.negatives += 1
            report.negatives_kept += same
        else:
            report.positives += 1
            report.positives_exact += same
        if not same:
            report.inconsistent.add(row.origin)
            kind = failure_class(row, got, why)
            report.failures[kind] += 1
            shown = report.examples.setdefault(kind, [])
            if len(shown) < keep_examples:
                shown.append({"origin": row.origin, "question": row.question, "gold": row.rewrite, "bot": got})
    return report


# --------------------------------------------------------------------------- writing the files
@dataclass
class RewriteDataReport:
    out: Path
    files: dict[str, int]
    skipped: list[Skipped]
    consistency: Consistency
    manifest: dict[str, Any]

    def summary(self) -> str:
        written = ", ".join(f"{name} {n}" for name, n in self.files.items())
        line = f"Wrote {written} to {self.out}; {self.consistency.summary()}"
        if self.skipped:
            reasons = Counter(s.reason.split(" (")[0].split(" as ")[0] for s in self.skipped)
            line += f"; skipped {len(self.skipped)} ({', '.join(f'{r}: {n}' for r, n in reasons.items())})"
        return line


def gate_decision(row: RewriteRow) -> RewriteDecision:
    """The cheap check's decision for ``row``, on the history as the bot holds it."""
    return needs_rewrite(row.question, [m.content for m in row.messages])


def sample_rows(rows: Sequence[RewriteRow], sample: int | None, seed: int) -> list[RewriteRow]:
    """A seeded sample of ``sample`` rows, kept in file order (all rows when None or larger)."""
    if sample is None or sample >= len(rows):
        return list(rows)
    chosen = set(random.Random(seed).sample(range(len(rows)), sample))
    return [r for i, r in enumerate(rows) if i in chosen]


def split_groups(rows: Sequence[RewriteRow], valid_share: float, seed: int) -> set[str]:
    """The dialogs that go to validation: a seeded shuffle of the distinct groups."""
    return validation_groups([r.group for r in rows], valid_share, seed)


def write_rewrite_data(
    source: str | Path,
    out: str | Path,
    *,
    sample: int | None = None,
    seed: int = 0,
    valid_share: float = 0.1,
    drop_inconsistent: bool = False,
    gated: bool = False,
    prompt_dir=None,
) -> RewriteDataReport:
    """Write ``sft.train.jsonl`` and ``sft.valid.jsonl`` for a trained rewriter from a rewrite set,
    and ``rewrite_data.json``: the source's sha256, the counts, the rows skipped and the
    self-consistency of the sample (measured before ``drop_inconsistent`` leaves out the rows
    whose gold rewrite the bot's guards would not give back). ``gated`` keeps only the rows the
    cheap check sends to the model: those are the only questions a trained rewriter is asked in
    a chat. Without it, half of the Su et al. rows are complete questions that the check already
    keeps, and a model trained on them learns to answer that the question is complete."""
    if not 0 <= valid_share < 1:
        raise FinetuneError(f"valid_share must be at least 0 and below 1; got {valid_share}")
    if sample is not None and sample < 1:
        raise FinetuneError(f"sample must be at least 1; got {sample}")
    source = Path(source).expanduser()
    rows, skipped = read_rewrite_rows(source)
    if not rows:
        reasons = ", ".join(f"{s.origin}: {s.reason}" for s in skipped[:3])
        raise TrainingFileError(f"no usable rewrite rows in {source}; {reasons}")
    chosen, seen = [], {}
    records: dict[str, dict[str, Any]] = {}
    for row in sample_rows(rows, sample, seed):
        record = sft_record(row, prompt_dir)
        key = json.dumps(record, ensure_ascii=False, sort_keys=True)
        if key in seen:  # e.g. a row whose question is its rewrite, and its negative twin
            skipped.append(Skipped(row.origin, f"the same example as {seen[key]}"))
            continue
        seen[key] = row.origin
        chosen.append(row)
        records[row.origin] = record
    consistency = self_consistency(chosen)
    with_gate = self_consistency(chosen, gate=True)
    if drop_inconsistent:
        for row in chosen:
            if row.origin in consistency.inconsistent:
                skipped.append(Skipped(row.origin, "the bot would not give back its gold rewrite"))
        chosen = [r for r in chosen if r.origin not in consistency.inconsistent]
    if gated:
        decisions = {row.origin: gate_decision(row) for row in chosen}
        for row in chosen:
            if not decisions[row.origin].needed:
                skipped.append(Skipped(row.origin, f"the cheap check skips the model ({decisions[row.origin].reason})"))
        chosen = [r for r in chosen if decisions[r.origin].needed]
    valid = split_groups(chosen, valid_share, seed)
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, int] = {}
    for part in ("train", "valid"):
        path = out / f"sft.{part}.jsonl"
        path.unlink(missing_ok=True)
        lines = [records[r.origin] for r in chosen if (r.group in valid) == (part == "valid")]
        if lines:
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines), encoding="utf-8")
            files[path.name] = len(lines)
    manifest = {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "task": "rewrite",
        "source": str(source),
        "source_sha256": sha256_file(source),
        "prompts": [f"{name}.txt" for name in PROMPTS.values()],
        "rows_read": len(rows),
        "rows_skipped": len(skipped),
        "sample": sample,
        "seed": seed,
        "valid_share": valid_share,
        "drop_inconsistent": drop_inconsistent,
        "gated": gated,
        "split": {
            "by": "dialog (conv_id; else the row, with its -neg twin)",
            "train_dialogs": len({r.group for r in chosen} - valid),
            "valid_dialogs": len(valid),
        },
        "examples": {
            "total": len(chosen),
            "positives": sum(not r.negative for r in chosen),
            "negatives": sum(r.negative for r in chosen),
        },
        "files": files,
        "self_consistency": consistency.to_dict(),
        "self_consistency_with_gate": with_gate.to_dict(),
        "not_given_back": consistency.examples,  # a few rows of each failure class: question, gold, bot
        "skipped": [{"origin": s.origin, "reason": s.reason} for s in skipped],
    }
    (out / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return RewriteDataReport(out, files, skipped, consistency, manifest)
