"""GgmlMatMul / GgmlGather through onnxruntime against X @ dequantize(W).T (+ bias), for every
weight type and row layout, 1 and 2 intra-op threads, constant and run-time weights."""
from __future__ import annotations

import zlib

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxq.ggml.nodes import make_ggml_gather_node, make_ggml_matmul_node
from ops_testlib import MatMulOracle, make_model, quantized_weight, session, vinfo

N = 19  # odd: exercises the column remainder of any tiled kernel
M_SHAPES = {1: (1, 1), 3: (1, 3), 8: (2, 4), 64: (4, 16), 513: (3, 171)}  # M -> 3-D leading dims

LAYOUTS = (
    [(t, 512, None) for t in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")]
    + [(t, 80, None) for t in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")]
    + [(t, K, None) for t in ("Q4_K", "Q5_K", "Q6_K") for K in (512, 300)]
    + [("Q4_K", 576, "Q8_0"), ("Q5_K", 576, "Q5_1"), ("Q6_K", 576, "Q4_0"),
       ("Q4_K", 300, "Q4_1"), ("Q5_K", 300, "Q5_0"), ("Q6_K", 300, "Q8_0")]
)


def _ids(layout):
    t, K, tail = layout
    return f"{t}-K{K}" + (f"-tail{tail}" if tail else "")


def _const_model(qt, K, tail, blocks, bias):
    """Exact and fast GgmlMatMul sharing one constant W (with bias), and a GgmlGather on
    the same initializer (a tied table)."""
    e = make_ggml_matmul_node("mm_exact", "X", "Y_exact", blocks, quant_type=qt, K=K, N=N, bias=bias,
                              tail_type=tail, mode="exact", weight_name="W", bias_name="B")
    f = make_ggml_matmul_node("mm_fast", "X", "Y_fast", "W", quant_type=qt, K=K, N=N, bias="B",
                              tail_type=tail, mode="fast")
    g = make_ggml_gather_node("emb", "ids", "G", "W", quant_type=qt, K=K, N=N, tail_type=tail)
    return make_model(
        [e.node, f.node, g.node],
        [vinfo("X"), vinfo("ids", TensorProto.INT64)],
        [vinfo("Y_exact"), vinfo("Y_fast"), vinfo("G")],
        e.initializers,
    )


def _input_model(qt, K, tail):
    """W as a graph input (no pre-packing: the compute-time path), int32 indices."""
    e = make_ggml_matmul_node("mm_exact", "X", "Y_exact", "W", quant_type=qt, K=K, N=N, tail_type=tail,
                              mode="exact")
    f = make_ggml_matmul_node("mm_fast", "X", "Y_fast", "W", quant_type=qt, K=K, N=N, tail_type=tail)
    g = make_ggml_gather_node("emb", "ids", "G", "W", quant_type=qt, K=K, N=N, tail_type=tail)
    return make_model(
        [e.node, f.node, g.node],
        [vinfo("X"), vinfo("W", TensorProto.UINT8), vinfo("ids", TensorProto.INT32)],
        [vinfo("Y_exact"), vinfo("Y_fast"), vinfo("G")],
    )


def _check_matmul(y_exact, y_fast, bounds, what):
    ref, bound_e, bound_f = bounds
    y_exact = y_exact.reshape(ref.shape)  # 3-D runs are checked against their 2-D twin
    y_fast = y_fast.reshape(ref.shape)
    err_e = np.abs(y_exact.astype(np.float64) - ref)
    assert np.all(err_e <= bound_e), f"{what} exact: worst error {err_e.max()} (bound there {bound_e.flat[err_e.argmax()]})"
    err_f = np.abs(y_fast.astype(np.float64) - ref)
    assert np.all(err_f <= bound_f), f"{what} fast: worst error {err_f.max()} (bound there {bound_f.flat[err_f.argmax()]})"


def _check_gather(G, W, ids, what):
    ref = W[np.asarray(ids, np.int64)]
    assert G.shape == ref.shape, what
    tol = 4 * np.finfo(np.float32).eps * np.abs(ref).max(axis=-1, keepdims=True) + 1e-30
    assert np.all(np.abs(G - ref) <= tol), f"{what}: gather differs from the dequantized rows"


@pytest.mark.parametrize("layout", LAYOUTS, ids=[_ids(lay) for lay in LAYOUTS])
def test_matmul_and_gather_match_dequantized_reference(layout):
    qt, K, tail = layout
    rng = np.random.default_rng(zlib.crc32(_ids(layout).encode()))
    blocks, W = quantized_weight(qt, N, K, rng, tail_type=tail)
    bias = rng.standard_normal(N).astype(np.float32)
    model = _const_model(qt, K, tail, blocks, bias)
    ids = np.array([[0, N - 1, -1], [-N, 5, 5]], np.int64)
    oracle, oracle_nobias = MatMulOracle(W, bias), MatMulOracle(W)
    inputs = {M: rng.standard_normal((M, K)).astype(np.float32) for M in M_SHAPES}
    bounds = {M: oracle(X) for M, X in inputs.items()}
    for threads in (1, 2):
        sess = session(model, threads=threads)
        for M, lead in M_SHAPES.items():
            for X in (inputs[M], inputs[M].reshape(*lead, K)):
                ye, yf, G = sess.run(None, {"X": X, "ids": ids})
                assert ye.shape == X.shape[:-1] + (N,) and yf.shape == ye.shape
                what = f"{_ids(layout)} threads={threads} X{list(X.shape)}"
                _check_matmul(ye, yf, bounds[M], what)
                _check_gather(G, W, ids, what)

    # Run-time W (graph input): the path without pre-packing, and int32 indices.
    sess = session(_input_model(qt, K, tail), threads=2)
    ids32 = np.array([3, -2, 0], np.int32)
    for M in (1, 64):
        X = rng.standard_normal((M, K)).astype(np.float32)
        ye, yf, G = sess.run(None, {"X": X, "W": blocks, "ids": ids32})
        what = f"{_ids(layout)} W as input, M={M}"
        _check_matmul(ye, yf, oracle_nobias(X), what)
        _check_gather(G, W, ids32, what)


def test_empty_inputs_give_empty_outputs():
    rng = np.random.default_rng(1)
    blocks, W = quantized_weight("Q4_0", N, 64, rng)
    model = _const_model("Q4_0", 64, None, blocks, np.zeros(N, np.float32))
    sess = session(model, threads=2)
    for shape in [(0, 64), (2, 0, 64), (0, 0, 64)]:
        ye, yf, G = sess.run(None, {"X": np.zeros(shape, np.float32), "ids": np.zeros((0, 4), np.int64)})
        assert ye.shape == shape[:-1] + (N,) and yf.shape == ye.shape
        assert G.shape == (0, 4, 64)


def test_scalar_index_and_1d_x():
    rng = np.random.default_rng(2)
    blocks, W = quantized_weight("Q8_0", N, 96, rng)
    model = _const_model("Q8_0", 96, None, blocks, np.zeros(N, np.float32))
    sess = session(model)
    x = rng.standard_normal(96).astype(np.float32)
    ye, yf, G = sess.run(None, {"X": x, "ids": np.array(-3, np.int64)})
    assert ye.shape == (N,) and G.shape == (96,)
    assert yf.shape == (N,)
    _check_matmul(ye, yf, MatMulOracle(W, np.zeros(N, np.float32))(x), "1-D X")
    _check_gather(G, W, np.array(-3), "scalar index")


def test_large_magnitudes_stay_within_bounds():
    """Weights from ggml's 'scaled_mix'/'edge' super-blocks reach 3e4; activations 1e3."""
    rng = np.random.default_rng(3)
    blocks, W = quantized_weight("Q6_K", N, 256, rng)
    bias = rng.standard_normal(N).astype(np.float32)
    sess = session(_const_model("Q6_K", 256, None, blocks, bias), threads=2)
    X = (rng.standard_normal((7, 256)) * 1e3).astype(np.float32)
    ye, yf, _ = sess.run(None, {"X": X, "ids": np.zeros(1, np.int64)})
    _check_matmul(ye, yf, MatMulOracle(W, bias)(X), "large magnitudes")


def test_bias_omitted_with_an_empty_input_name():
    rng = np.random.default_rng(4)
    blocks, W = quantized_weight("Q5_0", 4, 64, rng)
    node = helper.make_node("GgmlMatMul", ["X", "W", ""], ["Y"], name="e", domain="onnxq", quant_type="Q5_0", K=64,
                            N=4, mode="exact")
    sess = session(make_model([node], [vinfo("X")], [vinfo("Y")], [numpy_helper.from_array(blocks, "W")]))
    x = rng.standard_normal((3, 64)).astype(np.float32)
    y = sess.run(None, {"X": x})[0]
    _check_matmul(y, y, MatMulOracle(W)(x), "omitted bias")
