"""Saving turns from many processes at once: the SQLite file vs PostgreSQL, and PostgreSQL going away.

Throughput: ``--workers`` processes each append ``--turns`` finished turns (``store.append_turn``,
one transaction each) as fast as they can, spread over ``--conversations`` conversations that all
workers share, first into one SQLite file, then into one PostgreSQL database (a throwaway server
this script starts with fsync on, ``ragbot.testing.postgres_server``, over its Unix socket, unless ``--url``
names one). Reported: turns
saved per second over all workers, the latency of one append (p50/p95), and the check afterwards in
the store: every conversation numbered 0..n-1 with no gap or repeat, each turn's question and
answer from the same append, and exactly the appends that succeeded saved.

Outage (the started server only): the workers append one turn every ``--pace`` ms while the
server is stopped for ``--outage`` s and started again. Reported: how many appends failed and
whether every failure was a ``StoreUnavailableError``, the longest wait from the restart to a
worker's next saved turn (recovery, no restart of the workers), and the same check.

    python bench/conversation_store.py                       # ~30 s
    python bench/conversation_store.py --workers 8 --turns 300 --outage 5
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import log, print_table, summary_ms, write_result


def worker(location: str, name: str, turns: int, conversations: int, pace: float, duration: float, go, out) -> None:
    """Append turns; a failed one is retried (as a client would) and counted."""
    from ragbot.errors import StoreUnavailableError
    from ragbot.storage.conversations import open_conversation_store

    store = open_conversation_store(location)
    go.wait()
    until = time.time() + duration if duration else 0.0
    latencies, saved, failures, other_errors, first_saved_after = [], [], [], [], None
    i = 0
    while i < turns or (until and time.time() < until):
        conversation = f"c{i % conversations}"
        question = f"q {name} {i}"
        started = time.time()
        try:
            store.append_turn(conversation, question, question.replace("q", "a", 1))
        except StoreUnavailableError:
            failures.append(started)
            time.sleep(max(pace, 0.05))
            continue
        except Exception as exc:  # counted: the store should raise nothing else
            other_errors.append(f"{type(exc).__name__}: {exc}")
            time.sleep(max(pace, 0.05))
            continue
        latencies.append(time.time() - started)
        saved.append((conversation, question, started))
        if failures and first_saved_after is None:
            first_saved_after = time.time()
        i += 1
        if pace:
            time.sleep(pace)
    store.close()
    out.put({"name": name, "latencies": latencies, "saved": saved, "failures": failures,
             "other_errors": other_errors, "first_saved_after": first_saved_after})  # fmt: skip


def run_workers(location: str, args, pace: float = 0.0, duration: float = 0.0, during=None) -> tuple[list, float]:
    """Start the workers, release them together, run ``during()`` meanwhile; their reports and the wall time."""
    ctx = mp.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    turns = 0 if duration else args.turns
    procs = [
        ctx.Process(target=worker, args=(location, f"w{n}", turns, args.conversations, pace, duration, go, out))
        for n in range(args.workers)
    ]
    for p in procs:
        p.start()
    time.sleep(3.0)  # every worker has imported ragbot and opened the store
    started = time.time()
    go.set()
    if during is not None:
        during(started)
    reports = [out.get(timeout=600) for _ in procs]
    wall = time.time() - started
    for p in procs:
        p.join()
    return reports, wall


def check(location: str, reports: list[dict]) -> dict[str, Any]:
    """What the store holds after the run, against what the workers were told was saved."""
    from ragbot.storage.conversations import open_conversation_store

    store = open_conversation_store(location)
    try:
        names = store.names()
        turns = {name: store.turns(name) for name in names}
    finally:
        store.close()
    numbered_ok = all([t.turn for t in ts] == list(range(len(ts))) for ts in turns.values())
    mixed = sum(t.answer != t.question.replace("q", "a", 1) for ts in turns.values() for t in ts)
    saved = sorted((c, q) for r in reports for c, q, _ in r["saved"])
    stored = sorted((name, t.question) for name, ts in turns.items() for t in ts)
    return {
        "turns_saved": len(stored),
        "appends_that_succeeded": len(saved),
        "numbered_0_to_n_without_gap_or_repeat": numbered_ok,
        "mixed_turns": mixed,
        "lost": len(set(saved) - set(stored)),
        "extra_or_duplicated": len(stored) - len(set(stored) & set(saved)),
    }


def throughput(kind: str, location: str, args) -> dict[str, Any]:
    log(f"{kind}: {args.workers} workers x {args.turns} turns over {args.conversations} conversations")
    reports, wall = run_workers(location, args)
    latencies = [s for r in reports for s in r["latencies"]]
    return {
        "store": kind,
        "turns_per_s": len(latencies) / wall,
        "append": summary_ms(latencies),
        "wall_s": wall,
        "errors": sum(len(r["failures"]) + len(r["other_errors"]) for r in reports),
        **check(location, reports),
    }


def outage(server, args) -> dict[str, Any]:
    location = server.new_database() + "&connect_timeout=2"
    times: dict[str, float] = {}

    def stop_then_start(started: float) -> None:
        time.sleep(1.0)
        server.stop()
        times["stopped"] = time.time()
        time.sleep(args.outage)
        server.start()
        times["restarted"] = time.time()

    log(f"postgresql outage: {args.workers} workers, a turn every {args.pace} ms, server stopped {args.outage} s")
    reports, _ = run_workers(location, args, pace=args.pace / 1000, duration=args.outage + 6, during=stop_then_start)
    recovered = [r["first_saved_after"] - times["restarted"] for r in reports if r["first_saved_after"]]
    return {
        "outage_s": times["restarted"] - times["stopped"],
        "failed_appends": sum(len(r["failures"]) for r in reports),
        "other_errors": [e for r in reports for e in r["other_errors"]],
        "workers_that_saw_it": sum(bool(r["failures"]) for r in reports),
        "recovery_max_s": max(recovered) if recovered else float("nan"),
        **check(location, reports),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--turns", type=int, default=200, help="turns per worker (throughput)")
    parser.add_argument("--conversations", type=int, default=4, help="conversations shared by all workers")
    parser.add_argument("--url", default=None, help="an existing PostgreSQL database (default: start one)")
    parser.add_argument("--outage", type=float, default=5.0, help="seconds the started server is stopped (0: none)")
    parser.add_argument("--pace", type=float, default=50.0, help="ms between a worker's turns during the outage")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from ragbot.testing.postgres_server import PostgresServer

    server = None if args.url else PostgresServer(durable=True)  # fsync on, like the SQLite file
    try:
        with tempfile.TemporaryDirectory() as tmp:
            rows = [throughput("sqlite", str(Path(tmp) / "conversations.sqlite"), args)]
        rows.append(throughput("postgresql", args.url or server.new_database(), args))
        down = outage(server, args) if server and args.outage else None
    finally:
        if server:
            server.remove()

    print_table(
        ["store", "turns/s", "append p50 ms", "p95 ms", "saved", "numbered ok", "lost", "extra", "mixed", "errors"],
        [
            [
                r["store"],
                r["turns_per_s"],
                r["append"]["p50_ms"],
                r["append"]["p95_ms"],
                r["turns_saved"],
                r["numbered_0_to_n_without_gap_or_repeat"],
                r["lost"],
                r["extra_or_duplicated"],
                r["mixed_turns"],
                r["errors"],
            ]  # fmt: skip
            for r in rows
        ],
        title=f"{args.workers} processes x {args.turns} turns, {args.conversations} shared conversations",
    )
    print(f"postgresql / sqlite turns per second: {rows[1]['turns_per_s'] / rows[0]['turns_per_s']:.2f}")
    if down:
        print_table(
            ["outage s", "failed appends", "other errors", "recovery max s", "saved", "numbered ok", "lost", "extra"],
            [
                [
                    down["outage_s"],
                    down["failed_appends"],
                    len(down["other_errors"]),
                    down["recovery_max_s"],
                    down["turns_saved"],
                    down["numbered_0_to_n_without_gap_or_repeat"],
                    down["lost"],
                    down["extra_or_duplicated"],
                ]
            ],  # fmt: skip
            title="PostgreSQL stopped and started again while the workers ran",
        )
    write_result("conversation_store", {"args": vars(args), "throughput": rows, "outage": down}, args.out)


if __name__ == "__main__":
    main()
