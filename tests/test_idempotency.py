"""Idempotency keys in `ragbot serve`: a resent turn (same ``Idempotency-Key``) of a stored conversation is
saved once and answered from what was saved, with no model call, on a real uvicorn server over a real
SQLite file and a real PostgreSQL; the fake model numbers its answers, so a replay is told from a new call."""

from __future__ import annotations

import itertools
import json
import threading
import time

import httpx
import pytest

from ragbot import KnowledgeBase
from ragbot.conversation.bot import RagBot
from ragbot.errors import TurnAnsweredError
from ragbot.server.app import create_app
from ragbot.server.keys import ApiKeys
from ragbot.storage.conversations import Reply
from ragbot.testing.fakes import PacedChatModel, ScriptedChatModel
from ragbot.testing.live_server import LiveServer

MODEL = "ragbot-test"
URL = "/v1/chat/completions"


def numbered_model() -> ScriptedChatModel:
    """Answers "第1个回答", "第2个回答", ...: every model call gives a new answer."""
    count = itertools.count(1)
    return ScriptedChatModel(default=lambda messages: f"第{next(count)}个回答", name=MODEL)


@pytest.fixture
def kb(hash_settings, corpus, location):
    kb = KnowledgeBase.open(hash_settings.replace(threshold=0.35, sessions=location), create=True)
    kb.ingest([corpus["md"].parent])
    return kb


@pytest.fixture
def bots(kb):
    """``bots(model)``: a bot over the test's knowledge base and store; their stores are closed at the end."""
    made = []

    def make(model=None, **settings):
        settings = {"rewrite": False, "translate": False, **settings}
        made.append(RagBot(kb, model or numbered_model(), settings=kb.settings.replace(**settings)))
        return made[-1]

    yield make
    for bot in made:
        bot.store.close()


def ask(server, question, key=None, *, api_key=None, **body) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key is not None else {}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = {"model": MODEL, "messages": [{"role": "user", "content": question}], **body}
    return httpx.post(server.url + URL, json=request, headers=headers, timeout=20)


def ask_streamed(server, question, key=None, **body) -> tuple[httpx.Headers, str, list[dict]]:
    """The headers, the streamed text and the chunks of a streamed request."""
    request = {"model": MODEL, "messages": [{"role": "user", "content": question}], "stream": True, **body}
    headers = {"Idempotency-Key": key} if key is not None else {}
    with httpx.stream("POST", server.url + URL, json=request, headers=headers, timeout=20) as response:
        assert response.status_code == 200
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    return response.headers, text, chunks


def saved_messages(server, conversation_id) -> list[str]:
    response = httpx.get(f"{server.url}/v1/conversations/{conversation_id}", timeout=20)
    return [m["content"] for m in response.json()["messages"]]


def test_a_resent_turn_is_saved_once_and_answered_from_the_store_whole_or_streamed(bots):
    with LiveServer(create_app(bots(), ApiKeys([]))) as server:
        first = ask(server, "尼罗河是什么？", "start-7f3a", store=True)
        again = ask(server, "尼罗河是什么？", "start-7f3a", store=True)  # the first reply was lost
        assert first.status_code == again.status_code == 200
        assert "Idempotent-Replayed" not in first.headers and again.headers["Idempotent-Replayed"] == "true"
        conversation_id = first.json()["ragbot"]["conversation_id"]
        assert again.json()["ragbot"]["conversation_id"] == conversation_id  # the same conversation, not a new one
        assert first.json()["choices"] == again.json()["choices"]
        assert again.json()["choices"][0]["message"]["content"] == "第1个回答"
        assert again.json()["id"] == first.json()["id"] and again.json()["usage"] == first.json()["usage"]
        assert again.json()["ragbot"]["sources"] == first.json()["ragbot"]["sources"]

        second = ask(server, "尼罗河流经哪些国家？", "turn-2", conversation_id=conversation_id)
        assert second.json()["choices"][0]["message"]["content"] == "第2个回答"
        headers, text, chunks = ask_streamed(server, "尼罗河流经哪些国家？", "turn-2", conversation_id=conversation_id)
        assert headers["Idempotent-Replayed"] == "true" and text == "第2个回答"  # streamed from what was saved
        assert chunks[-1]["ragbot"]["conversation_id"] == conversation_id
        assert chunks[-1]["ragbot"]["route"] == second.json()["ragbot"]["route"]

        # a new key is a new turn: the model answers again, so the replays above did not call it
        third = ask(server, "尼罗河流经哪些国家？", "turn-3", conversation_id=conversation_id)
        assert third.json()["choices"][0]["message"]["content"] == "第3个回答"
        assert saved_messages(server, conversation_id) == [
            "尼罗河是什么？", "第1个回答", "尼罗河流经哪些国家？", "第2个回答", "尼罗河流经哪些国家？", "第3个回答",
        ]  # fmt: skip


def test_a_streamed_turn_resent_whole_gets_the_streamed_answer(bots):
    with LiveServer(create_app(bots(), ApiKeys([]))) as server:
        started = ask(server, "尼罗河是什么？", store=True).json()["ragbot"]["conversation_id"]
        _, text, _ = ask_streamed(server, "尼罗河流经哪些国家？", "k-1", conversation_id=started)
        again = ask(server, "尼罗河流经哪些国家？", "k-1", conversation_id=started)
        assert text == "第2个回答" and again.headers["Idempotent-Replayed"] == "true"
        assert again.json()["choices"][0]["message"]["content"] == "第2个回答"
        assert len(saved_messages(server, started)) == 4


def test_the_same_key_with_another_request_is_422_and_saves_nothing(bots):
    with LiveServer(create_app(bots(), ApiKeys([]))) as server:
        conversation_id = ask(server, "尼罗河是什么？", "k-1", store=True).json()["ragbot"]["conversation_id"]
        other = ask(server, "长江有多长？", "k-1", conversation_id=conversation_id)
        assert other.status_code == 422
        assert other.json()["error"] == {
            "message": "Idempotency-Key 'k-1' was already used in this conversation for another question "
            "('尼罗河是什么？'); send a new key with a new message",
            "type": "invalid_request_error",
            "param": "Idempotency-Key",
            "code": "idempotency_key_reused",
        }
        fields = ask(server, "尼罗河是什么？", "k-1", store=True, temperature=0.2)
        assert fields.status_code == 422
        assert "for the same question with other fields" in fields.json()["error"]["message"]
        assert saved_messages(server, conversation_id) == ["尼罗河是什么？", "第1个回答"]


def test_keys_are_scoped_to_the_api_key_and_a_stateless_request_is_never_replayed(bots):
    with LiveServer(create_app(bots(), ApiKeys(["key-alpha-1111", "key-bravo-2222"]))) as server:
        alpha = ask(server, "尼罗河是什么？", "same-key", api_key="key-alpha-1111", store=True).json()
        bravo = ask(server, "尼罗河是什么？", "same-key", api_key="key-bravo-2222", store=True)
        assert "Idempotent-Replayed" not in bravo.headers
        assert bravo.json()["ragbot"]["conversation_id"] != alpha["ragbot"]["conversation_id"]
        resent = ask(server, "尼罗河是什么？", "same-key", api_key="key-alpha-1111", store=True)
        assert resent.headers["Idempotent-Replayed"] == "true"
        answers = [r["choices"][0]["message"]["content"] for r in (alpha, bravo.json(), resent.json())]
        assert answers == ["第1个回答", "第2个回答", "第1个回答"]  # bravo's turn is its own, alpha's is replayed
        stateless = [ask(server, "尼罗河是什么？", "k-9", api_key="key-alpha-1111") for _ in range(2)]
        assert [r.json()["choices"][0]["message"]["content"] for r in stateless] == ["第3个回答", "第4个回答"]
        assert not any("Idempotent-Replayed" in r.headers for r in stateless)


@pytest.mark.parametrize(
    "key, says",
    [
        ("k" * 256, "the Idempotency-Key header is 256 characters long; send 1 to 255 visible ASCII characters"),
        ("two words", "the Idempotency-Key header is not visible ASCII; send 1 to 255 visible ASCII characters"),
    ],
)
def test_a_bad_key_is_400_and_calls_no_model(bots, key, says):
    with LiveServer(create_app(bots(), ApiKeys([]))) as server:
        bad = ask(server, "尼罗河是什么？", key, store=True)
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_idempotency_key"
        assert bad.json()["error"]["message"].startswith(says)
        assert ask(server, "尼罗河是什么？", "k" * 255, store=True).json()["choices"][0]["message"]["content"] == (
            "第1个回答"
        )


def test_a_resend_while_the_first_is_answered_is_409_with_retry_after_then_replayed(bots):
    slow = PacedChatModel(default="慢" * 160, delay=0.02, name=MODEL)  # 40 pieces, 0.8 s
    with LiveServer(create_app(bots(slow), ApiKeys([]))) as server:
        conversation_id = ask(server, "尼罗河是什么？", store=True).json()["ragbot"]["conversation_id"]
        before, streamed = slow.pieces, {}

        def first() -> None:
            streamed["text"] = ask_streamed(server, "尼罗河流经哪些国家？", "k-1", conversation_id=conversation_id)[1]

        thread = threading.Thread(target=first)
        thread.start()
        while slow.pieces == before:  # until the first is generating
            time.sleep(0.005)
        early = ask(server, "尼罗河流经哪些国家？", "k-1", conversation_id=conversation_id)
        thread.join(timeout=20)
        assert early.status_code == 409 and early.headers["Retry-After"] == "1"
        assert early.json()["error"]["code"] == "idempotency_key_in_use"
        calls = len(slow.calls)
        late = ask(server, "尼罗河流经哪些国家？", "k-1", conversation_id=conversation_id)
        assert late.headers["Idempotent-Replayed"] == "true"
        assert late.json()["choices"][0]["message"]["content"] == streamed["text"] == "慢" * 160
        assert len(slow.calls) == calls  # answered from the store
        assert len(saved_messages(server, conversation_id)) == 4


def test_the_openai_sdk_resending_during_the_first_gets_the_saved_answer_by_its_own_retry(bots):
    import openai

    slow = PacedChatModel(default="慢" * 80, delay=0.02, name=MODEL)  # 20 pieces, 0.4 s
    with LiveServer(create_app(bots(slow), ApiKeys([]))) as server:
        conversation_id = ask(server, "尼罗河是什么？", store=True).json()["ragbot"]["conversation_id"]
        before = slow.pieces
        thread = threading.Thread(
            target=ask, args=(server, "尼罗河流经哪些国家？", "k-1"), kwargs={"conversation_id": conversation_id}
        )
        thread.start()
        while slow.pieces == before:  # until the first is generating
            time.sleep(0.005)
        api = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=3, timeout=20)
        raw = api.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=[{"role": "user", "content": "尼罗河流经哪些国家？"}],
            extra_body={"conversation_id": conversation_id},
            extra_headers={"Idempotency-Key": "k-1"},
        )
        thread.join(timeout=20)
        assert raw.retries_taken >= 1  # the first try was the 409; Retry-After: 1 brought the retry
        assert raw.headers["Idempotent-Replayed"] == "true" and raw.parse().choices[0].message.content == "慢" * 80
        assert len(slow.calls) == 2 and len(saved_messages(server, conversation_id)) == 4


def test_two_servers_answering_one_key_at_once_save_one_turn_and_the_other_gets_409(bots):
    slow = PacedChatModel(default="慢" * 120, delay=0.02, name=MODEL)  # 30 pieces, 0.6 s
    fast = PacedChatModel(default="快。", delay=0.0, name=MODEL)
    with LiveServer(create_app(bots(slow), ApiKeys([]))) as a, LiveServer(create_app(bots(fast), ApiKeys([]))) as b:
        conversation_id = ask(b, "尼罗河是什么？", store=True).json()["ragbot"]["conversation_id"]
        request = {"model": MODEL, "messages": [{"role": "user", "content": "尼罗河流经哪些国家？"}], "stream": True}
        request["conversation_id"] = conversation_id
        headers = {"Idempotency-Key": "k-1"}
        with httpx.stream("POST", a.url + URL, json=request, headers=headers, timeout=20) as streamed:
            lines = streamed.iter_lines()
            next(lines)  # A is answering; the client gives up on it and resends to B, which saves first
            assert ask(b, "尼罗河流经哪些国家？", "k-1", conversation_id=conversation_id).status_code == 200
            events = [line for line in lines if line.startswith("data: ")]
        error = json.loads(events[-1].removeprefix("data: "))["error"]
        assert error["code"] == "idempotency_key_in_use"
        assert error["message"] == (
            "another request with this Idempotency-Key saved its answer while this one was generated; nothing was "
            "saved: send the request again to get the saved answer"
        )
        again = ask(a, "尼罗河流经哪些国家？", "k-1", conversation_id=conversation_id)
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.json()["choices"][0]["message"]["content"] == "快。"  # B's saved answer, from A
        assert saved_messages(a, conversation_id)[2:] == ["尼罗河流经哪些国家？", "快。"]


# --- the stores --------------------------------------------------------------------------------------


def test_a_reply_is_saved_with_its_turn_and_another_reply_under_that_id_is_refused(stores):
    store = stores()
    reply = Reply("digest-1", {"answer": "一条大河。", "question": "尼罗河是什么？"})
    assert store.append_turn("trip", "尼罗河是什么？", "一条大河。", turn_id="key_1", reply=reply) == 0
    assert store.append_turn("trip", "尼罗河是什么？", "一条大河。", turn_id="key_1", reply=reply) == 0  # a retry
    with pytest.raises(TurnAnsweredError, match="another request with the same idempotency key saved its answer"):
        store.append_turn("trip", "尼罗河是什么？", "另一个回答。", turn_id="key_1", reply=Reply("digest-1", {"a": 2}))
    again = stores()
    saved = again.reply("trip", "key_1")
    assert (saved.request, saved.record) == ("digest-1", reply.record) and saved.created > 0
    assert len(again.history("trip")) == 2 and again.reply("trip", "key_2") is None
    again.clear("trip")
    assert again.reply("trip", "key_1") is None


def test_a_store_from_before_replies_opens_keeps_its_turns_and_saves_replies(stores, monkeypatch):
    from ragbot.storage import postgres, sqlite

    for migrations in (sqlite.MIGRATIONS, postgres.MIGRATIONS):
        monkeypatch.setattr(migrations, "steps", [s for s in migrations.steps if s.__name__ != "m004_replies"])
    old = stores()  # written by the ragbot before idempotency keys
    old.append_turn("trip", "尼罗河是什么？", "一条大河。", turn_id="t-1")
    old.close()
    monkeypatch.undo()
    store = stores()
    assert [t.answer for t in store.turns("trip")] == ["一条大河。"]
    store.append_turn("trip", "它多长？", "约6650公里。", expected_turns=1, turn_id="key_2", reply=Reply("d", {"x": 1}))
    assert stores().reply("trip", "key_2").record == {"x": 1}
