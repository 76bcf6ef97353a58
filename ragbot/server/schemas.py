"""The request bodies, as pydantic models. A chat request's generation parameters (``temperature``,
``max_tokens``, ``stop``, ``n``, ...) are checked and applied by ``ragbot.server.generation``; other
fields OpenAI clients send that ragbot does not use (``user``, ``logit_bias``, ...) are accepted and ignored."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[TextPart] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions``. ``conversation_id`` (ragbot's own field) continues a conversation
    kept by the server; ``store: true`` starts one and the response's ``ragbot.conversation_id`` names it."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Any = 1  # checked with the other generation parameters: 1 or null
    store: bool | None = None
    conversation_id: str | None = None


class SearchRequest(BaseModel):
    """``POST /v1/search``: the knowledge base's hits for ``query``, as ``ragbot search --json``."""

    model_config = ConfigDict(extra="forbid")

    query: str
    k: int | None = Field(default=None, ge=1, le=100)
    threshold: float | None = Field(default=None, ge=-1.0, le=1.0)
