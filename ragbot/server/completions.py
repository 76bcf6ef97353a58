"""Chat requests into turns, and turns into OpenAI responses and stream chunks.

Stateless requests carry the conversation in ``messages``: the last user message is the question,
the earlier user/assistant messages its history (roles must alternate). System messages are
dropped: ragbot answers with its own prompts. The ``ragbot`` field of a response (and the last
chunk of a stream) holds the route, the standalone question and the sources; the rewrite's
reasoning is never sent.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from typing import Any

from ragbot.conversation.turn import Answer
from ragbot.server.errors import APIError
from ragbot.server.schemas import ChatMessage

IGNORED_ROLES = ("system", "developer")
CONVERSATION_ID = re.compile(r"conv_[0-9a-f]{32}")


def new_completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


def new_conversation_id() -> str:
    return "conv_" + secrets.token_hex(16)


def stored_name(owner: str, conversation_id: str) -> str:
    """The conversation's name in the store: under its owner's key digest (never the key)."""
    return f"api/{owner}/{conversation_id}"


def unknown_conversation(conversation_id: str) -> APIError:
    return APIError(
        404,
        f'no conversation {conversation_id!r} for this API key; start one with "store": true '
        "(the response's ragbot.conversation_id names it), or drop conversation_id and send the history",
        code="conversation_not_found",
        param="conversation_id",
    )


def _text(message: ChatMessage, i: int) -> str:
    if isinstance(message.content, str):
        return message.content
    if message.content is None:
        raise APIError(400, f"messages[{i}] has no content; send its text", param=f"messages.{i}.content")
    texts = []
    for part in message.content:
        if part.type != "text" or part.text is None:
            raise APIError(
                400,
                f"messages[{i}] holds a {part.type!r} part; ragbot takes text only",
                code="unsupported_content",
                param=f"messages.{i}.content",
            )
        texts.append(part.text)
    return "\n".join(texts)


def split_messages(messages: list[ChatMessage]) -> tuple[str, list[dict[str, str]]]:
    """The question (the last user message) and the history before it, checked: the roles must
    alternate user/assistant, starting with the user."""
    kept: list[tuple[int, dict[str, str]]] = []
    for i, message in enumerate(messages):
        if message.role in IGNORED_ROLES:
            continue
        if message.role not in ("user", "assistant"):
            raise APIError(
                400,
                f"messages[{i}] has role {message.role!r}; ragbot takes user and assistant messages "
                "(system messages are ignored)",
                code="invalid_role",
                param=f"messages.{i}.role",
            )
        kept.append((i, {"role": message.role, "content": _text(message, i)}))
    if not kept or kept[-1][1]["role"] != "user":
        raise APIError(400, "the last message must be the user's question (role 'user')", param="messages")
    for n, (i, message) in enumerate(kept):
        expected = "user" if n % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise APIError(
                400,
                f"messages[{i}] has role {message['role']!r} but {expected!r} was expected: roles must "
                "alternate user/assistant, starting with the user",
                code="invalid_history",
                param=f"messages.{i}.role",
            )
    return kept[-1][1]["content"], [m for _, m in kept[:-1]]


def _record(answer: Answer | dict[str, Any]) -> dict[str, Any]:
    """A turn's record: ``Answer.to_dict()``, or the one saved with a keyed turn for its replays."""
    return answer.to_dict() if isinstance(answer, Answer) else answer


def ragbot_field(answer: Answer | dict[str, Any], conversation_id: str | None) -> dict[str, Any]:
    """What ragbot adds to a response: route, standalone question, sources, hits, topic; no reasoning."""
    record = dict(_record(answer))
    record.pop("answer")
    record["rewrite"] = {k: v for k, v in record["rewrite"].items() if k != "reasoning"}
    return {"conversation_id": conversation_id, **record}


def usage_field(answer: Answer | dict[str, Any]) -> dict[str, int]:
    """The tokens of all the turn's model calls (rewrite and answer) together."""
    stages = _record(answer)["usage"].values()
    prompt = sum(u["prompt_tokens"] for u in stages)
    generated = sum(u["completion_tokens"] for u in stages)
    return {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated}


def completion(
    answer: Answer | dict[str, Any],
    model: str,
    completion_id: str,
    conversation_id: str | None,
    created: float | None = None,
) -> dict[str, Any]:
    """The whole answer as a ``chat.completion`` object."""
    record = _record(answer)
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(created or time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": record["answer"]},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": usage_field(record),
        "ragbot": ragbot_field(record, conversation_id),
    }


class ChunkWriter:
    """The server-sent events of one streamed completion, each a ``chat.completion.chunk``."""

    def __init__(self, model: str, completion_id: str, include_usage: bool = False, created: float | None = None):
        self.model, self.id, self.include_usage = model, completion_id, include_usage
        self.created = int(created or time.time())

    def _event(self, **fields: Any) -> str:
        chunk = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model}
        return "data: " + json.dumps({**chunk, **fields}, ensure_ascii=False) + "\n\n"

    def start(self) -> str:
        return self._event(choices=[{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])

    def text(self, piece: str) -> str:
        return self._event(choices=[{"index": 0, "delta": {"content": piece}, "finish_reason": None}])

    def end(self, answer: Answer | dict[str, Any], conversation_id: str | None) -> str:
        """The finish chunk, then the last chunk (no choices) with the ``ragbot`` field, then [DONE]."""
        record = _record(answer)
        finish = self._event(choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}])
        extra = {"usage": usage_field(record)} if self.include_usage else {}
        last = self._event(choices=[], **extra, ragbot=ragbot_field(record, conversation_id))
        return finish + last + "data: [DONE]\n\n"

    def replay(self, record: dict[str, Any], conversation_id: str | None) -> str:
        """A saved answer as a whole stream: its text in one piece, then the end."""
        return self.start() + self.text(record["answer"]) + self.end(record, conversation_id)

    @staticmethod
    def error(error: APIError) -> str:
        return "data: " + json.dumps(error.body(), ensure_ascii=False) + "\n\n"
