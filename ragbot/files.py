"""Facts about files every layer asks: their content's sha256 (model files, sources, training data)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: str | Path) -> str:
    """The hex sha256 of the file's bytes, read in blocks (a model file is a gigabyte)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
