"""Thread counts of the local model: with other processes on every core, one llama.cpp thread (all
threads would spin at barriers waiting for the one that lost its core); a fixed count stays fixed."""

from __future__ import annotations

import multiprocessing
import os
import time

import pytest

from ragbot.config import Settings
from ragbot.errors import ConfigError
from ragbot.models.local import LlamaCppChatModel, free_cores


def _spin() -> None:
    while True:
        pass


def test_with_every_core_busy_elsewhere_one_thread_is_left():
    busy = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(os.cpu_count() or 1)]
    for p in busy:
        p.start()
    try:
        time.sleep(0.3)
        assert free_cores() == 1
    finally:
        for p in busy:
            p.terminate()
            p.join()
    assert 1 <= free_cores() <= (os.cpu_count() or 1)


def test_llm_threads_is_validated_and_reaches_the_local_model():
    with pytest.raises(ConfigError, match="llm_threads"):
        Settings(llm_threads=0)
    from ragbot.models.chat import make_chat_model

    model = make_chat_model(Settings(llm="local", model="smollm2-135m", llm_threads=1, num_threads=2))
    assert isinstance(model, LlamaCppChatModel) and model.n_threads == 1
    assert make_chat_model(Settings(llm="local", model="smollm2-135m")).n_threads is None  # auto, per call
