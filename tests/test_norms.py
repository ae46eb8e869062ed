"""Normalization patterns (onnxq.norms): each exported spelling matches, with the right
gamma/beta inputs, and near-misses are refused with a reason that says what differs."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxq.norms import NoMatch, NormMatch, find_norms, match_norm
from onnxq.sites import ModelGraph

K = 8


def _graph(nodes, inits, out="y", opset=18):
    inits = [numpy_helper.from_array(np.asarray(v), n) for n, v in inits.items()]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, K])],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)])
    return ModelGraph(model)


def _rms(inv="Reciprocal", square="Pow", casts=False, exponent=2.0, axes=(-1,), gamma_shape=(K,), keepdims=1):
    """RMSNorm as torch dynamo (Reciprocal) or optimum (Div(1, .), Casts) exports it."""
    n = []
    x = "x"
    if casts:
        n.append(helper.make_node("Cast", ["x"], ["xc"], name="cast", to=TensorProto.FLOAT))
        x = "xc"
    if square == "Pow":
        n.append(helper.make_node("Pow", [x, "two"], ["sq"], name="pow"))
    else:
        n.append(helper.make_node("Mul", [x, x], ["sq"], name="square"))
    n.append(helper.make_node("ReduceMean", ["sq", "axes"], ["ms"], name="mean", keepdims=keepdims))
    n.append(helper.make_node("Add", ["ms", "eps"], ["e"], name="add_eps"))
    n.append(helper.make_node("Sqrt", ["e"], ["r"], name="sqrt"))
    if inv == "Reciprocal":
        n.append(helper.make_node("Reciprocal", ["r"], ["ir"], name="rsqrt"))
        n.append(helper.make_node("Mul", [x, "ir"], ["nx"], name="mul"))
    elif inv == "Div1":
        n.append(helper.make_node("Div", ["one", "r"], ["ir"], name="inv"))
        n.append(helper.make_node("Mul", [x, "ir"], ["nx"], name="mul"))
    else:
        n.append(helper.make_node("Div", [x, "r"], ["nx"], name="div"))
    last = "nx"
    if casts:
        n.append(helper.make_node("Cast", ["nx"], ["nxc"], name="cast_back", to=TensorProto.FLOAT))
        last = "nxc"
    n.append(helper.make_node("Mul", ["w", last], ["y"], name="mul_w"))
    inits = {"two": np.float32(exponent), "axes": np.array(axes, np.int64), "eps": np.float32(1e-5),
             "one": np.float32(1.0), "w": np.ones(gamma_shape, np.float32)}
    return _graph(n, inits)


def _layernorm(with_bias=True):
    n = [
        helper.make_node("ReduceMean", ["x", "axes"], ["m"], name="mean"),
        helper.make_node("Sub", ["x", "m"], ["d"], name="sub"),
        helper.make_node("Pow", ["d", "two"], ["sq"], name="pow"),
        helper.make_node("ReduceMean", ["sq", "axes"], ["v"], name="var"),
        helper.make_node("Add", ["v", "eps"], ["e"], name="add_eps"),
        helper.make_node("Sqrt", ["e"], ["r"], name="sqrt"),
        helper.make_node("Div", ["d", "r"], ["nx"], name="div"),
        helper.make_node("Mul", ["nx", "g"], ["y" if not with_bias else "gx"], name="mul_g"),
    ]
    if with_bias:
        n.append(helper.make_node("Add", ["gx", "b"], ["y"], name="add_b"))
    inits = {"two": np.float32(2), "axes": np.array([-1], np.int64), "eps": np.float32(1e-5),
             "g": np.ones(K, np.float32), "b": np.zeros(K, np.float32)}
    return _graph(n, inits)


@pytest.mark.parametrize("kw", [dict(), dict(inv="Div1", casts=True), dict(inv="Div"), dict(square="Mul")],
                         ids=["dynamo", "optimum", "div", "mul-square"])
def test_decomposed_rmsnorm_spellings_match_with_the_weight_as_scale(kw):
    g = _rms(**kw)
    m = match_norm(g, "y", K)
    assert isinstance(m, NormMatch) and m.kind == "decomposed RMSNorm"
    node, index = m.scale
    assert node.name == "mul_w" and node.input[index] == "w" and m.bias is None


@pytest.mark.parametrize("kw, words", [
    (dict(exponent=3.0), "Pow(x, 2)"),
    (dict(axes=(1,)), "reduces axes [1]"),
    (dict(keepdims=0), "keepdims=0"),
    (dict(gamma_shape=(3, K)), "per channel"),
])
def test_near_miss_rmsnorms_are_refused_with_the_reason(kw, words):
    m = match_norm(_rms(**kw), "y", K)
    assert isinstance(m, NoMatch) and words in m.reason, m


def test_decomposed_layernorm_matches_gamma_and_beta():
    m = match_norm(_layernorm(), "y", K)
    assert isinstance(m, NormMatch) and m.kind == "decomposed LayerNorm"
    assert m.scale[0].name == "mul_g" and m.bias[0].name == "add_b"
    g = _layernorm()
    found = find_norms(g, g.model.graph.node)
    assert len(found) == 1 and found[0].bias is not None  # the Add form, not Mul(gamma) alone
    m = match_norm(_layernorm(with_bias=False), "y", K)
    assert isinstance(m, NormMatch) and m.bias is None


@pytest.mark.parametrize("op, scale, bias, n_out", [
    ("SkipLayerNormalization", 2, 3, 4),
    ("SkipSimplifiedLayerNormalization", 2, None, 4),
    ("LayerNormalization", 1, 2, 3),
    ("SimplifiedLayerNormalization", 1, None, 2),
])
def test_fused_norms_expose_gamma_beta_and_only_output_0(op, scale, bias, n_out):
    ins = {"SkipLayerNormalization": ["x", "x2", "g", "b", "pre"], "SkipSimplifiedLayerNormalization": ["x", "x2", "g", "pre"],
           "LayerNormalization": ["x", "g", "b"], "SimplifiedLayerNormalization": ["x", "g"]}[op]
    outs = ["y"] + [f"o{i}" for i in range(1, n_out)]
    domain = "com.microsoft" if op.startswith("Skip") else ""
    node = helper.make_node(op, ins, outs, name="norm", domain=domain)
    g = _graph([node], {"g": np.ones(K, np.float32), "b": np.zeros(K, np.float32), "pre": np.zeros(K, np.float32)})
    m = match_norm(g, "y", K)
    assert isinstance(m, NormMatch) and m.kind == op and m.scale[1] == scale
    assert (m.bias[1] if m.bias else None) == bias  # the pre-norm bias of Skip*: never touched
    residual = match_norm(g, outs[-1], K)
    assert isinstance(residual, NoMatch) and "not the normalized output" in residual.reason


def test_a_norm_with_a_runtime_gamma_is_refused():
    node = helper.make_node("LayerNormalization", ["x", "x_gamma", "b"], ["y"], name="ln")
    g = _graph([node], {"b": np.zeros(K, np.float32)})
    m = match_norm(g, "y", K)
    assert isinstance(m, NoMatch) and "'x_gamma' is not a constant" in m.reason
