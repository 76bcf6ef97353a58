"""Chat models: the interface, the OpenAI-compatible backend, and ``make_chat_model``.

A backend implements ``_stream(messages, generation)``, yielding ``Delta``s: text as it is
generated and, last, the token ``Usage``. ``stream`` and ``complete`` are built on it and
turn backend failures into ``ModelError``s whose message says what to do.

Backends are found by name in ``ragbot.registry.chat_models`` (``settings.llm``): "openai"
here, "local" in ``ragbot.models.local``, "fake" in ``ragbot.testing.fakes``, or one of your own.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from ragbot.config import Settings
from ragbot.errors import ModelError
from ragbot.models import openai_api
from ragbot.registry import chat_models
from ragbot.tokens import count_tokens

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Message:
    role: Role
    content: str

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


# The settings that are also generation settings: ``Settings`` holds their defaults, here taken from it.
GENERATION_SETTINGS = ("temperature", "top_p", "max_tokens", "frequency_penalty", "presence_penalty", "stop")
_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(Settings) if f.name in GENERATION_SETTINGS}


@dataclass(frozen=True)
class GenerationSettings:
    """Sampling knobs passed to every backend; the defaults are the settings' (``ragbot.config``).

    ``until``: called with the text generated so far after each piece; once it is true the
    reply ends there. A backend should stop generating then (the local and OpenAI-compatible
    ones do, and still report the tokens spent); ``stream`` cuts the text there whatever the
    backend does. The rewrite uses it to stop once the reasoning has settled the question.
    ``seed``: sample reproducibly (as far as the backend can); None: the backend's own choice."""

    temperature: float = _DEFAULTS["temperature"]
    top_p: float = _DEFAULTS["top_p"]
    max_tokens: int = _DEFAULTS["max_tokens"]
    frequency_penalty: float = _DEFAULTS["frequency_penalty"]
    presence_penalty: float = _DEFAULTS["presence_penalty"]
    stop: tuple[str, ...] = _DEFAULTS["stop"]
    seed: int | None = None
    until: Callable[[str], bool] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings, **changes: Any) -> GenerationSettings:
        """The generation settings ``settings`` configure (``GENERATION_SETTINGS``), with ``changes``."""
        return cls(**{**{name: getattr(settings, name) for name in GENERATION_SETTINGS}, **changes})

    def reached(self, text: str) -> bool:
        """Whether ``until`` says the reply ``text`` is complete."""
        return self.until is not None and self.until(text)


@dataclass
class Usage:
    """Tokens and calls spent; ``counted_locally`` when the backend did not report them.
    ``cached_tokens``: prompt tokens restored from a saved prefix instead of evaluated (local models)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0
    counted_locally: bool = False
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.calls + other.calls,
            self.counted_locally or other.counted_locally,
            self.cached_tokens + other.cached_tokens,
        )

    def to_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "calls": self.calls,
            "cached_tokens": self.cached_tokens,
        }


@dataclass(frozen=True)
class Delta:
    """A piece of a streamed completion: some text, or (at the end) the usage."""

    text: str = ""
    usage: Usage | None = None


@dataclass
class Completion:
    text: str
    usage: Usage
    model: str
    first_token_seconds: float | None = None
    seconds: float = 0.0


def local_usage(messages: Sequence[Message], text: str) -> Usage:
    """Usage counted with tiktoken, for backends that report none."""
    prompt = sum(count_tokens(m.content) + 4 for m in messages)
    return Usage(prompt, count_tokens(text), 1, counted_locally=True)


class ChatModel(ABC):
    """Base class: set ``name`` and implement ``_stream``."""

    name: str = ""
    warms_prefixes = False  # whether ``warm`` can compute a prompt prefix ahead of time (local models)

    def warm(
        self, variants: Sequence[Sequence[Message]], stop: Callable[[], bool] | None = None, persist: bool = False
    ) -> int:
        """Compute ahead of time the prefix that ``variants`` (one prompt filled with different values)
        share, so a later prompt starting with it does not pay for it; the number of tokens computed
        (``stop()`` true: give up early; ``persist``: a prefix that is the same in every process, kept
        for the next one where the model can). Nothing to do for a remote endpoint: it caches on its side."""
        return 0

    def restore(self, variants: Sequence[Sequence[Message]]) -> bool:
        """Load the prefix ``variants`` share from a state an earlier process saved (``warm`` with
        ``persist``), evaluating nothing; whether it is ready. Only a local model keeps states."""
        return False

    @abstractmethod
    def _stream(self, messages: Sequence[Message], generation: GenerationSettings) -> Iterator[Delta]:
        """Text deltas of the reply to ``messages``, then (if the backend knows it) the ``Usage``."""

    def stream(self, messages: Sequence[Message], generation: GenerationSettings | None = None) -> Iterator[Delta]:
        """Text deltas as they are generated, then one ``Delta`` carrying the usage."""
        generation = generation or GenerationSettings()
        text, usage, ended = "", None, False
        for delta in self._stream(messages, generation):
            if delta.usage is not None:
                usage = delta.usage
            if delta.text and not ended:  # after ``until``: a backend that ignores it is read to its end
                text += delta.text
                yield Delta(text=delta.text)
                ended = generation.reached(text)
        yield Delta(usage=usage or local_usage(messages, text))

    def complete(self, messages: Sequence[Message], generation: GenerationSettings | None = None) -> Completion:
        started = time.perf_counter()
        first, parts, usage = None, [], Usage()
        for delta in self.stream(messages, generation):
            if delta.text:
                first = first if first is not None else time.perf_counter() - started
                parts.append(delta.text)
            if delta.usage is not None:
                usage = delta.usage
        return Completion("".join(parts), usage, self.name, first, time.perf_counter() - started)


class OpenAIChatModel(ChatModel):
    """Any OpenAI-compatible chat endpoint: OpenAI, DeepSeek, Qwen/DashScope, Qianfan, vLLM,
    Ollama, llama.cpp's server. The key comes from ``OPENAI_API_KEY`` only; the openai
    client retries 429s, 5xx and connection errors with exponential backoff."""

    def __init__(self, model: str, base_url: str | None = None, timeout: float = 60.0, max_retries: int = 3):
        no_key = ModelError(
            "no API key: set the OPENAI_API_KEY environment variable, or set base_url "
            "to a local OpenAI-compatible server"
        )
        self._client = openai_api.client(base_url, timeout=timeout, max_retries=max_retries, no_key=no_key)
        self.name = model
        self.base_url = base_url or openai_api.OPENAI_ENDPOINT

    def _stream(self, messages: Sequence[Message], generation: GenerationSettings) -> Iterator[Delta]:
        import openai

        kwargs = dict(
            model=self.name,
            messages=[m.to_dict() for m in messages],
            temperature=generation.temperature,
            top_p=generation.top_p,
            max_tokens=generation.max_tokens,
            frequency_penalty=generation.frequency_penalty,
            presence_penalty=generation.presence_penalty,
            stream=True,
            stream_options={"include_usage": True},
        )
        if generation.stop:
            kwargs["stop"] = list(generation.stop)
        if generation.seed is not None:
            kwargs["seed"] = generation.seed
        where = f"{self.base_url} (model {self.name!r})"
        try:
            chunks = self._client.chat.completions.create(**kwargs)
        except openai.APIError as exc:
            raise ModelError(openai_api.error_message(exc, where, "answer")) from None
        # The server answered; from here on a failure cuts an answer that had started.
        finished, text = False, ""
        try:
            for chunk in chunks:
                if chunk.choices and chunk.choices[0].finish_reason:
                    finished = True
                if chunk.choices and chunk.choices[0].delta and chunk.choices[0].delta.content:
                    text += chunk.choices[0].delta.content
                    yield Delta(text=chunk.choices[0].delta.content)
                    if generation.reached(text):  # closing the response stops the server generating
                        chunks.close()
                        return  # no usage comes after a cut: ``stream`` counts it locally
                if getattr(chunk, "usage", None):
                    details = getattr(chunk.usage, "prompt_tokens_details", None)  # servers that cache say so
                    cached = getattr(details, "cached_tokens", None) or 0
                    prompt, completion = chunk.usage.prompt_tokens or 0, chunk.usage.completion_tokens or 0
                    yield Delta(usage=Usage(prompt, completion, 1, cached_tokens=cached))
        except openai.APITimeoutError:
            raise ModelError(f"{where} stopped sending mid-answer and timed out; try again") from None
        except (openai.APIConnectionError, *_STREAM_CUT) as exc:
            cause = type(exc.__cause__ or exc).__name__
            raise ModelError(f"{where}: the connection was cut mid-answer ({cause}); try again") from None
        except openai.APIError as exc:  # an error event inside the stream
            raise ModelError(f"{where} failed mid-answer: {openai_api.short(openai_api.redact(str(exc)))}") from None
        if not finished:
            raise ModelError(f"{where}: the answer stream ended mid-answer, before the model finished; try again")


def _stream_cut_errors() -> tuple[type[BaseException], ...]:
    """Transport errors that can escape the openai client mid-stream (httpx, or httpx2 in newer releases)."""
    errors: list[type[BaseException]] = []
    for module in ("httpx", "httpx2"):
        try:
            mod = __import__(module)
        except ImportError:
            continue
        errors += [getattr(mod, n) for n in ("RemoteProtocolError", "ReadError", "ReadTimeout") if hasattr(mod, n)]
    return tuple(errors)


_STREAM_CUT = _stream_cut_errors()


DEFAULT_OPENAI_MODEL = "gpt-4o-mini"


def role_model(settings: Settings, role: str) -> str | None:
    """The model the settings name for ``role`` ("answer" or "rewrite"); None: the backend's default."""
    return (settings.rewrite_model if role == "rewrite" else settings.answer_model) or settings.model


@chat_models.register("openai")
def _openai_chat_model(settings: Settings, role: str = "answer") -> OpenAIChatModel:
    model = role_model(settings, role) or DEFAULT_OPENAI_MODEL
    return OpenAIChatModel(model, settings.base_url, settings.request_timeout, settings.max_retries)


def make_chat_model(settings: Settings, role: str = "answer") -> ChatModel:
    """The chat model for ``role`` ("answer" or "rewrite") that the settings ask for.

    ``llm = "auto"`` means an OpenAI-compatible endpoint when ``base_url`` or ``OPENAI_API_KEY``
    is set, else the local model. With "auto" or "openai", a model only one backend can run
    (a ``.gguf`` file, a built-in local alias) goes to that backend.
    """
    return chat_models.create(chat_backend(settings, role), settings, role=role)


def chat_backend(settings: Settings, role: str = "answer") -> str:
    """The registered chat backend that runs ``role`` under these settings ("local", "openai", ...)."""
    backend = settings.llm
    if backend in ("auto", "openai"):
        backend = chat_models.claimant(role_model(settings, role)) or backend
    if backend == "auto":
        backend = "openai" if settings.base_url or openai_api.api_key() else "local"
    return backend
