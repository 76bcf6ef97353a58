"""`ragbot serve` with the fake chat model slowed down, for the fault runs of ``serve_cluster.py``.

The fake model answers at once, so a stream is over before a fault can land in its middle. Here each
piece of its answer (4 characters) takes ``BENCH_PIECE_DELAY`` seconds, like a model streaming;
everything else is the ``ragbot serve`` command unchanged (its arguments are passed on).

    BENCH_PIECE_DELAY=0.01 python bench/_paced_serve.py --port 8000
"""

from __future__ import annotations

import os
import sys
import time

from ragbot.cli.main import main
from ragbot.registry import chat_models
from ragbot.testing.fakes import EchoChatModel


class PacedEchoChatModel(EchoChatModel):
    def __init__(self, delay: float):
        super().__init__()
        self.delay = delay

    def _stream(self, messages, generation):
        for delta in super()._stream(messages, generation):
            time.sleep(self.delay)
            yield delta
        self.calls.clear()  # the fake keeps every call for tests; a server would grow with it


if __name__ == "__main__":
    delay = float(os.environ.get("BENCH_PIECE_DELAY", "0"))
    chat_models.register("fake", lambda settings, role="answer": PacedEchoChatModel(delay))
    sys.exit(main(["serve", *sys.argv[1:]]))
