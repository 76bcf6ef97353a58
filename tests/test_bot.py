"""The conversation engine end to end, with a real FAISS index, the hash embedder and a scripted model."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from ragbot import KnowledgeBase
from ragbot.conversation.history import trim_history
from ragbot.conversation.turn import Answer
from ragbot.errors import ConversationError, ModelError, PromptError
from ragbot.models.chat import Message
from ragbot.storage.sqlite import SQLiteStore
from ragbot.tokens import count_tokens

from helpers import NILE_REWRITE, make_bot, run_cli


@pytest.fixture
def kb(hash_settings, corpus):
    kb = KnowledgeBase.open(hash_settings.replace(threshold=0.35), create=True)
    kb.ingest([corpus["md"].parent])
    return kb


def test_follow_up_is_rewritten_retrieved_and_answered_grounded_with_citations(kb):
    bot, model = make_bot(kb, ["尼罗河是非洲的一条大河 [1]。", NILE_REWRITE, "它流经乌干达、南苏丹、苏丹和埃及 [1]。"])
    conv = bot.conversation()
    first = conv.ask("尼罗河是什么？")
    assert first.route == "grounded" and first.standalone_question == "尼罗河是什么？"
    second = conv.ask("它流经哪些国家？")
    assert second.standalone_question == "尼罗河流经哪些国家？"
    assert second.route == "grounded" and second.text == "它流经乌干达、南苏丹、苏丹和埃及 [1]。"
    assert second.sources[0].source.endswith("nile.md") and second.sources[0].above_threshold
    # the answer prompt numbered the passages inside the delimiters and kept history before them
    answer_prompt = model.calls[-1].messages
    assert answer_prompt[0].role == "system" and "[1]" in answer_prompt[0].content
    assert [m.content for m in answer_prompt[1:3]] == ["尼罗河是什么？", "尼罗河是非洲的一条大河 [1]。"]
    assert "<资料>\n[1] 尼罗河 > 流经国家" in answer_prompt[-1].content
    assert "</资料>\n\n问题：尼罗河流经哪些国家？\n" in answer_prompt[-1].content
    assert second.usage["rewrite"].calls == 1 and second.usage["answer"].completion_tokens > 0
    assert set(second.timings) >= {"rewrite", "retrieval", "first_token", "generation", "total"}


def test_below_threshold_gets_the_labelled_general_answer(kb):
    bot, model = make_bot(kb, ["面包需要面粉、水和酵母。"], translate=False)  # the one reply is the answer
    answer = bot.conversation().ask("怎么烤面包？")
    assert answer.route == "fallback" and answer.sources == []
    assert answer.text == "知识库中没有找到相关内容，以下是通用回答：\n\n面包需要面粉、水和酵母。"
    english_bot, _ = make_bot(kb, ["Mix flour, water and yeast."], threshold=0.9, translate=False)
    english = english_bot.answer("How do I bake sourdough bread?")
    assert english.text.startswith("Not found in the knowledge base; answering from general knowledge")


def test_refuse_and_fixed_fallback_policies_make_no_model_call(kb):
    # with `translate` on, the only model call is the translation (tests/test_cross_lingual.py)
    bot, model = make_bot(kb, fallback="refuse", translate=False)
    assert bot.answer("怎么烤面包？").text == "知识库中没有找到相关内容，无法根据知识库回答这个问题。"
    bot, model = make_bot(kb, fallback="fixed", fallback_reply="请联系人工客服。", translate=False)
    assert bot.answer("怎么烤面包？").text == "请联系人工客服。" and model.calls == []


def test_questions_about_the_conversation_are_answered_from_memory(kb):
    bot, model = make_bot(kb, ["尼罗河是非洲的一条大河。"])
    conv = bot.conversation()
    conv.ask("尼罗河是什么？")
    calls = len(model.calls)
    said = conv.ask("what did you just say?")
    assert said.route == "memory" and said.text == "I just said:\n尼罗河是非洲的一条大河。"
    asked = conv.ask("我刚才问了什么？")
    assert asked.route == "memory" and asked.text == "你刚才问的是：“what did you just say?”"
    assert conv.ask("我问过哪些问题？").text.splitlines()[1:3] == ["1. 尼罗河是什么？", "2. what did you just say?"]
    assert len(model.calls) == calls  # no model call, no retrieval


def test_stream_yields_text_then_answer_and_never_the_reasoning(kb):
    bot, _ = make_bot(kb, ["尼罗河是河 [1]。", NILE_REWRITE, "它流经乌干达和埃及 [1]。"])
    conv = bot.conversation()
    conv.ask("尼罗河是什么？")
    items = list(conv.stream("它流经哪些国家？"))
    pieces, final = items[:-1], items[-1]
    assert isinstance(final, Answer) and len(pieces) > 1 and all(isinstance(p, str) for p in pieces)
    assert "".join(pieces) == final.text == "它流经乌干达和埃及 [1]。"
    assert "思考" not in "".join(pieces) and final.rewrite.reasoning == "“它”指尼罗河。"


def test_history_is_trimmed_to_the_token_budget_oldest_first(kb):
    long_turns = []
    for i in range(10):
        long_turns += [Message("user", f"问题{i}：" + "很长的内容。" * 30), Message("assistant", f"回答{i}")]
    trimmed = trim_history(long_turns, 300)
    assert trimmed == long_turns[-len(trimmed) :] and 0 < len(trimmed) < len(long_turns)
    assert sum(count_tokens(m.content) + 4 for m in trimmed) <= 300
    bot, model = make_bot(kb, history_tokens=300)
    bot.answer("尼罗河流经哪些国家？", long_turns)
    sent = model.calls[-1].messages
    assert sent[1].content == trimmed[0].content  # oldest kept turn follows the system prompt
    assert "尼罗河流经哪些国家？" in sent[-1].content  # the current question is always there


def test_named_conversation_persists_and_resumes(kb, tmp_path):
    bot, _ = make_bot(kb, ["尼罗河是河。", NILE_REWRITE, "乌干达和埃及。"], sessions=tmp_path / "s.sqlite")
    bot.conversation("trip").ask("尼罗河是什么？")
    resumed = bot.conversation("trip")
    assert [m.content for m in resumed.history] == ["尼罗河是什么？", "尼罗河是河。"]
    assert resumed.ask("它流经哪些国家？").standalone_question == "尼罗河流经哪些国家？"
    resumed.reset()
    assert SQLiteStore(tmp_path / "s.sqlite").history("trip") == []


def test_failed_turn_is_not_saved(kb, tmp_path):
    bot, model = make_bot(kb, ["尼罗河是河。"], sessions=tmp_path / "s.sqlite")
    conv = bot.conversation("c")
    conv.ask("尼罗河是什么？")
    model.enqueue(ModelError("cannot reach http://127.0.0.1:9/v1 (model 'm'); check base_url"))
    with pytest.raises(ModelError, match="cannot reach"):
        conv.ask("尼罗河流经哪些国家？")
    assert len(SQLiteStore(tmp_path / "s.sqlite").history("c")) == 2 and len(conv.history) == 2


@pytest.mark.parametrize(
    ("question", "message"),
    [("", "empty"), ("   \n", "empty"), ("\x00\x07", "empty"), ("问" * 100_000, "100,000 characters")],
)
def test_bad_questions_get_a_clear_error(kb, question, message):
    bot, _ = make_bot(kb)
    with pytest.raises(ConversationError, match=message):
        bot.conversation().ask(question)


def test_control_characters_are_removed_not_fatal(kb):
    bot, _ = make_bot(kb, ["ok"])
    assert bot.answer("尼罗河\x1b[31m是什么\x00？").question == "尼罗河 [31m是什么 ？"


def test_bad_history_is_refused():
    from ragbot.conversation.history import validate_history

    with pytest.raises(ConversationError, match="alternate"):
        validate_history([Message("assistant", "hi"), Message("user", "x")])
    with pytest.raises(ConversationError, match="no answer"):
        validate_history([Message("user", "x")])


def test_prompt_file_with_a_missing_variable_is_reported(kb, tmp_path):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "grounded.zh.txt").write_text("[system]\n只回答问题。\n[user]\n问题：${question}\n", encoding="utf-8")
    bot, _ = make_bot(kb, prompt_dir=prompts)
    with pytest.raises(PromptError, match=r"grounded.zh.txt does not use \$\{passages\}"):
        bot.answer("尼罗河流经哪些国家？")


def test_user_prompt_directory_overrides_bundled_prompt(kb, tmp_path):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "general.zh.txt").write_text("[system]\n你是海盗。\n[user]\n${question}\n", encoding="utf-8")
    bot, model = make_bot(kb, ["啊哈！"], prompt_dir=prompts)
    bot.answer("怎么烤面包？")
    assert model.calls[-1].messages[0].content == "你是海盗。"


def test_one_bot_serves_conversations_on_several_threads(kb):
    bot, _ = make_bot(kb)
    bot.answer_model.default = lambda messages: "回答：" + messages[-1].content.splitlines()[-1]
    results = {}

    def talk(n):
        conv = bot.conversation()
        for i in range(3):
            conv.ask(f"线程{n}的问题{i}：尼罗河")
        results[n] = conv.history

    threads = [threading.Thread(target=talk, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for n, history in results.items():
        assert [m.content for m in history[::2]] == [f"线程{n}的问题{i}：尼罗河" for i in range(3)]


@pytest.mark.slow
def test_session_survives_a_killed_process(tmp_path, corpus):
    """A chat process killed between turns loses nothing; the resumed session continues."""
    env = {
        **os.environ,
        "RAGBOT_EMBEDDER": "hash",
        "RAGBOT_LLM": "fake",
        "RAGBOT_INDEX": str(tmp_path / "idx"),
        "RAGBOT_SESSIONS": str(tmp_path / "s.sqlite"),
    }
    assert run_cli("ingest", str(corpus["md"].parent), env=env).returncode == 0
    chat = subprocess.Popen(  # a real process, to be killed
        [sys.executable, "-m", "ragbot", "chat", "--session", "k"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    chat.stdin.write("尼罗河是什么？\n")
    chat.stdin.flush()
    deadline = time.time() + 60
    store = SQLiteStore(tmp_path / "s.sqlite")
    while time.time() < deadline and len(store.history("k")) < 2:
        time.sleep(0.2)
    chat.send_signal(signal.SIGKILL)
    chat.wait()
    assert [m.role for m in store.history("k")] == ["user", "assistant"]
    out = run_cli("ask", "我刚才问了什么？", "--session", "k", "--json", env=env)
    assert json.loads(out.stdout)["answer"] == "你刚才问的是：“尼罗河是什么？”"
