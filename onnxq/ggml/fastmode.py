"""What fast mode does to activations, in numpy: the rounding the op applies before its
integer dot products (``cython_kernels/ops/kernels_scalar.c``, ``quant_block``).

In fast mode ``GgmlMatMul`` quantizes every activation row to Q8_0-style blocks of 32,
whatever the weight type (the block sums Q4_1/Q5_1 and the K-quants use are sums of the
same codes). For the 32-element types that is ggml's vec_dot type; for the K-quants ggml
uses Q8_K (one scale per 256), which costs about three times the perplexity on SmolLM2
Q4_K_M (+1.17 against +0.35 percentage points, ``benchmarks/activation_blocks.py``), so
onnxq keeps 32. Each block is symmetric: ``d = amax / 127``, ``q = rint(x * 127 /
amax)`` (round half to even, float32), zero padding past ``K``. The integer dot products
that follow are exact, so fast mode's output is ``round_activations(X) @ dequant(W)``
up to float summation order: the cost of fast mode on a layer can be measured without
running the op (checked against onnxruntime in ``tests/test_fastmode.py``).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..formats import TypeLike, row_layout

__all__ = ["ACTIVATION_BLOCK", "round_activations", "round_blocks"]

ACTIVATION_BLOCK = 32  # elements per activation scale in fast mode, every weight type


def round_blocks(x: np.ndarray, block: int) -> np.ndarray:
    """``x`` [R, n] (n a multiple of ``block``) with every block of ``block`` values
    replaced by its symmetric 8-bit rounding ``q * d`` (float32, as the op computes it)."""
    rows, n = x.shape
    if n % block:
        raise ValueError(f"{n} columns are not a whole number of {block}-element blocks")
    b = np.ascontiguousarray(x, dtype=np.float32).reshape(rows, n // block, block)
    amax = np.abs(b).max(axis=2, keepdims=True)
    with np.errstate(divide="ignore"):
        inv = np.where(amax != 0, np.float32(127.0) / amax, np.float32(0.0)).astype(np.float32)
    q = np.rint(b * inv)
    d = (amax / np.float32(127.0)).astype(np.float32)
    return (q * d).astype(np.float32).reshape(rows, n)


def round_activations(x: np.ndarray, qtype: TypeLike, tail_type: Optional[TypeLike] = None) -> np.ndarray:
    """Activation rows ``x`` [R, K] as fast mode sees them against a weight of ``qtype``
    (with ``tail_type`` tail blocks for a K-quant whose K is not a multiple of 256): the
    type fixes the zero padding of the row, every block has 32 elements."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"activations must be [rows, K], got shape {list(x.shape)}")
    K = x.shape[1]
    layout = row_layout(qtype, K, tail_type)
    padded = np.zeros((x.shape[0], layout.padded_elems), dtype=np.float32)
    padded[:, :K] = x
    return round_blocks(padded, ACTIVATION_BLOCK)[:, :K]
