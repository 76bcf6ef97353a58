"""The turn as named steps: ``prepare`` (memory, rewrite, retrieval, route) and ``generate``, each callable alone."""

import pytest

from ragbot import KnowledgeBase, Route, Turn
from ragbot.conversation.topic import Topic
from ragbot.errors import ConversationError

from helpers import NILE_REWRITE, make_bot

HISTORY = [{"role": "user", "content": "尼罗河是什么？"}, {"role": "assistant", "content": "尼罗河是非洲的一条大河。"}]


@pytest.fixture
def kb(hash_settings, corpus):
    kb = KnowledgeBase.open(hash_settings.replace(threshold=0.35), create=True)
    kb.ingest([corpus["md"].parent])
    return kb


def test_prepare_decides_the_route_without_calling_the_answer_model(kb):
    bot, model = make_bot(kb, [NILE_REWRITE])
    turn = bot.prepare("它流经哪些国家？", HISTORY)
    assert isinstance(turn, Turn)
    assert turn.standalone_question == "尼罗河流经哪些国家？"
    assert turn.route is Route.GROUNDED and turn.route == "grounded"
    assert turn.sources[0].source.endswith("nile.md")
    assert len(model.calls) == 1  # the rewrite only; nothing was generated yet
    assert {"rewrite", "retrieval"} <= set(turn.timings)


def test_generate_streams_the_prepared_turn_and_ends_with_its_answer(kb):
    bot, model = make_bot(kb, [NILE_REWRITE, "它流经乌干达、南苏丹、苏丹和埃及 [1]。"])
    turn = bot.prepare("它流经哪些国家？", HISTORY)
    *pieces, answer = bot.generate(turn)
    assert "".join(pieces) == answer.text == "它流经乌干达、南苏丹、苏丹和埃及 [1]。"
    assert answer.route == "grounded" and answer.standalone_question == "尼罗河流经哪些国家？"
    assert answer.sources == turn.sources
    assert answer.to_dict()["route"] == "grounded"


def test_each_step_runs_alone(kb):
    bot, _ = make_bot(kb, [])
    nile = bot.retriever.step("尼罗河流经哪些国家？", "尼罗河流经哪些国家？", Topic())
    assert nile.search.hits[0].source.endswith("nile.md")
    assert nile.evidence.sources[0].source.endswith("nile.md") and nile.evidence.reason == "passages about 尼罗河"
    bread = bot.retriever.step("怎么烤面包？", "怎么烤面包？", Topic())
    assert bread.evidence.sources == [] and bread.evidence.reason == "no passage reaches the threshold"
    translation, same = bot.cross_lingual_step("尼罗河流经哪些国家？", nile)
    assert same is nile and translation.reason == "not needed: grounded without it"
    off = make_bot(kb, [], rewrite=False)[0]
    assert off.rewrite_step("它流经哪些国家？", []).question == "它流经哪些国家？"


def test_a_refusal_is_decided_in_prepare_and_generate_calls_no_model(kb):
    bot, model = make_bot(kb, [], fallback="fixed", fallback_reply="请联系人工客服。", translate=False)
    turn = bot.prepare("怎么烤面包？")
    assert turn.route is Route.FALLBACK and turn.reply == "请联系人工客服。"
    *_, answer = bot.generate(turn)
    assert answer.text == "请联系人工客服。" and model.calls == []


def test_memory_questions_are_answered_from_the_history(kb):
    bot, model = make_bot(kb, [])
    turn = bot.prepare("我刚才问了什么？", HISTORY)
    assert turn.route is Route.MEMORY and turn.search is None
    *_, answer = bot.generate(turn)
    assert answer.text == "你刚才问的是：“尼罗河是什么？”" and model.calls == []


def test_deeper_search_for_evaluation_keeps_the_answer_the_same(kb):
    bot, _ = make_bot(kb, [], top_k=2)
    shallow, deep = bot.prepare("尼罗河流经哪些国家？"), bot.prepare("尼罗河流经哪些国家？", k=10)
    assert len(deep.search.hits) > len(shallow.search.hits) == 2
    assert [h.id for h in deep.sources] == [h.id for h in shallow.sources]


@pytest.mark.parametrize(
    "history, fragment",
    [
        (["a", "b"], "history item 1 is str 'a'"),
        ("尼罗河是什么？", "the history must be a list of messages, got str"),
        ([("user", "hi", "extra")], "history item 1 has 3 parts"),
        ([{"text": "hi"}], "history item 1 is dict"),
    ],
)
def test_history_of_the_wrong_shape_is_a_conversation_error(kb, history, fragment):
    bot, _ = make_bot(kb, [])
    with pytest.raises(ConversationError, match=fragment.replace("(", r"\(")) as caught:
        bot.rewrite("它流经哪些国家？", history)
    assert "\n" not in str(caught.value)


def test_the_langchain_runnable_uses_the_same_steps(kb):
    bot, _ = make_bot(kb, [NILE_REWRITE, "它流经乌干达、南苏丹、苏丹和埃及 [1]。"] * 2)
    chain = bot.as_runnable()
    record = chain.invoke({"question": "它流经哪些国家？", "history": HISTORY})
    assert record["route"] == "grounded" and record["standalone_question"] == "尼罗河流经哪些国家？"
    assert record["sources"][0]["source"].endswith("nile.md")
    pieces = list(chain.stream({"question": "它流经哪些国家？", "history": HISTORY}))
    assert len(pieces) > 1 and "".join(pieces) == "它流经乌干达、南苏丹、苏丹和埃及 [1]。"
