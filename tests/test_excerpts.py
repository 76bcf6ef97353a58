"""The answer prompt's passages cut to what the question asks about (``passage_tokens``)."""

from __future__ import annotations

import pytest

from ragbot import Settings
from ragbot.conversation.answer_prompt import LOCAL_PASSAGE_TOKENS, answer_messages
from ragbot.conversation.excerpts import excerpts, merged_keys, sentences
from ragbot.knowledge.knowledge_base import Hit
from ragbot.tokens import count_tokens

from helpers import make_bot

DJANGO = (
    "被解救的姜戈。\n"
    "《被解救的姜戈》是一部2012年的美国西部片，讲述了一个获得自由的黑奴在赏金猎人的帮助下，从种植园主手中救出妻子的故事。\n"
    "被解救的姜戈的其它译名：被解放的迪亚戈、黑杀令（台湾）、决杀令（香港）\n"
    "被解救的姜戈的制片地区：美国\n"
    "被解救的姜戈的制片成本：1亿美元\n"
    "被解救的姜戈的对白语言：英语\n"
    "被解救的姜戈的上映时间：2012年12月25日\n"
    "被解救的姜戈的片长：165分钟\n"
    "被解救的姜戈的导演：昆汀·塔伦蒂诺\n"
    "被解救的姜戈的票房：4.25亿美元（全球）；\n1.6亿美元（北美）"
)
SAM = "我是山姆。\n我是山姆的上映时间：2001年12月28日\n我是山姆的片长：132分钟\n我是山姆的导演：杰茜·尼尔森"


def hit(title: str, text: str) -> Hit:
    return Hit(id=title, text=text, source=f"{title}.md", title=title, score=0.9, above_threshold=True)


def test_a_passage_is_cut_to_the_lines_the_question_asks_about_within_the_budget():
    django, sam = hit("被解救的姜戈", DJANGO), hit("我是山姆", SAM)
    cut = excerpts([django, sam], "被解救的姜戈是哪年上映的？", budget=60)
    assert [h.id for h in cut] == ["被解救的姜戈", "我是山姆"]  # every passage stays, in its place
    assert "上映时间：2012年12月25日" in cut[0].text and "…" in cut[0].text
    assert "制片成本" not in cut[0].text  # a line the question does not ask about
    assert sum(count_tokens(h.text) for h in cut) <= 60 + 2 * 3  # the budget, give or take the line breaks
    # a value listed over two lines ("……；" then the next item) stays whole
    assert "1.6亿美元（北美）" in excerpts([django], "它的票房是多少？", budget=40)[0].text
    assert excerpts([sam], "我是山姆是哪年上映的？", budget=500) == [sam]  # what fits stays as it is


def test_a_list_given_one_item_a_line_is_shown_whole():
    inception = hit(
        "盗梦空间",
        "盗梦空间。盗梦空间的上映时间：2010年09月02日\n"
        + "".join(f"盗梦空间的主演：{name}\n" for name in ("卢卡斯·哈斯", "安德鲁·普利文", "希里安·墨菲", "汤姆·哈迪"))
        + "".join(f"盗梦空间的类型：{kind}\n" for kind in ("动作", "悬疑", "惊悚", "科幻"))
        + "盗梦空间的票房：8.3亿美元\n盗梦空间的导演：克里斯托弗·诺兰",
    )
    cut = excerpts([inception], "这是什么类型的电影来着？", budget=30)[0].text
    assert "盗梦空间的类型：动作、悬疑、惊悚、科幻" in cut
    assert "汤姆·哈迪" not in cut  # the other list is not what was asked
    assert merged_keys(["Cast: Tom Hardy", "Cast: Ellen Page", "Director: Nolan"]) == [
        "Cast: Tom Hardy, Ellen Page",
        "Director: Nolan",
    ]
    # a time or an address is not a key
    assert merged_keys(["Talk at 10:30 room A", "Talk at 10:45 room B"]) == [
        "Talk at 10:30 room A",
        "Talk at 10:45 room B",
    ]
    assert merged_keys(["Docs https://a.example", "Docs https://b.example"]) == [
        "Docs https://a.example",
        "Docs https://b.example",
    ]


def test_a_value_listed_over_two_lines_is_one_sentence_spaced_as_its_script_needs():
    assert sentences("Items: one,\ntwo; three;\nfour.") == ["Items: one, two; three; four."]
    assert sentences("其它译名：被解放的迪亚戈、\n黑杀令，\n决杀令") == ["其它译名：被解放的迪亚戈、黑杀令，决杀令"]


def test_the_answer_prompt_shows_cut_passages_only_where_the_budget_says(hash_settings, corpus):
    from ragbot import KnowledgeBase

    kb = KnowledgeBase.open(hash_settings, create=True)
    kb.ingest([corpus["md"].parent])
    remote = make_bot(kb)[0]  # a scripted model stands for an endpoint: whole passages
    assert remote.passage_tokens() is None
    local = make_bot(kb)[0]
    local.answer_model.warms_prefixes = True  # what a local model says of itself
    assert local.passage_tokens() == LOCAL_PASSAGE_TOKENS
    assert make_bot(kb, passage_tokens=0)[0].passage_tokens() is None
    assert make_bot(kb, passage_tokens=80)[0].passage_tokens() == 80

    django = hit("被解救的姜戈", DJANGO)
    whole = answer_messages("它是哪年上映的？", [django], chinese=True)[-1].content
    cut = answer_messages("它是哪年上映的？", [django], chinese=True, passage_tokens=40)[-1].content
    assert "制片成本" in whole and "制片成本" not in cut and "2012年12月25日" in cut
    assert cut.startswith("<资料>\n[1] 被解救的姜戈\n")  # the title heads it; no file path


@pytest.mark.parametrize("bad", [-1, "many"])
def test_a_bad_passage_budget_is_refused_with_its_name(bad):
    from ragbot.errors import ConfigError

    with pytest.raises(ConfigError, match="passage_tokens"):
        Settings(passage_tokens=bad)
