"""onnxq: quantize exported ONNX models for onnxruntime.

SmoothQuant W8A8 with standard ONNX int8 ops, ggml block formats (Q4_0 .. Q6_K) run by
onnxq's own onnxruntime custom-op library, and a method per layer from recipes.
Public names are imported lazily so that ``import onnxq`` stays cheap.
"""
from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__
from .errors import CalibrationError, DataError, ModelError, OnnxqError, OutputPathError, RecipeError

# public name -> module that defines it
_LAZY: dict[str, str] = {
    "GGMLQuantType": "onnxq.quant_types",
    "GGMLQuantizer": "onnxq.ggml",
    "QuantizedGGMLTensor": "onnxq.ggml",
    "get_library_path": "onnxq.runtime",
    "register_library": "onnxq.runtime",
    "InferenceSession": "onnxq.runtime",
    "kernel_isa": "onnxq.runtime",
    "model_needs_library": "onnxq.runtime",
    "quantize": "onnxq.quantize",
    "QuantizeReport": "onnxq.quantize",
    "Recipe": "onnxq.recipe",
    "load_recipe": "onnxq.recipe",
    "inspect_model": "onnxq.inspect_model",
    "ImportanceMatrix": "onnxq.imatrix",
    "compute_imatrix": "onnxq.imatrix",
    "SmoothQuantConfig": "onnxq.smoothquant",
    "SmoothQuantizer": "onnxq.smoothquant",
    "MigrationAnalyzer": "onnxq.smoothquant",
}

__all__ = [
    "__version__",
    "OnnxqError",
    "ModelError",
    "CalibrationError",
    "RecipeError",
    "DataError",
    "OutputPathError",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'onnxq' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
