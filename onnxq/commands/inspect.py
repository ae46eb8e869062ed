"""``onnxq inspect MODEL.onnx [--json]``: per-layer method, shape, bytes, bits per weight."""
from __future__ import annotations

import argparse

from . import print_report


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="an ONNX model (float, GGML, SmoothQuant/QDQ or mixed)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    from ..inspect_model import inspect_model

    report = inspect_model(args.model)
    print_report(report, args.json)
    return 0
