"""What a user sees of an answer: no citation of a passage that was not shown, and the sources listed
once per document with the numbers that cite it."""

import pytest

from ragbot import KnowledgeBase, registry
from ragbot.config import Settings
from ragbot.conversation.bot import RagBot
from ragbot.conversation.citations import strip_citations
from ragbot.conversation.turn import Answer
from ragbot.testing.fakes import ScriptedChatModel

from helpers import run_cli

NILE = """# 尼罗河

## 概况

尼罗河是非洲的一条大河，全长约六千六百公里，是世界上最长的河流之一。

## 流经国家

尼罗河干流流经乌干达、南苏丹、苏丹和埃及，最后注入地中海。

## 历史

尼罗河孕育了古埃及文明，河水每年泛滥，带来肥沃的淤泥。
"""
TEA = "# 绿茶\n\n绿茶是不发酵的茶，在中国和日本很受欢迎，埃及人也爱喝茶。\n"
# small chunks: each section of nile.md is a chunk of its own. With the hash embedder "尼罗河流经哪些国家？"
# finds three of them above the threshold; BOTH (below) finds a nile chunk, the tea one, another nile
# chunk; "怎么烤面包？" finds nothing (a general answer).
BOTH = "尼罗河流经哪些国家？埃及人爱喝绿茶吗？"  # names both documents: the passages are about one of them
# translate off: with the hash embedder an English translation of "怎么烤面包？" clears 0.1 on a Nile chunk
SETTINGS = {"embedder": "hash", "chunk_tokens": 60, "chunk_overlap": 0, "threshold": 0.1, "translate": False}
GENERAL = "知识库中没有找到相关内容，以下是通用回答：\n\n"


@pytest.fixture
def docs(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "nile.md").write_text(NILE, encoding="utf-8")
    (folder / "tea.md").write_text(TEA, encoding="utf-8")
    return folder


def make_bot(tmp_path, docs, *replies):
    kb = KnowledgeBase.open(Settings(index=tmp_path / "index", **SETTINGS), create=True)
    kb.ingest([docs])
    return RagBot(kb, ScriptedChatModel(replies))


def streamed(bot, question):
    """(the text as it streamed, the Answer)."""
    *pieces, answer = bot.conversation().stream(question)
    assert isinstance(answer, Answer)
    return "".join(pieces), answer


def test_a_general_answer_shows_no_citation_marker_even_split_across_streamed_pieces(tmp_path, docs):
    # the fake model streams 4 characters at a time: "先和面[" "1]，再" "烤 [2" "]。见【" "3】"
    bot = make_bot(tmp_path, docs, "先和面[1]，再烤 [2]。见【3】")
    text, answer = streamed(bot, "怎么烤面包？")
    assert answer.route == "fallback" and answer.sources == []
    assert answer.text == GENERAL + "先和面，再烤。见"
    assert text == answer.text


def test_a_grounded_answer_keeps_citations_of_shown_passages_and_drops_the_others(tmp_path, docs):
    bot = make_bot(tmp_path, docs, "流经乌干达和埃及[1][4]，全长六千六百公里 [2, 5]，见 [7]。")
    text, answer = streamed(bot, "尼罗河流经哪些国家？")
    assert answer.route == "grounded" and len(answer.sources) == 3
    assert answer.text == "流经乌干达和埃及[1]，全长六千六百公里 [2]，见。"
    assert text == answer.text


@pytest.mark.parametrize(
    ("text", "passages", "shown"),
    [
        ("index a[1] or f(x)[0] [0]", 2, "index a[1] or f(x)[0]"),  # indexing is not a citation
        ("`xs[3]` and\n```\nprint([1, 2])\n```\n[3]", 0, "`xs[3]` and\n```\nprint([1, 2])\n```\n"),  # nor code
        ("See ［2］ and [1, 2].", 1, "See and [1]."),
    ],
)
def test_what_counts_as_a_citation_marker(text, passages, shown):
    assert strip_citations(text, passages) == shown


@pytest.fixture
def cli_env(tmp_path, docs):
    """`ragbot` run in-process with a scripted answer model registered as llm=display-test."""
    model = ScriptedChatModel(default=lambda messages: "答案[1]，另见[3]。")
    registry.chat_models.register("display-test", lambda settings, role="answer": model)
    env = {f"RAGBOT_{k.upper()}": str(v) for k, v in SETTINGS.items()}
    env.update(RAGBOT_LLM="display-test", RAGBOT_INDEX=str(tmp_path / "idx"), RAGBOT_REWRITE="false")
    assert run_cli("ingest", str(docs), env=env).returncode == 0
    yield env
    registry.chat_models.unregister("display-test")


def test_ask_lists_each_document_once_with_the_numbers_of_its_passages(cli_env):
    result = run_cli("ask", BOTH, env=cli_env)
    assert result.returncode == 0, result.stderr
    answer, sources = result.stdout.split("Sources:\n")
    assert "答案[1]，另见[3]。" in answer
    assert sources.rstrip("\n").splitlines() == [
        "  [1][3] 尼罗河 - docs/nile.md (score 0.495)",
        "  [2] 绿茶 - docs/tea.md (score 0.354)",
    ]


def test_chat_lists_sources_once_per_document_and_a_general_answer_cites_nothing(cli_env):
    result = run_cli("chat", input="尼罗河流经哪些国家？\n/sources\n怎么烤面包？\n/quit\n", env=cli_env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count("  [1][2][3] 尼罗河 - docs/nile.md (score ") == 2  # under the answer, and for /sources
    assert out.count("nile.md") == 2
    bread = out[out.index(GENERAL.strip()) :]
    assert "答案，另见。" in bread and "[1]" not in bread and "[3]" not in bread
