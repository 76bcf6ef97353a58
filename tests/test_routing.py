"""Routing that knows the entity: passages about another film do not ground an answer about this one; a
new subject after a topic does not inherit the topic; and `ragbot eval` counts how many grounded turns
were shown a gold document."""

import json

import pytest

import ragbot
from ragbot import KnowledgeBase, Route
from ragbot.conversation.routing import evidence
from ragbot.knowledge.knowledge_base import Hit

from helpers import make_bot

FILMS = [
    {
        "id": "film::我是山姆",
        "title": "我是山姆",
        "text": "我是山姆是杰茜·尼尔森执导的剧情片。我是山姆的上映时间：2001年12月28日。我是山姆的主演：西恩·潘。",
    },
    {
        "id": "film::心灵捕手",
        "title": "心灵捕手",
        "text": "心灵捕手是格斯·范·桑特执导的剧情片。心灵捕手的上映时间：1997年12月5日。心灵捕手的主演：马特·达蒙。",
    },
]
NOT_IN_KB = "《楚门的世界》的上映时间是哪天？"  # its best passages give other films' release dates
HISTORY = [{"role": "user", "content": "尼罗河是什么？"}, {"role": "assistant", "content": "尼罗河是非洲的一条大河。"}]


@pytest.fixture
def films(hash_settings, tmp_path):
    path = tmp_path / "films.jsonl"
    path.write_text("".join(json.dumps(f, ensure_ascii=False) + "\n" for f in FILMS), encoding="utf-8")
    # hash-embedder cosines are small: these questions are 0.13-0.18 from the passages of films they do not name
    kb = KnowledgeBase.open(hash_settings.replace(threshold=0.13), create=True)
    kb.ingest([path])
    return kb


def test_a_question_about_a_film_not_in_the_kb_is_not_grounded_on_other_films(films):
    bot, model = make_bot(films, rewrite=False)
    turn = bot.prepare(NOT_IN_KB)
    # the passages about the two other films clear the threshold: the score alone would ground the answer
    assert {h.doc_id for h in turn.search.confident} == {"film::我是山姆", "film::心灵捕手"}
    assert turn.route is Route.FALLBACK and turn.sources == []
    assert turn.route_reason == "no confident passage is about 楚门的世界"
    *_, answer = bot.generate(turn)
    assert answer.text.startswith("知识库中没有找到相关内容") and answer.to_dict()["route_reason"] == turn.route_reason


def test_a_question_naming_a_film_is_grounded_only_on_passages_about_it(films):
    bot, _ = make_bot(films, rewrite=False)
    turn = bot.prepare("《心灵捕手》的上映时间是哪天？")
    assert turn.route is Route.GROUNDED
    assert [h.doc_id for h in turn.sources] == ["film::心灵捕手"]  # the other film's passage is left out
    assert turn.route_reason == "passages about 心灵捕手"


def test_a_name_in_another_script_does_not_reject_a_passage_but_a_passage_about_another_entity_is():
    def hit(doc_id, title, text):
        return Hit(id=doc_id, text=text, source=f"{doc_id}.md", title=title, score=0.9, above_threshold=True)

    yangtze_zh = hit("yangtze-zh", "长江", "长江是亚洲第一长河，全长约6300公里。")
    nile_en = hit("nile-en", "The Nile", "The Nile is the longest river in Africa.")
    found = evidence([nile_en, yangtze_zh], ["Yangtze"], limit=3)
    assert found.sources == [yangtze_zh]  # cross-lingual: "Yangtze" cannot be looked for in Chinese text
    assert found.reason == "passages above the threshold (not in the language of Yangtze)"

    mentions = hit("delta", "Deltas", "Like the Nile, many rivers end in a delta.")
    found = evidence([mentions, nile_en], ["Nile"], limit=3)
    assert found.sources == [nile_en, mentions]  # the one whose title names it first
    assert evidence([], ["Nile"], 3).reason == "no passage reaches the threshold"


@pytest.fixture
def nile(hash_settings, corpus):
    # hash-embedder cosines: "那它全长多少公里？" is 0.23 from the Nile's passage, "怎么烤面包？" 0.0
    kb = KnowledgeBase.open(hash_settings.replace(threshold=0.25, topic=True, topic_margin=0.05), create=True)
    kb.ingest([corpus["md"].parent])
    return kb


def test_a_follow_up_keeps_the_topic_and_a_new_subject_does_not_inherit_it(nile):
    bot, _ = make_bot(nile, rewrite=False)
    follow_up = bot.prepare("那它全长多少公里？", HISTORY)
    assert follow_up.topic_query == "尼罗河 那它全长多少公里？"
    assert follow_up.route is Route.GROUNDED and follow_up.sources[0].source.endswith("nile.md")
    assert follow_up.route_reason == "passages about 尼罗河"

    bread = bot.prepare("怎么烤面包？", HISTORY)
    assert bread.topic_query == "" and bread.route is Route.FALLBACK
    assert bread.topic_reason.startswith("not used: the question alone is far from the topic's documents (0.000 <")
    # without the gate the topic query ("尼罗河 怎么烤面包？") grounds the bread question on the Nile
    ungated, _ = make_bot(nile, rewrite=False, topic_margin=1.0)
    assert ungated.prepare("怎么烤面包？", HISTORY).route is Route.GROUNDED


def test_eval_reports_the_share_of_grounded_turns_shown_a_gold_document(films, tmp_path):
    rows = [
        {"id": "named", "question": "《心灵捕手》的上映时间是哪天？", "gold_passage_ids": ["film::心灵捕手"]},
        {"id": "named-2", "question": "《我是山姆》的主演是谁？", "gold_passage_ids": ["film::我是山姆"]},
        # names nothing and its film is not in the knowledge base: grounded on the wrong films
        {"id": "unnamed", "question": "这部电影的上映时间是哪天？", "gold_passage_ids": ["film::楚门的世界"]},
        # names a film the knowledge base lacks: routed to the fallback, so not counted
        {"id": "fallback", "question": NOT_IN_KB, "gold_passage_ids": ["film::楚门的世界"]},
        {"id": "no-gold", "question": "《我是山姆》是谁执导的？", "expected_route": "grounded"},
    ]
    bot, _ = make_bot(films, rewrite=False)
    run = ragbot.evaluate(rows, bot, out=tmp_path / "run", generate=False)
    by_id = {r["id"]: r["routing"] for r in run.rows}
    assert [by_id[i]["predicted"] for i in ("named", "named-2", "unnamed", "fallback")] == ["grounded"] * 3 + [
        "fallback"
    ]
    assert by_id["unnamed"]["shown_gold"] is False and by_id["no-gold"]["shown_gold"] is None
    # by hand: 3 grounded turns with gold passages, 2 of them shown a gold document
    routing = run.summary["routing"]
    assert routing["grounded_with_gold"] == 3 and routing["grounded_precision_gold"] == pytest.approx(2 / 3)
    report = (tmp_path / "run" / "report.md").read_text(encoding="utf-8")
    assert "grounded on a gold document: 66.7% (2 of the 3 turns routed grounded" in report
    assert "| unnamed | 这部电影的上映时间是哪天？ |" in report  # listed under "Grounded without a gold document"


def test_the_passages_shown_come_from_as_many_documents_as_there_are():
    def hit(chunk, doc_id, score):
        return Hit(id=chunk, text=doc_id, source=f"{doc_id}.md", title=doc_id, score=score, above_threshold=True)

    film_1, film_2, actor = hit("f1", "喜剧之王", 0.92), hit("f2", "喜剧之王", 0.91), hit("a1", "张柏芝", 0.90)
    # two chunks of the film would leave out the actor a follow-up ("她还演过什么？") may ask about
    assert evidence([film_1, film_2, actor], [], limit=2).sources == [film_1, actor]
    assert evidence([film_1, film_2, actor], [], limit=3).sources == [film_1, film_2, actor]
    assert evidence([film_1, film_2], [], limit=2).sources == [film_1, film_2]  # no other document left


def test_a_follow_up_shows_the_passages_it_repeats_in_the_order_the_last_answer_saw_them(films):
    # the warm-up computed the prompt up to the last answer's passages: the same numbering again lets a
    # follow-up on them evaluate only its question; any other passage keeps its rank after them
    bot, _ = make_bot(films, rewrite=False, translate=False)
    question = "剧情片的上映时间和主演是谁？"
    ranked = bot.prepare(question).sources
    assert len(ranked) == 2 and ranked[0].doc_id != ranked[1].doc_id
    assert bot.prepare(question, last_sources=ranked[::-1]).sources == ranked[::-1]
    assert bot.prepare(question, last_sources=ranked[1:]).sources == ranked[::-1]
    other = Hit(id="gone", text="x", source="x.md", title="x", score=0.9, above_threshold=True)
    assert bot.prepare(question, last_sources=[other, *ranked[::-1]]).sources == ranked  # the run breaks at once
