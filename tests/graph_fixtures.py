"""The exported fixtures (``tests/data/exported/``) as the graph tests use them: paths,
inputs built from each model's interface and ``config.json``, and an onnxruntime run.

Inputs follow what the exporters declare: ``input_ids`` (and ``token_type_ids`` zeros),
``attention_mask`` ones over past + current tokens, ``position_ids`` 0..S-1, and empty
``past_key_values.*`` ([batch, kv heads, 0, head size], sizes from the declared shape or
the config when the exporter left them symbolic).
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional

import numpy as np
import onnx
import onnxruntime as ort

DATA = os.path.join(os.path.dirname(__file__), "data", "exported")
LLMS = ("optimum-smollm2", "dynamo-smollm2", "genai-smollm2")
ENCODERS = ("optimum-minilm", "dynamo-minilm", "ortopt-minilm")
FIXTURES = LLMS + ENCODERS


def path(name: str) -> str:
    return os.path.join(DATA, name, "model.onnx")


def config(name: str) -> dict:
    with open(os.path.join(DATA, name, "config.json"), encoding="utf-8") as fh:
        return json.load(fh)


def _dims(value_info) -> List[object]:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value_info.type.tensor_type.shape.dim]


def feeds(name: str, batch: int = 2, seq: int = 7, seed: int = 0, model: Optional[onnx.ModelProto] = None) -> Dict[str, np.ndarray]:
    """One batch of inputs for fixture ``name`` (token ids below the vocabulary size)."""
    cfg = config(name)
    model = model or onnx.load(path(name), load_external_data=False)
    rng = np.random.default_rng(seed)
    heads = cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    head_size = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    out: Dict[str, np.ndarray] = {}
    for vi in model.graph.input:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        if vi.name == "input_ids":
            out[vi.name] = rng.integers(3, cfg["vocab_size"], (batch, seq)).astype(dtype)
        elif vi.name == "attention_mask":
            out[vi.name] = np.ones((batch, seq), dtype)
        elif vi.name == "token_type_ids":
            out[vi.name] = np.zeros((batch, seq), dtype)
        elif vi.name == "position_ids":
            out[vi.name] = np.broadcast_to(np.arange(seq, dtype=dtype), (batch, seq)).copy()
        elif vi.name.startswith("past_key_values."):
            dims = _dims(vi)
            shape = (batch, dims[1] if isinstance(dims[1], int) else heads, 0,
                     dims[3] if isinstance(dims[3], int) else head_size)
            out[vi.name] = np.zeros(shape, dtype)
        else:
            raise KeyError(f"{name}: no test value for model input {vi.name!r}")
    return out


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
