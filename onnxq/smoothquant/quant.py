"""Integer quantization of weights and activations (the numbers; no graph code)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np

__all__ = [
    "QuantizedWeight",
    "ActivationQParams",
    "quantize_weight",
    "activation_qparams",
    "fake_quantize_activation",
]


@dataclass
class QuantizedWeight:
    """Symmetric int8 weight for ``Y = X @ W`` with W [K, N].

    ``values`` int8 [K, N] in [-qmax, qmax]; ``scale`` float32 [N] (per output channel) or
    [] (per tensor). W ≈ values * scale.
    """

    values: np.ndarray
    scale: np.ndarray

    def dequantize(self) -> np.ndarray:
        return self.values.astype(np.float32) * self.scale

    def storage(self, weight_type: str) -> Tuple[np.ndarray, np.ndarray]:
        """(data, zero_point) as stored in the model: uint8 q+128 with zero point 128, or int8
        with zero point 0; zero points have the shape of ``scale``."""
        if weight_type == "uint8":
            data = (self.values.astype(np.int16) + 128).astype(np.uint8)
            return data, np.full(self.scale.shape, 128, np.uint8)
        return self.values.astype(np.int8), np.zeros(self.scale.shape, np.int8)


def quantize_weight(w: np.ndarray, per_channel: bool = True, qmax: int = 127) -> QuantizedWeight:
    """Round-to-nearest symmetric quantization of W [K, N] (scales over K per column)."""
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"weight must be 2-D [K, N], got shape {list(w.shape)}")
    peak = np.abs(w).max(axis=0) if per_channel else np.asarray(np.abs(w).max())
    scale = np.where(peak > 0, peak / qmax, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale), -qmax, qmax).astype(np.int8)
    return QuantizedWeight(q, scale)


@dataclass(frozen=True)
class ActivationQParams:
    """Per-tensor activation quantization: x ≈ (q - zero_point) * scale."""

    scale: float
    zero_point: int
    dtype: str = "uint8"  # "uint8" (0..255) or "int8" (-128..127)

    @property
    def qmin(self) -> int:
        return 0 if self.dtype == "uint8" else -128

    @property
    def qmax(self) -> int:
        return 255 if self.dtype == "uint8" else 127

    @property
    def np_dtype(self):
        return np.uint8 if self.dtype == "uint8" else np.int8


def activation_qparams(lo: float, hi: float, symmetric: bool = False, dtype: str = "uint8") -> ActivationQParams:
    """Scale and zero point covering [lo, hi] (extended to contain 0, so 0 is exact)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    qmin, qmax = (0, 255) if dtype == "uint8" else (-128, 127)
    if symmetric:
        peak = max(-lo, hi)
        scale = peak / 127.0 if peak > 0 else 1.0
        zp = 128 if dtype == "uint8" else 0
        return ActivationQParams(float(np.float32(scale)), zp, dtype)
    if hi - lo <= 0:
        return ActivationQParams(1.0, 0 if dtype == "int8" else 0, dtype)
    scale = float(np.float32((hi - lo) / (qmax - qmin)))
    zp = int(np.clip(np.rint(qmin - lo / scale), qmin, qmax))
    return ActivationQParams(scale, zp, dtype)


def fake_quantize_activation(x: np.ndarray, qp: ActivationQParams) -> np.ndarray:
    """Quantize-dequantize x as onnxruntime's QuantizeLinear/DequantizeLinear would
    (round half to even, saturate)."""
    q = np.clip(np.rint(x / np.float32(qp.scale)) + qp.zero_point, qp.qmin, qp.qmax)
    return ((q - qp.zero_point) * np.float32(qp.scale)).astype(np.float32)
