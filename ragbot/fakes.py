"""Deterministic stand-ins for the real models, for fast tests and examples.

They ship with the library (not only in ``tests/``) so users can test their own code
against ragbot without loading a model.
"""

from __future__ import annotations

import hashlib

import numpy as np

from ragbot.embedders import Embedder, Kind


class HashEmbedder(Embedder):
    """Bag of character bigrams hashed into 256 dimensions: texts sharing words (or Chinese
    characters) score higher. Instant, deterministic, and good enough to tell topics apart."""

    name = "hash:char-bigrams-256"
    version = "1"
    dim = 256
    default_threshold = 0.3

    def _embed(self, texts: list[str], kind: Kind) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            text = text.lower()
            for gram in (text[i : i + 2] for i in range(max(len(text) - 1, 1))):
                if gram.strip():
                    h = int.from_bytes(hashlib.blake2b(gram.encode(), digest_size=4).digest(), "little")
                    out[row, h % self.dim] += 1.0
        return out
