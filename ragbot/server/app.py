"""The HTTP application over one ``RagBot``: routes, access, limits, and running it with uvicorn.

Every model, index or store call runs in a worker thread (the bot is synchronous); a turn runs on
a thread of its own (``turns``), so a client that disconnects stops the generation at the next
piece and the unfinished turn is never saved.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import anyio
from fastapi import Depends, FastAPI, Header
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from ragbot.config import Settings
from ragbot.conversation.bot import RagBot
from ragbot.conversation.session import Conversation
from ragbot.conversation.turn import Answer
from ragbot.errors import RagbotError
from ragbot.models.chat import GenerationSettings
from ragbot.server import completions, idempotency
from ragbot.server.completions import ChunkWriter
from ragbot.server.errors import HANDLERS, APIError, from_ragbot_error
from ragbot.server.generation import request_generation
from ragbot.server.keys import ApiKeys
from ragbot.server.limits import BodyLimit, TurnSlots
from ragbot.server.schemas import ChatCompletionRequest, SearchRequest
from ragbot.server.turns import TurnRunner
from ragbot.storage.conversations import Reply, TurnKey

log = logging.getLogger("ragbot.server")
SETTINGS_ENV = "RAGBOT_SERVE_SETTINGS"  # the resolved settings, for worker processes (--workers > 1)


async def in_thread(func: Callable[..., Any], *args: Any) -> Any:
    return await anyio.to_thread.run_sync(func, *args)


class TurnStream(StreamingResponse):
    """Server-sent events that always run ``on_close`` at the end: finished, failed or disconnected."""

    def __init__(self, events: AsyncIterator[str], on_close: Callable[[], Awaitable[None]]):
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(events, media_type="text/event-stream", headers=headers)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._on_close()


def create_app(bot: RagBot, keys: ApiKeys | None = None) -> FastAPI:
    """The application serving ``bot``; ``keys`` default to the configured ones (none: open)."""
    settings = bot.settings
    keys = keys if keys is not None else ApiKeys.from_settings(settings)
    slots = TurnSlots(settings.max_concurrent, settings.queue_timeout)
    models = [bot.answer_model.name]  # the name clients send as `model`
    busy: dict[str, str | None] = {}  # conversations answering a message in this process -> its keyed turn id

    app = FastAPI(title="ragbot", exception_handlers=HANDLERS, docs_url=None, redoc_url=None)
    app.add_middleware(BodyLimit, limit=settings.max_request_bytes)

    async def owner(authorization: str | None = Header(default=None)) -> str:
        return keys.owner(authorization)  # a hash of a short string: no need for a worker thread

    @app.get("/health")
    async def health() -> dict[str, str]:
        """The process is up (liveness)."""
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        """The index answers a search and the conversation store can save a turn (readiness)."""
        checks = {}
        for part, check in (("index", lambda: bot.kb.search("ready", 1)), ("conversations", lambda: bot.store.check())):
            try:
                await in_thread(check)
                checks[part] = "ok"
            except Exception as exc:  # any failure makes this worker unready; the reason is shown
                checks[part] = str(exc) if isinstance(exc, RagbotError) else f"{type(exc).__name__}: {exc}"
        if all(v == "ok" for v in checks.values()):
            return JSONResponse({"status": "ready", "checks": checks})
        failed = "; ".join(f"{k}: {v}" for k, v in checks.items() if v != "ok")
        error = APIError(503, f"not ready: {failed}", "server_error", "not_ready", headers={"Retry-After": "5"})
        return JSONResponse({**error.body(), "checks": checks}, status_code=503, headers=error.headers)

    @app.get("/v1/models")
    async def list_models(who: str = Depends(owner)) -> dict[str, Any]:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "ragbot"} for m in models]
        return {"object": "list", "data": data}

    @app.post("/v1/search")
    async def search(body: SearchRequest, who: str = Depends(owner)) -> dict[str, Any]:
        """The hits for a query with their scores and the threshold decision (``ragbot search --json``)."""
        async with slots.slot():
            result = await in_thread(lambda: bot.kb.search(body.query, body.k, body.threshold))
        return result.to_dict()

    async def open_conversation(who: str, conversation_id: str):
        if not completions.CONVERSATION_ID.fullmatch(conversation_id):
            raise completions.unknown_conversation(conversation_id)
        conversation = await in_thread(bot.conversation, completions.stored_name(who, conversation_id))
        if not conversation.history:
            raise completions.unknown_conversation(conversation_id)
        return conversation

    @app.get("/v1/conversations/{conversation_id}")
    async def get_conversation(conversation_id: str, who: str = Depends(owner)) -> dict[str, Any]:
        """The saved messages of a conversation of this key."""
        conversation = await open_conversation(who, conversation_id)
        messages = [m.to_dict() for m in conversation.history]
        return {"id": conversation_id, "object": "conversation", "messages": messages}

    @app.delete("/v1/conversations/{conversation_id}")
    async def delete_conversation(conversation_id: str, who: str = Depends(owner)) -> dict[str, Any]:
        conversation = await open_conversation(who, conversation_id)
        await in_thread(conversation.reset)
        return {"id": conversation_id, "object": "conversation.deleted", "deleted": True}

    @app.post("/v1/chat/completions")
    async def chat_completions(
        body: ChatCompletionRequest,
        who: str = Depends(owner),
        idempotency_key: str | None = Header(default=None, alias=idempotency.HEADER),
    ):
        key = idempotency.checked_key(idempotency_key)
        if body.model not in models:
            raise APIError(
                404,
                f"the model {body.model!r} does not exist on this server; use {', '.join(models)} (GET /v1/models)",
                code="model_not_found",
                param="model",
            )
        generation = request_generation(body, settings)  # a bad temperature etc. is 400; None: the server's
        question, history = completions.split_messages(body.messages)
        conversation_id = body.conversation_id
        if conversation_id is not None:
            conversation = await open_conversation(who, conversation_id)
        elif body.store:
            if history:
                raise APIError(
                    400,
                    'a stored conversation starts with one question; send only it with "store": true, '
                    "or drop store to send the history with each request",
                    param="messages",
                )
            # with a key, a resend of the first message finds the conversation it started
            conversation_id = idempotency.conversation_id(who, key) if key else completions.new_conversation_id()
            conversation = await in_thread(bot.conversation, completions.stored_name(who, conversation_id))
        else:
            conversation = None  # stateless: nothing is saved, so a key has nothing to replay
        name = conversation.name if conversation is not None else None
        turn_key = idempotency.turn_key(name, key, body) if key and name else None
        completion_id = idempotency.completion_id(turn_key) if turn_key else completions.new_completion_id()
        if turn_key:
            saved = await in_thread(bot.store.reply, name, turn_key.turn_id)
            if saved is not None:
                if saved.request != turn_key.request:
                    raise idempotency.reused(key, saved, question)
                return _replay(saved, body, models[0], completion_id, conversation_id)
        await slots.acquire()
        if name in busy:
            slots.release()
            if turn_key and busy[name] == turn_key.turn_id:
                raise idempotency.in_flight(key)
            raise APIError(
                409,
                f"conversation {conversation_id!r} is answering another message; retry when it is done",
                code="conversation_busy",
                param="conversation_id",
            )
        if name:
            busy[name] = turn_key.turn_id if turn_key else None
        steps = _turn_steps(bot, conversation, question, history, turn_key, generation)
        turn = TurnRunner(steps, whole=not body.stream)  # starts the turn, on a thread of its own

        async def close() -> None:
            try:
                await turn.close()
            finally:
                busy.pop(name, None)
                slots.release()

        if not body.stream:
            try:
                answer = await turn.answer()
            finally:
                with anyio.CancelScope(shield=True):
                    await close()
            return completions.completion(answer, models[0], completion_id, conversation_id)
        try:
            first = await turn.batch()  # the rewrite and the search: their errors still get a status
        except BaseException:
            with anyio.CancelScope(shield=True):
                await close()
            raise
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        writer = ChunkWriter(models[0], completion_id, include_usage)
        return TurnStream(_events(turn, first, writer, conversation_id), close)

    return app


def _turn_steps(
    bot: RagBot,
    conversation: Conversation | None,
    question: str,
    history: list[dict[str, str]],
    turn_key: TurnKey | None,
    generation: GenerationSettings | None,
) -> Iterator[str | Answer]:
    """The turn's text pieces, then its ``Answer``: in the stored ``conversation``, or stateless;
    ``generation``: the request's answer settings (None: the server's)."""
    if conversation is not None:
        return conversation.stream(question, turn_key, generation)
    return bot.stream_answer(question, history, generation=generation)


def _replay(saved: Reply, body: ChatCompletionRequest, model: str, completion_id: str, conversation_id: str | None):
    """The saved answer of a keyed turn, in the shape this resend asks for (whole or streamed)."""
    headers = {idempotency.REPLAYED: "true"}
    if not body.stream:
        content = completions.completion(saved.record, model, completion_id, conversation_id, saved.created)
        return JSONResponse(content, headers=headers)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    writer = ChunkWriter(model, completion_id, include_usage, saved.created)
    events = writer.replay(saved.record, conversation_id)
    headers.update({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return StreamingResponse(iter([events]), media_type="text/event-stream", headers=headers)


async def _events(
    turn: TurnRunner, batch: list[str | Answer], writer: ChunkWriter, conversation_id: str | None
) -> AsyncIterator[str]:
    """The chunks of a turn whose first pieces are ``batch``, the pieces made meanwhile sent together;
    an error after the start ends the stream with an error event (no [DONE])."""
    events = [writer.start()]
    try:
        while True:
            for item in batch:
                if isinstance(item, Answer):
                    yield "".join(events) + writer.end(item, conversation_id)
                    return
                events.append(writer.text(item))
            yield "".join(events)
            events = []
            batch = await turn.batch()
    except RagbotError as exc:
        yield writer.error(from_ragbot_error(exc))
        return
    except Exception:
        log.exception("a streamed answer failed")
        yield writer.error(APIError(500, "the server failed while answering; see its log", "server_error"))
        return


def _settings_from_environment() -> Settings:
    values = json.loads(os.environ[SETTINGS_ENV])
    return Settings(**values)


# The static prompt prefixes, restored from what an earlier process saved or evaluated and saved, while
# the first requests come in; under a key of its own, so no conversation's turn stops it.
STARTUP = "serve start-up"


def app_from_environment() -> FastAPI:
    """The application of one worker process (uvicorn's factory for ``--workers`` > 1)."""
    bot = RagBot.load(_settings_from_environment())
    bot.warm_up(key=STARTUP)
    return create_app(bot)


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> None:
    """Run the server until interrupted: one process, or ``workers`` processes sharing the port."""
    import uvicorn

    bot = RagBot.load(settings)  # fails here, before listening, with one line
    app = create_app(bot)
    bot.store.check()
    if workers == 1:
        bot.warm_up(key=STARTUP)
        uvicorn.run(app, host=host, port=port, log_level="info")
        return
    del app, bot  # each worker loads its own
    values = {k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in dataclasses.asdict(settings).items()}
    os.environ[SETTINGS_ENV] = json.dumps(values)
    uvicorn.run(
        "ragbot.server.app:app_from_environment", factory=True, host=host, port=port, workers=workers, log_level="info"
    )
