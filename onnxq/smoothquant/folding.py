"""Fold 1/s into the producer of a smoothed activation: rewrite rules.

Each rule is a pattern on the producer of the activation X that a group of linear sites
consumes, and a replacement that makes the producer emit X' = X / s exactly:

==========================  ==================================================================
rule                        pattern -> replacement
==========================  ==================================================================
``NormScaleRule``           LayerNormalization / SimplifiedLayerNormalization / RMSNormalization /
                            Skip(Simplified)LayerNormalization with constant gamma (and beta):
                            gamma -> gamma / s, beta -> beta / s
``AddOfMulRule``            Add(Mul(Z, g), b) with constant g, b (decomposed LayerNorm):
                            g -> g / s, b -> b / s
``MulConstRule``            Mul(Z, c) with a constant c [K] (decomposed RMSNorm's
                            final Mul by its weight): c -> c / s
``LinearOutputMulRule``     Mul(A, B) where B is the sole use of a linear site's output (SwiGLU's
                            act(gate) * up): that site's weight columns and bias -> / s
``ExplicitMul``             anything else: a new Mul(X, 1/s) feeding only the quantized sites
==========================  ==================================================================

A fold is only legal when every consumer of X is a linear site of the group (a residual
branch reading a norm's output would otherwise change); rules check that and the
fallback is the explicit Mul. Constants shared with other nodes are never changed in
place: the folded node gets a new initializer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import onnx
from onnx import NodeProto, helper, numpy_helper

from ..analyze import LinearSite, ModelGraph
from ..graph_edit import all_names, unique_name

__all__ = [
    "FoldContext",
    "Fold",
    "FoldRule",
    "NormScaleRule",
    "AddOfMulRule",
    "MulConstRule",
    "LinearOutputMulRule",
    "RULES",
    "match_fold",
    "insert_explicit_mul",
    "unique_name",
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

    @property
    def kind(self) -> str:
        return self.rule.kind(self)

    def apply(self, ctx: FoldContext, s: np.ndarray) -> None:
        self.rule.apply(self, ctx, np.asarray(s, np.float32))


class FoldRule:
    """Base: ``match(ctx, x, k)`` returns a :class:`Fold` or None."""

    name = "rule"

    def match(self, ctx: FoldContext, x: str, k: int) -> Optional[Fold]:  # pragma: no cover - interface
        raise NotImplementedError

    def apply(self, fold: Fold, ctx: FoldContext, s: np.ndarray) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def kind(self, fold: Fold) -> str:
        return f"{self.name}:{fold.node.op_type}"


def _attr(node: NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _per_channel_const(ctx: FoldContext, name: str, k: int, allow_scalar: bool = True) -> bool:
    """A constant that broadcasts along the last axis only: [K] or [1, .., K] (and, with
    ``allow_scalar``, a scalar or [1, .., 1])."""
    if not ctx.graph.is_constant(name):
        return False
    shape = ctx.graph.constant_shape(name)
    if shape is None:
        return False
    if ctx.graph.constant_dtype(name) not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE):
        return False
    if len(shape) == 0:
        return allow_scalar
    if not all(d == 1 for d in shape[:-1]):
        return False
    return shape[-1] == k or (allow_scalar and shape[-1] == 1)


def _divided(value: np.ndarray, s: np.ndarray) -> np.ndarray:
    """value / s broadcast to [..., K] keeping value's rank (at least 1)."""
    v = np.asarray(value, np.float32)
    shape = (1,) * max(v.ndim - 1, 0) + (s.shape[0],)
    return (np.broadcast_to(v.reshape(v.shape if v.ndim else (1,)), shape) / s).reshape(shape)


class NormScaleRule(FoldRule):
    """Normalization ops with a constant scale (gamma) and optional bias (beta)."""

    name = "norm"
    # op -> (scale input index, bias input index or None)
    OPS = {
        "LayerNormalization": (1, 2),
        "SimplifiedLayerNormalization": (1, None),
        "RMSNormalization": (1, None),
        "SkipLayerNormalization": (2, 3),
        "SkipSimplifiedLayerNormalization": (2, None),
    }

    def match(self, ctx: FoldContext, x: str, k: int) -> Optional[Fold]:
        node = ctx.graph.producer(x)
        if node is None or node.op_type not in self.OPS or node.output[0] != x:
            return None
        # whatever the normalized axes, gamma/beta that vary along the last axis only make
        # the output exactly (normalized * gamma + beta) / s after dividing both by s
        si, bi = self.OPS[node.op_type]
        if len(node.input) <= si or not _per_channel_const(ctx, node.input[si], k):
            return None
        if bi is not None and len(node.input) > bi and node.input[bi] and not _per_channel_const(ctx, node.input[bi], k):
            return None
        return Fold(self, node)

    def apply(self, fold: Fold, ctx: FoldContext, s: np.ndarray) -> None:
        node = fold.node
        si, bi = self.OPS[node.op_type]
        ctx.replace_input(node, si, _divided(ctx.constant(node.input[si]), s))
        if bi is not None and len(node.input) > bi and node.input[bi]:
            ctx.replace_input(node, bi, _divided(ctx.constant(node.input[bi]), s))


class MulConstRule(FoldRule):
    """Mul(Z, c) with a per-channel or scalar constant c."""

    name = "mul"

    def match(self, ctx: FoldContext, x: str, k: int) -> Optional[Fold]:
        node = ctx.graph.producer(x)
        if node is None or node.op_type != "Mul" or len(node.input) != 2:
            return None
        # per-channel constants only: a scalar Mul is usually part of an activation
        # (GELU's x * 0.5 * (1 + erf)) that onnxruntime fuses only while the scalar is as exported
        consts = [i for i, t in enumerate(node.input) if _per_channel_const(ctx, t, k, allow_scalar=False)]
        if len(consts) != 1 or ctx.graph.is_constant(node.input[1 - consts[0]]):
            return None
        return Fold(self, node)

    def apply(self, fold: Fold, ctx: FoldContext, s: np.ndarray) -> None:
        node = fold.node
        i = next(i for i, t in enumerate(node.input) if _per_channel_const(ctx, t, s.shape[0], allow_scalar=False))
        ctx.replace_input(node, i, _divided(ctx.constant(node.input[i]), s))


class AddOfMulRule(FoldRule):
    """Add(Mul(Z, g), b) with constant per-channel g and b (decomposed LayerNorm's affine)."""

    name = "add-mul"

    def match(self, ctx: FoldContext, x: str, k: int) -> Optional[Fold]:
        add = ctx.graph.producer(x)
        if add is None or add.op_type != "Add" or len(add.input) != 2:
            return None
        consts = [i for i, t in enumerate(add.input) if _per_channel_const(ctx, t, k, allow_scalar=False)]
        if len(consts) != 1:
            return None
        other = add.input[1 - consts[0]]
        mul = ctx.graph.producer(other)
        if mul is None or mul.op_type != "Mul" or len(ctx.graph.consumers(other)) != 1 or other in ctx.graph.graph_outputs:
            return None
        if MulConstRule().match(ctx, other, k) is None:
            return None
        return Fold(self, add)

    def apply(self, fold: Fold, ctx: FoldContext, s: np.ndarray) -> None:
        add = fold.node
        bi = next(i for i, t in enumerate(add.input) if _per_channel_const(ctx, t, s.shape[0], allow_scalar=False))
        ctx.replace_input(add, bi, _divided(ctx.constant(add.input[bi]), s))
        mul = ctx.graph.producer(add.input[1 - bi])
        MulConstRule().apply(Fold(MulConstRule(), mul), ctx, s)

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


def match_fold(ctx: FoldContext, x: str, k: int, group_nodes: Sequence[str]) -> Optional[Fold]:
    """The first rule that folds 1/s into X's producer, or None when X has consumers
    outside ``group_nodes`` (the group's MatMul/Gemm nodes), is a graph output or input,
    or no rule matches."""
    if x in ctx.graph.graph_outputs or x in ctx.graph.graph_inputs:
        return None
    allowed = set(group_nodes)
    if any(c.name not in allowed for c in ctx.graph.consumers(x)):
        return None
    for _ in range(3):
        for rule in RULES:
            fold = rule.match(ctx, x, k)
            if fold is not None:
                return fold
        # look through a Reshape that keeps the channel axis (e.g. [B, S, K] -> [B*S, K]
        # before a Gemm): scaling channels commutes with it
        x = _channel_preserving_reshape_input(ctx, x, k)
        if x is None:
            return None
    return None


def _channel_preserving_reshape_input(ctx: FoldContext, x: str, k: int) -> Optional[str]:
    node = ctx.graph.producer(x)
    if node is None or node.op_type != "Reshape" or not ctx.graph.is_constant(node.input[1]):
        return None
    shape = ctx.graph.constant_value(node.input[1], ctx.base_dir).reshape(-1)
    if shape.size == 0 or int(shape[-1]) != k:
        return None
    src = node.input[0]
    if src in ctx.graph.graph_outputs or src in ctx.graph.graph_inputs or len(ctx.graph.consumers(src)) != 1:
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
