"""Conversation state (what a conversation is about) and the retrieval that uses it: a follow-up that
names nothing still finds the topic's document; a question that names another entity takes over."""

import json
import sqlite3

import pytest

from ragbot import KnowledgeBase, RagBot
from ragbot.conversation.topic import Topic, TopicDocument, entity_names, title_index, update_topic
from ragbot.storage.sqlite import SQLiteStore
from ragbot.testing.fakes import EchoChatModel

from helpers import run_cli

SONGS = [
    {
        "id": "song::七里香",
        "title": "七里香",
        "text": "《七里香》是周杰伦演唱的歌曲，收录于同名专辑。七里香的发行时间：2004年8月3日。",
    },
    {
        "id": "song::晴天",
        "title": "晴天",
        "text": "《晴天》是周杰伦演唱的歌曲，收录于专辑《叶惠美》。晴天的发行时间：2003年7月31日。",
    },
    {
        "id": "faq::发行",
        "title": "唱片常识",  # what a release-year question finds when it does not say whose release
        "text": "一张唱片是哪年发行的，一般印在封底。",
    },
    {
        "id": "river::yangtze",
        "title": "The Yangtze",
        "text": "The Yangtze is the longest river in Asia, about 6,300 kilometres long.",
    },
    {
        "id": "river::nile",
        "title": "The Nile",
        "text": "The Nile is the longest river in Africa, about 6,650 kilometres long.",
    },
]
ASKED = "《七里香》是谁唱的？"
FOLLOW_UP = "那它是哪年发行的？"  # names nothing; the scripted rewrite leaves it as it is


@pytest.fixture
def songs(tmp_path):
    path = tmp_path / "kb" / "songs.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in SONGS), encoding="utf-8")
    return path


@pytest.fixture
def kb(hash_settings, songs, tmp_path):
    kb = KnowledgeBase.open(
        # the hash embedder's cosines are small: a follow-up is 0.09 from its topic's document, "怎么烤面包？" 0.06
        hash_settings.replace(threshold=0.28, sessions=tmp_path / "s.sqlite", topic=True, topic_margin=0.2),
        create=True,
    )
    kb.ingest([songs])
    return kb


def scripted_bot(kb, *replies):
    """A bot whose rewrite returns the question unchanged and whose answers are ``replies``."""
    model = EchoChatModel()
    answers = list(replies)
    model.default = lambda messages: (
        EchoChatModel._reply(messages) if "改写" in messages[0].content or "Rewrite" in messages[0].content
        else answers.pop(0) if answers else "好的。"
    )  # fmt: skip
    return RagBot(kb, model)


def test_a_follow_up_that_names_nothing_still_retrieves_the_topic_document(kb):
    bot = scripted_bot(kb, "《七里香》是周杰伦唱的 [1]。", "2004年发行 [1]。")
    conv = bot.conversation()
    first = conv.ask(ASKED)
    assert first.route == "grounded" and first.sources[0].doc_id == "song::七里香"
    assert conv.topic.current == "七里香"
    assert conv.topic.documents[0] == TopicDocument("song::七里香", "七里香")

    # without the topic, the question as typed finds the FAQ about release years
    assert bot.prepare(FOLLOW_UP, conv.history, state=Topic()).sources[0].doc_id == "faq::发行"
    answer = conv.ask(FOLLOW_UP)
    assert answer.standalone_question == FOLLOW_UP  # the rewrite did not resolve "它"
    assert answer.route == "grounded" and answer.sources[0].doc_id == "song::七里香"
    assert answer.topic_query == "七里香 那它是哪年发行的？"
    # the threshold still judges dense cosines: every score is one the index gave for some query
    assert all(-1 <= h.score <= 1 and h.above_threshold == (h.score >= 0.28) for h in answer.hits)


def test_a_stateless_caller_gets_the_topic_from_the_history_text(kb):
    history = [{"role": "user", "content": ASKED}, {"role": "assistant", "content": "是周杰伦唱的。"}]
    answer = scripted_bot(kb, "2004年。").answer(FOLLOW_UP, history)
    assert answer.sources[0].doc_id == "song::七里香"
    assert answer.topic.entities[:2] == ("七里香", "周杰伦") or answer.topic.current == "七里香"


def test_a_question_that_names_another_entity_takes_over_the_topic(kb):
    bot = scripted_bot(kb, "周杰伦 [1]。", "2003年 [1]。", "2003年 [1]。", "About 6,300 km [1].")
    conv = bot.conversation()
    conv.ask(ASKED)
    for question in ("《晴天》是哪年发行的？", "晴天是哪年发行的？"):  # a 《》 name, or a document title
        answer = conv.ask(question)
        assert answer.topic_query == ""  # no topic injection
        found = [h.doc_id for h in answer.hits]
        assert found.index("song::晴天") < found.index("song::七里香")  # the new entity wins over the old topic
        # already standalone: exactly what the bot without a topic retrieves
        assert [h.id for h in answer.hits] == [h.id for h in bot.prepare(question, state=Topic()).search.hits[:5]]
        assert answer.topic.current == "晴天"
    english = conv.ask("And the Yangtze?")
    assert english.topic_query == "" and english.sources[0].doc_id == "river::yangtze"
    assert conv.topic.current == "Yangtze"


def test_the_topic_survives_a_restart_of_a_named_conversation(kb):
    bot = scripted_bot(kb, "周杰伦 [1]。")
    bot.conversation("music").ask(ASKED)
    bot.store.close()

    again = scripted_bot(KnowledgeBase.open(kb.settings), "2004年 [1]。").conversation("music")
    assert again.topic.current == "七里香" and again.topic.documents[0].doc_id == "song::七里香"
    assert again.ask(FOLLOW_UP).sources[0].doc_id == "song::七里香"


def test_an_older_conversations_file_without_state_gets_it_rebuilt_from_the_saved_turns(kb):
    scripted_bot(kb, "这首歌是周杰伦唱的 [1]。").conversation("old").ask(ASKED)
    path = kb.settings.sessions_path
    with sqlite3.connect(path) as db:  # the file as a ragbot from before the state was saved left it
        db.execute("DROP TABLE conversation_state")
        db.execute("DELETE FROM _migrations WHERE name = 'm002_conversation_state'")

    conv = scripted_bot(KnowledgeBase.open(kb.settings), "2004年 [1]。").conversation("old")
    assert conv.topic.documents[0] == TopicDocument("song::七里香", "七里香")  # from the turn's saved passages
    assert conv.ask(FOLLOW_UP).sources[0].doc_id == "song::七里香"
    saved = SQLiteStore(path).state("old")
    assert saved is not None and saved[0] == 2 and saved[1]["entities"][0] == "七里香"


def test_reset_forgets_the_topic_in_memory_and_in_the_file(kb):
    bot = scripted_bot(kb, "周杰伦 [1]。", "不知道。")
    conv = bot.conversation("music")
    conv.ask(ASKED)
    conv.reset()
    assert conv.topic == Topic() and bot.store.state("music") is None
    answer = conv.ask(FOLLOW_UP)
    assert answer.topic_query == "" and "七里香" not in answer.topic.entities
    assert bot.conversation("music").topic.current != "七里香"


def test_entities_are_found_in_text_most_recent_turn_first():
    titles = title_index([TopicDocument("r::nile", "尼罗河：非洲的生命之河"), TopicDocument("r::y", "The Yangtze")])
    assert entity_names("尼罗河流经哪些国家？比《长江》长吗？", titles) == ["尼罗河", "长江"]
    assert entity_names("How long is the Yangtze? What is LoRA and QLoRA?", titles) == ["Yangtze", "LoRA", "QLoRA"]
    assert entity_names("What is it? Tell me more.", titles) == []

    topic = update_topic(
        Topic(), "尼罗河是什么？", "非洲的一条大河。", [TopicDocument("r::nile", "尼罗河：非洲的生命之河")]
    )
    assert topic.current == "尼罗河" and topic.documents[0].doc_id == "r::nile"
    topic = update_topic(topic, "How long is the Yangtze?", "About 6,300 km.", [], titles)
    assert topic.entities == ("Yangtze", "尼罗河")
    assert [d.doc_id for d in topic.documents] == ["r::y", "r::nile"]
    assert Topic.from_dict(topic.to_dict()) == topic
    assert Topic.from_dict({"entities": [3, "x"], "documents": [{"title": "no id"}]}) == Topic(("x",))


# --- the CLI: `ask --json` across runs (each run a new process state), and /why, /reset in the chat ---------


@pytest.fixture
def env(tmp_path, songs):
    env = {
        "RAGBOT_EMBEDDER": "hash",
        "RAGBOT_LLM": "fake",  # its rewrite returns the question unchanged
        "RAGBOT_INDEX": str(tmp_path / "idx"),
        "RAGBOT_SESSIONS": str(tmp_path / "s.sqlite"),
        "RAGBOT_THRESHOLD": "0.28",
        "RAGBOT_TOPIC": "true",
        "RAGBOT_TOPIC_MARGIN": "0.2",
    }
    assert run_cli("ingest", str(songs), env=env).returncode == 0
    return env


def test_ask_json_shows_the_topic_and_a_later_run_uses_it(env):
    first = run_cli("ask", "--session", "s", "--json", ASKED, env=env)
    assert first.returncode == 0, first.stderr
    topic = json.loads(first.stdout)["topic"]
    assert topic["entities"][0] == "七里香" and topic["documents"][0] == {"doc_id": "song::七里香", "title": "七里香"}
    assert topic["used_in_retrieval"] is False

    second = json.loads(run_cli("ask", "--session", "s", "--json", FOLLOW_UP, env=env).stdout)
    assert second["standalone_question"] == FOLLOW_UP
    assert second["topic"]["used_in_retrieval"] is True and second["topic"]["query"] == "七里香 那它是哪年发行的？"
    assert second["sources"][0]["doc_id"] == "song::七里香"


def test_chat_why_shows_the_topic_and_reset_clears_it(env):
    lines = [ASKED, FOLLOW_UP, "/why", "/reset", FOLLOW_UP, "/why", "/quit"]
    out = run_cli("chat", "--session", "s", input="\n".join(lines) + "\n", env=env)
    assert out.returncode == 0, out.stderr
    before, after = out.stdout.split("Conversation reset.")
    assert "topic:               七里香" in before
    assert "topic query:         七里香 那它是哪年发行的？" in before
    assert "topic in retrieval:  used: the question alone is close to the topic's documents" in before
    assert "route:               grounded (threshold 0.280): passages about 七里香" in before
    assert "topic:" in after and "七里香" not in after.split("topic:")[1].splitlines()[0]
    assert "topic query:" not in after
