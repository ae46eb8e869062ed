"""Build all-MiniLM-L6-v2 (a BERT encoder) as a float32 ONNX model from its safetensors + config.json.

Shaped like an optimum export of ``BertModel``: linear layers are ``MatMul`` with a float32
[in, out] initializer (``encoder.layer.0.attention.self.query.weight``) followed by a separate
``Add`` of ``...bias``; LayerNorm is the opset-17 ``LayerNormalization`` op; GELU is the erf form
``x * 0.5 * (1 + erf(x / sqrt(2)))``; the attention mask is HF's additive
``(1 - mask) * float32.min`` over [batch, 1, 1, seq].
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
from onnx import TensorProto
from tqdm.auto import tqdm

from ..errors import ModelError
from .checkpoints import file_sha256
from .graph_builder import GraphBuilder

# Bump when the graph or its bytes change on purpose; the cache key also hashes this source.
BUILDER_VERSION = "1"

KIND = "encoder"
_NEG = float(np.finfo(np.float32).min)


def read_bert_config(model_dir: os.PathLike) -> dict[str, Any]:
    """config.json of a BERT checkpoint, validated for what this builder supports."""
    path = Path(model_dir) / "config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read BERT config {path}: {exc}") from exc
    required = ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size",
                "vocab_size", "max_position_embeddings", "type_vocab_size", "layer_norm_eps")
    missing = [k for k in required if k not in cfg]
    if missing:
        raise ModelError(f"{path}: missing keys {missing}")
    if cfg.get("model_type", "bert") != "bert":
        raise ModelError(f"{path}: model_type {cfg.get('model_type')!r}, expected 'bert'")
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise ModelError(f"{path}: hidden_act {cfg.get('hidden_act')!r} is not supported (only erf 'gelu')")
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise ModelError(f"{path}: position_embedding_type {cfg.get('position_embedding_type')!r} is not supported")
    if cfg["hidden_size"] % cfg["num_attention_heads"]:
        raise ModelError(f"{path}: hidden_size {cfg['hidden_size']} is not a multiple of "
                         f"num_attention_heads {cfg['num_attention_heads']}")
    return cfg


class _Weights:
    """safetensors tensors by name, checked for shape and converted to float32 on access."""

    def __init__(self, path: Path) -> None:
        try:
            from safetensors import safe_open
        except ImportError as exc:  # pragma: no cover - only without the models extra
            raise ModelError("reading safetensors needs the 'safetensors' package: pip install 'onnxq[models]'") from exc
        self.path = path
        try:
            self._file = safe_open(str(path), framework="numpy")
        except Exception as exc:  # safetensors raises its own error type on a bad header
            raise ModelError(f"{path} is not a readable safetensors file: {exc}") from exc
        self._names = set(self._file.keys())
        # some exports prefix every name with the architecture ("bert.")
        self._prefix = "bert." if "bert.embeddings.word_embeddings.weight" in self._names else ""

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        full = self._prefix + name
        if full not in self._names:
            raise ModelError(f"{self.path}: tensor {full!r} is missing")
        arr = self._file.get_tensor(full)
        if arr.shape != shape:
            raise ModelError(f"{self.path}: tensor {full!r} has shape {arr.shape}, expected {shape}")
        if arr.dtype not in (np.float32, np.float16):
            raise ModelError(f"{self.path}: tensor {full!r} has dtype {arr.dtype}, expected a float type")
        return arr.astype(np.float32, copy=False)


class _BertGraph:
    def __init__(self, b: GraphBuilder, w: _Weights, cfg: Mapping[str, Any]) -> None:
        self.b, self.w, self.cfg = b, w, cfg
        self.hidden = int(cfg["hidden_size"])
        self.heads = int(cfg["num_attention_heads"])
        self.head_dim = self.hidden // self.heads

    def linear(self, x: str, scope: str, name: str, n_in: int, n_out: int) -> str:
        b = self.b
        w = self.w.get(f"{name}.weight", (n_out, n_in))
        b.weight(f"{name}.weight", np.ascontiguousarray(w.T))  # [out, in] -> [in, out]
        b.weight(f"{name}.bias", self.w.get(f"{name}.bias", (n_out,)))
        y = b.op("MatMul", [x, f"{name}.weight"], scope)
        return b.op("Add", [y, f"{name}.bias"], scope)

    def layer_norm(self, x: str, scope: str, name: str, outputs: Optional[list[str]] = None) -> str:
        b, n = self.b, self.hidden
        b.weight(f"{name}.weight", self.w.get(f"{name}.weight", (n,)))
        b.weight(f"{name}.bias", self.w.get(f"{name}.bias", (n,)))
        return b.op("LayerNormalization", [x, f"{name}.weight", f"{name}.bias"], scope, outputs=outputs,
                    axis=-1, epsilon=float(self.cfg["layer_norm_eps"]))

    def embeddings(self, input_ids: str, token_type_ids: str) -> str:
        b, cfg, n = self.b, self.cfg, self.hidden
        scope = "/embeddings"
        for table, rows in (("word_embeddings", cfg["vocab_size"]), ("position_embeddings", cfg["max_position_embeddings"]),
                            ("token_type_embeddings", cfg["type_vocab_size"])):
            b.weight(f"embeddings.{table}.weight", self.w.get(f"embeddings.{table}.weight", (int(rows), n)))
        words = b.op("Gather", ["embeddings.word_embeddings.weight", input_ids], f"{scope}/word_embeddings", axis=0)
        types = b.op("Gather", ["embeddings.token_type_embeddings.weight", token_type_ids],
                     f"{scope}/token_type_embeddings", axis=0)
        seq = b.op("Gather", [b.op("Shape", [input_ids], scope), b.const(1)], scope, axis=0)
        positions = b.op("Unsqueeze", [b.op("Range", [b.const(0), seq, b.const(1)], scope), b.const([0])], scope)
        pos = b.op("Gather", ["embeddings.position_embeddings.weight", positions], f"{scope}/position_embeddings", axis=0)
        h = b.op("Add", [b.op("Add", [words, types], scope), pos], scope)
        return self.layer_norm(h, f"{scope}/LayerNorm", "embeddings.LayerNorm")

    def extended_mask(self, attention_mask: str) -> str:
        """(1 - mask) * float32.min as [batch, 1, 1, seq], added to the attention scores."""
        b, scope = self.b, ""
        m = b.op("Unsqueeze", [attention_mask, b.const([1, 2])], scope)
        m = b.op("Cast", [m], scope, to=TensorProto.FLOAT)
        m = b.op("Sub", [b.const(1.0, np.float32), m], scope)
        return b.op("Mul", [m, b.const(_NEG, np.float32)], scope)

    def attention(self, x: str, i: int, mask: str) -> str:
        b, n, hd = self.b, self.hidden, self.head_dim
        scope, prefix = f"/encoder/layer.{i}/attention/self", f"encoder.layer.{i}.attention.self"
        q = self.linear(x, f"{scope}/query", f"{prefix}.query", n, n)
        k = self.linear(x, f"{scope}/key", f"{prefix}.key", n, n)
        v = self.linear(x, f"{scope}/value", f"{prefix}.value", n, n)
        shape = b.const([0, 0, self.heads, hd])
        q = b.op("Transpose", [b.op("Reshape", [q, shape], scope)], scope, perm=[0, 2, 1, 3])
        k = b.op("Transpose", [b.op("Reshape", [k, shape], scope)], scope, perm=[0, 2, 3, 1])
        v = b.op("Transpose", [b.op("Reshape", [v, shape], scope)], scope, perm=[0, 2, 1, 3])
        scores = b.op("Div", [b.op("MatMul", [q, k], scope), b.const(math.sqrt(hd), np.float32)], scope)
        probs = b.op("Softmax", [b.op("Add", [scores, mask], scope)], scope, axis=-1)
        ctx = b.op("Transpose", [b.op("MatMul", [probs, v], scope)], scope, perm=[0, 2, 1, 3])
        ctx = b.op("Reshape", [ctx, b.const([0, 0, n])], scope)
        out_scope, out_prefix = f"/encoder/layer.{i}/attention/output", f"encoder.layer.{i}.attention.output"
        y = self.linear(ctx, f"{out_scope}/dense", f"{out_prefix}.dense", n, n)
        return self.layer_norm(b.op("Add", [y, x], out_scope), f"{out_scope}/LayerNorm", f"{out_prefix}.LayerNorm")

    def feed_forward(self, x: str, i: int, outputs: Optional[list[str]] = None) -> str:
        b, n, ffn = self.b, self.hidden, int(self.cfg["intermediate_size"])
        scope = f"/encoder/layer.{i}/intermediate"
        h = self.linear(x, f"{scope}/dense", f"encoder.layer.{i}.intermediate.dense", n, ffn)
        act = f"{scope}/intermediate_act_fn"
        e = b.op("Erf", [b.op("Div", [h, b.const(math.sqrt(2.0), np.float32)], act)], act)
        g = b.op("Mul", [b.op("Mul", [h, b.op("Add", [e, b.const(1.0, np.float32)], act)], act),
                         b.const(0.5, np.float32)], act)
        out_scope, prefix = f"/encoder/layer.{i}/output", f"encoder.layer.{i}.output"
        y = self.linear(g, f"{out_scope}/dense", f"{prefix}.dense", ffn, n)
        return self.layer_norm(b.op("Add", [y, x], out_scope), f"{out_scope}/LayerNorm", f"{prefix}.LayerNorm",
                               outputs)

    def build(self, progress: bool) -> None:
        b = self.b
        dims = ["batch_size", "sequence_length"]
        input_ids = b.add_input("input_ids", np.int64, dims)
        attention_mask = b.add_input("attention_mask", np.int64, dims)
        token_type_ids = b.add_input("token_type_ids", np.int64, dims)
        b.add_output("last_hidden_state", np.float32, dims + [self.hidden])
        h = self.embeddings(input_ids, token_type_ids)
        mask = self.extended_mask(attention_mask)
        n_layers = int(self.cfg["num_hidden_layers"])
        for i in tqdm(range(n_layers), desc="minilm layers", unit="layer", disable=not progress, leave=False):
            last = ["last_hidden_state"] if i == n_layers - 1 else None
            h = self.feed_forward(self.attention(h, i, mask), i, last)


def build_minilm(
    model_dir: os.PathLike,
    output_path: os.PathLike,
    *,
    family: str = "all-minilm-l6-v2",
    builder_version: str = BUILDER_VERSION,
    progress: bool = True,
) -> Path:
    """Build the float32 ONNX encoder from ``model_dir`` (model.safetensors + config.json)."""
    model_dir = Path(model_dir)
    cfg = read_bert_config(model_dir)
    weights_path = model_dir / "model.safetensors"
    if not weights_path.is_file():
        raise ModelError(f"{weights_path} does not exist")
    b = GraphBuilder("bert")
    _BertGraph(b, _Weights(weights_path), cfg).build(progress)
    metadata = {
        "onnxq.model.family": family,
        "onnxq.model.kind": KIND,
        "onnxq.model.source": weights_path.name,
        "onnxq.model.source_sha256": file_sha256(weights_path),
        "onnxq.model.builder_version": builder_version,
        "onnxq.model.num_layers": str(cfg["num_hidden_layers"]),
        "onnxq.model.hidden_size": str(cfg["hidden_size"]),
        "onnxq.model.max_position_embeddings": str(cfg["max_position_embeddings"]),
    }
    doc = f"{family} BERT encoder, float32, built by onnxq.zoo from {weights_path.name}"
    return b.save(output_path, metadata, doc)
