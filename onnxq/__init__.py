"""onnxq: quantize exported ONNX models for onnxruntime.

SmoothQuant W8A8 with standard ONNX int8 ops, ggml block formats (Q4_0 .. Q6_K) run by
onnxq's own onnxruntime custom-op library, and a method per layer from recipes.
Public names are imported lazily so that ``import onnxq`` stays cheap.

The package is built in floors; a module imports only from its own floor or below, a
method wing never imports the other wing, and only ``cli`` imports ``commands``
(``tests/test_architecture.py`` checks it; ``onnxq/README.md`` explains each module)::

    cli, commands/                                   the command line
    pipeline, inspect_model, evaluate/, zoo/,        run, measure, real models
    budget, mixed_precision                          budgets, the per-layer face
    ggml/            smoothquant/                    the method wings
    sites, folding, calibrate, formats, plan, recipe, presets, passes, report,
    modelio, graph_edit, corpora, runtime,
    model_inputs, text_inputs                        the shared floor
    errors, units, _version                          the base
"""
from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__
from .errors import CalibrationError, DataError, ModelError, OnnxqError, OutputPathError, RecipeError

# public name -> module that defines it
_LAZY: dict[str, str] = {
    "GGMLQuantType": "onnxq.formats",
    "GGMLQuantizer": "onnxq.ggml.codec",
    "QuantizedGGMLTensor": "onnxq.ggml.codec",
    "get_library_path": "onnxq.runtime",
    "register_library": "onnxq.runtime",
    "quiet_between_runs": "onnxq.runtime",
    "InferenceSession": "onnxq.runtime",
    "kernel_isa": "onnxq.runtime",
    "model_needs_library": "onnxq.runtime",
    "quantize": "onnxq.pipeline",
    "QuantizeReport": "onnxq.report",
    "Recipe": "onnxq.recipe",
    "load_recipe": "onnxq.pipeline",
    "inspect_model": "onnxq.inspect_model",
    "ImportanceMatrix": "onnxq.ggml.imatrix",
    "compute_imatrix": "onnxq.ggml.imatrix",
    "SmoothQuantConfig": "onnxq.smoothquant",
    "SmoothQuantizer": "onnxq.smoothquant",
    "MigrationAnalyzer": "onnxq.smoothquant",
    "text_batches": "onnxq.text_inputs",
    "ModelInputs": "onnxq.model_inputs",
    "MixedPrecisionQuantizer": "onnxq.mixed_precision",
    "quantize_to_budget": "onnxq.budget",
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
