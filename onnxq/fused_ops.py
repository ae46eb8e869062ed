"""Open up onnxruntime's fused transformer ops that carry weights as inputs, so that the
weights become linear and embedding sites (:mod:`onnxq.sites`) a method can quantize.

onnxruntime's transformer optimizer writes BERT as ``EmbedLayerNormalization`` and
``Attention`` nodes whose tables and QKV weight are plain inputs: no MatMul or Gather
reads them, so they would stay float. Each rule here is a pattern (the op), a check (the
features the replacement reproduces exactly; otherwise the reason the weight stays float)
and a replacement writing the same output tensors:

======================================  =========================================================
op (com.microsoft)                      replacement
======================================  =========================================================
``Attention(X, W, b, mask_index)``      ``MatMul(X, W_q) + b_q``, the same for k and v, then
                                        ``MultiHeadAttention(q, k, v, key_padding_mask=mask_index)``
                                        (num_heads, scale, mask_filter_value, unidirectional kept)
``EmbedLayerNormalization(ids, seg,     ``Gather(word, ids) + Gather(position, 0..S-1 or position_ids)
word, position, segment, gamma, beta,   + Gather(segment, seg)``, ``LayerNormalization(gamma, beta,
mask[, position_ids])``                 epsilon)``; mask_index = the count of ones in each mask row
                                        (what onnxruntime's kernel writes), embedding_sum = the sum
======================================  =========================================================

The model is changed in place (pass the loaded copy, never the caller's original); the
new weights are in-memory initializers (the QKV weight split in three).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import NodeProto, TensorProto, helper, numpy_helper

from .graph_edit import all_names, prune_initializers, unique_name
from .sites import FLOAT_TYPES, Analysis, ModelGraph, Skipped

__all__ = ["FUSED_RULES", "UnfuseResult", "unfuse_weights", "fused_weight_reason", "weights_left_float"]

MS = "com.microsoft"


@dataclass
class UnfuseResult:
    """What :func:`unfuse_weights` did: the nodes it replaced (name -> op) and the fused
    nodes it left, each with the reason (their weights stay float)."""

    replaced: Dict[str, str] = field(default_factory=dict)
    skipped: List[Skipped] = field(default_factory=list)


class _Edit:
    """New nodes and initializers for one model, with fresh names."""

    def __init__(self, model: onnx.ModelProto, graph: ModelGraph, base_dir: Optional[str]) -> None:
        self.model, self.graph, self.base_dir = model, graph, base_dir
        self.taken = all_names(model)
        self.inits: List[TensorProto] = []
        self.opset = next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)

    def name(self, base: str) -> str:
        return unique_name(None, base, self.taken)

    def const(self, base: str, value: np.ndarray) -> str:
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.array(value, order="C"), name))  # keeps scalars 0-D
        return name

    def value(self, name: str) -> np.ndarray:
        return np.asarray(self.graph.constant_value(name, self.base_dir))

    def node(self, op: str, inputs: Sequence[str], base: str, domain: str = "", outputs: Sequence[str] = (),
             **attrs) -> NodeProto:
        name = self.name(base)
        outs = list(outputs) or [self.name(f"{base}_output_0")]
        return helper.make_node(op, list(inputs), outs, name=name, domain=domain or None, **attrs)


def _attrs(node: NodeProto) -> Dict[str, object]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _given(node: NodeProto, i: int) -> bool:
    return len(node.input) > i and bool(node.input[i])


def _used(graph: ModelGraph, node: NodeProto, i: int) -> bool:
    """True when output ``i`` of ``node`` is read by a node or is a graph output."""
    if len(node.output) <= i or not node.output[i]:
        return False
    return bool(graph.consumers(node.output[i])) or node.output[i] in graph.graph_outputs


def _float_const(graph: ModelGraph, name: str, rank: int, what: str) -> Optional[str]:
    if not graph.is_constant(name):
        return f"{what} {name!r} is not a constant"
    shape = graph.constant_shape(name)
    if shape is None or len(shape) != rank:
        return f"{what} {name!r} has shape {list(shape or ())}, expected {rank}-D"
    if graph.constant_dtype(name) not in FLOAT_TYPES:
        return f"{what} {name!r} is not float"
    return None


# ----------------------------------------------------------------------------- Attention


_ATTENTION_UNSUPPORTED = {4: "past state (input 4)", 5: "an attention bias (input 5)", 6: "past_sequence_length (input 6)"}


def _attention_check(graph: ModelGraph, node: NodeProto) -> Optional[str]:
    for i, what in _ATTENTION_UNSUPPORTED.items():
        if _given(node, i):
            return f"Attention with {what}: no exact MultiHeadAttention form here"
    if _used(graph, node, 1):
        return "Attention's present output is used (a KV cache): no exact MultiHeadAttention form here"
    a = _attrs(node)
    if int(a.get("do_rotary", 0)):
        return "Attention with do_rotary=1: no exact MultiHeadAttention form here"
    reason = _float_const(graph, node.input[1], 2, "QKV weight")
    if reason is None and _given(node, 2):
        reason = _float_const(graph, node.input[2], 1, "QKV bias")
    if reason is not None:
        return reason
    k, n = graph.constant_shape(node.input[1])
    sizes = [int(v) for v in a.get("qkv_hidden_sizes", [])] or [n // 3] * 3
    if sum(sizes) != n or len(set(sizes)) != 1:
        return f"QKV weight {node.input[1]!r} [{k}, {n}] with hidden sizes {sizes}: only equal q/k/v widths are opened up"
    if _given(node, 2) and graph.constant_shape(node.input[2]) != (n,):
        return f"QKV bias {node.input[2]!r} has shape {list(graph.constant_shape(node.input[2]))}, expected [{n}]"
    return None


def _attention_replace(edit: _Edit, node: NodeProto) -> List[NodeProto]:
    w = edit.value(node.input[1]).astype(np.float32, copy=False)
    b = edit.value(node.input[2]).astype(np.float32, copy=False) if _given(node, 2) else None
    width = w.shape[1] // 3
    base = node.name or "Attention"
    nodes, qkv = [], []
    for i, part in enumerate(("q", "k", "v")):
        cols = slice(i * width, (i + 1) * width)
        weight = edit.const(f"{node.input[1]}.{part}", w[:, cols])
        mm = edit.node("MatMul", [node.input[0], weight], f"{base}/{part}_proj/MatMul")
        nodes.append(mm)
        out = mm.output[0]
        if b is not None:
            add = edit.node("Add", [out, edit.const(f"{node.input[2]}.{part}", b[cols])], f"{base}/{part}_proj/Add")
            nodes.append(add)
            out = add.output[0]
        qkv.append(out)
    a = _attrs(node)
    keep = {k: a[k] for k in ("num_heads", "scale", "mask_filter_value", "unidirectional") if k in a}
    mask = [node.input[3]] if _given(node, 3) else []
    ins = qkv + ([""] + mask if mask else [])
    nodes.append(edit.node("MultiHeadAttention", ins, f"{base}/MultiHeadAttention", domain=MS,
                           outputs=[node.output[0]], **keep))
    return nodes


# ----------------------------------------------------------------------------- EmbedLayerNormalization


def _embed_check(graph: ModelGraph, node: NodeProto) -> Optional[str]:
    for i, what in ((2, "word table"), (3, "position table")):
        reason = _float_const(graph, node.input[i], 2, what)
        if reason is not None:
            return reason
    if _given(node, 4):
        if not _given(node, 1):
            return "a segment table without segment ids"
        reason = _float_const(graph, node.input[4], 2, "segment table")
        if reason is not None:
            return reason
    for i, what in ((5, "gamma"), (6, "beta")):
        if _given(node, i):
            reason = _float_const(graph, node.input[i], 1, what)
            if reason is not None:
                return reason
    if not _given(node, 5):
        return "no gamma input"
    return None


def _embed_replace(edit: _Edit, node: NodeProto) -> List[NodeProto]:
    base = node.name or "EmbedLayerNormalization"
    ids = node.input[0]
    nodes = [edit.node("Gather", [node.input[2], ids], f"{base}/word_embeddings/Gather")]
    terms = [nodes[-1].output[0]]
    if _given(node, 8):
        positions = node.input[8]
    else:  # the kernel's position of token s is s: 0 .. S-1, broadcast over the batch
        shape = edit.node("Shape", [ids], f"{base}/Shape")
        length = edit.node("Gather", [shape.output[0], edit.const(f"{base}/one", np.array(1, np.int64))],
                           f"{base}/SequenceLength")
        rng = edit.node("Range", [edit.const(f"{base}/zero", np.array(0, np.int64)), length.output[0],
                                  edit.const(f"{base}/step", np.array(1, np.int64))], f"{base}/Range")
        nodes += [shape, length, rng]
        positions = rng.output[0]
    nodes.append(edit.node("Gather", [node.input[3], positions], f"{base}/position_embeddings/Gather"))
    terms.append(nodes[-1].output[0])
    if _given(node, 4):
        nodes.append(edit.node("Gather", [node.input[4], node.input[1]], f"{base}/token_type_embeddings/Gather"))
        terms.append(nodes[-1].output[0])
    total = terms[0]
    for i, term in enumerate(terms[1:]):
        last = i == len(terms) - 2 and len(node.output) > 2 and node.output[2]
        add = edit.node("Add", [total, term], f"{base}/Add_{i}", outputs=[node.output[2]] if last else ())
        nodes.append(add)
        total = add.output[0]
    eps = float(_attrs(node).get("epsilon", 1e-12))
    ln_in = [total, node.input[5]] + ([node.input[6]] if _given(node, 6) else [])
    nodes.append(edit.node("LayerNormalization", ln_in, f"{base}/LayerNorm", outputs=[node.output[0]], axis=-1,
                           epsilon=eps))
    if len(node.output) > 1 and node.output[1]:
        nodes += _mask_index(edit, node, base)
    return nodes


def _mask_index(edit: _Edit, node: NodeProto, base: str) -> List[NodeProto]:
    """int32 [batch]: the number of ones in each mask row (zeros without a mask), as
    onnxruntime's EmbedLayerNormalization kernel writes it."""
    out = node.output[1]
    if not _given(node, 7):
        shape = edit.node("Shape", [node.input[0]], f"{base}/mask_index/Shape")
        batch = edit.node("Gather", [shape.output[0], edit.const(f"{base}/axis0", np.array([0], np.int64))],
                          f"{base}/mask_index/Batch")
        zeros = edit.node("ConstantOfShape", [batch.output[0]], f"{base}/mask_index/Zeros", outputs=[out],
                          value=numpy_helper.from_array(np.array([0], np.int32)))
        return [shape, batch, zeros]
    one = edit.const(f"{base}/mask_one", np.array(1, np.int32))
    mask = edit.node("Cast", [node.input[7]], f"{base}/mask_index/CastMask", to=TensorProto.INT32)
    eq = edit.node("Equal", [mask.output[0], one], f"{base}/mask_index/Equal")
    ones = edit.node("Cast", [eq.output[0]], f"{base}/mask_index/Cast", to=TensorProto.INT32)
    if edit.opset >= 13:
        count = edit.node("ReduceSum", [ones.output[0], edit.const(f"{base}/axis1", np.array([1], np.int64))],
                          f"{base}/mask_index/ReduceSum", outputs=[out], keepdims=0)
    else:
        count = edit.node("ReduceSum", [ones.output[0]], f"{base}/mask_index/ReduceSum", outputs=[out], keepdims=0,
                          axes=[1])
    return [mask, eq, ones, count]


# ----------------------------------------------------------------------------- driver


@dataclass(frozen=True)
class FusedRule:
    """One fused op: its check (None or the reason it stays) and its replacement."""

    op_type: str
    check: Callable[[ModelGraph, NodeProto], Optional[str]]
    replace: Callable[[_Edit, NodeProto], List[NodeProto]]
    #: the inputs that are weights (reported when the op stays)
    weights: Tuple[int, ...]
    #: what the replacement is, for messages
    becomes: str


FUSED_RULES: Dict[str, FusedRule] = {
    "Attention": FusedRule("Attention", _attention_check, _attention_replace, (1,),
                           "MatMul + MultiHeadAttention"),
    "EmbedLayerNormalization": FusedRule("EmbedLayerNormalization", _embed_check, _embed_replace, (2, 3, 4),
                                         "Gather + Add + LayerNormalization"),
}


def _rule(node: NodeProto) -> Optional[FusedRule]:
    return FUSED_RULES.get(node.op_type) if node.domain == MS else None


def fused_weight_reason(graph: ModelGraph, node: NodeProto) -> Optional[str]:
    """Why the weights of a fused op stay float, or None when :func:`unfuse_weights`
    opens it up (also None for ops that are not fused weight carriers)."""
    rule = _rule(node)
    return rule.check(graph, node) if rule is not None else None


def unfuse_weights(model: onnx.ModelProto, base_dir: Optional[str] = None) -> UnfuseResult:
    """Replace every fused op of :data:`FUSED_RULES` that passes its check (in place)."""
    result = UnfuseResult()
    if not any(_rule(n) is not None for n in model.graph.node):
        return result
    graph = ModelGraph(model)
    edit = _Edit(model, graph, base_dir)
    new_nodes: List[NodeProto] = []
    for node in model.graph.node:
        rule = _rule(node)
        if rule is None:
            new_nodes.append(node)
            continue
        reason = rule.check(graph, node)
        if reason is not None:
            result.skipped.append(Skipped(node.name, node.op_type, f"weights stay float: {reason}"))
            new_nodes.append(node)
            continue
        new_nodes.extend(rule.replace(edit, node))
        result.replaced[node.name] = node.op_type
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    model.graph.initializer.extend(edit.inits)
    prune_initializers(model)
    return result


#: a float constant of at least this many elements (2-D or more) counts as a weight
WEIGHT_MIN_ELEMENTS = 1024


def weights_left_float(model: onnx.ModelProto, analysis: Analysis) -> List[Skipped]:
    """Every float constant of 2+ dimensions that no linear or embedding site of
    ``analysis`` reads (a fused op's weight input, or any other of ``WEIGHT_MIN_ELEMENTS``
    or more), once per reading node, with the reason it stays float. Nodes
    ``analysis.skipped`` already explains are left out."""
    graph = ModelGraph(model)
    claimed = {graph.aliases.get(n, n) for n in [s.weight for s in analysis.linear] + [e.table for e in analysis.embeddings]}
    explained = {s.node for s in analysis.skipped}
    out: List[Skipped] = []
    for node in model.graph.node:
        if node.name in explained or node.op_type == "Identity":
            continue
        rule = _rule(node)
        for i, name in enumerate(node.input):
            source = graph.aliases.get(name, name)
            if not name or source in claimed or not graph.is_constant(name):
                continue
            shape = graph.constant_shape(name) or ()
            small = int(np.prod(shape, dtype=np.int64)) < WEIGHT_MIN_ELEMENTS
            if len(shape) < 2 or (small and (rule is None or i not in rule.weights)):
                continue
            if graph.constant_dtype(name) not in FLOAT_TYPES:
                continue
            out.append(Skipped(node.name, node.op_type, _left_reason(graph, node, i, name, shape)))
            break
    return out


def _left_reason(graph: ModelGraph, node: NodeProto, index: int, name: str, shape) -> str:
    what = f"float constant {name!r} {list(shape)} (input {index})"
    rule = _rule(node)
    if rule is not None:
        reason = rule.check(graph, node)
        if reason is None:
            return f"{what}: onnxq quantize rewrites {node.op_type} into {rule.becomes} to quantize it"
        return f"{what} stays float: {reason}"
    return f"{what} of {node.op_type} stays float (onnxq quantizes MatMul/Gemm weights and Gather tables)"
