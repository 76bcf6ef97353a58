"""What `ragbot serve` adds to a turn: latency over HTTP against the Python API in-process.

Both sides do the same turns: C clients x T turns each, every client its own saved conversation (the
first turn starts it, the others continue it), the questions of the bundled knowledge base's question
set, the hash embedder and the fake chat model, so the server's own work (HTTP, JSON, SSE, threads,
auth, limits) is what differs. In-process: C threads, each with ``bot.conversation(name).stream(q)``.
Served: a real ``ragbot serve`` subprocess (uvicorn, one worker unless --workers) and C client threads
over keep-alive HTTP (httpx), every other turn streamed (read to ``[DONE]``), the others whole. The
server's ``max_concurrent`` is set to C, so no request waits in its queue. Overhead = served minus
in-process, at p50 and p95, with the ratio; the same with one client (no contention). Afterwards the
server's conversations file is read: every conversation must hold exactly its client's questions, in
order (0 lost, duplicated or mixed turns), and every request must have succeeded.

    python bench/serve_overhead.py [--clients 32] [--turns 10] [--workers 1]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from _common import KNOWLEDGE_DIR, REPO, free_port, log, print_table, run_threads, summary_ms, write_result

from ragbot import KnowledgeBase, RagBot, Settings


def questions() -> list[str]:
    path = REPO / "ragbot" / "data" / "qa_default_kb.jsonl"
    return [json.loads(line)["question"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plan(clients: int, turns: int) -> list[list[str]]:
    pool = questions()
    return [[pool[(c * turns + t) % len(pool)] for t in range(turns)] for c in range(clients)]


def in_process(settings: Settings, work: list[list[str]]) -> tuple[list[float], int]:
    """Seconds per turn through ``Conversation.stream``, C threads at once; and the errors."""
    bot = RagBot.load(settings)
    for _ in bot.conversation("warm-up").stream(questions()[0]):  # first-use costs, as the server's warm-up turn
        pass
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()

    def client(c: int) -> None:
        nonlocal errors
        conversation = bot.conversation(f"bench-{c}-{time.monotonic_ns()}")
        for q in work[c]:
            start = time.perf_counter()
            try:
                for _ in conversation.stream(q):
                    pass
            except Exception:
                with lock:
                    errors += 1
                continue
            with lock:
                latencies.append(time.perf_counter() - start)

    run_threads(client, len(work))
    return latencies, errors


def start_server(env: dict[str, str], workers: int, log_file: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    with open(log_file, "w") as server_log:  # a file, not a pipe: an unread pipe would stall the server
        server = subprocess.Popen(
            [sys.executable, "-m", "ragbot", "serve", "--port", str(port), "--workers", str(workers)],
            env=env,
            stdout=server_log,
            stderr=subprocess.STDOUT,
            text=True,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"ragbot serve exited: {log_file.read_text()}")
        try:
            if httpx.get(url + "/ready").status_code == 200:
                return server, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.kill()
    raise SystemExit("ragbot serve did not become ready in 120 s")


def served(url: str, model: str, work: list[list[str]]) -> tuple[list[float], list[float], int, dict[int, str]]:
    """Seconds per turn over HTTP (and time to the first text of the streamed ones), C clients at once,
    every other turn streamed; the errors; each client's conversation id."""
    latencies: list[float] = []
    first_text: list[float] = []
    errors = 0
    conversation_ids: dict[int, str] = {}
    lock = threading.Lock()

    def client(c: int) -> None:
        nonlocal errors
        with httpx.Client(base_url=url, timeout=120) as http:
            for t, q in enumerate(work[c]):
                streaming = (c + t) % 2 == 0
                body: dict = {"model": model, "messages": [{"role": "user", "content": q}], "stream": streaming}
                if t == 0:
                    body["store"] = True
                else:
                    body["conversation_id"] = conversation_ids.get(c)
                start = time.perf_counter()
                try:
                    record, ttft = (stream_turn if streaming else whole_turn)(http, body, start)
                except Exception as exc:
                    log(f"client {c} turn {t}: {exc}")
                    with lock:
                        errors += 1
                    continue
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    if ttft is not None:
                        first_text.append(ttft)
                    if t == 0:
                        conversation_ids[c] = record["conversation_id"]

    run_threads(client, len(work))
    return latencies, first_text, errors, conversation_ids


def whole_turn(http: httpx.Client, body: dict, start: float) -> tuple[dict, None]:
    response = http.post("/v1/chat/completions", json=body)
    response.raise_for_status()
    return response.json()["ragbot"], None


def stream_turn(http: httpx.Client, body: dict, start: float) -> tuple[dict, float]:
    record, ttft, done = None, None, False
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            if ttft is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                ttft = time.perf_counter() - start
            record = chunk.get("ragbot", record)
    if not done or record is None:
        raise RuntimeError("the stream ended before [DONE]")
    return record, ttft if ttft is not None else time.perf_counter() - start


def check_saved(path: Path, work: list[list[str]], conversation_ids: dict[int, str]) -> dict[str, int]:
    """Compare what the server saved with what each client asked: lost, duplicated, mixed turns."""
    lost = duplicated = mixed = 0
    with sqlite3.connect(path) as db:
        for c, conversation_id in conversation_ids.items():
            rows = db.execute(
                "SELECT content FROM messages WHERE conversation LIKE ? AND role = 'user' ORDER BY id",
                (f"%/{conversation_id}",),
            ).fetchall()
            asked = [r[0] for r in rows]
            expected = work[c]
            lost += max(0, len(expected) - len(asked))
            duplicated += max(0, len(asked) - len(expected))
            mixed += sum(1 for a, e in zip(asked, expected, strict=False) if a != e)
    missing = len(work) - len(conversation_ids)
    return {"lost": lost + missing * len(work[0]), "duplicated": duplicated, "mixed": mixed}


def compare(label: str, inproc: list[float], http: list[float]) -> list:
    a, b = summary_ms(inproc), summary_ms(http)
    return [
        label,
        a["p50_ms"],
        b["p50_ms"],
        b["p50_ms"] - a["p50_ms"],
        a["p95_ms"],
        b["p95_ms"],
        b["p95_ms"] - a["p95_ms"],
        b["p95_ms"] / a["p95_ms"],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--workers", type=int, default=1, help="server processes (ragbot serve --workers)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ragbot-serve-bench-"))
    env_settings = {
        "RAGBOT_EMBEDDER": "hash",
        "RAGBOT_LLM": "fake",
        "RAGBOT_INDEX": str(tmp / "index"),
        "RAGBOT_MAX_CONCURRENT": str(args.clients),
    }
    os.environ.setdefault("RAGBOT_HOME", str(tmp / "home"))
    settings = Settings(embedder="hash", llm="fake", index=tmp / "index", max_concurrent=args.clients)
    log(f"indexing {KNOWLEDGE_DIR} with the hash embedder")
    KnowledgeBase.open(settings, create=True).ingest([KNOWLEDGE_DIR])
    rows, results = [], {}
    for label, clients, turns in (
        ("1 client", 1, args.turns * 3),
        (f"{args.clients} clients", args.clients, args.turns),
    ):
        work = plan(clients, turns)
        log(f"{label}: in-process")
        inproc, inproc_errors = in_process(settings.replace(sessions=tmp / f"inproc-{clients}.sqlite"), work)
        sessions = tmp / f"served-{clients}.sqlite"
        env = {**os.environ, **env_settings, "RAGBOT_SESSIONS": str(sessions)}
        server, url = start_server(env, args.workers, tmp / f"server-{clients}.log")
        try:
            model = httpx.get(url + "/v1/models").json()["data"][0]["id"]
            warm_up = {"model": model, "messages": [{"role": "user", "content": questions()[0]}], "store": True}
            httpx.post(url + "/v1/chat/completions", json=warm_up, timeout=60).raise_for_status()
            log(f"{label}: served at {url}")
            started = time.perf_counter()
            http, first_text, errors, ids = served(url, model, work)
            wall = time.perf_counter() - started
        finally:
            server.terminate()
            server.wait(timeout=30)
        saved = check_saved(sessions, work, ids)
        rows.append(compare(label, inproc, http))
        results[label] = {
            "clients": clients,
            "turns_per_client": turns,
            "in_process": summary_ms(inproc),
            "served": summary_ms(http),
            "served_stream_first_text": summary_ms(first_text),
            "overhead_p50_ms": rows[-1][3],
            "overhead_p95_ms": rows[-1][6],
            "errors": {"in_process": inproc_errors, "served": errors},
            "saved_turns": saved,
            "served_turns_per_s": len(http) / wall,
        }
        print(
            f"{label}: {len(http)} turns served, {errors} errors (in-process {inproc_errors}), "
            f"lost {saved['lost']}, duplicated {saved['duplicated']}, mixed {saved['mixed']}, "
            f"{len(http) / wall:.1f} turns/s"
        )
    print_table(
        [
            "clients",
            "in-proc p50",
            "served p50",
            "overhead p50",
            "in-proc p95",
            "served p95",
            "overhead p95",
            "p95 ratio",
        ],
        rows,
        title=f"turn latency in ms (hash embedder, fake model, {args.workers} worker(s), half the turns streamed)",
    )
    write_result("serve_overhead", {"args": vars(args), "results": results}, args.out)


if __name__ == "__main__":
    main()
