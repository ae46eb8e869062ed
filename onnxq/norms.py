"""Normalizations as exporters write them, recognised by structure.

Each form is a rule in the style of onnxscript's rewriter: a *pattern* (the nodes that
produce the normalized tensor), a *check* (the scale and bias are per-channel constants,
the reduction runs over the last axis, ...) and what a caller may change: the inputs that
hold the scale (gamma) and the bias (beta). A rule that does not match says why.

=====================================  ===============================================================
form                                   pattern (X is the normalized output)
=====================================  ===============================================================
``LayerNormalization``                 the op (default domain), gamma input 1, beta input 2
``SimplifiedLayerNormalization``       the op (onnxruntime's RMSNorm), gamma input 1
``RMSNormalization``                   the op (opset 23), gamma input 1
``SkipLayerNormalization``             com.microsoft: (x, skip, gamma, beta, bias); output 0 only —
                                       mean, inv std dev and the residual sum x+skip+bias (outputs
                                       1-3) do not depend on gamma/beta
``SkipSimplifiedLayerNormalization``   com.microsoft: (x, skip, gamma, bias); output 0 only
decomposed RMSNorm                     ``Mul(w, [Cast] Mul(x, R))`` with R = ``Reciprocal(Sqrt(E))`` or
                                       ``Div(1, Sqrt(E))``, or ``Mul(w, Div(x, Sqrt(E)))``;
                                       E = ``Add(ReduceMean(Pow(x, 2) | Mul(x, x)), eps)`` (torch
                                       dynamo: Reciprocal; optimum: Div and Casts)
decomposed LayerNorm                   ``Add(Mul(D / Sqrt(E), g), b)`` (or without b), D = ``Sub(x,
                                       ReduceMean(x))``, E as above over D
=====================================  ===============================================================

Outputs 1-3 of the fused ops are never touched by changing gamma/beta, so a fold into
them is exact for the residual stream as long as output 0 itself feeds only the layers
being scaled (the caller checks that).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Protocol, Sequence, Tuple, Union

import numpy as np
import onnx
from onnx import NodeProto, helper

__all__ = ["NormMatch", "NoMatch", "NORM_OPS", "match_norm", "find_norms", "per_channel"]

#: fused normalization op -> (gamma input index, beta input index or None)
NORM_OPS = {
    "LayerNormalization": (1, 2),
    "SimplifiedLayerNormalization": (1, None),
    "RMSNormalization": (1, None),
    "SkipLayerNormalization": (2, 3),
    "SkipSimplifiedLayerNormalization": (2, None),
}

_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)


class Lookups(Protocol):
    """What the rules read of a graph (:class:`onnxq.sites.ModelGraph` has it)."""

    graph_outputs: set

    def producer(self, tensor: str) -> Optional[NodeProto]: ...

    def is_constant(self, name: str) -> bool: ...

    def constant_shape(self, name: str) -> Optional[Tuple[int, ...]]: ...

    def constant_dtype(self, name: str) -> Optional[int]: ...

    def constant_value(self, name: str, base_dir: Optional[str] = None) -> np.ndarray: ...


@dataclass(frozen=True)
class NormMatch:
    """A normalization producing ``output``; ``scale`` / ``bias``: (node, input index) of
    its per-channel gamma and beta (bias None when it has none)."""

    kind: str
    output: str
    scale: Tuple[NodeProto, int]
    bias: Optional[Tuple[NodeProto, int]]
    #: every node of the pattern (the last one produces ``output``)
    nodes: Tuple[NodeProto, ...]


@dataclass(frozen=True)
class NoMatch:
    """Why no rule matched (``rule`` names the closest one)."""

    rule: str
    reason: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.reason}"


Result = Union[NormMatch, NoMatch]


def _attr(node: NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def per_channel(graph: Lookups, name: str, k: Optional[int]) -> Optional[str]:
    """None when ``name`` is a float constant that varies along the last axis only ([K] or
    [1, .., K]; [1] and scalars too), else the reason it is not. ``k`` None: any width."""
    if not name:
        return "missing"
    if not graph.is_constant(name):
        return f"{name!r} is not a constant"
    if graph.constant_dtype(name) not in _FLOATS:
        return f"{name!r} is not float"
    shape = graph.constant_shape(name) or ()
    if any(d != 1 for d in shape[:-1]):
        return f"{name!r} has shape {list(shape)}, expected [K] (per channel)"
    if shape and k is not None and shape[-1] not in (1, k):
        return f"{name!r} has {shape[-1]} channels, expected {k}"
    return None


def _scalar(graph: Lookups, name: str) -> Optional[float]:
    if not graph.is_constant(name):
        return None
    shape = graph.constant_shape(name)
    if shape is None or int(np.prod(shape, dtype=np.int64)) != 1:
        return None
    return float(np.asarray(graph.constant_value(name)).reshape(-1)[0])


def _op(graph: Lookups, tensor: str, *ops: str) -> Optional[NodeProto]:
    node = graph.producer(tensor)
    return node if node is not None and node.op_type in ops else None


def _skip_casts(graph: Lookups, tensor: str) -> str:
    """The tensor a chain of Casts starts from (exporters cast to float32 and back)."""
    node = graph.producer(tensor)
    while node is not None and node.op_type == "Cast":
        tensor = node.input[0]
        node = graph.producer(tensor)
    return tensor


def _other(node: NodeProto, tensor: str) -> str:
    return node.input[1] if node.input[0] == tensor else node.input[0]


# ----------------------------------------------------------------------------- fused ops


def _fused(graph: Lookups, x: str, k: Optional[int]) -> Optional[Result]:
    node = graph.producer(x)
    if node is None or node.op_type not in NORM_OPS:
        return None
    kind = node.op_type
    if node.output[0] != x:
        return NoMatch(kind, f"{x!r} is output {list(node.output).index(x)} of {node.name!r}, not the normalized output")
    si, bi = NORM_OPS[kind]
    if len(node.input) <= si:
        return NoMatch(kind, f"{node.name!r} has no scale input")
    reason = per_channel(graph, node.input[si], k)
    if reason is not None:
        return NoMatch(kind, f"scale {reason}")
    bias = None
    if bi is not None and len(node.input) > bi and node.input[bi]:
        reason = per_channel(graph, node.input[bi], k)
        if reason is not None:
            return NoMatch(kind, f"bias {reason}")
        bias = (node, bi)
    return NormMatch(kind, x, (node, si), bias, (node,))


# ----------------------------------------------------------------------------- decomposed


def _reduce_axes(graph: Lookups, node: NodeProto) -> Optional[List[int]]:
    axes = _attr(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1] and graph.is_constant(node.input[1]):
        axes = np.asarray(graph.constant_value(node.input[1])).reshape(-1).tolist()
    return None if axes is None else [int(a) for a in axes]


def _mean_over_last(graph: Lookups, node: NodeProto) -> Optional[str]:
    """None when a ReduceMean averages over the last axis only, keeping it, else why not."""
    axes = _reduce_axes(graph, node)
    if axes != [-1]:
        return f"ReduceMean {node.name!r} reduces axes {axes}, expected [-1]"
    if int(_attr(node, "keepdims", 1)) != 1:
        return f"ReduceMean {node.name!r} has keepdims=0"
    return None


def _variance_of(graph: Lookups, sqrt_in: str) -> Tuple[Optional[str], str]:
    """(the tensor whose mean square is taken, or None; reason) for E = Add(ReduceMean(sq), eps)."""
    add = _op(graph, sqrt_in, "Add")
    if add is None:
        return None, "Sqrt does not read Add(mean, eps)"
    mean = next((n for n in (graph.producer(t) for t in add.input) if n is not None and n.op_type == "ReduceMean"), None)
    if mean is None or _scalar(graph, _other(add, mean.output[0])) is None:
        return None, "Sqrt does not read Add(ReduceMean(..), constant eps)"
    reason = _mean_over_last(graph, mean)
    if reason is not None:
        return None, reason
    sq = graph.producer(mean.input[0])
    if sq is not None and sq.op_type == "Pow" and _scalar(graph, sq.input[1]) == 2.0:
        return _skip_casts(graph, sq.input[0]), ""
    if sq is not None and sq.op_type == "Mul" and sq.input[0] == sq.input[1]:
        return _skip_casts(graph, sq.input[0]), ""
    return None, "ReduceMean does not read Pow(x, 2) or Mul(x, x)"


def _normalized(graph: Lookups, y: str) -> Tuple[Optional[str], str]:
    """(x, "") when ``y`` = x / sqrt(mean(x²) + eps) in one of the exported spellings, else
    (None, reason). ``x`` is returned with its Casts skipped."""
    y = _skip_casts(graph, y)
    node = graph.producer(y)
    if node is None or node.op_type not in ("Mul", "Div"):
        return None, f"{y!r} is not Mul(x, 1/sqrt(..)) or Div(x, sqrt(..))"
    if node.op_type == "Div":
        x, root = node.input[0], node.input[1]
        sqrt = _op(graph, root, "Sqrt")
    else:
        sqrt = None
        x = root = ""
        for cand, other in ((node.input[1], node.input[0]), (node.input[0], node.input[1])):
            inv = graph.producer(cand)
            if inv is not None and inv.op_type == "Reciprocal":
                sqrt, x = _op(graph, inv.input[0], "Sqrt"), other
            elif inv is not None and inv.op_type == "Div" and _scalar(graph, inv.input[0]) == 1.0:
                sqrt, x = _op(graph, inv.input[1], "Sqrt"), other
            if sqrt is not None:
                break
    if sqrt is None:
        return None, f"{node.op_type} {node.name!r} does not divide by Sqrt(mean square + eps)"
    squared, reason = _variance_of(graph, sqrt.input[0])
    if squared is None:
        return None, reason
    if squared != _skip_casts(graph, x):
        return None, f"the mean square is of {squared!r}, the division of {x!r}"
    return _skip_casts(graph, x), ""


def _decomposed(graph: Lookups, x: str, k: Optional[int]) -> Optional[Result]:
    """RMSNorm ``Mul(w, norm)`` or LayerNorm ``Add(Mul(norm, g), b)`` / ``Mul(norm, g)``."""
    node = graph.producer(x)
    if node is None or node.op_type not in ("Mul", "Add"):
        return None
    bias: Optional[Tuple[NodeProto, int]] = None
    nodes: List[NodeProto] = []
    mul = node
    if node.op_type == "Add":
        consts = [i for i, t in enumerate(node.input) if graph.is_constant(t)]
        if len(consts) != 1:
            return None
        inner = graph.producer(node.input[1 - consts[0]])
        if inner is None or inner.op_type != "Mul":
            return None
        reason = per_channel(graph, node.input[consts[0]], k)
        if reason is not None:
            return NoMatch("decomposed LayerNorm", f"bias {reason}")
        bias, mul, nodes = (node, consts[0]), inner, [node]
    consts = [i for i, t in enumerate(mul.input) if graph.is_constant(t)]
    if len(consts) != 1:
        return None
    ci = consts[0]
    inner_x, why = _normalized(graph, mul.input[1 - ci])
    if inner_x is None:
        return NoMatch("decomposed norm", why)
    centered = graph.producer(inner_x)
    is_ln = (centered is not None and centered.op_type == "Sub"
             and _op(graph, centered.input[1], "ReduceMean") is not None
             and _skip_casts(graph, graph.producer(centered.input[1]).input[0]) == _skip_casts(graph, centered.input[0]))
    kind = "decomposed LayerNorm" if is_ln else "decomposed RMSNorm"
    if bias is not None and not is_ln:
        return NoMatch(kind, "an RMSNorm (no mean subtracted) followed by a bias Add")
    reason = per_channel(graph, mul.input[ci], k)
    if reason is not None:
        return NoMatch(kind, f"scale {reason}")
    return NormMatch(kind, x, (mul, ci), bias, tuple([mul] + nodes))


RULES = (_fused, _decomposed)


def match_norm(graph: Lookups, x: str, k: Optional[int] = None) -> Result:
    """The normalization that produces ``x`` (gamma/beta per channel of width ``k``), or
    why ``x``'s producer is not one."""
    for rule in RULES:
        found = rule(graph, x, k)
        if found is not None:
            return found
    node = graph.producer(x)
    what = f"{node.op_type} {node.name!r}" if node is not None else "a graph input"
    return NoMatch("norm", f"{x!r} is produced by {what}, not a normalization")


def find_norms(graph: Lookups, nodes: Sequence[NodeProto]) -> List[NormMatch]:
    """Every normalization in ``nodes`` (graph order): fused ops and decomposed forms."""
    found: Dict[int, NormMatch] = {}
    for node in nodes:
        if (node.op_type in NORM_OPS or node.op_type in ("Mul", "Add")) and node.output and node.output[0]:
            m = match_norm(graph, node.output[0])
            if isinstance(m, NormMatch):
                # a decomposed LayerNorm's Mul(norm, g) matches on its own; its Add(.., b) comes
                # later in graph order and replaces it
                found[id(m.scale[0])] = m
    return list(found.values())
