"""One evaluated turn: the bot's own steps (prepare, then generate) on a question-set row, each stage
scored against the row's gold fields."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

from ragbot.conversation.answer_prompt import LABELS
from ragbot.conversation.bot import RagBot
from ragbot.conversation.citations import strip_citations
from ragbot.conversation.prompts import load_prompt
from ragbot.conversation.rewrite import RewriteResult, needs_rewrite
from ragbot.errors import EvaluationError, ModelError
from ragbot.evaluation import metrics
from ragbot.evaluation.facts import fact_recall
from ragbot.evaluation.question_sets import BadRow, EvalCase
from ragbot.evaluation.retrieval import doc_key, doc_ranking, first_gold_rank
from ragbot.knowledge.knowledge_base import Hit, SearchResult
from ragbot.models.chat import ChatModel, GenerationSettings, Message
from ragbot.text import is_chinese

QUERY_KINDS = ("typed", "rewritten", "gold")


STAGES = ("rewrite", "retrieval", "generation")


_JUDGE_SCORE = re.compile(r"(?:score|评分)\s*[:：]\s*\**\s*([1-5])", re.IGNORECASE)


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
        if not rewrite_model and (bot.settings.rewrite or bot.settings.translate):
            # the engine itself skips the rewrite (and the translation, also a rewrite-model call), so
            # retrieval and the answer use the typed question
            settings = bot.settings.replace(rewrite=False, translate=False)
            bot = RagBot(bot.kb, bot.answer_model, bot.rewrite_model, settings, bot._store)
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
        translated = turn.translation is not None and turn.translation.searched
        if turn.search is not None and not turn.topic_query and not translated:  # a plain search of the question
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
        row["retrieval"] = self._retrieval_part(case, standalone, searches, turn.search)
        top_score = top_hits[0].score if top_hits else None
        row["routing"] = {
            "predicted": route,
            "expected": case.expected,
            "expected_inferred": case.expected_route is None and case.expected is not None,
            "top_score": round(top_score, 4) if top_score is not None else None,
            "threshold": threshold,
            "correct": (route == case.expected) if case.expected else None,
            "reason": turn.route_reason,
            # the documents of the passages the answer was given, and whether a gold one is among them
            "shown": list(dict.fromkeys(doc_key(h) for h in turn.sources)),
            "shown_gold": shows_gold(turn.sources, case.gold_passage_ids) if case.gold_passage_ids else None,
        }
        if turn.topic_reason:
            row["routing"]["topic"] = turn.topic_reason
        if turn.translation is not None and turn.translation.called_model:
            row["routing"]["translation"] = turn.translation.text or f"none ({turn.translation.reason})"
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

    def _retrieval_part(
        self, case: EvalCase, standalone: str, cache: dict[str, SearchResult], final: SearchResult | None = None
    ) -> dict[str, Any]:
        """Ranks of the gold documents for the question as typed, the bot's own retrieval (``final``:
        the standalone question, fused with the conversation's topic for a follow-up) and the gold query."""
        if not case.gold_passage_ids:
            return {}
        gold_query, source = case.gold_query
        part: dict[str, Any] = {"gold_ids": list(case.gold_passage_ids), "gold_query_from": source}
        for kind, query in zip(QUERY_KINDS, (case.question, standalone, gold_query), strict=True):
            hits = (final if kind == "rewritten" and final is not None else self._search(query, cache)).hits
            part[kind] = {
                "query": query,
                "rank": first_gold_rank(hits, case.gold_passage_ids),
                "top": doc_ranking(hits)[: self.depth],
            }
        return part

    def _answer_part(self, case: EvalCase, text: str, standalone: str) -> dict[str, Any]:
        part: dict[str, Any] = {"text": text}
        body = answer_body(text)
        if case.gold_facts:
            recall, found = fact_recall(body, case.gold_facts)
            part.update(gold_facts=list(case.gold_facts), facts_found=found, fact_recall=recall)
        if case.answer is None:
            return part
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


def shows_gold(sources: Sequence[Hit], gold_ids: Sequence[str]) -> bool:
    """Whether a gold document is among the passages shown to the answer model."""
    return any(doc_key(h) in gold_ids or h.source in gold_ids for h in sources)


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


def answer_body(text: str) -> str:
    """What an answer says, as its scores compare it: no route label, no citation markers
    ("《超能陆战队》 [1]，《幸福结局》 [1]" states 《超能陆战队》《幸福结局》; a good answer has none)."""
    return strip_citations(_strip_label(text), 0).strip()


def _strip_label(text: str) -> str:
    for labels in LABELS.values():
        for label in labels.values():
            if text.startswith(label.strip()):
                return text[len(label.strip()) :].strip()
    return text


def failed_row(case: EvalCase | BadRow, reason: str) -> dict[str, Any]:
    """The row recorded for a turn that could not be evaluated."""
    return {**_row_head(case), "status": "failed", "reason": reason}
