"""``ragbot finetune train``: LoRA fine-tuning of a local GGUF model on this machine, written back as
a GGUF LoRA adapter that llama.cpp applies to the same base file.

The base model is a built-in alias or a ``.gguf`` file; transformers loads its weights dequantized
to float32 and its tokenizer and chat template from the same file, peft adds LoRA matrices to the
chosen projections, and torch trains them on the CPU (no GPU path yet). Examples are
the chat SFT records ``ragbot finetune prepare`` writes, rendered with the model's own chat
template; the loss is taken on the assistant tokens only (messages with ``"weight": 0`` are context).

A run is resumable: every ``checkpoint_every`` steps the adapter weights, the optimizer state, the
step and the torch RNG state go into one safetensors file, written to a temporary name and renamed,
so a kill loses at most one interval and ``resume=True`` goes on from the last checkpoint (the data
order is a function of the seed and the step, so nothing else is needed). The adapter and its JSON
record are written the same way: a half-written adapter never has the adapter's name.

The GGUF adapter follows llama.cpp's ``convert_lora_to_gguf.py``: ``general.type = adapter``,
``adapter.type = lora``, ``adapter.lora.alpha``; per projection ``blk.N.attn_q.weight.lora_a``
(peft's ``lora_A``, (rank, in) in torch order) and ``.lora_b`` (``lora_B``, (out, rank)). For
``llama`` models the rows of ``lora_b`` of the query and key projections are permuted the way the
converter permutes those weights for llama.cpp's rotary layout (transformers undoes it on load).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import mmap
import os
import random
import resource
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ragbot.errors import FinetuneError, TrainingFileError
from ragbot.files import sha256_file

INSTALL_HINT = "pip install 'ragbot[train]'"
SUPPORTED_ARCHITECTURES = ("llama", "qwen2")
# peft module name -> the GGUF tensor of each block it adapts
TARGETS = {
    "q": ("q_proj", "attn_q"),
    "k": ("k_proj", "attn_k"),
    "v": ("v_proj", "attn_v"),
    "o": ("o_proj", "attn_output"),
    "gate": ("gate_proj", "ffn_gate"),
    "up": ("up_proj", "ffn_up"),
    "down": ("down_proj", "ffn_down"),
}
CHECKPOINT_NAME = "checkpoint.safetensors"
CHECKPOINT_FORMAT = 1
GIB = 1 << 30
MIB = 1 << 20


# --------------------------------------------------------------------------- settings and results
@dataclass(frozen=True)
class TrainSettings:
    """How to train. ``steps`` (optimizer steps) wins over ``epochs``; ``minutes`` stops a run early
    (with a checkpoint, so ``--resume`` goes on). One step sees ``batch_size * grad_accum`` examples."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    lr: float = 2e-4
    warmup_steps: int = 0
    epochs: float = 1.0
    steps: int | None = None
    minutes: float | None = None
    batch_size: int = 1
    grad_accum: int = 1
    seed: int = 0
    threads: int | None = None
    max_length: int = 1024
    targets: tuple[str, ...] = ("q", "k", "v", "o")
    checkpoint_every: int = 50
    valid_share: float = 0.1

    def check(self) -> None:
        problems = []
        for name in ("rank", "batch_size", "grad_accum", "checkpoint_every", "max_length"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1 (got {getattr(self, name)})")
        if self.max_length < 16:
            problems.append(f"max_length must be at least 16 tokens (got {self.max_length})")
        if self.steps is not None and self.steps < 1:
            problems.append(f"steps must be at least 1 (got {self.steps})")
        if self.epochs <= 0:
            problems.append(f"epochs must be positive (got {self.epochs})")
        if self.minutes is not None and self.minutes <= 0:
            problems.append(f"minutes must be positive (got {self.minutes})")
        if not self.lr > 0 or self.alpha <= 0:
            problems.append("lr and alpha must be positive")
        if not 0 <= self.dropout < 1 or not 0 <= self.valid_share < 1:
            problems.append("dropout and valid_share must be in [0, 1)")
        if self.threads is not None and self.threads < 1:
            problems.append(f"threads must be at least 1 (got {self.threads})")
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown or not self.targets:
            problems.append(f"targets must be some of {', '.join(TARGETS)} (got {', '.join(self.targets) or 'none'})")
        if problems:
            raise FinetuneError("; ".join(problems))

    # What a resumed run must share with the checkpoint (the budget may change: --steps, --minutes).
    RUN_DEFINING = (
        "rank",
        "alpha",
        "dropout",
        "lr",
        "warmup_steps",
        "batch_size",
        "grad_accum",
        "seed",
        "max_length",
        "targets",
        "valid_share",
    )


@dataclass
class BaseModelInfo:
    """What the GGUF header says about a base model, read without loading its weights."""

    name: str  # the alias or the path as given
    path: Path
    architecture: str
    parameters: int
    layers: int
    hidden: int
    ffn: int
    vocab: int
    heads: int
    kv_heads: int
    tensor_shapes: dict[str, tuple[int, ...]]  # GGUF order: (ne0 = in, ne1 = out)
    file_type: int | None = None
    sha256: str | None = None


@dataclass
class TrainResult:
    """What ``train`` did: the adapter, the record beside it, and the figures."""

    adapter: Path
    record_path: Path
    record: dict[str, Any]
    finished: bool  # False: stopped by the time budget (the checkpoint is kept for --resume)

    def summary(self) -> str:
        r = self.record
        losses = r["losses"]
        trained = f"loss {losses[0][1]:.3f} (step {losses[0][0]}) -> {losses[-1][1]:.3f}" if losses else "no step run"
        held = r["valid_losses"]
        held_text = f", held-out loss {held[0][1]:.3f} -> {held[-1][1]:.3f}" if len(held) >= 2 else ""
        state = (
            "finished"
            if self.finished
            else f"stopped by the time budget at step {r['steps']} of {r['total_steps']} (--resume goes on)"
        )
        return (
            f"Wrote {self.adapter} ({r['adapter']['bytes'] / MIB:.1f} MiB, {r['adapter']['tensors']} tensors) for "
            f"{r['base_model']['name']}: {state}; {r['steps']} steps, {trained}{held_text}; "
            f"{r['examples_per_second']:.2f} examples/s, peak RSS {r['peak_rss_bytes'] / GIB:.2f} GiB; "
            f"record in {self.record_path}"
        )


# --------------------------------------------------------------------------- the base model
def _gguf():
    try:
        import gguf
    except ImportError:
        raise FinetuneError(f"training needs the gguf package, which is not installed: {INSTALL_HINT}") from None
    return gguf


_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def read_gguf_header(path: Path) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    """(scalar and string metadata, tensor name -> dims in GGUF order) of a GGUF file, without its
    arrays (vocabularies) or weights: a fraction of a second where gguf's reader takes seconds."""
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        pos = 0

        def take(fmt: str) -> Any:
            nonlocal pos
            (value,) = struct.unpack_from(fmt, buf, pos)
            pos += struct.calcsize(fmt)
            return value

        def string() -> str:
            nonlocal pos
            size = take("<Q")
            pos += size
            return bytes(buf[pos - size : pos]).decode("utf-8", errors="replace")

        def skip_array() -> None:
            nonlocal pos
            kind, count = take("<I"), take("<Q")
            if kind in _GGUF_SCALARS:
                pos += count * struct.calcsize(_GGUF_SCALARS[kind])
            elif kind == 8:
                for _ in range(count):
                    pos += 8 + struct.unpack_from("<Q", buf, pos)[0]
            else:
                for _ in range(count):
                    skip_array()

        if bytes(buf[:4]) != b"GGUF":
            raise ValueError("no GGUF magic")
        pos = 4
        version, n_tensors, n_kv = take("<I"), take("<Q"), take("<Q")
        if version < 2:
            raise ValueError(f"GGUF version {version} is too old")
        kv: dict[str, Any] = {}
        for _ in range(n_kv):
            key, kind = string(), take("<I")
            if kind == 8:
                kv[key] = string()
            elif kind == 9:
                skip_array()
            elif kind in _GGUF_SCALARS:
                kv[key] = take(_GGUF_SCALARS[kind])
            else:
                raise ValueError(f"unknown GGUF value type {kind} for {key}")
        tensors: dict[str, tuple[int, ...]] = {}
        for _ in range(n_tensors):
            name = string()
            dims = tuple(take("<Q") for _ in range(take("<I")))
            take("<I")  # type
            take("<Q")  # offset
            tensors[name] = dims
    return kv, tensors


def resolve_base(base: str | os.PathLike[str], models_dir: str | Path | None = None) -> BaseModelInfo:
    """The base model's file and header facts; one-line errors for a file that is not GGUF, an
    adapter given as the base, or an architecture the trainer cannot write adapters for."""
    from ragbot.errors import ModelError
    from ragbot.models.local_files import MODELS, resolve_model_path

    text = os.fspath(base)
    try:
        path = resolve_model_path(text, models_dir)
    except ModelError as exc:
        raise FinetuneError(f"base model: {exc}") from None
    try:
        kv, tensors = read_gguf_header(path)
    except (OSError, ValueError, struct.error) as exc:
        raise FinetuneError(f"base model {path} cannot be read as GGUF ({exc}); is the file complete?") from None
    value = kv.get
    kind = value("general.type", "model")
    if kind != "model":
        raise FinetuneError(f"base model {path} is a GGUF {kind}, not a model; give the model the adapter is for")
    arch = value("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise FinetuneError(
            f"base model {path} is a {arch or 'unknown'} model; ragbot finetune train writes adapters for "
            f"{' and '.join(SUPPORTED_ARCHITECTURES)} models only"
        )
    parameters = sum(math.prod(dims) for dims in tensors.values())
    heads = int(value(f"{arch}.attention.head_count", 0))
    info = BaseModelInfo(
        name=text,
        path=path,
        architecture=arch,
        parameters=parameters,
        layers=int(value(f"{arch}.block_count", 0)),
        hidden=int(value(f"{arch}.embedding_length", 0)),
        ffn=int(value(f"{arch}.feed_forward_length", 0)),
        vocab=int(tensors.get("token_embd.weight", (0, 0))[-1]),
        heads=heads,
        kv_heads=int(value(f"{arch}.attention.head_count_kv", heads)),
        tensor_shapes=tensors,
        file_type=value("general.file_type"),
        sha256=MODELS[text].sha256 if text in MODELS else None,
    )
    if not (info.layers and info.hidden and info.heads and info.vocab):
        raise FinetuneError(f"base model {path} lacks {arch}.block_count / embedding_length / head_count in its header")
    return info


# --------------------------------------------------------------------------- data
def read_chat_file(path: str | Path) -> list[dict[str, Any]]:
    """The chat examples of an SFT JSONL file, refused with the file, line and fix when any row is
    bad (ragbot's validator: broken JSON, roles out of order, no assistant message, empty content)."""
    from ragbot.finetune.validate import CHAT, validate_file

    path = Path(path).expanduser()
    report = validate_file(path, min_examples=1)
    if report.format != CHAT:
        raise TrainingFileError(
            f"{path} is in the {report.format} format; ragbot finetune train needs chat examples "
            '({"messages": [...]}, as ragbot finetune prepare writes in sft.train.jsonl)'
        )
    if report.problems:
        first = report.problems[0]
        where = f"{path}, line {first.line}" if first.line else str(path)
        more = f" (and {len(report.problems) - 1} more problem(s))" if len(report.problems) > 1 else ""
        fixable = sum(p.fixable for p in report.problems)
        fix = (
            f"ragbot finetune validate {path} --fix repairs {fixable} of them"
            if fixable
            else f"fix the line; ragbot finetune validate {path} lists every problem"
        )
        raise TrainingFileError(f"{where}: {first.message} [{first.rule}]{more}; {fix}. Nothing was trained")
    examples = []
    for text in path.read_text(encoding="utf-8-sig").split("\n"):
        if text.strip():
            examples.append(json.loads(text))
    return examples


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]  # -100 where no loss is taken

    @property
    def trained_tokens(self) -> int:
        return sum(1 for t in self.labels if t != -100)


def encode_chat(tokenizer: Any, messages: Sequence[dict[str, Any]]) -> Encoded:
    """Token ids of ``messages`` rendered with the model's chat template, labelled on the tokens of
    each trained assistant message (its text and the end-of-turn marker the template adds)."""
    chat = [{"role": m["role"], "content": m["content"]} for m in messages]

    def render(upto: int, prompt: bool) -> str:
        return tokenizer.apply_chat_template(chat[:upto], tokenize=False, add_generation_prompt=prompt)

    full = render(len(chat), False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or m.get("weight", 1) == 0:
            continue
        before, through = render(i, True), render(i + 1, False)
        if not (full.startswith(through) and through.startswith(before)):
            raise FinetuneError(
                "the model's chat template does not render a conversation as the sum of its turns; "
                "the assistant tokens cannot be told apart for the loss"
            )
        spans.append((len(before), len(through)))
    encoding = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoding["input_ids"])
    labels = [-100] * len(ids)
    for n, (start, _end) in enumerate(encoding["offset_mapping"]):
        if any(a <= start < b for a, b in spans):
            labels[n] = ids[n]
    return Encoded(ids, labels)


def split_valid(n: int, share: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, held-out) indices: a fixed share drawn with the seed; none held out below 2 examples."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    k = 0 if share <= 0 or n < 2 else min(n - 1, max(1, round(share * n)))
    return sorted(order[k:]), sorted(order[:k])


# --------------------------------------------------------------------------- memory and disk
def available_memory() -> int | None:
    """Bytes this process may still use: MemAvailable, or less if a cgroup limit says so."""
    found = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found = int(line.split()[1]) * 1024
    with contextlib.suppress(OSError, ValueError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            left = int(limit) - used
            found = left if found is None else min(found, left)
    return found


def lora_parameters(info: BaseModelInfo, settings: TrainSettings) -> int:
    total = 0
    for target in settings.targets:
        gguf_name = TARGETS[target][1]
        for block in range(info.layers):
            shape = info.tensor_shapes.get(f"blk.{block}.{gguf_name}.weight")
            if shape:
                total += settings.rank * (shape[0] + shape[1])
    return total


def estimate_memory(info: BaseModelInfo, settings: TrainSettings, longest: int) -> dict[str, int]:
    """A rough upper estimate of the run's peak memory, in bytes, by part.

    weights: every parameter in float32 (dequantized), plus one float32 copy of the largest tensor
    while loading. activations, for a batch of ``batch_size`` examples padded to ``longest`` tokens:
    per token, 3 x (per layer 2 floats per model width and 1 per FFN width, and the float32 logits,
    softmax and gradient of half the tokens), the 3 for what the allocator keeps over many steps of
    changing shapes; and per layer and head the attention scores, 2 floats per pair of tokens.
    runtime: torch, transformers and the tokenizer. Against peaks measured on 2 cores: SmolLM2-135M,
    1 step of 2 x 64, 2 x 512, 2 x 1024 tokens: 1.25, 2.3, 4.9 GiB (estimate 1.5, 4.1, 9.1); 20 steps
    of the shipped question set (longest 331 tokens): 2.49 GiB (2.9); Qwen2.5-0.5B, 6 steps (longest
    142): 3.98 GiB (4.9).
    """
    weights = 4 * info.parameters + 4 * max((math.prod(s) for s in info.tensor_shapes.values()), default=0)
    tokens = settings.batch_size * min(longest, settings.max_length)
    per_token = 3 * (4 * info.layers * (2 * info.hidden + info.ffn) + 12 * info.vocab // 2)
    attention = 8 * info.layers * info.heads * tokens * min(longest, settings.max_length)
    lora = 4 * 4 * lora_parameters(info, settings)  # weights, grads, two Adam moments
    return {"weights": weights, "activations": tokens * per_token + attention, "lora": lora, "runtime": 700 * MIB}


def check_resources(info: BaseModelInfo, settings: TrainSettings, longest: int, out: Path, ckpt_dir: Path) -> dict:
    """Refuse, before loading anything, a run that will not fit in memory or on disk."""
    parts = estimate_memory(info, settings, longest)
    need = sum(parts.values())
    free = available_memory()
    if free is not None and need > free:
        raise FinetuneError(
            f"not enough memory: this run needs about {need / GIB:.1f} GiB ({info.parameters / 1e6:,.0f}M parameters "
            f"of {info.name} in float32: {parts['weights'] / GIB:.1f} GiB; activations for {settings.batch_size} x "
            f"{min(longest, settings.max_length)} tokens: {parts['activations'] / GIB:.1f} GiB), and "
            f"{free / GIB:.1f} GiB are available; use a smaller model, --batch-size or --max-length"
        )
    adapter_bytes = 4 * lora_parameters(info, settings) + MIB
    disk_need = adapter_bytes * 2 + 3 * adapter_bytes * 2  # adapter (+ its temp) and checkpoint (+ its temp)
    for where in {out.parent, ckpt_dir.parent}:
        disk_free = shutil.disk_usage(where).free
        if disk_need > disk_free:
            raise FinetuneError(
                f"not enough disk space in {where}: the adapter and its checkpoints need about "
                f"{disk_need / MIB:,.0f} MiB and {disk_free / MIB:,.0f} MiB are free"
            )
    return {"estimated_peak_bytes": need, "estimate_parts": parts, "available_bytes": free}


def peak_rss() -> int:
    """This process's peak resident set size in bytes (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


# --------------------------------------------------------------------------- loading
def _import_training_stack():
    try:
        import peft  # noqa: F401
        import safetensors  # noqa: F401
        import torch
        import transformers
    except ImportError as exc:
        raise FinetuneError(f"training needs {exc.name}, which is not installed: {INSTALL_HINT}") from None
    return torch, transformers


def _offline_transformers():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything comes from the GGUF file: never a hub
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    torch, transformers = _import_training_stack()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # ragbot shows its own bar for the training
    return torch, transformers


def load_base_tokenizer(info: BaseModelInfo) -> Any:
    """The tokenizer and chat template the GGUF file carries."""
    _, transformers = _offline_transformers()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(info.path.parent), gguf_file=info.path.name)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise FinetuneError(f"transformers cannot read the tokenizer of {info.path} ({exc})") from None
    if not getattr(tokenizer, "chat_template", None):
        raise FinetuneError(f"{info.path} carries no chat template (tokenizer.chat_template); a chat model is needed")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_weights(info: BaseModelInfo) -> Any:
    """The model from the GGUF file, its weights dequantized to float32."""
    torch, transformers = _offline_transformers()
    try:
        return transformers.AutoModelForCausalLM.from_pretrained(
            str(info.path.parent), gguf_file=info.path.name, dtype=torch.float32
        )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise FinetuneError(f"transformers cannot load the weights of {info.path} ({exc})") from None


def add_lora(model: Any, settings: TrainSettings) -> Any:
    import peft
    import torch

    torch.manual_seed(settings.seed)
    config = peft.LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=[TARGETS[t][0] for t in settings.targets],
        bias="none",
        task_type="CAUSAL_LM",
    )
    return peft.get_peft_model(model, config)


# --------------------------------------------------------------------------- the GGUF adapter
def _llama_permute(rows: Any, heads: int) -> Any:
    """Reorder the output rows of a query/key projection from the Hugging Face rotary layout (two
    halves per head) to llama.cpp's (pairs interleaved), as convert_hf_to_gguf does to the weights."""
    out = rows.shape[0]
    return rows.reshape(heads, 2, out // heads // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def lora_tensors(model: Any, info: BaseModelInfo, settings: TrainSettings) -> dict[str, Any]:
    """GGUF tensor name -> float32 numpy array of every LoRA matrix, checked against the base's shapes."""
    import numpy as np

    gguf_of = {hf: g for hf, g in TARGETS.values()}
    found: dict[str, Any] = {}
    for name, param in model.named_parameters():
        if ".lora_A." not in name and ".lora_B." not in name:
            continue
        parts = name.split(".")
        block = int(parts[parts.index("layers") + 1])
        module = next(p for p in parts if p in gguf_of)
        base = f"blk.{block}.{gguf_of[module]}.weight"
        array = param.detach().to("cpu").float().numpy().astype(np.float32)
        if ".lora_A." in name:
            found[f"{base}.lora_a"] = np.ascontiguousarray(array)  # (rank, in): GGUF ne = [in, rank]
            continue
        if info.architecture == "llama" and module in ("q_proj", "k_proj"):
            array = _llama_permute(array, info.heads if module == "q_proj" else info.kv_heads)
        found[f"{base}.lora_b"] = np.ascontiguousarray(array)  # (out, rank): GGUF ne = [rank, out]
    for key, array in found.items():
        base = key.rsplit(".", 1)[0]
        shape = info.tensor_shapes.get(base)
        fits = shape and (array.shape[1] == shape[0] if key.endswith("lora_a") else array.shape[0] == shape[1])
        if not fits:
            raise FinetuneError(f"LoRA tensor {key} {array.shape} does not fit {base} {shape} of {info.path}")
    if not found:
        raise FinetuneError(f"no LoRA tensors to write for targets {', '.join(settings.targets)}")
    return found


def _atomic_target(path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(fd)
    return Path(tmp)


def _fsync_and_replace(tmp: Path, path: Path) -> None:
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    with contextlib.suppress(OSError):  # the rename itself, on file systems that allow it
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_adapter(path: Path, tensors: dict[str, Any], info: BaseModelInfo, alpha: float) -> int:
    """Write the GGUF LoRA adapter atomically; returns its size in bytes."""
    gguf = _gguf()
    tmp = _atomic_target(path)
    try:
        writer = gguf.GGUFWriter(str(tmp), arch=info.architecture)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
        writer.add_string("general.name", f"ragbot LoRA for {Path(info.name).name}")
        if info.sha256:
            writer.add_string("ragbot.base_model.sha256", info.sha256)
        for name in sorted(tensors, key=_tensor_order):
            writer.add_tensor(name, tensors[name])
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        _fsync_and_replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path.stat().st_size


def _tensor_order(name: str) -> tuple[int, str]:
    return (int(name.split(".")[1]), name)


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = _atomic_target(path)
    try:
        tmp.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        _fsync_and_replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- checkpoints
@dataclass
class RunState:
    """What a checkpoint keeps besides tensors: where the run is and what it has measured."""

    step: int = 0
    losses: list[list[float]] = field(default_factory=list)  # [step, mean token loss of the step]
    valid_losses: list[list[float]] = field(default_factory=list)  # [step, held-out loss]
    train_seconds: float = 0.0  # time in training steps, over every run of this training
    examples_seen: int = 0
    tokens_seen: int = 0
    runs: list[dict[str, Any]] = field(default_factory=list)  # one per invocation: start step, end step, seconds


def save_checkpoint(path: Path, model: Any, optimizer: Any, state: RunState, identity: dict[str, Any]) -> None:
    """Adapter weights, optimizer moments, torch RNG state and the run state, in one safetensors file
    renamed into place (tensors and JSON only: nothing pickled)."""
    import torch
    from safetensors.torch import save_file

    tensors: dict[str, Any] = {}
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    for name, param in trainable:
        tensors[f"param::{name}"] = param.detach().to("cpu").contiguous()
    opt_state = optimizer.state_dict()["state"]
    for index, slots in opt_state.items():
        for key, value in slots.items():
            value = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"opt::{index}::{key}"] = value.detach().to("cpu").contiguous()
    tensors["rng::torch"] = torch.get_rng_state()
    meta = {"format": CHECKPOINT_FORMAT, "identity": identity, "state": asdict(state)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _atomic_target(path)
    try:
        save_file(tensors, str(tmp), metadata={"ragbot": json.dumps(meta)})
        _fsync_and_replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_checkpoint_meta(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {})["ragbot"])
    except Exception as exc:
        raise FinetuneError(f"checkpoint {path} cannot be read ({exc}); delete it to start over") from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise FinetuneError(f"checkpoint {path} was written by another version of ragbot; delete it to start over")
    return meta


def load_checkpoint(path: Path, model: Any, optimizer: Any) -> RunState:
    import torch
    from safetensors.torch import load_file

    meta = read_checkpoint_meta(path)
    tensors = load_file(str(path))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in tensors.items():
            if key.startswith("param::"):
                name = key.removeprefix("param::")
                if name not in params:
                    raise FinetuneError(f"checkpoint {path} holds {name}, which this model does not have")
                params[name].copy_(value)
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("opt::"):
            _, index, slot = key.split("::")
            state.setdefault(int(index), {})[slot] = value
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})
    torch.set_rng_state(tensors["rng::torch"])
    return RunState(**meta["state"])


# --------------------------------------------------------------------------- training
def _batches_for_step(step: int, per_step: int, batch_size: int, n: int, seed: int) -> list[list[int]]:
    """The example indices of each micro-batch of ``step``: a fixed shuffle per epoch from the seed,
    so the data order is the same after a resume."""
    positions = range(step * per_step, (step + 1) * per_step)
    cache: dict[int, list[int]] = {}

    def order(epoch: int) -> list[int]:
        if epoch not in cache:
            indices = list(range(n))
            random.Random(f"{seed}:{epoch}").shuffle(indices)
            cache[epoch] = indices
        return cache[epoch]

    chosen = [order(p // n)[p % n] for p in positions]
    return [chosen[i : i + batch_size] for i in range(0, len(chosen), batch_size)]


def _collate(examples: Sequence[Encoded], pad_id: int):
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        ids[row, : len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[row, : len(e.labels)] = torch.tensor(e.labels)
        mask[row, : len(e.input_ids)] = 1
    return ids, labels, mask


def _loss_sum(model: Any, ids: Any, labels: Any, mask: Any) -> tuple[Any, int]:
    """Summed cross-entropy over the labelled next tokens, computing the vocabulary logits only at
    those positions (the full logits of a 150k vocabulary would dominate memory)."""
    import torch.nn.functional as F

    causal = model.get_base_model()
    hidden = causal.model(input_ids=ids, attention_mask=mask).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != -100
    logits = causal.lm_head(hidden[:, :-1][keep])
    return F.cross_entropy(logits.float(), targets[keep], reduction="sum"), int(keep.sum())


def evaluate(model: Any, examples: Sequence[Encoded], batch_size: int, pad_id: int) -> float | None:
    """Mean token loss on the held-out examples (no dropout, no gradients)."""
    import torch

    if not examples:
        return None
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            loss, n = _loss_sum(model, *_collate(examples[i : i + batch_size], pad_id))
            total, count = total + float(loss), count + n
    model.train(was_training)
    return total / max(1, count)


def train(
    data: str | Path,
    base: str | os.PathLike[str],
    out: str | Path,
    settings: TrainSettings | None = None,
    *,
    valid: str | Path | None = None,
    resume: bool = False,
    checkpoint_dir: str | Path | None = None,
    keep_checkpoints: bool = False,
    models_dir: str | Path | None = None,
    progress: bool = False,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train a LoRA adapter for ``base`` on the chat examples in ``data``; write it to ``out`` (a
    ``.gguf`` file) with its JSON record beside it (``adapter.gguf.json``). ``valid``: held-out examples (else
    ``settings.valid_share`` of ``data``). ``on_step(step, loss)`` is called after each step."""
    settings = settings or TrainSettings()
    settings.check()
    started = time.monotonic()
    out = Path(out).expanduser()
    if out.suffix.lower() != ".gguf":
        raise FinetuneError(f"the adapter is a GGUF file: give --out a name ending in .gguf (got {out})")
    if out.exists() and out.is_dir():
        raise FinetuneError(f"{out} is a directory; give the path of the adapter file to write")
    out.parent.mkdir(parents=True, exist_ok=True)
    ckpt_dir = Path(checkpoint_dir).expanduser() if checkpoint_dir else out.with_name(out.name + ".checkpoints")
    ckpt_path = ckpt_dir / CHECKPOINT_NAME
    data = Path(data).expanduser()

    # 1. everything that can be checked without loading the model
    records = read_chat_file(data)
    valid_records: list[dict[str, Any]] = []
    if valid is not None:
        valid = Path(valid).expanduser()
        valid_records = read_chat_file(valid)
        train_records = records
    else:
        train_ids, valid_ids = split_valid(len(records), settings.valid_share, settings.seed)
        train_records, valid_records = [records[i] for i in train_ids], [records[i] for i in valid_ids]
    info = resolve_base(base, models_dir)
    identity = {
        "base_sha256": None,  # filled below (hashing a big file is left until the cheap checks pass)
        "data_sha256": sha256_file(data),
        "valid_sha256": sha256_file(valid) if valid is not None else None,
        "settings": {k: _jsonable(getattr(settings, k)) for k in TrainSettings.RUN_DEFINING},
    }
    if ckpt_path.exists() and not resume:
        step = read_checkpoint_meta(ckpt_path)["state"]["step"]
        raise FinetuneError(
            f"a checkpoint of an earlier run (step {step}) is in {ckpt_dir}; add --resume to continue it, "
            "or delete that folder to start over"
        )
    if resume and not ckpt_path.exists():
        raise FinetuneError(f"--resume: there is no checkpoint in {ckpt_dir}; run without --resume to start")
    check_resources(info, settings, 0, out, ckpt_dir)  # the weights alone; the examples once tokenized
    if info.sha256 is None:
        info.sha256 = sha256_file(info.path)
    identity["base_sha256"] = info.sha256
    if resume:
        _check_same_run(read_checkpoint_meta(ckpt_path)["identity"], identity, ckpt_dir)

    # 2. load, encode, add LoRA
    torch, _ = _import_training_stack()
    threads_before = torch.get_num_threads()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    plan = _Plan(data, valid, out, settings, info, identity, {}, ckpt_dir, ckpt_path, resume, keep_checkpoints,
                 train_records, valid_records, started)  # fmt: skip
    try:
        return _run(plan, progress, on_step)
    finally:
        torch.set_num_threads(threads_before)


@dataclass
class _Plan:
    """A run that passed every check made before loading the model."""

    data: Path
    valid: Path | None
    out: Path
    settings: TrainSettings
    info: BaseModelInfo
    identity: dict[str, Any]
    resources: dict[str, Any]
    ckpt_dir: Path
    ckpt_path: Path
    resume: bool
    keep_checkpoints: bool
    train_records: list[dict[str, Any]]
    valid_records: list[dict[str, Any]]
    started: float


def _run(plan: _Plan, progress: bool, on_step: Callable[[int, float], None] | None) -> TrainResult:
    import torch

    data, valid, out, settings, info = plan.data, plan.valid, plan.out, plan.settings, plan.info
    identity, ckpt_dir, ckpt_path, resume = plan.identity, plan.ckpt_dir, plan.ckpt_path, plan.resume
    train_records, valid_records, started = plan.train_records, plan.valid_records, plan.started
    load_start = time.monotonic()
    tokenizer = load_base_tokenizer(info)
    train_set, dropped = _encode_all(tokenizer, train_records, settings.max_length, data)
    valid_set, valid_dropped = _encode_all(tokenizer, valid_records, settings.max_length, valid or data)
    if not train_set:
        raise TrainingFileError(
            f"{data}: every example is longer than {settings.max_length} tokens or has no trained assistant "
            "tokens; raise --max-length"
        )
    longest = max(len(e.input_ids) for e in train_set + valid_set)
    plan.resources = check_resources(info, settings, longest, out, ckpt_dir)
    model = load_base_weights(info)
    load_seconds = time.monotonic() - load_start
    model = add_lora(model, settings)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=0.0)
    per_step = settings.batch_size * settings.grad_accum
    total_steps = settings.steps or max(1, math.ceil(settings.epochs * len(train_set) / per_step))
    state = load_checkpoint(ckpt_path, model, optimizer) if resume else RunState()
    resumed_from = state.step if resume else None
    pad_id = tokenizer.pad_token_id

    # 3. train
    def checkpoint() -> None:
        if valid_set:
            state.valid_losses.append([state.step, evaluate(model, valid_set, settings.batch_size, pad_id)])
        save_checkpoint(ckpt_path, model, optimizer, state, identity)

    if not resume and valid_set:
        state.valid_losses.append([0, evaluate(model, valid_set, settings.batch_size, pad_id)])
    run = {"from_step": state.step, "threads": torch.get_num_threads(), "seconds": 0.0, "examples": 0}
    state.runs.append(run)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total_steps, initial=state.step, desc="training", unit="step", file=sys.stderr)
    budget = settings.minutes * 60 if settings.minutes else None
    train_start = time.monotonic()
    last_saved = state.step
    updating = False
    try:
        while state.step < total_steps:
            if budget is not None and time.monotonic() - train_start >= budget:
                break
            t0 = time.monotonic()
            lr = (
                settings.lr * min(1.0, (state.step + 1) / settings.warmup_steps)
                if settings.warmup_steps
                else settings.lr
            )
            for group in optimizer.param_groups:
                group["lr"] = lr
            micro = _batches_for_step(state.step, per_step, settings.batch_size, len(train_set), settings.seed)
            step_tokens = sum(train_set[i].trained_tokens for batch in micro for i in batch)
            total = 0.0
            optimizer.zero_grad(set_to_none=True)
            for batch in micro:
                loss, _ = _loss_sum(model, *_collate([train_set[i] for i in batch], pad_id))
                (loss / step_tokens).backward()
                total += float(loss.detach())
            updating = True  # a Ctrl-C inside the update would leave the weights half-stepped
            optimizer.step()
            state.step += 1
            updating = False
            mean = total / step_tokens
            state.losses.append([state.step, round(mean, 5)])
            seconds = time.monotonic() - t0
            state.train_seconds += seconds
            state.examples_seen += per_step
            state.tokens_seen += sum(len(train_set[i].input_ids) for batch in micro for i in batch)
            run["seconds"] += seconds
            run["examples"] += per_step
            run["to_step"] = state.step
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"loss {mean:.4f}, {run['examples'] / max(run['seconds'], 1e-9):.2f} examples/s")
            if on_step is not None:
                on_step(state.step, mean)
            if state.step % settings.checkpoint_every == 0 and state.step < total_steps:
                checkpoint()
                last_saved = state.step
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        if state.step > last_saved and not updating:
            save_checkpoint(ckpt_path, model, optimizer, state, identity)
            last_saved = state.step
        if not last_saved:
            raise FinetuneError(f"stopped at step {state.step} of {total_steps}, before any checkpoint") from None
        raise FinetuneError(
            f"stopped at step {state.step} of {total_steps}; the checkpoint in {ckpt_dir} keeps step {last_saved}: "
            "run the same command with --resume to go on"
        ) from None
    finally:
        if bar is not None:
            bar.close()
    if valid_set and (not state.valid_losses or state.valid_losses[-1][0] != state.step):
        state.valid_losses.append([state.step, evaluate(model, valid_set, settings.batch_size, pad_id)])
    finished = state.step >= total_steps
    if not finished or plan.keep_checkpoints:  # kept: a larger --steps with --resume goes on from here
        save_checkpoint(ckpt_path, model, optimizer, state, identity)

    # 4. the adapter and its record
    tensors = lora_tensors(model, info, settings)
    size = write_adapter(out, tensors, info, settings.alpha)
    record = {
        "adapter": {"path": str(out.resolve()), "sha256": sha256_file(out), "bytes": size, "tensors": len(tensors)},
        "base_model": {
            "name": info.name,
            "path": str(info.path.resolve()),
            "sha256": info.sha256,
            "architecture": info.architecture,
            "parameters": info.parameters,
        },
        "data": {
            "train": str(data.resolve()),
            "train_sha256": identity["data_sha256"],
            "valid": str(valid.resolve()) if valid is not None else f"{settings.valid_share:g} of the training file",
            "valid_sha256": identity["valid_sha256"],
            "train_examples": len(train_set),
            "valid_examples": len(valid_set),
            "dropped_longer_than_max_length": dropped + valid_dropped,
        },
        "settings": {f.name: _jsonable(getattr(settings, f.name)) for f in fields(settings)},
        "lora_parameters": sum(p.numel() for p in trainable),
        "steps": state.step,
        "total_steps": total_steps,
        "finished": finished,
        "stopped": "done" if finished else "time budget",
        "epochs_done": round(state.examples_seen / len(train_set), 3),
        "resumed_from_step": resumed_from,
        "losses": state.losses,
        "valid_losses": state.valid_losses,
        "train_seconds": round(state.train_seconds, 2),
        "load_seconds": round(load_seconds, 2),
        "wall_seconds": round(time.monotonic() - started, 2),
        "examples_per_second": round(state.examples_seen / max(state.train_seconds, 1e-9), 4),
        "tokens_per_second": round(state.tokens_seen / max(state.train_seconds, 1e-9), 1),
        "runs": state.runs,
        "peak_rss_bytes": peak_rss(),
        "memory": plan.resources,
        "threads": torch.get_num_threads(),
        "versions": _versions(),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    record_path = out.with_name(out.name + ".json")
    _write_json_atomic(record_path, record)
    if finished and not plan.keep_checkpoints:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return TrainResult(out, record_path, record, finished)


def _encode_all(tokenizer: Any, records: Sequence[dict[str, Any]], max_length: int, source: Path) -> tuple[list, int]:
    encoded, dropped = [], 0
    for record in records:
        e = encode_chat(tokenizer, record["messages"])
        if len(e.input_ids) > max_length or not e.trained_tokens:
            dropped += 1
            continue
        encoded.append(e)
    return encoded, dropped


def _check_same_run(saved: dict[str, Any], current: dict[str, Any], ckpt_dir: Path) -> None:
    differs = []
    for key in ("base_sha256", "data_sha256", "valid_sha256"):
        if saved.get(key) != current.get(key):
            differs.append(key.replace("_sha256", " file"))
    for key, value in current["settings"].items():
        if saved["settings"].get(key) != value:
            differs.append(f"{key} ({saved['settings'].get(key)} then, {value} now)")
    if differs:
        raise FinetuneError(
            f"--resume: the checkpoint in {ckpt_dir} is of another run: {', '.join(differs)} differ; use the "
            "same base, data and settings (the step and time budget may change), or delete the folder to start over"
        )


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("torch", "transformers", "peft", "gguf", "safetensors"):
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found
