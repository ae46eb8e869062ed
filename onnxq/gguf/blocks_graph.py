"""The LLaMA-family graph with the GGUF's tensors stored as they are in the file.

:class:`BlocksGraph` is :class:`onnxq.zoo.llama.LlamaGraph` with other weight hooks: a tensor
of a type the op library executes becomes a ``GgmlMatMul`` / ``GgmlGather`` whose blocks
initializer is the file's bytes, unchanged (rows in the file's order: q/k rows keep
llama.cpp's permutation and the rope rotates adjacent pairs, as ggml does); F32/F16/BF16
tensors become float32 ``MatMul`` / ``Gather``; any other type is refused, or converted with
onnxq's codec to the type given as ``requantize`` and recorded.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..errors import ModelError
from ..formats import WEIGHT_TYPES, GGMLQuantType
from ..ggml.codec import GGMLQuantizer
from ..ggml.nodes import make_ggml_gather_node, make_ggml_matmul_node
from ..zoo.llama import LlamaGraph
from .tensors import GGUFTensors


@dataclass
class TensorRecord:
    """How one GGUF tensor was stored in the ONNX model."""

    name: str  # the GGUF tensor
    onnx_name: str  # the initializer
    gguf_type: str
    stored_as: str  # a block type, or "float32"
    shape: Tuple[int, ...]
    nbytes: int  # bytes of the initializer
    requantized: bool = False
    tail_type: Optional[str] = None  # onnxq tail blocks of a requantized K-quant row


@dataclass
class _Weight:
    """A weight ready for the graph: blocks (``qtype`` set) or float32 rows [N, K]."""

    qtype: Optional[str]
    tail: Optional[str]
    data: np.ndarray


class BlocksGraph(LlamaGraph):
    """The decoder with every quantized GGUF tensor kept as its blocks (see the module doc)."""

    keep_rows = True
    progress_label = "importing layers"

    def __init__(self, b, ckpt, cfg, kv_cache: bool, tensors: GGUFTensors, *, mode: str,
                 requantize: Optional[GGMLQuantType] = None) -> None:
        super().__init__(b, ckpt, cfg, kv_cache)
        self.tensors, self.mode, self.requantize = tensors, mode, requantize
        self.records: List[TensorRecord] = []
        self._table: Optional[_Weight] = None
        self._quantizers: Dict[Tuple[str, Optional[str]], GGMLQuantizer] = {}

    # -- reading ---------------------------------------------------------------------------
    def _load(self, gguf_name: str, onnx_name: str, shape: Tuple[int, int]) -> _Weight:
        """The tensor as blocks (the file's bytes) or float32; refused or requantized otherwise."""
        info = self.tensors.info(gguf_name)
        if info.shape != shape:
            raise ModelError(f"{self.tensors.path}: tensor {gguf_name!r} has shape {list(info.shape)}, "
                             f"expected {list(shape)}")
        requantized = False
        if info.is_float:
            w = _Weight(None, None, self.tensors.floats(gguf_name))
        elif info.qtype is not None:
            w = _Weight(info.qtype.name, None, self.tensors.raw(gguf_name))
        else:
            w, requantized = self._requantized(gguf_name, info.type_name), True
        name = onnx_name if w.qtype is None else f"{onnx_name}.{w.qtype.lower()}"
        self.records.append(TensorRecord(gguf_name, name, info.type_name, w.qtype or "float32", info.shape,
                                         int(w.data.nbytes), requantized=requantized, tail_type=w.tail))
        return w

    def _requantized(self, gguf_name: str, type_name: str) -> _Weight:
        if self.requantize is None:
            raise ModelError(
                f"{self.tensors.path}: tensor {gguf_name!r} has type {type_name}, which onnxq's op library cannot "
                f"execute (it runs {', '.join(WEIGHT_TYPES)}, F32, F16, BF16); pass --requantize TYPE "
                "(Python: requantize=TYPE) to convert such tensors with onnxq's codec")
        rows = self.tensors.dequantized(gguf_name)
        target = self.requantize
        tail = target.default_tail.name if target.is_k_quant and rows.shape[1] % 256 else None
        key = (target.name, tail)
        if key not in self._quantizers:
            self._quantizers[key] = GGMLQuantizer(target, tail_type=tail)
        blocks = np.asarray(self._quantizers[key].quantize(rows).data)
        return _Weight(target.name, tail, blocks)

    # -- the hooks -------------------------------------------------------------------------
    def _matmul(self, x: str, scope: str, w: _Weight, name: str, K: int, N: int, *, bias: Optional[str] = None,
                outputs: Optional[List[str]] = None, blocks: Optional[str] = None) -> str:
        """``GgmlMatMul(x, blocks[, bias])`` named like the float graph's MatMul."""
        b = self.b
        node_name = b.node_name(scope, "MatMul")
        y = (outputs or [f"{node_name}_output_0"])[0]
        if blocks is None:
            blocks = b.blocks(f"{name}.{w.qtype.lower()}", w.data)
        made = make_ggml_matmul_node(node_name, x, y, blocks, quant_type=w.qtype, K=K, N=N, bias=bias,
                                     tail_type=w.tail, mode=self.mode)
        b.add_node(made.node)
        return y

    def linear(self, x: str, scope: str, name: str, gguf_name: str, unpermute_heads: Optional[int] = None) -> str:
        info = self.tensors.info(gguf_name)
        if len(info.shape) != 2:
            raise ModelError(f"{self.tensors.path}: tensor {gguf_name!r} has shape {list(info.shape)}, "
                             "expected a 2-D weight")
        N, K = info.shape
        w = self._load(gguf_name, name, (N, K))
        bias = self.bias(gguf_name, N, unpermute_heads)
        bias_name = None if bias is None else self.b.weight(name[: -len("weight")] + "bias", bias)
        if w.qtype is None:
            self.b.weight(name, np.ascontiguousarray(w.data.T))
            y = self.b.op("MatMul", [x, name], scope)
            return y if bias_name is None else self.b.op("Add", [y, bias_name], scope)
        return self._matmul(x, scope, w, name, K, N, bias=bias_name)

    def embedding(self, input_ids: str) -> Tuple[str, str]:
        cfg, b = self.cfg, self.b
        name = "model.embed_tokens.weight"
        w = self._table = self._load("token_embd.weight", name, (cfg.vocab_size, cfg.hidden_size))
        if w.qtype is None:
            table = b.weight(name, w.data)
            return b.op("Gather", [table, input_ids], "/model/embed_tokens", axis=0), table
        table = b.blocks(f"{name}.{w.qtype.lower()}", w.data)
        node_name = b.node_name("/model/embed_tokens", "Gather")
        made = make_ggml_gather_node(node_name, input_ids, f"{node_name}_output_0", table, quant_type=w.qtype,
                                     K=cfg.hidden_size, N=cfg.vocab_size, tail_type=w.tail)
        b.add_node(made.node)
        return made.node.output[0], table

    def lm_head(self, h: str, embed: str) -> None:
        cfg = self.cfg
        if cfg.tied_embeddings:
            w = self._table
            if w is None or w.qtype is None:
                return super().lm_head(h, embed)
            self._matmul(h, "/lm_head", w, "lm_head.weight", cfg.hidden_size, cfg.vocab_size, outputs=["logits"],
                         blocks=embed)
            return None
        w = self._load("output.weight", "lm_head.weight", (cfg.vocab_size, cfg.hidden_size))
        if w.qtype is None:
            head = self.b.weight("lm_head.weight", np.ascontiguousarray(w.data.T))
            self.b.op("MatMul", [h, head], "/lm_head", outputs=["logits"])
            return None
        self._matmul(h, "/lm_head", w, "lm_head.weight", cfg.hidden_size, cfg.vocab_size, outputs=["logits"])
        return None
