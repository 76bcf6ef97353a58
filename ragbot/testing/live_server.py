"""A real uvicorn server on 127.0.0.1 in a background thread, for tests and benchmarks of
``ragbot serve`` (``with LiveServer(create_app(bot)) as server: ... server.url``)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any


class LiveServer:
    """Serves an ASGI ``app`` on a free port of 127.0.0.1 until the ``with`` block ends."""

    def __init__(self, app: Any, startup_timeout: float = 10.0):
        self.app = app
        self.startup_timeout = startup_timeout
        self.url = ""

    def __enter__(self) -> LiveServer:
        import uvicorn

        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))  # bound here, so no other process can take the port meanwhile
        port = self._socket.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start; see the log above")
            time.sleep(0.01)
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()
