"""Small synthetic transformer models for the SmoothQuant and calibration tests.

``build_toy(...)`` makes a float32 ONNX model ``x [batch, seq, D] -> y [batch, seq, V]`` with
pre-norm (LLaMA-like) or post-norm (BERT-like) blocks: attention (q/k/v/o linear sites and
activation x activation MatMuls), an MLP (SwiGLU or GELU), a final norm and a head. Norm
gammas get a few outlier channels (``outlier_scale`` times larger) so their outputs have
the channel outliers SmoothQuant is for.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

NORM_KINDS = ("layernorm", "simplified", "rmsnorm_decomposed", "layernorm_decomposed", "mul")


class _B:
    def __init__(self, rng: np.random.Generator) -> None:
        self.nodes: List[onnx.NodeProto] = []
        self.inits: List[TensorProto] = []
        self.rng = rng
        self.n = 0
        self.flat: Dict[str, str] = {}

    def name(self, base: str) -> str:
        self.n += 1
        return f"{base}_{self.n}"

    def const(self, name: str, value) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: Sequence[str], name: str, n_out: int = 1, domain: str = "", **attrs) -> str:
        outs = [f"{name}_out{i}" if i else f"{name}_out" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=name, domain=domain or None, **attrs))
        if not domain:
            self.nodes[-1].ClearField("domain")
        return outs[0]


def _gamma(rng, d: int, outliers: Sequence[int], scale: float) -> np.ndarray:
    g = (1.0 + 0.1 * rng.standard_normal(d)).astype(np.float32)
    for j, c in enumerate(outliers):
        g[c] *= scale * (0.5 + 0.5 * (j + 1) / len(outliers))  # scale/2 .. scale
    return g


def _norm(b: _B, x: str, kind: str, prefix: str, d: int, outliers, scale) -> str:
    gamma = _gamma(b.rng, d, outliers, scale)
    beta = (0.05 * b.rng.standard_normal(d)).astype(np.float32)
    if kind == "layernorm":
        return b.node("LayerNormalization", [x, b.const(f"{prefix}.weight", gamma), b.const(f"{prefix}.bias", beta)],
                      f"/{prefix}/LayerNormalization", axis=-1, epsilon=1e-5)
    if kind == "simplified":
        return b.node("SimplifiedLayerNormalization", [x, b.const(f"{prefix}.weight", gamma)],
                      f"/{prefix}/SimplifiedLayerNormalization", axis=-1, epsilon=1e-5)
    if kind == "rmsnorm_decomposed":
        two = b.const(f"{prefix}.two", np.array(2.0, np.float32))
        eps = b.const(f"{prefix}.eps", np.array(1e-5, np.float32))
        p = b.node("Pow", [x, two], f"/{prefix}/Pow")
        m = b.node("ReduceMean", [p, b.const(f"{prefix}.axes", np.array([-1], np.int64))], f"/{prefix}/ReduceMean", keepdims=1)
        a = b.node("Add", [m, eps], f"/{prefix}/Add")
        r = b.node("Sqrt", [a], f"/{prefix}/Sqrt")
        dv = b.node("Div", [x, r], f"/{prefix}/Div")
        return b.node("Mul", [dv, b.const(f"{prefix}.weight", gamma)], f"/{prefix}/Mul_1")
    if kind == "layernorm_decomposed":
        axes = b.const(f"{prefix}.axes", np.array([-1], np.int64))
        mean = b.node("ReduceMean", [x, axes], f"/{prefix}/ReduceMean", keepdims=1)
        c = b.node("Sub", [x, mean], f"/{prefix}/Sub")
        sq = b.node("Mul", [c, c], f"/{prefix}/Square")
        var = b.node("ReduceMean", [sq, axes], f"/{prefix}/ReduceMean_1", keepdims=1)
        a = b.node("Add", [var, b.const(f"{prefix}.eps", np.array(1e-5, np.float32))], f"/{prefix}/AddEps")
        r = b.node("Sqrt", [a], f"/{prefix}/Sqrt")
        dv = b.node("Div", [c, r], f"/{prefix}/Div")
        mg = b.node("Mul", [dv, b.const(f"{prefix}.weight", gamma)], f"/{prefix}/MulGamma")
        return b.node("Add", [mg, b.const(f"{prefix}.bias", beta)], f"/{prefix}/AddBeta")
    if kind == "mul":  # a plain Mul by a per-channel constant after a Tanh (no norm)
        t = b.node("Tanh", [x], f"/{prefix}/Tanh")
        return b.node("Mul", [t, b.const(f"{prefix}.weight", gamma)], f"/{prefix}/Mul")
    raise ValueError(kind)


def _linear(b: _B, x: str, prefix: str, k: int, n: int, bias: bool, form: str, std: float = 0.08,
            row_scale: Optional[np.ndarray] = None) -> str:
    w = (std * b.rng.standard_normal((k, n))).astype(np.float32)
    if row_scale is not None:
        w *= row_scale[:, None].astype(np.float32)
    name = f"/{prefix}/MatMul"
    if form == "gemm":
        # Gemm needs 2-D input: flatten, Gemm(transB=1), reshape back
        # one flatten per input tensor, shared by the Gemms that read it (as exporters do)
        flat = b.flat.get(x)
        if flat is None:
            flat = b.flat[x] = b.node("Reshape", [x, b.const(f"{prefix}.flat_shape", np.array([-1, k], np.int64))],
                                      f"/{prefix}/Flatten")
        ins = [flat, b.const(f"{prefix}.weight", np.ascontiguousarray(w.T))]
        if bias:
            ins.append(b.const(f"{prefix}.bias", (0.02 * b.rng.standard_normal(n)).astype(np.float32)))
        y = b.node("Gemm", ins, f"/{prefix}/Gemm", transB=1, alpha=1.0, beta=1.0)
        return b.node("Reshape", [y, b.const(f"{prefix}.out_shape", np.array([-1, b.seq, n], np.int64))], f"/{prefix}/Unflatten")
    if form == "transpose":
        wt = b.node("Transpose", [b.const(f"{prefix}.weight", np.ascontiguousarray(w.T))], f"/{prefix}/Transpose", perm=[1, 0])
        y = b.node("MatMul", [x, wt], name)
    else:
        y = b.node("MatMul", [x, b.const(f"{prefix}.weight", w)], name)
    if bias:
        y = b.node("Add", [y, b.const(f"{prefix}.bias", (0.02 * b.rng.standard_normal(n)).astype(np.float32))], f"/{prefix}/Add")
    return y


def build_toy(
    norm: str = "rmsnorm_decomposed",
    *,
    d: int = 64,
    ffn: int = 128,
    layers: int = 2,
    heads: int = 4,
    vocab: int = 50,
    seq: int = 16,
    mlp: str = "swiglu",
    post_norm: bool = False,
    bias: bool = False,
    linear_form: str = "matmul",
    outliers: Sequence[int] = (3, 17, 40),
    outlier_scale: float = 80.0,
    seed: int = 0,
    opset: int = 18,
) -> onnx.ModelProto:
    """A float32 toy transformer (see module docstring)."""
    rng = np.random.default_rng(seed)
    b = _B(rng)
    b.seq = seq
    h = "x"
    hd = d // heads
    for layer in range(layers):
        p = f"model/layers.{layer}"
        n1 = h if post_norm else _norm(b, h, norm, f"{p}/input_layernorm", d, outliers, outlier_scale)
        # small q/k weights keep the attention logits moderate despite the outlier channels
        qkv = [_linear(b, n1, f"{p}/self_attn/{r}_proj", d, d, bias, linear_form, std=0.08 if r == "v" else 0.01)
               for r in ("q", "k", "v")]
        shp = b.const(f"{p}.heads_shape", np.array([0, 0, heads, hd], np.int64))
        q, k, v = (b.node("Transpose", [b.node("Reshape", [t, shp], f"/{p}/self_attn/Reshape_{i}")],
                          f"/{p}/self_attn/Transpose_{i}", perm=[0, 2, 1, 3]) for i, t in enumerate(qkv))
        kt = b.node("Transpose", [k], f"/{p}/self_attn/Transpose_kt", perm=[0, 1, 3, 2])
        sc = b.node("MatMul", [q, kt], f"/{p}/self_attn/MatMul_scores")
        sc = b.node("Mul", [sc, b.const(f"{p}.inv_sqrt", np.array(1.0 / np.sqrt(hd), np.float32))], f"/{p}/self_attn/Scale")
        pr = b.node("Softmax", [sc], f"/{p}/self_attn/Softmax", axis=-1)
        ctx = b.node("MatMul", [pr, v], f"/{p}/self_attn/MatMul_ctx")
        ctx = b.node("Transpose", [ctx], f"/{p}/self_attn/Transpose_ctx", perm=[0, 2, 1, 3])
        ctx = b.node("Reshape", [ctx, b.const(f"{p}.merge_shape", np.array([0, 0, d], np.int64))], f"/{p}/self_attn/Reshape_ctx")
        o = _linear(b, ctx, f"{p}/self_attn/o_proj", d, d, bias, linear_form)
        h = b.node("Add", [h, o], f"/{p}/Add_attn")
        if post_norm:
            h = _norm(b, h, norm, f"{p}/attention_layernorm", d, outliers, outlier_scale)
            n2 = h
        else:
            n2 = _norm(b, h, norm, f"{p}/post_attention_layernorm", d, outliers, outlier_scale)
        if mlp == "swiglu":
            g = _linear(b, n2, f"{p}/mlp/gate_proj", d, ffn, bias, linear_form)
            u = _linear(b, n2, f"{p}/mlp/up_proj", d, ffn, bias, linear_form)
            act = b.node("Mul", [g, b.node("Sigmoid", [g], f"/{p}/mlp/Sigmoid")], f"/{p}/mlp/SiLU")
            a = b.node("Mul", [act, u], f"/{p}/mlp/Mul")
            dn = _linear(b, a, f"{p}/mlp/down_proj", ffn, d, bias, linear_form)
        else:
            f1 = _linear(b, n2, f"{p}/mlp/fc1", d, ffn, bias, linear_form)
            a = b.node("Gelu", [f1], f"/{p}/mlp/Gelu", domain="com.microsoft")
            dn = _linear(b, a, f"{p}/mlp/fc2", ffn, d, bias, linear_form)
        h = b.node("Add", [h, dn], f"/{p}/Add_mlp")
        if post_norm:
            h = _norm(b, h, norm, f"{p}/output_layernorm", d, outliers, outlier_scale)
    nf = h if post_norm else _norm(b, h, norm, "model/norm", d, outliers, outlier_scale)
    y = _linear(b, nf, "lm_head", d, vocab, False, "matmul")
    b.nodes[-1].output[0] = "y"
    graph = helper.make_graph(
        b.nodes, "toy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", seq, d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", seq, vocab])],
        b.inits,
    )
    imports = [helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=imports, producer_name="onnxq-tests")
    model.ir_version = 8
    return model


def toy_inputs(n: int, seq: int = 16, d: int = 64, seed: int = 1) -> np.ndarray:
    """Inputs with a little structure: a shared per-channel offset plus noise."""
    base = np.random.default_rng(1234).standard_normal(d).astype(np.float32)
    rng = np.random.default_rng(seed)
    return (base + rng.standard_normal((n, seq, d))).astype(np.float32)


def run(model, x: np.ndarray, path: Optional[str] = None) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    src = path if path is not None else model.SerializeToString()
    sess = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def build_norm_linears(
    norm: str = "rmsnorm_decomposed",
    *,
    k: int = 64,
    ns: Sequence[int] = (64, 64, 96),
    seq: int = 16,
    outliers: Sequence[int] = (5, 20, 33, 50),
    outlier_scale: float = 100.0,
    bias: bool = False,
    seed: int = 0,
    opset: int = 18,
) -> onnx.ModelProto:
    """``x -> norm -> len(ns)`` linear layers sharing the normalized input, each a graph output
    ``y0, y1, ...``. With the default outliers, a few channels of the norm's output are
    50-100x larger than the rest."""
    rng = np.random.default_rng(seed)
    b = _B(rng)
    b.seq = seq
    h = _norm(b, "x", norm, "model/layers.0/input_layernorm", k, outliers, outlier_scale)
    # as in trained LLMs, the weight rows that meet the outlier channels are small, so the
    # outputs are not dominated by those few channels
    rows = np.ones(k, np.float32)
    rows[list(outliers)] = 1.0 / outlier_scale
    outs = []
    for i, n in enumerate(ns):
        y = _linear(b, h, f"model/layers.0/self_attn/{'qkv'[i % 3]}_proj" if i < 3 else f"model/layers.0/extra{i}",
                    k, n, bias, "matmul", row_scale=rows)
        outs.append((y, n))
    graph = helper.make_graph(
        b.nodes, "norm_linears",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", seq, k])],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, ["batch", seq, n]) for y, n in outs],
        b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model


def run_all(model, x: np.ndarray) -> List[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})
