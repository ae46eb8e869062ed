"""The SmoothQuant wing: W8A8 for onnxruntime, smoothing folded into norms, int8 weights per
output channel, int8 activations per tensor (static from calibration, or dynamic).

Tensor level: :class:`SmoothQuantizer`; model level: :func:`quantize_model` (file to file)
and :func:`apply_smoothquant` (in-memory, any subset of linear sites);
:class:`MigrationAnalyzer` for the alpha search and the per-layer error analysis; the
pass that :func:`onnxq.quantize` runs for a recipe's ``smoothquant`` layers is :mod:`.step`.
"""
from __future__ import annotations

from .apply import apply_smoothquant, default_sites, required_tensors
from .config import DEFAULT_ALPHA_GRID, SmoothQuantConfig
from .migration import AlphaChoice, LayerError, MigrationAnalyzer, relative_mse, smoothing_scales, weight_row_absmax
from .model import quantize_model
from .quant import ActivationQParams, QuantizedWeight, activation_qparams, quantize_weight
from .report import SiteReport, SmoothQuantReport
from .tensor_api import QuantizedLinear, SmoothQuantizer

__all__ = [
    "SmoothQuantConfig",
    "DEFAULT_ALPHA_GRID",
    "SmoothQuantizer",
    "QuantizedLinear",
    "MigrationAnalyzer",
    "AlphaChoice",
    "LayerError",
    "smoothing_scales",
    "weight_row_absmax",
    "relative_mse",
    "quantize_weight",
    "QuantizedWeight",
    "activation_qparams",
    "ActivationQParams",
    "apply_smoothquant",
    "quantize_model",
    "required_tensors",
    "default_sites",
    "SmoothQuantReport",
    "SiteReport",
]
