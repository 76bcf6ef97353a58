"""What the OpenAI-compatible clients (chat, embeddings, fine-tuning) share: the one place that
reads the API key, builds the ``openai`` client, and turns its exceptions into one-line messages.

The key comes from ``OPENAI_API_KEY`` only. A server or proxy may echo the request headers in
an error body, so every message made here has the key, and anything that looks like one
(``Bearer ...``, ``sk-...``), replaced with ``[redacted]`` before anyone sees it.
"""

from __future__ import annotations

import os
import re
from typing import Any

from ragbot.errors import RagbotError

KEY_VARIABLE = "OPENAI_API_KEY"
OPENAI_ENDPOINT = "https://api.openai.com/v1"
REDACTED = "[redacted]"

# A bearer token, a header or field carrying a key, or a token shaped like an OpenAI key.
_SECRET = re.compile(
    r"(?i)(?P<keep>\bbearer\s+|\b(?:x-)?api[-_]?key[\"']?\s*[:=]\s*[\"']?)(?!\[redacted\])[^\s\"',;}\]]+"
    r"|\bsk-[A-Za-z0-9_\-]{6,}"
)


def api_key() -> str | None:
    """The API key from ``OPENAI_API_KEY``, or None when it is unset or blank."""
    return os.environ.get(KEY_VARIABLE, "").strip() or None


def redact(text: str) -> str:
    """``text`` with the API key and anything that looks like a key replaced by ``[redacted]``."""
    text = str(text)
    key = api_key()
    if key and len(key) >= 8:  # a short "key" (a local server's "x") would garble every message
        text = text.replace(key, REDACTED)
    return _SECRET.sub(lambda m: (m.group("keep") or "") + REDACTED, text)


def client(base_url: str | None, *, timeout: float, max_retries: int, no_key: RagbotError) -> Any:
    """An ``openai.OpenAI`` client for ``base_url`` (None: OpenAI's own endpoint).

    OpenAI's endpoint needs the key, else ``no_key`` is raised; other servers (vLLM, Ollama,
    llama.cpp) accept any key, so a placeholder is sent when none is set.
    """
    from openai import OpenAI

    key = api_key()
    if key is None:
        if base_url is None or base_url.rstrip("/") == OPENAI_ENDPOINT:
            raise no_key
        key = "not-needed"
    return OpenAI(api_key=key, base_url=base_url, timeout=timeout, max_retries=max_retries)


def error_message(
    exc: BaseException, where: str, doing: str, *, url_setting: str = "base_url", model_setting: str = "model"
) -> str:
    """One redacted line saying why ``where`` could not ``doing`` and what to do about it.

    ``exc`` is an exception of the ``openai`` client; ``url_setting`` and ``model_setting``
    name the settings the user may have to fix.
    """
    import openai

    if isinstance(exc, openai.AuthenticationError):
        text = f"{where} rejected the API key; check {KEY_VARIABLE}"
    elif isinstance(exc, openai.RateLimitError):
        text = f"{where} is rate limiting us and retries ran out; try again later"
    elif isinstance(exc, openai.APITimeoutError):
        text = f"{where} did not answer in time to {doing}; raise request_timeout or try later"
    elif isinstance(exc, openai.APIConnectionError):
        text = f"cannot reach {where} to {doing}; check {url_setting} and that the server is running"
    elif isinstance(exc, openai.APIStatusError):
        text = f"{where} could not {doing} (HTTP {exc.status_code}): {short(redact(server_message(exc)))}"
        if exc.status_code == 404:
            text += f"; check {model_setting} and {url_setting}"
    else:
        text = f"{where} could not {doing}: {short(redact(str(exc)))}"
    return short(redact(text), limit=400)


def server_message(exc: BaseException) -> str:
    """The server's own explanation in an error response (``error.message`` when it sent JSON)."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error") if isinstance(body.get("error"), dict) else body
        if inner.get("message"):
            return str(inner["message"])
    return str(getattr(exc, "message", None) or exc)


def short(text: str, limit: int = 200) -> str:
    """``text`` on one line, cut to ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


__all__ = ["api_key", "client", "error_message", "redact", "server_message"]
