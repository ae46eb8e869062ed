"""Randomized malformed (and valid) GgmlMatMul / GgmlGather models and inputs.

Every case (one random model, or one random input set for a pooled session) is derived
from ``(seed, case index)`` alone, so any case can be replayed on its own. Cases run in
guarded worker subprocesses, a batch each: when a worker dies (a signal, a sanitizer
report, a non-zero exit, a hang past ``--timeout``) the case it was running is counted as
a crash with its exit status, and a new worker carries on with the next case. The last
line printed is a JSON summary with, per seed and in total: cases, checks (one model load
or one run), valid runs, errors as expected, mismatches and crashes. Exit status 0 only
when there was no mismatch and no crash.

    python tests/ops_fuzz.py --cases 10000 --seed 1 --seed 2 --seed 3
    python tests/ops_fuzz.py --seed 2 --replay 4711          # one case, in this process

A Python-side oracle decides for every case whether it is valid: valid cases must run and
give the right shape (and the right numbers when the blocks come from a quantizer), invalid
ones must raise an onnxruntime error; errors the glue produces must name the op.

Under AddressSanitizer + UBSan use ``tests/native/sanitize.py``: it builds the library with
both sanitizers and runs this fuzzer with ``ONNXQ_OPS_LIBRARY`` pointing at that build and
both libasan and libstdc++ preloaded (libasan must come first; without libstdc++ preloaded
too, the first C++ exception onnxruntime throws for an expected error aborts the process).
By hand (from the repository root), that is::

    export ONNXQ_OPS_LIBRARY=$(python tests/native/sanitize.py --build-only)
    LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)" \\
    ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1 UBSAN_OPTIONS=print_stacktrace=1 \\
    python tests/ops_fuzz.py --cases 10000 --seed 1
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
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
#: the second word of the seed of the session pool (case indices are >= 0)
POOL_STREAM = -1
CREATION_SHARE = 0.3


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
        self.seed = seed
        self.rng = np.random.default_rng([seed, 2**32 + POOL_STREAM])
        self.stats = {"checks": 0, "valid": 0, "errors": 0, "creation_cases": 0, "runtime_cases": 0}
        self.mismatches: List[str] = []
        self._pool: Optional[list] = None

    # -- outcome bookkeeping
    def expect(self, label: str, valid: bool, fn, glue_error: bool = True, check=None):
        self.stats["checks"] += 1
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
            # up to 4 rows (the dot kernels), or past 16 (fast mode's integer GEMM, partial row tiles)
            M = int(rng.integers(0, 5)) if rng.random() < 0.75 else int(rng.integers(16, 40))
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

    def case(self, i: int) -> None:
        """Case ``i`` of this seed: a function of (seed, i) only."""
        if self._pool is None:
            self._pool = self.make_pool(12)
        self.rng = np.random.default_rng([self.seed, i])
        if self.rng.random() < CREATION_SHARE:
            self.creation_case(i)
        else:
            self.runtime_case(i, self._pool[int(self.rng.integers(0, len(self._pool)))])


# ---------------------------------------------------------------- guarded workers

COUNTERS = ("checks", "valid", "errors", "creation_cases", "runtime_cases")


def worker(seed: int, start: int, stop: int, crash_at: Optional[int]) -> int:
    """Run cases [start, stop), one line per finished case: ``done i checks valid errors
    creation runtime`` then ``mismatch i text`` lines. The parent reads these lines, so the
    cases finished before a crash still count."""
    from onnxq import runtime

    print(f"isa {runtime.kernel_isa()} {runtime.get_library_path()}", flush=True)
    fz = Fuzzer(seed)
    for i in range(start, stop):
        if i == crash_at:  # a test of the guard: a real segmentation fault in this worker
            ctypes.string_at(0)
        before = dict(fz.stats)
        seen = len(fz.mismatches)
        fz.case(i)
        counts = " ".join(str(fz.stats[k] - before[k]) for k in COUNTERS)
        lines = [f"done {i} {counts}"] + [f"mismatch {i} {m}".replace("\n", " ") for m in fz.mismatches[seen:]]
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
    return 0


def _exit_text(returncode: Optional[int]) -> str:
    if returncode is None:
        return "hang (killed after --timeout)"
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit status {returncode}"


class SeedResult:
    """What the workers of one seed reported."""

    def __init__(self, seed: int):
        self.seed = seed
        self.totals = dict.fromkeys(COUNTERS, 0)
        self.done: set = set()
        self.mismatches: List[str] = []
        self.crashes: List[Dict[str, Any]] = []
        self.kernels = ""
        self.library = ""

    def read(self, stdout: str) -> None:
        for line in stdout.splitlines():
            kind, _, rest = line.partition(" ")
            if kind == "done":
                parts = rest.split()
                self.done.add(int(parts[0]))
                for key, value in zip(COUNTERS, parts[1:]):
                    self.totals[key] += int(value)
            elif kind == "mismatch":
                self.mismatches.append(rest)
            elif kind == "isa":
                self.kernels, _, self.library = rest.partition(" ")

    def summary(self) -> Dict[str, Any]:
        errors_as_expected = self.totals["errors"] - sum(1 for m in self.mismatches if "expected success" in m)
        return dict(
            seed=self.seed, cases=len(self.done) + len(self.crashes), **self.totals,
            errors_as_expected=errors_as_expected, n_mismatches=len(self.mismatches), crashes=len(self.crashes),
            kernels=self.kernels, library=self.library, mismatches=self.mismatches[:20], crash_cases=self.crashes[:20],
        )


def run_range(result: SeedResult, start: int, stop: int, crash_at: Optional[int], timeout: float) -> None:
    """Cases [start, stop) of one seed in worker subprocesses, restarting after each crash."""
    here = os.path.abspath(__file__)
    while start < stop:
        cmd = [sys.executable, here, "--worker", "--seed", str(result.seed), "--start", str(start), "--stop", str(stop)]
        if crash_at is not None:
            cmd += ["--crash-at", str(crash_at)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=os.path.dirname(here))
            stdout, stderr, code = proc.stdout, proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as exc:
            stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            code = None
        result.read(stdout)
        if code == 0:
            return
        crashed = next((i for i in range(start, stop) if i not in result.done), stop)
        if crashed == stop:  # every case finished, the worker died on the way out
            crashed = stop - 1
        result.crashes.append({"case": crashed, "exit": _exit_text(code), "stderr": stderr[-1500:]})
        start = crashed + 1


def fuzz(seeds: List[int], cases: int, batch: int, jobs: int, timeout: float,
         crash_at: Optional[int] = None) -> Dict[str, Any]:
    results = [SeedResult(seed) for seed in seeds]
    work = [(r, a, min(a + batch, cases)) for r in results for a in range(0, cases, batch)]
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        list(pool.map(lambda w: run_range(w[0], w[1], w[2], crash_at, timeout), work))
    per_seed = [r.summary() for r in results]
    total = {k: sum(s[k] for s in per_seed) for k in ("cases", *COUNTERS, "errors_as_expected", "n_mismatches", "crashes")}
    return dict(
        total, seeds=per_seed, seconds=round(time.perf_counter() - started, 1),
        mismatches=[m for r in results for m in r.mismatches][:50],
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=1200, help="cases per seed (default 1200)")
    ap.add_argument("--seed", type=int, action="append", help="a seed (repeatable; default 0)")
    ap.add_argument("--batch", type=int, default=1000, help="cases per worker subprocess (default 1000)")
    ap.add_argument("--jobs", type=int, default=2, help="worker subprocesses at a time (default 2)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds one worker may take (default 900)")
    ap.add_argument("--replay", type=int, metavar="CASE", help="run one case in this process and print its checks")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--stop", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--crash-at", type=int, help=argparse.SUPPRESS)  # tests of the guard
    args = ap.parse_args(argv)
    seeds = args.seed or [0]
    if args.worker:
        return worker(seeds[0], args.start, args.stop, args.crash_at)
    if args.replay is not None:
        fz = Fuzzer(seeds[0])
        fz.case(args.replay)
        print(json.dumps(dict(fz.stats, seed=seeds[0], case=args.replay, mismatches=fz.mismatches)))
        return 1 if fz.mismatches else 0
    out = fuzz(seeds, args.cases, args.batch, args.jobs, args.timeout, args.crash_at)
    for s in out["seeds"]:
        print(f"seed {s['seed']}: {s['cases']} cases, {s['checks']} checks, {s['valid']} valid runs, "
              f"{s['errors_as_expected']} errors as expected, {s['n_mismatches']} mismatches, {s['crashes']} crashes "
              f"(kernels {s['kernels']})", file=sys.stderr)
    print(json.dumps(out))
    return 0 if out["crashes"] == 0 and out["n_mismatches"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
