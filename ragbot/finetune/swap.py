"""Swap a fine-tuned model in: point the answer or rewrite role at it in the config file.

The chat, ``ask``, the Python API and ``eval`` all build their models from the settings'
``answer_model`` / ``rewrite_model`` (and ``lora_path`` / ``rewrite_lora_path`` for a local model), so writing
those keys is the whole swap. The file is edited with tomlkit, keeping the user's other keys
and comments, checked as settings before it replaces the old one, and written atomically.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ragbot.config import CONFIG_FILE_NAME, Settings, load_settings
from ragbot.errors import ConfigError, FinetuneError
from ragbot.models import rewriter
from ragbot.models.local import is_local_model
from ragbot.models.local_files import DEFAULT_MODEL, MODELS

ROLE_KEYS = {"answer": "answer_model", "rewrite": "rewrite_model"}
LORA_KEYS = {"answer": "lora_path", "rewrite": "rewrite_lora_path"}
# an adapter for the rewrite role is a trained rewriter (``ragbot finetune rewrite-data``): it reads the short prompt
# A trained rewriter's prompt and history budget: those of the bundled one (ragbot/models/rewriter.py)
TRAINED_REWRITE_PROMPT = rewriter.PROMPT
TRAINED_REWRITE_HISTORY_TOKENS = rewriter.HISTORY_TOKENS


@dataclass
class ModelChange:
    """What ``use_model`` wrote: the keys set (or removed) in which config file, and notes for the user."""

    config_file: Path
    role: str
    model: str | None  # None: the role is back on the base model
    lora_path: str | None = None
    removed: list[str] = field(default_factory=list)
    job_id: str | None = None
    warnings: list[str] = field(default_factory=list)

    def describe(self) -> str:
        if self.model is None and self.lora_path is None:
            what = ", ".join(self.removed) if self.removed else "nothing to remove"
            return f"The {self.role} role is back on the base model ({what} removed from {self.config_file})."
        lines = []
        if self.model is not None:
            source = f" (from job {self.job_id})" if self.job_id else ""
            lines.append(f"The {self.role} role now uses {self.model}{source}; written to {self.config_file}.")
        if self.lora_path is not None:
            prompt = (
                f", with the {TRAINED_REWRITE_PROMPT} prompt and a {TRAINED_REWRITE_HISTORY_TOKENS}-token history"
                if self.role == "rewrite"
                else ""
            )
            lines.append(
                f"LoRA adapter {self.lora_path} applies to the local {self.role} model{prompt}; "
                f"written to {self.config_file}."
            )
        return "\n".join(lines)


def use_model(
    job_or_model: str | None,
    role: str = "answer",
    config_file: str | Path | None = None,
    lora: str | Path | None = None,
    unset: bool = False,
    jobs=None,
) -> ModelChange:
    """Set ``role``'s model in the config file (``./ragbot.toml`` by default, created if absent).

    ``job_or_model``: a fine-tuning job id (its fine-tuned model; the job must have succeeded), a
    model name, a built-in local alias or the path of a ``.gguf`` file. ``lora``: a GGUF LoRA
    adapter for the role's local model; for the rewrite role it is a trained rewriter, so its
    short prompt (``rewrite_prompt = "rewrite_trained"``) and its history budget are set too.
    ``unset``: remove the role's model, adapter (and prompt, budget) so the base model works again.
    """
    if role not in ROLE_KEYS:
        raise FinetuneError(f"unknown role {role!r}; choose answer or rewrite")
    path = Path(config_file) if config_file is not None else Path.cwd() / CONFIG_FILE_NAME
    key = ROLE_KEYS[role]
    if unset:
        if job_or_model or lora:
            raise FinetuneError("--unset takes no model or --lora: it goes back to the base model")
        drop = [key, LORA_KEYS[role]] + (["rewrite_prompt", "rewrite_history_tokens"] if role == "rewrite" else [])
        removed = _edit_config(path, set_values={}, remove=drop)
        return ModelChange(path, role, None, removed=removed)
    if job_or_model is None and lora is None:
        raise FinetuneError("give a job id, a model name or a .gguf file (or --lora FILE.gguf, or --unset)")

    change = ModelChange(path, role, None)
    values: dict[str, str | int] = {}
    if job_or_model is not None:
        change.model, change.job_id = _resolve(job_or_model, jobs)
        values[key] = change.model
    if lora is not None:
        adapter = _existing_gguf(lora, "LoRA adapter")
        _check_adapter(adapter, base=change.model, role=role, config_file=path)
        change.lora_path = str(adapter)
        values[LORA_KEYS[role]] = change.lora_path
        if role == "rewrite":
            values["rewrite_prompt"] = TRAINED_REWRITE_PROMPT
            values["rewrite_history_tokens"] = TRAINED_REWRITE_HISTORY_TOKENS
    _edit_config(path, set_values=values, remove=[])
    change.warnings = _warnings(change, jobs)
    return change


def _resolve(job_or_model: str, jobs) -> tuple[str, str | None]:
    """(model spec to write, job id it came from)."""
    text = job_or_model.strip()
    if not text:
        raise FinetuneError("the model name is empty")
    if text.lower().endswith(".gguf") or Path(text).expanduser().is_file():
        return str(_existing_gguf(text, "model file")), None
    if text in MODELS:
        return text, None
    if jobs is None:
        from ragbot.finetune.jobs import FineTuningJobs

        jobs = FineTuningJobs.from_settings(load_settings())
    if jobs.is_job_id(text):
        return jobs.fine_tuned_model(text), text
    return text, None


def _existing_gguf(path: str | Path, what: str) -> Path:
    """The absolute path of an existing GGUF file (checked by its magic bytes, as llama.cpp would).

    Symlinks are kept, not resolved: the name the user gave is the model name ragbot reports.
    """
    resolved = Path(os.path.abspath(Path(path).expanduser()))
    if not resolved.is_file():
        raise FinetuneError(f"{what} {path} does not exist; give the path of a .gguf file")
    try:
        with open(resolved, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise FinetuneError(f"cannot read {what} {resolved}: {exc.strerror or exc}") from None
    if magic != b"GGUF":
        raise FinetuneError(f"{what} {resolved} is not a GGUF file; llama.cpp needs .gguf (convert it first)")
    return resolved


def _check_adapter(adapter: Path, base: str | None, role: str, config_file: Path) -> None:
    """Refuse a GGUF that is not a LoRA adapter, or one made for another architecture than the
    role's local model: llama-cpp-python 0.3.36 does not notice when llama.cpp rejects an
    adapter, and the process crashes at the first generation instead of reporting it."""
    meta = gguf_metadata(adapter, ("general.type", "adapter.type", "general.architecture"))
    if meta.get("general.type") != "adapter" or meta.get("adapter.type") != "lora":
        kind = meta.get("general.type") or "not marked as an adapter"
        raise FinetuneError(
            f"{adapter} is not a GGUF LoRA adapter (general.type: {kind}); convert the adapter with "
            "llama.cpp's convert_lora_to_gguf.py, or give a whole fine-tuned model as the model instead"
        )
    if base is None:
        try:
            settings = load_settings(config_file) if config_file.exists() else Settings()
        except ConfigError:
            return
        base = settings.rewrite_model if role == "rewrite" else settings.answer_model
        base = base or settings.model or DEFAULT_MODEL
    base_arch = MODELS[base].architecture if base in MODELS else None
    if base_arch is None and base.lower().endswith(".gguf") and Path(base).expanduser().is_file():
        base_arch = gguf_metadata(Path(base).expanduser(), ("general.architecture",)).get("general.architecture")
    adapter_arch = meta.get("general.architecture")
    if base_arch and adapter_arch and adapter_arch != base_arch:
        raise FinetuneError(
            f"LoRA adapter {adapter} is for {adapter_arch} models, but the local {role} model {base} is "
            f"{base_arch}; an adapter only fits the model it was trained on"
        )


_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def gguf_metadata(path: Path, keys: tuple[str, ...]) -> dict[str, object]:
    """The string or number values of ``keys`` in a GGUF file's header (read until all are found)."""
    import struct

    def read(fmt: str):
        return struct.unpack(fmt, fh.read(struct.calcsize(fmt)))[0]

    def read_string() -> str:
        return fh.read(read("<Q")).decode("utf-8", errors="replace")

    def read_value(kind: int):
        if kind == 8:
            return read_string()
        if kind == 9:  # array: skipped (vocabularies can hold 150k strings)
            item_kind, count = read("<I"), read("<Q")
            for _ in range(count):
                read_value(item_kind)
            return None
        if kind not in _GGUF_SCALARS:
            raise ValueError(f"unknown GGUF value type {kind}")
        return read(_GGUF_SCALARS[kind])

    found: dict[str, object] = {}
    try:
        with open(path, "rb") as fh:
            if fh.read(4) != b"GGUF":
                raise ValueError("no GGUF magic")
            read("<I")  # version
            read("<Q")  # tensor count
            for _ in range(read("<Q")):  # key-value count
                key = read_string()
                value = read_value(read("<I"))
                if key in keys:
                    found[key] = value
                    if len(found) == len(keys):
                        break
    except (OSError, ValueError, struct.error) as exc:
        raise FinetuneError(f"cannot read the GGUF header of {path}: {exc}") from None
    return found


def _edit_config(path: Path, set_values: dict[str, str | int], remove: list[str]) -> list[str]:
    """Set and remove top-level keys, keeping everything else; returns the keys removed."""
    import tomlkit
    from tomlkit.exceptions import TOMLKitError

    try:
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        document = tomlkit.parse(text)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    except TOMLKitError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}; fix it first") from None
    removed = [k for k in remove if k in document]
    for name in removed:
        del document[name]
    for name, value in set_values.items():
        document[name] = value
    _write_checked(path, tomlkit.dumps(document))
    return removed


def _write_checked(path: Path, text: str) -> None:
    """Write ``text`` beside ``path``, load it as settings (so a bad file never lands), then rename."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise ConfigError(f"cannot write config file {path}: {exc.strerror or exc}") from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        load_settings(tmp, environ={})
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        else:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(f"cannot write config file {path}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)


def _warnings(change: ModelChange, jobs) -> list[str]:
    """Settings that would keep the new model from being used as expected."""
    notes = []
    try:
        settings = load_settings(change.config_file)
    except ConfigError:
        return notes
    remote = change.model is not None and not is_local_model(change.model)
    if remote and settings.llm == "local":
        notes.append(f"llm = 'local' in the settings, but {change.model} is served by an endpoint; set llm = 'auto'")
    if change.job_id and jobs is not None:
        record = jobs.records.get(change.job_id)
        current = (settings.base_url or "https://api.openai.com/v1").rstrip("/")
        if record and record.endpoint and record.endpoint != current:
            notes.append(
                f"job {change.job_id} was trained at {record.endpoint} but base_url is {current}; "
                f'set base_url = "{record.endpoint}" to reach the model'
            )
    if change.model and any(f":{legacy}:" in change.model for legacy in ("babbage-002", "davinci-002")):
        notes.append(
            f"{change.model} is a completions model (legacy prompt/completion format); ragbot's chat calls the "
            "chat completions API, which such a model does not serve on OpenAI"
        )
    if change.lora_path and settings.answer_model and not is_local_model(settings.answer_model):
        notes.append(
            f"the LoRA adapter applies to local models only; the answer model {settings.answer_model} is remote"
        )
    return notes


__all__ = ["ModelChange", "use_model"]
