"""onnxq.runtime (library path, registration, sessions, kernel ISA, model_needs_library),
onnxq.ggml.nodes (node builders) and concurrent runs."""
from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import onnxq
from onnxq import runtime
from onnxq.ggml import nodes as ggml_ops
from onnxq.errors import ModelError, OnnxqError
from ops_testlib import ORT_ERRORS, exact_bound, fast_bound, make_model, quantized_weight, reference, session, vinfo


def _small_model(qt="Q4_0", K=64, N=8, seed=0):
    blocks, W = quantized_weight(qt, N, K, np.random.default_rng(seed))
    e = ggml_ops.make_ggml_matmul_node("mm", "X", "Y", blocks, quant_type=qt, K=K, N=N, mode="exact")
    return make_model([e.node], [vinfo("X")], [vinfo("Y")], e.initializers), W


def test_library_path_and_override(monkeypatch, tmp_path):
    path = runtime.get_library_path()
    assert os.path.isfile(path) and os.path.isabs(path)
    assert onnxq.get_library_path() == path
    monkeypatch.setenv("ONNXQ_OPS_LIBRARY", str(tmp_path / "nope.so"))
    with pytest.raises(OnnxqError, match="ONNXQ_OPS_LIBRARY"):
        runtime.get_library_path()


def test_register_library_is_idempotent_and_sessions_share_nothing():
    model, W = _small_model()
    so = ort.SessionOptions()
    assert runtime.register_library(so) is so
    runtime.register_library(so)  # a second time on the same options must not break them
    s1 = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    s2 = runtime.InferenceSession(model.SerializeToString(), so)  # registers "again": no-op
    s3 = onnxq.InferenceSession(model.SerializeToString())  # fresh options, a second domain
    x = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
    for s in (s1, s2, s3):
        y = s.run(None, {"X": x})[0]
        assert np.all(np.abs(y - reference(x, W)) <= exact_bound(x, W))
    del s1, s2
    # the domain outlives sessions: a new session on the same options still works
    s4 = runtime.InferenceSession(model.SerializeToString(), so)
    assert s4.run(None, {"X": x})[0].shape == (2, 8)


def test_quiet_between_runs_leaves_no_spinning_workers():
    """A session timed beside others must not spin after its run: the comparison sessions
    (evaluation, demo) carry the option, and a 2-thread session with it uses no CPU once its
    run has returned."""
    from onnxq.evaluate.models import session_options

    assert session_options(2).get_session_config_entry("session.force_spinning_stop") == "1"
    so = runtime.quiet_between_runs(ort.SessionOptions())
    so.intra_op_num_threads = 2
    K = N = 512
    W = np.random.default_rng(0).standard_normal((K, N)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["X", "W"], ["Y"])], "mm",
                              [vinfo("X", shape=[64, K])], [vinfo("Y", shape=[64, N])],
                              [onnx.numpy_helper.from_array(W, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = np.ones((64, K), dtype=np.float32)
    for _ in range(10):
        sess.run(None, {"X": x})
    before = os.times()
    threading.Event().wait(0.3)
    after = os.times()
    # spinning workers would burn about a core for tens of ms here (measured: 50 ms)
    assert (after.user + after.system) - (before.user + before.system) < 0.02


def test_inference_session_accepts_a_path_and_providers(tmp_path):
    model, _ = _small_model()
    p = tmp_path / "m.onnx"
    onnx.save(model, str(p))
    s = runtime.InferenceSession(str(p), providers=["CPUExecutionProvider"])
    assert s.get_providers() == ["CPUExecutionProvider"]


def test_without_the_library_the_model_does_not_load():
    model, _ = _small_model()
    with pytest.raises(ORT_ERRORS):
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_kernel_isa():
    isa = runtime.kernel_isa()
    assert isa in ("avx512vnni", "avxvnni", "avx2", "i8mm", "dotprod", "neon", "scalar")
    res = subprocess.run(
        [sys.executable, "-c", "from onnxq import runtime; print(runtime.kernel_isa())"],
        env=dict(os.environ, ONNXQ_ISA="scalar"), capture_output=True, text=True,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "scalar"


def test_model_needs_library(tmp_path):
    model, _ = _small_model()
    assert runtime.model_needs_library(model)
    assert runtime.model_needs_library(model.SerializeToString())
    p = tmp_path / "m.onnx"
    onnx.save(model, str(p))
    assert runtime.model_needs_library(str(p)) and runtime.model_needs_library(p)

    plain = make_model([helper.make_node("Relu", ["X"], ["Y"])], [vinfo("X")], [vinfo("Y")])
    assert not runtime.model_needs_library(plain)

    # inside an If branch
    then_g = helper.make_graph([model.graph.node[0]], "then", [], [vinfo("Y")], list(model.graph.initializer))
    else_g = helper.make_graph([helper.make_node("Identity", ["X"], ["Y2"])], "else", [], [vinfo("Y2")])
    cond = helper.make_node("If", ["c"], ["Z"], then_branch=then_g, else_branch=else_g)
    nested = make_model([cond], [vinfo("c", TensorProto.BOOL, []), vinfo("X")], [vinfo("Z")])
    assert runtime.model_needs_library(nested)

    # inside a model-local function
    fn = helper.make_function("local", "F", ["X", "W"], ["Y"], [model.graph.node[0]],
                              [helper.make_opsetid("", 17), ggml_ops.onnxq_opset()])
    call = make_model([helper.make_node("F", ["X", "W"], ["Y"], domain="local")], [vinfo("X"), vinfo("W", TensorProto.UINT8)],
                      [vinfo("Y")])
    call.functions.append(fn)
    assert runtime.model_needs_library(call)

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\xff\x00not a model")
    with pytest.raises(ModelError, match="bad.onnx"):
        runtime.model_needs_library(str(bad))
    with pytest.raises(TypeError):
        runtime.model_needs_library(42)


def test_node_builders_spell_the_contract():
    assert ggml_ops.checked_row_bytes("Q5_0", 1024) * 32 == 22528  # the README's example
    assert ggml_ops.checked_row_bytes("Q4_K", 576, "Q8_0") == 2 * 144 + 2 * 34
    assert ggml_ops.checked_row_bytes("Q4_K", 300) == 2 * 144
    assert ggml_ops.checked_row_bytes("Q6_K", 300, "Q4_0") == 210 + 2 * 18
    blocks = np.zeros((4, 36), np.uint8)
    g = ggml_ops.make_ggml_matmul_node("n", "x", "y", blocks, quant_type="q4_0", K=64, N=4,
                                       bias=np.zeros(4, np.float32), mode="exact")
    assert (g.node.op_type, g.node.domain, list(g.node.input)) == ("GgmlMatMul", "onnxq", ["x", "n.W", "n.bias"])
    assert ggml_ops.ggml_node_attributes(g.node) == {"quant_type": "Q4_0", "K": 64, "N": 4, "tail_type": None,
                                                     "mode": "exact"}
    assert [t.name for t in g.initializers] == ["n.W", "n.bias"] and list(g.initializers[0].dims) == [4, 36]
    t = ggml_ops.make_ggml_gather_node("e", "ids", "h", "n.W", quant_type="Q4_0", K=64, N=4)
    assert list(t.node.input) == ["n.W", "ids"] and t.initializers == []
    assert ggml_ops.is_ggml_node(t.node) and not ggml_ops.is_ggml_node(helper.make_node("Gather", ["a", "b"], ["c"]))
    with pytest.raises(ModelError, match="GgmlMatMul .n.: blocks .n.W. have 108 bytes, Q4_0 with K=64 N=4 needs 144"):
        ggml_ops.make_ggml_matmul_node("n", "x", "y", blocks[:3], quant_type="Q4_0", K=64, N=4)
    with pytest.raises(ModelError, match="uint8"):
        ggml_ops.make_ggml_matmul_node("n", "x", "y", blocks.astype(np.int8), quant_type="Q4_0", K=64, N=4)
    with pytest.raises(ModelError, match="unknown ggml quant_type"):
        ggml_ops.make_ggml_gather_node("n", "i", "y", "t", quant_type="Q3_K", K=64, N=4)
    with pytest.raises(ModelError, match="only valid with a K-quant"):
        ggml_ops.checked_row_bytes("Q4_0", 64, "Q8_0")
    with pytest.raises(ModelError, match="mode"):
        ggml_ops.make_ggml_matmul_node("n", "x", "y", "t", quant_type="Q4_0", K=64, N=4, mode="turbo")
    with pytest.raises(ModelError, match="bias"):
        ggml_ops.make_ggml_matmul_node("n", "x", "y", "t", quant_type="Q4_0", K=64, N=4, bias=np.zeros(5, np.float32))


def test_concurrent_runs_on_two_sessions():
    """4 threads share 2 sessions (ORT runs compute concurrently on one kernel)."""
    rng = np.random.default_rng(11)
    K1, N1 = 256, 48
    b1, W1 = quantized_weight("Q5_K", N1, K1, rng)
    bias1 = rng.standard_normal(N1).astype(np.float32)
    m1 = ggml_ops.make_ggml_matmul_node("a", "X", "Y", b1, quant_type="Q5_K", K=K1, N=N1, bias=bias1)
    s1 = session(make_model([m1.node], [vinfo("X")], [vinfo("Y")], m1.initializers), threads=2)
    K2, N2 = 96, 40
    b2, W2 = quantized_weight("Q8_0", N2, K2, rng)
    m2 = ggml_ops.make_ggml_matmul_node("b", "X", "Y", "W", quant_type="Q8_0", K=K2, N=N2, mode="exact")
    g2 = ggml_ops.make_ggml_gather_node("g", "ids", "G", "W", quant_type="Q8_0", K=K2, N=N2)
    s2 = session(make_model([m2.node, g2.node], [vinfo("X"), vinfo("W", TensorProto.UINT8), vinfo("ids", TensorProto.INT64)],
                            [vinfo("Y"), vinfo("G")]), threads=2)
    failures = []
    start = threading.Barrier(4)

    def worker(tid):
        r = np.random.default_rng(100 + tid)
        start.wait()
        try:
            for it in range(25):
                M = int(r.integers(1, 70))
                if (tid + it) % 2 == 0:
                    x = r.standard_normal((M, K1)).astype(np.float32)
                    y = s1.run(None, {"X": x})[0]
                    if not np.all(np.abs(y - reference(x, W1, bias1)) <= fast_bound(x, W1, bias1)):
                        failures.append(f"thread {tid} run {it}: session 1 wrong")
                else:
                    x = r.standard_normal((M, K2)).astype(np.float32)
                    ids = r.integers(-N2, N2, size=M)
                    y, G = s2.run(None, {"X": x, "W": b2, "ids": ids})
                    if not np.all(np.abs(y - reference(x, W2)) <= exact_bound(x, W2)):
                        failures.append(f"thread {tid} run {it}: session 2 wrong")
                    if not np.array_equal(G, W2[ids]):
                        failures.append(f"thread {tid} run {it}: gather wrong")
        except Exception as exc:  # collected and reported by the main thread
            failures.append(f"thread {tid}: {exc!r}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
