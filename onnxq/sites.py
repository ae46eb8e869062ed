"""Find what a quantization pass can work on in a graph: linear layers and embeddings.

A *linear site* is ``Y = X @ W (+ b)`` with a constant 2-D weight, in any of the shapes
exporters emit:

* ``MatMul(X, W)`` with W an initializer ``[K, N]``;
* ``MatMul(X, Transpose(W, perm=[1, 0]))`` with W stored ``[N, K]``;
* ``Gemm(X, W, C)`` (transB 0 or 1, alpha, beta; transA must be 0);
* either MatMul form followed by ``Add`` of a constant ``[N]`` bias (fused into the site).

Activation x activation MatMuls (attention scores) are never sites. Everything looked at
and not taken is reported with a reason. An *embedding site* is ``Gather`` on a constant
2-D table; a head that multiplies by the same table transposed is recorded as tied.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import NodeProto, TensorProto, helper

FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16)


class ModelGraph:
    """Producer / consumer / initializer lookups over the main graph of a model."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        graph = model.graph
        self.initializers: Dict[str, TensorProto] = {t.name: t for t in graph.initializer}
        self.graph_inputs = {i.name for i in graph.input}
        self.graph_outputs = {o.name for o in graph.output}
        self.nodes: Dict[str, NodeProto] = {}
        self._producer: Dict[str, NodeProto] = {}
        self._consumers: Dict[str, List[NodeProto]] = {}
        for node in graph.node:
            self.nodes[node.name] = node
            for out in node.output:
                if out:
                    self._producer[out] = node
            for inp in node.input:
                if inp:
                    self._consumers.setdefault(inp, []).append(node)
        # Constant nodes with a tensor value count as constants too.
        self.constant_nodes: Dict[str, NodeProto] = {
            n.output[0]: n for n in graph.node if n.op_type == "Constant" and n.output and _constant_tensor(n) is not None
        }
        # torch's exporter stores a value once and hands it out through Identity nodes
        self.aliases: Dict[str, str] = {}
        for node in graph.node:
            if node.op_type == "Identity" and node.output and self.is_constant(node.input[0]):
                self.aliases[node.output[0]] = self.aliases.get(node.input[0], node.input[0])

    def producer(self, tensor: str) -> Optional[NodeProto]:
        return self._producer.get(tensor)

    def consumers(self, tensor: str) -> List[NodeProto]:
        return list(self._consumers.get(tensor, ()))

    def initializer(self, name: str) -> Optional[TensorProto]:
        return self.initializers.get(name)

    def node(self, name: str) -> NodeProto:
        return self.nodes[name]

    def is_constant(self, name: str) -> bool:
        """True for an initializer that a graph input cannot override, a Constant node
        output, or an Identity of either."""
        if name in self.initializers:
            return name not in self.graph_inputs
        return name in self.constant_nodes or name in self.aliases

    def constant_value(self, name: str, base_dir: Optional[str] = None) -> np.ndarray:
        """Value of a constant tensor (initializer or Constant node, maybe through Identity)."""
        from .modelio import get_initializer_array

        name = self.aliases.get(name, name)
        if name in self.initializers:
            return get_initializer_array(self.model, self.initializers[name], base_dir)
        node = self.constant_nodes.get(name)
        if node is None:
            raise KeyError(f"{name!r} is not a constant tensor")
        return onnx.numpy_helper.to_array(_constant_tensor(node))

    def constant_tensor(self, name: str) -> Optional[TensorProto]:
        """The TensorProto of a constant (initializer or Constant node value), else None."""
        name = self.aliases.get(name, name)
        if name in self.initializers:
            return self.initializers[name]
        node = self.constant_nodes.get(name)
        return _constant_tensor(node) if node is not None else None

    def constant_shape(self, name: str) -> Optional[Tuple[int, ...]]:
        tensor = self.constant_tensor(name)
        return tuple(int(d) for d in tensor.dims) if tensor is not None else None

    def constant_dtype(self, name: str) -> Optional[int]:
        tensor = self.constant_tensor(name)
        return tensor.data_type if tensor is not None else None


def _constant_tensor(node: NodeProto) -> Optional[TensorProto]:
    for attr in node.attribute:
        if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
            return attr.t
    return None


def _attr(node: NodeProto, name: str, default):
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


@dataclass(frozen=True)
class LinearSite:
    """One linear layer ``output = input @ W (+ bias)``; see the module docstring."""

    name: str
    op_type: str
    input: str
    weight: str
    weight_transposed: bool
    K: int
    N: int
    bias: Optional[str]
    output: str
    nodes: Tuple[str, ...]
    role: str = "other"
    layer: Optional[int] = None
    gemm_alpha: float = 1.0
    gemm_beta: float = 1.0
    #: the weight initializer feeds other nodes as well (e.g. a tied embedding table)
    weight_shared: bool = False


@dataclass(frozen=True)
class EmbeddingSite:
    """``output = Gather(table, indices)`` with a constant table ``[N, K]`` (N rows of K),
    or ``Gather(Transpose(table), indices)`` with ``table`` stored ``[K, N]``."""

    name: str
    table: str
    indices: str
    output: str
    N: int
    K: int
    layer: Optional[int] = None
    #: names of linear sites whose weight is this table transposed (a tied LM head)
    tied_heads: Tuple[str, ...] = ()
    #: the Gather reads Transpose(table): ``table`` is stored [K, N] (a head's weight)
    table_transposed: bool = False


@dataclass(frozen=True)
class Skipped:
    """A node that looked like a candidate but is not a site, and why."""

    node: str
    op_type: str
    reason: str


@dataclass
class Analysis:
    linear: List[LinearSite] = field(default_factory=list)
    embeddings: List[EmbeddingSite] = field(default_factory=list)
    skipped: List[Skipped] = field(default_factory=list)
    num_layers: Optional[int] = None

    def site(self, name: str) -> LinearSite:
        for site in self.linear:
            if site.name == name:
                return site
        raise KeyError(name)


# ----------------------------------------------------------------------------- naming

_LAYER_RE = re.compile(r"(?:^|[/._:\-])(?:layers?|blocks?|h|encoder_layer|decoder_layer|transformer_blocks?)[._/\-](\d+)(?=$|[/._:\-])")

#: what a linear layer does in a transformer block (recipes select layers by role)
LINEAR_ROLES = ("q", "k", "v", "o", "qkv", "gate", "up", "down", "head", "other")
EMBEDDING_ROLE = "embedding"
ROLES = LINEAR_ROLES + (EMBEDDING_ROLE,)

# role -> name tokens (names are split on / . : - and lowercased; underscores are kept)
_ROLE_TOKENS: Sequence[Tuple[str, frozenset]] = (
    ("qkv", frozenset({"qkv_proj", "qkv", "query_key_value", "c_attn", "in_proj", "wqkv", "attn_qkv", "w_pack"})),
    ("q", frozenset({"q_proj", "query", "to_q", "wq", "attn_q", "q_lin"})),
    ("k", frozenset({"k_proj", "key", "to_k", "wk", "attn_k", "k_lin"})),
    ("v", frozenset({"v_proj", "value", "to_v", "wv", "attn_v", "v_lin"})),
    ("o", frozenset({"o_proj", "out_proj", "to_out", "wo", "attn_output", "attn_out", "out_lin"})),
    ("gate", frozenset({"gate_proj", "w1", "ffn_gate", "gate"})),
    ("up", frozenset({"up_proj", "w3", "ffn_up", "fc1", "c_fc", "dense_h_to_4h", "fc_in", "intermediate"})),
    ("down", frozenset({"down_proj", "w2", "ffn_down", "fc2", "dense_4h_to_h", "fc_out"})),
    ("head", frozenset({"lm_head", "classifier", "score", "output_layer"})),
)

_SPLIT_RE = re.compile(r"[/.:\-]+")


def _tokens(*names: Optional[str]) -> List[str]:
    out: List[str] = []
    for name in names:
        if name:
            out.extend(t for t in _SPLIT_RE.split(name.lower()) if t)
    return out


def layer_index(*names: Optional[str]) -> Optional[int]:
    """Transformer block index found in the given names (first name that has one)."""
    for name in names:
        if not name:
            continue
        match = _LAYER_RE.search(name.lower())
        if match:
            return int(match.group(1))
    return None


def infer_role(*names: Optional[str]) -> str:
    """Role of a linear layer from its node / weight names (see ``_ROLE_TOKENS``)."""
    tokens = _tokens(*names)
    token_set = set(tokens)
    for role, words in _ROLE_TOKENS:
        if token_set & words:
            return role
    # BERT: attention/output/dense is the attention output, output/dense the FFN down.
    if "dense" in token_set:
        if "attention" in token_set and "output" in token_set:
            return "o"
        if "output" in token_set:
            return "down"
    # GPT-2: attn/c_proj is the attention output, mlp/c_proj the FFN down.
    if "c_proj" in token_set:
        return "o" if ("attn" in token_set or "attention" in token_set) else "down"
    return "other"


# ----------------------------------------------------------------------------- finding sites


def _float_2d(graph: ModelGraph, name: str) -> Optional[str]:
    """None when ``name`` is a usable constant float 2-D weight, else the reason it is not."""
    if name in graph.graph_inputs:
        return f"weight {name!r} is also a graph input (it can be overridden at run time)"
    if not graph.is_constant(name):
        return "activation x activation (no constant weight)"
    shape = graph.constant_shape(name)
    if shape is None or len(shape) != 2:
        return f"weight {name!r} has shape {list(shape) if shape is not None else '?'}, expected 2-D"
    dtype = graph.constant_dtype(name)
    if dtype not in FLOAT_TYPES:
        return f"weight {name!r} has type {helper.tensor_dtype_to_np_dtype(dtype)}, expected a float type"
    if shape[0] == 0 or shape[1] == 0:
        return f"weight {name!r} is empty {list(shape)}"
    return None


def _bias_of(graph: ModelGraph, matmul_out: str, n: int) -> Optional[Tuple[str, NodeProto]]:
    """A following ``Add(matmul_out, const[N])`` that can be fused into the site."""
    if matmul_out in graph.graph_outputs:
        return None
    consumers = graph.consumers(matmul_out)
    if len(consumers) != 1 or consumers[0].op_type != "Add":
        return None
    add = consumers[0]
    others = [t for t in add.input if t != matmul_out]
    if len(others) != 1 or not graph.is_constant(others[0]):
        return None
    shape = graph.constant_shape(others[0])
    if shape is None or int(np.prod(shape, dtype=np.int64)) != n or (len(shape) and shape[-1] != n):
        return None
    if graph.constant_dtype(others[0]) not in FLOAT_TYPES:
        return None
    return others[0], add


def find_sites(model: onnx.ModelProto) -> Analysis:
    """All linear and embedding sites of ``model``'s main graph, plus what was skipped."""
    graph = ModelGraph(model)
    analysis = Analysis()
    weight_users: Dict[str, int] = {}
    for node in model.graph.node:
        if node.output and node.output[0] in graph.aliases:
            continue  # an Identity of a constant: its readers count as the constant's
        for name in node.input:
            name = graph.aliases.get(name, name)
            if name in graph.initializers:
                weight_users[name] = weight_users.get(name, 0) + 1

    for node in model.graph.node:
        if node.op_type == "MatMul":
            site = _matmul_site(graph, node, analysis.skipped)
        elif node.op_type == "Gemm":
            site = _gemm_site(graph, node, analysis.skipped)
        else:
            site = None
        if site is not None:
            analysis.linear.append(site)

    for node in model.graph.node:
        if node.op_type == "Gather":
            emb = _embedding_site(graph, node, analysis.skipped)
            if emb is not None:
                # a head computing with the same table the other way round is tied to it
                heads = tuple(s.name for s in analysis.linear if graph.aliases.get(s.weight, s.weight) == emb.table
                              and s.weight_transposed != emb.table_transposed)
                analysis.embeddings.append(_replace(emb, tied_heads=heads))

    # A head whose weight is the embedding table (transposed) is the LM head.
    tied = {h for e in analysis.embeddings for h in e.tied_heads}
    final: List[LinearSite] = []
    for site in analysis.linear:
        shared = weight_users.get(graph.aliases.get(site.weight, site.weight), 0) > 1
        if site.name in tied:
            site = _replace(site, role="head", weight_shared=True)
        elif shared:
            site = _replace(site, weight_shared=True)
        final.append(site)
    analysis.linear = final
    _structural_roles(graph, analysis)
    return analysis


#: roles that belong to a transformer block (their block index comes from the structure)
BLOCK_ROLES = ("q", "k", "v", "qkv", "o", "gate", "up", "down")


def _structural_roles(graph: ModelGraph, analysis: Analysis) -> None:
    """Roles and block indices from the graph's structure (:mod:`onnxq.roles`); names
    (:func:`infer_role`, :func:`layer_index`) only where the structure says nothing."""
    from .roles import Linear, block_structure

    vocab = max((e.N for e in analysis.embeddings), default=None)
    found = block_structure(graph, graph.consumers, graph.model.graph.node,
                            [Linear(s.name, s.input, s.output, s.N) for s in analysis.linear], vocab)
    final: List[LinearSite] = []
    for site in analysis.linear:
        role = found.roles.get(site.name)
        if role is not None and site.role != "head":
            layer = found.layers.get(site.name) if role in BLOCK_ROLES else site.layer
            site = _replace(site, role=role, layer=layer)
        final.append(site)
    analysis.linear = final
    if found.num_layers is not None:
        analysis.num_layers = found.num_layers
    else:
        layers = [s.layer for s in analysis.linear if s.layer is not None]
        analysis.num_layers = max(layers) + 1 if layers else None


def _embedding_site(graph: ModelGraph, node: NodeProto, skipped: List[Skipped]) -> Optional[EmbeddingSite]:
    """``Gather(table, ids)``, or ``Gather(Transpose(table), ids)`` (onnxruntime-genai reads
    the LM head's [K, N] weight as the table), on a constant 2-D float table."""
    table, transposed = node.input[0], False
    producer = graph.producer(table)
    if not graph.is_constant(table) and producer is not None and producer.op_type == "Transpose":
        perm = list(_attr(producer, "perm", [1, 0]))
        if graph.is_constant(producer.input[0]) and perm == [1, 0]:
            table, transposed = producer.input[0], True
    if not graph.is_constant(table):
        return None  # a Gather on activations is not an embedding: nothing to report
    shape = graph.constant_shape(table)
    axis = int(_attr(node, "axis", 0))
    reason = None
    if shape is None or len(shape) != 2:
        reason = f"table {table!r} is not 2-D"
    elif axis != 0:
        reason = f"axis={axis}, only axis 0 is an embedding lookup"
    elif graph.constant_dtype(table) not in FLOAT_TYPES:
        reason = f"table {table!r} is not float"
    elif graph.is_constant(node.input[1]):
        reason = "indices are constant (folded by onnxruntime)"
    if reason is not None:
        skipped.append(Skipped(node.name, "Gather", reason))
        return None
    table = graph.aliases.get(table, table)
    n, k = (shape[1], shape[0]) if transposed else (shape[0], shape[1])
    return EmbeddingSite(name=node.name, table=table, indices=node.input[1], output=node.output[0], N=int(n), K=int(k),
                         layer=layer_index(node.name, table), table_transposed=transposed)


def _replace(site, **changes):
    from dataclasses import replace

    return replace(site, **changes)


def _matmul_site(graph: ModelGraph, node: NodeProto, skipped: List[Skipped]) -> Optional[LinearSite]:
    if len(node.input) != 2:
        skipped.append(Skipped(node.name, "MatMul", f"{len(node.input)} inputs"))
        return None
    x, w = node.input
    if graph.is_constant(x):
        reason = "constant first input (weight on the left)" if not graph.is_constant(w) else "both inputs constant"
        skipped.append(Skipped(node.name, "MatMul", reason))
        return None
    covered: List[str] = []
    transposed = False
    weight = w
    producer = graph.producer(w)
    if not graph.is_constant(w) and producer is not None and producer.op_type == "Transpose":
        src = producer.input[0]
        perm = list(_attr(producer, "perm", [1, 0]))
        if graph.is_constant(src) and perm == [1, 0]:
            weight, transposed = src, True
            if len(graph.consumers(w)) == 1 and w not in graph.graph_outputs:
                covered.append(producer.name)
    reason = _float_2d(graph, weight)
    if reason is not None:
        skipped.append(Skipped(node.name, "MatMul", reason))
        return None
    shape = graph.constant_shape(weight)
    assert shape is not None
    n = shape[0] if transposed else shape[1]
    covered.append(node.name)
    output = node.output[0]
    bias: Optional[str] = None
    fused = _bias_of(graph, output, n)
    if fused is not None:
        bias, add = fused
        covered.append(add.name)
        output = add.output[0]
    return _linear_site(node, x, weight, transposed, shape, bias=bias, output=output, nodes=tuple(covered))


def _gemm_site(graph: ModelGraph, node: NodeProto, skipped: List[Skipped]) -> Optional[LinearSite]:
    x, w = node.input[0], node.input[1]
    c = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if int(_attr(node, "transA", 0)) != 0:
        skipped.append(Skipped(node.name, "Gemm", "transA=1 (activation transposed)"))
        return None
    if graph.is_constant(x):
        skipped.append(Skipped(node.name, "Gemm", "constant first input"))
        return None
    reason = _float_2d(graph, w)
    if reason is not None:
        skipped.append(Skipped(node.name, "Gemm", reason))
        return None
    trans_b = int(_attr(node, "transB", 0)) != 0
    shape = graph.constant_shape(w)
    assert shape is not None
    n = shape[0] if trans_b else shape[1]
    alpha = float(_attr(node, "alpha", 1.0))
    beta = float(_attr(node, "beta", 1.0))
    if c is not None:
        if not graph.is_constant(c):
            skipped.append(Skipped(node.name, "Gemm", f"bias {c!r} is not constant"))
            return None
        cshape = graph.constant_shape(c) or ()
        count = int(np.prod(cshape, dtype=np.int64)) if cshape else 1
        if count not in (1, n) or (len(cshape) == 2 and cshape[0] != 1):
            skipped.append(Skipped(node.name, "Gemm", f"bias {c!r} of shape {list(cshape)} is not per output feature"))
            return None
    return _linear_site(node, x, w, trans_b, shape, bias=c, output=node.output[0], nodes=(node.name,),
                        gemm_alpha=alpha, gemm_beta=beta)


def _linear_site(node: NodeProto, x: str, weight: str, transposed: bool, shape: Tuple[int, ...],
                 **fields) -> LinearSite:
    """The site of ``node`` reading X = ``x`` and a weight stored with ``shape``
    ([N, K] when ``transposed``, else [K, N])."""
    k, n = (shape[1], shape[0]) if transposed else (shape[0], shape[1])
    return LinearSite(name=node.name, op_type=node.op_type, input=x, weight=weight, weight_transposed=transposed,
                      K=int(k), N=int(n), role=infer_role(node.name, weight), layer=layer_index(node.name, weight),
                      **fields)


def input_groups(sites: Iterable[LinearSite]) -> Dict[str, List[LinearSite]]:
    """Sites grouped by the activation tensor they consume (q/k/v after one norm share one)."""
    groups: Dict[str, List[LinearSite]] = {}
    for site in sites:
        groups.setdefault(site.input, []).append(site)
    return groups


def weight_matrix_kn(graph: ModelGraph, site: LinearSite, base_dir: Optional[str] = None) -> np.ndarray:
    """The site's weight as float32 ``[K, N]`` (ONNX MatMul orientation), alpha applied for Gemm."""
    w = np.asarray(graph.constant_value(site.weight, base_dir), dtype=np.float32)
    if site.weight_transposed:
        w = w.T
    if site.gemm_alpha != 1.0:
        w = w * np.float32(site.gemm_alpha)
    return np.ascontiguousarray(w)


def bias_vector(graph: ModelGraph, site: LinearSite, base_dir: Optional[str] = None) -> Optional[np.ndarray]:
    """The site's bias as float32 ``[N]`` (Gemm beta applied), or None."""
    if site.bias is None:
        return None
    b = np.asarray(graph.constant_value(site.bias, base_dir), dtype=np.float32).reshape(-1)
    if b.size == 1:
        b = np.full(site.N, b[0], dtype=np.float32)
    if site.gemm_beta != 1.0:
        b = b * np.float32(site.gemm_beta)
    return b
