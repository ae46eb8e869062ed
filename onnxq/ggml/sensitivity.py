"""What each GGML type costs one weight: its bytes and the output error it causes.

The budget planner (:mod:`onnxq.budget`) turns these into model-level costs; here is the
GGML-wing knowledge: candidate types (every 32-element type and every K-quant with its
default tail blocks), their exact sizes, the relative output error of a linear layer on
sampled activation rows through the real codec round trip
(:class:`~onnxq.ggml.awq.GroupErrorModel`), the relative error of an embedding table
(rows weighted by how often calibration tokens look them up), and the dequantized weight
in the layout it is stored in (to run the model with one weight quantized).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np

from ..formats import WEIGHT_TYPES, default_tail_type, row_bytes

__all__ = ["CANDIDATES", "candidate_tail", "candidate_bytes", "linear_errors", "table_errors", "dequantized"]

#: every weight type, each K-quant with its default tail (Q4_K+Q5_0, Q5_K+Q5_1, Q6_K+Q8_0)
CANDIDATES = tuple(WEIGHT_TYPES)


def candidate_tail(qtype: str, K: int) -> Optional[str]:
    """The tail type a K-quant gets on rows of ``K`` (None: none needed or a 32-element type)."""
    return default_tail_type(qtype) if qtype.endswith("_K") and K % 256 else None


def candidate_bytes(qtype: str, K: int, N: int) -> int:
    """Bytes of ``N`` rows of ``K`` weights in ``qtype`` (tails included)."""
    return N * row_bytes(qtype, K, candidate_tail(qtype, K))


def linear_errors(weight: np.ndarray, rows: np.ndarray, candidates: Sequence[str] = CANDIDATES,
                  imatrix: Optional[np.ndarray] = None) -> Dict[str, float]:
    """``{qtype: ||X W - X Q(W)||^2 / ||X W||^2}`` for ``W`` [K, N] on activation ``rows`` [R, K]."""
    from .awq import GroupErrorModel

    K = weight.shape[0]
    sites = {q: (weight, q, candidate_tail(q, K)) for q in candidates}
    errors = GroupErrorModel(sites, rows, imatrix).site_errors()
    return {q: errors[q]["exact"] for q in candidates}


def table_errors(table: np.ndarray, counts: Optional[np.ndarray] = None,
                 candidates: Sequence[str] = CANDIDATES) -> Dict[str, float]:
    """``{qtype: relative error}`` of an embedding table [rows, K]: the squared error of
    the looked-up rows over their energy, each row weighted by ``counts`` (how often it is
    looked up; None: all alike)."""
    from .codec import GGMLQuantizer

    t = np.ascontiguousarray(table, dtype=np.float32)
    weights = np.ones(t.shape[0]) if counts is None else np.asarray(counts, np.float64)
    energy = float(weights @ np.square(t, dtype=np.float64).sum(axis=1))
    out = {}
    for q in candidates:
        deq = GGMLQuantizer(q, tail_type=candidate_tail(q, t.shape[1])).quantize(t).dequantize()
        err = float(weights @ np.square(deq - t, dtype=np.float64).sum(axis=1))
        out[q] = err / energy if energy > 0 else err
    return out


def dequantized(stored: np.ndarray, qtype: str, rows_stored: bool) -> np.ndarray:
    """``stored`` (float32, as the initializer holds it) quantized to ``qtype`` and back, in
    the same layout: ``rows_stored`` for [N, K] (a table, a transposed weight), else [K, N]."""
    from .codec import GGMLQuantizer

    w = np.asarray(stored, np.float32)
    K = w.shape[1] if rows_stored else w.shape[0]
    q = GGMLQuantizer(qtype, tail_type=candidate_tail(qtype, K))
    if rows_stored:
        return q.quantize(w).dequantize()
    return q.quantize_matmul_weight(w).to_matmul_weight()
