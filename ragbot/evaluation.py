"""Batch evaluation: run the bot over a question set and measure each stage against the gold.

``evaluate(questions, bot)`` runs every turn through the same engine as the chat (rewrite ->
retrieve -> route -> generate) and scores what the row has gold for:

* rewrite: exact match, BLEU-4, ROUGE-L against the gold ``rewrite``; the share of
  already-standalone questions left unchanged; model calls made and skipped by the cheap
  ``needs_rewrite`` check; and the same scores for the question as typed, as the baseline;
* retrieval: recall@k and MRR of ``gold_passage_ids`` for three queries side by side -
  the question as typed, the bot's standalone question, and the gold query (the ceiling);
* routing: grounded vs fallback against ``expected_route``;
* answers: token-F1 and embedding cosine against the good ``answer``, and an LLM judge's
  1-5 score when a judge model is given;
* cost: tokens, model calls and seconds per stage.

With ``out``, each finished row is appended to ``results.jsonl`` at once, so an interrupted
run resumes where it stopped (rows whose id is already there are not redone); a row that
fails is recorded with ``status: "failed"`` and its reason, and the run goes on.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ragbot import metrics
from ragbot.bot import LABELS, RagBot
from ragbot.chat_models import ChatModel, GenerationSettings, Message
from ragbot.config import Settings, load_settings
from ragbot.errors import EvaluationError, ModelError, RagbotError
from ragbot.knowledge_base import SearchResult
from ragbot.prompts import load_prompt
from ragbot.question_sets import BadRow, EvalCase, QuestionSet, questions_from_rows, read_questions, select
from ragbot.retrieval_eval import doc_ranking, first_gold_rank
from ragbot.rewrite import RewriteResult, is_chinese, needs_rewrite

QUERY_KINDS = ("typed", "rewritten", "gold")
STAGES = ("rewrite", "retrieval", "generation")
RESULTS_FILE, SUMMARY_FILE, RUN_FILE = "results.jsonl", "summary.json", "run.json"
# Boolean fields of a row that split the retrieval figures into subsets (KdConv marks the
# turns whose entity is only reachable through the history).
SUBSET_FIELDS = ("entity_in_question",)
_JUDGE_SCORE = re.compile(r"(?:score|评分)\s*[:：]\s*\**\s*([1-5])", re.IGNORECASE)


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


# --------------------------------------------------------------------------- one turn
class TurnEvaluator:
    """Runs one turn through the bot and scores it. Stateless between turns."""

    def __init__(
        self,
        bot: RagBot,
        generate: bool = True,
        rewrite_model: bool = True,
        ks: Sequence[int] = (1, 5, 10),
        judge: ChatModel | None = None,
    ):
        if not ks or min(ks) < 1:
            raise EvaluationError(f"every k must be at least 1; got ks={list(ks)}")
        if not rewrite_model and bot.settings.rewrite:
            # the engine itself skips the rewrite, so retrieval and the answer use the typed question
            bot = RagBot(bot.kb, bot.answer_model, bot.rewrite_model, bot.settings.replace(rewrite=False), bot._store)
        self.bot = bot
        self.generate = generate
        self.rewrite_model = rewrite_model
        self.ks = tuple(sorted(set(ks)))
        self.judge = judge

    @property
    def kb(self):
        return self.bot.kb

    @property
    def depth(self) -> int:
        return max(self.ks)

    def evaluate(self, case: EvalCase, history: Sequence[Message] | None = None) -> dict[str, Any]:
        """The result row of ``case``; raises on failure (the caller records it)."""
        history = list(case.messages if history is None else history)
        question = case.question
        texts = [m.content for m in history]
        check = needs_rewrite(question, texts)
        searches: dict[str, SearchResult] = {}
        row: dict[str, Any] = _row_head(case)
        row["history_turns"] = len(history) // 2

        # the same steps as the chat: prepare (memory, rewrite, retrieval, route), then generate
        turn = self.bot.prepare(question, history, k=self.depth * 3)
        if turn.search is not None:
            searches[turn.standalone_question] = turn.search
        answer = None
        if self.generate:
            *_, answer = self.bot.generate(turn)
        rewritten = turn.rewrite or RewriteResult(question, question, reason="memory question")
        route, standalone = turn.route, turn.standalone_question or question
        top_hits = turn.search.hits if turn.search else []
        threshold = turn.search.threshold if turn.search else self.kb.threshold
        if answer is not None:
            timings = {k: v for k, v in answer.timings.items() if k in (*STAGES, "total", "first_token")}
            usage = {stage: u.to_dict() for stage, u in answer.usage.items()}
        else:
            timings = {**turn.timings, "total": time.perf_counter() - turn.started}
            usage = {"rewrite": rewritten.usage.to_dict()} if turn.rewrite else {}

        row["rewrite"] = self._rewrite_part(case, rewritten, check)
        row["retrieval"] = self._retrieval_part(case, standalone, searches)
        top_score = top_hits[0].score if top_hits else None
        row["routing"] = {
            "predicted": route,
            "expected": case.expected,
            "expected_inferred": case.expected_route is None and case.expected is not None,
            "top_score": round(top_score, 4) if top_score is not None else None,
            "threshold": threshold,
            "correct": (route == case.expected) if case.expected else None,
        }
        row["hits"] = [
            {"doc_id": h.doc_id, "title": h.title, "score": round(h.score, 4), "source": h.source}
            for h in top_hits[: self.bot.settings.top_k]
        ]
        if answer is not None:
            row["answer"] = self._answer_part(case, answer.text, answer.standalone_question)
        row["usage"] = usage
        row["timings"] = {k: round(v, 4) for k, v in timings.items()}
        return row

    def _search(self, query: str, cache: dict[str, SearchResult]) -> SearchResult:
        if query not in cache:
            # extra chunks so that `depth` distinct documents are usually among them
            cache[query] = self.kb.search(query, k=self.depth * 3)
        return cache[query]

    def _rewrite_part(self, case: EvalCase, rewritten: RewriteResult, check) -> dict[str, Any]:
        part: dict[str, Any] = {
            "standalone": rewritten.question,
            "called_model": rewritten.called_model,
            "check_needed": check.needed,
            "check_reason": check.reason,
            "reason": rewritten.reason,
            "unchanged": metrics.exact_match(rewritten.question, case.question),
            "seconds": round(rewritten.seconds, 4),
        }
        if rewritten.reasoning:
            part["reasoning"] = rewritten.reasoning
        if case.needs_rewrite is not None:
            part["gold_needs_rewrite"] = case.needs_rewrite
        if case.rewrite is not None:
            part["gold"] = case.rewrite
            part["already_standalone"] = case.already_standalone
            part["exact_match"] = metrics.exact_match(rewritten.question, case.rewrite)
            part["bleu4"] = round(metrics.sentence_bleu(rewritten.question, case.rewrite), 2)
            part["rouge_l"] = metrics.rouge_l(rewritten.question, case.rewrite)
        return part

    def _retrieval_part(self, case: EvalCase, standalone: str, cache: dict[str, SearchResult]) -> dict[str, Any]:
        if not case.gold_passage_ids:
            return {}
        gold_query, source = case.gold_query
        part: dict[str, Any] = {"gold_ids": list(case.gold_passage_ids), "gold_query_from": source}
        for kind, query in zip(QUERY_KINDS, (case.question, standalone, gold_query), strict=True):
            hits = self._search(query, cache).hits
            part[kind] = {
                "query": query,
                "rank": first_gold_rank(hits, case.gold_passage_ids),
                "top": doc_ranking(hits)[: self.depth],
            }
        return part

    def _answer_part(self, case: EvalCase, text: str, standalone: str) -> dict[str, Any]:
        part: dict[str, Any] = {"text": text}
        if case.answer is None:
            return part
        body = _strip_label(text)
        part["gold"] = case.answer
        part["token_f1"] = metrics.token_f1(body, case.answer)
        vectors = self.kb.embedder.embed([body or " ", case.answer], kind="query")
        part["cosine"] = float(vectors[0] @ vectors[1])
        if self.judge is not None:
            part.update(self._judge(standalone, case.answer, body))
        return part

    def _judge(self, question: str, reference: str, answer: str) -> dict[str, Any]:
        lang = "zh" if is_chinese(reference + question) else "en"
        prompt = load_prompt(f"judge.{lang}", self.bot.settings.prompt_dir)
        messages = prompt.render(question=question, reference=reference, answer=answer)
        try:
            completion = self.judge.complete(messages, GenerationSettings(temperature=0.0, max_tokens=120))
        except ModelError as exc:
            return {"judge": None, "judge_reason": f"judge model failed: {exc}"}
        found = _JUDGE_SCORE.findall(completion.text)
        if not found:
            return {"judge": None, "judge_reason": f"no score in the judge's reply: {completion.text[:120]!r}"}
        return {"judge": int(found[-1]), "judge_reason": completion.text.strip()[:300]}


def _row_head(case: EvalCase | BadRow) -> dict[str, Any]:
    head: dict[str, Any] = {"id": case.id, "line": case.line, "status": "ok"}
    if isinstance(case, EvalCase):
        head.update(conv_id=case.conv_id, turn=case.turn, question=case.question)
        # short scalar fields of the row (entity_in_question, kind, ...), for subsets and --group-by
        fields = {
            k: v
            for k, v in case.extra.items()
            if isinstance(v, (bool, int, float)) or (isinstance(v, str) and len(v) <= 60)
        }
        if fields:
            head["fields"] = fields
    else:
        head["question"] = case.question
    return head


def _strip_label(text: str) -> str:
    for labels in LABELS.values():
        for label in labels.values():
            if text.startswith(label.strip()):
                return text[len(label.strip()) :].strip()
    return text


def failed_row(case: EvalCase | BadRow, reason: str) -> dict[str, Any]:
    """The row recorded for a turn that could not be evaluated."""
    return {**_row_head(case), "status": "failed", "reason": reason}


# --------------------------------------------------------------------------- the summary
def summarise(
    rows: Sequence[Mapping[str, Any]], ks: Sequence[int] = (1, 5, 10), group_by: str | None = None
) -> dict[str, Any]:
    """The figures of a run, each over the rows that have its gold field; with ``group_by``,
    routing and retrieval are also given per value of that field of the rows."""
    ok = [r for r in rows if r.get("status") == "ok"]
    summary: dict[str, Any] = {
        "rows": len(rows),
        "ok": len(ok),
        "failed": len(rows) - len(ok),
        "rewrite": _rewrite_summary(ok),
        "retrieval": _retrieval_summary(ok, ks),
        "routing": _routing_summary(ok),
        "answers": _answer_summary(ok),
        "cost": _cost_summary(ok),
    }
    if group_by:
        summary["groups"] = _group_summary(ok, ks, group_by)
    return summary


def group_value(row: Mapping[str, Any], name: str) -> str:
    """The value of field ``name`` of a result row, as text ("-" when the row has none)."""
    if name in ("conv_id", "turn", "id"):
        value = row.get(name)
    else:
        value = row.get("fields", {}).get(name)
    if isinstance(value, bool):
        return str(value).lower()
    return "-" if value is None else str(value)


def _group_summary(rows: Sequence[Mapping[str, Any]], ks: Sequence[int], name: str) -> dict[str, Any]:
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(group_value(r, name), []).append(r)
    out: dict[str, Any] = {"field": name, "values": {}}
    for value, chosen in sorted(groups.items()):
        entry: dict[str, Any] = {"n": len(chosen), "routing": _routing_summary(chosen)}
        entry["routing"].pop("threshold", None)
        retrieval = _retrieval_summary(chosen, ks)
        retrieval.pop("subsets", None)
        if retrieval.get("n"):
            entry["retrieval"] = retrieval
        out["values"][value] = entry
    return out


def _rewrite_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    with_part = [r for r in rows if "rewrite" in r]
    parts = [r["rewrite"] for r in with_part]
    out: dict[str, Any] = {"rows": len(parts)}
    if not parts:
        return out
    out["model_calls"] = sum(p["called_model"] for p in parts)
    out["skipped_calls"] = sum(not p["check_needed"] for p in parts)
    out["skipped_share"] = out["skipped_calls"] / len(parts)
    out["changed"] = sum(not p["unchanged"] for p in parts)
    gold = [r for r in with_part if "gold" in r["rewrite"]]
    out["n"] = len(gold)
    if gold:
        out.update(_text_scores(gold))
        out["typed_baseline"] = _text_scores(gold, typed=True)
        needed = [r for r in gold if r["rewrite"].get("already_standalone") is False]
        if needed:
            out["needed"] = {"n": len(needed), **_text_scores(needed)}
            out["needed"]["typed_baseline"] = _text_scores(needed, typed=True)
        standalone = [r["rewrite"] for r in gold if r["rewrite"].get("already_standalone")]
        out["standalone_rows"] = len(standalone)
        out["standalone_unchanged"] = (
            sum(p["unchanged"] for p in standalone) / len(standalone) if standalone else float("nan")
        )
    labelled = [p for p in parts if "gold_needs_rewrite" in p]
    if labelled:
        tp = sum(p["check_needed"] and p["gold_needs_rewrite"] for p in labelled)
        fp = sum(p["check_needed"] and not p["gold_needs_rewrite"] for p in labelled)
        fn = sum(not p["check_needed"] and p["gold_needs_rewrite"] for p in labelled)
        tn = len(labelled) - tp - fp - fn
        out["check"] = {
            "n": len(labelled),
            "accuracy": (tp + tn) / len(labelled),
            "recall_of_needed": tp / (tp + fn) if tp + fn else float("nan"),
            "precision_of_called": tp / (tp + fp) if tp + fp else float("nan"),
        }
    return out


def _text_scores(rows: Sequence[Mapping[str, Any]], typed: bool = False) -> dict[str, float]:
    """EM, corpus BLEU-4 and mean ROUGE-L against the gold rewrite, of the bot's standalone
    question, or (``typed``) of the question as typed: the no-rewrite baseline."""
    refs = [r["rewrite"]["gold"] for r in rows]
    hyps = [r["question"] if typed else r["rewrite"]["standalone"] for r in rows]
    return {
        "exact_match": metrics.mean(metrics.exact_match(h, g) for h, g in zip(hyps, refs, strict=True)),
        "bleu4": metrics.corpus_bleu(hyps, refs),
        "rouge_l": metrics.mean(metrics.rouge_l(h, g) for h, g in zip(hyps, refs, strict=True)),
    }


def _retrieval_summary(rows: Sequence[Mapping[str, Any]], ks: Sequence[int]) -> dict[str, Any]:
    with_gold = [r for r in rows if r.get("retrieval")]
    out: dict[str, Any] = {"n": len(with_gold)}
    if not with_gold:
        return out
    out.update(_ranks(with_gold, ks))
    sources: dict[str, int] = {}
    for r in with_gold:
        sources[r["retrieval"]["gold_query_from"]] = sources.get(r["retrieval"]["gold_query_from"], 0) + 1
    out["gold_query_from"] = sources
    subsets = {}
    for name in SUBSET_FIELDS:
        for value in (False, True):
            chosen = [r for r in with_gold if r.get("fields", {}).get(name) is value]
            if chosen and len(chosen) < len(with_gold):  # a subset equal to all rows says nothing new
                subsets[f"{name}={str(value).lower()}"] = {"n": len(chosen), **_ranks(chosen, ks)}
    if subsets:
        out["subsets"] = subsets
    return out


def _ranks(rows: Sequence[Mapping[str, Any]], ks: Sequence[int]) -> dict[str, Any]:
    out = {}
    for kind in QUERY_KINDS:
        figures = metrics.ranking_metrics([r["retrieval"][kind]["rank"] for r in rows], ks)
        figures.pop("n")
        out[kind] = figures
    return out


def _routing_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    labelled = [r for r in rows if r.get("routing", {}).get("expected")]
    out: dict[str, Any] = {"n": len(labelled)}
    thresholds = {r["routing"]["threshold"] for r in rows if r.get("routing")}
    if thresholds:
        out["threshold"] = thresholds.pop() if len(thresholds) == 1 else sorted(thresholds)
    predicted = [r["routing"]["predicted"] for r in rows if r.get("routing")]
    out["predicted"] = {route: predicted.count(route) for route in sorted(set(predicted))}
    if labelled:
        out.update(
            metrics.routing_metrics(
                [r["routing"]["expected"] for r in labelled], [r["routing"]["predicted"] for r in labelled]
            )
        )
        out["expected_inferred"] = sum(bool(r["routing"].get("expected_inferred")) for r in labelled)
    return out


def _answer_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    parts = [r["answer"] for r in rows if "answer" in r and "gold" in r["answer"]]
    out: dict[str, Any] = {"generated": sum("answer" in r for r in rows), "n": len(parts)}
    if parts:
        out["token_f1"] = metrics.mean(p["token_f1"] for p in parts)
        out["cosine"] = metrics.mean(p["cosine"] for p in parts)
        judged = [p["judge"] for p in parts if p.get("judge") is not None]
        if any("judge" in p for p in parts):
            out["judge"] = metrics.mean(judged)
            out["judged"] = len(judged)
    return out


def _cost_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for stage, usage_key in (("rewrite", "rewrite"), ("retrieval", None), ("generation", "answer")):
        usage = [r["usage"][usage_key] for r in rows if usage_key and usage_key in r.get("usage", {})]
        if stage == "rewrite":
            seconds = [r["timings"]["rewrite"] for r in rows if r.get("rewrite", {}).get("called_model")]
        else:
            seconds = [r["timings"][stage] for r in rows if stage in r.get("timings", {})]
        if not seconds and not any(u["calls"] for u in usage):
            continue
        figures: dict[str, Any] = {"latency": metrics.latency_summary(seconds)}
        if usage_key:
            figures.update(
                calls=sum(u["calls"] for u in usage),
                prompt_tokens=sum(u["prompt_tokens"] for u in usage),
                completion_tokens=sum(u["completion_tokens"] for u in usage),
            )
        out[stage] = figures
    totals = [r["timings"]["total"] for r in rows if "total" in r.get("timings", {})]
    out["total"] = {"latency": metrics.latency_summary(totals)}
    return out


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

        from ragbot.chat_models import make_chat_model

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
        "index": str(bot.kb.directory),
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
            from ragbot.eval_report import write_report

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
