"""A real llama.cpp OpenAI-compatible server on 127.0.0.1 serving SmolLM2-135M, for tests.

``run_llama_server()`` is a context manager yielding the base URL (``http://127.0.0.1:PORT/v1``).
The fixtures import into a test module with ``from llama_server import llama_server  # noqa: F401``:
``llama_server`` (one per session), ``llama_server_with_key`` (started with ``--api_key secret``)
and ``local_models_dir`` (where built-in models are joined and verified, once per session).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

SERVED_ALIAS = "smollm2"  # the model name the server lists under /v1/models
API_KEY = "secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def run_llama_server(
    model_path: str | Path, api_key: str | None = None, n_ctx: int = 2048, timeout: float = 120.0
) -> Iterator[str]:
    """Start ``python -m llama_cpp.server`` on a free port, wait until it lists its models, stop it after."""
    port = free_port()
    # One thread: two spinning llama.cpp threads on a busy 2-core machine can crawl at <1 token/s.
    # llama_cpp.server as `python -m` runs it, with ragbot's guard for CPUs whose AMX path crashes
    serve = (
        "import runpy; from ragbot.models.local import keep_weights_off_amx; keep_weights_off_amx(); "
        "runpy.run_module('llama_cpp.server', run_name='__main__', alter_sys=True)"
    )
    cmd = [sys.executable, "-c", serve, "--model", str(model_path), "--model_alias", SERVED_ALIAS]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx)]
    cmd += ["--n_threads", "1", "--n_threads_batch", "1"]  # prompts too (their default: every core)
    if api_key:
        cmd += ["--api_key", api_key]
    log = tempfile.TemporaryFile()  # the server's output, shown if it fails to start
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        _wait_until_ready(proc, base_url, api_key, timeout, log)
        yield base_url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _wait_until_ready(proc: subprocess.Popen, base_url: str, api_key: str | None, timeout: float, log) -> None:
    request = urllib.request.Request(f"{base_url}/models")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"llama.cpp server exited with {proc.returncode}:\n{log.read().decode()[-3000:]}")
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    log.seek(0)
    raise RuntimeError(f"llama.cpp server not ready after {timeout:.0f}s:\n{log.read().decode()[-3000:]}")


def session_models_dir(tmp_path_factory) -> Path:
    """One models directory for the whole session, so each built-in model is joined and hashed once.

    A fixed path under the session's base temp dir: each test module that imports a fixture
    gets its own instance of it, and they must still share the joined files.
    """
    path = tmp_path_factory.getbasetemp() / "models"
    path.mkdir(exist_ok=True)
    return path


def smollm2_path(tmp_path_factory) -> Path:
    from ragbot.models.local_files import resolve_model_path

    return resolve_model_path("smollm2-135m", models_dir=session_models_dir(tmp_path_factory))


# Fixtures depend only on pytest's own fixtures, so importing one is enough to use it.
@pytest.fixture(scope="session")
def local_models_dir(tmp_path_factory) -> Path:
    return session_models_dir(tmp_path_factory)


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory) -> Iterator[str]:
    """Base URL of a llama.cpp server serving SmolLM2-135M with no API key."""
    with run_llama_server(smollm2_path(tmp_path_factory)) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def llama_server_with_key(tmp_path_factory) -> Iterator[str]:
    """Base URL of a llama.cpp server that accepts only the API key ``secret``."""
    with run_llama_server(smollm2_path(tmp_path_factory), api_key=API_KEY) as base_url:
        yield base_url
