"""Where named conversations are saved: the interface every store follows, and ``open_conversation_store``.

``sessions`` names the store: a path is a SQLite file (the default, ``sqlite``), a
``postgresql://`` URL a PostgreSQL database shared by any number of processes (``postgres``).
Both apply the same numbered migrations when opened and save each finished turn in one
transaction, numbering it in the database, so processes appending to one conversation never
lose or repeat a turn; both run the same SQL (``conversation_sql``).
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragbot import registry
from ragbot.config import is_url
from ragbot.errors import (
    ConfigError,
    ConversationChangedError,
    ConversationError,
    ConversationStoreError,
    TurnAnsweredError,
)
from ragbot.models.chat import Message

RATINGS = ("good", "bad")


@dataclass(frozen=True)
class Feedback:
    """A user's verdict on one answer: good, or bad with an optional corrected answer."""

    rating: str
    correction: str | None = None

    def __post_init__(self) -> None:
        if self.rating not in RATINGS:
            raise ConversationError(f"unknown rating {self.rating!r}; use 'good' or 'bad'")
        if self.rating == "good" and self.correction:
            raise ConversationError("a correction goes with a 'bad' rating; mark the answer 'bad' to correct it")


def make_feedback(rating: str, correction: str | None = None) -> Feedback:
    """Feedback from loose input: the rating in any case, a blank correction taken as none."""
    correction = correction.strip() if isinstance(correction, str) else correction
    return Feedback(str(rating).strip().lower(), correction or None)


@dataclass(frozen=True)
class StoredTurn:
    """One saved turn: the question, the answer, what the turn used (``meta``) and its feedback."""

    conversation: str
    turn: int
    question: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)
    feedback: Feedback | None = None


@dataclass(frozen=True)
class TurnKey:
    """A turn a client named with an idempotency key: the turn id the key maps to (the same for every
    resend) and a digest of the request, which a resend must match to be given the saved answer."""

    turn_id: str
    request: str


@dataclass(frozen=True)
class Reply:
    """What a keyed turn answered, saved with the turn so that a resend gets it again without calling
    the model: the request's digest and the answer's record (``Answer.to_dict()``)."""

    request: str
    record: dict[str, Any]
    created: float = 0.0  # when it was saved (seconds since the epoch)


class ConversationStore(ABC):
    """Named conversations: their turns, the state after the last one, and feedback per turn.

    Safe for several threads, and for several processes sharing the same file or database.
    ``location`` names the store in messages (a database URL with its password masked).
    """

    location: str

    @abstractmethod
    def history(self, name: str) -> list[Message]:
        """The saved messages of ``name``, user and assistant alternating (empty if unknown)."""

    @abstractmethod
    def append_turn(
        self,
        name: str,
        question: str,
        answer: str,
        meta: dict[str, Any] | None = None,
        state: dict[str, Any] | None = None,
        *,
        expected_turns: int | None = None,
        turn_id: str | None = None,
        reply: Reply | None = None,
    ) -> int:
        """Save one finished turn in one transaction (with the conversation's ``state`` after it
        when given); return its number, 0-based, given by the store so concurrent writers never share one.

        ``expected_turns``: the number of turns the answer was generated from; if the conversation has
        another number by now (another process saved a turn meanwhile), nothing is saved and
        ``ConversationChangedError`` is raised. ``turn_id`` (made before the first try) makes the save
        idempotent: a turn already saved under it is not saved again, its number is returned.
        ``reply`` (a turn sent with an idempotency key): saved with the turn, read back by ``reply()``; a
        turn already saved under ``turn_id`` with another reply was saved by another request with the
        same key, and this one gets ``TurnAnsweredError``."""

    def reply(self, name: str, turn_id: str) -> Reply | None:
        """The reply saved with the turn ``turn_id`` of ``name`` (``append_turn(reply=)``), or None."""
        raise ConversationStoreError(
            f"the conversation store {self.location} keeps no replies, so it cannot answer requests with an "
            "Idempotency-Key; send them without one, or use the SQLite file or PostgreSQL"
        )

    @abstractmethod
    def state(self, name: str) -> tuple[int, dict[str, Any]] | None:
        """The saved state of a conversation and the number of turns it covers, or None."""

    @abstractmethod
    def clear(self, name: str) -> None:
        """Delete the turns, feedback and state of ``name`` (its name stays known)."""

    @abstractmethod
    def set_feedback(self, name: str, turn: int, feedback: Feedback) -> None:
        """Record (or replace) the feedback on turn ``turn`` (0-based) of conversation ``name``."""

    @abstractmethod
    def feedback(self, name: str) -> dict[int, Feedback]:
        """The feedback of a conversation by turn (0-based)."""

    @abstractmethod
    def turns(self, name: str) -> list[StoredTurn]:
        """The saved turns of a conversation, in order, with their meta and feedback."""

    @abstractmethod
    def names(self) -> list[str]:
        """Every saved conversation, oldest first."""

    def check(self) -> bool:
        """Before a turn: raise ``ConversationStoreError`` if it could not be saved. True when the store
        was opened again (a SQLite file deleted or replaced), so the caller saves back what it held."""
        return False

    def close(self) -> None:  # noqa: B027 -- a store with nothing to let go of needs no close
        """Let go of the file or the connections (a later call opens them again where it can)."""


def new_turn_id() -> str:
    """A fresh id for a turn about to be saved (random, so workers need not coordinate)."""
    return uuid.uuid4().hex


def changed(name: str, expected: int, found: int) -> ConversationChangedError:
    """The error of a save whose conversation gained turns while its answer was generated."""
    return ConversationChangedError(
        f"conversation {name!r} changed while this answer was generated (it has {found} turn(s), the answer "
        f"was made from {expected}); nothing was saved: send the message again",
        name,
    )


def answered(name: str) -> TurnAnsweredError:
    """The error of a keyed turn whose id another request saved first, with its own answer."""
    return TurnAnsweredError(
        f"another request with the same idempotency key saved its answer in conversation {name!r} while this "
        "one was generated; nothing was saved: send the request again to get the saved answer",
        name,
    )


SCHEMES = {"postgresql": "postgresql", "postgres": "postgresql"}  # URL scheme -> conversation store


def open_conversation_store(location: str | Path, pool_size: int | None = None) -> ConversationStore:
    """The conversation store at ``location``: a SQLite file path, or a ``postgresql://`` URL (with at
    most ``pool_size`` connections, the ``postgres_pool_size`` setting). Close it when done."""
    if not is_url(location):
        return registry.conversation_stores.create("sqlite", Path(location).expanduser())
    location = str(location).strip()
    scheme = location.split("://", 1)[0].lower()
    if scheme not in SCHEMES:
        raise ConfigError(f"bad value for sessions: a {scheme}:// URL; give a SQLite file path or a postgresql:// URL")
    sized = {} if pool_size is None else {"max_size": pool_size}
    return registry.conversation_stores.create(SCHEMES[scheme], location, **sized)


__all__ = [
    "ConversationStore",
    "Feedback",
    "RATINGS",
    "Reply",
    "TurnKey",
    "StoredTurn",
    "make_feedback",
    "open_conversation_store",
]
