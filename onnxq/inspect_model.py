"""``onnxq inspect``: per-layer method, shape, bytes and bits per weight of any model.

Recognises float layers (MatMul / Gemm / Gather on constant weights), onnxq's GGML ops,
int8 layers in the QDQ form (``DequantizeLinear`` of a constant feeding a MatMul / Gemm),
the QOperator form (``QLinearMatMul``), dynamic int8 (``MatMulInteger``) and
onnxruntime's ``MatMulNBits``. Bytes are read from the tensor headers: external data is
never loaded. A weight stored once and used by two layers (a tied LM head) is counted
once; the second layer shows ``shared_with``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

import numpy as np
import onnx
from onnx import TensorProto, helper

from .ggml.nodes import MATMUL_OP, ggml_node_attributes, is_ggml_node
from .ggml.portable_rewrite import NODE_MARK, portable_record
from .checks import check_external_data
from .modelio import file_bytes, load_model, tensor_nbytes
from .fused_ops import weights_left_float
from .report import LayerShape
from .roles import Linear, block_structure
from .sites import BLOCK_ROLES, FLOAT_TYPES, ModelGraph, Skipped, find_sites, infer_role, layer_index
from .units import bits_per_weight, format_bytes, record

PathLike = Union[str, os.PathLike]

_DTYPE_NAMES = {
    TensorProto.FLOAT: "float32",
    TensorProto.FLOAT16: "float16",
    TensorProto.BFLOAT16: "bfloat16",
    TensorProto.DOUBLE: "float64",
}


@dataclass
class LayerInfo(LayerShape):
    """One weight-carrying layer of a model."""

    name: str
    op_type: str
    method: str  # "float32", "Q4_K", "int8 W8A8 (QDQ)", ...
    role: str
    layer: Optional[int]
    K: int
    N: int
    weight: str
    nbytes: int  # bytes this layer adds (0 when its weight is shared with an earlier layer)
    weight_bytes: int  # bytes of its weight (scales / zero points included) shared or not
    tail_type: Optional[str] = None
    mode: Optional[str] = None
    shared_with: Optional[str] = None
    #: why the layer runs in its mode (``auto``: the measured errors of both modes)
    mode_reason: Optional[str] = None
    #: a portable layer: the GGML type(s) its codes came from (``Q4_K+Q5_0``)
    portable_from: Optional[str] = None

    @property
    def bits_per_weight(self) -> float:
        return bits_per_weight(self.weight_bytes, self.params) or 0.0


@dataclass
class ModelInspection:
    path: str
    layers: List[LayerInfo] = field(default_factory=list)
    initializer_bytes: int = 0
    other_bytes: int = 0  # initializers not attributed to a layer (norms, biases, ...)
    other_float32_bytes: int = 0  # the same as float32
    file_bytes: int = 0
    metadata: Dict[str, str] = field(default_factory=dict)
    #: float weights no layer reads (kept inside other ops), each with the reason
    left_float: List[Skipped] = field(default_factory=list)

    @property
    def layer_params(self) -> int:
        return sum(l.params for l in self.layers if l.shared_with is None)

    @property
    def layer_bytes(self) -> int:
        return sum(l.nbytes for l in self.layers)

    @property
    def float32_bytes(self) -> int:
        """What the same model's initializers would take in float32."""
        return 4 * self.layer_params + self.other_float32_bytes

    @property
    def ratio_to_float32(self) -> float:
        return self.float32_bytes / self.initializer_bytes if self.initializer_bytes else 1.0

    @property
    def bits_per_weight(self) -> float:
        """Average over all layers (shared weights once)."""
        p = self.layer_params
        return bits_per_weight(self.layer_bytes, p) or 0.0

    def by_method(self) -> List[Dict[str, Any]]:
        rows: Dict[str, Dict[str, Any]] = {}
        for l in self.layers:
            row = rows.setdefault(l.method, {"method": l.method, "layers": 0, "params": 0, "bytes": 0})
            row["layers"] += 1
            if l.shared_with is None:
                row["params"] += l.params
                row["bytes"] += l.nbytes
        for row in rows.values():
            row["bits_per_weight"] = bits_per_weight(row["bytes"], row["params"])
        return list(rows.values())

    def to_dict(self) -> Dict[str, Any]:
        return {
            "path": self.path,
            "file_bytes": self.file_bytes,
            "initializer_bytes": self.initializer_bytes,
            "float32_bytes": self.float32_bytes,
            "ratio_to_float32": self.ratio_to_float32,
            "layer_params": self.layer_params,
            "layer_bytes": self.layer_bytes,
            "bits_per_weight": self.bits_per_weight,
            "other_bytes": self.other_bytes,
            "metadata": self.metadata,
            "by_method": self.by_method(),
            "layers": [record(l, _LAYER_KEYS) for l in self.layers],
            "left_float": [record(s, ("node", "op_type", "reason")) for s in self.left_float],
        }

    def table(self) -> str:
        w = max([len(l.name) for l in self.layers] + [5])
        w = min(w, 64)
        methods = [l.method + (f"+{l.tail_type}" if l.tail_type else "") for l in self.layers]
        mw = max([len(m) + 1 for m in methods] + [18])
        lines = [f"{'layer':<{w}}  {'role':<10}{'method':<{mw}}{'mode':<6}{'K x N':>14}{'bytes':>12}{'bpw':>8}  "
                 f"why this mode"]
        for l, method in zip(self.layers, methods):
            name = l.name if len(l.name) <= w else "…" + l.name[-(w - 1):]
            size = "(shared)" if l.shared_with else format_bytes(l.nbytes)
            why = l.mode_reason or (f"re-encoded {l.portable_from} blocks" if l.portable_from else "")
            lines.append(f"{name:<{w}}  {l.role:<10}{method:<{mw}}{l.mode or '-':<6}{f'{l.K}x{l.N}':>14}{size:>12}"
                         f"{l.bits_per_weight:>8.3f}  {why}".rstrip())
        lines.append("")
        lines.append(f"{'method':<20}{'layers':>7}{'params':>14}{'bytes':>12}{'bpw':>8}")
        for row in self.by_method():
            bpw = f"{row['bits_per_weight']:.3f}" if row["bits_per_weight"] else "-"
            lines.append(f"{row['method']:<20}{row['layers']:>7}{row['params']:>14,}{format_bytes(row['bytes']):>12}{bpw:>8}")
        lines.append(
            f"{'all layers':<20}{len(self.layers):>7}{self.layer_params:>14,}{format_bytes(self.layer_bytes):>12}"
            f"{self.bits_per_weight:>8.3f}"
        )
        lines.append(f"other initializers: {format_bytes(self.other_bytes)}")
        for s in self.left_float:
            lines.append(f"left float: {s.op_type} {s.node!r}: {s.reason}")
        lines.append(
            f"initializers: {format_bytes(self.initializer_bytes)} (as float32: {format_bytes(self.float32_bytes)}, "
            f"ratio {self.ratio_to_float32:.2f}x); file(s): {format_bytes(self.file_bytes)}"
        )
        if "onnxq.version" in self.metadata:
            recipe = self.metadata.get("onnxq.recipe")
            name = None
            if recipe:
                try:
                    name = json.loads(recipe).get("name")
                except ValueError:
                    name = None
            lines.append(f"quantized by onnxq {self.metadata['onnxq.version']}" + (f", recipe {name}" if name else ""))
        return "\n".join(lines)


_LAYER_KEYS = ("name", "op_type", "method", "role", "layer", "K", "N", "params", "weight", ("bytes", "nbytes"),
               "bits_per_weight", "tail_type", "mode", "mode_reason", "shared_with", "portable_from")


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


class _Bytes:
    """Initializer sizes, and which layer claimed each one first."""

    def __init__(self, model: onnx.ModelProto):
        self.sizes = {t.name: tensor_nbytes(t) for t in model.graph.initializer}
        self.owner: Dict[str, str] = {}

    def claim(self, names, layer: str) -> tuple:
        """(bytes added by this layer, bytes of all its tensors, first owner of the main one)."""
        added = total = 0
        first_owner = None
        for i, name in enumerate(n for n in names if n):
            size = self.sizes.get(name, 0)
            total += size
            owner = self.owner.setdefault(name, layer)
            if owner == layer:
                added += size
            elif i == 0:
                first_owner = owner
        return added, total, first_owner


def inspect_model(path: PathLike) -> ModelInspection:
    """Per-layer report of the model at ``path`` (any onnxq output or float model)."""
    path = os.fspath(path)
    model = load_model(path)
    check_external_data(model, path)  # sizes of data that is not there would be made up
    graph = ModelGraph(model)
    sizes = _Bytes(model)
    result = ModelInspection(path=os.path.abspath(path))
    result.metadata = {p.key: p.value for p in model.metadata_props if p.key.startswith("onnxq.")}
    result.file_bytes = file_bytes(path, model)

    io: Dict[str, tuple] = {}  # linear layer -> (input, output) for the structure's roles

    def add(node, op, method, weight, K, N, tensors, role=None, output=None, **extra):
        added, total, owner = sizes.claim([weight, *tensors], node.name)
        if role != "embedding":
            io[node.name] = (node.input[0], output or node.output[0])
        result.layers.append(
            LayerInfo(
                name=node.name, op_type=op, method=method,
                role=role or infer_role(node.name, weight), layer=layer_index(node.name, weight),
                K=int(K), N=int(N), weight=weight, nbytes=added, weight_bytes=total, shared_with=owner, **extra,
            )
        )

    portable = _portable_layers(result, sizes)
    float_sites = {}
    analysis = find_sites(model)
    for s in analysis.linear:
        float_sites[s.name] = s
    emb_sites = {e.name: e for e in analysis.embeddings}

    for node in model.graph.node:
        if portable and NODE_MARK in node.name:
            continue  # written by a portable conversion: its layer is listed from the record
        if is_ggml_node(node):
            a = ggml_node_attributes(node)
            weight = node.input[1] if node.op_type == MATMUL_OP else node.input[0]
            add(node, node.op_type, a["quant_type"], weight, a["K"], a["N"], [],
                role="embedding" if node.op_type != MATMUL_OP else None,
                tail_type=a["tail_type"], mode=a.get("mode"))
        elif node.name in float_sites:
            s = float_sites[node.name]
            dtype = _DTYPE_NAMES.get(graph.constant_dtype(s.weight), "float")
            add(node, s.op_type, dtype, s.weight, s.K, s.N, [], role=s.role, output=s.output)
        elif node.name in emb_sites:
            e = emb_sites[node.name]
            dtype = _DTYPE_NAMES.get(graph.constant_dtype(e.table), "float")
            add(node, "Gather", dtype, e.table, e.K, e.N, [], role="embedding")
        elif node.op_type == "QLinearMatMul" and len(node.input) >= 6:
            b = node.input[3]
            shape = graph.constant_shape(b)
            if shape and len(shape) == 2:
                add(node, node.op_type, "int8 W8A8 (QOperator)", b, shape[0], shape[1], node.input[4:6])
        elif node.op_type == "MatMulInteger" and len(node.input) >= 2:
            b = node.input[1]
            shape = graph.constant_shape(b)
            if shape and len(shape) == 2:
                zp = node.input[3:4] if len(node.input) > 3 else []
                add(node, node.op_type, "int8 W8A8 (dynamic)", b, shape[0], shape[1], zp)
        elif node.op_type == "MatMulNBits" and node.domain == "com.microsoft":
            bits = int(_attr(node, "bits", 4))
            add(node, node.op_type, f"MatMulNBits {bits}-bit", node.input[1], _attr(node, "K", 0), _attr(node, "N", 0),
                [t for t in node.input[2:4]])
        elif node.op_type in ("MatMul", "Gemm") and len(node.input) >= 2:
            _qdq_layer(graph, node, add)
    _structural_roles(model, graph, result, io)
    result.left_float = [s for s in weights_left_float(model, analysis) if not (portable and NODE_MARK in s.node)]
    _mode_reasons(result)
    total = sum(sizes.sizes.values())
    result.initializer_bytes = total
    claimed = set(sizes.owner)
    other = [t for t in model.graph.initializer if t.name not in claimed]
    result.other_bytes = sum(sizes.sizes[t.name] for t in other)
    result.other_float32_bytes = sum(
        (sizes.sizes[t.name] // _itemsize(t.data_type)) * 4 if t.data_type in FLOAT_TYPES else sizes.sizes[t.name]
        for t in other
    )
    return result


def _portable_layers(result: ModelInspection, sizes: "_Bytes") -> bool:
    """Layers of a portable file (``onnxq convert`` / ``quantize --portable``), from its
    record: the stock op, the code width and the bytes of the tensors each layer reads."""
    record = portable_record(result.metadata)
    if record is None:
        return False
    for entry in record["layers"]:
        name = str(entry.get("name"))
        added, total, owner = sizes.claim(list(entry.get("tensors", [])), name)
        kind = entry.get("kind")
        result.layers.append(LayerInfo(
            name=name, op_type=str(entry.get("op")), method=f"{entry.get('op')} {entry.get('bits')}-bit",
            role="embedding" if kind == "embedding" else infer_role(name, name), layer=layer_index(name, name),
            K=int(entry.get("K", 0)), N=int(entry.get("N", 0)), weight=(entry.get("tensors") or [""])[0],
            nbytes=added, weight_bytes=total, shared_with=owner,
            portable_from=str(entry.get("quant_type")) + (f"+{entry['tail_type']}" if entry.get("tail_type") else ""),
        ))
    return True


def _structural_roles(model: onnx.ModelProto, graph: ModelGraph, result: ModelInspection, io: Dict[str, tuple]) -> None:
    """Roles and block indices of the linear layers from the graph's structure
    (:mod:`onnxq.roles`); the names' only where the structure says nothing."""
    vocab = max((l.N for l in result.layers if l.role == "embedding"), default=None)
    linears = [Linear(l.name, *io[l.name], l.N) for l in result.layers if l.name in io]
    found = block_structure(graph, graph.consumers, model.graph.node, linears, vocab)
    for l in result.layers:
        role = found.roles.get(l.name)
        if role is not None and l.role != "head":
            l.role = role
            l.layer = found.layers.get(l.name) if role in BLOCK_ROLES else l.layer


def _mode_reasons(result: ModelInspection) -> None:
    """Each GGML layer's mode reason: the auto mode's measurement (``onnxq.modes``
    metadata), else the recipe's word."""
    from .ggml.modes import ModeChoice

    try:
        auto = json.loads(result.metadata.get("onnxq.modes", "{}"))
    except ValueError:
        auto = {}
    measured = auto.get("layers", {}) if isinstance(auto, dict) else {}
    for layer in result.layers:
        if layer.mode is None:
            continue
        m = measured.get(layer.name)
        if isinstance(m, dict) and {"mode", "exact_error", "fast_error"} <= set(m):
            layer.mode_reason = ModeChoice(layer.name, m["mode"], m["exact_error"], m["fast_error"],
                                           float(auto.get("threshold", 0))).reason
        elif "onnxq.version" in result.metadata:
            layer.mode_reason = "set by the recipe"


def _itemsize(data_type: int) -> int:
    return np.dtype(helper.tensor_dtype_to_np_dtype(data_type)).itemsize


def _qdq_layer(graph: ModelGraph, node: onnx.NodeProto, add) -> None:
    """A MatMul / Gemm whose weight is DequantizeLinear(constant int) (maybe transposed)."""
    w = node.input[1]
    producer = graph.producer(w)
    transposed = False
    if producer is not None and producer.op_type == "Transpose":
        transposed = True
        producer = graph.producer(producer.input[0])
    if producer is None or producer.op_type != "DequantizeLinear":
        return
    q = producer.input[0]
    if not graph.is_constant(q):
        return
    shape = graph.constant_shape(q)
    if not shape or len(shape) != 2:
        return
    if node.op_type == "Gemm" and int(_attr(node, "transB", 0)):
        transposed = not transposed
    K, N = (shape[1], shape[0]) if transposed else (shape[0], shape[1])
    x_producer = graph.producer(node.input[0])
    activations = x_producer is not None and x_producer.op_type == "DequantizeLinear"
    bits = "int4" if graph.constant_dtype(q) in (TensorProto.INT4, TensorProto.UINT4) else "int8"
    method = f"{bits} W8A8 (QDQ)" if activations else f"{bits} weight-only (QDQ)"
    add(node, node.op_type, method, q, K, N, [t for t in producer.input[1:3] if t])
