"""``onnxq convert IN.onnx -o OUT.onnx --portable [--portable-ops matmulnbits|qdq]``

Re-encode an onnxq GGML model's ``GgmlMatMul`` / ``GgmlGather`` blocks as stock onnxruntime
operators (no re-quantization: the same grid, the same weights). Prints one row per layer
(op, bits, GGML bytes, portable bytes) and the two file sizes.
"""
from __future__ import annotations

import argparse
import json

from .quantize import add_portable_options, portable_choice


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="an onnxq GGML model (never modified)")
    parser.add_argument("-o", "--output", required=True, help="where to write the converted model")
    add_portable_options(parser)
    parser.add_argument("--accuracy-level", type=int, choices=(0, 1, 2, 3, 4),
                        help="matmulnbits: the MatMulNBits accuracy_level attribute (default unset: float32 "
                             "activations, the exact-mode numbers; 4: int8 activations, faster on CPU, measured in "
                             "docs/portable.md)")
    parser.add_argument("--external-data", choices=("auto", "yes", "no"), default="auto",
                        help="weights in OUTPUT.data (auto: when the input has external data or is large)")
    parser.add_argument("--report", metavar="FILE.json", help="also write the report as JSON")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no per-layer rows")


def run(args: argparse.Namespace) -> int:
    from ..errors import OnnxqError
    from ..ggml.portable_rewrite import convert_model

    ops = portable_choice(args)
    if ops is None:
        raise OnnxqError("convert writes a portable model: pass --portable (and optionally --portable-ops)")
    external = {"auto": None, "yes": True, "no": False}[args.external_data]
    report = convert_model(args.input, args.output, ops=ops, external_data=external,
                           accuracy_level=args.accuracy_level, progress=not args.quiet)
    text = report.table()
    print(text.splitlines()[-1] if args.quiet else text)
    if args.report:
        with open(args.report, "w", encoding="utf-8") as fh:
            json.dump(report.to_dict(), fh, indent=2)
    return 0
