"""Speed of onnxq's GgmlMatMul against onnxruntime's own ops, measured in one run.

For every (K, N) shape, M (rows of X) and intra-op thread count, this builds single-op
ONNX models and times one call of each:

* ``f32``     onnxruntime's float32 MatMul (weights as a float32 initializer: the baseline);
* ``nbits4``  onnxruntime's com.microsoft MatMulNBits, 4 bits, block_size 32,
              accuracy_level 4 (int8 compute): onnxruntime's own quantized peer;
* ``<TYPE>/<mode>`` onnxq's GgmlMatMul for every ggml type in fast and exact mode
              (K-quants with K not a multiple of 256 use the recipe's default tail type).

Variants and thread counts are timed round-robin (a batch of calls each after one untimed call,
several rounds) so that drift on a busy machine hits them alike; the figure is the median time
per call. Ratios are the peer's time divided by the variant's (> 1: the variant is faster),
each the median over rounds of the ratio within one round; ``x 1 thr`` is the gain over the
same op at 1 thread. Sessions spin their idle workers for 1 ms at most: by default they spin
for tens of ms, taking a core from the next variant's batch. Weights are random but
valid blocks (the kernels' cost does not depend on the values); ``--check`` first verifies
each onnxq model against X @ dequantize(W).T on small inputs.

    python benchmarks/op_speed.py                      # the whole grid (about 15-30 min)
    python benchmarks/op_speed.py --quick              # 4096x4096, M 1 and 512, 2 threads
    python benchmarks/op_speed.py --shapes 4096x4096 --M 1 --types Q4_0,Q6_K --threads 2
    python benchmarks/op_speed.py --M 1 --baseline-lib /other/checkout/onnxq/libonnxq_ops.so

``--baseline-lib`` adds every onnxq variant once more as ``<TYPE>/<mode>@base``, run by another
build of the op library (e.g. main's, to show a kernel change does not regress), in the same
round-robin; ``x base`` is then the baseline's time divided by this build's.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from onnxq import runtime  # noqa: E402
from onnxq.formats import BLOCK_TRAITS, WEIGHT_TYPES, default_tail_type  # noqa: E402
from onnxq.ggml.nodes import make_ggml_matmul_node, onnxq_opset  # noqa: E402

TYPES = list(WEIGHT_TYPES)
SHAPES = [(576, 1536), (1536, 576), (4096, 4096), (4096, 11008)]
MS = [1, 16, 512]
THREADS = [1, 2]
IR_VERSION = 10  # onnxruntime 1.2x rejects the IR 14 that onnx 1.23 writes by default


# ------------------------------------------------------------------ models


def _model(node, inits, K: int, N: int, opsets) -> bytes:
    graph = helper.make_graph(
        [node], "op",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["M", K])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", N])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), *opsets])
    model.ir_version = IR_VERSION
    return model.SerializeToString()


def f32_model(rng, K: int, N: int) -> bytes:
    W = (rng.standard_normal((K, N)) * 0.02).astype(np.float32)
    return _model(helper.make_node("MatMul", ["X", "W"], ["Y"]), [numpy_helper.from_array(W, "W")], K, N, [])


def nbits_model(rng, K: int, N: int) -> bytes:
    nb = K // 32
    B = rng.integers(0, 256, size=(N, nb, 16), dtype=np.uint8)
    S = rng.uniform(1e-3, 2e-3, size=N * nb).astype(np.float32)
    node = helper.make_node("MatMulNBits", ["X", "B", "S"], ["Y"], domain="com.microsoft",
                            K=K, N=N, bits=4, block_size=32, accuracy_level=4)
    return _model(node, [numpy_helper.from_array(B, "B"), numpy_helper.from_array(S, "S")], K, N,
                  [helper.make_opsetid("com.microsoft", 1)])


def random_blocks(rng, qtype: str, n: int) -> np.ndarray:
    """n valid blocks: random bytes, fp16 scales set to small sane values."""
    _, size = BLOCK_TRAITS[qtype]
    raw = rng.integers(0, 256, size=(n, size), dtype=np.uint8)
    half = rng.uniform(5e-4, 2e-3, size=(n, 2)).astype(np.float16).view(np.uint8).reshape(n, 4)
    if qtype == "Q6_K":
        raw[:, 208:210] = half[:, :2]
    elif qtype in ("Q4_1", "Q5_1", "Q4_K", "Q5_K"):
        raw[:, 0:4] = half
    else:
        raw[:, 0:2] = half[:, :2]
    return raw


def layout(qtype: str, K: int) -> Tuple[Optional[str], int, int]:
    """(tail type, main blocks, tail blocks) of a row, as the quantizer would store it."""
    qk, _ = BLOCK_TRAITS[qtype]
    tail = default_tail_type(qtype) if qk == 256 and K % 256 else None
    if tail is None:
        return None, -(-K // qk), 0
    return tail, K // qk, -(-(K % qk) // 32)


def ggml_weight(rng, qtype: str, K: int, N: int) -> Tuple[np.ndarray, Optional[str]]:
    tail, n_main, n_tail = layout(qtype, K)
    parts = [random_blocks(rng, qtype, N * n_main).reshape(N, -1)]
    if n_tail:
        parts.append(random_blocks(rng, tail, N * n_tail).reshape(N, -1))
    return np.ascontiguousarray(np.concatenate(parts, axis=1)), tail


def ggml_model(W: np.ndarray, qtype: str, tail: Optional[str], K: int, N: int, mode: str) -> bytes:
    g = make_ggml_matmul_node("q", "X", "Y", W, quant_type=qtype, K=K, N=N, tail_type=tail, mode=mode)
    return _model(g.node, g.initializers, K, N, [onnxq_opset()])


def dequantize(W: np.ndarray, qtype: str, tail: Optional[str], K: int) -> np.ndarray:
    from gguf import GGMLQuantizationType as QT
    from gguf.quants import dequantize as gdeq

    _, n_main, n_tail = layout(qtype, K)
    qk, size = BLOCK_TRAITS[qtype]
    out = [gdeq(W[:, : n_main * size], QT[qtype]).reshape(W.shape[0], -1)]
    if n_tail:
        out.append(gdeq(W[:, n_main * size:], QT[tail]).reshape(W.shape[0], -1))
    return np.concatenate(out, axis=1)[:, :K]


# ------------------------------------------------------------------ timing


class Runner:
    """A session bound to fixed input/output buffers: a call is one run_with_iobinding."""

    def __init__(self, model: bytes, threads: int, X: np.ndarray, N: int, library: Optional[str] = None):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Variants are timed in turn, so idle workers must not spin into the next variant's batch
        # (onnxruntime's default spin lasts tens of ms). Stopping them at the end of every run
        # (runtime.quiet_between_runs) would make each call of a 0.1 ms op pay a thread wake-up;
        # a 1 ms spin spans the gap between calls of a batch and ends before the next batch.
        so.add_session_config_entry("session.intra_op.spin_duration_us", "1000")
        if library:  # another build of the same ops (the baseline)
            so.register_custom_ops_library(library)
        else:
            runtime.register_library(so)
        self.sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        self.Y = np.empty((X.shape[0], N), dtype=np.float32)
        self.bind = self.sess.io_binding()
        self.bind.bind_cpu_input("X", X)
        self.bind.bind_output("Y", "cpu", 0, np.float32, list(self.Y.shape), self.Y.ctypes.data)
        self.sess.run_with_iobinding(self.bind)  # warm-up (and pre-packing done)

    def time(self, calls: int) -> float:
        """Seconds per call over ``calls`` calls, after one untimed call: the batch starts with this
        op's weights in cache and its threads awake, whatever variant ran before it."""
        self.sess.run_with_iobinding(self.bind)
        t = time.perf_counter()
        for _ in range(calls):
            self.sess.run_with_iobinding(self.bind)
        return (time.perf_counter() - t) / calls


def measure(runners: Dict, rounds: int, budget: float) -> Dict[object, List[float]]:
    """Seconds per call of each runner in every round (a batch each, round-robin)."""
    probe = {k: r.time(1) for k, r in runners.items()}
    calls = {k: max(1, int(budget / rounds / max(t, 1e-6))) for k, t in probe.items()}
    samples: Dict[object, List[float]] = {k: [] for k in runners}
    for _ in range(rounds):
        for k, r in runners.items():
            samples[k].append(r.time(calls[k]))
    return samples


def median_ratio(peer: List[float], this: List[float]) -> float:
    """Median over rounds of the peer's time / this one's time in the same round. A round takes
    a second or two, so the machine's slower drift (seen: +-20 % over seconds on a shared VM)
    cancels in each ratio, where a ratio of overall medians would keep it."""
    return statistics.median(p / t for p, t in zip(peer, this))


def ratio(samples: Dict[object, List[float]], peer, this) -> float:
    """:func:`median_ratio` of two runners' per-round times."""
    return median_ratio(samples[peer], samples[this])


# ------------------------------------------------------------------ main


def parse_list(text: str, conv) -> list:
    return [conv(t) for t in text.split(",") if t.strip()]


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default=",".join(f"{k}x{n}" for k, n in SHAPES), help="KxN,KxN,...")
    ap.add_argument("--M", default=",".join(map(str, MS)), help="rows of X, comma-separated")
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--modes", default="fast,exact")
    ap.add_argument("--threads", default=",".join(map(str, THREADS)))
    ap.add_argument("--rounds", type=int, default=5, help="round-robin rounds per measurement")
    ap.add_argument("--budget", type=float, default=0.25, help="seconds of calls per variant per measurement")
    ap.add_argument("--quick", action="store_true", help="4096x4096, M 1 and 512, 2 threads, 3 rounds")
    ap.add_argument("--check", action="store_true", help="verify each onnxq model's output first")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--baseline-lib", help="another build of libonnxq_ops.so to run every onnxq variant with too")
    args = ap.parse_args(argv)
    if args.quick:
        args.shapes, args.M, args.threads, args.rounds = "4096x4096", "1,512", "2", 3
    shapes = [tuple(int(v) for v in s.split("x")) for s in parse_list(args.shapes, str)]
    Ms, threads = parse_list(args.M, int), parse_list(args.threads, int)
    types = [t.upper() for t in parse_list(args.types, str)]
    modes = parse_list(args.modes, str)
    rng = np.random.default_rng(0)

    print(f"onnxruntime {ort.__version__}, onnxq kernels: {runtime.kernel_isa()}, cpus {os.cpu_count()}")
    if args.baseline_lib:
        print(f"baseline library {args.baseline_lib}, its kernels: {library_isa(args.baseline_lib)}")
    print("time per call: median of round-robin batches over every variant and thread count;\n"
          "x f32 / x nbits4 = the peer's time at the same thread count / this time (> 1: faster);\n"
          "x 1 thr = this op's time at 1 thread / this time (the gain from more threads);\n"
          "each ratio is the median over rounds of the ratio within a round\n")
    header = (f"| {'K x N':>11} | {'M':>4} | thr | {'op':<16} | {'ms/call':>9} | {'x f32':>6} | {'x nbits4':>8} "
              f"| {'x 1 thr':>7} |")
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    results = []
    for K, N in shapes:
        weights = {q: ggml_weight(rng, q, K, N) for q in types}
        models = {"f32": f32_model(rng, K, N), "nbits4": nbits_model(rng, K, N)}
        for q in types:
            W, tail = weights[q]
            for mode in modes:
                models[f"{q}/{mode}"] = ggml_model(W, q, tail, K, N, mode)
        if args.check:
            check(models, weights, types, modes, K, N, rng)
        for M in Ms:
            X = rng.standard_normal((M, K)).astype(np.float32)
            # every thread count in one round-robin, an op's thread counts next to each other: the
            # scaling column compares batches run seconds apart, not a whole table apart
            runners = {}
            for name, m in models.items():
                runners.update({(t, name): Runner(m, t, X, N) for t in threads})
                if args.baseline_lib and "/" in name:
                    runners.update({(t, f"{name}@base"): Runner(m, t, X, N, args.baseline_lib) for t in threads})
            samples = measure(runners, args.rounds, args.budget)
            del runners
            for t in threads:
                for tt, name in samples:
                    if tt == t:
                        results.append(report_row(samples, K, N, M, t, name, threads))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return 0


def report_row(samples: Dict[Tuple[int, str], List[float]], K: int, N: int, M: int, t: int, name: str,
               threads: List[int]) -> dict:
    """One result (printed as a table row): median time, ratios to the peers at t threads and to
    this op at 1 thread, each a median of per-round ratios."""
    this = (t, name)
    sec = statistics.median(samples[this])
    row = {"K": K, "N": N, "M": M, "threads": t, "op": name, "ms": sec * 1e3,
           "vs_f32": ratio(samples, (t, "f32"), this), "vs_nbits4": ratio(samples, (t, "nbits4"), this)}
    if 1 in threads:
        row["vs_1_thread"] = ratio(samples, (1, name), this)
    if (t, f"{name}@base") in samples:
        row["vs_base"] = ratio(samples, (t, f"{name}@base"), this)
    scaling = f"{row['vs_1_thread']:>7.2f}" if "vs_1_thread" in row else f"{'':>7}"
    extra = f" x base {row['vs_base']:.2f}" if "vs_base" in row else ""
    print(f"| {K:>5}x{N:<5} | {M:>4} | {t:>3} | {name:<16} | {sec * 1e3:>9.3f} | "
          f"{row['vs_f32']:>6.2f} | {row['vs_nbits4']:>8.2f} | {scaling} |{extra}", flush=True)
    return row


def library_isa(path: str) -> str:
    """The kernels another build of the library dispatches to (its onnxq_ops_kernel_isa)."""
    import ctypes

    fn = ctypes.CDLL(path).onnxq_ops_kernel_isa
    fn.restype = ctypes.c_char_p
    return fn().decode()


def check(models, weights, types, modes, K, N, rng) -> None:
    """Each onnxq model against X @ dequantize(W).T on 3 rows (fast: 2% of the magnitude)."""
    X = rng.standard_normal((3, K)).astype(np.float32)
    for q in types:
        W, tail = weights[q]
        ref = X.astype(np.float64) @ dequantize(W, q, tail, K).astype(np.float64).T
        mag = np.abs(X).astype(np.float64) @ np.abs(dequantize(W, q, tail, K)).astype(np.float64).T
        for mode in modes:
            so = ort.SessionOptions()
            runtime.register_library(so)
            sess = ort.InferenceSession(models[f"{q}/{mode}"], so, providers=["CPUExecutionProvider"])
            Y = sess.run(None, {"X": X})[0]
            err = float(np.max(np.abs(Y - ref) / (mag + 1e-30)))
            limit = 1e-5 if mode == "exact" else 2e-2
            status = "ok" if err <= limit else "FAILED"
            print(f"check {K}x{N} {q}/{mode}: max |err| / (|X||W|) = {err:.2e} {status}")
            if err > limit:
                raise SystemExit(f"{q}/{mode} gives wrong results")


if __name__ == "__main__":
    sys.exit(main())
