"""Limits of one server process: the request body size (413), and how many turns or searches run at
once; a request that finds every slot taken waits ``queue_timeout`` seconds, then gets 429 with
``Retry-After``."""

from __future__ import annotations

import asyncio
import contextlib

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from ragbot.server.errors import APIError


def _too_large(limit: int) -> APIError:
    return APIError(
        413,
        f"the request body is over the limit of {limit:,} bytes; send a shorter conversation",
        code="request_too_large",
    )


class BodyLimit:
    """ASGI middleware refusing bodies over ``limit`` bytes: at once from ``Content-Length``, or while
    a chunked body arrives."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _too_large(self.limit).response()(scope, receive, send)
            return
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise HTTPException(413, _too_large(self.limit).message)
            return message

        await self.app(scope, counted, send)


class TurnSlots:
    """At most ``size`` turns (or searches) at once in this process."""

    def __init__(self, size: int, queue_timeout: float):
        self.size = size
        self.queue_timeout = queue_timeout
        self._free = asyncio.Semaphore(size)

    async def acquire(self) -> None:
        try:
            if self.queue_timeout <= 0:
                if self._free.locked():
                    raise TimeoutError
                await self._free.acquire()
            else:
                await asyncio.wait_for(self._free.acquire(), self.queue_timeout)
        except TimeoutError:
            raise APIError(
                429,
                f"the server is busy: all {self.size} answer slots are in use; retry in a moment",
                "rate_limit_error",
                "too_many_requests",
                headers={"Retry-After": "1"},
            ) from None

    def release(self) -> None:
        self._free.release()

    @contextlib.asynccontextmanager
    async def slot(self):
        await self.acquire()
        try:
            yield
        finally:
            self.release()
