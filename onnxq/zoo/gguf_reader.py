"""Read a LLaMA-family GGUF file: hyper-parameters from its metadata, tensors as float32.

Tensors come back in numpy row-major order with ggml's ``ne`` reversed, i.e. a linear weight
is [out_features, in_features] like a PyTorch ``nn.Linear.weight``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import ModelError

try:  # gguf is an optional dependency (the ``models`` extra)
    import gguf
    from gguf.quants import dequantize as _gguf_dequantize
except ImportError:  # pragma: no cover - exercised only without the extra
    gguf = None


def _require_gguf() -> None:
    if gguf is None:
        raise ModelError("reading GGUF files needs the 'gguf' package: pip install 'onnxq[models]'")


class GGUFCheckpoint:
    """A GGUF file opened read-only (memory-mapped): typed metadata access and float32 tensors."""

    def __init__(self, path: os.PathLike) -> None:
        _require_gguf()
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"GGUF file {self.path} does not exist")
        try:
            self._reader = gguf.GGUFReader(str(self.path), "r")
        except Exception as exc:  # the reader raises ValueError/struct errors on a bad file
            raise ModelError(f"{self.path} is not a readable GGUF file: {exc}") from exc
        self._tensors = {t.name: t for t in self._reader.tensors}

    # -- metadata --------------------------------------------------------------------
    def has(self, key: str) -> bool:
        return key in self._reader.fields

    def get(self, key: str, default: Any = None) -> Any:
        """A metadata value decoded to Python (str, int, float, bool or list); ``default`` if absent."""
        field = self._reader.fields.get(key)
        if field is None:
            return default
        return _decode_field(field, self.path)

    def require(self, key: str, kind: type) -> Any:
        """A metadata value that must exist and be of ``kind`` (int accepts any integer type)."""
        if not self.has(key):
            raise ModelError(f"{self.path}: GGUF metadata key {key!r} is missing")
        value = self.get(key)
        ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise ModelError(
                f"{self.path}: GGUF metadata key {key!r} should be {kind.__name__}, got {type(value).__name__}"
            )
        return value

    # -- tensors ---------------------------------------------------------------------
    def has_tensor(self, name: str) -> bool:
        return name in self._tensors

    def tensor_names(self) -> list[str]:
        return list(self._tensors)

    def tensor(self, name: str, shape: Optional[tuple[int, ...]] = None) -> np.ndarray:
        """Tensor ``name`` dequantized to float32, in numpy order; checked against ``shape`` if given."""
        t = self._tensors.get(name)
        if t is None:
            raise ModelError(f"{self.path}: tensor {name!r} is missing")
        expected = tuple(int(n) for n in reversed(t.shape))
        try:
            arr = _gguf_dequantize(t.data, t.tensor_type)
        except NotImplementedError as exc:
            raise ModelError(f"{self.path}: tensor {name!r} has type {t.tensor_type.name}, which gguf cannot dequantize") from exc
        arr = np.asarray(arr, dtype=np.float32).reshape(expected)
        if shape is not None and arr.shape != tuple(shape):
            raise ModelError(f"{self.path}: tensor {name!r} has shape {arr.shape}, expected {tuple(shape)}")
        return arr


def open_gguf(path: os.PathLike) -> GGUFCheckpoint:
    """A GGUFCheckpoint for ``path``, shared within the process while the file is unchanged.

    Opening parses every metadata field (SmolLM2's ~100k tokens and merges take seconds), and
    building both model variants plus the tokenizer would otherwise open the same file three times.
    """
    p = Path(path).resolve()
    if not p.is_file():
        raise ModelError(f"GGUF file {p} does not exist")
    st = p.stat()
    return _open_cached(str(p), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=2)
def _open_cached(path: str, size: int, mtime_ns: int) -> GGUFCheckpoint:
    return GGUFCheckpoint(path)


def _decode_field(field, path: Path) -> Any:
    """Decode a GGUFReader field from its raw parts (works across gguf versions)."""
    vtype = gguf.GGUFValueType
    types = list(field.types)
    if not types:
        return None

    def scalar(part, t):
        if t == vtype.STRING:
            try:
                return bytes(part).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ModelError(f"{path}: GGUF field {field.name!r} holds invalid UTF-8") from exc
        value = part.tolist()[0]
        return bool(value) if t == vtype.BOOL else value

    if types[0] == vtype.ARRAY:
        if len(types) > 2:
            raise ModelError(f"{path}: GGUF field {field.name!r} is a nested array, which is not supported")
        sub = types[-1]
        if sub == vtype.STRING:
            return [scalar(field.parts[i], sub) for i in field.data]
        values = [v for i in field.data for v in field.parts[i].tolist()]
        return [bool(v) for v in values] if sub == vtype.BOOL else values
    return scalar(field.parts[field.data[0]], types[0])


@dataclass(frozen=True)
class LlamaConfig:
    """Hyper-parameters of a LLaMA-family decoder, as read from ``<architecture>.*`` GGUF metadata."""

    n_layers: int
    hidden_size: int
    intermediate_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    rope_theta: float
    rms_norm_eps: float
    context_length: int
    vocab_size: int
    tied_embeddings: bool
    architecture: str = "llama"
    #: linear rope scaling: positions are divided by this factor
    rope_scale: float = 1.0
    #: llama.cpp's converter permuted the q/k rows for ggml's "normal" (adjacent-pair) rope
    qk_rows_permuted: bool = True

    @property
    def n_rep(self) -> int:
        """Query heads per key/value head (grouped-query attention)."""
        return self.n_heads // self.n_kv_heads


def read_llama_config(ckpt: GGUFCheckpoint) -> LlamaConfig:
    """Validate that the architecture is ``llama`` and read every hyper-parameter."""
    arch = ckpt.require("general.architecture", str)
    if arch != "llama":
        raise ModelError(f"{ckpt.path}: general.architecture is {arch!r}; only 'llama' is supported")
    return read_decoder_config(ckpt, "llama", qk_rows_permuted=True)


def _rope_scale(ckpt: GGUFCheckpoint, arch: str) -> float:
    """The linear rope-scaling factor (1.0 without scaling); other scaling types are refused."""
    scaling = ckpt.get(f"{arch}.rope.scaling.type", "none")
    if scaling in ("none", None):
        return 1.0
    if scaling != "linear":
        raise ModelError(f"{ckpt.path}: rope scaling {scaling!r} is not supported (supported: none, linear)")
    factor = ckpt.require(f"{arch}.rope.scaling.factor", float)
    if not factor > 0:
        raise ModelError(f"{ckpt.path}: {arch}.rope.scaling.factor is {factor}, expected a positive number")
    return float(factor)


def read_decoder_config(ckpt: GGUFCheckpoint, arch: str, *, qk_rows_permuted: bool) -> LlamaConfig:
    """Every hyper-parameter of a LLaMA-family decoder from the ``<arch>.*`` metadata keys.

    ``qk_rows_permuted``: whether llama.cpp's converter permutes this architecture's q/k rows
    (true for ``llama``, false for the "neox"-rope architectures such as ``qwen2``)."""
    n_layers = ckpt.require(f"{arch}.block_count", int)
    hidden = ckpt.require(f"{arch}.embedding_length", int)
    ffn = ckpt.require(f"{arch}.feed_forward_length", int)
    n_heads = ckpt.require(f"{arch}.attention.head_count", int)
    n_kv = ckpt.require(f"{arch}.attention.head_count_kv", int) if ckpt.has(f"{arch}.attention.head_count_kv") else n_heads
    rope_theta = ckpt.require(f"{arch}.rope.freq_base", float) if ckpt.has(f"{arch}.rope.freq_base") else 10000.0
    eps = ckpt.require(f"{arch}.attention.layer_norm_rms_epsilon", float)
    ctx = ckpt.require(f"{arch}.context_length", int)
    tokens = ckpt.get("tokenizer.ggml.tokens")
    vocab = ckpt.require(f"{arch}.vocab_size", int) if ckpt.has(f"{arch}.vocab_size") else len(tokens or [])
    for name, value in (("block_count", n_layers), ("embedding_length", hidden), ("feed_forward_length", ffn),
                        ("attention.head_count", n_heads), ("attention.head_count_kv", n_kv), ("vocab_size", vocab)):
        if value <= 0:
            raise ModelError(f"{ckpt.path}: {arch}.{name} is {value}, expected a positive integer")
    if hidden % n_heads:
        raise ModelError(f"{ckpt.path}: embedding_length {hidden} is not a multiple of head_count {n_heads}")
    if n_heads % n_kv:
        raise ModelError(f"{ckpt.path}: head_count {n_heads} is not a multiple of head_count_kv {n_kv}")
    head_dim = hidden // n_heads
    if head_dim % 2:
        raise ModelError(f"{ckpt.path}: head dimension {head_dim} is odd; rotary embeddings need it even")
    for key in (f"{arch}.attention.key_length", f"{arch}.attention.value_length"):
        if ckpt.get(key, head_dim) != head_dim:
            raise ModelError(f"{ckpt.path}: {key} {ckpt.get(key)} != embedding_length / head_count = {head_dim} "
                             "is not supported")
    rope_dim = ckpt.get(f"{arch}.rope.dimension_count", head_dim)
    if rope_dim != head_dim:
        raise ModelError(f"{ckpt.path}: partial rotary (rope.dimension_count {rope_dim} != head dim {head_dim}) is not supported")
    rope_scale = _rope_scale(ckpt, arch)
    if tokens is not None and len(tokens) != vocab:
        raise ModelError(f"{ckpt.path}: {len(tokens)} tokenizer tokens but {arch}.vocab_size is {vocab}")
    return LlamaConfig(
        n_layers=n_layers, hidden_size=hidden, intermediate_size=ffn, n_heads=n_heads, n_kv_heads=n_kv,
        head_dim=head_dim, rope_theta=float(rope_theta), rms_norm_eps=float(eps), context_length=ctx,
        vocab_size=vocab, tied_embeddings=not ckpt.has_tensor("output.weight"), architecture=arch,
        rope_scale=rope_scale, qk_rows_permuted=qk_rows_permuted,
    )


def unpermute_rotary_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo the row permutation llama.cpp's converter applies to q/k projection weights.

    The converter reorders each head's rows from HF's half-split layout (dims i and i + d/2
    rotate together, ``rotate_half``) to adjacent pairs (2i, 2i+1) for ggml's rotary kernel:
    ``w.reshape(heads, 2, d/2, in).swapaxes(1, 2)``. This applies the inverse, giving HF's layout.
    ``weight`` is [heads * head_dim, in_features].
    """
    rows, cols = weight.shape
    if rows % (2 * n_heads):
        raise ModelError(f"cannot un-permute a [{rows}, {cols}] q/k weight for {n_heads} heads")
    half = rows // n_heads // 2
    return np.ascontiguousarray(weight.reshape(n_heads, half, 2, cols).swapaxes(1, 2).reshape(rows, cols))
