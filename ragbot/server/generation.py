"""A chat request's generation parameters: checked as OpenAI checks them, then the answer's own settings.

A bad value is 400 in OpenAI's shape, naming the parameter and the value sent (OpenAI's codes:
``invalid_type``, ``decimal_above_max_value``, ...). The good ones apply to the answer of this
request only (the rewrite and the translation keep their own), within the server's settings:

- ``temperature`` (0-2), ``top_p`` (0-1), ``frequency_penalty`` and ``presence_penalty`` (-2 to 2),
  ``seed`` (an integer): used as sent;
- ``max_tokens`` and ``max_completion_tokens`` (at least 1): the answer stops at the smallest of them
  and the server's ``max_tokens`` (a larger limit is lowered to the server's, not refused);
- ``stop`` (a string or up to 4): added to the server's ``stop``;
- ``n``: 1 (or null); ragbot makes one choice.

``null`` is the same as leaving a parameter out. Other fields OpenAI clients send (``user``,
``logit_bias``, ...) are accepted and ignored.
"""

from __future__ import annotations

import json
from typing import Any

from ragbot.config import Settings
from ragbot.models.chat import GenerationSettings
from ragbot.server.errors import APIError
from ragbot.server.schemas import ChatCompletionRequest

MAX_STOP = 4  # stop sequences a request may send, as OpenAI's API
INT64 = (-(2**63), 2**63 - 1)

# name -> (integer or not, lowest, highest): the numbers OpenAI's chat completions take
NUMBERS: dict[str, tuple[bool, float, float]] = {
    "temperature": (False, 0.0, 2.0),
    "top_p": (False, 0.0, 1.0),
    "frequency_penalty": (False, -2.0, 2.0),
    "presence_penalty": (False, -2.0, 2.0),
    "max_tokens": (True, 1, INT64[1]),
    "max_completion_tokens": (True, 1, INT64[1]),
    "seed": (True, *INT64),
}
PARAMETERS = (*NUMBERS, "stop", "n")


def _shown(value: Any) -> str:
    """The value as the client sent it (JSON), cut short."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:59] + "…"


def _bad(name: str, value: Any, problem: str, wanted: str, code: str) -> APIError:
    return APIError(400, f"bad value for {name!r}: {_shown(value)} {problem}; send {wanted}", code=code, param=name)


def _figure(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _number(name: str, value: Any) -> int | float:
    integer, low, high = NUMBERS[name]
    if name == "seed":
        wanted = "an integer"
    elif integer:
        wanted = f"an integer of at least {low}"
    else:
        wanted = f"a number from {low:g} to {high:g}"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise _bad(name, value, "is not " + ("an integer" if integer else "a number"), wanted, "invalid_type")
    if value != value:  # NaN, which Python's JSON parser lets through
        raise _bad(name, value, "is not a number", wanted, "invalid_type")
    kind = "integer" if integer else "decimal"
    if not value >= low:
        raise _bad(name, value, f"is below {_figure(low)}", wanted, f"{kind}_below_min_value")
    if not value <= high:
        raise _bad(name, value, f"is above {_figure(high)}", wanted, f"{kind}_above_max_value")
    return value


def _stop(value: Any) -> tuple[str, ...]:
    wanted = f"a string or a list of up to {MAX_STOP} strings"
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise _bad("stop", value, "is not a string or a list of strings", wanted, "invalid_type")
    if len(stops) > MAX_STOP:
        raise _bad("stop", value, f"holds {len(stops)} sequences", wanted, "array_above_max_length")
    if not all(stops):
        raise _bad("stop", value, "holds an empty sequence", "sequences of at least one character", "invalid_value")
    return tuple(stops)


def checked(body: ChatCompletionRequest) -> dict[str, Any]:
    """The generation parameters ``body`` sends (not null), each checked; the first bad one is 400."""
    sent = {**(body.model_extra or {}), "n": body.n}
    values: dict[str, Any] = {}
    for name in PARAMETERS:
        value = sent.get(name)
        if value is None:
            continue
        if name == "n":
            if value != 1 or isinstance(value, bool):
                raise _bad("n", value, "is not 1", "n = 1 or leave it out: ragbot makes one choice", "invalid_value")
        elif name == "stop":
            values[name] = _stop(value)
        else:
            values[name] = _number(name, value)
    return values


def request_generation(body: ChatCompletionRequest, settings: Settings) -> GenerationSettings | None:
    """The answer's generation settings for this request: the server's ``settings`` with the request's
    parameters applied (see the module's doc); None when it sends none. A bad value is 400."""
    values = checked(body)
    values.pop("n", None)
    if not values:
        return None
    limits = [values.pop(name) for name in ("max_tokens", "max_completion_tokens") if name in values]
    if limits:
        values["max_tokens"] = min(*limits, settings.max_tokens)
    if "stop" in values:
        values["stop"] = tuple(dict.fromkeys([*settings.stop, *values["stop"]]))
    return GenerationSettings.from_settings(settings, **values)


__all__ = ["PARAMETERS", "checked", "request_generation"]
