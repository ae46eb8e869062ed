"""File size of exported models with and without onnxq's openings of exporter graph shapes.

Two of the usual exports hide weights from a MatMul/Gather-only quantizer:
onnxruntime-genai reads the token table as ``Gather(Transpose(lm_head weight))`` and
onnxruntime's transformer optimizer carries the QKV weights inside ``Attention`` and the
tables inside ``EmbedLayerNormalization``. This runs ``onnxq.quantize`` on each export twice
in one process: once with those openings switched off (fused ops left as they are, tables
read through Transpose not taken as embeddings — what onnxq did before), once as shipped.

    python benchmarks/graph_openings.py [--exports DIR] [--fixtures]

``--exports``: the full-size exports (``tests/data/exported/make_fixtures.py --full``,
default ``~/.cache/onnxq/exported``); ``--fixtures``: the committed 2-layer fixtures instead.
Prints a Markdown table: float MB, then MB and the ratio to float before and now.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnxq  # noqa: E402
import onnxq.pipeline as pipeline  # noqa: E402
from onnxq.fused_ops import UnfuseResult  # noqa: E402

EXPORTS = (("genai-smollm2", "q4_k"), ("ortopt-minilm", "q6_k"), ("optimum-smollm2", "q4_k"), ("optimum-minilm", "q6_k"))
DEFAULT_EXPORTS = Path(os.environ.get("ONNXQ_CACHE", Path.home() / ".cache" / "onnxq")) / "exported"


@contextlib.contextmanager
def openings_off() -> Iterator[None]:
    """Fused ops stay fused and tables read through Transpose are no embedding sites."""
    unfuse, find = pipeline.unfuse_weights, pipeline.find_sites

    def plain_sites(model):
        analysis = find(model)
        analysis.embeddings = [e for e in analysis.embeddings if not e.table_transposed]
        return analysis

    pipeline.unfuse_weights = lambda model, base_dir=None: UnfuseResult()
    pipeline.find_sites = plain_sites
    try:
        yield
    finally:
        pipeline.unfuse_weights, pipeline.find_sites = unfuse, find


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exports", type=Path, default=DEFAULT_EXPORTS)
    parser.add_argument("--fixtures", action="store_true", help="the committed fixtures instead of full-size exports")
    args = parser.parse_args()
    root = ROOT / "tests" / "data" / "exported" if args.fixtures else args.exports
    print("| export | type | float MB | before | now |\n|---|---|---|---|---|")
    for name, qtype in EXPORTS:
        src = root / name / "model.onnx"
        if not src.is_file():
            print(f"| {name} | {qtype} | missing: {src} (make_fixtures.py --full) | | |")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            with openings_off():
                before = onnxq.quantize(src, Path(tmp) / "before.onnx", type=qtype, progress=False)
            now = onnxq.quantize(src, Path(tmp) / "now.onnx", type=qtype, progress=False)
        print(f"| {name} | {qtype} | {now.input_bytes / 1e6:.2f} | {before.output_bytes / 1e6:.2f} MB "
              f"({before.size_ratio:.2f}x) | {now.output_bytes / 1e6:.2f} MB ({now.size_ratio:.2f}x) |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
