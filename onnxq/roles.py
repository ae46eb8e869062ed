"""Roles and block indices of linear layers from the graph's structure.

Exported graphs name weights ``onnx::MatMul_8767`` or ``val_68``, so recipes cannot rely on
names. A transformer block has a shape that every exporter keeps:

* an *attention core*: ``Softmax`` between a MatMul of two activations (q · kᵀ) and a
  MatMul of the probabilities with v, or one fused op (``Attention``,
  ``MultiHeadAttention``, ``GroupQueryAttention``, ...);
* **q / k / v** are the linear layers the core's query / key / value inputs come from (one
  layer feeding all three is a fused **qkv**); **o** is the first linear layer reading the
  core's output;
* **gate / up / down**: down reads ``Mul(act(gate), up)`` (the gate's path goes through an
  activation, the up's does not), or, without a gate, ``act(up)``;
* **head**: a layer whose output reaches a graph output directly and whose width is the
  vocabulary (the Gather table's rows);
* the block index of a layer is the position of its attention core in graph order (MLP
  layers belong to the core before them), and the depth is the number of cores.

Walking from a tensor to the linear layers it comes from passes through data-moving and
elementwise nodes and stops at other linear layers and at *barriers*: normalizations
(fused or decomposed, :mod:`onnxq.norms`), Softmax, attention cores, reductions, shape
computations and embedding lookups. What the structure does not settle stays unset; the
caller falls back to names.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

from onnx import NodeProto

from .norms import NORM_OPS, Lookups, NormMatch, match_norm

__all__ = ["Linear", "Structure", "AttentionCore", "ATTENTION_OPS", "block_structure"]

#: fused attention ops: (query, key, value) input indices
ATTENTION_OPS = {
    "Attention": (0, 1, 2),  # com.microsoft: input 0 is X, weights inside; opset 23: Q, K, V
    "MultiHeadAttention": (0, 1, 2),
    "GroupQueryAttention": (0, 1, 2),
    "PackedAttention": (0, 1, 2),
    "PackedMultiHeadAttention": (0, 1, 2),
    "DecoderMaskedMultiHeadAttention": (0, 1, 2),
    "SparseAttention": (0, 1, 2),
}
ACTIVATIONS = frozenset({
    "Sigmoid", "Tanh", "Erf", "Relu", "Gelu", "FastGelu", "BiasGelu", "QuickGelu", "Softplus", "Elu", "LeakyRelu",
    "HardSigmoid", "HardSwish", "Mish", "Selu", "Celu", "Swish", "Silu",
})
_BARRIERS = frozenset({
    "Softmax", "LogSoftmax", "MatMul", "Gemm", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd",
    "ReduceL2", "ReduceSumSquare", "Shape", "Size", "Range", "ConstantOfShape", "NonZero", "TopK", "ArgMax",
    "ArgMin", "GgmlGather", "EmbedLayerNormalization", "LayerNormalization", "SimplifiedLayerNormalization",
    "RMSNormalization", "SkipLayerNormalization", "SkipSimplifiedLayerNormalization",
}) | frozenset(ATTENTION_OPS)
#: ops whose input 0 is the data and the other inputs are shapes, indices or scales
_DATA_FIRST = frozenset({
    "Reshape", "Expand", "Slice", "Tile", "Unsqueeze", "Squeeze", "Gather", "GatherElements", "Pad", "Transpose",
    "Cast", "Identity", "Flatten", "Dropout", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
    "BiasGelu", "Split",
})
#: node ops the walk from an attention output to its o-projection passes (Mul / Add / Div
#: only by a constant: an explicit smoothing Mul, not the residual Add)
_FORWARD = frozenset({"Transpose", "Reshape", "Cast", "Identity", "Flatten", "Squeeze", "Unsqueeze",
                      "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
_FORWARD_BY_CONSTANT = frozenset({"Mul", "Add", "Div"})
_WALK_LIMIT = 400


@dataclass(frozen=True)
class Linear:
    """What role finding needs of a linear layer: its key (node name), the activation it
    reads, the tensor it writes (after a fused bias) and its output width."""

    key: str
    input: str
    output: str
    N: int


@dataclass(frozen=True)
class AttentionCore:
    """One attention: the node that marks it, its position, where q, k and v enter and
    the tensor of its weighted sum."""

    node: str
    position: int
    query: Optional[str]
    key: Optional[str]
    value: Optional[str]
    output: str


@dataclass
class Structure:
    """Roles and block indices found (keys of :class:`Linear`); ``num_layers`` is the
    number of attention cores (None: no core found)."""

    roles: Dict[str, str] = field(default_factory=dict)
    layers: Dict[str, int] = field(default_factory=dict)
    num_layers: Optional[int] = None
    cores: List[AttentionCore] = field(default_factory=list)


class _Walker:
    def __init__(self, graph: Lookups, consumers, linears: Sequence[Linear]) -> None:
        self.graph = graph
        self.consumers = consumers
        self.by_output = {l.output: l for l in linears}
        self.by_key = {l.key: l for l in linears}
        self.by_input: Dict[str, List[Linear]] = {}
        for l in linears:
            self.by_input.setdefault(l.input, []).append(l)
        self._norm: Dict[str, bool] = {}

    def is_norm(self, tensor: str) -> bool:
        if tensor not in self._norm:
            self._norm[tensor] = isinstance(match_norm(self.graph, tensor), NormMatch)
        return self._norm[tensor]

    def _data_inputs(self, node: NodeProto) -> List[str]:
        if node.op_type in _DATA_FIRST:
            names = node.input[:1]
        elif node.op_type == "Where":
            names = node.input[1:3]
        else:
            names = node.input
        return [t for t in names if t and not self.graph.is_constant(t)]

    def upstream(self, tensor: str) -> Dict[str, bool]:
        """Linear layers ``tensor`` is computed from -> whether some path from them passes
        an activation; stops at other linear layers and at barriers."""
        found: Dict[str, bool] = {}
        seen: Set[Tuple[str, bool]] = set()
        stack = [(tensor, False)]
        while stack and len(seen) < _WALK_LIMIT:
            t, act = stack.pop()
            if (t, act) in seen:
                continue
            seen.add((t, act))
            lin = self.by_output.get(t)
            if lin is not None:
                found[lin.key] = found.get(lin.key, False) or act
                continue
            node = self.graph.producer(t)
            if node is None or node.op_type in _BARRIERS or self.is_norm(t):
                continue
            if node.op_type == "Gather" and self.graph.is_constant(node.input[0]):
                continue  # an embedding lookup
            passed = act or node.op_type in ACTIVATIONS
            stack.extend((i, passed) for i in self._data_inputs(node))
        return found

    def first_readers(self, tensor: str) -> List[str]:
        """Linear layers first reached forward from ``tensor`` through data-moving nodes."""
        found: List[str] = []
        seen: Set[str] = set()
        stack = [tensor]
        while stack and len(seen) < _WALK_LIMIT:
            t = stack.pop()
            if t in seen:
                continue
            seen.add(t)
            readers = self.by_input.get(t, [])
            if readers:
                found.extend(l.key for l in readers if l.key not in found)
                continue
            for node in self.consumers(t):
                if not node.output or node.input[0] != t:
                    continue
                if node.op_type in _FORWARD or (node.op_type in _FORWARD_BY_CONSTANT and len(node.input) == 2
                                                and self.graph.is_constant(node.input[1])):
                    stack.append(node.output[0])
        return found


_SCORE_PATH = ("Add", "Mul", "Div", "Sub", "Where", "Cast", "Reshape", "Tanh", "Identity")


def _softmax_core(walker: _Walker, node: NodeProto, position: int) -> Optional[AttentionCore]:
    """q·kᵀ -> [scale, softcap, mask] -> Softmax -> [Cast, Dropout] -> · v, or None."""
    graph = walker.graph
    scores, frontier = None, [node.input[0]]
    for _ in range(8):
        nxt = []
        for t in frontier:
            p = graph.producer(t)
            if p is None:
                continue
            if p.op_type == "MatMul" and not any(graph.is_constant(i) for i in p.input):
                scores = p
                break
            if p.op_type in _SCORE_PATH:
                nxt.extend(i for i in p.input if i and not graph.is_constant(i))
        if scores is not None or not nxt:
            break
        frontier = nxt
    if scores is None:
        return None
    t, pv = node.output[0], None
    for _ in range(4):
        readers = walker.consumers(t)
        mm = [c for c in readers if c.op_type == "MatMul" and c.input[0] == t]
        if mm:
            pv = mm[0]
            break
        step = [c for c in readers if c.op_type in ("Cast", "Dropout", "Identity", "Where", "Reshape")]
        if len(step) != 1:
            break
        t = step[0].output[0]
    if pv is None:
        return None
    return AttentionCore(node.name, position, scores.input[0], scores.input[1], pv.input[1], pv.output[0])


def _fused_core(node: NodeProto, position: int) -> AttentionCore:
    qi, ki, vi = ATTENTION_OPS[node.op_type]

    def at(i: int) -> Optional[str]:
        return node.input[i] if len(node.input) > i and node.input[i] else None

    if node.op_type == "PackedAttention" or (node.op_type == "Attention" and node.domain == "com.microsoft"):
        return AttentionCore(node.name, position, None, None, None, node.output[0])  # weights inside the op
    q = at(qi)
    # key and value absent: a packed qkv in the query input
    return AttentionCore(node.name, position, q, at(ki) or q, at(vi) or q, node.output[0])


def attention_cores(walker: _Walker, nodes: Sequence[NodeProto]) -> List[AttentionCore]:
    cores = []
    for position, node in enumerate(nodes):
        if node.op_type in ATTENTION_OPS:
            cores.append(_fused_core(node, position))
        elif node.op_type == "Softmax":
            core = _softmax_core(walker, node, position)
            if core is not None:
                cores.append(core)
    return cores


def _attention_roles(walker: _Walker, core: AttentionCore, out: Structure, layer: int) -> None:
    sides = {r: set(walker.upstream(t)) if t else set() for r, t in (("q", core.query), ("k", core.key), ("v", core.value))}
    for role, keys in sides.items():
        for key in keys:
            fused = sum(key in other for other in sides.values()) > 1
            out.roles[key] = "qkv" if fused else role
            out.layers[key] = layer
    for key in walker.first_readers(core.output):
        if key not in out.roles:
            out.roles[key], out.layers[key] = "o", layer


#: nodes that move or re-encode data without computing on it
_MOVES = frozenset({"Reshape", "Cast", "Identity", "Flatten", "QuantizeLinear", "DequantizeLinear",
                    "DynamicQuantizeLinear"})


def _skip_moves(graph: Lookups, tensor: str) -> Optional[NodeProto]:
    node = graph.producer(tensor)
    while node is not None and node.op_type in _MOVES:
        node = graph.producer(node.input[0])
    return node


def _reads_norm(walker: _Walker, lin: Linear) -> bool:
    """True when ``lin`` reads a normalization's output (through data moves, quantize /
    dequantize pairs and a smoothing Mul by a constant): where an MLP starts."""
    t = lin.input
    for _ in range(8):
        node = walker.graph.producer(t)
        if node is None:
            return False
        if node.op_type in NORM_OPS or walker.is_norm(t):
            return True
        scaled = node.op_type == "Mul" and len(node.input) == 2 and walker.graph.is_constant(node.input[1])
        if node.op_type not in _MOVES and not scaled:
            return False
        t = node.input[0]
    return False


def _mlp_roles(walker: _Walker, down: Linear, out: Structure) -> Optional[Tuple[str, ...]]:
    """(down, gate, up) or (down, up) keys when ``down`` closes an MLP (its gate and up
    read a normalization), else None."""
    free = lambda key: key not in out.roles and _reads_norm(walker, walker.by_key[key])  # noqa: E731
    product = _skip_moves(walker.graph, down.input)
    if product is not None and product.op_type == "Mul" and not any(walker.graph.is_constant(i) for i in product.input):
        a, b = (walker.upstream(i) for i in product.input[:2])
        if len(a) == 1 and len(b) == 1 and set(a) != set(b):
            (ka, act_a), (kb, act_b) = next(iter(a.items())), next(iter(b.items()))
            if act_a != act_b and free(ka) and free(kb):
                gate, up = (ka, kb) if act_a else (kb, ka)
                return down.key, gate, up
    ups = walker.upstream(down.input)
    if len(ups) == 1:
        key, act = next(iter(ups.items()))
        if act and free(key):
            return down.key, key
    return None


def _layer_before(cores: Sequence[AttentionCore], position: int) -> Optional[int]:
    before = [i for i, c in enumerate(cores) if c.position < position]
    return before[-1] if before else None


def block_structure(graph: Lookups, consumers, nodes: Sequence[NodeProto], linears: Iterable[Linear],
                    vocab: Optional[int] = None) -> Structure:
    """Roles (q k v qkv o gate up down head) and block indices of ``linears`` in a graph
    whose ``nodes`` are in topological order; ``consumers(tensor)`` lists a tensor's
    readers; ``vocab``: the rows of the token embedding table (for the head)."""
    linears = list(linears)
    walker = _Walker(graph, consumers, linears)
    position = {n.name: i for i, n in enumerate(nodes)}
    out = Structure()
    out.cores = sorted(attention_cores(walker, nodes), key=lambda c: c.position)
    for layer, core in enumerate(out.cores):
        _attention_roles(walker, core, out, layer)
    for lin in linears:
        if lin.key in out.roles:
            continue
        found = _mlp_roles(walker, lin, out)
        if found is None:
            continue
        layer = _layer_before(out.cores, position.get(lin.key, -1))
        for key, role in zip(found, ("down", "gate", "up") if len(found) == 3 else ("down", "up")):
            out.roles[key] = role
            if layer is not None:
                out.layers[key] = layer
    outputs = set(graph.graph_outputs)
    for lin in linears:
        if lin.key not in out.roles and vocab is not None and lin.N == vocab and _reaches_output(walker, lin, outputs):
            out.roles[lin.key] = "head"
    out.num_layers = len(out.cores) or None
    return out


def _reaches_output(walker: _Walker, lin: Linear, outputs: Set[str]) -> bool:
    """True when ``lin``'s output flows to a graph output through no other linear layer,
    normalization or attention."""
    stack, seen = [lin.output], set()
    while stack and len(seen) < _WALK_LIMIT:
        t = stack.pop()
        if t in outputs:
            return True
        if t in seen or t in walker.by_input:
            continue
        seen.add(t)
        for node in walker.consumers(t):
            if node.op_type not in _BARRIERS and node.output and not walker.is_norm(node.output[0]):
                stack.extend(o for o in node.output if o)
    return False
