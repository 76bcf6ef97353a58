"""Prefix warm-up: after an answer, the local model computes the next turn's static prompt parts, so a
follow-up's rewrite evaluates only its question. Token counts, not texts: they hold on any CPU."""

from __future__ import annotations

import threading
import time

import pytest

from ragbot import KnowledgeBase
from ragbot.conversation.history import as_messages
from ragbot.models.chat import GenerationSettings, Message, OpenAIChatModel
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


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_one_conversations_turn_does_not_stop_anothers_warm_up(kb, local_models_dir):  # noqa: F811
    """In ``serve`` each request opens its conversation anew: a turn of one conversation used to
    cancel whichever warm-up had started last, another conversation's included."""
    model = LlamaCppChatModel("smollm2-135m", n_threads=1, n_ctx=4096, models_dir=local_models_dir)
    bot = make_bot(kb, max_tokens=4, temperature=0.0)[0]
    bot.answer_model = bot.rewrite_model = model
    static = bot.prepare(FOLLOW_UP, HISTORY).rewrite.usage.prompt_tokens - model.count_tokens(FOLLOW_UP) - 10
    model.reset_cache()

    other = bot.conversation()
    other.history = as_messages(HISTORY)
    warming = other.warm_up()
    deadline = time.monotonic() + 120
    while not warming.computed and not warming.done and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not warming.done, "the warm-up ended before the other conversation's turn could start"
    asker = bot.conversation()
    assert asker.ask("What is the Nile?").text  # this conversation's turn, while the other one warms
    asker.warming.cancel()
    assert warming.wait(180)
    assert not warming.cancelled
    names = [name for name, _ in warming.computed]
    assert names[:3] == ["rewrite.en", "grounded.en", "general.en"] and len(names) == 6
    follow_up = other.ask(FOLLOW_UP)  # its warm-up went on after the other turn: only the question is new
    rewrite = follow_up.usage["rewrite"]
    assert rewrite.cached_tokens >= static
    assert rewrite.prompt_tokens - rewrite.cached_tokens <= model.count_tokens(FOLLOW_UP) + 10
    other.warming.cancel()
    assert other.warming.wait(60)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_warm_up_that_gives_way_to_a_turn_goes_on_where_it_stopped(local_models_dir):  # noqa: F811
    model = LlamaCppChatModel("smollm2-135m", n_threads=1, n_ctx=4096, models_dir=local_models_dir)
    prompt = [Message("system", "You answer questions about rivers. " * 40), Message("user", "x")]
    variants = [prompt, [prompt[0], Message("user", "y")]]
    shared = len(model.llama.prompt_tokens([m.to_dict() for m in prompt])) - 8
    answered = threading.Event()

    def turn():  # asks for the model as soon as the warm-up has evaluated its first step
        while model.llama.n_tokens == 0:
            time.sleep(0.001)
        "".join(d.text for d in model.stream([Message("user", "Hi")], GenerationSettings(max_tokens=2)))
        answered.set()

    other = threading.Thread(target=turn)
    other.start()
    evaluated = model.warm(variants)
    other.join(60)
    assert answered.is_set()
    # the whole prefix once, though the turn's prompt replaced it in the context halfway
    assert shared - 64 <= evaluated <= shared + 8
    assert model.warm(variants) == 0  # and it is saved whole
