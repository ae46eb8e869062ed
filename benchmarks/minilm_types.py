"""all-MiniLM-L6-v2 quantized with every GGML type, with and without AWQ, in one run.

For each type (one type for every linear layer and the embeddings, exact mode) this builds
the model plain and with activation-aware weight scaling (``onnxq.quantize(..., awq=...)``)
and prints the mean cosine of mean-pooled embeddings against the float model over the
shipped 64 evaluation sentences (``onnxq eval``'s encoder task), plus bits per weight and
how many AWQ groups were scaled.

Calibration sentences are disjoint from the evaluation set (onnxq/data/sentences.txt):
the 16 general-English sentences below (also used by tests/test_awq.py), optionally plus
``--extra N`` sentences of the Python reference topics the SmolLM2 evaluation corpus does
not use (measured: that off-domain prose makes both the imatrix and AWQ slightly worse). MiniLM's q/k/v and FFN-up inputs are LayerNorm
outputs that also feed the residual Add, so nothing can absorb 1/s there: without
``--explicit-mul`` AWQ leaves those groups alone (and reports it).

Usage::

    python benchmarks/minilm_types.py [--types q8_0,q6_k,...] [--explicit-mul] [--imatrix] [--out r.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from onnxq import zoo
from onnxq.evaluate import evaluate
from onnxq import quantize
from onnxq.zoo.calibration import CALIBRATION_SENTENCES, python_reference_sentences

TYPES = ("q8_0", "q6_k", "q5_k", "q5_1", "q5_0", "q4_k", "q4_1", "q4_0")

CALIBRATION = CALIBRATION_SENTENCES  # not in onnxq/data/sentences.txt (the evaluation set)


def calibration_sentences(extra: int = 0) -> List[str]:
    """CALIBRATION plus ``extra`` sentences of the Python reference (not the eval topics)."""
    prose = python_reference_sentences()
    step = max(1, len(prose) // max(1, extra))
    return CALIBRATION + (prose[::step][:extra] if extra else [])


def minilm_calibration(path: Path, sentences: List[str], batch: int = 8) -> List[Dict[str, np.ndarray]]:
    """Tokenized batches with the model's inputs only."""
    import onnx

    names = {i.name for i in onnx.load(str(path), load_external_data=False).graph.input}
    tok = zoo.load_tokenizer("all-minilm-l6-v2")
    return [{k: v for k, v in tok.batch(sentences[i:i + batch]).items() if k in names}
            for i in range(0, len(sentences), batch)]


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--explicit-mul", action="store_true",
                    help="let AWQ insert Mul(X, 1/s) where nothing can absorb 1/s (MiniLM: every group)")
    ap.add_argument("--imatrix", action="store_true", help="also use an importance matrix (same calibration data)")
    ap.add_argument("--extra", type=int, default=0, help="Python-reference sentences added to the 16 calibration ones")
    ap.add_argument("--out", help="write the numbers as JSON here")
    args = ap.parse_args(argv)

    src = zoo.ensure("all-minilm-l6-v2")
    data = minilm_calibration(src, calibration_sentences(args.extra))
    awq = {"explicit_mul": True} if args.explicit_mul else True
    results: Dict[str, Dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths, labels = [], []
        for t in args.types.split(","):
            for use_awq in (False, True):
                label = f"{t}{'+awq' if use_awq else ''}"
                out = Path(tmp) / f"{label}.onnx"
                t0 = time.perf_counter()
                rep = quantize(src, out, type=t, awq=awq if use_awq else None,
                               calibration_data=data if use_awq else None,
                               imatrix_data=data if args.imatrix else None, progress=False)
                results[label] = {"bpw": rep.bits_per_weight, "seconds": time.perf_counter() - t0}
                if rep.awq is not None:
                    results[label]["groups_scaled"] = len(rep.awq.scaled)
                    results[label]["groups"] = len(rep.awq.groups)
                    results[label]["exponents"] = {g.input: g.exponent for g in rep.awq.scaled}
                paths.append(out)
                labels.append(label)
                print(f"built {label} in {results[label]['seconds']:.1f}s", file=sys.stderr, flush=True)
        report = evaluate(src, paths, progress=False).to_dict()
    for label, cand in zip(labels, report["candidates"]):
        results[label]["cosine_mean"] = cand["cosine_mean"]
        results[label]["cosine_min"] = cand.get("cosine_min")
    print(f"all-MiniLM-L6-v2, exact mode, mean cosine over the 64 evaluation sentences"
          f"{' (imatrix)' if args.imatrix else ''}{' (AWQ explicit Mul allowed)' if args.explicit_mul else ''}")
    print(f"{'type':<8}{'bpw':>7}{'plain':>11}{'awq':>11}{'scaled':>9}")
    for t in args.types.split(","):
        plain, aw = results[t], results[f"{t}+awq"]
        scaled = f"{aw.get('groups_scaled', 0)}/{aw.get('groups', 0)}"
        print(f"{t:<8}{plain['bpw']:>7.3f}{plain['cosine_mean']:>11.5f}{aw['cosine_mean']:>11.5f}{scaled:>9}")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
