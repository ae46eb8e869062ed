"""examples/load_from_c builds against the onnxruntime library of the installed wheel and
runs an onnxq model from C, giving the same numbers as the Python API."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys

import numpy as np
import onnxruntime
import pytest
from onnx import helper

from onnxq import runtime
from onnxq.ggml.nodes import make_ggml_matmul_node
from ops_testlib import ROOT, make_model, quantized_weight, session, vinfo

EXAMPLE = os.path.join(ROOT, "examples", "load_from_c")


@pytest.fixture(scope="module")
def example_binary(tmp_path_factory):
    libs = sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so.*")))
    if not libs:
        pytest.skip("the installed onnxruntime wheel has no libonnxruntime.so.* to link the C example against")
    if shutil.which("make") is None or shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("make or a C compiler is missing")
    build = tmp_path_factory.mktemp("load_from_c")
    res = subprocess.run(
        ["make", "-C", EXAMPLE, f"BUILD={build}", f"ORT_LIB={libs[0]}", f"PYTHON={sys.executable}"],
        capture_output=True, text=True,
    )
    assert res.returncode == 0, f"the C example does not build:\n{res.stdout}\n{res.stderr}"
    return str(build / "load_from_c")


def _model(tmp_path, blocks, K, N, name="model.onnx"):
    e = make_ggml_matmul_node("proj", "X", "Y", blocks, quant_type="Q4_K", K=K, N=N, tail_type="Q8_0", mode="exact")
    path = tmp_path / name
    path.write_bytes(make_model([e.node], [vinfo("X")], [vinfo("Y")], e.initializers).SerializeToString())
    return str(path)


def test_c_example_runs_the_model_like_python(example_binary, tmp_path):
    K, N, M = 288, 12, 3
    blocks, W = quantized_weight("Q4_K", N, K, np.random.default_rng(0), tail_type="Q8_0")
    path = _model(tmp_path, blocks, K, N)
    res = subprocess.run([example_binary, runtime.get_library_path(), path, str(M), str(K)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.split("\n")
    assert lines[0] == f"{M} {N}"
    y_c = np.array([float(v) for v in lines[1:] if v], np.float32).reshape(M, N)
    x = (((np.arange(M * K) * 37) % 19 - 9) / 8.0).astype(np.float32).reshape(M, K)
    y_py = session(path, threads=2).run(None, {"X": x})[0]
    np.testing.assert_allclose(y_c, y_py, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(y_c, x @ W.T, rtol=1e-4, atol=1e-3)


def test_c_example_reports_onnxq_errors(example_binary, tmp_path):
    K, N = 288, 12
    # a truncated weight: the node's attributes ask for more bytes than the initializer has
    e = make_ggml_matmul_node("proj", "X", "Y", "W", quant_type="Q4_K", K=K, N=N, tail_type="Q8_0")
    bad = make_model([e.node], [vinfo("X")], [vinfo("Y")], [helper.make_tensor("W", 2, [10], bytes(10), raw=True)])
    path = tmp_path / "bad.onnx"
    path.write_bytes(bad.SerializeToString())
    res = subprocess.run([example_binary, runtime.get_library_path(), str(path), "1", str(K)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    assert "error: loading the model:" in res.stderr
    assert "GgmlMatMul 'proj': W has 10 bytes, Q4_K (tail Q8_0) with K=288 N=12 needs 2136" in res.stderr
