"""Optional API keys: from ``RAGBOT_API_KEYS`` (comma-separated) and/or the ``api_keys_file`` setting
(one key per line, ``#`` comments). Only their SHA-256 digests are kept in memory; a client is known
by a short digest of its key, which is also what its conversations are stored under, so no key is
ever logged or saved."""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping

from ragbot.config import Settings
from ragbot.errors import ConfigError
from ragbot.server.errors import APIError

KEYS_ENV = "RAGBOT_API_KEYS"
PUBLIC = "public"  # the owner of every request when no keys are configured


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _read_keys_file(path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the API keys file {path} ({exc}); fix api_keys_file") from None
    keys = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not keys:
        raise ConfigError(f"the API keys file {path} holds no keys (one per line); add some or unset api_keys_file")
    return keys


class ApiKeys:
    """The configured keys (as digests); ``owner`` tells who sent a request, or refuses it with 401."""

    def __init__(self, keys: list[str]):
        for key in keys:
            if any(c.isspace() for c in key) or not key.isprintable():
                raise ConfigError("an API key contains spaces or control characters; use printable keys")
        self._digests = {_digest(k) for k in keys}

    @classmethod
    def from_settings(cls, settings: Settings, environ: Mapping[str, str] | None = None) -> ApiKeys:
        environ = os.environ if environ is None else environ
        keys = [k.strip() for k in environ.get(KEYS_ENV, "").split(",") if k.strip()]
        if settings.api_keys_file is not None:
            keys += _read_keys_file(settings.api_keys_file)
        return cls(keys)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def owner(self, authorization: str | None) -> str:
        """The requester's id (a digest of its key, or ``public`` when keys are off)."""
        if not self.enabled:
            return PUBLIC
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise APIError(
                401,
                "this server needs an API key: send the header 'Authorization: Bearer KEY'",
                "authentication_error",
                "missing_api_key",
            )
        digest = _digest(key.strip())
        if not any(hmac.compare_digest(digest, known) for known in self._digests):
            raise APIError(401, "the API key is not valid for this server", "authentication_error", "invalid_api_key")
        return digest[:24]
