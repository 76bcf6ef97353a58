"""``evaluate``: the bot over a question set, one scored row per turn (``scoring``), then the
summary (``summary``) and what a run writes (``report``).

With ``out``, each finished row is appended to ``results.jsonl`` at once, so an interrupted
run resumes where it stopped (rows whose id is already there are not redone); a row that
fails is recorded with ``status: "failed"`` and its reason, and the run goes on."""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ragbot.config import Settings, load_settings
from ragbot.conversation.bot import RagBot
from ragbot.errors import EvaluationError, RagbotError
from ragbot.evaluation.question_sets import BadRow, EvalCase, QuestionSet, questions_from_rows, read_questions, select
from ragbot.evaluation.scoring import TurnEvaluator, failed_row
from ragbot.evaluation.summary import summarise
from ragbot.models.chat import ChatModel, Message

RESULTS_FILE, SUMMARY_FILE, RUN_FILE = "results.jsonl", "summary.json", "run.json"


@dataclass
class EvalRun:
    """What ``evaluate`` returns: one dict per turn (as in ``results.jsonl``) and the summary."""

    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    out: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r.get("status") == "failed"]


# --------------------------------------------------------------------------- a run
def evaluate(
    questions: str | Path | QuestionSet | Iterable[Mapping[str, Any]],
    bot: RagBot | None = None,
    *,
    out: str | Path | None = None,
    settings: Settings | None = None,
    generate: bool = True,
    rewrite_model: bool = True,
    replay: bool = False,
    ks: Sequence[int] = (1, 5, 10),
    where: Mapping[str, Any] | None = None,
    sample: int | None = None,
    seed: int = 0,
    limit: int | None = None,
    judge: ChatModel | str | None = None,
    group_by: str | None = None,
    fresh: bool = False,
    retry_failed: bool = False,
    progress: bool | None = None,
    report: bool = True,
) -> EvalRun:
    """Evaluate ``bot`` (default: ``RagBot.load(settings)``) on ``questions`` (a .jsonl/.csv
    path, a ``QuestionSet`` or row dicts) and return the per-row results and the summary.

    ``generate=False`` stops after retrieval (rewrite, retrieval and routing are still
    measured); ``rewrite_model=False`` uses the question as typed; ``replay=True`` builds each
    turn's history from the bot's own earlier answers in the same ``conv_id``. ``where``,
    ``sample`` (seeded) and ``limit`` pick the rows; ``group_by`` names a field (e.g. ``kind``)
    to split the routing and retrieval figures by. With ``out``, rows are appended to
    ``out/results.jsonl`` as they finish and a rerun resumes (``fresh=True`` starts over,
    ``retry_failed=True`` redoes failed rows); ``report=True`` also writes ``summary.json``,
    ``report.md`` and the plots there.
    """
    if replay and not generate:
        raise EvaluationError(
            "--replay builds the history from the bot's answers, so it needs generation; "
            "drop --no-generate (or drop --replay)"
        )
    qs = _question_set(questions)
    chosen = select(qs, where=where, sample=sample, seed=seed, limit=limit)
    if not len(chosen):
        raise EvaluationError(f"no rows of {qs.source} to evaluate" + (f" match {dict(where)}" if where else ""))
    if bot is None:
        settings = settings or load_settings()
        bot = RagBot.load(settings)
    if isinstance(judge, str):
        import dataclasses

        from ragbot.models.chat import make_chat_model

        # the judge is a plain model: no LoRA adapter meant for the answers
        judge = make_chat_model(dataclasses.replace(bot.settings, answer_model=judge, lora_path=None), "answer")
    evaluator = TurnEvaluator(bot, generate=generate, rewrite_model=rewrite_model, ks=ks, judge=judge)

    out_dir = Path(out).expanduser() if out is not None else None
    fingerprint = {
        "questions": qs.source,
        "generate": generate,
        "rewrite_model": evaluator.bot.rewrite_model.name if rewrite_model else None,
        "answer_model": evaluator.bot.answer_model.name if generate else None,
        "replay": replay,
        "embedder": bot.kb.embedder.name,
        "index": bot.kb.location,
        "threshold": bot.kb.threshold,
        "ks": list(evaluator.ks),
    }
    previous: dict[str, dict[str, Any]] = {}
    if out_dir is not None:
        previous = _prepare_out(out_dir, fingerprint, fresh)

    started = time.perf_counter()
    rows_by_id: dict[str, dict[str, Any]] = {}
    todo: list[EvalCase | BadRow] = []
    order = sorted([*chosen.cases, *chosen.bad_rows], key=lambda c: c.line)
    for case in order:
        done = previous.get(case.id)
        if done is not None and (done.get("status") == "ok" or not retry_failed):
            rows_by_id[case.id] = done
        else:
            todo.append(case)
    resumed = len(rows_by_id)

    show = sys.stderr.isatty() if progress is None else progress
    sink = open(out_dir / RESULTS_FILE, "a", encoding="utf-8") if out_dir is not None else None
    failures = 0
    try:
        bar = tqdm(total=len(todo), desc="Evaluating", unit="turn", disable=not show, file=sys.stderr)
        with bar:
            for case in todo:
                if isinstance(case, BadRow):
                    row = failed_row(case, case.reason)
                else:
                    try:
                        history = _replay_history(case, order, rows_by_id) if replay else None
                        row = evaluator.evaluate(case, history)
                    except (KeyboardInterrupt, SystemExit):
                        raise
                    except RagbotError as exc:
                        row = failed_row(case, f"{type(exc).__name__}: {exc}")
                    except Exception as exc:  # a bug or a library failure: record it, keep going
                        row = failed_row(case, f"{type(exc).__name__}: {exc}")
                rows_by_id[case.id] = row
                failures += row["status"] == "failed"
                if sink is not None:
                    sink.write(json.dumps(jsonable(row), ensure_ascii=False) + "\n")
                    sink.flush()
                bar.update(1)
                if failures:
                    bar.set_postfix(failed=failures)
    finally:
        if sink is not None:
            sink.close()

    rows = [rows_by_id[c.id] for c in order]
    summary = summarise(rows, evaluator.ks, group_by)
    summary["run"] = {
        **fingerprint,
        "rewrite_model_on": rewrite_model,
        "where": dict(where) if where else None,
        "sample": sample,
        "seed": seed if sample is not None else None,
        "limit": limit,
        "rows_in_file": len(qs),
        "resumed_rows": resumed,
        "seconds": round(time.perf_counter() - started, 2),
        "top_k": bot.settings.top_k,
    }
    summary = jsonable(summary)
    run = EvalRun(rows, summary, out_dir)
    if out_dir is not None:
        (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        run.files["results"] = out_dir / RESULTS_FILE
        run.files["summary"] = out_dir / SUMMARY_FILE
        if report:
            from ragbot.evaluation.report import write_report

            run.files.update(write_report(run))
    return run


def _question_set(questions) -> QuestionSet:
    if isinstance(questions, QuestionSet):
        return questions
    if isinstance(questions, (str, Path)):
        return read_questions(questions)
    return questions_from_rows(list(questions))


def _replay_history(case: EvalCase, order: Sequence[EvalCase | BadRow], done: Mapping[str, dict]) -> list[Message]:
    """The bot's own conversation so far: earlier rows of the same conversation, answered."""
    if case.conv_id is None:
        return []
    history: list[Message] = []
    for other in order:
        if other is case:
            break
        if not isinstance(other, EvalCase) or other.conv_id != case.conv_id:
            continue
        row = done.get(other.id)
        if row is None or row.get("status") != "ok" or "answer" not in row:
            continue  # a failed earlier turn leaves a gap, as a real user would see
        history += [Message("user", other.question), Message("assistant", row["answer"]["text"])]
    return history


def _prepare_out(out_dir: Path, fingerprint: dict[str, Any], fresh: bool) -> dict[str, dict[str, Any]]:
    """Create ``out_dir``; return the rows of an earlier run of the same evaluation in it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results, run_file = out_dir / RESULTS_FILE, out_dir / RUN_FILE
    if fresh:
        results.unlink(missing_ok=True)
    previous = load_results(results) if results.exists() else {}
    if previous and run_file.exists():
        try:
            before = json.loads(run_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            before = {}
        differ = [k for k in fingerprint if k in before and before[k] != fingerprint[k]]
        if differ:
            what = "; ".join(f"{k} was {before[k]!r}, now {fingerprint[k]!r}" for k in differ)
            raise EvaluationError(
                f"{out_dir} holds results of a different evaluation ({what}); "
                "use another --out, or --fresh to discard them"
            )
    run_file.write_text(json.dumps(fingerprint, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return previous


def load_results(path: str | Path) -> dict[str, dict[str, Any]]:
    """Rows of a ``results.jsonl`` by id (a later row for the same id wins). A line cut off by
    an interrupted write is dropped from the file, so appending continues cleanly."""
    path = Path(path)
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open(path, "r+b") as fh:
            fh.truncate(cut)
        data = data[:cut]
    rows: dict[str, dict[str, Any]] = {}
    for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise EvaluationError(
                f"{path}, line {number}: not valid JSON; fix or delete that line, or rerun with --fresh"
            ) from None
        rows[str(row.get("id"))] = row
    return rows


def load_run(out_dir: str | Path) -> EvalRun:
    """A finished run from its output folder (``summary.json`` and ``results.jsonl``)."""
    out_dir = Path(out_dir).expanduser()
    summary_path = out_dir / SUMMARY_FILE
    if not summary_path.is_file():
        raise EvaluationError(f"{out_dir} has no {SUMMARY_FILE}; give the --out folder of a finished `ragbot eval`")
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    rows = list(load_results(out_dir / RESULTS_FILE).values()) if (out_dir / RESULTS_FILE).exists() else []
    return EvalRun(rows, summary, out_dir)


def jsonable(value: Any) -> Any:
    """NaN and infinities as null, so the files are strict JSON."""
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


__all__ = [
    "EvalRun",
    "EvaluationError",
    "TurnEvaluator",
    "evaluate",
    "load_results",
    "load_run",
    "jsonable",
    "summarise",
]
