"""The rewrite chain: the cheap check, the prompt's parse, and the guards."""

import pytest

from ragbot.conversation.rewrite import introduced_name, needs_rewrite, parse_rewrite, rewrite_question
from ragbot.errors import ModelError
from ragbot.models.chat import Message
from ragbot.testing.fakes import ScriptedChatModel

NILE = [Message("user", "尼罗河是什么？"), Message("assistant", "尼罗河是非洲的一条大河。")]
TESLA = [Message("user", "Who founded Tesla?"), Message("assistant", "Martin Eberhard and Marc Tarpenning.")]


@pytest.mark.parametrize(
    ("question", "history", "needed"),
    [
        ("它流经哪些国家？", ["尼罗河是什么？", "一条河"], True),
        ("那长江呢？", ["黄河发源于哪里？", "巴颜喀拉山"], True),
        ("有多长？", ["尼罗河是什么？", "一条河"], True),
        ("尼罗河流经哪些国家？", ["尼罗河是什么？", "一条河"], False),
        ("是吗，这是哪年拍摄的电影啊？", ["看过《我是山姆》吗？", "看过"], True),
        ("上映时间是2004年07月23日，还记得是什么类型的影片吗？", ["看过《我是山姆》吗？", "看过"], True),
        ("《泰坦尼克号》的导演是谁？你还记得吗？", ["看过《我是山姆》吗？", "看过"], False),
        ("尼罗河是什么？", [], False),
        ("谢谢", ["尼罗河是什么？", "一条河"], False),
        ("When did they leave the company?", ["Who founded Tesla?", "Eberhard"], True),
        ("What about the US?", ["Minimum wage in Canada?", "15 dollars"], True),
        ("How tall is Mount Everest?", ["Who founded Tesla?", "Eberhard"], False),
        ("thanks!", ["Who founded Tesla?", "Eberhard"], False),
    ],
)
def test_cheap_check_decides_whether_to_call_the_model(question, history, needed):
    assert needs_rewrite(question, history).needed is needed


def test_parse_keeps_only_the_final_question_and_the_reasoning():
    text = "思考：“它”指前面说的尼罗河。\n改写：尼罗河流经哪些国家？"
    assert parse_rewrite(text) == ("“它”指前面说的尼罗河。", "尼罗河流经哪些国家？")
    assert parse_rewrite('Reasoning: they = founders.\n**Rewrite:** "When did they leave Tesla?"')[1] == (
        "When did they leave Tesla?"
    )
    assert parse_rewrite("尼罗河流经哪些国家？") == ("", "尼罗河流经哪些国家？")  # bare one-line answer
    assert parse_rewrite("I think it is about the Nile.\nIt flows north.") is None
    assert parse_rewrite("思考：它指尼罗河。") is None
    assert parse_rewrite("改写：") is None


def test_model_rewrite_is_used_and_reasoning_kept_apart():
    model = ScriptedChatModel(["思考：“它”指尼罗河。\n改写：尼罗河流经哪些国家？"])
    result = rewrite_question("它流经哪些国家？", NILE, model)
    assert result.question == "尼罗河流经哪些国家？" and result.called_model
    assert result.reasoning == "“它”指尼罗河。" and "思考" not in result.question
    # the model saw the history and the question, in Chinese
    prompt = model.calls[0].messages[-1].content
    assert "尼罗河是什么？" in prompt and "它流经哪些国家？" in prompt


def test_english_prompt_for_english_questions():
    model = ScriptedChatModel(
        ["Reasoning: founders.\nRewrite: When did Martin Eberhard and Marc Tarpenning leave Tesla?"]
    )
    result = rewrite_question("When did they leave the company?", TESLA, model)
    assert result.question == "When did Martin Eberhard and Marc Tarpenning leave Tesla?"
    assert "Rewrite:" in model.calls[0].messages[0].content


def test_no_model_call_on_first_turn_or_standalone_question():
    model = ScriptedChatModel()
    assert rewrite_question("尼罗河是什么？", [], model).reason == "skipped: first turn"
    standalone = rewrite_question("尼罗河流经哪些国家？", NILE, model)
    assert standalone.question == "尼罗河流经哪些国家？" and not standalone.called_model
    assert model.calls == []


def test_model_failure_falls_back_to_the_question():
    model = ScriptedChatModel([ModelError("cannot reach http://127.0.0.1:1 (model 'x')")])
    result = rewrite_question("它流经哪些国家？", NILE, model)
    assert result.question == "它流经哪些国家？" and "model failed" in result.reason


def test_unparseable_output_falls_back_to_the_question():
    result = rewrite_question("它流经哪些国家？", NILE, ScriptedChatModel(["尼罗河很长。\n它在非洲。"]))
    assert result.question == "它流经哪些国家？" and result.reason == "unparseable model output"


def test_invented_name_is_rejected():
    model = ScriptedChatModel(["思考：它指亚马孙河。\n改写：亚马孙河流经哪些国家？"])
    result = rewrite_question("它流经哪些国家？", NILE, model)
    assert result.question == "它流经哪些国家？" and "亚马孙" in result.reason
    model = ScriptedChatModel(["Reasoning: x.\nRewrite: When did Elon Musk leave Tesla?"])
    assert rewrite_question("When did they leave the company?", TESLA, model).question == (
        "When did they leave the company?"
    )


def test_introduced_name_accepts_names_copied_from_history():
    assert introduced_name("尼罗河流经哪些国家？", "它流经哪些国家？", ["尼罗河是什么？"]) is None
    assert introduced_name("长江发源于哪里？", "那长江呢？", ["黄河发源于哪里？"]) is None
    assert (
        introduced_name(
            "When did Marc Tarpenning leave Tesla?", "When did he leave?", ["Who founded Tesla?", "Marc Tarpenning"]
        )
        is None
    )
    # a transliterated name keeps its dot; question words are not names
    assert introduced_name("阿米尔·汗是做学员的吗？", "他是做学员的吗？", ["你知道阿米尔·汗吗？"]) is None
    assert introduced_name("斯科特的别名是什么？", "你知道他有个别名不？", ["斯科特·埃德希特演过什么"]) is None
    assert introduced_name("尼罗河长6650公里吗", "它有多长", ["尼罗河是什么？"]) is not None
    assert introduced_name("黄河流经哪些国家？", "它流经哪些国家？", ["尼罗河是什么？"]) == "黄河"
    assert introduced_name("Is the Nile 6650 km long?", "How long is it?", ["Tell me about the Nile"]) == "6650"
    assert (
        introduced_name("Why do Venus flytraps eat prey?", "Why do they eat prey?", ["What are Venus flytraps?"])
        is None
    )


def _rows(name: str) -> list[dict]:
    import json

    from helpers import shared_file

    return [json.loads(line) for line in shared_file(name).read_text(encoding="utf-8").splitlines() if line.strip()]


def test_cheap_check_on_the_human_annotated_dev_sets():
    """Skipping the model is only worth it if it rarely skips a follow-up that needed it:
    KdConv turns whose film or person is named only in the history, and Su et al.'s labels."""
    kdconv = [r for r in _rows("convqa_zh_kdconv_film.jsonl") if r["history"] and not r["entity_in_question"]]
    skipped = [r["question"] for r in kdconv if not needs_rewrite(r["question"], r["history"]).needed]
    assert len(skipped) / len(kdconv) <= 0.08, skipped[:10]  # 33 of 567 when written (was 201)
    su = _rows("rewrite_zh_su2019_dev.jsonl")
    agree = sum(needs_rewrite(r["question"], r["history"]).needed == r["needs_rewrite"] for r in su)
    assert agree / len(su) >= 0.78  # 79.9% when written
