"""Errors in the OpenAI shape, ``{"error": {"message", "type", "param", "code"}}``, so every
OpenAI client shows the message; ragbot's own errors are mapped to the status they deserve."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ragbot.errors import (
    ConversationChangedError,
    ConversationError,
    ConversationStoreError,
    EmbedderError,
    ModelError,
    QueryError,
    RagbotError,
    TurnAnsweredError,
)


class APIError(Exception):
    """An answer other than 200: the status, the one-line message and OpenAI's type/param/code."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def from_ragbot_error(exc: RagbotError) -> APIError:
    """A ragbot error as the client should see it: its own mistake 400, a conversation another
    worker answered meanwhile 409, a part that is down 503."""
    if isinstance(exc, TurnAnsweredError):
        return APIError(
            409,
            "another request with this Idempotency-Key saved its answer while this one was generated; nothing "
            "was saved: send the request again to get the saved answer",
            code="idempotency_key_in_use",
            param="Idempotency-Key",
            headers={"Retry-After": "1"},
        )
    if isinstance(exc, ConversationChangedError):
        return APIError(
            409,
            f"conversation {exc.name.rsplit('/', 1)[-1]!r} changed while this answer was generated (another "
            "request added a turn to it); nothing was saved: send the message again",
            code="conversation_changed",
            param="conversation_id",
        )
    if isinstance(exc, (ConversationError, QueryError)):
        return APIError(400, str(exc), code="invalid_value")
    if isinstance(exc, ConversationStoreError):
        return APIError(503, str(exc), "server_error", "store_unavailable", headers={"Retry-After": "5"})
    if isinstance(exc, (ModelError, EmbedderError)):
        return APIError(503, str(exc), "server_error", "model_unavailable", headers={"Retry-After": "5"})
    return APIError(500, str(exc), "server_error", "internal_error")


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """The first problem of a request body in one line, and the field it is about."""
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    field = ".".join(loc) or None
    if first.get("type") == "json_invalid":
        reason = first.get("ctx", {}).get("error", "invalid JSON")
        return f"the request body is not valid JSON ({reason}); send a JSON object", None
    if first.get("type") == "missing":
        return f"the request is missing the required field {field!r}", field
    if not loc:
        return f"the request body must be a JSON object ({first.get('msg', 'invalid')})", None
    return f"bad value for {field!r}: {first.get('msg', 'invalid')}", field


async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return exc.response()


async def _ragbot_error(request: Request, exc: RagbotError) -> JSONResponse:
    return from_ragbot_error(exc).response()


async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    message, field = _validation_message(exc)
    return APIError(400, message, code="invalid_request", param=field).response()


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    if exc.status_code == 404:
        message = f"no such endpoint {request.method} {request.url.path}; see GET /v1/models, POST /v1/chat/completions"
        return APIError(404, message, code="unknown_url").response()
    if exc.status_code == 405:
        return APIError(
            405, f"{request.url.path} does not accept {request.method}", code="method_not_allowed"
        ).response()
    code = "request_too_large" if exc.status_code == 413 else None
    return APIError(exc.status_code, str(exc.detail), code=code, headers=dict(exc.headers or {})).response()


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # the details stay in the server log; the client learns only that it was not its fault
    return APIError(500, "the server failed to answer this request; see its log", "server_error").response()


HANDLERS = {
    APIError: _api_error,
    RagbotError: _ragbot_error,
    RequestValidationError: _invalid_request,
    HTTPException: _http_error,
    Exception: _unexpected,
}
