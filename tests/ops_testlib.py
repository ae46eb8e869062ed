"""Shared helpers of the custom-op tests (tests/test_ops_*.py, tests/ops_fuzz.py): quantized
weights with their exact dequantized values, in-memory models, sessions, error bounds."""
from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from typing import List, Optional, Sequence, Tuple

import numpy as np
import onnx
import onnxruntime as ort
import onnxruntime.capi.onnxruntime_pybind11_state as _C
from gguf import GGMLQuantizationType as GT
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize
from onnx import TensorProto, helper

from onnxq import runtime
from onnxq.formats import BLOCK_TRAITS, K_QUANTS, row_bytes
from onnxq.ggml.nodes import onnxq_opset

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OPS_DIR = os.path.join(ROOT, "cython_kernels", "ops")
VECTORS = os.path.join(HERE, "data", "ggml-vectors.npz")
IR_VERSION = 10
EPS32 = float(np.finfo(np.float32).eps)

# Every exception class onnxruntime's Python binding raises for an error status.
ORT_ERRORS: Tuple[type, ...] = tuple(
    getattr(_C, n)
    for n in (
        "Fail", "InvalidArgument", "NoSuchFile", "NoModel", "EngineError", "RuntimeException",
        "InvalidProtobuf", "ModelLoaded", "NotImplemented", "InvalidGraph", "EPFail", "NotFound",
    )
    if hasattr(_C, n)
)

# AddressSanitizer's operator new cannot fail softly: under a preloaded libasan an
# allocation that onnxruntime expects to see refused aborts the process instead.
UNDER_ASAN = "libasan" in os.environ.get("LD_PRELOAD", "")

_GT = {name: getattr(GT, name) for name in BLOCK_TRAITS}


def make_model(nodes, inputs, outputs, initializers=()) -> onnx.ModelProto:
    graph = helper.make_graph(list(nodes), "ops_test", list(inputs), list(outputs), initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), onnxq_opset()])
    model.ir_version = IR_VERSION  # onnx >= 1.23 writes 14, newer than some onnxruntime releases read
    return model


def vinfo(name: str, elem_type=TensorProto.FLOAT, shape=None):
    return helper.make_tensor_value_info(name, elem_type, shape)


def session(model, threads: int = 1, quiet: bool = True) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    if quiet:
        so.log_severity_level = 4  # expected failures would otherwise log at ERROR
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return runtime.InferenceSession(data, so)


# ---------------------------------------------------------------- quantized weights

_POOL = {}


def _superblock_pool(qtype: str) -> np.ndarray:
    """All super-blocks ggml produced for qtype in the golden vectors: [n, type_size]."""
    if qtype not in _POOL:
        size = BLOCK_TRAITS[qtype][1]
        with np.load(VECTORS) as z:
            parts = [z[f"{qtype}/{case}"] for case in ("normal", "heavy_tail", "scaled_mix", "edge")]
        _POOL[qtype] = np.concatenate(parts).reshape(-1, size)
    return _POOL[qtype]


def _quantize32(qtype: str, values: np.ndarray) -> np.ndarray:
    return np.asarray(gguf_quantize(values.astype(np.float32), _GT[qtype]), dtype=np.uint8)


def _deq(qtype: str, blocks: np.ndarray, rows: int) -> np.ndarray:
    return np.asarray(gguf_dequantize(blocks.reshape(rows, -1), _GT[qtype]), dtype=np.float32).reshape(rows, -1)


def quantized_weight(
    qtype: str, N: int, K: int, rng: np.random.Generator, tail_type: Optional[str] = None, scale: float = 1.0
) -> Tuple[np.ndarray, np.ndarray]:
    """(blocks uint8 [N, row_bytes], W float32 [N, K] = exactly what the blocks decode to).

    32-element types are quantized by gguf (byte-identical to ggml); K-quant super-blocks are
    drawn from ggml's own output in the golden vectors (gguf cannot quantize K-quants), so
    their padding elements are arbitrary values, which the kernels must ignore."""
    qk, size = BLOCK_TRAITS[qtype]
    if qk == 32:
        n_main = -(-K // 32)
        dense = np.zeros((N, n_main * 32), np.float32)
        dense[:, :K] = rng.standard_normal((N, K)).astype(np.float32) * scale
        main = _quantize32(qtype, dense).reshape(N, -1)
        w = _deq(qtype, main, N)[:, :K]
        return np.ascontiguousarray(main), np.ascontiguousarray(w)
    n_main = (K // qk) if tail_type else -(-K // qk)
    parts, dense_parts = [], []
    if n_main:
        pool = _superblock_pool(qtype)
        pick = pool[rng.integers(0, len(pool), size=N * n_main)].reshape(N, n_main * size)
        parts.append(pick)
        dense_parts.append(_deq(qtype, pick, N))
    if tail_type:
        rem = K - n_main * qk
        n_tail = -(-rem // 32)
        if n_tail:
            t = np.zeros((N, n_tail * 32), np.float32)
            t[:, :rem] = rng.standard_normal((N, rem)).astype(np.float32) * scale
            tb = _quantize32(tail_type, t).reshape(N, -1)
            parts.append(tb)
            dense_parts.append(_deq(tail_type, tb, N))
    blocks = np.ascontiguousarray(np.concatenate(parts, axis=1))
    assert blocks.shape == (N, row_bytes(qtype, K, tail_type))
    w = np.concatenate(dense_parts, axis=1)[:, :K]
    return blocks, np.ascontiguousarray(w)


# ---------------------------------------------------------------- reference and error bounds


def reference(X: np.ndarray, W: np.ndarray, bias: Optional[np.ndarray] = None) -> np.ndarray:
    """X @ W.T (+ bias) in float64."""
    return MatMulOracle(W, bias)(X)[0]


def exact_bound(X: np.ndarray, W: np.ndarray, bias: Optional[np.ndarray] = None) -> np.ndarray:
    """Worst-case error of exact mode (see MatMulOracle)."""
    return MatMulOracle(W, bias)(X)[1]


def fast_bound(X: np.ndarray, W: np.ndarray, bias: Optional[np.ndarray] = None) -> np.ndarray:
    """Worst-case error of fast mode (see MatMulOracle)."""
    return MatMulOracle(W, bias)(X)[2]


class MatMulOracle:
    """Reference and worst-case error bounds of X @ W.T (+ bias) for one weight; the
    weight-side terms are computed once since the checks run for many activations.

    exact: any float32 summation order, weights dequantized in float32 with any
    association: gamma_(K+4) * sum |x||w| (+ 2 eps |bias|).
    fast: exact plus the error of quantizing each activation row to 8-bit blocks (Q8_0,
    Q8_1 or Q8_K): an element moves by at most half a step of its block, amax/127/2, plus
    the fp16 rounding of the block scale (<= 127 * 2^-11 steps); Q8_1's fp16 block sum
    s = d*sum(q) adds 2^-11 |s| |m| per 32-block for the types with a min, bounded by
    2^-9 * sum_block |x| * max_block |w|. Blocks are bounded by the 256-element group
    that contains them, which covers 32- and 256-element activation blocks alike.
    """

    def __init__(self, W: np.ndarray, bias: Optional[np.ndarray] = None):
        self.K = W.shape[1]
        self.Wt = W.astype(np.float64).T
        self.absWt = np.abs(self.Wt)
        K32 = -(-self.K // 32) * 32
        Wp = np.zeros((W.shape[0], K32))
        Wp[:, : self.K] = np.abs(W)
        self.wmaxT = np.repeat(Wp.reshape(W.shape[0], K32 // 32, 32).max(axis=2), 32, axis=1)[:, : self.K].T
        self.bias = None if bias is None else bias.astype(np.float64)

    def __call__(self, X: np.ndarray):
        """(reference, exact bound, fast bound), each shaped [..., N] like X's rows."""
        K = self.K
        Xf = X.reshape(-1, K).astype(np.float64)
        ax = np.abs(Xf)
        ref = Xf @ self.Wt
        exact = (K + 4) * EPS32 * (ax @ self.absWt) + 1e-30
        if self.bias is not None:
            ref += self.bias
            exact += 2 * EPS32 * np.abs(self.bias)
        Kp = -(-K // 256) * 256
        Xp = np.zeros((Xf.shape[0], Kp))
        Xp[:, :K] = ax
        amax = Xp.reshape(Xf.shape[0], Kp // 256, 256).max(axis=2, initial=0.0)
        step = np.repeat(amax / 127.0, 256, axis=1)[:, :K] * (0.5 + 127 * 2.0**-11)
        fast = exact + step @ self.absWt + 2.0**-9 * (ax @ self.wmaxT)
        shape = X.shape[:-1] + (self.Wt.shape[1],)
        return ref.reshape(shape), exact.reshape(shape), fast.reshape(shape)


# ---------------------------------------------------------------- native builds


def c_compiler() -> Optional[str]:
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(cc) or shutil.which("cc") or shutil.which("gcc")


def build_ops_library(out: str, extra: Sequence[str] = (), opt: str = "-O1") -> str:
    """Compile every cython_kernels/ops/*.c into `out` with setup.py's flags plus `extra`
    (a coverage or sanitizer variant of the shipped library)."""
    cc = c_compiler()
    if cc is None:
        raise RuntimeError("no C compiler")
    sources = sorted(os.path.join(OPS_DIR, f) for f in os.listdir(OPS_DIR) if f.endswith(".c"))
    cmd = [
        cc, "-std=c11", "-D_GNU_SOURCE", opt, "-fno-strict-aliasing", "-ffp-contract=off", "-fno-math-errno",
        "-fvisibility=hidden", "-fPIC", "-Wall", "-Wextra", "-Wshadow", "-Wno-unused-parameter",
        "-I" + os.path.join(ROOT, "cython_kernels"), "-I" + OPS_DIR, *extra, "-shared", "-o", out, *sources,
        "-Wl,-z,defs", "-lm",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"building {out} failed:\n{' '.join(cmd)}\n{res.stderr}")
    return out


def ops_sources_complete() -> List[str]:
    """The .c files of cython_kernels/ops (empty list: the tree has no library sources yet)."""
    return sorted(f for f in os.listdir(OPS_DIR) if f.endswith(".c"))
