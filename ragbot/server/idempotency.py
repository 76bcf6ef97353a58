"""Idempotency keys: a client's ``Idempotency-Key`` header makes a resent turn of a stored conversation
the same turn, as the Stripe API and the IETF draft "The Idempotency-Key HTTP Header Field" treat it.

The key maps, within its API key's conversation, to a turn id (the same for every resend), so the
store saves the turn once; a resend whose turn is saved gets the saved answer back, marked with
``Idempotent-Replayed: true``, and the model is not called. A resend must carry the same request (all
but ``stream`` and ``stream_options``, which only say how the answer is delivered); another request
under the same key is 422. ``store: true`` with a key starts the conversation whose id the key
derives, so a resend of the first message finds its conversation too. Stateless requests save
nothing, so their key is checked and otherwise unused.
"""

from __future__ import annotations

import hashlib
import json
import re

from ragbot.server.errors import APIError
from ragbot.server.schemas import ChatCompletionRequest
from ragbot.storage.conversations import Reply, TurnKey

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"  # the response header of a replayed answer (Stripe's name)
MAX_LENGTH = 255  # as Stripe's keys
KEY = re.compile(rf"[\x21-\x7e]{{1,{MAX_LENGTH}}}")  # visible ASCII: a UUID, a ULID, "order-42/turn-3"
DELIVERY_FIELDS = {"stream", "stream_options"}  # may differ between a request and its resend


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def checked_key(value: str | None) -> str | None:
    """The request's key, or None without one; a key that cannot be one is 400."""
    if value is None or KEY.fullmatch(value):
        return value
    what = f"{len(value)} characters long" if len(value) > MAX_LENGTH else "empty" if not value else "not visible ASCII"
    raise APIError(
        400,
        f"the {HEADER} header is {what}; send 1 to {MAX_LENGTH} visible ASCII characters (no spaces), e.g. a UUID",
        code="invalid_idempotency_key",
        param=HEADER,
    )


def conversation_id(owner: str, key: str) -> str:
    """The id of the conversation that ``store: true`` under ``key`` starts (``conv_`` + 32 hex digits)."""
    return "conv_" + _digest("conversation", owner, key)[:32]


def turn_key(name: str, key: str, body: ChatCompletionRequest) -> TurnKey:
    """The turn id ``key`` maps to in the conversation ``name``, and the digest a resend must match."""
    request = body.model_dump(mode="json", exclude=DELIVERY_FIELDS)
    return TurnKey("key_" + _digest("turn", name, key)[:32], _digest(json.dumps(request, sort_keys=True)))


def completion_id(key: TurnKey) -> str:
    """A keyed turn's completion id: its resends are the same completion."""
    return "chatcmpl-" + key.turn_id.removeprefix("key_")[:24]


def reused(key: str, saved: Reply, question: str) -> APIError:
    """A resend under ``key`` that is not the request the saved turn answered."""
    asked = saved.record.get("question", "")
    if asked.strip() != question.strip():
        short = asked if len(asked) <= 60 else asked[:60] + "…"
        what = f"for another question ({short!r})"
    else:
        what = "for the same question with other fields (only stream and stream_options may differ)"
    return APIError(
        422,
        f"{HEADER} {key!r} was already used in this conversation {what}; send a new key with a new message",
        code="idempotency_key_reused",
        param=HEADER,
    )


def in_flight(key: str) -> APIError:
    """A resend that arrives while the first request with its key is still being answered here."""
    return APIError(
        409,
        f"a request with {HEADER} {key!r} is still being answered; send it again in a moment to get its answer",
        code="idempotency_key_in_use",
        param=HEADER,
        headers={"Retry-After": "1"},
    )
