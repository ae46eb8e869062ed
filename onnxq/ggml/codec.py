"""Quantize float weights into byte-exact ggml blocks, and back.

>>> import numpy as np
>>> from onnxq import GGMLQuantizer, GGMLQuantType
>>> w = np.random.default_rng(0).standard_normal((8, 576)).astype(np.float32)
>>> q = GGMLQuantizer(GGMLQuantType.Q6_K).quantize(w)      # 8 rows of 576 weights
>>> q.data.shape, q.tail_type                               # 2 super-blocks + 2 Q8_0 blocks a row
((8, 488), <GGMLQuantType.Q8_0: 8>)
>>> float(np.sqrt(np.mean((q.dequantize() - w) ** 2))) < 0.02
True

Rows follow ggml's convention: a row is one output feature, its ``K`` elements run along
the input dimension. For an ONNX ``MatMul(X, W)`` with ``W`` of shape ``[K, N]`` the rows
are the columns of ``W``: use :meth:`GGMLQuantizer.quantize_matmul_weight` and
:meth:`QuantizedGGMLTensor.to_matmul_weight`.

The bytes are those ggml's reference quantizers (``ggml-quants.c``) write for the same
float32 input, with and without an importance matrix, so blocks can move between GGUF
files and onnxq models unchanged. ``K`` need not be a multiple of the block size: the
last block of a row is zero-padded (padding elements quantize as zeros, weigh nothing in
the imatrix searches, and are dropped on dequantization), and a K-quant row may end in
32-element tail blocks instead (see :mod:`onnxq.formats`).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Optional, Sequence, Tuple

import numpy as np

from ..formats import AUTO, GGMLQuantType, RowLayout, TypeLike, resolve_tail, row_layout

__all__ = ["GGMLQuantizer", "QuantizedGGMLTensor", "default_num_threads"]


def default_num_threads() -> int:
    """All cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _check_threads(num_threads: Optional[int]) -> int:
    if num_threads is None:
        return default_num_threads()
    if isinstance(num_threads, bool) or not isinstance(num_threads, (int, np.integer)):
        raise TypeError(f"num_threads must be an int or None, got {type(num_threads).__name__}")
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    return int(num_threads)


def _rows_float32(array: Any, what: str = "input") -> Tuple[np.ndarray, np.ndarray]:
    """(float32 C-contiguous [rows, K], the original as an ndarray)."""
    original = np.asarray(array)
    if original.dtype.kind != "f" or original.dtype.itemsize not in (2, 4, 8):  # any byte order
        raise TypeError(f"{what} must be float16, float32 or float64, got dtype {original.dtype}")
    if original.ndim not in (1, 2):
        raise ValueError(f"{what} must be 1-D (one row) or 2-D [rows, K], got shape {original.shape}")
    if original.size == 0:
        raise ValueError(f"{what} is empty (shape {original.shape}): nothing to quantize")
    rows = original.reshape(1, -1) if original.ndim == 1 else original
    with np.errstate(over="ignore", invalid="ignore"):  # float64 beyond float32 -> inf, reported below
        x = np.ascontiguousarray(rows, dtype=np.float32)
    return x, rows


def _nonfinite_error(rows: np.ndarray, x: np.ndarray, r: int, where: Callable[[int, int], str]) -> ValueError:
    c = int(np.flatnonzero(~np.isfinite(x[r]))[0])
    value = rows[r, c]
    if np.isfinite(value):
        return ValueError(f"value {float(value)!r} at {where(r, c)} does not fit in float32")
    return ValueError(f"non-finite value {float(value)} at {where(r, c)}")


def _row_col(r: int, c: int) -> str:
    return f"row {r}, column {c}"


def _check_imatrix(imatrix: Any, K: int) -> np.ndarray:
    im = np.asarray(imatrix)
    if im.dtype.kind not in "fiu":
        raise TypeError(f"imatrix must be numeric, got dtype {im.dtype}")
    if im.shape != (K,):
        raise ValueError(f"imatrix must hold one value per input column: expected shape ({K},), got {im.shape}")
    with np.errstate(over="ignore", invalid="ignore"):
        im32 = np.ascontiguousarray(im, dtype=np.float32)
    bad = np.flatnonzero(~np.isfinite(im32))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"imatrix[{i}] = {float(im[i])!r} is not a finite float32")
    neg = np.flatnonzero(im32 < 0)
    if neg.size:
        i = int(neg[0])
        raise ValueError(f"imatrix values are means of x^2 and must be >= 0, got imatrix[{i}] = {float(im32[i])!r}")
    return im32


class QuantizedGGMLTensor:
    """Rows of ggml blocks: ``data`` is uint8 ``[rows, row_bytes]``, each row laid out as
    :func:`onnxq.formats.row_layout` describes for ``shape[1]`` elements."""

    __slots__ = ("_data", "_qtype", "_tail", "_shape", "_layout")

    def __init__(
        self,
        data: np.ndarray,
        qtype: TypeLike,
        shape: Sequence[int],
        tail_type: Optional[TypeLike] = None,
    ) -> None:
        qtype = GGMLQuantType.parse(qtype)
        if len(shape) != 2:
            raise ValueError(f"shape must be (rows, K), got {tuple(shape)}")
        rows, K = (int(v) for v in shape)
        if rows < 1:
            raise ValueError(f"shape must have at least one row, got {tuple(shape)}")
        layout = row_layout(qtype, K, tail_type)
        data = np.asarray(data)
        if data.dtype != np.uint8:
            raise TypeError(f"data must be uint8, got dtype {data.dtype}")
        if data.shape != (rows, layout.row_bytes):
            raise ValueError(
                f"data has shape {data.shape}; {rows} rows of {K} {qtype.name} elements"
                f"{' + ' + layout.tail_type.name + ' tail' if layout.tail_type else ''} "
                f"need ({rows}, {layout.row_bytes})"
            )
        self._data = np.ascontiguousarray(data)
        self._qtype = qtype
        self._tail = layout.tail_type
        self._shape = (rows, K)
        self._layout = layout

    @property
    def data(self) -> np.ndarray:
        """The packed blocks, uint8 ``[rows, row_bytes]``."""
        return self._data

    @property
    def qtype(self) -> GGMLQuantType:
        return self._qtype

    @property
    def tail_type(self) -> Optional[GGMLQuantType]:
        """Type of the tail blocks, None when rows have none."""
        return self._tail

    @property
    def shape(self) -> Tuple[int, int]:
        """(rows, K): the float shape the blocks stand for."""
        return self._shape

    @property
    def layout(self) -> RowLayout:
        return self._layout

    @property
    def row_bytes(self) -> int:
        return self._layout.row_bytes

    def memory_usage(self) -> int:
        """Bytes of packed data."""
        return int(self._data.nbytes)

    @property
    def bits_per_weight(self) -> float:
        """Stored bits per weight, padding and tail blocks included."""
        return 8.0 * self.memory_usage() / (self._shape[0] * self._shape[1])

    def dequantize(self, num_threads: Optional[int] = None) -> np.ndarray:
        """Float32 ``[rows, K]`` (ggml's dequantization, bit for bit)."""
        from .. import _codecs

        out = np.empty(self._shape, dtype=np.float32)
        _codecs.dequantize_rows(
            self._data,
            out,
            self._qtype.ggml_id,
            self._tail.ggml_id if self._tail is not None else -1,
            _check_threads(num_threads),
        )
        return out

    def to_matmul_weight(self, num_threads: Optional[int] = None) -> np.ndarray:
        """The ONNX MatMul weight ``[K, N]`` these rows encode (inverse of
        :meth:`GGMLQuantizer.quantize_matmul_weight`)."""
        return np.ascontiguousarray(self.dequantize(num_threads).T)

    def __repr__(self) -> str:
        tail = f", tail_type={self._tail.name}" if self._tail is not None else ""
        return (
            f"QuantizedGGMLTensor({self._qtype.name}, shape={self._shape}{tail}, "
            f"{self.memory_usage()} bytes, {self.bits_per_weight:.4g} bits/weight)"
        )


class GGMLQuantizer:
    """Quantizes float rows into ggml blocks of one type.

    Args:
        qtype: the block type, a :class:`GGMLQuantType` or its name.
        tail_type: for K-quants, the 32-element type of the last ``K mod 256`` elements
            of a row: ``"auto"`` (default) is ``qtype.default_tail`` (llama.cpp's
            fallback types), None zero-pads the last super-block instead. Rows whose
            ``K`` is a multiple of 256 have no tail either way. Not allowed for
            32-element types.
        num_threads: OpenMP threads for the row loop (default: all cores). The bytes do
            not depend on it.
    """

    def __init__(
        self,
        qtype: TypeLike,
        tail_type: Optional[TypeLike] = AUTO,
        num_threads: Optional[int] = None,
    ) -> None:
        self.qtype = GGMLQuantType.parse(qtype)
        self.tail_type = resolve_tail(self.qtype, tail_type)
        self.num_threads = _check_threads(num_threads)

    def layout(self, K: int) -> RowLayout:
        """Row layout used for rows of ``K`` elements."""
        return row_layout(self.qtype, K, self.tail_type)

    def quantize(self, array: Any, imatrix: Any = None) -> QuantizedGGMLTensor:
        """Quantize ``array``: 2-D ``[rows, K]`` (ggml rows) or 1-D (one row), float16/32/64.

        ``imatrix``: optional importance of each of the ``K`` columns (llama.cpp's imatrix:
        the mean of x^2 of the activations feeding that column), non-negative. Every type
        but Q8_0 and Q8_K then uses ggml's weighted searches. Values are quantized as
        float32 (float64 input is rounded first); NaN or infinity is an error naming the
        first bad row and column.
        """
        return self._quantize(array, imatrix, _row_col)

    def _quantize(self, array: Any, imatrix: Any, where: Callable[[int, int], str]) -> QuantizedGGMLTensor:
        from .. import _codecs

        x, rows = _rows_float32(array)
        K = x.shape[1]
        layout = self.layout(K)
        im = _check_imatrix(imatrix, K) if imatrix is not None else None
        out = np.empty((x.shape[0], layout.row_bytes), dtype=np.uint8)
        bad = _codecs.quantize_rows(
            x,
            out,
            self.qtype.ggml_id,
            layout.tail_type.ggml_id if layout.tail_type is not None else -1,
            im,
            self.num_threads,
        )
        if bad >= 0:
            raise _nonfinite_error(rows, x, bad, where)
        return QuantizedGGMLTensor(out, self.qtype, x.shape, layout.tail_type)

    def quantize_matmul_weight(self, weight: Any, imatrix: Any = None) -> QuantizedGGMLTensor:
        """Quantize an ONNX MatMul weight ``W`` of shape ``[K, N]``: row ``n`` of the result
        is column ``n`` of ``W`` (ggml's layout). ``imatrix`` has one value per input
        feature (length ``K``)."""
        w = np.asarray(weight)
        if w.ndim != 2:
            raise ValueError(f"a MatMul weight must be 2-D [K, N], got shape {w.shape}")
        return self._quantize(w.T, imatrix, lambda n, k: f"W[{k}, {n}]")

    def compression_ratio(self, numel: int, row_length: Optional[int] = None) -> float:
        """float32 bytes / quantized bytes for ``numel`` weights in rows of ``row_length``
        elements (default: a single row of ``numel``), padding and tail included."""
        numel = int(numel)
        K = numel if row_length is None else int(row_length)
        if numel < 1 or K < 1 or numel % K:
            raise ValueError(f"numel={numel} must be a positive multiple of row_length={K}")
        return 4.0 * numel / ((numel // K) * self.layout(K).row_bytes)

    def __repr__(self) -> str:
        tail = self.tail_type.name if self.tail_type is not None else None
        return f"GGMLQuantizer({self.qtype.name}, tail_type={tail}, num_threads={self.num_threads})"
