"""Quantize all-MiniLM-L6-v2 (a BERT sentence encoder: MatMul + bias Add layers) with
several GGML types and the encoder presets (value projections kept at more bits), and
compare sentence embeddings with the float32 model.

    python examples/quantize_bert_encoder.py [--out-dir DIR]
"""
import argparse
import os

import onnxq
from onnxq import quantize
from onnxq import zoo
from onnxq.evaluate import evaluate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out-dir", default="onnxq-examples")
    parser.add_argument("--recipes", default="q8_0,encoder-q6,q6_k,encoder-q5,q5_0,q4_k",
                        help="presets (every GGML type is one, e.g. q6_k) or recipe files")
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)

    float_path = str(zoo.ensure("all-minilm-l6-v2"))
    outs = []
    for recipe in args.recipes.split(","):
        out = os.path.join(args.out_dir, f"minilm-{recipe}.onnx")
        report = quantize(float_path, out, recipe=recipe, progress=False)
        print(f"{recipe}: {report.input_bytes / 1e6:.1f} MB -> {report.output_bytes / 1e6:.1f} MB, "
              f"{report.bits_per_weight:.2f} bits/weight")
        outs.append(out)
    # cosine similarity of mean-pooled embeddings of onnxq's 64 shipped sentences
    print(evaluate(float_path, outs, progress=False).format_table())


if __name__ == "__main__":
    main()
