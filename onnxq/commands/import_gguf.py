"""``onnxq import-gguf MODEL.gguf -o MODEL.onnx``: run a llama.cpp GGUF in onnxruntime with its
quantized blocks unchanged."""
from __future__ import annotations

import argparse

from . import print_report


def configure(parser: argparse.ArgumentParser) -> None:
    from ..formats import WEIGHT_TYPES
    from ..ggml.nodes import MODES
    from ..gguf.archs import ARCHITECTURES

    parser.description = (
        "Import a LLaMA-family GGUF (" + ", ".join(ARCHITECTURES) + ") as an ONNX decoder whose quantized "
        "tensors are the file's own bytes in onnxq's GgmlMatMul / GgmlGather ops, and write its tokenizer "
        "beside it (<name>.tokenizer.json)."
    )
    parser.add_argument("gguf", help="the GGUF file (read only)")
    parser.add_argument("-o", "--output", required=True, help="the ONNX model to write")
    parser.add_argument("--no-kv-cache", action="store_true",
                        help="full-sequence model (input_ids -> logits) instead of the KV-cache interface")
    parser.add_argument("--mode", choices=MODES, default="exact",
                        help="GgmlMatMul mode: exact (float activations, the default) or fast "
                             "(activations rounded to 8-bit blocks of 32, as llama.cpp does for all but K-quants, "
                             "which it rounds in blocks of 256)")
    parser.add_argument("--requantize", metavar="TYPE", type=str.upper, choices=WEIGHT_TYPES,
                        help="convert tensors of types the op library lacks (IQ*, Q2_K, Q3_K, TQ*, MXFP4) to TYPE "
                             "with onnxq's codec (recorded in the metadata); without it such tensors are an error")
    parser.add_argument("--dequantize", action="store_true",
                        help="write the float32 model of the same weights instead (a reference for onnxq eval)")
    parser.add_argument("--no-tokenizer", action="store_true", help="do not write the tokenizer")
    parser.add_argument("--external-data", action="store_true",
                        help="store the weights in <output>.data (default: only when over 1.8 GB)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ..gguf import import_gguf

    report = import_gguf(
        args.gguf, args.output, kv_cache=not args.no_kv_cache, mode=args.mode, requantize=args.requantize,
        dequantize=args.dequantize, tokenizer=not args.no_tokenizer,
        external_data=True if args.external_data else None, progress=not args.quiet,
    )
    print_report(report, args.json)
    return 0
