"""The conversation store contract, run against a real SQLite file and a real PostgreSQL server that the
tests start (``postgres_server``): turns, state, feedback, clear, names, migrations, two processes
appending to one conversation, and PostgreSQL unreachable at start or going away mid-run."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest

from ragbot import KnowledgeBase
from ragbot.cli.main import main
from ragbot.config import Settings, load_settings
from ragbot.errors import (
    ConfigError,
    ConversationError,
    ConversationStoreError,
    StoreUnavailableError,
    StoreUnreachableError,
)
from ragbot.migrations import run_script
from ragbot.storage.conversations import Feedback, Reply, open_conversation_store
from ragbot.storage.postgres import MIGRATIONS as PG_MIGRATIONS
from ragbot.storage.postgres import PostgresStore, mask_url
from ragbot.storage.sqlite import MIGRATIONS as SQLITE_MIGRATIONS

from helpers import make_bot

REPO = Path(__file__).resolve().parents[1]
UNREACHABLE = "postgresql://ragbot:s3cret-pw@127.0.0.1:1/ragbot"
MASKED = "postgresql://ragbot:***@127.0.0.1:1/ragbot"


def test_migrations_of_both_stores_have_the_same_names():
    names = ["m001_initial", "m002_conversation_state", "m003_turn_ids", "m004_replies"]
    assert PG_MIGRATIONS.names == SQLITE_MIGRATIONS.names == names


def test_a_turn_is_saved_whole_and_read_back_by_another_store(stores):
    store = stores()
    meta = {"route": "grounded", "standalone_question": "尼罗河流经哪些国家？", "passages": [{"chunk_id": "c1"}]}
    assert store.append_turn("trip", "尼罗河是什么？", "尼罗河是非洲的一条大河。") == 0
    assert store.append_turn("trip", "它流经哪些国家？", "乌干达和埃及 [1]。", meta, state={"entity": "尼罗河"}) == 1
    again = stores()  # what another process sees
    assert [(m.role, m.content) for m in again.history("trip")] == [
        ("user", "尼罗河是什么？"),
        ("assistant", "尼罗河是非洲的一条大河。"),
        ("user", "它流经哪些国家？"),
        ("assistant", "乌干达和埃及 [1]。"),
    ]
    turns = again.turns("trip")
    assert [(t.turn, t.question, t.answer) for t in turns] == [
        (0, "尼罗河是什么？", "尼罗河是非洲的一条大河。"),
        (1, "它流经哪些国家？", "乌干达和埃及 [1]。"),
    ]
    assert turns[0].meta == {} and turns[1].meta == meta
    assert again.state("trip") == (2, {"entity": "尼罗河"})
    assert again.history("nobody") == [] and again.state("nobody") is None and again.turns("nobody") == []


def test_feedback_is_kept_per_turn_and_replaced(stores):
    store = stores()
    store.append_turn("trip", "What is the Nile?", "A river.")
    store.append_turn("trip", "How long is it?", "About 100 km.")
    store.set_feedback("trip", 0, Feedback("good"))
    store.set_feedback("trip", 1, Feedback("bad", "About 6,650 km."))
    store.set_feedback("trip", 0, Feedback("bad"))  # changed its mind
    again = stores()
    assert again.feedback("trip") == {0: Feedback("bad"), 1: Feedback("bad", "About 6,650 km.")}
    assert [t.feedback for t in again.turns("trip")] == [Feedback("bad"), Feedback("bad", "About 6,650 km.")]
    with pytest.raises(ConversationError, match="conversation 'trip' has no saved turn 3; nothing to mark"):
        again.set_feedback("trip", 2, Feedback("good"))
    assert again.feedback("trip") == {0: Feedback("bad"), 1: Feedback("bad", "About 6,650 km.")}


def test_clear_forgets_turns_feedback_and_state_and_names_list_oldest_first(stores):
    store = stores()
    store.append_turn("first", "q", "a", state={"entity": "x"})
    store.set_feedback("first", 0, Feedback("good"))
    store.append_turn("second", "q", "a")
    store.clear("first")
    again = stores()
    assert again.history("first") == [] and again.feedback("first") == {} and again.state("first") is None
    assert again.history("second") != []
    assert again.names() == ["first", "second"]
    assert again.append_turn("first", "new start", "ok") == 0  # numbering starts again
    assert again.check() is False  # usable, nothing to save back


def test_the_migrations_are_recorded_and_a_newer_schema_is_refused(stores, location):
    stores()
    import sqlite3

    if isinstance(location, Path):
        db = sqlite3.connect(location)
        applied = [name for (name,) in db.execute("SELECT name FROM _migrations ORDER BY name")]
        db.execute("INSERT INTO _migrations VALUES ('m099_from_the_future', 0)")
        db.commit()
        db.close()
    else:
        import psycopg

        with psycopg.connect(location) as db:
            applied = [name for (name,) in db.execute("SELECT name FROM _migrations ORDER BY name")]
            db.execute("INSERT INTO _migrations VALUES ('m099_from_the_future', 0)")
    assert applied == ["m001_initial", "m002_conversation_state", "m003_turn_ids", "m004_replies"]
    with pytest.raises(ConversationStoreError, match="by a newer ragbot .*m099_from_the_future.*upgrade ragbot"):
        stores()


# --- the same reads from both stores ---------------------------------------------------------------

# Rows written by SQL, not by a store: a conversation copied in from elsewhere, turn 1 before turn 0 (so
# its row ids do not follow its turn numbers), and two conversations with the same creation time.
COPIED = """
INSERT INTO conversations(name, created_at) VALUES ('copied', 1.0), ('b-twin', 2.0), ('a-twin', 2.0);
INSERT INTO messages(conversation, turn, role, content, created_at) VALUES
    ('copied', 1, 'user', 'How long is it?', 1.0),
    ('copied', 1, 'assistant', 'About 6,650 km.', 1.0),
    ('copied', 0, 'user', 'What is the Nile?', 1.0),
    ('copied', 0, 'assistant', 'A river.', 1.0);
"""


def _run_sql(location, script: str) -> None:
    """``script`` run on the store's database with its own driver, as another program would."""
    if isinstance(location, Path):
        import sqlite3

        with contextlib.closing(sqlite3.connect(location)) as db, db:
            run_script(db, script)
    else:
        import psycopg

        with psycopg.connect(location) as db:
            run_script(db, script)


def test_turns_are_read_in_turn_order_whatever_the_row_ids(stores, location):
    store = stores()
    _run_sql(location, COPIED)
    assert [m.content for m in store.history("copied")] == [
        "What is the Nile?",
        "A river.",
        "How long is it?",
        "About 6,650 km.",
    ]
    assert [(t.turn, t.question, t.answer) for t in store.turns("copied")] == [
        (0, "What is the Nile?", "A river."),
        (1, "How long is it?", "About 6,650 km."),
    ]
    assert store.names() == ["copied", "a-twin", "b-twin"]  # by creation, then by name
    assert store.append_turn("copied", "Where does it end?", "In the Mediterranean.") == 2


def _reads(store) -> dict:
    names = store.names()
    return {
        "names": names,
        "history": {n: store.history(n) for n in names},
        "turns": {n: store.turns(n) for n in names},
        "feedback": {n: store.feedback(n) for n in names},
        "state": {n: store.state(n) for n in names},
        "reply": store.reply("trip", "key-1"),
    }


def test_both_stores_read_back_the_same_for_the_same_writes(tmp_path, postgres_server):
    """One contract: the same writes, every reader's answer compared between SQLite and PostgreSQL."""
    read = {}
    for location in (tmp_path / "conversations.sqlite", postgres_server.new_database()):
        store = open_conversation_store(location)
        try:
            store.append_turn("trip", "尼罗河是什么？", "一条大河。", {"route": "grounded"}, state={"entity": "尼罗河"})
            store.append_turn("trip", "它有多长？", "约6650公里。", reply=Reply("digest", {"text": "约6650公里。"}))
            store.append_turn("trip", "它有多长？", "约6650公里。", turn_id="key-1", reply=Reply("d1", {"n": 1}))
            store.set_feedback("trip", 1, Feedback("bad", "约6650公里 [1]。"))
            store.append_turn("gone", "q", "a")
            store.clear("gone")
            _run_sql(location, COPIED)
            read[type(store).__name__] = _reads(store)
        finally:
            store.close()
    sqlite_reads, postgres_reads = read["SQLiteStore"], read["PostgresStore"]
    sqlite_reads["reply"] = replace(sqlite_reads["reply"], created=0.0)  # the one value that is a clock's
    postgres_reads["reply"] = replace(postgres_reads["reply"], created=0.0)
    assert sqlite_reads == postgres_reads
    assert sqlite_reads["names"] == ["copied", "a-twin", "b-twin", "trip", "gone"]


def _before_feedback_is_read(store, action, monkeypatch) -> None:
    """Run ``action`` once, just before ``store`` runs a query reading the feedback table."""

    def reads_feedback(sql: str) -> bool:
        return sql.lstrip().upper().startswith("SELECT") and "feedback" in sql

    if isinstance(store, PostgresStore):
        import psycopg

        execute = psycopg.Connection.execute

        def hooked(db, query, params=None, **kwargs):
            if reads_feedback(str(query)):
                action()
            return execute(db, query, params, **kwargs)

        monkeypatch.setattr(psycopg.Connection, "execute", hooked)
    else:
        store._db.set_trace_callback(lambda sql: action() if reads_feedback(sql) else None)


def test_turns_and_their_feedback_are_read_in_one_snapshot(stores, monkeypatch):
    """A conversation cleared and started again while its turns are read comes back as it was or as it is,
    never with the old answer and the new answer's feedback."""
    reader, writer = stores(), stores()
    reader.append_turn("trip", "What is the Nile?", "A river.")
    done = []

    def meanwhile():
        if not done:
            done.append(True)
            writer.clear("trip")
            writer.append_turn("trip", "How long is the Amazon?", "About 6,400 km.")
            writer.set_feedback("trip", 0, Feedback("bad", "About 6,992 km."))

    before = [("What is the Nile?", "A river.", None)]
    after = [("How long is the Amazon?", "About 6,400 km.", Feedback("bad", "About 6,992 km."))]
    _before_feedback_is_read(reader, meanwhile, monkeypatch)
    read = [(t.question, t.answer, t.feedback) for t in reader.turns("trip")]
    assert done and [(t.question, t.answer, t.feedback) for t in writer.turns("trip")] == after
    assert read in (before, after)


# --- many processes, one conversation -----------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import os, sys, time
    from ragbot.storage.conversations import open_conversation_store

    location, worker, turns, folder = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    store = open_conversation_store(location)
    open(os.path.join(folder, "ready-" + worker), "w").close()
    while not os.path.exists(os.path.join(folder, "go")):
        time.sleep(0.001)
    started = time.time()
    numbers = [store.append_turn("shared", f"q {worker} {i}", f"a {worker} {i}") for i in range(turns)]
    print(started, time.time())
    print(" ".join(map(str, numbers)))
    """
)


@pytest.mark.slow
def test_two_processes_appending_to_one_conversation_lose_and_repeat_no_turn(location, tmp_path):
    turns = 60
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(location), name, str(turns), str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for name in ("A", "B")
    ]
    given, spans = {}, {}
    try:
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"ready-{name}").exists() for name in "AB"):  # both have opened the store
            assert time.monotonic() < deadline and all(w.poll() is None for w in workers), "a worker did not start"
            time.sleep(0.01)
        (tmp_path / "go").touch()
        for name, worker in zip("AB", workers, strict=True):
            out, err = worker.communicate(timeout=60)
            assert worker.returncode == 0, err
            span, numbers = out.splitlines()
            spans[name] = [float(t) for t in span.split()]
            given[name] = [int(n) for n in numbers.split()]
    finally:
        for worker in workers:
            worker.kill()
    assert spans["A"][0] < spans["B"][1] and spans["B"][0] < spans["A"][1]  # they appended at the same time
    store = open_conversation_store(location)
    try:
        saved = store.turns("shared")
        history = store.history("shared")
    finally:
        store.close()
    assert sorted(given["A"] + given["B"]) == list(range(2 * turns))  # each append was told a different number
    assert [t.turn for t in saved] == list(range(2 * turns))
    for t in saved:  # each turn's question and answer come from the same append
        assert t.answer == t.question.replace("q ", "a ", 1)
    assert sorted(t.question for t in saved) == sorted(f"q {w} {i}" for w in "AB" for i in range(turns))
    assert [m.role for m in history] == ["user", "assistant"] * (2 * turns)
    for name, numbers in given.items():  # the number each append was given is the turn saved with its question
        assert [saved[n].question for n in numbers] == [f"q {name} {i}" for i in range(turns)]


# --- PostgreSQL unreachable, or going away -----------------------------------------------------


def test_an_unreachable_database_is_one_line_naming_the_url_without_its_password():
    with pytest.raises(StoreUnreachableError) as info:
        open_conversation_store(UNREACHABLE)
    message = str(info.value)
    assert message == (
        f"cannot reach the conversation database {MASKED} (Connection refused): start PostgreSQL or fix the URL "
        "in `sessions` (RAGBOT_SESSIONS, --sessions)"
    )
    assert isinstance(info.value, StoreUnavailableError)  # a server answers 503 for it too


@pytest.mark.parametrize("how", ["flag", "setting"])
def test_chat_with_an_unreachable_database_exits_1_with_that_line(how, monkeypatch, capsys):
    if how == "flag":
        code = main(["chat", "--session", "trip", "--sessions", UNREACHABLE, "--llm", "fake", "--embedder", "hash"])
    else:
        monkeypatch.setenv("RAGBOT_SESSIONS", UNREACHABLE)
        code = main(["chat", "--llm", "fake", "--embedder", "hash"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.splitlines()[-1] == (
        f"ragbot: error: cannot reach the conversation database {MASKED} (Connection refused): start PostgreSQL "
        "or fix the URL in `sessions` (RAGBOT_SESSIONS, --sessions)"
    )
    assert "s3cret" not in err


def test_a_password_in_the_url_or_its_parameters_is_never_shown():
    assert (
        mask_url("postgresql://u:p%40ss@db:5432/chat?sslmode=require")
        == "postgresql://u:***@db:5432/chat?sslmode=require"
    )
    assert mask_url("postgresql://db/chat?user=u&password=secret") == "postgresql://db/chat?user=u&password=***"
    with pytest.raises(StoreUnreachableError) as info:
        open_conversation_store("postgresql://127.0.0.1:1/chat?user=u&password=secret")
    assert "secret" not in str(info.value) and "password=***" in str(info.value)


def test_a_url_the_driver_cannot_parse_is_a_config_error_without_the_password():
    with pytest.raises(ConfigError) as info:
        open_conversation_store("postgresql://ragbot:pw%zz@db.example/ragbot")
    assert str(info.value).startswith("bad value for sessions: postgresql://ragbot:***@db.example/ragbot is not a")
    assert "pw%zz" not in str(info.value)
    with pytest.raises(ConfigError, match="a mysql:// URL; give a SQLite file path or a postgresql:// URL"):
        open_conversation_store("mysql://db/ragbot")


def test_sessions_takes_a_url_as_text_and_a_path_as_a_path(monkeypatch, tmp_path):
    url = "postgresql://ragbot:pw@db.internal:5432/ragbot?sslmode=require"
    assert Settings(sessions=url).sessions == url
    monkeypatch.setenv("RAGBOT_SESSIONS", url)
    assert load_settings().sessions_location == url
    (tmp_path / "ragbot.toml").write_text('sessions = "~/chats.sqlite"\n')
    monkeypatch.delenv("RAGBOT_SESSIONS")
    assert load_settings().sessions_location == Path("~/chats.sqlite").expanduser()
    with pytest.raises(ConfigError, match="sessions is a database URL, not a file"):
        _ = Settings(sessions=url).sessions_path


def test_postgres_stopped_mid_run_is_store_unavailable_then_works_again_without_a_restart(postgres_server):
    store = PostgresStore(postgres_server.new_database() + "&connect_timeout=2")  # wait 2 s for it, not 5
    try:
        store.append_turn("trip", "before", "saved")
        postgres_server.stop()
        try:
            for call in (lambda: store.append_turn("trip", "during", "lost"), store.check):
                with pytest.raises(StoreUnavailableError) as info:
                    call()
                message = str(info.value)
                assert message.startswith(f"the conversation database {store.location} is unavailable (")
                assert message.endswith("nothing was saved: try again once it is back") and "\n" not in message
        finally:
            postgres_server.start()
        started = time.monotonic()
        assert store.append_turn("trip", "after", "saved too") == 1  # the first call after the restart works
        assert time.monotonic() - started < 5
        assert [m.content for m in store.history("trip")] == ["before", "saved", "after", "saved too"]
    finally:
        store.close()


def test_a_named_conversation_in_postgres_is_refused_before_the_model_is_called_while_it_is_away(
    postgres_server, hash_settings, corpus
):
    url = postgres_server.new_database() + "&connect_timeout=2"
    kb = KnowledgeBase.open(hash_settings.replace(threshold=0.35), create=True)
    kb.ingest([corpus["md"].parent])
    replies = ["尼罗河是非洲的一条大河 [1]。", "第二个回答。"]
    bot, model = make_bot(kb, replies, sessions=url, rewrite=False, translate=False)
    bot.conversation("trip").ask("尼罗河是什么？")
    conversation = bot.conversation("trip")  # as a stateless worker does for each request
    assert [m.content for m in conversation.history] == ["尼罗河是什么？", "尼罗河是非洲的一条大河 [1]。"]
    calls = len(model.calls)
    postgres_server.stop()
    try:
        with pytest.raises(StoreUnavailableError, match="is unavailable"):
            conversation.ask("怎么烤面包？")
        assert len(model.calls) == calls  # checked before the model was asked: nothing to throw away
    finally:
        postgres_server.start()
    assert conversation.ask("怎么烤面包？").text.endswith("第二个回答。")
    saved = open_conversation_store(url)
    try:
        assert [t.question for t in saved.turns("trip")] == ["尼罗河是什么？", "怎么烤面包？"]
        assert saved.state("trip") == (2, conversation.topic.to_dict())
    finally:
        saved.close()
        bot.store.close()


def test_the_terminal_chat_keeps_its_session_while_postgres_is_away(
    postgres_server, hash_settings, corpus, monkeypatch
):
    import io

    from ragbot.cli import repl

    url = postgres_server.new_database() + "&connect_timeout=2"
    kb = KnowledgeBase.open(hash_settings.replace(threshold=0.35), create=True)
    kb.ingest([corpus["md"].parent])
    replies = ["尼罗河是非洲的一条大河 [1]。", "烤面包要面粉。"]
    bot, _ = make_bot(kb, replies, sessions=url, rewrite=False, translate=False)
    typed = iter(["尼罗河是什么？", "stop", "怎么烤面包？", "start", "怎么烤面包？"])

    def read(prompt: str) -> str:  # the user types; between two lines the database goes away, then comes back
        line = next(typed, None)
        if line is None:
            raise EOFError
        if line in ("stop", "start"):
            getattr(postgres_server, line)()
            return read(prompt)
        return line

    monkeypatch.setattr(repl, "_reader", lambda: read)
    out = io.StringIO()
    try:
        assert repl.run_chat(bot.conversation("trip"), out=out) == 0
    finally:
        if not postgres_server.running:
            postgres_server.start()
    shown = out.getvalue()
    assert f"error: the conversation database {bot.store.location} is unavailable (" in shown
    assert "[not asked: the session is kept; ask again once the database is back]" in shown
    assert "烤面包要面粉。" in shown and UNSAVED_MARK not in shown
    saved = open_conversation_store(url)
    try:
        assert [t.question for t in saved.turns("trip")] == ["尼罗河是什么？", "怎么烤面包？"]
    finally:
        saved.close()
        bot.store.close()


UNSAVED_MARK = "goes on without saving"


def test_feedback_saved_in_postgres_becomes_fine_tuning_data(postgres_server, tmp_path):
    from ragbot.finetune.data import prepare

    url = postgres_server.new_database()
    worker = open_conversation_store(url)  # what a server worker saved
    try:
        worker.append_turn("trip", "尼罗河有多长？", "大约一百公里。")
        worker.set_feedback("trip", 0, Feedback("bad", "尼罗河长约6650公里。"))
    finally:
        worker.close()
    report = prepare(["sessions"], tmp_path / "ft", settings=Settings(embedder="hash", sessions=url), valid_share=0)
    assert report.files["sft.train.jsonl"] == 1 and report.files["dpo.train.jsonl"] == 1
    (example,) = [json.loads(line) for line in (tmp_path / "ft" / "sft.train.jsonl").read_text().splitlines()]
    assert example["messages"][-1] == {"role": "assistant", "content": "尼罗河长约6650公里。"}
