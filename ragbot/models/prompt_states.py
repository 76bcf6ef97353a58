"""Prompt states kept on disk, so a new process (``ragbot chat``, each ``serve`` worker) restores the
static prompt prefixes an earlier one evaluated instead of evaluating them again (~850 tokens for the
chain-of-thought rewrite prompt: tens of seconds on 2 cores).

An entry is llama.cpp's own state file (``llama_state_save_file``) and a JSON header beside it, both
named by a digest of the key: the model, the LoRA adapter, ``n_ctx``, the prompt's tokens and the
llama-cpp-python version. A state is loaded only when its header holds the expected key and the file
its sha256, and llama.cpp returns the expected tokens; anything else is deleted with one warning and
the prompt is evaluated (and saved) again. Files are written under temporary names and renamed, so no
process reads half of one. The directory is a cache: the least recently used entries go first when
it is over its size cap. Nothing is pickled.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import hashlib
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragbot.config import data_home
from ragbot.files import sha256_file

log = logging.getLogger(__name__)


FORMAT = 1  # of the header; another value is a stale entry, rebuilt


DEFAULT_MAX_BYTES = 512 << 20  # the 1.5B model's state takes ~28 KB per token: a few dozen prompts


_STALE_TEMP_SECONDS = 3600  # a temporary file this old was left by a process that died writing it


_STATE_FILE = re.compile(r"[0-9a-f]{32}\.[0-9a-f]{16}\.state")


_UNUSABLE: set[str] = set()  # directories already warned about: once per process each


_UNUSABLE_LOCK = threading.Lock()


def model_fingerprint(path: str | os.PathLike[str]) -> str:
    """A model file's identity without reading its gigabyte: resolved path, size and mtime."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    return f"file:{resolved}:{stat.st_size}:{stat.st_mtime_ns}"


@dataclass(frozen=True)
class ModelIdentity:
    """What a context's state depends on besides its prompt."""

    model: str  # "sha256:..." of a built-in model, else ``model_fingerprint``
    lora: str | None  # sha256 of the LoRA adapter
    n_ctx: int
    llama_cpp: str  # llama-cpp-python's version: its llama.cpp may lay states out differently


_FIELD_NAMES = {
    "model": "model",
    "lora": "LoRA adapter",
    "n_ctx": "context size",
    "tokens": "prompt",
    "llama_cpp": "llama-cpp-python version",
}


class PromptStates:
    """One model's saved prompt states in ``directory`` (default ``data_home()/prompt-states``),
    which every model shares within ``max_bytes``."""

    def __init__(self, identity: ModelIdentity, directory: str | Path | None = None, max_bytes: int | None = None):
        max_bytes = DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be at least 0; got max_bytes={max_bytes}")
        self.identity = identity
        self.directory = Path(directory) if directory is not None else data_home() / "prompt-states"
        self.max_bytes = max_bytes

    def key(self, tokens: Sequence[int]) -> dict[str, Any]:
        ids = ",".join(map(str, tokens)).encode("ascii")
        return {**dataclasses.asdict(self.identity), "tokens": hashlib.sha256(ids).hexdigest()}

    def header_path(self, tokens: Sequence[int]) -> Path:
        return self.directory / f"{_digest(self.key(tokens))}.json"

    def find(self, tokens: Sequence[int]) -> Path | None:
        """The verified state file saved for ``tokens``, or None. A stale or damaged entry is deleted."""
        key = self.key(tokens)
        header_path = self.directory / f"{_digest(key)}.json"
        try:
            raw = header_path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._unusable(f"cannot read {header_path}: {exc.strerror or exc}")
            return None
        state_path, problem = self._check(raw, key, len(tokens), header_path.stem)
        if problem is not None:
            self._discard(header_path, state_path, problem)
            return None
        with contextlib.suppress(OSError):
            os.utime(header_path)  # recently used: kept longest when over the cap
        return state_path

    def restore(self, ctx: Any, state_path: Path, tokens: Sequence[int]) -> bool:
        """Load ``state_path`` (from ``find``) into the llama.cpp context ``ctx``. False: not loaded,
        and the context's memory may have been overwritten in part (the caller evaluates from 0)."""
        import llama_cpp

        capacity = max(len(tokens), 1) + 1  # a file holding more tokens than the prompt fails to load
        out = (llama_cpp.llama_token * capacity)()
        count = ctypes.c_size_t(0)
        if not llama_cpp.llama_state_load_file(ctx, os.fsencode(state_path), out, capacity, ctypes.byref(count)):
            problem = "llama.cpp could not load it"
        elif list(out[: count.value]) != list(tokens):
            problem = "its tokens are not the prompt's"
        else:
            return True
        self._discard(self.header_path(tokens), state_path, problem)
        return False

    def save(self, ctx: Any, tokens: Sequence[int]) -> None:
        """Save the state of ``ctx``, which holds exactly ``tokens``, unless an entry exists. A directory
        that cannot be written is warned about once per process; the chat goes on without saving."""
        import llama_cpp

        key = self.key(tokens)
        digest = _digest(key)
        header_path = self.directory / f"{digest}.json"
        try:
            if header_path.exists():
                return
            self.directory.mkdir(parents=True, exist_ok=True)
            temp = self._new_temp(".state")
            try:
                ids = (llama_cpp.llama_token * len(tokens))(*tokens)
                if not llama_cpp.llama_state_save_file(ctx, os.fsencode(temp), ids, len(tokens)):
                    raise OSError(f"llama.cpp could not write {temp} (is the disk full?)")
                sha256 = sha256_file(temp)
                state_path = self.directory / f"{digest}.{sha256[:16]}.state"
                os.replace(temp, state_path)  # the same name holds the same bytes: replacing is harmless
            except BaseException:
                with contextlib.suppress(OSError):
                    temp.unlink()
                raise
            header = {
                "format": FORMAT,
                "key": key,
                "n_tokens": len(tokens),
                "state_file": state_path.name,
                "sha256": sha256,
                "created": time.time(),
            }
            temp = self._new_temp(".json")
            try:
                temp.write_text(json.dumps(header, indent=1), encoding="utf-8")
                os.replace(temp, header_path)
            except BaseException:
                with contextlib.suppress(OSError):
                    temp.unlink()
                raise
        except OSError as exc:
            self._unusable(f"cannot write to {self.directory}: {exc.strerror or exc}")
            return
        self._evict()

    def _check(self, raw: bytes, key: dict[str, Any], n_tokens: int, digest: str) -> tuple[Path | None, str | None]:
        """The state file a header names and what is wrong with the entry (None: nothing)."""
        try:
            header = json.loads(raw)
            saved_key, state_file = header["key"], header["state_file"]
            fields = (header["format"], header["n_tokens"], header["sha256"])
        except (ValueError, KeyError, TypeError):
            return None, "its header is damaged"
        if not isinstance(state_file, str) or not _STATE_FILE.fullmatch(state_file) or state_file[:32] != digest:
            return None, "its header is damaged"  # and names no file of this entry: none is deleted
        state_path = self.directory / state_file
        if fields[0] != FORMAT:
            return state_path, f"it is in format {fields[0]}, not {FORMAT}"
        if saved_key != key:
            differs = [name for name in key if not isinstance(saved_key, dict) or saved_key.get(name) != key[name]]
            what = _FIELD_NAMES.get(differs[0], differs[0]) if differs else "version of ragbot"
            return state_path, f"it was saved for another {what}"
        if fields[1] != n_tokens:
            return state_path, "it was saved for another prompt"
        try:
            actual = sha256_file(state_path)
        except FileNotFoundError:
            return state_path, "its state file is missing"
        except OSError as exc:
            return state_path, f"its state file cannot be read ({exc.strerror or exc})"
        if actual != fields[2]:
            return state_path, "its state file is damaged (sha256 mismatch)"
        return state_path, None

    def _discard(self, header_path: Path, state_path: Path | None, problem: str) -> None:
        log.warning("saved prompt state %s not used: %s; deleted, the prompt is evaluated again", header_path, problem)
        for path in (header_path, state_path):
            if path is not None:
                with contextlib.suppress(OSError):
                    path.unlink()

    def _new_temp(self, suffix: str) -> Path:
        path = self.directory / f".tmp-{os.getpid()}-{secrets.token_hex(6)}{suffix}"
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        return path

    def _unusable(self, reason: str) -> None:
        with _UNUSABLE_LOCK:
            if str(self.directory) in _UNUSABLE:
                return
            _UNUSABLE.add(str(self.directory))
        log.warning(
            "prompt states not used: %s; the chat goes on, each new process evaluates its prompts again", reason
        )

    def _evict(self) -> None:
        """Delete the least recently used entries until the directory fits ``max_bytes``, and
        temporary files that a process died writing."""
        entries: dict[str, list[tuple[Path, os.stat_result]]] = {}
        now = time.time()
        try:
            listing = list(os.scandir(self.directory))
        except OSError:
            return
        for item in listing:
            try:
                stat = item.stat(follow_symlinks=False)
            except OSError:
                continue
            if item.name.startswith(".tmp-"):
                if now - stat.st_mtime > _STALE_TEMP_SECONDS:
                    with contextlib.suppress(OSError):
                        os.unlink(item.path)
                continue
            entries.setdefault(item.name.split(".")[0], []).append((Path(item.path), stat))
        total = sum(stat.st_size for files in entries.values() for _, stat in files)

        def last_used(files: list[tuple[Path, os.stat_result]]) -> float:
            headers = [stat.st_mtime for path, stat in files if path.suffix == ".json"]
            return max(headers or [stat.st_mtime for _, stat in files])

        for files in sorted(entries.values(), key=last_used):
            if total <= self.max_bytes:
                break
            for path, stat in files:
                with contextlib.suppress(OSError):
                    path.unlink()
                total -= stat.st_size


def _digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:32]
