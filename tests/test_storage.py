"""ragbot's SQLite files: numbered migrations on open, and storage problems found before the model is called.

Read-only files are made two ways: ``chmod`` (skipped as root, who ignores file modes) and
``chattr +i`` (the immutable flag, which binds root too; skipped where it is not allowed).
"""

import builtins
import os
import sqlite3
import subprocess

import pytest

from ragbot import KnowledgeBase
from ragbot.cli.main import main
from ragbot.cli.repl import run_chat
from ragbot.conversation.bot import RagBot
from ragbot.errors import ConversationStoreError, FinetuneError
from ragbot.storage.conversations import Feedback
from ragbot.storage.jobs import MIGRATIONS as JOB_MIGRATIONS
from ragbot.storage.jobs import JobRecords
from ragbot.storage.sqlite import MIGRATIONS, SQLiteStore
from ragbot.testing.fakes import EchoChatModel

# The exact DDL the conversations file had before migrations existed (then in ragbot/conversation/history.py,
# _SCHEMA), and the job records table (then ragbot/finetune/records.py): a "v0 file" is what that code wrote.
V0_CONVERSATIONS = """
CREATE TABLE IF NOT EXISTS conversations (
    name TEXT PRIMARY KEY,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation TEXT NOT NULL REFERENCES conversations(name) ON DELETE CASCADE,
    turn INTEGER NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    content TEXT NOT NULL,
    meta TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages(conversation, id);
CREATE TABLE IF NOT EXISTS feedback (
    conversation TEXT NOT NULL REFERENCES conversations(name) ON DELETE CASCADE,
    turn INTEGER NOT NULL,
    rating TEXT NOT NULL CHECK (rating IN ('good', 'bad')),
    correction TEXT,
    created_at REAL NOT NULL,
    PRIMARY KEY (conversation, turn)
);
"""
V0_JOBS = "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, created_at REAL, record TEXT NOT NULL)"


def write_v0_conversations(path):
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(V0_CONVERSATIONS)
    db.executescript(
        """
        INSERT INTO conversations VALUES ('trip', 1.0);
        INSERT INTO messages(conversation, turn, role, content, meta, created_at) VALUES
            ('trip', 0, 'user', 'What is the Nile?', '{}', 1.0),
            ('trip', 0, 'assistant', 'A river [1].', '{"route": "grounded"}', 1.0);
        INSERT INTO feedback VALUES ('trip', 0, 'bad', 'The longest river in Africa.', 2.0);
        """
    )
    db.close()


def applied(path):
    with sqlite3.connect(path) as db:
        return [name for (name,) in db.execute("SELECT name FROM _migrations ORDER BY rowid")]


def m099_tags(db):
    """A later migration, as a future ragbot would add: a new column (which IF NOT EXISTS cannot add)."""
    db.execute("ALTER TABLE conversations ADD COLUMN tags TEXT NOT NULL DEFAULT ''")


# --- migrations ---------------------------------------------------------------------------------------


def test_a_file_from_before_migrations_keeps_its_turns_and_feedback_and_gets_later_migrations(tmp_path, monkeypatch):
    path = tmp_path / "conversations.sqlite"
    write_v0_conversations(path)
    store = SQLiteStore(path)
    (turn,) = store.turns("trip")
    assert (turn.question, turn.answer, turn.meta) == ("What is the Nile?", "A river [1].", {"route": "grounded"})
    assert turn.feedback == Feedback("bad", "The longest river in Africa.")
    assert applied(path) == ["m001_initial", "m002_conversation_state", "m003_turn_ids", "m004_replies"]

    monkeypatch.setattr(MIGRATIONS, "steps", [*MIGRATIONS.steps, m099_tags])
    for _ in range(2):  # the second open applies nothing (ALTER TABLE ADD COLUMN would fail if run twice)
        store = SQLiteStore(path)
    assert applied(path) == ["m001_initial", "m002_conversation_state", "m003_turn_ids", "m004_replies", "m099_tags"]
    assert store.history("trip")[1].content == "A river [1]."
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT name, tags FROM conversations").fetchall() == [("trip", "")]


def test_opening_twice_applies_nothing_twice(tmp_path):
    path = tmp_path / "conversations.sqlite"
    SQLiteStore(path).append_turn("c", "q", "a")
    SQLiteStore(path).append_turn("c", "q2", "a2")
    assert applied(path) == MIGRATIONS.names
    assert MIGRATIONS.apply(sqlite3.connect(path), path, ConversationStoreError) == []
    assert len(SQLiteStore(path).history("c")) == 4


def test_a_failing_migration_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "conversations.sqlite"
    write_v0_conversations(path)

    def m099_broken(db):
        db.execute("CREATE TABLE half_done (x)")
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(MIGRATIONS, "steps", [*MIGRATIONS.steps, m099_broken])
    with pytest.raises(ConversationStoreError, match=r"^cannot use the conversations file .* \(disk I/O error\)"):
        SQLiteStore(path)
    with sqlite3.connect(path) as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "half_done" not in tables and "_migrations" not in tables  # m001 too was rolled back
    monkeypatch.undo()
    assert SQLiteStore(path).history("trip")[0].content == "What is the Nile?"


def test_a_file_from_a_newer_ragbot_is_refused_with_a_clear_error(tmp_path, monkeypatch, capsys, corpus):
    path = tmp_path / "conversations.sqlite"
    SQLiteStore(path).append_turn("trip", "q", "a")
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO _migrations VALUES ('m099_from_the_future', 1.0)")
    with pytest.raises(ConversationStoreError) as caught:
        SQLiteStore(path)
    assert str(caught.value) == (
        f"the conversations file {path} was written by a newer ragbot (schema changes m099_from_the_future "
        "are unknown here): upgrade ragbot to use it"
    )
    jobs = tmp_path / "jobs.sqlite"
    JobRecords(jobs).save("ftjob-1", endpoint="http://x/v1", base_model="m")
    with sqlite3.connect(jobs) as db:
        db.execute("INSERT INTO _migrations VALUES ('m099_from_the_future', 1.0)")
    with pytest.raises(FinetuneError, match=r"the job records .* was written by a newer ragbot .*upgrade ragbot"):
        JobRecords(jobs).get("ftjob-1")

    use_fake_models(monkeypatch, tmp_path, corpus, path)
    assert main(["ask", "--session", "trip", "What is the Nile?"]) == 1
    out, err = capsys.readouterr()
    assert "You asked" not in out and err.strip().splitlines()[-1].startswith("ragbot: error: the conversations file")


def test_job_records_written_before_migrations_are_kept(tmp_path, monkeypatch):
    path = tmp_path / "jobs.sqlite"
    with sqlite3.connect(path) as db:
        db.execute(V0_JOBS)
        db.execute(
            "INSERT INTO jobs VALUES ('ftjob-old', 1.0, ?)",
            ('{"id": "ftjob-old", "endpoint": "http://x/v1", "base_model": "m", "status": "succeeded"}',),
        )
    assert JobRecords(path).get("ftjob-old").status == "succeeded"
    assert applied(path) == ["m001_initial"]

    def m002_index(db):
        db.execute("CREATE INDEX jobs_by_created ON jobs(created_at)")  # fails if run twice

    monkeypatch.setattr(JOB_MIGRATIONS, "steps", [*JOB_MIGRATIONS.steps, m002_index])
    for _ in range(2):
        assert [r.id for r in JobRecords(path).all()] == ["ftjob-old"]
    assert applied(path) == ["m001_initial", "m002_index"]


# --- storage problems, found before the model is called -----------------------------------------------


def use_fake_models(monkeypatch, tmp_path, corpus, sessions):
    """The CLI in this process with the fake model, the hash embedder and an ingested corpus."""
    for key, value in {
        "RAGBOT_LLM": "fake",
        "RAGBOT_EMBEDDER": "hash",
        "RAGBOT_INDEX": str(tmp_path / "idx"),
        "RAGBOT_SESSIONS": str(sessions),
        "RAGBOT_THRESHOLD": "0.35",
    }.items():
        monkeypatch.setenv(key, value)
    assert main(["ingest", str(corpus["md"].parent)]) == 0


@pytest.fixture
def sessions(tmp_path):
    return tmp_path / "sessions" / "conversations.sqlite"


@pytest.fixture
def bot(hash_settings, corpus, sessions):
    kb = KnowledgeBase.open(hash_settings.replace(threshold=0.35, sessions=sessions), create=True)
    kb.ingest([corpus["md"].parent])
    return RagBot(kb, EchoChatModel())


def chat(monkeypatch, conversation, *lines) -> str:
    """Run the REPL in this process; a callable among ``lines`` runs (between questions) and gives the line."""
    import io

    feed = iter(lines)

    def read(prompt=""):
        item = next(feed, None)
        if item is None:
            raise EOFError
        return item() if callable(item) else item

    monkeypatch.setattr(builtins, "input", read)
    out = io.StringIO()
    assert run_chat(conversation, out) == 0
    return out.getvalue()


def damage(path, how):
    if how == "not a database":
        path.write_bytes(b"these are not the bytes of a SQLite file\n" * 200)
        return
    store = SQLiteStore(path)  # a real file with several pages, then one page overwritten
    for n in range(40):
        store.append_turn("trip", f"question {n}", "answer " * 50)
    store.close()  # the WAL is folded into the file
    with open(path, "r+b") as f:
        f.seek(4096 * 2)
        f.write(b"\xff" * 4096)


@pytest.mark.parametrize("how", ["not a database", "malformed"])
def test_a_damaged_conversations_file_is_one_line_and_exit_1_in_ask_and_chat(
    how, tmp_path, monkeypatch, capsys, corpus, sessions
):
    sessions.parent.mkdir()
    damage(sessions, how)
    before = sessions.read_bytes()
    use_fake_models(monkeypatch, tmp_path, corpus, sessions)
    capsys.readouterr()
    for command in (["ask", "--session", "trip", "What is the Nile?"], ["chat", "--session", "trip"]):
        monkeypatch.setattr(builtins, "input", lambda prompt="": "What is the Nile?")
        assert main(command) == 1
        out, err = capsys.readouterr()
        assert "You asked" not in out
        (line,) = [x for x in err.splitlines() if x.startswith("ragbot:")]
        assert line.startswith(f"ragbot: error: the conversations file {sessions} is damaged (")
        assert line.endswith("): move it away or set `sessions` (RAGBOT_SESSIONS) to another file")
    assert sessions.read_bytes() == before  # left as it was, for the user to look at


@pytest.fixture(params=["chmod", "immutable"])
def read_only(request):
    """A function making a file or folder read-only, for this user (chmod) or for root too (chattr +i)."""
    made = []

    def make(path):
        if request.param == "chmod":
            if os.geteuid() == 0:
                pytest.skip("root ignores file modes; the 'immutable' variant covers root")
            path.chmod(0o555 if path.is_dir() else 0o444)
            path.parent.chmod(0o555)
        elif subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
            pytest.skip("chattr +i is not allowed here")
        made.append(path)

    yield make
    for path in made:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)
        path.parent.chmod(0o755)
        path.chmod(0o755 if path.is_dir() else 0o644)


def saved_session(path, *turns):
    store = SQLiteStore(path)
    for question, answer in turns:
        store.append_turn("trip", question, answer)
    store.close()  # as a file left by an earlier ragbot run


def test_a_read_only_file_stops_ask_before_the_model_is_called(read_only, tmp_path, monkeypatch, capsys, corpus):
    sessions = tmp_path / "sessions" / "conversations.sqlite"
    saved_session(sessions, ("What is the Nile?", "A river."))
    read_only(sessions)
    use_fake_models(monkeypatch, tmp_path, corpus, sessions)
    capsys.readouterr()
    assert main(["ask", "--session", "trip", "Which countries does it flow through?"]) == 1
    out, err = capsys.readouterr()
    assert out == ""  # no answer streamed, then lost
    (line,) = [x for x in err.splitlines() if x.startswith("ragbot:")]
    assert line.startswith(f"ragbot: error: the conversations file {sessions} is read-only (")
    assert line.endswith("make it and its folder writable, or set `sessions` (RAGBOT_SESSIONS) to another file")


def test_a_read_only_folder_stops_ask_with_one_line(read_only, tmp_path, monkeypatch, capsys, corpus):
    sessions = tmp_path / "sessions" / "conversations.sqlite"
    saved_session(sessions, ("What is the Nile?", "A river."))
    read_only(sessions.parent)  # SQLite cannot make the file's -wal and -shm next to it
    use_fake_models(monkeypatch, tmp_path, corpus, sessions)
    capsys.readouterr()
    assert main(["ask", "--session", "trip", "Which countries does it flow through?"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    (line,) = [x for x in err.splitlines() if x.startswith("ragbot:")]
    assert line == (
        f"ragbot: error: cannot open the conversations file {sessions} (unable to open database file): make sure "
        "it and its folder can be read and written, or set `sessions` (RAGBOT_SESSIONS) to another file"
    )


def test_a_read_only_file_in_chat_says_so_and_the_chat_goes_on_unsaved(read_only, bot, sessions, monkeypatch):
    saved_session(sessions, ("What is the Nile?", "A river."))
    read_only(sessions)
    conversation = bot.conversation("trip")
    assert len(conversation.history) == 2  # an earlier session still resumes
    with pytest.raises(ConversationStoreError, match="is read-only"):
        next(conversation.stream("尼罗河是什么？"))  # raised before any text is shown
    out = chat(monkeypatch, conversation, "尼罗河是什么？", "怎么烤面包？", "/good")
    assert f"error: the conversations file {sessions} is read-only (" in out
    assert out.count("without saving") == 1  # said once, then the chat goes on
    assert "You asked: 尼罗河是什么？" in out and "You asked: 怎么烤面包？" in out
    assert "Marked answer 3 as good (kept in memory only" in out
    assert len(conversation.history) == 6
    assert len(SQLiteStore(sessions).history("trip")) == 2  # the file is untouched


@pytest.mark.parametrize("suffixes", [("",), ("", "-wal", "-shm")], ids=["rm file", "rm file -wal -shm"])
def test_a_file_deleted_during_a_chat_is_created_again_with_the_whole_chat(suffixes, bot, sessions, monkeypatch):
    conversation = bot.conversation("trip")

    def delete_then(line):
        def act():
            for suffix in suffixes:
                sessions.with_name(sessions.name + suffix).unlink(missing_ok=True)
            return line

        return act

    out = chat(monkeypatch, conversation, "尼罗河是什么？", "/bad 一条河", delete_then("怎么烤面包？"), "/history")
    assert f"The conversations file {sessions} was deleted or replaced while this chat ran" in out
    assert "holds this chat's 1 earlier turn(s)" in out
    reopened = SQLiteStore(sessions)
    assert [t.question for t in reopened.turns("trip")] == ["尼罗河是什么？", "怎么烤面包？"]
    assert reopened.feedback("trip") == {0: Feedback("bad", "一条河")}
    assert out.count("was deleted or replaced") == 1


def test_a_file_replaced_by_another_session_file_is_not_mixed_in(bot, sessions, tmp_path):
    conversation = bot.conversation("trip")
    conversation.ask("尼罗河是什么？")
    other = tmp_path / "other.sqlite"
    saved_session(other, ("Something else?", "Yes."))
    os.replace(other, sessions)
    with pytest.raises(
        ConversationStoreError,
        match="was replaced while this chat ran, and its session 'trip' differs",
    ):
        conversation.ask("怎么烤面包？")
    assert [m.content for m in SQLiteStore(sessions).history("trip")] == ["Something else?", "Yes."]


def test_threads_sharing_one_store_lose_no_turn(tmp_path):
    import threading

    store = SQLiteStore(tmp_path / "conversations.sqlite")

    def talk(worker):
        for n in range(10):
            store.append_turn(f"c{worker}", f"question {n}", f"answer {n}")
            store.check()

    threads = [threading.Thread(target=talk, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reopened = SQLiteStore(tmp_path / "conversations.sqlite")
    assert [len(reopened.turns(f"c{w}")) for w in range(4)] == [10, 10, 10, 10]
