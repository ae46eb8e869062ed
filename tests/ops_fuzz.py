"""Randomized malformed (and valid) GgmlMatMul / GgmlGather models and inputs.

Run as a script so that a crash shows up as a failed subprocess rather than a dead test
run; prints one JSON summary line last. Used by tests/test_ops_malformed.py and by hand
under AddressSanitizer:

    ONNXQ_OPS_LIBRARY=/tmp/libonnxq_ops_asan.so LD_PRELOAD=$(gcc -print-file-name=libasan.so) \\
    ASAN_OPTIONS=detect_leaks=0,allocator_may_return_null=1 python tests/ops_fuzz.py --cases 5000

A Python-side oracle decides for every case whether it is valid: valid cases must run and
give the right shape (and the right numbers when the blocks come from a quantizer), invalid
ones must raise an onnxruntime error; errors the glue produces must name the op.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from onnxq.formats import K_QUANTS, MAX_K, MAX_N, TAIL_TYPES, WEIGHT_TYPES, row_bytes  # noqa: E402
from ops_testlib import ORT_ERRORS, fast_bound, make_model, quantized_weight, reference, session, vinfo  # noqa: E402

MISSING = object()
BAD_TYPE_NAMES = ["Q3_K", "Q2_K", "Q8_K", "Q8_1", "F16", "F32", "", "Q4", "Q4_0 ", "q4_k_m", "Q" * 63, "Q" * 64, "\u00e9"]
EDGE_INTS = [0, -1, -32, -(2**63), 2**31, 2**32 + 5, MAX_K, MAX_K + 1, 2**62, 2**63 - 1]
INT64_MAX = 2**63 - 1


def rand_type_attr(rng, valid_p=0.75, allow=WEIGHT_TYPES):
    r = rng.random()
    if r < valid_p:
        t = str(rng.choice(allow))
        return t.lower() if rng.random() < 0.1 else t
    if r < 0.93:
        return str(rng.choice(BAD_TYPE_NAMES))
    if r < 0.97:
        return int(rng.integers(0, 20))  # wrong attribute kind
    return MISSING


def rand_dim_attr(rng, lo, hi, valid_p=0.8):
    r = rng.random()
    if r < valid_p:
        return int(rng.integers(lo, hi + 1))
    if r < 0.94:
        return int(rng.choice(EDGE_INTS))
    if r < 0.97:
        return "12"  # a string where an int belongs
    return MISSING


class Attrs:
    """Random attributes of one node and whether onnxq accepts them."""

    def __init__(self, rng, op: str):
        self.op = op
        self.values: Dict[str, Any] = {
            "quant_type": rand_type_attr(rng),
            "K": rand_dim_attr(rng, 1, 600),
            "N": rand_dim_attr(rng, 1, 24),
        }
        r = rng.random()
        if r < 0.6:
            self.values["tail_type"] = MISSING
        elif r < 0.7:
            self.values["tail_type"] = ""
        else:
            self.values["tail_type"] = rand_type_attr(rng, 0.8, TAIL_TYPES + K_QUANTS)
        r = rng.random()
        self.values["mode"] = (
            MISSING if r < 0.4 else "exact" if r < 0.65 else "fast" if r < 0.9 else str(rng.choice(["", "Exact", "slow", "fast "]))
        )
        if rng.random() < 0.05:
            self.values["mode"] = 1

    def node_attrs(self) -> Dict[str, Any]:
        return {k: v for k, v in self.values.items() if v is not MISSING and not (k == "mode" and self.op != "GgmlMatMul")}

    def layout(self) -> Optional[Tuple[str, int, int, Optional[str], int]]:
        """(quant_type, K, N, tail_type, row_bytes) when the attributes are valid, else None."""
        v = self.values
        qt, K, N, tail, mode = v["quant_type"], v["K"], v["N"], v["tail_type"], v["mode"]
        if not isinstance(qt, str) or qt.upper() not in WEIGHT_TYPES:
            return None
        qt = qt.upper()
        if not (isinstance(K, int) and isinstance(N, int) and 1 <= K <= MAX_K and 1 <= N <= MAX_N):
            return None
        if tail is not MISSING:
            if not isinstance(tail, str):
                return None
            if tail:
                if tail.upper() not in TAIL_TYPES or qt not in K_QUANTS:
                    return None
                tail = tail.upper()
            else:
                tail = None
        else:
            tail = None
        if self.op == "GgmlMatMul" and mode is not MISSING and mode not in ("exact", "fast"):
            return None
        rb = row_bytes(qt, K, tail)
        if N * rb > INT64_MAX:
            return None
        return qt, K, N, tail, rb


class Fuzzer:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.stats = {"cases": 0, "valid": 0, "errors": 0, "creation_cases": 0, "runtime_cases": 0}
        self.mismatches: List[str] = []

    # -- outcome bookkeeping
    def expect(self, label: str, valid: bool, fn, glue_error: bool = True, check=None):
        self.stats["cases"] += 1
        try:
            out = fn()
        except ORT_ERRORS as exc:
            self.stats["errors"] += 1
            msg = str(exc)
            if valid:
                self.mismatches.append(f"{label}: expected success, got {msg[:300]}")
            elif glue_error and "Ggml" not in msg:
                self.mismatches.append(f"{label}: error does not name the op: {msg[:300]}")
            return None
        if not valid:
            self.mismatches.append(f"{label}: expected an error, got success")
            return None
        self.stats["valid"] += 1
        if check is not None:
            problem = check(out)
            if problem:
                self.mismatches.append(f"{label}: {problem}")
        return out

    # -- blocks
    def blocks(self, lay, exact_size: bool):
        """(array for W, dense weights or None)."""
        qt, K, N, tail, rb = lay
        rng = self.rng
        if exact_size and N * rb <= 1 << 20:
            if rng.random() < 0.5 and K <= 4096:
                b, w = quantized_weight(qt, N, K, rng, tail_type=tail)
                return b, w
            shape = (N, rb) if rng.random() < 0.7 else (N * rb,)
            return rng.integers(0, 256, size=shape, dtype=np.uint8), None
        size = N * rb
        if size > 1 << 20:
            return rng.integers(0, 256, size=int(rng.integers(0, 4096)), dtype=np.uint8), None
        delta = int(rng.choice([-1, 1, -rb, rb, -size, 17]))
        return rng.integers(0, 256, size=max(0, size + delta), dtype=np.uint8), None

    # -- creation-time cases: random attributes and constants
    def creation_case(self, i: int):
        rng = self.rng
        op = "GgmlMatMul" if rng.random() < 0.7 else "GgmlGather"
        attrs = Attrs(rng, op)
        lay = attrs.layout()
        valid = lay is not None
        glue_error = True
        const_w = rng.random() < 0.8
        w_arr, dense = None, None
        inits = []
        if const_w:
            if lay is not None:
                w_arr, dense = self.blocks(lay, exact_size=rng.random() < 0.7)
                valid = valid and w_arr.size == lay[2] * lay[4]
            else:
                w_arr = rng.integers(0, 256, size=int(rng.integers(0, 300)), dtype=np.uint8)
            if rng.random() < 0.05:
                w_arr = w_arr.astype(np.int8)  # refused by onnxruntime's type check
                valid, glue_error = False, False
            inits.append(numpy_helper.from_array(w_arr, "W"))
        bias = None
        if op == "GgmlMatMul" and rng.random() < 0.4:
            n = lay[2] if lay and lay[2] <= 4096 else 4
            r = rng.random()
            if r < 0.7:
                bias = rng.standard_normal(n).astype(np.float32)
                valid = valid and lay is not None and bias.shape == (lay[2],)
            elif r < 0.9:
                bias = np.zeros(int(rng.choice([n + 1, max(n - 1, 0), 0])), np.float32)
                valid = valid and lay is not None and bias.shape == (lay[2],)
            else:
                bias = np.zeros((1, n), np.float32)
                valid = False
            inits.append(numpy_helper.from_array(bias, "B"))
        if op == "GgmlMatMul":
            ins = ["X", "W"] + (["B"] if bias is not None else [])
            graph_in = [vinfo("X")] + ([] if const_w else [vinfo("W", TensorProto.UINT8)])
        else:
            ins = ["W", "ids"]
            graph_in = [vinfo("ids", TensorProto.INT64)] + ([] if const_w else [vinfo("W", TensorProto.UINT8)])
        node = helper.make_node(op, ins, ["Y"], name=f"fz{i}", domain="onnxq", **attrs.node_attrs())
        model = make_model([node], graph_in, [vinfo("Y")], inits)
        label = f"creation#{i} {op} {attrs.node_attrs()} W={None if w_arr is None else (w_arr.dtype.name, w_arr.size)}"
        self.stats["creation_cases"] += 1
        sess = self.expect(label, valid, lambda: session(model), glue_error)
        if sess is None or lay is None or not const_w:
            return
        qt, K, N, tail, rb = lay
        if op == "GgmlMatMul":
            M = int(rng.integers(0, 5))
            X = rng.standard_normal((M, K)).astype(np.float32)

            def check(out):
                y = out[0]
                if y.shape != (M, N):
                    return f"shape {y.shape} != {(M, N)}"
                if dense is not None:
                    err = np.abs(y - reference(X, dense, bias))
                    if not np.all(err <= fast_bound(X, dense, bias)):
                        return f"wrong result, max error {err.max()}"
                return None

            self.expect(label + " run", True, lambda: sess.run(None, {"X": X}), check=check)
            self.expect(label + " run bad X", False, lambda: sess.run(None, {"X": np.zeros((2, K + 1), np.float32)}))
        else:
            ids = rng.integers(-N, N, size=(2, 3))

            def check(out):
                if out[0].shape != (2, 3, K):
                    return f"shape {out[0].shape}"
                if dense is not None and not np.allclose(out[0], dense[ids], rtol=1e-6, atol=1e-6 * np.abs(dense).max()):
                    return "wrong rows"
                return None

            self.expect(label + " run", True, lambda: sess.run(None, {"ids": ids}), check=check)
            self.expect(label + " run bad ids", False, lambda: sess.run(None, {"ids": np.array([N])}))

    # -- run-time cases on a pool of sessions whose W (and bias) are graph inputs
    def make_pool(self, size: int):
        pool = []
        rng = self.rng
        while len(pool) < size:
            op = "GgmlMatMul" if len(pool) % 2 == 0 else "GgmlGather"
            qt = str(rng.choice(WEIGHT_TYPES))
            tail = str(rng.choice(TAIL_TYPES)) if qt in K_QUANTS and rng.random() < 0.5 else None
            K, N = int(rng.integers(1, 600)), int(rng.integers(1, 24))
            if op == "GgmlMatMul":
                has_bias = bool(rng.random() < 0.5)
                mode = str(rng.choice(["exact", "fast"]))
                ins = ["X", "W"] + (["B"] if has_bias else [])
                node = helper.make_node(op, ins, ["Y"], name=f"pool{len(pool)}", domain="onnxq", quant_type=qt, K=K,
                                        N=N, mode=mode, **({"tail_type": tail} if tail else {}))
                gin = [vinfo("X"), vinfo("W", TensorProto.UINT8)] + ([vinfo("B")] if has_bias else [])
                idx_type = None
            else:
                has_bias = False
                idx_type = int(rng.choice([TensorProto.INT64, TensorProto.INT32, TensorProto.FLOAT]))
                node = helper.make_node(op, ["W", "ids"], ["Y"], name=f"pool{len(pool)}", domain="onnxq", quant_type=qt,
                                        K=K, N=N, **({"tail_type": tail} if tail else {}))
                gin = [vinfo("W", TensorProto.UINT8), vinfo("ids", idx_type)]
            sess = session(make_model([node], gin, [vinfo("Y")]), threads=int(rng.integers(1, 3)))
            pool.append((op, (qt, K, N, tail, row_bytes(qt, K, tail)), has_bias, idx_type, sess))
        return pool

    def runtime_case(self, i: int, entry):
        rng = self.rng
        op, lay, has_bias, idx_type, sess = entry
        qt, K, N, tail, rb = lay
        w, dense = self.blocks(lay, exact_size=rng.random() < 0.6)
        valid = w.size == N * rb
        feeds: Dict[str, np.ndarray] = {"W": w}
        if op == "GgmlMatMul":
            rank = int(rng.integers(0, 4))
            lead = tuple(int(d) for d in rng.integers(0, 4, size=max(rank - 1, 0)))
            last = K if rng.random() < 0.8 else int(rng.choice([K + 1, K - 1, 0, 1]))
            shape = lead + (last,) if rank >= 1 else ()
            X = np.asarray(rng.standard_normal(shape), dtype=np.float32)
            valid = valid and rank >= 1 and last == K
            feeds["X"] = X
            b = None
            if has_bias:
                r = rng.random()
                b = (rng.standard_normal(N) if r < 0.8 else rng.standard_normal(int(rng.choice([N + 1, N - 1])))
                     if r < 0.93 else rng.standard_normal((1, N))).astype(np.float32)
                valid = valid and b.shape == (N,)
                feeds["B"] = b

            def check(out):
                y = out[0]
                if y.shape != shape[:-1] + (N,):
                    return f"shape {y.shape} != {shape[:-1] + (N,)}"
                if dense is not None:
                    err = np.abs(y - reference(X, dense, b))
                    if not np.all(err <= fast_bound(X, dense, b)):
                        return f"wrong result, max error {err.max()}"
                return None

        else:
            ishape = tuple(int(d) for d in rng.integers(0, 4, size=int(rng.integers(0, 4))))
            ids = np.asarray(rng.integers(-N, N, size=ishape))
            if ids.size and rng.random() < 0.3:
                bad = int(rng.choice([N, -N - 1, N + 1000, INT64_MAX, -(2**63), 2**31 - 1, -(2**31)]))
                ids.flat[int(rng.integers(0, ids.size))] = bad
            np_type = {TensorProto.INT64: np.int64, TensorProto.INT32: np.int32, TensorProto.FLOAT: np.float32}[idx_type]
            in_range = bool(np.all((ids >= -N) & (ids < N)))
            ids = np.asarray(ids.astype(np_type) if idx_type != TensorProto.INT32 else np.clip(ids, -(2**31), 2**31 - 1).astype(np.int32))
            in_range = in_range and bool(np.all((ids.astype(np.int64) >= -N) & (ids.astype(np.int64) < N)))
            valid = valid and idx_type != TensorProto.FLOAT and (in_range or (ids.size == 0))
            feeds["ids"] = ids

            def check(out):
                if out[0].shape != ishape + (K,):
                    return f"shape {out[0].shape}"
                if dense is not None and ids.size:
                    ref = dense[ids.astype(np.int64)]
                    if not np.allclose(out[0], ref, rtol=1e-6, atol=1e-6 * (np.abs(dense).max() + 1e-30)):
                        return "wrong rows"
                return None

        label = f"runtime#{i} {op} {lay} feeds={ {k: (v.dtype.name, v.shape) for k, v in feeds.items()} }"
        self.stats["runtime_cases"] += 1
        self.expect(label, valid, lambda: sess.run(None, feeds), check=check)

    def run(self, cases: int):
        pool = self.make_pool(12)
        i = 0
        while self.stats["cases"] < cases:
            if self.rng.random() < 0.3:
                self.creation_case(i)
            else:
                self.runtime_case(i, pool[int(self.rng.integers(0, len(pool)))])
            i += 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=1200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    fz = Fuzzer(args.seed)
    fz.run(args.cases)
    out = dict(fz.stats, seed=args.seed, mismatches=fz.mismatches[:50], n_mismatches=len(fz.mismatches))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
