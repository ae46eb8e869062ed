"""Malformed GgmlMatMul / GgmlGather models and inputs fail with onnxruntime errors that
name the op, the node and the problem; nothing crashes and sessions stay usable."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxq.formats import row_bytes
from onnxq.ggml.nodes import make_ggml_gather_node, make_ggml_matmul_node
from ops_testlib import HERE, ORT_ERRORS, UNDER_ASAN, make_model, quantized_weight, session, vinfo


def _raw_matmul_model(attrs, w=None, bias=None, name="mm", n_inputs=None):
    """A GgmlMatMul with arbitrary attributes; W (and bias) constant when given as arrays."""
    inputs = ["X", "W"] + (["B"] if bias is not None else [])
    inits = []
    graph_inputs = [vinfo("X")]
    if w is None:
        graph_inputs.append(vinfo("W", TensorProto.UINT8))
    else:
        inits.append(numpy_helper.from_array(w, "W"))
    if bias is not None:
        inits.append(numpy_helper.from_array(bias, "B"))
    node = helper.make_node("GgmlMatMul", inputs, ["Y"], name=name, domain="onnxq", **attrs)
    return make_model([node], graph_inputs, [vinfo("Y")], inits)


def _creation_error(model) -> str:
    with pytest.raises(ORT_ERRORS) as info:
        session(model)
    return str(info.value)


GOOD = dict(quant_type="Q5_0", K=1024, N=32)


def test_readme_example_message():
    w = np.zeros(1000, np.uint8)
    msg = _creation_error(_raw_matmul_model(GOOD, w, name="q_proj"))
    assert "GgmlMatMul 'q_proj': W has 1000 bytes, Q5_0 with K=1024 N=32 needs 22528" in msg


@pytest.mark.parametrize(
    "attrs, expected",
    [
        (dict(K=64, N=4), "missing required string attribute 'quant_type'"),
        (dict(quant_type="Q4_0", N=4), "missing required int attribute 'K'"),
        (dict(quant_type="Q4_0", K=64), "missing required int attribute 'N'"),
        (dict(quant_type="Q3_K", K=64, N=4), "unknown quant_type 'Q3_K'"),
        (dict(quant_type="", K=64, N=4), "unknown quant_type ''"),
        (dict(quant_type="Q8_K", K=256, N=4), "quant_type 'Q8_K' is an activation type"),
        (dict(quant_type="Q8_1", K=64, N=4), "quant_type 'Q8_1' is an activation type"),
        (dict(quant_type="Q4_0" * 40, K=64, N=4), "attribute 'quant_type' is 161 bytes long"),
        (dict(quant_type=4, K=64, N=4), "attribute 'quant_type' must be a string, not an int"),
        (dict(quant_type="Q4_0", K="64", N=4), "attribute 'K' must be an int, not a string"),
        (dict(quant_type="Q4_0", K=64, N=4.0), "missing required int attribute 'N' (or it is not an int)"),
        (dict(quant_type="Q4_0", K=0, N=4), "attribute K=0 must be >= 1"),
        (dict(quant_type="Q4_0", K=-32, N=4), "attribute K=-32 must be >= 1"),
        (dict(quant_type="Q4_0", K=64, N=0), "attribute N=0 must be >= 1"),
        (dict(quant_type="Q4_0", K=64, N=-(2**63)), "attribute N=-9223372036854775808 must be >= 1"),
        (dict(quant_type="Q4_0", K=2**62, N=4), "attribute K=4611686018427387904 exceeds the limit 1099511627776"),
        (dict(quant_type="Q4_0", K=64, N=2**63 - 1), "attribute N=9223372036854775807 exceeds the limit"),
        (dict(quant_type="Q8_0", K=2**40, N=2**40), "N=1099511627776 rows of 1168231104512 bytes overflow a 64-bit size"),
        (dict(quant_type="Q4_0", K=64, N=4, tail_type="Q8_0"), "tail_type 'Q8_0' is only valid with a K-quant"),
        (dict(quant_type="Q4_K", K=300, N=4, tail_type="Q6_K"), "tail_type 'Q6_K' is not a 32-element weight type"),
        (dict(quant_type="Q4_K", K=300, N=4, tail_type="Q8_1"), "tail_type 'Q8_1' is not a 32-element weight type"),
        (dict(quant_type="Q4_K", K=300, N=4, tail_type=7), "attribute 'tail_type' must be a string, not an int"),
        (dict(quant_type="Q4_0", K=64, N=4, mode="turbo"), "mode 'turbo' must be 'exact' or 'fast'"),
        (dict(quant_type="Q4_0", K=64, N=4, mode=""), "mode '' must be 'exact' or 'fast'"),
    ],
)
def test_bad_attributes_fail_at_session_creation(attrs, expected):
    msg = _creation_error(_raw_matmul_model(attrs, name="node_a"))
    assert "GgmlMatMul 'node_a': " + expected in msg


def test_bad_attributes_of_gather_and_unnamed_node():
    node = helper.make_node("GgmlGather", ["T", "ids"], ["Y"], domain="onnxq", quant_type="Q4_X", K=64, N=4)
    model = make_model([node], [vinfo("T", TensorProto.UINT8), vinfo("ids", TensorProto.INT64)], [vinfo("Y")])
    assert "GgmlGather (unnamed node): unknown quant_type 'Q4_X'" in _creation_error(model)


def test_lowercase_type_names_are_accepted():
    rng = np.random.default_rng(0)
    blocks, W = quantized_weight("Q4_1", 4, 64, rng)
    sess = session(_raw_matmul_model(dict(quant_type="q4_1", K=64, N=4, mode="exact"), blocks))
    x = rng.standard_normal((2, 64)).astype(np.float32)
    np.testing.assert_allclose(sess.run(None, {"X": x})[0], x @ W.T, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "w, bias, expected",
    [
        (np.zeros((4, 35), np.uint8), None, "W has 140 bytes, Q4_0 with K=64 N=4 needs 144"),
            (np.zeros(143, np.uint8), None, "W has 143 bytes, Q4_0 with K=64 N=4 needs 144"),
        (np.zeros((5, 36), np.uint8), None, "W has 180 bytes, Q4_0 with K=64 N=4 needs 144"),
        (np.zeros(0, np.uint8), None, "W has 0 bytes"),
        (np.zeros((4, 36), np.uint8), np.zeros(5, np.float32), "bias has shape [5], expected [4] (N)"),
        (np.zeros((4, 36), np.uint8), np.zeros((1, 4), np.float32), "bias has shape [1, 4], expected [4] (N)"),
    ],
)
def test_bad_constant_tensors_fail_at_session_creation(w, bias, expected):
    msg = _creation_error(_raw_matmul_model(dict(quant_type="Q4_0", K=64, N=4), w, bias, name="c"))
    assert "GgmlMatMul 'c': " + expected in msg


def test_wrong_dtypes_of_constants_are_refused():
    # The op declares W uint8 and bias float32: onnxruntime refuses other types at load.
    for w, b in [(np.zeros(144, np.int8), None), (np.zeros(36, np.float32), None),
                 (np.zeros(144, np.uint8), np.zeros(4, np.float64))]:
        msg = _creation_error(_raw_matmul_model(dict(quant_type="Q4_0", K=64, N=4), w, b, name="t"))
        assert "GgmlMatMul" in msg


def test_truncated_initializer_is_refused():
    w = numpy_helper.from_array(np.zeros((4, 36), np.uint8), "W")
    w.raw_data = w.raw_data[:100]  # dims say 144 bytes
    node = helper.make_node("GgmlMatMul", ["X", "W"], ["Y"], name="t", domain="onnxq", quant_type="Q4_0", K=64, N=4)
    model = make_model([node], [vinfo("X")], [vinfo("Y")], [w])
    with pytest.raises(ORT_ERRORS):
        session(model)


def test_wrong_sizes_at_run_time_name_the_problem_and_leave_the_session_usable():
    rng = np.random.default_rng(5)
    K, N = 96, 6
    blocks, W = quantized_weight("Q5_1", N, K, rng)
    e = make_ggml_matmul_node("up", "X", "Y", "W", quant_type="Q5_1", K=K, N=N, bias="B", mode="exact")
    model = make_model([e.node], [vinfo("X"), vinfo("W", TensorProto.UINT8), vinfo("B")], [vinfo("Y")])
    sess = session(model, threads=2)
    x = rng.standard_normal((3, K)).astype(np.float32)
    b = np.zeros(N, np.float32)
    good = {"X": x, "W": blocks, "B": b}
    cases = [
        ({"W": blocks.ravel()[:-1]}, "GgmlMatMul 'up': W has 431 bytes, Q5_1 with K=96 N=6 needs 432"),
        ({"W": np.concatenate([blocks.ravel(), blocks.ravel()])}, "W has 864 bytes"),
        ({"X": x[:, :95]}, "GgmlMatMul 'up': X has shape [3, 95], its last dimension must be K=96"),
        ({"X": np.zeros((2, 3, 0), np.float32)}, "X has shape [2, 3, 0], its last dimension must be K=96"),
        ({"X": np.array(1.0, np.float32)}, "X has shape [], its last dimension must be K=96"),
        ({"B": np.zeros(N + 1, np.float32)}, "bias has shape [7], expected [6] (N)"),
        ({"B": np.zeros((N, 1), np.float32)}, "bias has shape [6, 1], expected [6] (N)"),
        ({"X": np.zeros((2, K), np.float64)}, "float"),  # onnxruntime's own input type check
    ]
    for change, expected in cases:
        feeds = dict(good, **change)
        with pytest.raises(ORT_ERRORS) as info:
            sess.run(None, feeds)
        assert expected in str(info.value), (change.keys(), str(info.value))
        # still usable after every error
        np.testing.assert_allclose(sess.run(None, good)[0], x @ W.T, rtol=1e-4, atol=1e-4)


def test_gather_rejects_bad_indices():
    rng = np.random.default_rng(6)
    K, N = 64, 10
    blocks, W = quantized_weight("Q8_0", N, K, rng)
    g = make_ggml_gather_node("embed", "ids", "Y", blocks, quant_type="Q8_0", K=K, N=N)
    sess = session(make_model([g.node], [vinfo("ids", TensorProto.INT64)], [vinfo("Y")], g.initializers))
    g32 = make_ggml_gather_node("embed32", "ids", "Y", "T", quant_type="Q8_0", K=K, N=N)
    m32 = make_model([g32.node], [vinfo("T", TensorProto.UINT8), vinfo("ids", TensorProto.INT32)], [vinfo("Y")])
    sess32 = session(m32)
    for bad in (10, -11, 2**63 - 1, -(2**63)):
        ids = np.array([1, 2, 3, bad], np.int64)
        with pytest.raises(ORT_ERRORS) as info:
            sess.run(None, {"ids": ids})
        assert f"GgmlGather 'embed': indices[3] = {bad} is out of range for a table of N=10 rows (valid: -10..9)" in str(info.value)
    for bad in (10, -11, 2**31 - 1, -(2**31)):
        with pytest.raises(ORT_ERRORS) as info:
            sess32.run(None, {"T": blocks, "ids": np.array([[0], [bad]], np.int32)})
        assert f"indices[1] = {bad} is out of range for a table of N=10 rows" in str(info.value)
    with pytest.raises(ORT_ERRORS) as info:
        sess32.run(None, {"T": blocks[:-1], "ids": np.array([0], np.int32)})
    assert "GgmlGather 'embed32': table has 612 bytes, Q8_0 with K=64 N=10 needs 680" in str(info.value)
    np.testing.assert_array_equal(sess.run(None, {"ids": np.array([9, -10])})[0], W[[9, 0]])


def test_ranks_above_the_limit_are_refused():
    blocks, _ = quantized_weight("Q4_0", 4, 32, np.random.default_rng(8))
    e = make_ggml_matmul_node("r", "X", "Y", blocks, quant_type="Q4_0", K=32, N=4)
    g = make_ggml_gather_node("g", "ids", "G", e.initializers[0].name, quant_type="Q4_0", K=32, N=4)
    sess = session(make_model([e.node, g.node], [vinfo("X"), vinfo("ids", TensorProto.INT64)], [vinfo("Y"), vinfo("G")],
                              e.initializers))
    ok_x, ok_ids = np.zeros((1,) * 31 + (32,), np.float32), np.zeros((1,) * 31, np.int64)
    y, G = sess.run(None, {"X": ok_x, "ids": ok_ids})
    assert y.shape == (1,) * 31 + (4,) and G.shape == (1,) * 31 + (32,)
    with pytest.raises(ORT_ERRORS, match="GgmlMatMul 'r': X has rank 33, at most 32 is supported"):
        sess.run(None, {"X": np.zeros((1,) * 32 + (32,), np.float32), "ids": ok_ids})
    with pytest.raises(ORT_ERRORS, match="GgmlGather 'g': indices has rank 32, at most 31 is supported"):
        sess.run(None, {"X": ok_x, "ids": np.zeros((1,) * 32, np.int64)})


def test_gather_refuses_index_types_other_than_int32_int64():
    blocks, _ = quantized_weight("Q4_0", 4, 32, np.random.default_rng(7))
    for dtype, name, onnx_type in [(np.float32, "float32", TensorProto.FLOAT), (np.int16, "int16", TensorProto.INT16),
                                   (np.uint64, "uint64", TensorProto.UINT64)]:
        g = make_ggml_gather_node("e", "ids", "Y", blocks, quant_type="Q4_0", K=32, N=4)
        sess = session(make_model([g.node], [vinfo("ids", onnx_type)], [vinfo("Y")], g.initializers))
        with pytest.raises(ORT_ERRORS) as info:
            sess.run(None, {"ids": np.zeros(3, dtype)})
        assert f"GgmlGather 'e': indices must be int64 or int32, got {name}" in str(info.value)


@pytest.mark.skipif(UNDER_ASAN, reason="ASan aborts on the refused 4 TiB allocation inside onnxruntime")
def test_huge_output_is_an_error_not_a_crash():
    # 2^20 indices of rows of 2^20 floats: 4 TiB of output, refused by the allocator.
    K = 1 << 20
    g = make_ggml_gather_node("big", "ids", "Y", "T", quant_type="Q8_0", K=K, N=1)
    sess = session(make_model([g.node], [vinfo("T", TensorProto.UINT8), vinfo("ids", TensorProto.INT64)], [vinfo("Y")]))
    table = np.zeros(row_bytes("Q8_0", K), np.uint8)
    with pytest.raises(ORT_ERRORS) as info:
        sess.run(None, {"T": table, "ids": np.zeros(1 << 20, np.int64)})
    assert "GgmlGather 'big': allocating Y" in str(info.value)


def _fuzz(*args: str, timeout: float = 300) -> dict:
    res = subprocess.run([sys.executable, os.path.join(HERE, "ops_fuzz.py"), *args],
                         capture_output=True, text=True, timeout=timeout, cwd=HERE)
    lines = res.stdout.strip().splitlines()
    assert lines, f"the fuzzer printed nothing (rc={res.returncode}):\n{res.stderr[-3000:]}"
    summary = json.loads(lines[-1])
    summary["returncode"] = res.returncode
    return summary


def test_randomized_malformed_models_do_not_crash():
    """>= 1,000 random malformed (and some valid) models and inputs in guarded worker
    subprocesses, so a crash is counted instead of killing the test run."""
    seed = int(os.environ.get("ONNXQ_FUZZ_SEED", "20240611"))
    cases = int(os.environ.get("ONNXQ_FUZZ_CASES", "1200"))
    summary = _fuzz("--cases", str(cases), "--seed", str(seed), "--batch", "600")
    assert summary["crashes"] == 0, summary["seeds"][0]["crash_cases"][:3]
    assert summary["mismatches"] == [], summary["mismatches"][:5]
    assert summary["returncode"] == 0
    assert summary["cases"] == cases >= 1000
    assert summary["errors_as_expected"] >= 500 and summary["valid"] >= 100, summary


def test_fuzzer_counts_a_crash_and_carries_on():
    """A worker killed by SIGSEGV in the middle of a batch: that case counts as one crash,
    the cases before it keep their results, and a new worker runs the rest."""
    summary = _fuzz("--cases", "40", "--seed", "7", "--batch", "20", "--crash-at", "25")
    assert summary["returncode"] == 1
    assert summary["crashes"] == 1 and summary["cases"] == 40
    crash = summary["seeds"][0]["crash_cases"][0]
    assert crash["case"] == 25 and crash["exit"] == "signal SIGSEGV"
    clean = _fuzz("--cases", "40", "--seed", "7", "--batch", "20")
    assert clean["crashes"] == 0 and clean["returncode"] == 0
    # the same cases ran, less the one that crashed: (seed, index) alone decides a case
    assert clean["checks"] - summary["checks"] in (1, 2, 3)
