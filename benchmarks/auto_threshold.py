"""Sweep the auto-mode threshold: model quality vs the share of layers in fast mode.

For each model (SmolLM2-135M: perplexity on the evaluation corpus; all-MiniLM-L6-v2: mean
cosine of pooled embeddings) and recipe, the auto mode's per-layer measurement is made
once (on the default data: 4 x 128 self-generated tokens / the 16 shipped calibration
sentences, never the evaluated text); then, for every threshold, the layers whose fast
mode adds less than the threshold to their output error are written in fast mode, the
others in exact mode, and every variant is evaluated in one run with all-exact and
all-fast. The default threshold (onnxq.ggml.modes.DEFAULT_THRESHOLD) is chosen from this
table: the largest share of fast layers whose perplexity stays within 0.3 percentage
points of all-exact.

    python benchmarks/auto_threshold.py [--models smollm2-135m,all-minilm-l6-v2] [--recipe q4_k_m]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

THRESHOLDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)


def _with_modes(recipe, modes):
    """``recipe`` plus one rule per layer fixing its mode (same type as the recipe gives it)."""
    import dataclasses

    from onnxq.recipe import parse_rule

    rules = list(recipe.rules)
    for name, (qtype, mode) in modes.items():
        rules.append(parse_rule({"regex": f"^{_re(name)}$", "method": qtype.lower(), "mode": mode}, len(rules)))
    return dataclasses.replace(recipe, rules=tuple(rules))


def _re(name: str) -> str:
    import re

    return re.escape(name)


def sweep(model: str, recipe_name: str, thresholds, out_dir: str, max_tokens: int):
    import onnxq
    from onnxq import zoo
    from onnxq.evaluate import evaluate
    from onnxq.ggml.modes import choose_mode
    from onnxq.pipeline import resolve_recipe
    from onnxq.zoo.calibration import default_batches

    path = str(zoo.ensure(model))
    batches, source = default_batches(path)
    base = os.path.join(out_dir, f"{model}.auto.onnx")
    report = onnxq.quantize(path, base, recipe=recipe_name, mode="auto", calibration_data=batches)
    types = {l.name: l.method for l in report.layers if l.mode}
    measured = report.modes
    recipe = resolve_recipe(None, recipe_name, "exact")
    variants = {"all exact": (os.path.join(out_dir, f"{model}.exact.onnx"), {n: (t, "exact") for n, t in types.items()}),
                "all fast": (os.path.join(out_dir, f"{model}.fast.onnx"), {n: (t, "fast") for n, t in types.items()})}
    for t in thresholds:
        modes = {n: (types[n], choose_mode(n, c.exact_error, c.fast_error, t).mode) for n, c in measured.items()}
        variants[f"t={t:g}"] = (os.path.join(out_dir, f"{model}.t{t:g}.onnx"), modes)
    for label, (out, modes) in variants.items():
        onnxq.quantize(path, out, recipe=_with_modes(recipe, modes), progress=False)
    kw = {"max_tokens": max_tokens} if "smollm2" in model else {}
    ev = evaluate(path, [v[0] for v in variants.values()], **kw)
    rows = []
    for (label, (out, modes)), cand in zip(variants.items(), ev.candidates):
        fast = sum(m == "fast" for _, m in modes.values())
        rows.append({"variant": label, "fast": fast, "layers": len(modes), **cand.metrics})
    return {"model": model, "recipe": recipe_name, "data": source, "reference": ev.reference.metrics, "rows": rows}


def _print(result) -> None:
    ref = result["reference"]
    print(f"\n{result['model']} ({result['recipe']}; measured on {result['data']})")
    if "perplexity" in ref:
        exact = next(r for r in result["rows"] if r["variant"] == "all exact")["perplexity"]
        print(f"float32 perplexity {ref['perplexity']:.4f}")
        print("| variant | fast layers | perplexity | Δppl vs float | vs all-exact (pp) | KL |")
        print("|---|---|---|---|---|---|")
        for r in result["rows"]:
            d = 100 * (r["perplexity"] / ref["perplexity"] - 1)
            pp = d - 100 * (exact / ref["perplexity"] - 1)
            print(f"| {r['variant']} | {r['fast']}/{r['layers']} | {r['perplexity']:.4f} | {d:+.2f} % | {pp:+.2f} | "
                  f"{r['kl_divergence']:.4f} |")
    else:
        print("| variant | fast layers | cosine mean | cosine min |")
        print("|---|---|---|---|")
        for r in result["rows"]:
            print(f"| {r['variant']} | {r['fast']}/{r['layers']} | {r['cosine_mean']:.5f} | {r['cosine_min']:.4f} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2-135m,all-minilm-l6-v2")
    ap.add_argument("--recipe", default="q4_k_m", help="recipe of the LM (the encoder uses q6_k)")
    ap.add_argument("--thresholds", default=",".join(f"{t:g}" for t in THRESHOLDS))
    ap.add_argument("--max-tokens", type=int, default=4096)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    thresholds = [float(t) for t in args.thresholds.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            recipe = args.recipe if "smollm2" in model else "q6_k"
            results.append(sweep(model, recipe, thresholds, tmp, args.max_tokens))
            _print(results[-1])
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
