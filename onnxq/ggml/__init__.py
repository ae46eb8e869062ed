"""The GGML wing: ggml block formats (Q4_0 ... Q6_K) packed by onnxq's Cython codecs and run
by onnxq's onnxruntime custom ops.

* :mod:`.codec` — :class:`GGMLQuantizer` / :class:`QuantizedGGMLTensor` (float rows <-> blocks);
* :mod:`.nodes` — build and read the ``GgmlMatMul`` / ``GgmlGather`` nodes;
* :mod:`.rewrite` — the pass that rewrites planned sites into those nodes (streamed);
* :mod:`.imatrix` — importance matrices (ggml's imatrix) from calibration;
* :mod:`.awq` — activation-aware weight scaling before packing;
* :mod:`.step` — this wing's pass in :func:`onnxq.quantize`.

The type table is :mod:`onnxq.formats` (shared with recipes, reports and ``inspect``).
"""
from __future__ import annotations

from ..formats import GGMLQuantType, RowLayout, effective_bits_per_weight, row_bytes, row_layout
from .codec import GGMLQuantizer, QuantizedGGMLTensor, default_num_threads

__all__ = [
    "GGMLQuantType",
    "GGMLQuantizer",
    "QuantizedGGMLTensor",
    "RowLayout",
    "row_layout",
    "row_bytes",
    "effective_bits_per_weight",
    "default_num_threads",
]
