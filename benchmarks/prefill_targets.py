"""Issue 12's speed targets, measured and judged in one command on the machine at hand.

Runs ``op_speed.py`` (4096 x 4096, M = 512, fast mode, 1 and 2 threads) and ``e2e_speed.py``
(SmolLM2-135M KV model, 512-token prompt + 64 decoded tokens, 1 and 2 threads), then prints
each target with what was measured and whether it holds:

* op, 1 thread: fast mode >= 2.0x onnxruntime's float32 MatMul where the kernels run AVX-512
  VNNI (``avx512vnni``), >= 1.3x on AVX2 (``avx2``), for Q4_0, Q4_K, Q5_0, Q6_K, Q8_0;
* op: 2 threads >= 1.8x the same op at 1 thread;
* end to end, on VNNI: fast-mode prefill >= 1.5x float32 for every type;
* end to end: the default model (q4_k_m, auto) prefill >= 1.2x and decode >= 2.0x float32,
  at every thread count.

Perplexity against all-exact (within 0.3 points) is ``benchmarks/auto_threshold.py``'s job.
On another ISA (``avxvnni``, the ARM levels) the ratios are printed and judged against the
AVX2 figure. About 25-40 minutes on 2 cores:

    python benchmarks/prefill_targets.py
    python benchmarks/prefill_targets.py --op-rounds 9 --e2e-repeats 3    # quicker, noisier
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import e2e_speed  # noqa: E402
import op_speed  # noqa: E402

TYPES = ("Q4_0", "Q4_K", "Q5_0", "Q6_K", "Q8_0")
E2E_TYPES = ("q4_0", "q4_k_m", "q6_k", "q8_0")
VNNI = "avx512vnni"


def op_targets(rows: List[dict], isa: str) -> List[Tuple[str, float, float]]:
    """(target, measured, bound) for the single-op figures."""
    bound = 2.0 if isa == VNNI else 1.3
    out = []
    for q in TYPES:
        one = next(r for r in rows if r["op"] == f"{q}/fast" and r["threads"] == 1)
        two = next(r for r in rows if r["op"] == f"{q}/fast" and r["threads"] == 2)
        out.append((f"op {q} fast, 1 thread, x float32", one["vs_f32"], bound))
        out.append((f"op {q} fast, 2 threads / 1 thread", two["vs_1_thread"], 1.8))
    return out


def e2e_targets(rows: List[dict], isa: str) -> List[Tuple[str, float, float]]:
    """(target, measured, bound) for the end-to-end figures."""
    out = []
    for r in rows:
        t = r["threads"]
        if r["model"] == "q4_k_m/auto":
            out.append((f"default (q4_k_m auto) prefill, {t} thr, x float32", r["prefill_vs_f32"], 1.2))
            out.append((f"default (q4_k_m auto) decode, {t} thr, x float32", r["decode_vs_f32"], 2.0))
        elif isa == VNNI and r["model"].endswith("/fast"):
            out.append((f"{r['model']} prefill, {t} thr, x float32", r["prefill_vs_f32"], 1.5))
    return out


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--op-rounds", type=int, default=25, help="op_speed.py round-robin rounds")
    ap.add_argument("--op-budget", type=float, default=5.0, help="op_speed.py seconds per variant")
    ap.add_argument("--e2e-repeats", type=int, default=5, help="e2e_speed.py interleaved rounds")
    ap.add_argument("--json", help="also write the judged targets here")
    args = ap.parse_args(argv)
    from onnxq import runtime

    isa = runtime.kernel_isa()
    with tempfile.TemporaryDirectory() as tmp:
        op_json, e2e_json = os.path.join(tmp, "op.json"), os.path.join(tmp, "e2e.json")
        op_speed.main(["--shapes", "4096x4096", "--M", "512", "--types", ",".join(TYPES), "--modes", "fast",
                       "--threads", "1,2", "--rounds", str(args.op_rounds), "--budget", str(args.op_budget),
                       "--json", op_json])
        print(flush=True)
        e2e_speed.main(["--variants", ",".join(E2E_TYPES), "--modes", "auto,fast", "--threads", "1,2",
                        "--repeats", str(args.e2e_repeats), "--json", e2e_json])
        with open(op_json) as fh:
            op_rows = json.load(fh)
        with open(e2e_json) as fh:
            e2e_rows = json.load(fh)
    judged: List[Dict[str, object]] = []
    print(f"\ntargets on this machine (kernels: {isa}; VNNI targets apply to {VNNI} only)\n")
    print(f"| {'target':<52} | measured | bound | holds |")
    print(f"|{'-' * 54}|----------|-------|-------|")
    for name, value, bound in op_targets(op_rows, isa) + e2e_targets(e2e_rows, isa):
        ok = value >= bound
        judged.append({"target": name, "measured": value, "bound": bound, "holds": ok})
        print(f"| {name:<52} | {value:>7.2f}x | {bound:>4.1f}x | {'yes' if ok else 'NO':<5} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"isa": isa, "targets": judged}, fh, indent=1)
    return 0 if all(j["holds"] for j in judged) else 1


if __name__ == "__main__":
    sys.exit(main())
