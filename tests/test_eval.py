"""Batch evaluation with the hash embedder and a scripted model: figures, files, resume, failures."""

import json
import re

import pytest

import ragbot
from ragbot import KnowledgeBase
from ragbot.conversation.bot import RagBot
from ragbot.errors import ModelError
from ragbot.evaluation import EvaluationError
from ragbot.evaluation.question_sets import QuestionFileError, history_messages, parse_where, read_questions, select
from ragbot.evaluation.run import evaluate, load_run
from ragbot.models.chat import Message
from ragbot.testing.fakes import ScriptedChatModel

from helpers import run_cli

DOCS = [
    {"id": "film-1", "title": "卧虎藏龙", "text": "卧虎藏龙是李安执导的武侠电影，2000年上映，周润发和章子怡主演。"},
    {"id": "film-2", "title": "霸王别姬", "text": "霸王别姬是陈凯歌执导的电影，1993年上映，张国荣主演。"},
    {"id": "film-3", "title": "英雄", "text": "英雄是张艺谋执导的武侠电影，2002年上映，李连杰主演。"},
    {"id": "nile", "title": "尼罗河", "text": "尼罗河是非洲的一条大河，流经乌干达、南苏丹、苏丹和埃及。"},
]
# With the hash embedder (threshold 0.3): "它是哪年上映的？" puts film-1 third with a best score of
# 0.13 (fallback); the rewrite "卧虎藏龙是哪年上映的？" puts it first at 0.44 (grounded).
ROWS = [
    {"id": "q1", "conv_id": "c1", "turn": 1, "history": [], "question": "卧虎藏龙是谁导演的？",
     "rewrite": "卧虎藏龙是谁导演的？", "gold_passage_ids": ["film-1"], "answer": "李安。",
     "expected_route": "grounded", "entity_in_question": True},
    {"id": "q2", "conv_id": "c1", "turn": 2, "history": ["卧虎藏龙是谁导演的？", "李安。"],
     "history_roles": ["user", "assistant"], "question": "它是哪年上映的？", "rewrite": "卧虎藏龙是哪年上映的？",
     "needs_rewrite": True, "gold_passage_ids": ["film-1"], "answer": "2000年上映。", "entity_in_question": False},
    {"id": "q3", "question": "怎么烤面包？", "expected_route": "fallback"},
    {"id": "q4", "conv_id": "c2", "history": ["你好", "你好！"], "question": "尼罗河流经哪些国家？",
     "rewrite": "尼罗河流经哪些国家？", "needs_rewrite": False, "gold_passage_ids": ["nile"],
     "answer": "埃及、苏丹和乌干达", "entity_in_question": True},
]  # fmt: skip
ANSWERS = {"卧虎藏龙是谁导演": "李安。", "哪年上映": "2000年。", "面包": "先和面。", "尼罗河": "乌干达和埃及"}


def reply(messages):
    """Rewrite prompts resolve 它 to 卧虎藏龙; answer prompts answer by topic."""
    last = messages[-1].content
    if "改写：" in messages[0].content:
        return "思考：它指卧虎藏龙。\n改写：卧虎藏龙是哪年上映的？"
    question = last.rsplit("问题", 1)[-1] if "问题" in last else last
    return next((text for key, text in ANSWERS.items() if key in question), "不知道。")


def scripted(fail_on=None, error=None):
    def respond(messages):
        if fail_on and "改写：" not in messages[0].content and fail_on in messages[-1].content:
            raise error
        return reply(messages)

    return ScriptedChatModel(default=respond)


@pytest.fixture
def kb(hash_settings, tmp_path):
    path = tmp_path / "kb.jsonl"
    path.write_text("\n".join(json.dumps(d, ensure_ascii=False) for d in DOCS) + "\n", encoding="utf-8")
    kb = KnowledgeBase.open(hash_settings, create=True)
    kb.ingest([path])
    return kb


def write_jsonl(path, rows, extra_lines=()):
    lines = [json.dumps(r, ensure_ascii=False) for r in rows] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def questions(tmp_path):
    return write_jsonl(tmp_path / "questions.jsonl", ROWS)


def results_lines(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]


def test_rewrite_exact_match_is_also_given_on_positives_plus_as_many_negatives(kb, questions, tmp_path):
    """The file holds one row needing a rewrite and two already standalone: a wrong rewrite scores
    2/3 over the file, 1/2 scored as published rewriters on the Su et al. corpus are."""
    wrong = ScriptedChatModel(default=lambda messages: "思考：它指英雄。\n改写：英雄是哪年上映的？")
    run = evaluate(questions, RagBot(kb, wrong), out=tmp_path / "run", generate=False)
    rw = run.summary["rewrite"]
    assert rw["exact_match"] == pytest.approx(2 / 3) and rw["needed"]["exact_match"] == 0
    assert rw["balanced_exact_match"] == pytest.approx(0.5)
    report = (tmp_path / "run" / "report.md").read_text(encoding="utf-8")
    assert (
        "plus as many already-standalone ones (as published rewriters on the Su et al. corpus are scored): 50.0%"
        in report
    )


def test_rewrite_retrieval_and_routing_figures_match_hand_computed_values(kb, questions, tmp_path):
    out = tmp_path / "run"
    run = evaluate(questions, RagBot(kb, scripted()), out=out, generate=False)
    s = run.summary

    rw = s["rewrite"]
    assert rw["n"] == 3 and rw["exact_match"] == 1.0 and rw["bleu4"] == pytest.approx(100)
    assert rw["typed_baseline"]["exact_match"] == pytest.approx(2 / 3)
    assert (rw["model_calls"], rw["skipped_calls"], rw["skipped_share"]) == (1, 3, 0.75)
    assert (rw["standalone_rows"], rw["standalone_unchanged"], rw["balanced_exact_match"]) == (2, 1.0, 1.0)
    assert rw["check"] == {"n": 2, "accuracy": 1.0, "recall_of_needed": 1.0, "precision_of_called": 1.0}

    rt = s["retrieval"]  # gold film-1 is 3rd for the typed follow-up, 1st everywhere else
    assert rt["n"] == 3
    assert rt["typed"]["recall@1"] == pytest.approx(2 / 3) and rt["typed"]["recall@5"] == 1.0
    assert rt["typed"]["mrr"] == pytest.approx((1 + 1 / 3 + 1) / 3)
    assert rt["rewritten"] == rt["gold"] == {"recall@1": 1.0, "recall@5": 1.0, "recall@10": 1.0, "mrr": 1.0}
    assert rt["subsets"]["entity_in_question=false"]["typed"]["mrr"] == pytest.approx(1 / 3)

    ro = s["routing"]
    assert (ro["n"], ro["accuracy"], ro["precision"], ro["recall"], ro["threshold"]) == (4, 1.0, 1.0, 1.0, 0.3)
    assert ro["confusion"] == {"grounded": {"grounded": 3}, "fallback": {"fallback": 1}}
    assert s["cost"]["rewrite"]["calls"] == 1 and s["cost"]["retrieval"]["latency"]["n"] == 4

    # the files a user opens
    rows = results_lines(out)
    assert [r["id"] for r in rows] == ["q1", "q2", "q3", "q4"] and all(r["status"] == "ok" for r in rows)
    q2 = rows[1]
    assert q2["rewrite"]["standalone"] == "卧虎藏龙是哪年上映的？" and q2["rewrite"]["called_model"]
    assert [q2["retrieval"][k]["rank"] for k in ("typed", "rewritten", "gold")] == [3, 1, 1]
    assert json.loads((out / "summary.json").read_text())["retrieval"]["typed"]["recall@5"] == 1.0
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "rewrite gain, entity_in_question=false rows: recall@5 +0.0 points" in report
    assert "| bot's standalone question | 1.000 | 1.000 | 1.000 | 1.000 |" in report
    assert "![recall@k](recall_at_k.png)" in report and "![score distributions](scores.png)" in report
    for name in ("scores.png", "recall_at_k.png", "latency.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_question_as_typed_shows_what_the_rewrite_is_worth(kb, questions):
    model = scripted()
    s = evaluate(
        questions, RagBot(kb, model), generate=False, rewrite_model=False, group_by="entity_in_question"
    ).summary
    assert model.calls == [] and s["rewrite"]["model_calls"] == 0
    assert s["rewrite"]["exact_match"] == pytest.approx(2 / 3)
    assert s["retrieval"]["rewritten"] == s["retrieval"]["typed"]
    # the follow-up, searched as typed, falls below the threshold
    assert s["routing"]["accuracy"] == 0.75 and s["routing"]["recall"] == pytest.approx(2 / 3)
    groups = s["groups"]["values"]
    assert {v: g["n"] for v, g in groups.items()} == {"-": 1, "false": 1, "true": 2}
    assert groups["false"]["routing"]["predicted"] == {"fallback": 1} and groups["true"]["routing"]["accuracy"] == 1.0
    assert groups["false"]["retrieval"]["typed"]["mrr"] == pytest.approx(1 / 3)


def test_answers_are_scored_against_the_good_answers_with_an_optional_judge(kb, questions):
    judge = ScriptedChatModel(default="Reason: same facts.\nScore: 4")
    run = ragbot.evaluate(questions, RagBot(kb, scripted()), judge=judge)
    by_id = {r["id"]: r for r in run.rows}
    assert by_id["q1"]["answer"]["token_f1"] == 1.0 and by_id["q1"]["answer"]["cosine"] == pytest.approx(1.0)
    assert by_id["q2"]["answer"]["token_f1"] == pytest.approx(2 / 3)  # 2000 年 of 2000 年 上 映
    assert by_id["q4"]["answer"]["token_f1"] == pytest.approx(6 / 7)
    assert by_id["q3"]["answer"]["text"].endswith("先和面。") and "gold" not in by_id["q3"]["answer"]
    an = run.summary["answers"]
    assert an["n"] == 3 and an["token_f1"] == pytest.approx((1 + 2 / 3 + 6 / 7) / 3)
    assert an["judge"] == 4.0 and an["judged"] == 3 and len(judge.calls) == 3
    cost = run.summary["cost"]
    assert cost["generation"]["calls"] == 4 and cost["rewrite"]["calls"] == 1
    assert cost["generation"]["completion_tokens"] > 0 and cost["generation"]["latency"]["n"] == 4


def test_a_judge_named_in_the_settings_that_gives_no_score_is_reported(kb, questions):
    bot = RagBot(kb, scripted(), settings=kb.settings.replace(llm="fake"))
    run = evaluate(questions, bot, judge="any-model", where={"id": "q1"})
    assert run.rows[0]["answer"]["judge"] is None
    assert "no score in the judge's reply" in run.rows[0]["answer"]["judge_reason"]
    assert run.summary["answers"]["judged"] == 0


def test_an_interrupted_run_resumes_without_redoing_finished_rows(kb, questions, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        evaluate(questions, RagBot(kb, scripted(fail_on="面包", error=KeyboardInterrupt())), out=out, report=False)
    assert [r["id"] for r in results_lines(out)] == ["q1", "q2"]
    # a line cut off by the interruption is dropped, not fatal
    with open(out / "results.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"id": "q3", "stat')

    model = scripted()
    run = evaluate(questions, RagBot(kb, model), out=out, report=False)
    asked = [c.messages[-1].content for c in model.calls]
    assert not any("卧虎藏龙" in text for text in asked)  # q1 and q2 were not asked again
    assert any("面包" in text for text in asked) and any("尼罗河" in text for text in asked)
    assert [r["id"] for r in results_lines(out)] == ["q1", "q2", "q3", "q4"]
    assert run.summary["rows"] == 4 and run.summary["run"]["resumed_rows"] == 2
    assert run.summary["answers"]["n"] == 3


def test_failed_rows_are_recorded_with_their_reason_and_the_run_goes_on(kb, tmp_path):
    bad = {"id": "q5", "question": "", "expected_route": "grounded"}
    path = write_jsonl(tmp_path / "q.jsonl", [*ROWS, bad, {"id": "q6", "question": "x", "expected_route": "maybe"}])
    out = tmp_path / "run"
    down = ModelError("the endpoint is down; check base_url")
    run = evaluate(path, RagBot(kb, scripted(fail_on="哪年上映", error=down)), out=out)
    by_id = {r["id"]: r for r in results_lines(out)}
    assert by_id["q2"]["status"] == "failed" and "the endpoint is down" in by_id["q2"]["reason"]
    assert by_id["q5"] == {**by_id["q5"], "status": "failed", "reason": "line 5: 'question' is empty"}
    assert "line 6: 'expected_route' must be 'grounded' or 'fallback'" in by_id["q6"]["reason"]
    assert [by_id[i]["status"] for i in ("q1", "q3", "q4")] == ["ok"] * 3
    assert (run.summary["ok"], run.summary["failed"]) == (3, 3)
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "## Failed rows (3)" in report and "the endpoint is down" in report

    # a plain rerun keeps them as they were; --retry-failed redoes them
    assert evaluate(path, RagBot(kb, scripted()), out=out, report=False).summary["failed"] == 3
    again = evaluate(path, RagBot(kb, scripted()), out=out, retry_failed=True, report=False)
    assert again.summary["failed"] == 2 and {r["id"] for r in again.failed} == {"q5", "q6"}


def test_csv_and_jsonl_question_files_give_the_same_turns(tmp_path):
    jsonl = read_questions(write_jsonl(tmp_path / "q.jsonl", ROWS[:2]))
    (tmp_path / "q.csv").write_text(
        "id,conv_id,turn,history,history_roles,question,rewrite,gold_passage_ids,answer,expected_route,"
        "needs_rewrite,entity_in_question\n"
        "q1,c1,1,,,卧虎藏龙是谁导演的？,卧虎藏龙是谁导演的？,film-1,李安。,grounded,,true\n"
        'q2,c1,2,"[""卧虎藏龙是谁导演的？"", ""李安。""]",user | assistant,它是哪年上映的？,卧虎藏龙是哪年上映的？,'
        '["film-1"],2000年上映。,,true,false\n',
        encoding="utf-8",
    )
    csv = read_questions(tmp_path / "q.csv")
    strip = [{**c.__dict__, "line": 0, "extra": dict(c.extra)} for c in jsonl.cases]
    assert [{**c.__dict__, "line": 0, "extra": dict(c.extra)} for c in csv.cases] == strip
    assert csv.cases[1].messages == [Message("user", "卧虎藏龙是谁导演的？"), Message("assistant", "李安。")]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "a.jsonl",
            '{"question": "a"}\n\n{"question": "b"\n',
            "a.jsonl, line 3: not valid JSON (Expecting ',' delimiter at column 17",
        ),
        ("b.jsonl", '{"question": "a"}\n["not", "an object"]\n', "b.jsonl, line 2: expected a JSON object"),
        ("c.jsonl", '{"id": "x", "question": "a"}\n{"id": "x", "question": "b"}\n', "line 2: id 'x' was already used"),
        ("d.csv", "id,question\n1,a\n2,b,extra\n", "d.csv, line 3: 3 cells for 2 columns"),
        ("e.csv", "id,query\n1,a\n", "e.csv, line 1: the CSV header has no 'question' column"),
        ("f.jsonl", "", "holds no rows"),
        ("g.txt", "question\n", "unsupported type '.txt'"),
    ],
)
def test_malformed_question_files_are_refused_naming_the_line(tmp_path, name, content, message):
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(QuestionFileError, match=re.escape(message)):
        read_questions(tmp_path / name)


def test_cli_names_the_bad_line_in_one_line_and_exits_1(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"question": "a"}\n{"question": \n', encoding="utf-8")
    out = run_cli("eval", str(path), "--no-generate", env={"RAGBOT_EMBEDDER": "hash", "RAGBOT_LLM": "fake"})
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("ragbot: error: ") and "q.jsonl, line 2" in out.stderr


def test_histories_are_made_to_alternate_as_the_engine_requires():
    # TREC CAsT keeps only the user's side; KdConv histories can start with the other speaker
    cast = history_messages(["What is throat cancer?", "Is it treatable?"], ["user", "user"])
    assert [(m.role, m.content) for m in cast] == [
        ("user", "What is throat cancer?"),
        ("assistant", "…"),
        ("user", "Is it treatable?"),
        ("assistant", "…"),
    ]
    kdconv = history_messages(["看过吗？", "看过。", "好看吗？"], ["assistant", "user", "assistant"])
    assert [m.role for m in kdconv] == ["user", "assistant", "user", "assistant"] and kdconv[0].content == "…"
    assert [m.role for m in history_messages(["a", "b"])] == ["user", "assistant"]


def test_replay_uses_the_bots_own_earlier_answers_as_history(kb, questions):
    model = scripted()
    run = evaluate(questions, RagBot(kb, model), replay=True, where={"conv_id": "c1"})
    rewrite_call = next(c for c in model.calls if "改写：" in c.messages[0].content)
    assert "助手：李安。" in rewrite_call.messages[-1].content  # the bot's answer, not the dataset's
    assert [r["history_turns"] for r in run.rows] == [0, 1]
    with pytest.raises(EvaluationError, match="needs generation"):
        evaluate(questions, RagBot(kb, model), replay=True, generate=False)


def test_rows_are_picked_by_field_seeded_sample_and_limit(questions):
    qs = read_questions(questions)
    assert [c.id for c in select(qs, where=parse_where(["entity_in_question=true"])).cases] == ["q1", "q4"]
    first = select(qs, sample=2, seed=3).cases
    assert first == select(qs, sample=2, seed=3).cases and len(first) == 2
    assert [c.line for c in first] == sorted(c.line for c in first)  # file order kept
    assert [c.id for c in select(qs, limit=2).cases] == ["q1", "q2"]
    with pytest.raises(QuestionFileError, match="write FIELD=VALUE"):
        parse_where(["entity_in_question"])


def test_an_output_folder_of_another_evaluation_is_not_mixed_in(kb, questions, tmp_path):
    out = tmp_path / "run"
    evaluate(questions, RagBot(kb, scripted()), out=out, generate=False, report=False)
    with pytest.raises(EvaluationError, match="holds results of a different evaluation.*generate was False"):
        evaluate(questions, RagBot(kb, scripted()), out=out, report=False)
    fresh = evaluate(questions, RagBot(kb, scripted()), out=out, fresh=True, report=False)
    assert fresh.summary["answers"]["n"] == 3


def test_two_runs_are_compared_figure_by_figure_and_row_by_row(kb, questions, tmp_path):
    typed, rewritten = tmp_path / "typed", tmp_path / "rewritten"  # no report: compare reads the summaries
    as_typed = kb.settings.replace(topic=False)  # the question as typed, without the conversation's topic either
    evaluate(questions, RagBot(kb, scripted(), settings=as_typed), out=typed, generate=False, rewrite_model=False,
             report=False)  # fmt: skip
    evaluate(questions, RagBot(kb, scripted()), out=rewritten, generate=False, report=False)
    out = run_cli("eval", "--compare", str(tmp_path / "typed"), str(tmp_path / "rewritten"))
    assert out.returncode == 0, out.stderr
    assert "| routing.accuracy | 0.75 | 1 | +0.25 |" in out.stdout
    assert "- routing fixed: 1 (q2)" in out.stdout and "- retrieval better: 1 (q2)" in out.stdout
    assert load_run(tmp_path / "typed").summary["rewrite"]["model_calls"] == 0


def test_cli_eval_writes_the_report_and_prints_the_summary(kb, questions, tmp_path):
    env = {"RAGBOT_EMBEDDER": "hash", "RAGBOT_LLM": "fake"}
    out = run_cli("eval", str(questions), "--kb", str(kb.directory), "--no-generate", "--out", "r", env=env,
                  cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "4 rows: 4 evaluated, 0 failed" in out.stdout and "Routing (4 rows" in out.stdout
    assert "gold query (ceiling)" in out.stdout
    assert {p.name for p in (tmp_path / "r").iterdir()} >= {
        "results.jsonl",
        "summary.json",
        "report.md",
        "scores.png",
        "recall_at_k.png",
        "latency.png",
    }
