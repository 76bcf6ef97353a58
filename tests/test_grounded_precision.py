"""Grounded precision: a follow-up is shown the document it is about (docs/evaluation.md, "Grounded
precision"). Two causes of KdConv turns grounded without their gold document, each on a real FAISS
index with the hash embedder: the topic's other document never reaching the threshold, and films
whose bracketed title names a person counted as that person's document."""

import json

import pytest

from ragbot import KnowledgeBase, Route

from helpers import make_bot

DIRECTORS = [
    {
        "id": "anim::王树忱",
        "title": "王树忱",
        "text": "王树忱是中国动画导演，执导了哪吒闹海。王树忱出生于1928年，辽宁人。",
    },
    {
        "id": "anim::严定宪",
        "title": "严定宪",
        "text": "严定宪是中国动画导演，参与执导哪吒闹海。严定宪出生于1936年09月，江苏无锡人。",
    },
    {
        "id": "anim::哪吒闹海",
        "title": "哪吒闹海",
        "text": "哪吒闹海是1979年上映的动画片，导演是王树忱、严定宪、徐景达。",
    },
]
# the user names both directors, the answer talks about the second: "他" may be either
BOTH_DIRECTORS = [
    {"role": "user", "content": "王树忱和严定宪你听说过吗？"},
    {"role": "assistant", "content": "我知道严定宪，他是江苏无锡人。"},
]

GHIBLI = [
    {"id": "film::宫崎骏", "title": "宫崎骏", "text": "宫崎骏是日本动画导演、编剧，创立了吉卜力工作室。"},
    {
        "id": "film::风之谷",
        "title": "风之谷（日本1984年宫崎骏漫画改编动画电影）",
        "text": "风之谷的编剧是宫崎骏，制片地区是日本。",
    },
    {
        "id": "film::龙猫",
        "title": "龙猫（日本1988年宫崎骏执导动画电影）",
        "text": "龙猫的编剧是宫崎骏，制片地区是日本。",
    },
    {
        "id": "film::魔女宅急便",
        "title": "魔女宅急便（1989年吉卜力制作的动画电影）",
        "text": "魔女宅急便的编剧是宫崎骏，制片地区是日本，由吉卜力工作室制片。",
    },
]
ABOUT_KIKI = [
    {"role": "user", "content": "看过魔女宅急便这部影片吗？"},
    {"role": "assistant", "content": "看过，这是1989年的动画片，编剧是谁呀？"},
]


def _kb(settings, tmp_path, docs, **options):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    kb = KnowledgeBase.open(settings.replace(hybrid=False, **options), create=True)
    kb.ingest([path])
    return kb


@pytest.fixture
def directors(hash_settings, tmp_path):
    # hash-embedder cosines: "王树忱 他是哪年出生的？" is 0.30 from 王树忱's passage but 0.04 from
    # 严定宪's; "严定宪 他是哪年出生的？" is 0.32 from it. The question alone is 0.05 from the topic.
    return _kb(hash_settings, tmp_path, DIRECTORS, threshold=0.25, topic_margin=0.22)


def test_a_follow_up_sees_the_topics_other_document_too(directors):
    bot, model = make_bot(directors, rewrite=False, translate=False)
    answer = bot.answer("他是哪年出生的？", BOTH_DIRECTORS)
    assert answer.topic_query == "王树忱 他是哪年出生的？"  # the current entity is the first one named
    assert answer.route is Route.GROUNDED
    # before, only 王树忱's passage reached the threshold: 严定宪, whom the answer was about, was never shown
    assert {s["doc_id"] for s in answer.to_dict()["sources"]} == {"anim::王树忱", "anim::严定宪"}
    prompt = model.calls[-1].messages[-1].content
    assert "严定宪出生于1936年09月" in prompt and "王树忱出生于1928年" in prompt


@pytest.fixture
def ghibli(hash_settings, tmp_path):
    return _kb(hash_settings, tmp_path, GHIBLI, threshold=0.05)


def test_a_question_naming_a_person_is_shown_the_topics_film_before_other_films_titled_with_the_name(ghibli):
    bot, model = make_bot(ghibli, rewrite=False, translate=False)
    answer = bot.answer("编剧是宫崎骏，这是在哪里制片的呢？", ABOUT_KIKI)
    assert answer.route is Route.GROUNDED and answer.route_reason == "passages about 宫崎骏"
    shown = [s["doc_id"] for s in answer.to_dict()["sources"]]
    # 宫崎骏's own document first; then the film the conversation is about, not the films whose
    # bracketed titles name him (before, those two filled the three places as "titled 宫崎骏")
    assert shown[:2] == ["film::宫崎骏", "film::魔女宅急便"]
    assert "由吉卜力工作室制片" in model.calls[-1].messages[-1].content
