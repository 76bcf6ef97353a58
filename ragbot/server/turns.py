"""A turn's generator run on a thread of its own, a few pieces ahead of the client.

Its own thread, because a local model refuses a second generation started on the thread its first
is running on (which a shared pool would do); ahead of the client, so the model does not wait for
each piece to be sent, and pieces that arrive together go out in one write. ``close`` stops the turn
after the piece being made: the generator is closed on its thread, so ``Conversation.stream`` never
reaches the end of an unfinished turn and never saves it.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Iterator

from ragbot.conversation.turn import Answer

LOOKAHEAD = 16  # pieces the turn may run ahead of what was sent


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


class TurnRunner:
    """Runs ``turn`` (text pieces, then the ``Answer``) on its own thread; the event loop reads it."""

    def __init__(self, turn: Iterator[str | Answer], whole: bool = False):
        self.turn = turn
        self.whole = whole  # only the Answer is wanted: no piece is handed over
        self._loop = asyncio.get_running_loop()
        self._items: deque[str | Answer | _Failed] = deque()
        self._arrived = asyncio.Event()
        self._room = threading.Semaphore(LOOKAHEAD)
        self._stop = threading.Event()
        self._done = self._loop.create_future()
        threading.Thread(target=self._run, name="ragbot-turn", daemon=True).start()

    def _run(self) -> None:
        try:
            for item in self.turn:
                if self.whole and not isinstance(item, Answer):
                    continue
                self._send(item)
                self._room.acquire()
                if self._stop.is_set():
                    break
        except BaseException as exc:  # handed to the reader, which raises it
            self._send(_Failed(exc))
        finally:
            self.turn.close()
            try:
                self._loop.call_soon_threadsafe(self._done.set_result, None)
            except RuntimeError:
                pass

    def _send(self, item: str | Answer | _Failed) -> None:
        try:
            self._loop.call_soon_threadsafe(self._deliver, item)
        except RuntimeError:  # the server stopped: nobody reads any more
            self._stop.set()

    def _deliver(self, item: str | Answer | _Failed) -> None:
        self._items.append(item)
        self._arrived.set()

    async def batch(self) -> list[str | Answer]:
        """The pieces made since the last call (at least one); raises the turn's error."""
        while not self._items:
            self._arrived.clear()
            await self._arrived.wait()
        if isinstance(self._items[0], _Failed):
            raise self._items[0].error
        items: list[str | Answer] = []
        while self._items and not isinstance(self._items[0], _Failed):  # an error waits for the next call
            items.append(self._items.popleft())  # type: ignore[arg-type]
            self._room.release()
        return items

    async def answer(self) -> Answer:
        while True:
            for item in await self.batch():
                if isinstance(item, Answer):
                    return item

    async def close(self) -> None:
        """Stop the turn after the piece being made and wait until its generator is closed."""
        self._stop.set()
        self._room.release()  # wakes the thread if it waits for room
        await self._done
