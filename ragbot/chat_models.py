"""Chat models: one interface, three backends (OpenAI-compatible, local llama.cpp, scripted fake).

A backend implements ``_stream(messages, generation)``, yielding ``Delta``s: text as it is
generated and, last, the token ``Usage``. ``stream`` and ``complete`` are built on it and
turn backend failures into ``ModelError``s whose message says what to do.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from ragbot.errors import ModelError
from ragbot.tokens import count_tokens

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Message:
    role: Role
    content: str

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class GenerationSettings:
    """Sampling knobs passed to every backend."""

    temperature: float = 0.2
    top_p: float = 1.0
    max_tokens: int = 512
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    stop: tuple[str, ...] = ()


@dataclass
class Usage:
    """Tokens and calls spent; ``counted_locally`` when the backend did not report them."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0
    counted_locally: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.calls + other.calls,
            self.counted_locally or other.counted_locally,
        )

    def to_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "calls": self.calls,
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


class ChatModel:
    """Base class: set ``name`` and implement ``_stream``."""

    name: str = ""

    def _stream(self, messages: Sequence[Message], generation: GenerationSettings) -> Iterator[Delta]:
        raise NotImplementedError

    def stream(self, messages: Sequence[Message], generation: GenerationSettings | None = None) -> Iterator[Delta]:
        """Text deltas as they are generated, then one ``Delta`` carrying the usage."""
        generation = generation or GenerationSettings()
        text, usage = [], None
        for delta in self._stream(messages, generation):
            if delta.usage is not None:
                usage = delta.usage
            if delta.text:
                text.append(delta.text)
                yield Delta(text=delta.text)
        yield Delta(usage=usage or local_usage(messages, "".join(text)))

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
        from openai import OpenAI

        key = os.environ.get("OPENAI_API_KEY")
        if not key:
            if base_url is None:
                raise ModelError(
                    "no API key: set the OPENAI_API_KEY environment variable, or set base_url "
                    "to a local OpenAI-compatible server"
                )
            key = "not-needed"  # local servers (vLLM, Ollama, llama.cpp) accept any key
        self.name = model
        self.base_url = base_url or "https://api.openai.com/v1"
        self._client = OpenAI(api_key=key, base_url=base_url, timeout=timeout, max_retries=max_retries)

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
        where = f"{self.base_url} (model {self.name!r})"
        try:
            chunks = self._client.chat.completions.create(**kwargs)
        except openai.AuthenticationError:
            raise ModelError(f"{where} rejected the API key; check OPENAI_API_KEY") from None
        except openai.NotFoundError:
            raise ModelError(f"{where}: no such model; check the model name with the provider") from None
        except openai.RateLimitError:
            raise ModelError(f"{where} is rate limiting us and retries ran out; try again later") from None
        except openai.APITimeoutError:
            raise ModelError(f"{where} did not answer in time; raise request_timeout or try later") from None
        except openai.APIConnectionError:
            raise ModelError(f"cannot reach {where}; check base_url and that the server is running") from None
        except openai.APIStatusError as exc:
            raise ModelError(f"{where} failed with HTTP {exc.status_code}: {_short(exc.message)}") from None
        # The server answered; from here on a failure cuts an answer that had started.
        finished = False
        try:
            for chunk in chunks:
                if chunk.choices and chunk.choices[0].finish_reason:
                    finished = True
                if chunk.choices and chunk.choices[0].delta and chunk.choices[0].delta.content:
                    yield Delta(text=chunk.choices[0].delta.content)
                if getattr(chunk, "usage", None):
                    yield Delta(usage=Usage(chunk.usage.prompt_tokens or 0, chunk.usage.completion_tokens or 0, 1))
        except openai.APITimeoutError:
            raise ModelError(f"{where} stopped sending mid-answer and timed out; try again") from None
        except (openai.APIConnectionError, *_STREAM_CUT) as exc:
            cause = type(exc.__cause__ or exc).__name__
            raise ModelError(f"{where}: the connection was cut mid-answer ({cause}); try again") from None
        except openai.APIError as exc:  # an error event inside the stream
            raise ModelError(f"{where} failed mid-answer: {_short(str(exc))}") from None
        if not finished:
            raise ModelError(f"{where}: the answer stream ended mid-answer, before the model finished; try again")


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


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


LOCAL_ALIASES = ("qwen2.5-1.5b", "qwen2.5-0.5b", "smollm2-135m")
DEFAULT_LOCAL_MODEL = "qwen2.5-1.5b"
DEFAULT_OPENAI_MODEL = "gpt-4o-mini"


def _is_local(spec: str | None) -> bool:
    return spec is not None and (spec in LOCAL_ALIASES or spec.lower().endswith(".gguf"))


def make_chat_model(settings, role: str = "answer") -> ChatModel:
    """The chat model for ``role`` ("answer" or "rewrite") that the settings ask for."""
    spec = (settings.rewrite_model if role == "rewrite" else settings.answer_model) or settings.model
    backend = settings.llm
    if backend == "fake":
        from ragbot.fakes import EchoChatModel

        return EchoChatModel()
    if backend == "auto":
        if _is_local(spec):
            backend = "local"
        else:
            backend = "openai" if (settings.base_url or os.environ.get("OPENAI_API_KEY")) else "local"
    elif _is_local(spec):
        backend = "local"
    if backend == "openai":
        return OpenAIChatModel(
            spec or DEFAULT_OPENAI_MODEL, settings.base_url, settings.request_timeout, settings.max_retries
        )
    from ragbot.local_models import LlamaCppChatModel

    if spec is not None and not _is_local(spec):
        raise ModelError(
            f"model {spec!r} is neither a local model ({', '.join(LOCAL_ALIASES)}, or a .gguf file) nor "
            "reachable: set base_url (or OPENAI_API_KEY) to use it through an OpenAI-compatible endpoint"
        )
    return LlamaCppChatModel(
        spec or DEFAULT_LOCAL_MODEL,
        n_ctx=settings.n_ctx,
        n_threads=settings.num_threads,
        lora_path=str(settings.lora_path) if settings.lora_path and role == "answer" else None,
        models_dir=settings.models_dir,
    )
