"""Fact recall: the share of a row's gold facts the bot's answer states, by hand on a small set."""

import importlib.util
import json

import pytest

from ragbot import KnowledgeBase
from ragbot.conversation.bot import RagBot
from ragbot.evaluation.facts import contains_fact, fact_recall, facts_in_answer
from ragbot.evaluation.question_sets import read_questions
from ragbot.evaluation.run import evaluate
from ragbot.evaluation.tables import format_summary
from ragbot.testing.fakes import ScriptedChatModel

from helpers import REPO, run_cli

DOCS = [
    {"id": "film-1", "title": "卧虎藏龙", "text": "卧虎藏龙是李安执导的武侠电影，2000年上映，周润发和章子怡主演。"},
    {"id": "film-2", "title": "霸王别姬", "text": "霸王别姬是陈凯歌执导的电影，1993年上映，张国荣主演。"},
]
ROWS = [
    # 1 of 2 facts stated
    {"id": "f1", "question": "卧虎藏龙是谁导演的，谁主演？", "gold_facts": ["李安", "章子怡"]},
    # full-width digits and no 年 in the answer: stated
    {"id": "f2", "question": "卧虎藏龙是哪年上映的？", "gold_facts": ["2000年"]},
    # facts from the triples, kept where the good answer states them: 张国荣 (陈凯歌 is not in "张国荣。")
    {"id": "f3", "question": "霸王别姬是谁主演的？", "answer": "张国荣。",
     "gold_triples": [["霸王别姬", "主演", "张国荣"], ["霸王别姬", "导演", "陈凯歌"]]},
    # neither fact stated: 1993 is not in 2003
    {"id": "f4", "question": "霸王别姬是哪年上映的，谁导演？", "gold_facts": ["1993年", "陈凯歌"]},
    # no gold facts: not counted
    {"id": "f5", "question": "怎么烤面包？"},
    # two titles as one fact, stated with a citation marker after each: stated
    {"id": "f6", "question": "卧虎藏龙和霸王别姬都看过吗？", "gold_facts": ["《卧虎藏龙》《霸王别姬》"]},
]  # fmt: skip
ANSWERS = {
    "谁导演的，谁主演": "李安导演，周润发主演。",
    "卧虎藏龙是哪年": "２０００上映。",
    "霸王别姬是谁主演": "主演是张国荣 [1]。",
    "霸王别姬是哪年": "2003年，导演不详。",
    "面包": "先和面。",
    "都看过吗": "看过《卧虎藏龙》 [1]，《霸王别姬》 [2]。",
}


def answer_by_topic(answers=ANSWERS):
    def reply(messages):
        last = messages[-1].content
        return next((text for key, text in answers.items() if key in last), "不知道。")

    return ScriptedChatModel(default=reply)


@pytest.fixture
def kb(hash_settings, tmp_path):
    path = tmp_path / "kb.jsonl"
    path.write_text("\n".join(json.dumps(d, ensure_ascii=False) for d in DOCS) + "\n", encoding="utf-8")
    kb = KnowledgeBase.open(hash_settings.replace(rewrite=False), create=True)
    kb.ingest([path])
    return kb


@pytest.fixture
def questions(tmp_path):
    path = tmp_path / "facts.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in ROWS) + "\n", encoding="utf-8")
    return path


def test_fact_recall_equals_the_share_computed_by_hand(kb, questions, tmp_path):
    out = tmp_path / "run"
    run = evaluate(questions, RagBot(kb, answer_by_topic()), out=out)
    by_id = {r["id"]: r["answer"] for r in run.rows}
    assert [by_id[i].get("fact_recall") for i in ("f1", "f2", "f3", "f4", "f5", "f6")] == [0.5, 1, 1, 0, None, 1]
    assert by_id["f1"]["facts_found"] == ["李安"] and by_id["f3"]["gold_facts"] == ["张国荣"]

    facts = run.summary["answers"]["facts"]
    assert facts["n"] == 5
    assert facts["recall"] == pytest.approx((0.5 + 1 + 1 + 0 + 1) / 5)
    assert facts["all_found"] == pytest.approx(3 / 5)
    # the table `ragbot eval` prints: fact recall next to token-F1 (f3 is the one row with a good
    # answer: "主演是张国荣" against "张国荣", the citation marker not counted: 2 * 1/2 * 1 / 1.5)
    printed = format_summary(run.summary)
    assert "Answers (1 rows with a good answer, 5 with gold facts)" in printed
    assert "token-F1 0.667, fact recall 0.700 (all gold facts stated: 60.0%)" in printed
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "fact recall 0.700 (all gold facts stated: 60.0%)" in report
    assert "### Answers missing gold facts (lowest fact recall, 2 of 2)" in report
    assert "| f4 | 霸王别姬是哪年上映的，谁导演？ |" in report and "| 1993年, 陈凯歌 | 0.00 |" in report


def test_eval_compare_shows_fact_recall_side_by_side(kb, questions, tmp_path):
    evaluate(questions, RagBot(kb, answer_by_topic()), out=tmp_path / "a", report=False)
    better = {**ANSWERS, "霸王别姬是哪年": "1993年上映，陈凯歌导演。"}
    evaluate(questions, RagBot(kb, answer_by_topic(better)), out=tmp_path / "b", report=False)
    result = run_cli("eval", "--compare", str(tmp_path / "a"), str(tmp_path / "b"))
    assert result.returncode == 0, result.stderr
    assert "| answers.facts.recall | 0.7 | 0.9 | +0.2 |" in result.stdout
    assert "| answers.facts.all_found | 0.6 | 0.8 | +0.2 |" in result.stdout
    assert "- more gold facts stated: 1 (f4)" in result.stdout


@pytest.mark.parametrize(
    ("answer", "fact", "stated"),
    [
        ("它是2003年上映的", "2003", True),  # a date unit after a number is ignored ...
        ("它是2003上映的", "2003年", True),
        ("１９５７年１月出生", "1957年01月", True),  # ... and so are full width and leading zeros
        ("2001-12-28 上映", "2001年12月28日", True),
        ("成本 $125000000", "$125,000,000", True),
        ("七里香 很好听", "《七里香》", True),  # punctuation, spaces, case
        ("杰茜・尼尔森导演", "杰茜·尼尔森", True),
        ("We fine-tuned it with LoRA.", "lora", True),
        ("2012年上映", "12年", False),  # never part of a longer number
        ("票房12.9亿", "12.95亿", False),
        ("1993年上映", "2003年", False),
    ],
)
def test_facts_match_after_normalising(answer, fact, stated):
    assert contains_fact(answer, fact) is stated


def test_gold_facts_from_triples_are_the_values_the_good_answer_states():
    triples = [
        ["阿甘正传", "上映时间", "1994年07月06日"],
        ["阿甘正传", "主演", "《 汤姆·汉克斯》、《 罗宾·怀特》"],
        ["阿甘正传", "类型", "剧情"],
    ]
    # the year of a date, the items of a list value; 剧情 is not in the answer
    assert facts_in_answer(triples, "1994年上映，汤姆·汉克斯主演。") == ["1994年", "汤姆·汉克斯"]


def test_a_list_the_good_answer_states_whole_gives_one_fact_per_item():
    triples = [["黑暗骑士", "拍摄地点", "新西兰,惠灵顿,帕拉帕拉姆"], ["黑暗骑士", "主演", "《 汤姆·汉克斯》（客串）"]]
    facts = facts_in_answer(triples, "在新西兰,惠灵顿,帕拉帕拉姆拍的，汤姆·汉克斯客串。")
    assert facts == ["新西兰", "惠灵顿", "帕拉帕拉姆", "汤姆·汉克斯"]
    # so an answer naming two of the three places states two of those facts, not none
    assert fact_recall("在新西兰的惠灵顿拍的", facts[:3])[0] == pytest.approx(2 / 3)


def test_a_row_with_malformed_triples_is_reported_not_fatal(tmp_path):
    path = tmp_path / "q.jsonl"
    rows = [{"id": "ok", "question": "q?", "answer": "a", "gold_facts": ["a"]},
            {"id": "bad", "question": "q?", "answer": "a", "gold_triples": ["not a triple"]}]  # fmt: skip
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    qs = read_questions(path)
    assert [c.gold_facts for c in qs.cases] == [("a",)]
    assert "'gold_triples' must be a list of [subject, relation, value] lists" in qs.bad_rows[0].reason


def test_the_converter_adds_the_gold_facts_a_good_answer_states(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("add_facts", REPO / "tests" / "data" / "eval_add_gold_facts.py")
    converter = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(converter)
    rows = [
        {
            "id": "own",
            "question": "哪年上映？",
            "answer": "2000年上映。",
            "gold_triples": [["卧虎藏龙", "上映时间", "2000年"]],
        },
        {"id": "doc", "question": "谁主演？", "answer": "张国荣主演。", "gold_passage_ids": ["film-2"]},
        {"id": "none", "question": "好看吗？", "answer": "很好看。", "gold_passage_ids": ["film-2"]},
    ]
    passages = [{"id": "film-2", "title": "霸王别姬", "text": "...", "triples": [["霸王别姬", "主演", "张国荣"]]}]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    (tmp_path / "p.jsonl").write_text(json.dumps(passages[0], ensure_ascii=False) + "\n", "utf-8")
    out = tmp_path / "facts.jsonl"
    converter.main([str(tmp_path / "q.jsonl"), str(out), "--passages", str(tmp_path / "p.jsonl")])
    assert "3 rows, 2 with gold facts (2 facts)" in capsys.readouterr().out
    assert [c.gold_facts for c in read_questions(out).cases] == [("2000年",), ("张国荣",), ()]
