"""`ragbot serve`: a real uvicorn server on 127.0.0.1 over a real FAISS index (hash embedder) and a
fake chat model, spoken to by the official openai client, LangChain's ChatOpenAI and raw HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

from ragbot import KnowledgeBase
from ragbot.conversation.bot import RagBot
from ragbot.server.app import create_app
from ragbot.server.keys import ApiKeys
from ragbot.testing.fakes import PacedChatModel, ScriptedChatModel
from ragbot.testing.live_server import LiveServer

from helpers import NILE_REWRITE

ANSWER = "尼罗河干流流经乌干达、南苏丹、苏丹和埃及 [1]。"
REASONING = "“它”指尼罗河"  # the rewrite model's reasoning in NILE_REWRITE: never sent to a client
HISTORY = [
    {"role": "user", "content": "尼罗河是什么？"},
    {"role": "assistant", "content": "尼罗河是非洲的一条大河 [1]。"},
]
FOLLOW_UP = {"role": "user", "content": "它流经哪些国家？"}


def reply(messages) -> str:
    """The fake model: the Nile rewrite for rewrite prompts, a grounded answer for answer prompts."""
    return NILE_REWRITE if "改写：" in messages[0].content else ANSWER


@pytest.fixture
def kb(hash_settings, corpus, tmp_path):
    kb = KnowledgeBase.open(hash_settings.replace(threshold=0.35, sessions=tmp_path / "conv.sqlite"), create=True)
    kb.ingest([corpus["md"].parent])
    return kb


def make_bot(kb, model=None, **settings) -> RagBot:
    model = model or ScriptedChatModel(default=reply, name="ragbot-test")
    return RagBot(kb, model, settings=kb.settings.replace(**settings))


@pytest.fixture
def served(kb):
    with LiveServer(create_app(make_bot(kb), ApiKeys([]))) as server:
        yield server


def client(server, key="unused", **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=20, **kwargs)


def saved_conversations(kb) -> list[tuple[str, int]]:
    """(name, messages) of every conversation in the SQLite file, read directly."""
    path = kb.settings.sessions_path
    if not path.exists():
        return []
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT conversation, COUNT(*) FROM messages GROUP BY conversation").fetchall()
    return sorted(rows)


def post(server, body, path="/v1/chat/completions", **kwargs) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
    return httpx.post(server.url + path, content=content, headers=headers, timeout=20, **kwargs)


def test_openai_client_gets_a_rewritten_grounded_answer_with_sources_whole_and_streamed(served):
    api = client(served)
    assert [m.id for m in api.models.list()] == ["ragbot-test"]
    messages = [*HISTORY, FOLLOW_UP]
    whole = api.chat.completions.create(model="ragbot-test", messages=messages)
    assert whole.choices[0].message.content == ANSWER and whole.choices[0].finish_reason == "stop"
    extra = whole.model_extra["ragbot"]
    assert extra["route"] == "grounded" and extra["standalone_question"] == "尼罗河流经哪些国家？"
    assert extra["sources"][0]["source"].endswith("nile.md") and extra["conversation_id"] is None
    assert REASONING not in whole.model_dump_json()

    stream = api.chat.completions.create(
        model="ragbot-test", messages=messages, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens > 0
    assert last.model_extra["ragbot"]["route"] == "grounded"
    assert last.model_extra["ragbot"]["standalone_question"] == "尼罗河流经哪些国家？"
    assert not any(REASONING in c.model_dump_json() for c in chunks)


def test_raw_stream_is_server_sent_events_ending_with_done(served):
    body = {"model": "ragbot-test", "messages": [*HISTORY, FOLLOW_UP], "stream": True}
    with httpx.stream("POST", served.url + "/v1/chat/completions", json=body, timeout=20) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    assert REASONING not in "\n".join(events)


def test_langchain_chat_openai_invokes_and_streams_unchanged(served):
    from langchain_core.messages import AIMessage, HumanMessage
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=served.url + "/v1", api_key="unused", model="ragbot-test", max_retries=0)
    history = [HumanMessage(HISTORY[0]["content"]), AIMessage(HISTORY[1]["content"]), HumanMessage("它流经哪些国家？")]
    assert llm.invoke(history).content == ANSWER
    pieces = [chunk.content for chunk in llm.stream(history)]
    assert len([p for p in pieces if p]) > 1 and "".join(pieces) == ANSWER


def test_a_stored_conversation_keeps_its_history_on_the_server(served, kb):
    api = client(served)
    first = api.chat.completions.create(model="ragbot-test", messages=[HISTORY[0]], store=True)
    conversation_id = first.model_extra["ragbot"]["conversation_id"]
    assert conversation_id.startswith("conv_")
    # only the follow-up is sent: the server's history resolves "它"
    stream = api.chat.completions.create(
        model="ragbot-test", messages=[FOLLOW_UP], stream=True, extra_body={"conversation_id": conversation_id}
    )
    last = list(stream)[-1].model_extra["ragbot"]
    assert last["standalone_question"] == "尼罗河流经哪些国家？" and last["conversation_id"] == conversation_id
    saved = httpx.get(f"{served.url}/v1/conversations/{conversation_id}").json()["messages"]
    assert [m["content"] for m in saved] == ["尼罗河是什么？", ANSWER, "它流经哪些国家？", ANSWER]
    assert httpx.delete(f"{served.url}/v1/conversations/{conversation_id}").json()["deleted"] is True
    assert httpx.get(f"{served.url}/v1/conversations/{conversation_id}").status_code == 404


def test_keys_guard_the_api_and_conversations_belong_to_the_key_that_made_them(kb, tmp_path, monkeypatch):
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text("# team B\nkey-bravo-2222\n", encoding="utf-8")
    monkeypatch.setenv("RAGBOT_API_KEYS", "key-alpha-1111")
    bot = make_bot(kb, api_keys_file=keys_file)
    with LiveServer(create_app(bot)) as server:
        for key, code in ((None, "missing_api_key"), ("key-wrong", "invalid_api_key")):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            response = httpx.get(server.url + "/v1/models", headers=headers)
            assert response.status_code == 401 and response.json()["error"]["code"] == code
        with pytest.raises(openai.AuthenticationError, match="not valid"):
            client(server, "key-wrong").models.list()
        alpha, bravo = client(server, "key-alpha-1111"), client(server, "key-bravo-2222")
        made = alpha.chat.completions.create(model="ragbot-test", messages=[HISTORY[0]], store=True)
        conversation_id = made.model_extra["ragbot"]["conversation_id"]
        with pytest.raises(openai.NotFoundError, match="no conversation"):
            bravo.chat.completions.create(
                model="ragbot-test", messages=[FOLLOW_UP], extra_body={"conversation_id": conversation_id}
            )
        other = httpx.get(
            f"{server.url}/v1/conversations/{conversation_id}", headers={"Authorization": "Bearer key-bravo-2222"}
        )
        assert other.status_code == 404
        mine = alpha.chat.completions.create(
            model="ragbot-test", messages=[FOLLOW_UP], extra_body={"conversation_id": conversation_id}
        )
        assert mine.model_extra["ragbot"]["standalone_question"] == "尼罗河流经哪些国家？"
    # saved under a digest of the key, never the key itself
    assert [n for n, _ in saved_conversations(kb)] == [n for n, _ in saved_conversations(kb) if "key-" not in n]
    assert b"key-alpha" not in kb.settings.sessions_path.read_bytes()
    assert saved_conversations(kb)[0][1] == 4


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b'{"model": "ragbot-test", "messages": [', 400, "not valid JSON"),
        ({"model": "ragbot-test"}, 400, "missing the required field 'messages'"),
        ({"model": "ragbot-test", "messages": "hi"}, 400, "'messages'"),
        ({"model": "ragbot-test", "messages": [HISTORY[0], FOLLOW_UP]}, 400, "roles must alternate"),
        ({"model": "ragbot-test", "messages": [HISTORY[0], HISTORY[1]]}, 400, "last message must be the user's"),
        ({"model": "ragbot-test", "messages": [{"role": "tool", "content": "x"}]}, 400, "role 'tool'"),
        ({"model": "gpt-9", "messages": [FOLLOW_UP]}, 404, "the model 'gpt-9' does not exist"),
        (
            {"model": "ragbot-test", "messages": [FOLLOW_UP], "conversation_id": "conv_" + "0" * 32},
            404,
            "no conversation",
        ),
        ({"model": "ragbot-test", "messages": [{"role": "user", "content": "长" * 4001}]}, 400, "the limit is 4,000"),
        ({"model": "ragbot-test", "messages": [{"role": "user", "content": "x" * 2_000_000}]}, 413, "over the limit"),
        ({"model": "ragbot-test", "messages": [*HISTORY, FOLLOW_UP], "store": True}, 400, "starts with one question"),
    ],
    ids=[
        "malformed-json",
        "no-messages",
        "messages-not-a-list",
        "roles-out-of-order",
        "no-question",
        "tool-role",
        "unknown-model",
        "unknown-conversation",
        "question-too-long",
        "body-too-large",
        "store-with-history",
    ],
)
def test_bad_requests_get_the_openai_error_shape_and_nothing_is_saved(served, kb, body, status, says):
    response = post(served, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and says in error["message"]
    assert "\n" not in error["message"]
    assert saved_conversations(kb) == []


def test_a_chunked_body_over_the_limit_is_refused(served):
    def chunks():
        yield b'{"model": "ragbot-test", "messages": [{"role": "user", "content": "'
        for _ in range(40):
            yield b"x" * 50_000
        yield b'"}]}'

    response = httpx.post(served.url + "/v1/chat/completions", content=chunks(), timeout=20)
    assert response.status_code == 413 and "over the limit" in response.json()["error"]["message"]


def test_a_full_server_answers_429_with_retry_after_and_a_broken_store_503(kb, tmp_path):
    model = PacedChatModel(default="慢" * 200, delay=0.01, name="ragbot-test")  # 50 pieces, 0.5 s
    bot = make_bot(kb, model, max_concurrent=1, queue_timeout=0, rewrite=False)
    with LiveServer(create_app(bot, ApiKeys([]))) as server:
        body = {"model": "ragbot-test", "messages": [{"role": "user", "content": "怎么烤面包？"}], "stream": True}
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=20) as busy:
            lines = busy.iter_lines()  # kept: a dropped iterator closes the response
            next(lines)  # the one slot is taken while this answer streams
            refused = post(server, {**body, "stream": False})
            assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
            assert "busy" in refused.json()["error"]["message"]
            assert list(lines)[-2:] == ["data: [DONE]", ""]
        assert post(server, {**body, "stream": False}).status_code == 200  # the slot is free again

    damaged = tmp_path / "damaged.sqlite"
    damaged.write_bytes(b"this is not a database" * 100)
    bot = make_bot(kb, sessions=damaged)
    with LiveServer(create_app(bot, ApiKeys([]))) as server:
        response = post(server, {"model": "ragbot-test", "messages": [HISTORY[0]], "store": True})
        assert response.status_code == 503 and response.json()["error"]["code"] == "store_unavailable"
        assert "damaged" in response.json()["error"]["message"] and "Retry-After" in response.headers
        ready = httpx.get(server.url + "/ready")
        assert ready.status_code == 503 and ready.json()["checks"]["index"] == "ok", ready.text
        assert "damaged" in ready.json()["checks"]["conversations"]
        assert httpx.get(server.url + "/health").json() == {"status": "ok"}
        # a stateless request needs no store: still answered
        assert post(server, {"model": "ragbot-test", "messages": [HISTORY[0]]}).status_code == 200


def test_a_client_that_disconnects_mid_stream_stops_the_generation_and_nothing_is_saved(kb):
    model = PacedChatModel(default="尼罗河" * 100, delay=0.02, name="ragbot-test")  # 75 pieces, 1.5 s
    bot = make_bot(kb, model, max_concurrent=1, queue_timeout=0, rewrite=False)
    with LiveServer(create_app(bot, ApiKeys([]))) as server:
        api = client(server)
        stream = api.chat.completions.create(
            model="ragbot-test", messages=[{"role": "user", "content": "尼罗河是什么？"}], stream=True, store=True
        )
        for n, _ in enumerate(stream):
            if n == 5:
                break
        stream.close()
        deadline = time.monotonic() + 5
        while model.pieces and time.monotonic() < deadline:
            made = model.pieces
            time.sleep(0.2)
            if model.pieces == made:
                break
        assert model.pieces < 40  # stopped soon after the client left, far from the 75 pieces
        # the slot was given back and nothing of the unfinished turn was saved
        done = api.chat.completions.create(model="ragbot-test", messages=[{"role": "user", "content": "你好"}])
        assert done.choices[0].message.content.endswith("尼罗河" * 100)
    assert saved_conversations(kb) == []


def test_search_endpoint_returns_the_hits_and_the_threshold_decision_of_ragbot_search(served, kb):
    response = post(served, {"query": "尼罗河流经哪些国家", "k": 3}, path="/v1/search")
    assert response.status_code == 200
    assert response.json() == json.loads(json.dumps(kb.search("尼罗河流经哪些国家", 3).to_dict()))
    assert response.json()["hits"][0]["above_threshold"] is True
    assert post(served, {"query": ""}, path="/v1/search").status_code == 400
    ready = httpx.get(served.url + "/ready").json()
    assert ready == {"status": "ready", "checks": {"index": "ok", "conversations": "ok"}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ragbot_serve_command_with_two_workers_shares_conversations_and_refuses_a_bad_keys_file(kb, tmp_path):
    env = {
        **os.environ,
        "RAGBOT_EMBEDDER": "hash",
        "RAGBOT_LLM": "fake",
        "RAGBOT_INDEX": str(kb.directory),
        "RAGBOT_SESSIONS": str(tmp_path / "served.sqlite"),
        "RAGBOT_API_KEYS": "key-cli-3333",
    }
    bad = subprocess.run(
        [sys.executable, "-m", "ragbot", "serve", "--port", "0"],
        env={**env, "RAGBOT_API_KEYS_FILE": str(tmp_path / "missing.txt")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and "missing.txt" in bad.stderr.strip().splitlines()[-1]
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "ragbot", "serve", "--port", str(port), "--workers", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    log: list[str] = []
    threading.Thread(target=lambda: log.extend(server.stdout), daemon=True).start()
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready").status_code == 200:
                    break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, "".join(log)
                time.sleep(0.1)
        api = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="key-cli-3333", max_retries=0)
        answer = api.chat.completions.create(
            model="fake-echo", messages=[{"role": "user", "content": "尼罗河是什么？"}], store=True
        )
        assert answer.choices[0].message.content == "(fake model) You asked: 尼罗河是什么？ [1]"
        conversation_id = answer.model_extra["ragbot"]["conversation_id"]
        for n in range(2, 6):  # whichever worker answers continues the same saved conversation
            more = api.chat.completions.create(
                model="fake-echo",
                messages=[{"role": "user", "content": f"第{n}个问题"}],
                extra_body={"conversation_id": conversation_id},
            )
            assert more.choices[0].message.content.endswith(f"第{n}个问题")
        saved = httpx.get(
            f"http://127.0.0.1:{port}/v1/conversations/{conversation_id}",
            headers={"Authorization": "Bearer key-cli-3333"},
        ).json()["messages"]
        assert [m["content"] for m in saved if m["role"] == "user"] == ["尼罗河是什么？"] + [
            f"第{n}个问题" for n in range(2, 6)
        ]
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=10)
    assert "key-cli-3333" not in "".join(log)


def test_a_model_that_is_down_gets_503_whole_and_streamed_and_an_unknown_path_404(kb):
    from ragbot.errors import ModelError

    down = ModelError("the chat endpoint http://127.0.0.1:9/v1 did not answer; start it or fix base_url")
    model = ScriptedChatModel([down, down], name="ragbot-test")
    with LiveServer(create_app(make_bot(kb, model, rewrite=False), ApiKeys([]))) as server:
        body = {"model": "ragbot-test", "messages": [HISTORY[0]], "store": True}
        for stream in (False, True):
            response = post(server, {**body, "stream": stream})
            assert response.status_code == 503, response.text
            error = response.json()["error"]
            assert error["code"] == "model_unavailable" and "did not answer" in error["message"]
        missing = httpx.get(server.url + "/v1/nothing")
        assert missing.status_code == 404 and "no such endpoint" in missing.json()["error"]["message"]
    assert saved_conversations(kb) == []


def test_a_stream_cut_by_the_model_ends_with_an_error_event_and_saves_nothing(kb):
    from ragbot.errors import ModelError

    cut = ModelError("the chat endpoint closed the stream early; try again")
    model = PacedChatModel(default="尼罗河是非洲的一条大河", delay=0.001, name="ragbot-test", then_raise=cut)
    with LiveServer(create_app(make_bot(kb, model, rewrite=False), ApiKeys([]))) as server:
        body = {"model": "ragbot-test", "messages": [HISTORY[0]], "store": True, "stream": True}
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=20) as response:
            lines = list(response.iter_lines())
        assert "data: [DONE]" not in lines
        events = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
        text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices"))
        assert text == "尼罗河是非洲的一条大河"  # what was made before the cut reached the client
        assert (
            events[-1]["error"]["code"] == "model_unavailable" and "closed the stream" in events[-1]["error"]["message"]
        )
        with pytest.raises(openai.APIError, match="closed the stream"):
            list(client(server).chat.completions.create(model="ragbot-test", messages=[HISTORY[0]], stream=True))
    assert saved_conversations(kb) == []


# --- a request's generation parameters -------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "param", "code", "says"),
    [
        ({"temperature": "hot"}, "temperature", "invalid_type", "bad value for 'temperature': \"hot\" is not a number"),
        ({"temperature": 2.5}, "temperature", "decimal_above_max_value", "2.5 is above 2; send a number from 0 to 2"),
        ({"temperature": True}, "temperature", "invalid_type", "true is not a number"),
        ({"top_p": -0.1}, "top_p", "decimal_below_min_value", "-0.1 is below 0; send a number from 0 to 1"),
        ({"max_tokens": -5}, "max_tokens", "integer_below_min_value", "-5 is below 1; send an integer of at least 1"),
        ({"max_tokens": 10.5}, "max_tokens", "invalid_type", "10.5 is not an integer"),
        ({"max_completion_tokens": 0}, "max_completion_tokens", "integer_below_min_value", "0 is below 1"),
        ({"frequency_penalty": -3}, "frequency_penalty", "decimal_below_min_value", "-3 is below -2"),
        ({"presence_penalty": "high"}, "presence_penalty", "invalid_type", '"high" is not a number'),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "array_above_max_length", "holds 5 sequences"),
        ({"stop": 7}, "stop", "invalid_type", "7 is not a string or a list of strings"),
        ({"stop": [""]}, "stop", "invalid_value", "holds an empty sequence"),
        ({"n": 2}, "n", "invalid_value", "2 is not 1; send n = 1 or leave it out"),
        ({"seed": "lucky"}, "seed", "invalid_type", '"lucky" is not an integer'),
        ({"temperature": 0.5, "max_tokens": -5, "stream": True}, "max_tokens", "integer_below_min_value", "-5"),
    ],
)
def test_bad_generation_parameters_get_400_naming_the_parameter_and_the_value(served, kb, fields, param, code, says):
    body = {"model": "ragbot-test", "messages": [HISTORY[0]], "store": True, **fields}
    response = post(served, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
    assert says in error["message"] and "\n" not in error["message"]
    assert saved_conversations(kb) == []


def test_the_openai_client_sees_a_bad_temperature_refused_and_good_parameters_accepted(served):
    api = client(served)
    with pytest.raises(openai.BadRequestError) as refused:
        api.chat.completions.create(model="ragbot-test", messages=[*HISTORY, FOLLOW_UP], temperature="hot")
    assert refused.value.status_code == 400 and refused.value.param == "temperature"
    assert "'temperature': \"hot\" is not a number; send a number from 0 to 2" in refused.value.message
    good = dict(temperature=0, top_p=0.5, max_tokens=100_000, stop=["。"], seed=7, n=1, presence_penalty=None)
    whole = api.chat.completions.create(model="ragbot-test", messages=[*HISTORY, FOLLOW_UP], **good)
    assert whole.choices[0].message.content == ANSWER


def test_a_request_s_parameters_become_its_answer_s_generation_settings_within_the_server_s():
    from ragbot.config import Settings
    from ragbot.models.chat import GenerationSettings
    from ragbot.server.generation import request_generation
    from ragbot.server.schemas import ChatCompletionRequest

    def generation(settings=None, **fields):
        body = ChatCompletionRequest(model="m", messages=[FOLLOW_UP], **fields)
        return request_generation(body, settings or Settings())

    assert generation() is None and generation(temperature=None, n=1) is None  # the server's own
    server = Settings(temperature=0.3, max_tokens=200, stop=["END"])
    assert generation(server, temperature=0, top_p=0.5, seed=7, frequency_penalty=1, stop="。") == GenerationSettings(
        temperature=0.0, top_p=0.5, max_tokens=200, frequency_penalty=1.0, stop=("END", "。"), seed=7
    )
    assert generation(server, max_tokens=50).max_tokens == 50
    assert generation(server, max_tokens=50, max_completion_tokens=20).max_tokens == 20  # the smallest
    assert generation(server, max_tokens=100_000).max_tokens == 200  # never above the server's
    assert generation(server, top_p=0.9).temperature == 0.3  # what the request leaves out is the server's


def test_the_scripted_fake_stops_at_max_tokens_when_asked_to_as_a_real_model_does():
    from ragbot.models.chat import GenerationSettings, Message
    from ragbot.tokens import count_tokens

    question = [Message("user", "尼罗河流经哪些国家？")]
    limited = ScriptedChatModel(default=ANSWER, limit_tokens=True).complete(question, GenerationSettings(max_tokens=3))
    assert ANSWER.startswith(limited.text) and 0 < count_tokens(limited.text) <= 3 < count_tokens(ANSWER)
    whole = ScriptedChatModel(default=ANSWER).complete(question, GenerationSettings(max_tokens=3))
    assert whole.text == ANSWER  # by default a script is read whole, whatever the limit


def test_a_request_s_max_tokens_and_temperature_apply_to_its_answer_only(kb):
    model = ScriptedChatModel(default=reply, name="ragbot-test", limit_tokens=True)
    with LiveServer(create_app(make_bot(kb, model), ApiKeys([]))) as server:
        api = client(server)
        short = api.chat.completions.create(
            model="ragbot-test", messages=[*HISTORY, FOLLOW_UP], max_tokens=3, temperature=1.5, seed=7
        )
        text = short.choices[0].message.content
        assert ANSWER.startswith(text) and 0 < len(text) < len(ANSWER)  # cut after 3 tokens
        rewrite, answer = model.calls[-2].generation, model.calls[-1].generation
        assert (answer.max_tokens, answer.temperature, answer.seed) == (3, 1.5, 7)
        assert (rewrite.max_tokens, rewrite.temperature) == (160, 0.0)  # the rewrite keeps its own
        stored = api.chat.completions.create(model="ragbot-test", messages=[HISTORY[0]], store=True, max_tokens=2)
        assert len(stored.choices[0].message.content) < len(ANSWER)
        whole = api.chat.completions.create(model="ragbot-test", messages=[*HISTORY, FOLLOW_UP])
        assert whole.choices[0].message.content == ANSWER  # the next request: the server's settings again
