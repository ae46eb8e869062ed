"""Quantize / dequantize throughput of onnxq's GGML codecs against the gguf package.

MB/s of float32 data (input for quantize, output for dequantize) on one matrix
(4096 x 4096 by default), onnxq with 1 thread and with all threads, gguf (numpy,
single-threaded) in the same run, and the ratio onnxq(1 thread) / gguf. gguf cannot
quantize K-quants ("n/a"). Times are the best of --repeats wall-clock runs, so a busy
machine slows both sides alike; the load average is printed with the table.

Also checks, once per type, that onnxq's bytes equal gguf's where gguf can quantize and
that both dequantize the same bytes to identical floats.

    python benchmarks/pack_speed.py [--size 4096] [--repeats 3] [--types Q4_0,Q6_K]
"""
from __future__ import annotations

import argparse
import os
from importlib.metadata import version as _version
import sys
import time
from typing import Callable, Dict, List, Optional

import numpy as np

from onnxq.ggml import GGMLQuantizer, QuantizedGGMLTensor, default_num_threads
from onnxq.formats import GGMLQuantType

try:
    import gguf
    from gguf import quants as gguf_quants
except ImportError:  # the table then has onnxq columns only
    gguf = None

WEIGHT_TYPES = [t for t in GGMLQuantType if t.is_weight_type]

# issue #2's targets, 1 thread: (minimum ratio to gguf, minimum MB/s)
TARGETS: Dict[str, tuple] = {
    "Q5_0": (3.0, None),
    "Q8_0": (3.0, None),
    "Q4_K": (None, 45.0),
    "Q5_K": (None, 45.0),
    "Q6_K": (None, 90.0),
}


def best_time(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def gguf_type(t: GGMLQuantType):
    return gguf.GGMLQuantizationType[t.name]


def gguf_can_quantize(t: GGMLQuantType) -> bool:
    if gguf is None:
        return False
    try:
        gguf_quants.quantize(np.zeros((1, t.block_size), np.float32), gguf_type(t))
        return True
    except NotImplementedError:
        return False


def fmt(v: Optional[float], spec: str = ".0f") -> str:
    return "n/a" if v is None else format(v, spec)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096, help="matrix is size x size (default 4096)")
    ap.add_argument("--repeats", type=int, default=3, help="best of this many runs (default 3)")
    ap.add_argument("--types", default=",".join(t.name for t in WEIGHT_TYPES), help="comma-separated types")
    ap.add_argument("--threads", type=int, default=default_num_threads(), help="'all threads' count")
    args = ap.parse_args(argv)

    types = [GGMLQuantType.parse(n) for n in args.types.split(",") if n.strip()]
    x = np.random.default_rng(0).standard_normal((args.size, args.size), dtype=np.float32)
    mb = x.nbytes / 1e6
    nt = args.threads
    print(f"pack_speed: {args.size}x{args.size} float32 ({mb:.0f} MB), best of {args.repeats}, "
          f"all threads = {nt}, load average {os.getloadavg()[0]:.1f}, "
          f"gguf {_version('gguf') if gguf else 'not installed'}")

    header = ["type", "quant 1T", f"quant {nt}T", "gguf quant", "ratio", "dequant 1T", f"dequant {nt}T",
              "gguf dequant", "ratio", "target"]
    table = [header]
    failures = []
    for t in types:
        # slow K-quant searches: fewer repeats keep the run short, the minimum is still stable
        reps = max(1, args.repeats - 1) if t.is_k_quant else args.repeats
        q1 = GGMLQuantizer(t, num_threads=1)
        qn = GGMLQuantizer(t, num_threads=nt)
        packed: QuantizedGGMLTensor = q1.quantize(x)
        t_q1 = best_time(lambda: q1.quantize(x), reps)
        t_qn = best_time(lambda: qn.quantize(x), reps)
        t_d1 = best_time(lambda: packed.dequantize(num_threads=1), args.repeats)
        t_dn = best_time(lambda: packed.dequantize(num_threads=nt), args.repeats)

        g_q = g_d = None
        if gguf is not None:
            gt = gguf_type(t)
            if gguf_can_quantize(t):
                ref = gguf_quants.quantize(x, gt)
                if not np.array_equal(ref, packed.data):
                    failures.append(f"{t.name}: onnxq bytes differ from gguf's")
                g_q = mb / best_time(lambda: gguf_quants.quantize(x, gt), reps)
            deq = gguf_quants.dequantize(packed.data, gt)
            if not np.array_equal(deq.view(np.uint32), packed.dequantize().view(np.uint32)):
                failures.append(f"{t.name}: onnxq dequantization differs from gguf's")
            g_d = mb / best_time(lambda: gguf_quants.dequantize(packed.data, gt), args.repeats)

        q1_mbs, d1_mbs = mb / t_q1, mb / t_d1
        ratio_q = q1_mbs / g_q if g_q else None
        ratio_d = d1_mbs / g_d if g_d else None
        target = ""
        if t.name in TARGETS:
            min_ratio, min_mbs = TARGETS[t.name]
            if min_ratio is not None:
                ok = ratio_q is not None and ratio_q >= min_ratio
                target = f">= {min_ratio:g}x gguf: {'ok' if ok else 'MISSED'}"
            else:
                ok = q1_mbs >= min_mbs
                target = f">= {min_mbs:g} MB/s: {'ok' if ok else 'MISSED'}"
        table.append([t.name, fmt(q1_mbs), fmt(mb / t_qn), fmt(g_q), fmt(ratio_q, ".1f") + ("x" if ratio_q else ""),
                      fmt(d1_mbs), fmt(mb / t_dn), fmt(g_d), fmt(ratio_d, ".1f") + ("x" if ratio_d else ""), target])
        print(f"  {t.name} done", file=sys.stderr)

    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    print("MB/s of float32 data; ratio = onnxq 1 thread / gguf")
    for n, r in enumerate(table):
        print("  ".join(c.ljust(w) if i in (0, len(r) - 1) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if n == 0:
            print("  ".join("-" * w for w in widths))
    for f in failures:
        print("MISMATCH:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
