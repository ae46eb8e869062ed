"""The exported fixtures (``tests/data/exported/``) as the graph tests use them: paths,
inputs (token ids, the rest synthesized as calibration does) and an onnxruntime run with
onnxq's op library."""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
import onnx
import onnxruntime as ort

from exported_fixtures import ENCODERS, LLMS, VOCAB, model as fixture_path  # the fixture list is part A's

FIXTURES = LLMS + ENCODERS


def path(name: str) -> str:
    return str(fixture_path(name))


def feeds(name: str, batch: int = 2, seq: int = 7, seed: int = 0, model: Optional[onnx.ModelProto] = None) -> Dict[str, np.ndarray]:
    """One batch of inputs for fixture ``name``: random token ids below the vocabulary
    size, the rest synthesized by :class:`onnxq.model_inputs.ModelInputs` as calibration
    does (mask of ones, positions, zero token types, empty past)."""
    from onnxq.model_inputs import ModelInputs

    model = model or onnx.load(path(name), load_external_data=False)
    ids = np.random.default_rng(seed).integers(3, VOCAB, (batch, seq)).astype(np.int64)
    return ModelInputs.of(model).complete({"input_ids": ids})


def session(model, **kwargs) -> ort.InferenceSession:
    """An onnxruntime session (onnxq's op library registered) of a path or a ModelProto."""
    import onnxq

    opts = ort.SessionOptions()
    opts.register_custom_ops_library(onnxq.get_library_path())
    opts.graph_optimization_level = kwargs.get("level", ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def run(model, inputs: Dict[str, np.ndarray], outputs: Optional[List[str]] = None) -> Dict[str, np.ndarray]:
    sess = session(model)
    names = outputs or [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, inputs)))


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max |want| (0 for two empty tensors)."""
    if want.size == 0:
        return 0.0
    return float(np.max(np.abs(got.astype(np.float64) - want)) / max(np.max(np.abs(want)), 1e-30))
