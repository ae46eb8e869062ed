"""SmolLM2-135M with GGML types, with and without activation-aware weight scaling (AWQ),
evaluated in one run against the float model.

Calibration: windows of the Python Reference topics that the evaluation corpus does not use
(``smoothquant_vs_ort.calibration_text``), so calibration and evaluation text are disjoint.
On SmolLM2 every AWQ group but the o_proj inputs folds into an RMSNorm weight or the up_proj
columns, so the AWQ models have exactly the float model's ops plus the GGML ones.

With ``--self-generated`` the calibration data is written by the float model itself
(``onnxq.zoo.calibration.self_generated_batches``: one-word prompts, tokens sampled from its
own next-token distribution), so no outside text is used at all.

Usage::

    python benchmarks/smollm2_awq.py [--types q6_k,q5_0,q4_0] [--windows 16] [--self-generated] [--imatrix] [--out r.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from smoothquant_vs_ort import smollm2_batches  # noqa: E402

from onnxq import zoo  # noqa: E402
from onnxq.evaluate import evaluate  # noqa: E402
from onnxq import quantize  # noqa: E402


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default="q6_k,q5_0,q4_0")
    ap.add_argument("--windows", type=int, default=16, help="calibration windows of 256 tokens")
    ap.add_argument("--imatrix", action="store_true", help="also an importance matrix from the same data")
    ap.add_argument("--self-generated", action="store_true",
                    help="calibrate on text sampled from the float model itself (--windows sequences of 256)")
    ap.add_argument("--max-tokens", type=int, default=4096)
    ap.add_argument("--out", help="write the evaluation report as JSON here")
    args = ap.parse_args(argv)
    src = zoo.ensure("smollm2-135m", progress=False)
    if args.self_generated:
        from onnxq.zoo.calibration import self_generated_batches

        data = self_generated_batches("smollm2-135m", sequences=args.windows, length=256)
    else:
        data = smollm2_batches(args.windows)
    labels, paths = [], []
    with tempfile.TemporaryDirectory(prefix="smollm2-awq-") as tmp:
        for qtype in args.types.split(","):
            for awq in (False, True):
                label = qtype + ("+awq" if awq else "") + ("+imatrix" if args.imatrix else "")
                path = Path(tmp) / f"{label}.onnx"
                t0 = time.perf_counter()
                report = quantize(src, path, type=qtype, awq=awq or None, calibration_data=data if awq else None,
                                  imatrix_data=data if args.imatrix else None, progress=False)
                print(f"built {label} in {time.perf_counter() - t0:.1f}s"
                      + (f"  ({report.awq.summary()})" if report.awq is not None else ""), flush=True)
                labels.append(label)
                paths.append(path)
        rep = evaluate(src, paths, max_tokens=args.max_tokens, progress=False)
        print(rep.format_table())
        d = rep.to_dict()
        ref = d["reference"]["perplexity"]
        print(f"\n{'variant':24s} {'ppl':>8s} {'delta':>8s} {'KL':>9s} {'top-1':>7s}")
        for label, cand in zip(labels, d["candidates"]):
            print(f"{label:24s} {cand['perplexity']:8.4f} {100 * (cand['perplexity'] / ref - 1):+7.2f}% "
                  f"{cand['kl_divergence']:9.2e} {100 * cand['top1_agreement']:6.2f}%")
        if args.out:
            Path(args.out).write_text(json.dumps(d, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
