"""Check a training file before paying for a job: format, roles, empty and duplicate examples,
length against the model's context, and an estimate of tokens and cost.

Three formats are recognised from the first example: chat SFT (``messages``), preference
pairs for DPO (``input`` / ``preferred_output`` / ``non_preferred_output``) and the legacy
``prompt`` / ``completion`` format. Each problem has a line number, a rule and a short reason;
``fix=True`` writes ``FILE.fixed.jsonl`` with the fixable ones repaired (duplicates and empty
examples dropped, whitespace trimmed, the legacy separator, leading space and stop added) and
checks that copy, so what is left is what still needs a person.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragbot.config import data_home
from ragbot.errors import FinetuneError, TrainingFileError
from ragbot.finetune.data import MANIFEST, SEPARATOR, STOP
from ragbot.tokens import count_tokens

MIN_EXAMPLES = 10  # OpenAI refuses a training file with fewer examples
DEFAULT_EPOCHS = 3
PRICE_FILE_NAME = "finetune-prices.toml"
BUNDLED_PRICES = Path(__file__).with_name("prices.toml")
ROLES = ("system", "user", "assistant")
CHAT, PREFERENCE, LEGACY = "chat", "preference", "prompt-completion"
# chat formatting overhead per message and per reply, as in OpenAI's token counting recipe
TOKENS_PER_MESSAGE = 3
TOKENS_PER_REPLY = 3


@dataclass(frozen=True)
class Problem:
    """One problem: the line it is on (0: the file as a whole), the rule, and why."""

    line: int
    rule: str
    message: str
    fixable: bool = False

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line else "file"
        return f"{where}: {self.message} [{self.rule}]"


@dataclass(frozen=True)
class Price:
    """What training a model costs, and the longest example it accepts."""

    model: str
    training_per_1m: float
    context: int
    encoding: str = "cl100k_base"


@dataclass(frozen=True)
class PriceTable:
    path: Path
    models: dict[str, Price]
    default_model: str
    default_legacy_model: str | None = None  # for prompt/completion files (completion models)
    checked: str = ""

    def price(self, model: str | None = None) -> Price:
        """The price of ``model``: an exact name, a prefix of one (``gpt-4o-mini``), or a model
        fine-tuned from one (``ft:gpt-4o-mini-2024-07-18:org::id``, for incremental training)."""
        name = model or self.default_model
        base = name.split(":")[1] if name.startswith("ft:") and name.count(":") >= 1 else name
        if base in self.models:
            return self.models[base]
        matches = sorted(m for m in self.models if m.startswith(base))
        if matches:
            return self.models[matches[-1]]
        raise FinetuneError(
            f"no price for model {name!r} in {self.path}; known: {', '.join(self.models)}. "
            f"Add it to a copy of the table ({data_home() / PRICE_FILE_NAME}) or pass --prices FILE"
        )


def load_prices(path: str | Path | None = None) -> PriceTable:
    """The price table: ``path``, else the user's ``data_home()/finetune-prices.toml``, else the bundled one."""
    user_copy = data_home() / PRICE_FILE_NAME
    chosen = Path(path).expanduser() if path else user_copy if user_copy.is_file() else BUNDLED_PRICES
    try:
        with open(chosen, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise FinetuneError(f"price table {chosen} does not exist; copy {BUNDLED_PRICES} and edit it") from None
    except tomllib.TOMLDecodeError as exc:
        raise FinetuneError(f"price table {chosen} is not valid TOML: {exc}") from None
    try:
        models = {
            name: Price(name, float(v["training_per_1m"]), int(v["context"]), str(v.get("encoding", "cl100k_base")))
            for name, v in raw["models"].items()
        }
        default = str(raw.get("default_model") or next(iter(models)))
        legacy = raw.get("default_legacy_model")
    except (KeyError, TypeError, ValueError, StopIteration) as exc:
        raise FinetuneError(
            f"price table {chosen} needs [models.NAME] tables with training_per_1m and context ({exc!r} is wrong)"
        ) from None
    return PriceTable(chosen, models, default, str(legacy) if legacy else None, str(raw.get("checked", "")))


@dataclass
class ValidationReport:
    """The problems of a training file, its token counts and the estimated training cost."""

    path: Path
    format: str
    examples: int
    problems: list[Problem]
    tokens: list[int]  # per example that would be trained on
    price: Price
    prices_path: Path
    epochs: int = DEFAULT_EPOCHS
    fixes: Counter = field(default_factory=Counter)  # what --fix did: reason -> count
    fixed_from: Path | None = None  # the input file, when this reports on its fixed copy

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def billed_tokens_per_epoch(self) -> int:
        """Tokens billed per epoch: each example counted up to the model's context."""
        return sum(min(t, self.price.context) for t in self.tokens)

    @property
    def cost_per_epoch(self) -> float:
        return self.billed_tokens_per_epoch * self.price.training_per_1m / 1_000_000

    @property
    def cost(self) -> float:
        return self.cost_per_epoch * self.epochs

    def token_stats(self) -> dict[str, float]:
        """total, min, mean, p95 (nearest rank) and max tokens per example."""
        if not self.tokens:
            return {"total": 0, "min": 0, "mean": 0, "p95": 0, "max": 0}
        ordered = sorted(self.tokens)
        p95 = ordered[math.ceil(0.95 * len(ordered)) - 1]
        return {
            "total": sum(ordered),
            "min": ordered[0],
            "mean": round(sum(ordered) / len(ordered), 1),
            "p95": p95,
            "max": ordered[-1],
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": str(self.path),
            "format": self.format,
            "examples": self.examples,
            "problems": [{"line": p.line, "rule": p.rule, "message": p.message} for p in self.problems],
            "tokens": self.token_stats(),
            "billed_tokens_per_epoch": self.billed_tokens_per_epoch,
            "model": self.price.model,
            "training_per_1m": self.price.training_per_1m,
            "epochs": self.epochs,
            "cost_per_epoch": round(self.cost_per_epoch, 6),
            "cost": round(self.cost, 6),
            "prices": str(self.prices_path),
            "fixes": dict(self.fixes),
        }

    def summary(self) -> str:
        s = self.token_stats()
        lines = []
        if self.fixed_from is not None:
            done = ", ".join(f"{reason}: {n}" for reason, n in self.fixes.items()) or "nothing to fix"
            lines.append(f"Fixed copy of {self.fixed_from}: {self.path} ({done})")
        lines += [f"{self.path}: {self.format} format, {self.examples} examples, {len(self.problems)} problem(s)"]
        lines += [f"  {p}" + (" (--fix can fix this)" if p.fixable else "") for p in self.problems]
        lines.append(
            f"tokens per example: min {s['min']:,}, mean {s['mean']:,}, p95 {s['p95']:,}, max {s['max']:,}; "
            f"total {s['total']:,}"
        )
        lines.append(
            f"billed per epoch: {self.billed_tokens_per_epoch:,} tokens; estimated training cost for "
            f"{self.price.model} at ${self.price.training_per_1m:g} per 1M tokens: {_dollars(self.cost_per_epoch)} "
            f"per epoch, {_dollars(self.cost)} for {self.epochs} epochs (prices from {self.prices_path}; they change)"
        )
        return "\n".join(lines)


def _dollars(amount: float) -> str:
    return f"${amount:,.4f}" if amount < 1 else f"${amount:,.2f}"


# --------------------------------------------------------------------------- checks
@dataclass
class _Checked:
    """One line after checking: its problems, its tokens, and what a fixed copy keeps."""

    problems: list[Problem] = field(default_factory=list)
    tokens: int = 0
    keep: Any = None  # the fixed record, a raw line to copy unchanged, or None to drop
    fixes: list[str] = field(default_factory=list)


def detect_format(record: dict[str, Any]) -> str | None:
    if "messages" in record:
        return CHAT
    if "input" in record or "preferred_output" in record:
        return PREFERENCE
    if "prompt" in record or "completion" in record:
        return LEGACY
    return None


def _message_tokens(messages: Sequence[dict[str, Any]], encoding: str) -> int:
    return sum(TOKENS_PER_MESSAGE + count_tokens(str(m.get("content") or ""), encoding) for m in messages)


def _check_messages(
    messages: Any, line: int, last_role: str, what: str = "messages"
) -> tuple[list[Problem], list[dict[str, Any]] | None, list[str]]:
    """Problems of a message list, and the list with whitespace trimmed (None: empty example)."""
    if not isinstance(messages, list) or not messages:
        return [Problem(line, "empty-example", f"no {what}; each example needs a non-empty list", True)], None, []
    problems: list[Problem] = []
    fixes: list[str] = []
    cleaned = []
    for n, m in enumerate(messages, 1):
        if not isinstance(m, dict):
            problems.append(Problem(line, "not-object", f"{what} {n} is not an object with role and content"))
            cleaned.append(m)
            continue
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            problems.append(
                Problem(line, "unknown-role", f"{what} {n} has unknown role {role!r}; use {'/'.join(ROLES)}")
            )
        if not isinstance(content, str) or not content.strip():
            problems.append(Problem(line, "empty-content", f"{what} {n} ({role}) has no content"))
        elif content != content.strip():
            problems.append(Problem(line, "whitespace", f"{what} {n} ({role}) starts or ends with whitespace", True))
            m = {**m, "content": content.strip()}
            fixes.append("whitespace trimmed")
        if "weight" in m and (role != "assistant" or m["weight"] not in (0, 1)):
            problems.append(Problem(line, "weight", f"{what} {n}: weight must be 0 or 1, on assistant messages only"))
        cleaned.append(m)
    if all(isinstance(m, dict) and not str(m.get("content") or "").strip() for m in messages):
        return [Problem(line, "empty-example", "every message is empty", True)], None, []
    roles = [m.get("role") for m in messages if isinstance(m, dict)]
    if roles and all(r in ROLES for r in roles) and not _roles_in_order(roles, last_role):
        problems.append(
            Problem(
                line,
                "role-order",
                f"roles {', '.join(roles)}: expected an optional system message, then user and assistant "
                f"in turn, ending with {last_role}",
            )
        )
    return problems, cleaned, fixes


def _roles_in_order(roles: Sequence[str], last_role: str) -> bool:
    turns = roles[1:] if roles[0] == "system" else roles
    expected = [("user", "assistant")[i % 2] for i in range(len(turns))]
    return bool(turns) and list(turns) == expected and turns[-1] == last_role


def _check_chat(record: dict[str, Any], line: int, price: Price) -> _Checked:
    problems, messages, fixes = _check_messages(record.get("messages"), line, "assistant")
    if messages is None:
        return _Checked(problems, fixes=["empty example dropped"])
    tokens = _message_tokens(messages, price.encoding) + TOKENS_PER_REPLY
    return _Checked(problems, tokens, {**record, "messages": messages}, fixes)


def _check_preference(record: dict[str, Any], line: int, price: Price) -> _Checked:
    source = record.get("input")
    problems, messages, fixes = _check_messages(
        source.get("messages") if isinstance(source, dict) else None, line, "user", "input messages"
    )
    if messages is None:
        return _Checked(problems, fixes=["empty example dropped"])
    outputs = {}
    for key in ("preferred_output", "non_preferred_output"):
        value = record.get(key)
        ok = (
            isinstance(value, list)
            and len(value) == 1
            and isinstance(value[0], dict)
            and value[0].get("role") == "assistant"
            and isinstance(value[0].get("content"), str)
            and value[0]["content"].strip()
        )
        if not ok:
            problems.append(Problem(line, "output", f"{key} must be a list of one assistant message with content"))
            continue
        outputs[key] = [{**value[0], "content": value[0]["content"].strip()}]
        if value[0]["content"] != value[0]["content"].strip():
            problems.append(Problem(line, "whitespace", f"{key} starts or ends with whitespace", True))
            fixes.append("whitespace trimmed")
    if len(outputs) == 2 and outputs["preferred_output"] == outputs["non_preferred_output"]:
        problems.append(Problem(line, "same-outputs", "the preferred and non-preferred outputs are the same"))
    tokens = _message_tokens(messages, price.encoding) + TOKENS_PER_REPLY
    tokens += sum(count_tokens(v[0]["content"], price.encoding) for v in outputs.values())
    return _Checked(problems, tokens, {**record, "input": {**source, "messages": messages}, **outputs}, fixes)


def _check_legacy(record: dict[str, Any], line: int, price: Price, separator: str, stop: str) -> _Checked:
    prompt, completion = record.get("prompt"), record.get("completion")
    if not isinstance(prompt, str) or not isinstance(completion, str) or not prompt.strip() or not completion.strip():
        return _Checked(
            [Problem(line, "empty-example", "empty prompt or completion", True)], fixes=["empty example dropped"]
        )
    problems, fixes = [], []
    if not prompt.endswith(separator):
        problems.append(Problem(line, "separator", f"the prompt does not end with the separator {separator!r}", True))
        prompt += separator
        fixes.append("separator added")
    if not completion.startswith(" "):
        problems.append(Problem(line, "leading-space", "the completion does not start with a space", True))
        completion = " " + completion
        fixes.append("leading space added")
    if not completion.endswith(stop):
        problems.append(Problem(line, "stop", f"the completion does not end with the stop sequence {stop!r}", True))
        completion += stop
        fixes.append("stop sequence added")
    tokens = count_tokens(prompt, price.encoding) + count_tokens(completion, price.encoding)
    return _Checked(problems, tokens, {**record, "prompt": prompt, "completion": completion}, fixes)


def legacy_markers(path: Path) -> tuple[str, str]:
    """The separator and stop sequence: from ``prepare.json`` beside the file, else the defaults."""
    manifest = path.parent / MANIFEST
    try:
        legacy = json.loads(manifest.read_text(encoding="utf-8"))["legacy"]
        return str(legacy["separator"]), str(legacy["stop"])
    except (OSError, ValueError, KeyError, TypeError):
        return SEPARATOR, STOP


def _read_lines(path: Path) -> list[tuple[int, str]]:
    if not path.is_file():
        raise TrainingFileError(f"training file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TrainingFileError(f"{path} is not UTF-8 text ({exc.reason}); save it as UTF-8") from None
    # split on newlines only: str.splitlines() would also split inside text holding U+2028
    lines = [(n, t.rstrip("\r")) for n, t in enumerate(text.split("\n"), 1) if t.strip()]
    if not lines:
        raise TrainingFileError(f"{path} is empty; a training file holds one JSON example per line")
    return lines


def _check_file(
    path: Path, table: PriceTable, model: str | None, min_examples: int
) -> tuple[str, Price, list[Problem], list[int], list[Any], Counter]:
    """(format, price, problems, tokens per example, what a fixed copy keeps line by line, fixes);
    without a model, a prompt/completion file is priced for the table's completion model."""
    lines = _read_lines(path)
    parsed: list[tuple[int, str, Any]] = []
    problems: list[Problem] = []
    for n, text in lines:
        try:
            parsed.append((n, text, json.loads(text)))
        except json.JSONDecodeError as exc:
            problems.append(Problem(n, "json", f"not valid JSON ({exc.msg} at column {exc.colno})"))
            parsed.append((n, text, None))
    formats = [detect_format(r) for _, _, r in parsed if isinstance(r, dict)]
    fmt = next((f for f in formats if f), None)
    if fmt is None and formats:
        first = next(r for _, _, r in parsed if isinstance(r, dict))
        raise TrainingFileError(
            f"{path}: cannot tell the format from keys {', '.join(first) or 'none'}; expected 'messages' (chat), "
            "'input' with 'preferred_output' and 'non_preferred_output' (preference), or 'prompt' and 'completion'"
        )
    price = table.price(model or (table.default_legacy_model if fmt == LEGACY else None))
    separator, stop = legacy_markers(path)
    tokens: list[int] = []
    kept: list[Any] = []
    fixes: Counter = Counter()
    seen: dict[str, int] = {}
    for n, text, record in parsed:
        if record is None:
            kept.append(text)  # broken JSON cannot be repaired by a program: copied as it is
            continue
        if not isinstance(record, dict):
            problems.append(Problem(n, "not-object", f"expected a JSON object, got {type(record).__name__}"))
            kept.append(text)
            continue
        if detect_format(record) != fmt:
            problems.append(Problem(n, "format", f"not a {fmt} example like the rest of the file"))
            kept.append(text)
            continue
        if fmt == CHAT:
            checked = _check_chat(record, n, price)
        elif fmt == PREFERENCE:
            checked = _check_preference(record, n, price)
        else:
            checked = _check_legacy(record, n, price, separator, stop)
        problems += checked.problems
        if checked.keep is None:
            fixes.update(checked.fixes)
            continue
        key = json.dumps(checked.keep, sort_keys=True, ensure_ascii=False)
        if key in seen:
            problems.append(Problem(n, "duplicate", f"the same example as line {seen[key]}", True))
            fixes["duplicate dropped"] += 1
            continue
        seen[key] = n
        fixes.update(checked.fixes)
        if checked.tokens > price.context:
            problems.append(
                Problem(n, "too-long", f"{checked.tokens:,} tokens; {price.model} accepts at most {price.context:,}")
            )
        tokens.append(checked.tokens)
        kept.append(checked.keep)
    if len(tokens) < min_examples:
        problems.append(
            Problem(0, "too-few", f"{len(tokens)} usable examples; fine-tuning needs at least {min_examples}")
        )
    problems.sort(key=lambda p: (p.line == 0, p.line))  # whole-file problems last
    return fmt or "unknown", price, problems, tokens, kept, fixes


def is_validation_file(path: Path) -> bool:
    """Validation files (``*.valid.jsonl``, ``*validation*``) may be small: no minimum applies."""
    return "valid" in path.name.lower()


def fixed_path(path: Path) -> Path:
    name = path.name.removesuffix(".jsonl") if path.name.endswith(".jsonl") else path.stem
    return path.with_name(f"{name}.fixed.jsonl")


def validate_file(
    path: str | Path,
    *,
    model: str | None = None,
    prices: str | Path | None = None,
    epochs: int = DEFAULT_EPOCHS,
    fix: bool = False,
    min_examples: int | None = None,
) -> ValidationReport:
    """Check ``path``; with ``fix``, write ``FILE.fixed.jsonl`` and report on that copy."""
    path = Path(path).expanduser()
    if epochs < 1:
        raise FinetuneError(f"epochs must be at least 1; got {epochs}")
    table = load_prices(prices)
    table.price(model)  # an unknown model is reported before any work
    if min_examples is None:
        min_examples = 1 if is_validation_file(path) else MIN_EXAMPLES
    fmt, price, problems, tokens, kept, fixes = _check_file(path, table, model, min_examples)
    if not fix:
        return ValidationReport(path, fmt, len(tokens), problems, tokens, price, table.path, epochs)
    if not kept:
        raise TrainingFileError(f"{path}: nothing is left after fixing ({', '.join(fixes)}); every example was dropped")
    target = fixed_path(path)
    target.write_text(
        "".join((k if isinstance(k, str) else json.dumps(k, ensure_ascii=False)) + "\n" for k in kept),
        encoding="utf-8",
    )
    fmt, price, problems, tokens, _, _ = _check_file(target, table, model, min_examples)
    return ValidationReport(target, fmt, len(tokens), problems, tokens, price, table.path, epochs, fixes, path)
