"""Prefix warm-up: after an answer, the local model computes the next turn's static prompt parts, so a
follow-up's rewrite evaluates only its question. Token counts, not texts: they hold on any CPU."""

from __future__ import annotations

import time

import pytest

from ragbot import KnowledgeBase
from ragbot.conversation.history import as_messages
from ragbot.models.chat import OpenAIChatModel
from ragbot.models.local import LlamaCppChatModel

from helpers import NILE_REWRITE, make_bot
from llama_server import local_models_dir  # noqa: F401

HISTORY = [
    {"role": "user", "content": "How long is the Nile?"},
    {"role": "assistant", "content": "The Nile is about 6,650 km long."},
]
FOLLOW_UP = "Which countries does it flow through?"


@pytest.fixture
def kb(hash_settings, corpus):
    kb = KnowledgeBase.open(hash_settings.replace(threshold=0.35), create=True)
    kb.ingest([corpus["md"].parent])
    return kb


def test_warm_up_is_a_no_op_for_models_that_cannot_warm(kb):
    bot, model = make_bot(kb, [NILE_REWRITE, "它流经十一个国家 [1]。"])
    handle = bot.warm_up(HISTORY)
    assert handle.thread is None and handle.done and handle.computed == []
    remote = make_bot(kb)[0]
    remote.answer_model = remote.rewrite_model = OpenAIChatModel("gpt-4o-mini", base_url="http://127.0.0.1:9/v1")
    assert remote.warm_up(HISTORY).thread is None  # nothing is sent to an endpoint
    conv = bot.conversation()
    conv.ask("尼罗河是什么？")
    conv.ask("它流经哪些国家？")
    assert len(model.calls) == 3  # two answers and one rewrite: the warm-ups after them called nothing


def test_the_warmed_rewrite_prompt_is_the_one_the_rewrite_step_sends(kb):
    from ragbot.conversation.warmup import rewrite_messages

    bot, model = make_bot(kb, [NILE_REWRITE], translate=False)
    history = as_messages(HISTORY)
    assert rewrite_messages(bot, FOLLOW_UP, history) is not None
    bot.prepare(FOLLOW_UP, HISTORY)
    assert rewrite_messages(bot, FOLLOW_UP, history) == model.calls[0].messages
    assert bot.rewrite_model is model and len(model.calls) == 1  # recording sent nothing


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_after_warm_up_a_follow_ups_rewrite_evaluates_only_its_question(kb, local_models_dir):  # noqa: F811
    model = LlamaCppChatModel("smollm2-135m", n_threads=1, n_ctx=4096, models_dir=local_models_dir)
    bot = make_bot(kb, max_tokens=4, temperature=0.0)[0]
    bot.answer_model = bot.rewrite_model = model
    question_tokens = model.count_tokens(FOLLOW_UP)

    model.reset_cache()  # without warm-up: the whole rewrite prompt is evaluated
    cold = bot.prepare(FOLLOW_UP, HISTORY).rewrite.usage
    assert cold.calls == 1 and cold.cached_tokens == 0
    static = cold.prompt_tokens - question_tokens - 10  # the instructions, the examples and the history
    assert static > 400

    model.reset_cache()
    conv = bot.conversation()
    conv.history = as_messages(HISTORY)
    warming = conv.warm_up()
    deadline = time.monotonic() + 120
    while len(warming.computed) < 3 and not warming.done and time.monotonic() < deadline:
        time.sleep(0.05)
    # the next turn's prompts first: its rewrite, then its answer prompts with the history
    assert [name for name, _ in warming.computed[:3]] == ["rewrite.en", "grounded.en", "general.en"]
    answer = conv.ask(FOLLOW_UP)  # asked before the warm-up got to the other language: it stops there
    assert warming.cancelled and warming.done
    warm = answer.usage["rewrite"]
    assert warm.prompt_tokens == cold.prompt_tokens  # the same prompt...
    assert warm.prompt_tokens - warm.cached_tokens <= question_tokens + 10  # ...of which only the question is new
    assert warm.cached_tokens >= static
    said = answer.usage["answer"]  # the answer prompt's system text and history were warmed too
    assert said.cached_tokens >= model.count_tokens(HISTORY[0]["content"] + HISTORY[1]["content"])
    conv.warming.cancel()  # the warm-up this answer started
    assert conv.warming.wait(60)
