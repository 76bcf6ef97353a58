"""One conversation answered by several workers at once, against a real SQLite file and a real PostgreSQL
server: a turn answered from n turns is saved only if the conversation still has n (the other worker's
turn wins, this one is refused with ``ConversationChangedError``, 409 from ``ragbot serve``), and a save
tried again under its turn id (a COMMIT whose answer was lost) is saved once."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest

from ragbot import KnowledgeBase
from ragbot.conversation.bot import RagBot
from ragbot.errors import ConversationChangedError
from ragbot.server.app import create_app
from ragbot.server.keys import ApiKeys
from ragbot.storage.conversations import open_conversation_store
from ragbot.testing.fakes import PacedChatModel
from ragbot.testing.live_server import LiveServer

REPO = Path(__file__).resolve().parents[1]


def test_a_turn_answered_from_fewer_turns_than_saved_is_refused_and_saves_nothing(stores):
    first, second = stores(), stores()
    first.append_turn("trip", "尼罗河是什么？", "一条大河。")
    seen = len(second.history("trip")) // 2  # both workers loaded the conversation with 1 turn
    assert first.append_turn("trip", "它有多长？", "约6650公里。", expected_turns=seen) == 1
    with pytest.raises(ConversationChangedError) as info:
        second.append_turn("trip", "它流经哪些国家？", "十一个国家。", expected_turns=seen, state={"x": 1})
    assert str(info.value) == (
        "conversation 'trip' changed while this answer was generated (it has 2 turn(s), the answer was made "
        "from 1); nothing was saved: send the message again"
    )
    again = stores()
    assert [t.question for t in again.turns("trip")] == ["尼罗河是什么？", "它有多长？"]
    assert again.state("trip") is None  # the refused turn's state was not written either
    assert again.append_turn("trip", "它流经哪些国家？", "十一个国家。", expected_turns=2) == 2  # sent again


def test_a_save_tried_again_under_its_turn_id_is_saved_once(stores):
    store = stores()
    store.append_turn("trip", "尼罗河是什么？", "一条大河。")
    for _ in range(2):  # the second call is the retry after a COMMIT whose answer was lost
        assert store.append_turn("trip", "它有多长？", "约6650公里。", expected_turns=1, turn_id="t-42") == 1
    again = stores()
    assert [t.question for t in again.turns("trip")] == ["尼罗河是什么？", "它有多长？"]
    assert len(again.history("trip")) == 4


def test_a_postgres_commit_whose_answer_is_lost_saves_the_turn_once(postgres_server):
    import psycopg

    from ragbot.storage.postgres import PostgresStore

    class AnswerLost(PostgresStore):
        """The COMMIT reaches the real database, then the connection breaks before its answer arrives."""

        lose = 1

        @contextlib.contextmanager
        def _transaction(self, **kwargs):
            with super()._transaction(**kwargs) as db:
                yield db
                if self.lose:
                    self.lose -= 1
                    db.commit()
                    raise psycopg.OperationalError("server closed the connection unexpectedly")

    url = postgres_server.new_database()
    store = AnswerLost(url)
    try:
        store.lose = 0
        store.append_turn("trip", "尼罗河是什么？", "一条大河。")
        store.lose = 1
        assert store.append_turn("trip", "它有多长？", "约6650公里。", expected_turns=1) == 1  # tried again: found
        assert store.lose == 0
        assert [t.question for t in store.turns("trip")] == ["尼罗河是什么？", "它有多长？"]
    finally:
        store.close()


RACER = textwrap.dedent(
    """
    import os, sys, time
    from ragbot.storage.conversations import open_conversation_store
    from ragbot.errors import ConversationChangedError

    location, worker, count, folder = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    store = open_conversation_store(location)
    seen = {f"c{i}": len(store.history(f"c{i}")) // 2 for i in range(count)}  # every one empty: 0 turns
    open(os.path.join(folder, "ready-" + worker), "w").close()
    while not os.path.exists(os.path.join(folder, "go")):
        time.sleep(0.001)
    won = []
    for name, turns in seen.items():
        try:
            store.append_turn(name, f"q {worker}", f"a {worker}", expected_turns=turns)
            won.append(name)
        except ConversationChangedError:
            pass
    store.close()
    print(" ".join(won))
    """
)


@pytest.mark.slow
def test_two_processes_answering_the_same_conversations_save_exactly_one_turn_each(location, tmp_path):
    count = 40
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    open_conversation_store(location).close()  # migrated before the race
    workers = {
        name: subprocess.Popen(
            [sys.executable, "-c", RACER, str(location), name, str(count), str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for name in "AB"
    }
    won = {}
    try:
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"ready-{name}").exists() for name in "AB"):
            assert time.monotonic() < deadline and all(w.poll() is None for w in workers.values()), "no start"
            time.sleep(0.01)
        (tmp_path / "go").touch()
        for name, worker in workers.items():
            out, err = worker.communicate(timeout=60)
            assert worker.returncode == 0, err
            won[name] = set(out.split())
    finally:
        for worker in workers.values():
            worker.kill()
    assert not won["A"] & won["B"] and won["A"] | won["B"] == {f"c{i}" for i in range(count)}
    store = open_conversation_store(location)
    try:
        for i in range(count):
            (turn,) = store.turns(f"c{i}")  # exactly one turn, whole, from the worker that was told it won
            winner = "A" if f"c{i}" in won["A"] else "B"
            assert (turn.question, turn.answer) == (f"q {winner}", f"a {winner}")
    finally:
        store.close()


# --- two servers, one conversation ---------------------------------------------------------------


@pytest.mark.slow
def test_two_servers_answering_one_conversation_at_once_save_one_turn_and_answer_the_other_409(
    location, hash_settings, corpus, tmp_path
):
    kb = KnowledgeBase.open(hash_settings.replace(threshold=0.35, sessions=location), create=True)
    kb.ingest([corpus["md"].parent])
    slow = PacedChatModel(default="慢" * 240, delay=0.02, name="ragbot-test")  # 60 pieces, 1.2 s
    fast = PacedChatModel(default="快。", delay=0.0, name="ragbot-test")
    bots = [RagBot(kb, model, settings=kb.settings.replace(rewrite=False, translate=False)) for model in (slow, fast)]
    body = {"model": "ragbot-test", "messages": [{"role": "user", "content": "尼罗河是什么？"}]}
    try:
        with LiveServer(create_app(bots[0], ApiKeys([]))) as a, LiveServer(create_app(bots[1], ApiKeys([]))) as b:
            started = httpx.post(b.url + "/v1/chat/completions", json={**body, "store": True}, timeout=20).json()
            conversation_id = started["ragbot"]["conversation_id"]

            def ask(server, question, **extra):
                message = {"role": "user", "content": question}
                request = {**body, "messages": [message], "conversation_id": conversation_id, **extra}
                return httpx.post(server.url + "/v1/chat/completions", json=request, timeout=20)

            # streamed on the slow server A; while it streams, the fast server B answers and saves a turn
            question = {"role": "user", "content": "慢的问题"}
            request = {**body, "messages": [question], "conversation_id": conversation_id}
            with httpx.stream("POST", a.url + "/v1/chat/completions", json={**request, "stream": True}) as streamed:
                lines = streamed.iter_lines()
                next(lines)  # A has loaded the conversation (1 turn) and is answering
                assert ask(b, "快的问题").status_code == 200
                events = [line for line in lines if line.startswith("data: ")]
            assert events[-1] != "data: [DONE]"
            error = httpx.Response(200, content=events[-1][len("data: ") :]).json()["error"]
            assert error["code"] == "conversation_changed" and error["param"] == "conversation_id"
            assert error["message"] == (
                f"conversation {conversation_id!r} changed while this answer was generated (another request "
                "added a turn to it); nothing was saved: send the message again"
            )

            # not streamed on A while B answers again: a 409 in the OpenAI error shape
            late, before = {}, slow.pieces
            thread = threading.Thread(target=lambda: late.update(response=ask(a, "慢的第二个问题")))
            thread.start()
            while slow.pieces == before:  # until A is generating
                time.sleep(0.005)
            assert ask(b, "快的第二个问题").status_code == 200
            thread.join(timeout=20)
            assert late["response"].status_code == 409
            assert late["response"].json()["error"]["code"] == "conversation_changed"

            assert ask(a, "慢的问题").status_code == 200  # sent again: answered from the 3 saved turns, saved
            saved = httpx.get(f"{b.url}/v1/conversations/{conversation_id}", timeout=20).json()["messages"]
        questions = [m["content"] for m in saved if m["role"] == "user"]
        assert questions == ["尼罗河是什么？", "快的问题", "快的第二个问题", "慢的问题"]
        assert [m["role"] for m in saved] == ["user", "assistant"] * 4
    finally:
        for bot in bots:
            bot.store.close()


def test_postgres_pool_size_is_a_setting_of_at_least_one(monkeypatch):
    from ragbot.config import Settings, load_settings
    from ragbot.errors import ConfigError

    monkeypatch.setenv("RAGBOT_POSTGRES_POOL_SIZE", "3")
    assert load_settings().postgres_pool_size == 3
    with pytest.raises(ConfigError, match=r"^bad value for postgres_pool_size: 0; it must be at least 1$"):
        Settings(postgres_pool_size=0)
