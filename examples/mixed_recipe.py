"""Quantize SmolLM2-135M with a hand-written mixed recipe (examples/mixed_recipe.yaml),
then show the per-layer report of the result and its quality against float32.

    python examples/mixed_recipe.py [--out-dir DIR]
"""
import argparse
import os
from collections import Counter

import onnxq
from onnxq import quantize
from onnxq import zoo
from onnxq.evaluate import evaluate
from onnxq.inspect_model import inspect_model

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out-dir", default="onnxq-examples")
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)

    float_path = str(zoo.ensure("smollm2-135m"))
    out = os.path.join(args.out_dir, "smollm2-mixed.onnx")
    report = quantize(float_path, out, recipe=os.path.join(HERE, "mixed_recipe.yaml"), progress=False)
    for warning in report.warnings:
        print("warning:", warning)
    print(report.table())

    info = inspect_model(out)
    per_block = Counter((l.layer, l.method) for l in info.layers if l.layer is not None)
    for block in sorted({b for b, _ in per_block}):
        print(f"block {block:2d}: " + ", ".join(f"{n} x {m}" for (b, m), n in sorted(per_block.items()) if b == block))
    print(f"bits per weight {info.bits_per_weight:.3f}; initializers {info.ratio_to_float32:.2f}x smaller than float32")
    print(evaluate(float_path, [out], max_tokens=2048, progress=False).format_table())


if __name__ == "__main__":
    main()
