"""Batch evaluation: run the bot over a question set and measure each stage against the gold.

``evaluate(questions, bot)`` runs every turn through the same engine as the chat (rewrite ->
retrieve -> route -> generate) and scores what the row has gold for:

* rewrite: exact match, BLEU-4, ROUGE-L against the gold ``rewrite``; the share of
  already-standalone questions left unchanged; model calls made and skipped by the cheap
  ``needs_rewrite`` check; and the same scores for the question as typed, as the baseline;
* retrieval: recall@k and MRR of ``gold_passage_ids`` for three queries side by side -
  the question as typed, the bot's standalone question, and the gold query (the ceiling);
* routing: grounded vs fallback against ``expected_route``;
* answers: token-F1 and embedding cosine against the good ``answer``, an LLM judge's
  1-5 score when a judge model is given, and fact recall: the share of the row's gold facts
  (``gold_facts``, or the ``gold_triples`` values the good answer states) the answer states;
* cost: tokens, model calls and seconds per stage.

With ``out``, each finished row is appended to ``results.jsonl`` at once, so an interrupted
run resumes where it stopped (rows whose id is already there are not redone); a row that
fails is recorded with ``status: "failed"`` and its reason, and the run goes on.

Modules: ``question_sets`` (reading question files), ``scoring`` (one turn),
``summary`` (the figures of a run), ``run`` (``evaluate``: the resumable loop),
``tables``/``report``/``plots``/``compare`` (what a run writes), ``metrics``, ``facts``, ``retrieval``,
``calibration``.
"""

from ragbot.errors import EvaluationError
from ragbot.evaluation.run import EvalRun, evaluate, jsonable, load_results, load_run
from ragbot.evaluation.scoring import TurnEvaluator, failed_row
from ragbot.evaluation.summary import summarise

__all__ = [
    "EvalRun",
    "EvaluationError",
    "TurnEvaluator",
    "evaluate",
    "failed_row",
    "jsonable",
    "load_results",
    "load_run",
    "summarise",
]
