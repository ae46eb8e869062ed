"""What the activation block size of fast mode costs: K-quant weights against Q8_K (256) or
Q8_0-style (32) activation blocks, measured end to end without new kernels.

Fast mode's output is ``round_activations(X) @ dequant(W)`` up to float summation order
(onnxq/ggml/fastmode.py, checked in tests/test_fastmode.py). So fast mode with any activation
block can be emulated with stock operators: an exact-mode model with, before every
GgmlMatMul, the symmetric 8-bit rounding of its input in blocks of B (``d = amax / 127``,
``q = rint(x / d)``, K-quant tail blocks in 32s, as the op does). Variants, all on one
quantized model and evaluated in one run (perplexity / KL on onnxq eval's corpus):

* ``exact``: the op in exact mode; ``fast``: the op in fast mode (32-element blocks for every
  type since the kq32 kernels; Q8_K for K-quants before them);
* ``emulated B=256``: exact op + rounding in 256-blocks (ggml's Q8_K; matched the op's fast
  mode before the kq32 kernels);
* ``emulated B=32``: exact op + rounding in 32-blocks, every layer / every layer but the LM head.

Why it matters (issue 12): the auto mode keeps a layer exact when fast mode adds too much
error, and with Q8_K activations it keeps nearly every K-quant layer exact, so the default
model's prefill runs at exact-mode speed. If 32-element activation blocks cost little, K-quant
fast mode with them (new kernels) lets auto run most MACs fast. That is what this measured,
and what the kq32 kernels now do (docs/budget.md, "Why K-quants used to stay exact").

    python benchmarks/activation_blocks.py [--recipe q4_k_m] [--max-tokens 4096] [--work DIR]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import List, Tuple

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _rounding(x: str, K: int, block: int, tag: str) -> Tuple[List[onnx.NodeProto], List[onnx.TensorProto], str]:
    """Nodes rounding ``x`` [..., K] to 8 bits in blocks of ``block`` (K-quant tails: 32)."""
    nodes, inits = [], []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    main = K // block * block
    parts = [(x, K, block)]
    if main != K:
        split = const(f"{tag}/split", np.array([main, K - main], dtype=np.int64))
        nodes.append(helper.make_node("Split", [x, split], [f"{tag}/main", f"{tag}/tail"], axis=-1))
        parts = [(f"{tag}/main", main, block), (f"{tag}/tail", K - main, 32)]
    outs = []
    for i, (src, n, b) in enumerate(parts):
        t = f"{tag}/{i}"
        k127 = const(f"{t}/127", np.array(127.0, dtype=np.float32))
        tiny = const(f"{t}/tiny", np.array(1e-30, dtype=np.float32))
        nodes += [
            helper.make_node("Shape", [src], [f"{t}/shape"]),
            helper.make_node("Reshape", [src, const(f"{t}/blocks", np.array([-1, n // b, b], dtype=np.int64))],
                             [f"{t}/r"]),
            helper.make_node("Abs", [f"{t}/r"], [f"{t}/abs"]),
            helper.make_node("ReduceMax", [f"{t}/abs"], [f"{t}/amax"], axes=[2], keepdims=1),
            helper.make_node("Max", [f"{t}/amax", tiny], [f"{t}/amax_nz"]),  # all-zero block: q = 0
            helper.make_node("Div", [k127, f"{t}/amax_nz"], [f"{t}/inv"]),
            helper.make_node("Div", [f"{t}/amax", k127], [f"{t}/d"]),
            helper.make_node("Mul", [f"{t}/r", f"{t}/inv"], [f"{t}/scaled"]),
            helper.make_node("Round", [f"{t}/scaled"], [f"{t}/q"]),  # half to even, as rint
            helper.make_node("Mul", [f"{t}/q", f"{t}/d"], [f"{t}/y"]),
            helper.make_node("Reshape", [f"{t}/y", f"{t}/shape"], [f"{t}/out"]),
        ]
        outs.append(f"{t}/out")
    if len(outs) == 1:
        return nodes, inits, outs[0]
    nodes.append(helper.make_node("Concat", outs, [f"{tag}/joined"], axis=-1))
    return nodes, inits, f"{tag}/joined"


def emulate(src: str, dst: str, block: int, skip_head: bool) -> int:
    """Write ``src`` (an exact-mode onnxq model) with every GgmlMatMul input rounded in
    ``block``-element blocks (the LM head's too unless ``skip_head``); returns how many."""
    model = onnx.load(src)
    graph, nodes, count = model.graph, [], 0
    for node in graph.node:
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "GgmlMatMul" and not (skip_head and "lm_head" in node.name):
            new, inits, out = _rounding(node.input[0], attrs["K"].i, block, f"emu{count}")
            nodes += new
            graph.initializer.extend(inits)
            node.input[0] = out
            count += 1
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, dst)
    return count


def _with_mode(src: str, dst: str, mode: str) -> None:
    model = onnx.load(src)
    for node in model.graph.node:
        for a in node.attribute:
            if node.op_type == "GgmlMatMul" and a.name == "mode":
                a.s = mode.encode()
    onnx.save(model, dst)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="q4_k_m")
    ap.add_argument("--max-tokens", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--work", default=None, help="folder for the models (default: a temporary one)")
    args = ap.parse_args(argv)

    import onnxq
    from onnxq import zoo
    from onnxq.evaluate import evaluate

    work = args.work or tempfile.mkdtemp(prefix="onnxq-activation-blocks-")
    os.makedirs(work, exist_ok=True)
    float_path = str(zoo.ensure("smollm2-135m"))
    exact = os.path.join(work, f"{args.recipe}.exact.onnx")
    onnxq.quantize(float_path, exact, recipe=args.recipe, mode="exact", progress=False)
    variants = {"exact": exact, "fast": os.path.join(work, "fast.onnx")}
    _with_mode(exact, variants["fast"], "fast")
    for label, block, skip in (("emulated B=256", 256, False), ("emulated B=32", 32, False),
                               ("emulated B=32, head exact", 32, True)):
        variants[label] = os.path.join(work, f"emu{block}{'-nohead' if skip else ''}.onnx")
        emulate(exact, variants[label], block, skip)
    t0 = time.time()
    ev = evaluate(float_path, list(variants.values()), max_tokens=args.max_tokens, threads=args.threads,
                  progress=True)
    ref = ev.reference.metrics["perplexity"]
    base = ev.candidates[0].metrics["perplexity"]
    print(f"\nSmolLM2-135M {args.recipe}, {args.max_tokens} tokens, float32 perplexity {ref:.4f} "
          f"({time.time() - t0:.0f} s, load {os.getloadavg()[0]:.1f})")
    print("| variant | perplexity | Δppl vs float | vs exact (pp) | KL | top-1 |")
    print("|---|---|---|---|---|---|")
    for label, cand in zip(variants, ev.candidates):
        m = cand.metrics
        print(f"| {label} | {m['perplexity']:.4f} | {100 * (m['perplexity'] / ref - 1):+.2f} % | "
              f"{100 * (m['perplexity'] - base) / ref:+.2f} | {m['kl_divergence']:.4f} | {100 * m['top1_agreement']:.1f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
