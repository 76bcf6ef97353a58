"""Local chat models run in-process by llama.cpp (llama-cpp-python): one loaded copy per model file,
a RAM cache of evaluated prompt prefixes, LoRA adapters, streaming with usage."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ragbot.config import Settings
from ragbot.errors import ConfigError, ModelError
from ragbot.files import sha256_file
from ragbot.models.chat import ChatModel, Delta, GenerationSettings, Message, Usage, role_model
from ragbot.models.local_files import DEFAULT_MODEL, INSTALL_HINT, MODELS, resolve_model_path
from ragbot.models.prompt_states import ModelIdentity, PromptStates, model_fingerprint
from ragbot.registry import chat_models

log = logging.getLogger(__name__)


def is_local_model(name: str) -> bool:
    """Whether ``name`` can only run here: a built-in alias, or a ``.gguf`` file."""
    return name in MODELS or name.lower().endswith(".gguf")


class _LoadedModel:
    """One llama.cpp context, shared by every LlamaCppChatModel with the same (path, n_ctx, lora)."""

    def __init__(self, llama: Any, cache_bytes: int):
        self.llama = llama
        _EVERY_LLAMA.add(llama)
        _EVERY_LOADED.add(self)
        self.cache_bytes = cache_bytes
        self.lock = threading.Lock()  # one generation or warm-up at a time: they share the context
        self.owner: int | None = None
        self._waiting = 0  # generations waiting for the lock: a warm-up gives way to them
        self._waiting_lock = threading.Lock()
        self._new_cache()

    @contextlib.contextmanager
    def generating(self) -> Iterator[None]:
        """Hold the context for a generation; a warm-up that holds it stops at its next step."""
        with self._waiting_lock:
            self._waiting += 1
        try:
            self.lock.acquire()
        finally:
            with self._waiting_lock:
                self._waiting -= 1
        try:
            yield
        finally:
            self.lock.release()

    def wanted(self) -> bool:
        """Whether a generation waits for the context (or the process is exiting): a warm-up stops."""
        return self._waiting > 0 or _CLOSING.is_set()

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


_EVERY_LOADED: weakref.WeakSet = weakref.WeakSet()


_CLOSING = threading.Event()  # set at exit: warm-ups stop, so models are not freed under them


WARM_STEP = 64  # tokens a warm-up evaluates between checks for a waiting generation


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
    _CLOSING.set()
    for loaded in list(_EVERY_LOADED):  # a warm-up thread may be evaluating: let it stop first
        if loaded.lock.acquire(timeout=30):
            loaded.lock.release()
    for llama in list(_EVERY_LLAMA):
        with contextlib.suppress(Exception):
            llama.close()


class _QuietStderr:
    """Process file descriptor 2 to /dev/null while llama.cpp loads (its C code writes there);
    ``sys.stdout``/``sys.stderr`` are left alone. Nested and concurrent loads share one redirect."""

    _lock = threading.Lock()
    _depth = 0
    _saved: int | None = None

    def __init__(self, disable: bool = False):
        self.disable = disable

    def __enter__(self) -> _QuietStderr:
        if not self.disable:
            with _QuietStderr._lock:
                if _QuietStderr._depth == 0:
                    _QuietStderr._saved = os.dup(2)
                    with open(os.devnull, "wb") as null:
                        os.dup2(null.fileno(), 2)
                _QuietStderr._depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.disable:
            with _QuietStderr._lock:
                _QuietStderr._depth -= 1
                if _QuietStderr._depth == 0 and _QuietStderr._saved is not None:
                    os.dup2(_QuietStderr._saved, 2)
                    os.close(_QuietStderr._saved)
                    _QuietStderr._saved = None


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
        import llama_cpp._internals
        import llama_cpp.llama
        from llama_cpp import Llama

        # llama-cpp-python quiets a load by swapping sys.stdout/sys.stderr for /dev/null, in every
        # thread at once: a model loaded by the warm-up thread swallowed what the main thread printed
        # meanwhile (a notebook cell's whole output). Only llama.cpp's own stderr lines are quieted.
        llama_cpp.llama.suppress_stdout_stderr = _QuietStderr
        llama_cpp._internals.suppress_stdout_stderr = _QuietStderr

        class RagbotLlama(Llama):
            last_prompt_tokens = 0
            last_completion_tokens = 0
            last_evaluated_tokens = 0  # of the last prompt: the rest came from the live or a saved state
            _prompt_pending = False
            _capturing = False

            def create_completion(self, prompt, *args, **kwargs):  # type: ignore[override]
                tokens = self.tokenize(prompt.encode("utf-8"), special=True) if isinstance(prompt, str) else prompt
                if self._capturing:  # prompt_tokens(): the chat template applied, nothing evaluated
                    raise _Captured(list(tokens))
                self.last_prompt_tokens = len(tokens)
                self.last_completion_tokens = 0
                self.last_evaluated_tokens = 0
                self._prompt_pending = True
                return super().create_completion(prompt, *args, **kwargs)

            def eval(self, tokens):  # type: ignore[override]
                if self._prompt_pending:  # generate() evaluates the prompt's uncached tokens first
                    self._prompt_pending = False
                    self.last_evaluated_tokens = len(tokens)
                super().eval(tokens)

            def prompt_tokens(self, messages: list[dict]) -> list[int]:
                """The tokens ``create_chat_completion(messages)`` would evaluate (its chat template applied)."""
                self._capturing = True
                try:
                    self.create_chat_completion(messages=messages, max_tokens=1)
                except _Captured as captured:
                    return captured.tokens
                finally:
                    self._capturing = False
                raise ModelError("llama-cpp-python's chat handler did not go through create_completion")

            _partial: set[tuple[int, ...]] | None = None  # prefixes saved by a stopped prefill

            def prefill(
                self, tokens: list[int], stop: Callable[[], bool], step: int, states: PromptStates | None = None
            ) -> tuple[int, bool]:
                """Evaluate ``tokens`` as a prompt prefix and save its state in the RAM cache, where a
                later prompt that starts with them finds it; ``stop()`` is checked every ``step`` tokens.
                With ``states``, a state an earlier process saved there is loaded instead, and one
                evaluated here is saved there. Returns the tokens evaluated (0 when a saved state
                already covers them) and whether the prefix is complete: a stopped one keeps what
                it evaluated in the RAM cache, where the next prefill of it goes on."""
                if self.cache is None or self._is_recurrent or self._is_hybrid or not tokens:
                    return 0, True
                key = tuple(tokens)
                if self.has_saved(tokens):
                    return 0, True
                live = Llama.longest_token_prefix(self._input_ids.tolist(), tokens)
                if states is not None and live < len(tokens) and self._restore(states, tokens):
                    return 0, True
                live = Llama.longest_token_prefix(self._input_ids.tolist(), tokens)  # 0 after a failed restore
                with contextlib.suppress(KeyError):
                    saved = self.cache[tokens]
                    if Llama.longest_token_prefix(saved.input_ids.tolist(), tokens) > live:
                        self.load_state(saved)
                        live = Llama.longest_token_prefix(self._input_ids.tolist(), tokens)
                self.n_tokens = live  # eval() drops the live context beyond this point
                evaluated = 0
                if self._partial is None:
                    self._partial = set()
                partial = self._partial
                for start in range(live, len(tokens), step):
                    if stop():
                        if evaluated:  # kept where the next prefill of this prefix (or a turn) finds it
                            self._requires_eval = True
                            self.cache[tokens[:start]] = self.save_state()
                            partial.add(tuple(tokens[:start]))
                        return evaluated, False
                    self.eval(tokens[start : start + step])
                    evaluated += min(step, len(tokens) - start)
                self._requires_eval = True  # the last logits are not a sampling step's: refresh them
                self.cache[tokens] = self.save_state()
                for done in [p for p in partial if key[: len(p)] == p]:  # superseded by the whole prefix
                    partial.discard(done)
                    self.cache.cache_state.pop(done, None)
                if states is not None:
                    self._ctx.kv_cache_seq_rm(-1, len(tokens), -1)  # a longer live prompt's tail is not saved
                    states.save(self._ctx.ctx, tokens)
                return evaluated, True

            def has_saved(self, tokens: list[int]) -> bool:
                """Whether a state in the RAM cache covers ``tokens`` (a prompt that starts with them)."""
                key = tuple(tokens)
                return self.cache is not None and any(saved[: len(key)] == key for saved in self.cache.cache_state)

            def _restore(self, states: PromptStates, tokens: list[int]) -> bool:
                """Load the state of ``tokens`` an earlier process saved, if a sound one is there."""
                path = states.find(tokens)
                if path is None:
                    return False
                if not states.restore(self._ctx.ctx, path, tokens):
                    self.n_tokens = 0  # llama.cpp may have overwritten the live context in part
                    return False
                self.input_ids[: len(tokens)] = tokens
                self.n_tokens = len(tokens)
                self._requires_eval = True
                self.cache[tokens] = self.save_state()
                return True

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


def _llama_cpp_version() -> str:
    import llama_cpp

    return llama_cpp.__version__


class _Captured(Exception):  # noqa: N818 - a signal, not an error: carries the prompt's tokens
    def __init__(self, tokens: list[int]):
        super().__init__("prompt captured")
        self.tokens = tokens


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


def free_cores(samples: int = 5) -> int:
    """Cores not taken by other processes right now, at least 1: all of them minus the runnable
    tasks of other processes (``procs_running`` of ``/proc/stat`` less this process's running
    threads), the fewest of a few samples 2 ms apart (a thread that just finished spinning, ours or
    not, is not a competitor; a busy process is runnable in every sample).

    llama.cpp's threads wait for each other at every layer by spinning; when another process takes
    a core, the thread that lost it holds the others up, and all threads ran many times slower than
    one (``bench/threads_under_load.py``). On an idle machine more threads are faster."""
    cores = os.cpu_count() or 1
    fewest = cores
    for i in range(samples):
        try:
            with open("/proc/stat", encoding="ascii") as stat:
                running = next((int(line.split()[1]) for line in stat if line.startswith("procs_running")), 1)
        except (OSError, ValueError):
            return cores
        fewest = min(fewest, max(0, running - _own_running_threads()))
        if i + 1 < samples:
            time.sleep(0.002)
    return max(1, cores - fewest)


def _own_running_threads() -> int:
    """Threads of this process that are running or runnable (at least the caller)."""
    running = 0
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return 1
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/stat", encoding="ascii", errors="replace") as stat:
                running += stat.read().rsplit(")", 1)[1].split()[0] == "R"
        except (OSError, IndexError):
            continue
    return max(1, running)


class LlamaCppChatModel(ChatModel):
    """A GGUF chat model run in-process by llama-cpp-python (CPU).

    ``model`` is a built-in alias (see ``MODELS``) or the path of a ``.gguf`` file. The model
    loads on first use; chat models with the same file, ``n_ctx`` and ``lora_path`` share one
    loaded copy (the rewrite and answer roles need not load it twice); ``n_threads`` and
    ``cache_bytes`` apply when this instance is the one that loads it. ``cache_bytes`` caps the
    RAM prompt cache (0: none); one saved prompt of the 1.5B model takes ~28 KB per token.
    ``n_threads=None``: before each call, the cores other processes leave free (``free_cores``).
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
        self.name = (text if text in MODELS else Path(text).name) + (f"+{Path(lora_path).name}" if lora_path else "")
        self.n_ctx = n_ctx
        self.n_threads = n_threads  # None: chosen per call
        self.lora_path = str(Path(lora_path).expanduser().resolve()) if lora_path is not None else None
        self.seed = seed
        self.models_dir = models_dir
        self.cache_bytes = cache_bytes
        self._key: tuple[str, int, str | None] | None = None
        self._identity: ModelIdentity | None = None
        self._states_off = False  # set when its prompt states cannot be used

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
                n_threads=self.n_threads or os.cpu_count() or 1,
                n_threads_batch=self.n_threads or os.cpu_count() or 1,
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
        with loaded.generating():
            loaded.owner = me
            try:
                self._use_threads(loaded.llama)
                yield from self._generate(loaded.llama, messages, generation)
            finally:
                loaded.owner = None

    def _use_threads(self, llama: Any) -> None:
        """Set this call's thread count: ``n_threads``, or the cores free right now."""
        threads = self.n_threads or free_cores()
        if getattr(llama, "ragbot_threads", None) != threads:
            llama._ctx.set_n_threads(threads, threads)
            llama.ragbot_threads = threads

    warms_prefixes = True

    def warm(
        self, variants: Sequence[Sequence[Message]], stop: Callable[[], bool] | None = None, persist: bool = False
    ) -> int:
        """Evaluate the tokens the prompts ``variants`` share (the prompt up to its first filled-in
        value) and save that state, unless a saved state covers them already; a generation that
        asks for the model meanwhile waits at most ``WARM_STEP`` tokens, then the warm-up goes on
        where it stopped (``stop()`` true: it gives up instead). ``persist``: the state is also
        looked for in, and saved to, ``data_home()/prompt-states`` (``PromptStates``), for the next
        process. Returns the tokens evaluated."""
        loaded = self._loaded()

        def stopped() -> bool:
            return _CLOSING.is_set() or (stop is not None and stop())

        def wanted() -> bool:
            return loaded.wanted() or stopped()

        shared: list[int] | None = None
        evaluated = 0
        while not stopped():
            with loaded.lock:
                if not wanted():
                    llama = loaded.llama
                    if shared is None:
                        shared = _shared_tokens(llama, variants)
                    try:
                        self._use_threads(llama)
                        states = self._prompt_states() if persist else None
                        done, complete = llama.prefill(shared, wanted, WARM_STEP, states)
                    except RuntimeError as exc:  # a failed decode: the turn that needs it reports it
                        log.warning("warm-up of %s failed: %s", self.name, exc)
                        llama.reset()
                        return evaluated
                    evaluated += done
                    if complete:
                        return evaluated
            time.sleep(0.01)  # a generation wants the model: it takes the lock, this waits for it
        return evaluated

    def restore(self, variants: Sequence[Sequence[Message]]) -> bool:
        """Load the state of the prefix ``variants`` share if an earlier process saved it (``warm``
        with ``persist``); nothing is evaluated. Whether the prefix is ready now."""
        loaded = self._loaded()
        states = self._prompt_states()
        with loaded.lock:
            llama = loaded.llama
            shared = _shared_tokens(llama, variants)
            if llama.cache is None or not shared:
                return False
            if llama.has_saved(shared):
                return True
            return states is not None and llama._restore(states, shared)

    def _prompt_states(self) -> PromptStates | None:
        """This model's saved prompt states; None (warned once) if its files cannot be identified."""
        if self._states_off:
            return None
        try:
            if self._identity is None:
                spec = MODELS.get(self.model)
                path = self._key[0] if self._key else resolve_model_path(self.model, self.models_dir)
                self._identity = ModelIdentity(
                    model=f"sha256:{spec.sha256}" if spec is not None else model_fingerprint(path),
                    lora=sha256_file(self.lora_path) if self.lora_path else None,  # a few MB
                    n_ctx=self.n_ctx,
                    llama_cpp=_llama_cpp_version(),
                )
            return PromptStates(self._identity)
        except (OSError, ConfigError) as exc:
            log.warning("prompt states of %s are not saved or loaded: %s", self.name, exc)
            self._states_off = True
            return None

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
        seed = generation.seed if generation.seed is not None else self.seed
        if seed is not None:
            kwargs["seed"] = seed
        llama.last_prompt_tokens = llama.last_completion_tokens = 0
        chunks = None
        try:
            chunks = llama.create_chat_completion(**kwargs)
            so_far = ""
            for chunk in chunks:
                choices = chunk.get("choices") or [{}]
                text = (choices[0].get("delta") or {}).get("content")
                if text:
                    so_far += text
                    yield Delta(text=text)
                    if generation.reached(so_far):
                        break  # ``finally`` closes the generation; the usage below counts what was made
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
        cached = max(0, llama.last_prompt_tokens - llama.last_evaluated_tokens)
        yield Delta(usage=Usage(llama.last_prompt_tokens, llama.last_completion_tokens, 1, cached_tokens=cached))


def _shared_tokens(llama: Any, variants: Sequence[Sequence[Message]]) -> list[int]:
    """The prompt tokens all ``variants`` (one prompt filled in differently) start with."""
    rendered = [llama.prompt_tokens([m.to_dict() for m in v]) for v in variants]
    shared = rendered[0][: min(map(len, rendered))]
    for other in rendered[1:]:
        shared = shared[: llama.longest_token_prefix(shared, other)]
    return shared


@chat_models.register("local", claims=is_local_model)
def _local_chat_model(settings: Settings, role: str = "answer") -> LlamaCppChatModel:
    model = role_model(settings, role)
    if model is not None and not is_local_model(model):
        raise ModelError(
            f"model {model!r} is neither a local model ({', '.join(MODELS)}, or a .gguf file) nor "
            "reachable: set base_url (or OPENAI_API_KEY) to use it through an OpenAI-compatible endpoint"
        )
    return LlamaCppChatModel(
        model or DEFAULT_MODEL,
        n_ctx=settings.n_ctx,
        n_threads=settings.llm_threads or settings.num_threads,
        lora_path=settings.lora_path if role == "answer" else settings.rewrite_lora_path,
        models_dir=settings.models_dir,
    )
