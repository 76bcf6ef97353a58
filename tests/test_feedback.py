"""Feedback on answers (/good, /bad, ``Conversation.feedback``), kept with the conversation in SQLite."""

import io
import sqlite3
import sys

import pexpect
import pytest

from ragbot import KnowledgeBase
from ragbot.cli.repl import HELP, run_chat
from ragbot.conversation.bot import RagBot
from ragbot.errors import ConversationError
from ragbot.storage.conversations import Feedback
from ragbot.storage.sqlite import SQLiteStore
from ragbot.testing.fakes import EchoChatModel

from helpers import spawn_chat


@pytest.fixture
def bot(hash_settings, corpus, tmp_path):
    kb = KnowledgeBase.open(hash_settings.replace(threshold=0.35, sessions=tmp_path / "s.sqlite"), create=True)
    kb.ingest([corpus["md"].parent])
    return RagBot(kb, EchoChatModel())


def test_feedback_via_the_api_persists_across_reopen_with_the_evidence(bot, tmp_path):
    conv = bot.conversation("trip")
    conv.ask("尼罗河是什么？")
    conv.ask("怎么烤面包？")
    assert conv.feedback("good", turn=0) == Feedback("good")
    assert conv.feedback("BAD", "  面粉、水和酵母，烤四十分钟。 ") == Feedback("bad", "面粉、水和酵母，烤四十分钟。")

    reopened = SQLiteStore(tmp_path / "s.sqlite")
    turns = reopened.turns("trip")
    assert [(t.question, t.feedback) for t in turns] == [
        ("尼罗河是什么？", Feedback("good")),
        ("怎么烤面包？", Feedback("bad", "面粉、水和酵母，烤四十分钟。")),
    ]
    grounded, fallback = turns[0].meta, turns[1].meta
    assert grounded["route"] == "grounded" and grounded["standalone_question"] == "尼罗河是什么？"
    passage = grounded["passages"][0]
    assert passage["title"] == "尼罗河" and passage["source"].endswith("nile.md")
    assert "尼罗河是非洲的一条大河" in passage["text"] and passage["chunk_id"]
    assert fallback["route"] == "fallback" and fallback["passages"] == []
    # a resumed conversation knows its ratings; marking again replaces the earlier mark
    resumed = bot.conversation("trip")
    assert resumed.ratings == {0: Feedback("good"), 1: Feedback("bad", "面粉、水和酵母，烤四十分钟。")}
    resumed.feedback("good", turn=1)
    assert SQLiteStore(tmp_path / "s.sqlite").feedback("trip") == {0: Feedback("good"), 1: Feedback("good")}
    resumed.reset()
    assert SQLiteStore(tmp_path / "s.sqlite").feedback("trip") == {}


@pytest.mark.parametrize(
    ("rating", "correction", "turn", "message"),
    [
        ("great", None, -1, "unknown rating 'great'; use 'good' or 'bad'"),
        ("good", "better text", -1, "a correction goes with a 'bad' rating"),
        ("bad", None, 5, "there is no turn 5; this conversation has 1 turn(s)"),
    ],
)
def test_bad_feedback_gets_a_one_line_error(bot, rating, correction, turn, message):
    conv = bot.conversation()
    conv.ask("尼罗河是什么？")
    with pytest.raises(ConversationError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        conv.feedback(rating, correction, turn=turn)


def test_feedback_before_any_answer_is_refused(bot):
    with pytest.raises(ConversationError, match="there is no answer to mark yet; ask a question first"):
        bot.conversation("empty").feedback("good")


def test_an_old_database_gains_feedback_and_keeps_its_conversations(bot, tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(  # the schema before feedback existed
        """
        CREATE TABLE conversations (name TEXT PRIMARY KEY, created_at REAL NOT NULL);
        CREATE TABLE messages (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            conversation TEXT NOT NULL REFERENCES conversations(name) ON DELETE CASCADE,
            turn INTEGER NOT NULL, role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
            content TEXT NOT NULL, meta TEXT NOT NULL DEFAULT '{}', created_at REAL NOT NULL);
        INSERT INTO conversations VALUES ('old', 1.0);
        INSERT INTO messages(conversation, turn, role, content, meta, created_at) VALUES
            ('old', 0, 'user', 'What is the Nile?', '{}', 1.0),
            ('old', 0, 'assistant', 'A river.', '{"route": "grounded"}', 1.0);
        """
    )
    db.commit()
    db.close()
    for _ in range(2):  # opening twice must not fail: the migration is idempotent
        store = SQLiteStore(path)
    store.set_feedback("old", 0, Feedback("bad", "The Nile is a river in north-east Africa."))
    (turn,) = SQLiteStore(path).turns("old")
    assert (turn.question, turn.answer, turn.meta) == ("What is the Nile?", "A river.", {"route": "grounded"})
    assert turn.feedback == Feedback("bad", "The Nile is a river in north-east Africa.")
    resumed = RagBot(bot.kb, bot.answer_model, store=store).conversation("old")
    assert resumed.ratings == {0: Feedback("bad", "The Nile is a river in north-east Africa.")}


def chat(conversation, typed: str, monkeypatch) -> str:
    """Run the REPL on ``typed`` lines (stdin is not a terminal, so it reads with input())."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(typed))
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)  # input() writes its "> " prompt here
    run_chat(conversation, out=out)
    return out.getvalue()


def test_unsaved_chat_marks_in_memory_and_says_so(bot, monkeypatch):
    conv = bot.conversation()
    shown = chat(conv, "/bad\nWhat is the Nile?\n/bad It flows north into the Mediterranean.\n/great\n", monkeypatch)
    assert "Nothing to mark yet: ask a question first." in shown
    assert (
        "Marked answer 1 as bad with your correction (kept in memory only: this chat is not saved; "
        "use --session NAME to keep feedback)." in shown
    )
    assert "Unknown command /great" in shown
    assert conv.ratings == {0: Feedback("bad", "It flows north into the Mediterranean.")}
    assert "/good" in HELP and "/bad [corrected answer]" in HELP


@pytest.mark.slow
def test_chat_good_and_bad_are_saved_with_the_session(chat_env, tmp_path):
    child = spawn_chat(chat_env, "--session", "demo")
    child.sendline("/help")
    child.expect(r"/bad \[corrected answer\]")
    child.sendline("尼罗河是什么？")
    child.expect(r"Sources:[\s\S]*?\(score [\s\S]*?>")
    child.sendline("/good")
    child.expect(r"Marked answer 1 as good \(saved in session 'demo'\)\.")
    child.sendline("Which countries does it cross?")
    child.expect("You asked")
    child.sendline("/bad Uganda, South Sudan, Sudan and Egypt.")
    child.expect(r"Marked answer 2 as bad with your correction \(saved in session 'demo'\)\.")
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    assert SQLiteStore(tmp_path / "s.sqlite").feedback("demo") == {
        0: Feedback("good"),
        1: Feedback("bad", "Uganda, South Sudan, Sudan and Egypt."),
    }
