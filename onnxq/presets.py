"""Built-in recipes (``onnxq quantize --recipe NAME``), as the dicts a recipe file holds
(:func:`onnxq.recipe.get_preset` turns one into a :class:`~onnxq.recipe.Recipe`).

* one per GGML type (``q4_0`` ... ``q6_k``): every linear layer, the head and the
  embeddings in that type; K-quants use 32-element tail blocks where the width is not a
  multiple of 256 (never a whole-tensor fallback);
* llama.cpp's mixes, with its rules (``llama_tensor_get_type``):
  ``q4_k_m`` / ``q5_k_m`` put v-projections and down-projections at Q6_K where
  ``use_more_bits(i, n)`` holds (first and last eighth of the blocks and every third
  block between), a fused qkv at Q5_K / Q6_K, and the head (and a tied embedding table)
  at Q6_K; ``q4_k_s`` / ``q5_k_s`` are the small variants;
* ``encoder-q6`` / ``encoder-q5``: for BERT-style encoders, where the value projections are
  the most sensitive layers (measured per layer on all-MiniLM-L6-v2);
* ``encoder-q6-awq``: one type (Q6_K) everywhere plus activation-aware weight scaling
  (:mod:`onnxq.ggml.awq`) when calibration data is given; a post-norm encoder's norms also
  feed the residual, so the scales go into explicit Muls (one elementwise op per group);
* ``llama-mixed``: embeddings and head kept in float, the first quarter of the blocks
  SmoothQuant W8A8, the middle half Q6_K, the last quarter Q5_0.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

_SINGLE_TYPES = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q4_k", "q5_k", "q6_k")

_HEAD_Q6K = {"role": ["head", "embedding"], "method": "q6_k", "comment": "llama.cpp: output (and tied token_embd) at Q6_K"}

PRESETS: Dict[str, Dict[str, Any]] = {
    **{
        t: {"description": f"every linear layer, head and embedding in {t.upper()}", "default": t, "rules": []}
        for t in _SINGLE_TYPES
    },
    "q4_k_m": {
        "description": "llama.cpp Q4_K_M: Q4_K, v/down at Q6_K where use_more_bits, head Q6_K",
        "default": "q4_k",
        "rules": [
            {"role": "qkv", "method": "q5_k"},
            {"role": ["v", "qkv", "down"], "layers": "use_more_bits", "method": "q6_k"},
            _HEAD_Q6K,
        ],
    },
    "q5_k_m": {
        "description": "llama.cpp Q5_K_M: Q5_K, v/down at Q6_K where use_more_bits, head Q6_K",
        "default": "q5_k",
        "rules": [
            {"role": "qkv", "method": "q6_k"},
            {"role": ["v", "down"], "layers": "use_more_bits", "method": "q6_k"},
            _HEAD_Q6K,
        ],
    },
    "q4_k_s": {
        "description": "llama.cpp Q4_K_S: Q4_K, v of the first 4 blocks and down of the first eighth at Q5_K, head Q6_K",
        "default": "q4_k",
        "rules": [
            {"role": "v", "layers": "0:4", "method": "q5_k"},
            {"role": "down", "layers": "first 1/8", "method": "q5_k"},
            _HEAD_Q6K,
        ],
    },
    "q5_k_s": {
        "description": "llama.cpp Q5_K_S: Q5_K, head Q6_K",
        "default": "q5_k",
        "rules": [_HEAD_Q6K],
    },
    # Encoders: measured on all-MiniLM-L6-v2 (benchmarks in the report), the value
    # projections carry most of the quantization damage, then the FFN.
    "encoder-q6": {
        "description": "Q6_K, value projections at Q8_0 (MiniLM: mean cosine 0.9992 at 7.16 bpw)",
        "default": "q6_k",
        "rules": [{"role": "v", "method": "q8_0"}],
    },
    "encoder-q5": {
        "description": "Q5_0, value projections and FFN at Q6_K (MiniLM: mean cosine 0.997 at 6.0 bpw)",
        "default": "q5_0",
        "rules": [{"role": ["v", "up", "down"], "method": "q6_k"}],
    },
    "encoder-q6-awq": {
        "description": "Q6_K; with --calib/--imatrix-data: AWQ with explicit Muls (MiniLM with an imatrix: "
                       "mean cosine 0.9994 at 7.11 bpw)",
        "default": "q6_k",
        "rules": [],
        "awq": {"explicit_mul": True},
    },
    "llama-mixed": {
        "description": "embeddings and head float, first quarter SmoothQuant W8A8, middle half Q6_K, last quarter Q5_0",
        "default": "q6_k",
        "rules": [
            {"layers": "first 1/4", "method": "smoothquant"},
            {"layers": "last 1/4", "method": "q5_0"},
            {"role": ["embedding", "head"], "method": "keep"},
        ],
    },
}


def preset_names() -> List[str]:
    return list(PRESETS)


def preset_spec(name: str) -> Optional[Tuple[str, Dict[str, Any]]]:
    """(canonical name, recipe dict) of the preset called ``name`` (case-insensitive, ``-``
    and ``_`` alike), or None."""
    key = name.strip().lower()
    for candidate in (key, key.replace("_", "-"), key.replace("-", "_")):
        spec = PRESETS.get(candidate)
        if spec is not None:
            return candidate, spec
    return None
