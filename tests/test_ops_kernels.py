"""The custom-op compute kernels against an independent reference (the gguf package).

The kernels (cython_kernels/ops/kernels_*.c) are built here, without onnxruntime, into a
small shared library together with tests/native/harness.c (a pthread runner and one-call
wrappers), and called through ctypes:

* matmul, both modes, every type, M in {1, 3, 8, 64, 513}, K unpadded / padded / with a
  K-quant tail, 1 and 2 threads, with and without bias, on every ISA this CPU runs:
  exact mode within float32 accumulation error of X @ dequantize(W).T, fast mode within
  the bound that Q8 activation rounding implies (|w| . amax_block / 254 per term);
* gather: bit-identical to gguf's dequantize.

The native unit tests (SIMD against scalar on random blocks, under AddressSanitizer) are in
test_ops_kernels_native.py.
"""
from __future__ import annotations

import ctypes
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "native"))
import kbuild  # noqa: E402

gguf_quants = pytest.importorskip("gguf.quants")
from gguf import GGMLQuantizationType as QT  # noqa: E402

ROOT = kbuild.ROOT

TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"]
KQUANTS = {"Q4_K", "Q5_K", "Q6_K"}
BLOCK = {"Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22), "Q5_1": (32, 24), "Q8_0": (32, 34),
         "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210)}
ISA_NAMES = {0: "scalar", 1: "avx2", 2: "avxvnni", 3: "avx512vnni", 4: "neon", 5: "dotprod", 6: "i8mm"}


@pytest.fixture(scope="session")
def lib(tmp_path_factory):
    if kbuild.compiler() is None:
        pytest.skip("no C compiler")
    objs = [o for o in kbuild.objects(kbuild.OPT) if not o.endswith("/test_kernels.o")]
    h = ctypes.CDLL(kbuild.link(objs, str(tmp_path_factory.mktemp("kernels") / "libharness.so"), [], shared=True))
    i64, p = ctypes.c_int64, ctypes.c_void_p
    h.h_matmul.argtypes = [ctypes.c_int, ctypes.c_int, i64, i64, p, p, i64, p, p, ctypes.c_int, ctypes.c_int]
    h.h_gather.argtypes = [ctypes.c_int, ctypes.c_int, i64, i64, p, p, i64, p, ctypes.c_int]
    h.h_row_bytes.argtypes = [ctypes.c_int, ctypes.c_int, i64]
    h.h_row_bytes.restype = i64
    h.h_isa.restype = ctypes.c_char_p
    return h


def available_isas(lib) -> list[int]:
    return [i for i in ISA_NAMES if lib.h_set_isa(i)]


def ptr(a):
    return None if a is None else a.ctypes.data


# ---------------------------------------------------------------- test data


def random_kquant_blocks(rng, qtype: str, nblocks: int) -> np.ndarray:
    """Random K-quant blocks: any byte pattern is a valid block once the fp16 scales are sane."""
    _, size = BLOCK[qtype]
    raw = rng.integers(0, 256, size=(nblocks, size), dtype=np.uint8)
    d = rng.uniform(2e-4, 2e-3, size=nblocks).astype(np.float16).view(np.uint8).reshape(nblocks, 2)
    dmin = rng.uniform(1e-4, 1e-3, size=nblocks).astype(np.float16).view(np.uint8).reshape(nblocks, 2)
    if qtype == "Q6_K":
        raw[:, 208:210] = d
    else:
        raw[:, 0:2] = d
        raw[:, 2:4] = dmin
    return raw


def make_weight(rng, qtype: str, tail: str | None, K: int, N: int):
    """(row bytes [N, row_bytes] uint8, dequantized [N, K] float32) in onnxq's row layout."""
    bs, _ = BLOCK[qtype]
    if tail is None:
        n_main, main_elems, tail_elems = -(-K // bs), -(-K // bs) * bs, 0
    else:
        n_main = K // bs
        main_elems = n_main * bs
        tail_elems = -(-(K - main_elems) // 32) * 32
    parts, deq = [], []
    if n_main:
        if qtype in KQUANTS:
            blocks = random_kquant_blocks(rng, qtype, N * n_main).reshape(N, -1)
        else:
            w = rng.standard_normal((N, main_elems)).astype(np.float32)
            w[:, K:] = 0.0  # the padding of the last block quantizes zeros
            blocks = gguf_quants.quantize(w, QT[qtype])
        parts.append(blocks)
        deq.append(gguf_quants.dequantize(blocks, QT[qtype]).reshape(N, main_elems))
    if tail_elems:
        w = rng.standard_normal((N, tail_elems)).astype(np.float32)
        w[:, K - main_elems:] = 0.0
        blocks = gguf_quants.quantize(w, QT[tail])
        parts.append(blocks)
        deq.append(gguf_quants.dequantize(blocks, QT[tail]).reshape(N, tail_elems))
    W = np.ascontiguousarray(np.concatenate(parts, axis=1))
    Wd = np.concatenate(deq, axis=1)[:, :K].astype(np.float32)
    return W, Wd


def type_id(name: str | None) -> int:
    return -1 if name is None else int(QT[name])


def act_block_amax(X: np.ndarray, qtype: str, tail: str | None) -> np.ndarray:
    """Per element, the abs-max of the 32-element activation block it is quantized in (every
    type; ``qtype`` and ``tail`` do not change the blocks)."""
    M, K = X.shape
    padded = -(-K // 32) * 32
    seg = np.pad(np.abs(X), ((0, 0), (0, padded - K))).reshape(M, -1, 32)
    return np.repeat(seg.max(axis=2), 32, axis=1)[:, :K]


def run_matmul(lib, qtype, tail, K, N, W, X, bias, mode, threads):
    M = X.shape[0]
    Y = np.full((M, N), np.nan, dtype=np.float32)
    rc = lib.h_matmul(type_id(qtype), type_id(tail), K, N, ptr(W), ptr(X), M, ptr(bias), ptr(Y), mode, threads)
    assert rc == 0
    return Y


def check_matmul(Y, X, Wd, bias, mode, qtype, tail):
    X64, W64 = X.astype(np.float64), Wd.astype(np.float64)
    ref = X64 @ W64.T + (0.0 if bias is None else bias.astype(np.float64))
    mag = np.abs(X64) @ np.abs(W64).T + (0.0 if bias is None else np.abs(bias.astype(np.float64)))
    # float32 accumulation: a few ulps of the magnitude sum, generously.
    tol = 2e-6 * np.sqrt(X.shape[1]) * mag + 1e-30
    if mode == 1:
        # Q8 activation rounding moves each x by at most amax_block / 254; plus float error.
        tol = tol + (act_block_amax(X, qtype, tail).astype(np.float64) / 254.0) @ np.abs(W64).T * 1.001
    err = np.abs(Y.astype(np.float64) - ref)
    assert np.all(np.isfinite(Y))
    worst = np.unravel_index(np.argmax(err - tol), err.shape)
    assert np.all(err <= tol), f"worst at {worst}: err {err[worst]:.3g} > tol {tol[worst]:.3g}"
    return err, tol


# K cases per type: (K, tail)
def k_cases(qtype):
    if qtype in KQUANTS:
        return [(512, None), (300, None), (600, "Q8_0"), (520, "Q5_0"), (700, "Q4_1")]
    return [(96, None), (100, None), (1000, None)]


@pytest.mark.parametrize("qtype", TYPES)
def test_matmul_all_paths(lib, qtype):
    rng = np.random.default_rng(int(QT[qtype]))
    N = 44  # not a multiple of 8 or 16: a padded group and a half micro-tile
    for K, tail in k_cases(qtype):
        W, Wd = make_weight(rng, qtype, tail, K, N)
        assert W.shape[1] == lib.h_row_bytes(type_id(qtype), type_id(tail), K)
        bias = rng.standard_normal(N).astype(np.float32)
        for M in (1, 3, 8, 64, 513):
            if M == 513 and K > 600:
                continue
            X = rng.standard_normal((M, K)).astype(np.float32)
            for isa in available_isas(lib):
                assert lib.h_set_isa(isa)
                for mode in (0, 1):
                    for threads in (1, 2):
                        b = bias if threads == 2 else None
                        Y = run_matmul(lib, qtype, tail, K, N, W, X, b, mode, threads)
                        check_matmul(Y, X, Wd, b, mode, qtype, tail)


@pytest.mark.parametrize("qtype", TYPES)
def test_fast_mode_error_is_activation_rounding(lib, qtype):
    """Fast mode's error is of the size Q8 rounding implies, and exact mode is much closer."""
    rng = np.random.default_rng(7)
    K, N, M = 512, 64, 4
    W, Wd = make_weight(rng, qtype, None, K, N)
    X = rng.standard_normal((M, K)).astype(np.float32)
    lib.h_set_isa(max(available_isas(lib)))
    ref = X.astype(np.float64) @ Wd.astype(np.float64).T
    e_exact = np.abs(run_matmul(lib, qtype, None, K, N, W, X, None, 0, 1) - ref).max()
    e_fast = np.abs(run_matmul(lib, qtype, None, K, N, W, X, None, 1, 1) - ref).max()
    scale = np.abs(ref).max()
    assert e_exact < 1e-5 * scale
    assert 1e-6 * scale < e_fast < 2e-2 * scale


def test_matmul_golden_kquant_blocks(lib):
    """Real ggml-quantized K-quant rows (tests/data/ggml-vectors.npz), all cases, every ISA."""
    data = np.load(os.path.join(ROOT, "tests", "data", "ggml-vectors.npz"))
    rng = np.random.default_rng(3)
    K, N = 512, 8
    for qtype in TYPES:
        for case in ("normal", "heavy_tail", "scaled_mix", "edge"):
            W = data[f"{qtype}/{case}"].reshape(N, -1)
            Wd = gguf_quants.dequantize(W, QT[qtype]).reshape(N, K)
            finite = np.all(np.isfinite(Wd), axis=1)  # 'edge' row 4 (~3e4) overflows fp16 scales
            W, Wd = np.ascontiguousarray(W[finite]), Wd[finite]
            X = rng.standard_normal((9, K)).astype(np.float32)
            for isa in available_isas(lib):
                lib.h_set_isa(isa)
                for mode in (0, 1):
                    for M in (1, 9):
                        Y = run_matmul(lib, qtype, None, K, W.shape[0], W, X[:M], None, mode, 1)
                        check_matmul(Y, X[:M], Wd, None, mode, qtype, None)


@pytest.mark.parametrize("qtype", TYPES)
def test_gather_is_bit_exact(lib, qtype):
    rng = np.random.default_rng(11)
    N = 21
    for K, tail in k_cases(qtype):
        W, Wd = make_weight(rng, qtype, tail, K, N)
        idx = rng.integers(0, N, size=37).astype(np.int64)
        for threads in (1, 2):
            Y = np.full((idx.size, K), np.nan, dtype=np.float32)
            rc = lib.h_gather(type_id(qtype), type_id(tail), K, N, ptr(W), ptr(idx), idx.size, ptr(Y), threads)
            assert rc == 0
            np.testing.assert_array_equal(Y, Wd[idx])


def test_zero_rows_and_columns(lib):
    rng = np.random.default_rng(5)
    W, _ = make_weight(rng, "Q4_0", None, 64, 8)
    Y = np.zeros((0, 8), dtype=np.float32)
    X = np.zeros((0, 64), dtype=np.float32)
    assert lib.h_matmul(type_id("Q4_0"), -1, 64, 8, ptr(W), ptr(X), 0, None, ptr(Y), 1, 2) == 0
    assert lib.h_gather(type_id("Q4_0"), -1, 64, 8, ptr(W), None, 0, ptr(Y), 2) == 0


@pytest.mark.parametrize("qtype", TYPES)
def test_fast_mode_is_batch_independent(lib, qtype):
    """A row's fast-mode result is bit-identical alone (the dot kernels) and in a batch of any
    size (the integer GEMM from 16 rows on), with any thread count, on every ISA: odd K (padded
    blocks, K-quant tails), N = 1 and N not a multiple of 8, 16 or 32."""
    rng = np.random.default_rng(13)
    tail = {"Q4_K": "Q8_0", "Q5_K": "Q5_0", "Q6_K": "Q4_1"}.get(qtype)
    K = 600 if tail else 100
    X = rng.standard_normal((513, K)).astype(np.float32)
    for N in (1, 13, 44):
        W, _ = make_weight(rng, qtype, tail, K, N)
        bias = rng.standard_normal(N).astype(np.float32)
        for isa in available_isas(lib):
            lib.h_set_isa(isa)
            alone = {i: run_matmul(lib, qtype, tail, K, N, W, np.ascontiguousarray(X[i:i + 1]), bias, 1, 1)[0]
                     for i in (0, 1, 2, 16, 63, 512)}
            for M, threads in ((2, 1), (3, 2), (17, 3), (64, 2), (513, 1), (513, 2)):
                Y = run_matmul(lib, qtype, tail, K, N, W, X[:M], bias, 1, threads)
                for i, ref in alone.items():
                    if i < M:
                        np.testing.assert_array_equal(Y[i], ref, err_msg=f"{ISA_NAMES[isa]} M={M} threads={threads} row {i}")
