"""Sentence embeddings from an encoder's ``last_hidden_state``, as sentence-transformers computes them."""
from __future__ import annotations

import numpy as np

from ..errors import ModelError


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean of ``hidden`` [batch, seq, dim] over the positions where ``mask`` [batch, seq] is 1.

    Rows whose mask is all zeros give zero vectors (the count is clamped as
    sentence-transformers does, instead of dividing by zero).
    """
    hidden = np.asarray(hidden)
    mask = np.asarray(mask)
    if hidden.ndim != 3 or mask.shape != hidden.shape[:2]:
        raise ModelError(f"mean_pool: hidden must be [batch, seq, dim] and mask [batch, seq]; "
                         f"got {hidden.shape} and {mask.shape}")
    m = mask.astype(np.float32)[:, :, None]
    summed = (hidden.astype(np.float32) * m).sum(axis=1)
    counts = np.maximum(m.sum(axis=1), 1e-9)
    return summed / counts


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``x`` scaled to unit L2 norm (sentence-transformers' Normalize module)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, eps)
