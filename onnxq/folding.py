"""Fold 1/s into the producer of a smoothed activation: rewrite rules.

Each rule is a pattern on the producer of the activation X that a group of linear sites
consumes, a check, and a replacement that makes the producer emit X' = X / s exactly; a
rule that does not apply says why (:class:`NoFold`):

==========================  ==================================================================
rule                        pattern -> replacement
==========================  ==================================================================
``NormScaleRule``           a normalization as exporters write it (:mod:`onnxq.norms`):
                            LayerNormalization / SimplifiedLayerNormalization / RMSNormalization /
                            Skip(Simplified)LayerNormalization (output 0; the residual sum and
                            statistics outputs stay as they are), decomposed RMSNorm (Pow /
                            ReduceMean / Add eps / Sqrt / Reciprocal or Div, Mul by the weight)
                            and decomposed LayerNorm (.. Mul by gamma, Add beta):
                            gamma -> gamma / s, beta -> beta / s
``AddOfMulRule``            Add(Mul(Z, g), b) with constant g, b: g -> g / s, b -> b / s
``MulConstRule``            Mul(Z, c) with a constant c [K]: c -> c / s
``LinearOutputMulRule``     Mul(A, B) where B is the sole use of a linear site's output (SwiGLU's
                            act(gate) * up): that site's weight columns and bias -> / s
``ExplicitMul``             anything else: a new Mul(X, 1/s) feeding only the quantized sites
==========================  ==================================================================

A fold is only legal when every node that reads X's values is a linear site of the group
(a residual branch reading a norm's output would otherwise change; Shape / Size read only
the shape and do not count); rules check that and the fallback is the explicit Mul.
Constants shared with other nodes are never changed in place: the folded node gets a new
initializer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Optional, Sequence, Union

import numpy as np
import onnx
from onnx import NodeProto, helper, numpy_helper

from .graph_edit import all_names, unique_name
from .norms import NormMatch, match_norm, per_channel
from .sites import LinearSite, ModelGraph, bias_vector, weight_matrix_kn

__all__ = [
    "FoldContext",
    "Fold",
    "NoFold",
    "find_fold",
    "FoldRule",
    "NormScaleRule",
    "AddOfMulRule",
    "MulConstRule",
    "LinearOutputMulRule",
    "RULES",
    "match_fold",
    "insert_explicit_mul",
    "SiteWeights",
]


@dataclass
class FoldContext:
    """What rules need: the working model, its lookups, the float weights/biases of the
    linear sites (which folds may change before quantization) and a name allocator."""

    model: onnx.ModelProto
    graph: ModelGraph
    sites_by_output: Dict[str, LinearSite]
    float_weights: Callable[[LinearSite], np.ndarray]
    float_biases: Callable[[LinearSite], Optional[np.ndarray]]
    set_site_weight: Callable[[LinearSite, np.ndarray, Optional[np.ndarray]], None]
    base_dir: Optional[str] = None
    taken: Optional[set] = None

    def constant(self, name: str) -> np.ndarray:
        return np.array(self.graph.constant_value(name, self.base_dir), dtype=np.float32)

    def replace_input(self, node: NodeProto, index: int, value: np.ndarray, dtype=None) -> str:
        """Point ``node.input[index]`` at a new initializer holding ``value`` (in the
        original's dtype), leaving the old constant to whoever else uses it."""
        old = node.input[index]
        orig_dtype = self.graph.constant_dtype(old)
        np_dtype = dtype or (helper.tensor_dtype_to_np_dtype(orig_dtype) if orig_dtype else np.float32)
        if self.taken is None:
            self.taken = all_names(self.model)
        name = unique_name(self.model, f"{old}_smoothed", self.taken)
        self.model.graph.initializer.append(numpy_helper.from_array(np.asarray(value).astype(np_dtype), name))
        node.input[index] = name
        return name


@dataclass
class Fold:
    """A matched rule: ``apply(ctx, s)`` makes the producer output X / s."""

    rule: "FoldRule"
    node: NodeProto
    extra: Optional[LinearSite] = None  # the site whose output columns absorb 1/s
    norm: Optional[NormMatch] = None  # the normalization whose gamma/beta absorb 1/s

    @property
    def kind(self) -> str:
        return self.rule.kind(self)

    def apply(self, ctx: FoldContext, s: np.ndarray) -> None:
        self.rule.apply(self, ctx, np.asarray(s, np.float32))


@dataclass(frozen=True)
class NoFold:
    """Why 1/s cannot go into X's producer (the caller inserts an explicit Mul)."""

    reason: str

    def __str__(self) -> str:
        return self.reason


class FoldRule:
    """Base: ``match(ctx, x, k)`` returns a :class:`Fold` or None."""

    name = "rule"

    def match(self, ctx: FoldContext, x: str, k: int) -> Optional[Fold]:  # pragma: no cover - interface
        raise NotImplementedError

    def apply(self, fold: Fold, ctx: FoldContext, s: np.ndarray) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def kind(self, fold: Fold) -> str:
        return f"{self.name}:{fold.node.op_type}"


def _per_channel_const(ctx: FoldContext, name: str, k: int, allow_scalar: bool = True) -> bool:
    """A constant that broadcasts along the last axis only: [K] or [1, .., K] (and, with
    ``allow_scalar``, a scalar or [1, .., 1])."""
    if per_channel(ctx.graph, name, k) is not None:
        return False
    shape = ctx.graph.constant_shape(name) or ()
    return allow_scalar or (len(shape) > 0 and shape[-1] == k)


def _single_const(ctx: FoldContext, node: Optional[NodeProto], op: str, k: int) -> Optional[int]:
    """Index of the one per-channel constant input (K entries, no scalar) of a binary ``op``
    node, else None."""
    if node is None or node.op_type != op or len(node.input) != 2:
        return None
    consts = [i for i, t in enumerate(node.input) if _per_channel_const(ctx, t, k, allow_scalar=False)]
    return consts[0] if len(consts) == 1 else None


def _divided(value: np.ndarray, s: np.ndarray) -> np.ndarray:
    """value / s broadcast to [..., K] keeping value's rank (at least 1)."""
    v = np.asarray(value, np.float32)
    shape = (1,) * max(v.ndim - 1, 0) + (s.shape[0],)
    return (np.broadcast_to(v.reshape(v.shape if v.ndim else (1,)), shape) / s).reshape(shape)


class NormScaleRule(FoldRule):
    """A normalization (fused op or decomposed, :func:`onnxq.norms.match_norm`) with a
    per-channel constant gamma (and beta): whatever the normalized axes, gamma/beta that
    vary along the last axis only make the output exactly (normalized * gamma + beta) / s
    after dividing both by s."""

    name = "norm"

    def match(self, ctx: FoldContext, x: str, k: int) -> Optional[Fold]:
        found = match_norm(ctx.graph, x, k)
        return Fold(self, found.scale[0], norm=found) if isinstance(found, NormMatch) else None

    def apply(self, fold: Fold, ctx: FoldContext, s: np.ndarray) -> None:
        norm = fold.norm
        assert norm is not None
        for node, index in (norm.scale,) + ((norm.bias,) if norm.bias is not None else ()):
            ctx.replace_input(node, index, _divided(ctx.constant(node.input[index]), s))

    def kind(self, fold: Fold) -> str:
        return f"norm:{fold.norm.kind if fold.norm else fold.node.op_type}"


class _ConstOperandRule(FoldRule):
    """``op(Z, c)`` with one per-channel constant operand c [K]: c -> c / s, plus whatever
    the other operand needs (:meth:`other_ok`, :meth:`apply_other`)."""

    op = ""

    def other_ok(self, ctx: FoldContext, other: str, k: int) -> bool:
        return True

    def apply_other(self, ctx: FoldContext, other: str, s: np.ndarray) -> None:
        pass

    def match(self, ctx: FoldContext, x: str, k: int) -> Optional[Fold]:
        node = ctx.graph.producer(x)
        i = _single_const(ctx, node, self.op, k)
        if i is None or not self.other_ok(ctx, node.input[1 - i], k):
            return None
        return Fold(self, node)

    def apply(self, fold: Fold, ctx: FoldContext, s: np.ndarray) -> None:
        node = fold.node
        i = _single_const(ctx, node, self.op, s.shape[0])
        ctx.replace_input(node, i, _divided(ctx.constant(node.input[i]), s))
        self.apply_other(ctx, node.input[1 - i], s)


class MulConstRule(_ConstOperandRule):
    """Mul(Z, c) with a per-channel constant c (decomposed RMSNorm's final Mul by its weight).

    A scalar Mul is not taken: it is usually part of an activation (GELU's
    x * 0.5 * (1 + erf)) that onnxruntime fuses only while the scalar is as exported."""

    name = "mul"
    op = "Mul"

    def other_ok(self, ctx: FoldContext, other: str, k: int) -> bool:
        return not ctx.graph.is_constant(other)


class AddOfMulRule(_ConstOperandRule):
    """Add(Mul(Z, g), b) with constant per-channel g and b (decomposed LayerNorm's affine)."""

    name = "add-mul"
    op = "Add"

    def other_ok(self, ctx: FoldContext, other: str, k: int) -> bool:
        mul = ctx.graph.producer(other)
        if mul is None or len(ctx.graph.consumers(other)) != 1 or other in ctx.graph.graph_outputs:
            return False
        return MulConstRule().match(ctx, other, k) is not None

    def apply_other(self, ctx: FoldContext, other: str, s: np.ndarray) -> None:
        MulConstRule().apply(Fold(MulConstRule(), ctx.graph.producer(other)), ctx, s)

    def kind(self, fold: Fold) -> str:
        return "add-mul:Add(Mul)"


class LinearOutputMulRule(FoldRule):
    """Mul(act(gate), up) where ``up`` is a linear site's output used only here: X / s is
    exact by dividing that site's output columns (weight columns and bias) by s."""

    name = "linear-output"

    def match(self, ctx: FoldContext, x: str, k: int) -> Optional[Fold]:
        node = ctx.graph.producer(x)
        if node is None or node.op_type != "Mul" or len(node.input) != 2 or node.input[0] == node.input[1]:
            return None
        for t in node.input:
            if t not in ctx.sites_by_output:
                # a Gemm site's output usually comes back through a Reshape to [B, S, N]
                t = _channel_preserving_reshape_input(ctx, t, k) or t
            site = ctx.sites_by_output.get(t)
            if site is None or site.N != k:
                continue
            if len(ctx.graph.consumers(t)) != 1 or t in ctx.graph.graph_outputs:
                continue
            return Fold(self, node, extra=site)
        return None

    def apply(self, fold: Fold, ctx: FoldContext, s: np.ndarray) -> None:
        site = fold.extra
        assert site is not None
        w = ctx.float_weights(site) / s[None, :]
        b = ctx.float_biases(site)
        ctx.set_site_weight(site, w, None if b is None else b / s)

    def kind(self, fold: Fold) -> str:
        return f"linear-output:{fold.extra.name if fold.extra else '?'}"


RULES: Sequence[FoldRule] = (NormScaleRule(), AddOfMulRule(), MulConstRule(), LinearOutputMulRule())


#: ops that read only the shape of their input, not its values
SHAPE_READERS = ("Shape", "Size")


def find_fold(ctx: FoldContext, x: str, k: int, group_nodes: Sequence[str]) -> Union[Fold, NoFold]:
    """The first rule that folds 1/s into X's producer, or why none can: X is a graph
    output or input, X's values are read by a node outside ``group_nodes`` (the group's
    MatMul/Gemm nodes), or no rule matches its producer."""
    if x in ctx.graph.graph_outputs or x in ctx.graph.graph_inputs:
        return NoFold(f"{x!r} is a graph {'output' if x in ctx.graph.graph_outputs else 'input'}")
    allowed = set(group_nodes)
    others = [c for c in ctx.graph.consumers(x) if c.name not in allowed and c.op_type not in SHAPE_READERS]
    if others:
        return NoFold(f"{x!r} also feeds {others[0].op_type} {others[0].name!r} (e.g. a residual branch): "
                      "dividing it by s would change that too")
    for _ in range(3):
        for rule in RULES:
            fold = rule.match(ctx, x, k)
            if fold is not None:
                return fold
        # look through a Reshape that keeps the channel axis (e.g. [B, S, K] -> [B*S, K]
        # before a Gemm): scaling channels commutes with it
        reshaped = _channel_preserving_reshape_input(ctx, x, k)
        if reshaped is None:
            break
        x = reshaped
    norm = match_norm(ctx.graph, x, k)
    node = ctx.graph.producer(x)
    what = f"{node.op_type} {node.name!r}" if node is not None else "no node"
    specific = f" ({norm})" if norm.rule != "norm" else ""
    return NoFold(f"{x!r} is produced by {what}: not a normalization{specific}, a Mul by a per-channel constant "
                  "or a product with a linear layer's output")


def match_fold(ctx: FoldContext, x: str, k: int, group_nodes: Sequence[str]) -> Optional[Fold]:
    """:func:`find_fold`, None where it gives a reason."""
    found = find_fold(ctx, x, k, group_nodes)
    return found if isinstance(found, Fold) else None


def _channel_preserving_reshape_input(ctx: FoldContext, x: str, k: int) -> Optional[str]:
    node = ctx.graph.producer(x)
    if node is None or node.op_type != "Reshape" or not ctx.graph.is_constant(node.input[1]):
        return None
    shape = ctx.graph.constant_value(node.input[1], ctx.base_dir).reshape(-1)
    if shape.size == 0 or int(shape[-1]) != k:
        return None
    src = node.input[0]
    readers = [c for c in ctx.graph.consumers(src) if c.op_type not in SHAPE_READERS]
    if src in ctx.graph.graph_outputs or src in ctx.graph.graph_inputs or len(readers) != 1:
        return None
    # the rules below only match producers whose per-channel constant has K entries, which
    # pins the reshape's input to a last axis of K as well
    return src


def insert_explicit_mul(ctx: FoldContext, x: str, s: np.ndarray, consumers: Sequence[NodeProto], label: str) -> str:
    """Add ``X' = Mul(X, 1/s)`` and point ``consumers`` at X'; returns X'."""
    if ctx.taken is None:
        ctx.taken = all_names(ctx.model)
    inv = unique_name(ctx.model, f"{label}/smooth_inv_scale", ctx.taken)
    out = unique_name(ctx.model, f"{label}/smoothed_input", ctx.taken)
    node_name = unique_name(ctx.model, f"{label}/SmoothMul", ctx.taken)
    ctx.model.graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), inv))
    ctx.model.graph.node.append(helper.make_node("Mul", [x, inv], [out], name=node_name))
    for node in consumers:
        for i, t in enumerate(node.input):
            if t == x:
                node.input[i] = out
    return out


class SiteWeights:
    """Float weights [K, N] and biases of linear sites, read once, changed by folds and
    scalings, and written back (in stored orientation) for the sites that stay float."""

    def __init__(self, model: onnx.ModelProto, graph: ModelGraph, base_dir: Optional[str]) -> None:
        self.model, self.graph, self.base_dir = model, graph, base_dir
        self.w: Dict[str, np.ndarray] = {}
        self.b: Dict[str, Optional[np.ndarray]] = {}
        self.dirty: Dict[str, LinearSite] = {}

    def weight(self, site: LinearSite) -> np.ndarray:
        if site.name not in self.w:
            self.w[site.name] = weight_matrix_kn(self.graph, site, self.base_dir)
        return self.w[site.name]

    def bias(self, site: LinearSite) -> Optional[np.ndarray]:
        if site.name not in self.b:
            self.b[site.name] = bias_vector(self.graph, site, self.base_dir)
        return self.b[site.name]

    def set(self, site: LinearSite, w: np.ndarray, b: Optional[np.ndarray]) -> None:
        self.w[site.name] = np.asarray(w, np.float32)
        self.b[site.name] = None if b is None else np.asarray(b, np.float32)
        self.dirty[site.name] = site

    def scale_rows(self, site: LinearSite, s: np.ndarray) -> None:
        """W <- diag(s) W: the site now reads X / s and computes the same function."""
        self.set(site, self.weight(site) * s[:, None], self.bias(site))

    def context(self, sites: Iterable[LinearSite], taken: Optional[set] = None) -> FoldContext:
        """A :class:`FoldContext` over this model whose folds change these float weights."""
        return FoldContext(
            model=self.model, graph=self.graph, sites_by_output={s.output: s for s in sites},
            float_weights=self.weight, float_biases=self.bias, set_site_weight=self.set,
            base_dir=self.base_dir, taken=all_names(self.model) if taken is None else taken,
        )

    def write_back(self, ctx: FoldContext, skip: Iterable[str] = ()) -> None:
        """Store changed float weights/biases of every site not in ``skip`` in the model."""
        skip = set(skip)
        for name, site in list(self.dirty.items()):
            if name in skip:
                continue
            self._store_weight(ctx, site, self.w[name])
            b = self.b.get(name)
            if site.bias is not None and b is not None:
                self._store_bias(ctx, site, b)
            del self.dirty[name]

    def _store_weight(self, ctx: FoldContext, site: LinearSite, w: np.ndarray) -> None:
        node = self.graph.node(site.name)
        if site.gemm_alpha != 1.0:
            w = w / np.float32(site.gemm_alpha)
        stored = np.ascontiguousarray(w.T if site.weight_transposed else w)
        if site.op_type == "MatMul" and site.weight_transposed:
            ctx.replace_input(self.graph.producer(node.input[1]), 0, stored)
        else:
            ctx.replace_input(node, 1, stored)

    def _store_bias(self, ctx: FoldContext, site: LinearSite, b: np.ndarray) -> None:
        if site.gemm_beta != 1.0:
            b = b / np.float32(site.gemm_beta)
        shape = self.graph.constant_shape(site.bias)
        if site.op_type == "Gemm":
            node, idx = self.graph.node(site.name), 2
            value = b.reshape(shape) if shape and int(np.prod(shape)) == b.size else b
        else:
            node = self.graph.node(site.nodes[-1])
            idx = list(node.input).index(site.bias)
            value = b.reshape(shape) if shape else b
        ctx.replace_input(node, idx, value)
