"""Sweep the auto-mode threshold: model quality vs the share of layers (and MACs) in fast mode.

For each model (SmolLM2-135M: perplexity on the evaluation corpus; all-MiniLM-L6-v2: mean
cosine of pooled embeddings) and recipe, the auto mode's per-layer measurement is made
once on the default calibration data (4 x 128 tokens the float model writes itself / the
16 shipped calibration sentences: never the evaluated text, which is the held-out corpus
of onnxq.evaluate); then, for every threshold, the layers whose fast mode adds less than
the threshold to their output error are written in fast mode, the others in exact mode.
Thresholds that give the same split share one model. Every variant of a recipe is
evaluated in one run with all-exact and all-fast (perplexity is deterministic: the
machine's load changes the wall time only). The default threshold
(onnxq.ggml.modes.DEFAULT_THRESHOLD) is chosen from these tables: the largest threshold
that keeps every LM recipe within 0.3 percentage points of all-exact and the encoder's
mean cosine within 0.0005 of all-exact.

    python benchmarks/auto_threshold.py [--models smollm2-135m,all-minilm-l6-v2]
        [--lm-recipes q4_k_m,q4_0,q6_k,q8_0] [--encoder-recipes encoder-q6] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

THRESHOLDS = (5e-5, 1e-4, 1.5e-4, 2e-4, 3e-4)


def _with_modes(recipe, modes):
    """``recipe`` plus one rule per layer fixing its mode (same type as the recipe gives it)."""
    import dataclasses
    import re

    from onnxq.recipe import parse_rule

    rules = list(recipe.rules)
    for name, (qtype, mode) in modes.items():
        rules.append(parse_rule({"regex": f"^{re.escape(name)}$", "method": qtype.lower(), "mode": mode}, len(rules)))
    return dataclasses.replace(recipe, rules=tuple(rules))


def _variants(measured, types, thresholds, rule, all_fast=True):
    """{label: {layer: (type, mode)}} for all-exact, all-fast and each threshold; thresholds
    giving the same split are one variant labelled with all of them."""
    variants = {"all exact": {n: (t, "exact") for n, t in types.items()}}
    if all_fast:
        variants["all fast"] = {n: (t, "fast") for n, t in types.items()}
    by_split = {}
    for t in thresholds:
        modes = {n: (types[n], rule(n, c, t)) for n, c in measured.items()}
        key = tuple(sorted((n, m) for n, (_, m) in modes.items()))
        by_split.setdefault(key, ([], modes))[0].append(t)
    for key, (ts, modes) in by_split.items():
        variants["t=" + ",".join(f"{t:g}" for t in ts)] = modes
    return variants


def added_rule(name, choice, threshold):
    """The rule onnxq.ggml.modes applies: fast where fast mode adds less than ``threshold``
    to the layer's relative output error, the LM head's added error counted HEAD_WEIGHT times."""
    from onnxq.ggml.modes import choose_mode

    return choose_mode(name, choice.exact_error, choice.fast_error, threshold, choice.weight).mode


def unweighted_rule(name, choice, threshold):
    """The added error, every layer alike (the head included)."""
    return "fast" if choice.fast_error - choice.exact_error < threshold else "exact"


def relative_rule(name, choice, threshold):
    """The rule before this sweep: fast where it adds < threshold x the exact error."""
    return "fast" if choice.fast_error - choice.exact_error < threshold * choice.exact_error else "exact"


RULES = {"added": added_rule, "unweighted": unweighted_rule, "relative": relative_rule}


def sweep(model: str, path: str, batches, source: str, recipe_name: str, thresholds, out_dir: str,
          max_tokens: int, rule=added_rule, all_fast: bool = True):
    """Quantize ``path`` with ``recipe_name`` in auto / all-exact / all-fast / each threshold
    and evaluate all in one run; returns the rows and the per-layer measurement."""
    import onnxq
    from onnxq.evaluate import evaluate
    from onnxq.pipeline import resolve_recipe

    base = os.path.join(out_dir, f"{model}.{recipe_name}.auto.onnx")
    report = onnxq.quantize(path, base, recipe=recipe_name, mode="auto", calibration_data=batches, progress=False)
    layers = {l.name: l for l in report.layers if l.mode}
    types = {n: l.method for n, l in layers.items()}
    macs = {n: l.K * l.N for n, l in layers.items()}
    variants = _variants(report.modes, types, thresholds, rule, all_fast)
    recipe = resolve_recipe(None, recipe_name, "exact")
    outs = {}
    for i, (label, modes) in enumerate(variants.items()):
        outs[label] = os.path.join(out_dir, f"{model}.{recipe_name}.v{i}.onnx")
        onnxq.quantize(path, outs[label], recipe=_with_modes(recipe, modes), progress=False)
    kw = {"max_tokens": max_tokens} if "smollm2" in model else {}
    t0 = time.time()
    ev = evaluate(path, list(outs.values()), progress=False, **kw)
    rows = []
    for (label, modes), cand in zip(variants.items(), ev.candidates):
        fast = [n for n, (_, m) in modes.items() if m == "fast"]
        rows.append({"variant": label, "fast": len(fast), "layers": len(modes),
                     "fast_macs": sum(macs[n] for n in fast) / sum(macs.values()),
                     **{k: v for k, v in cand.metrics.items() if isinstance(v, (int, float))}})
    per_layer = {n: {"type": types[n], "K": layers[n].K, "N": layers[n].N, "role": layers[n].role,
                     "exact_error": c.exact_error, "fast_error": c.fast_error} for n, c in report.modes.items()}
    return {"model": model, "recipe": recipe_name, "data": source, "eval_seconds": time.time() - t0,
            "load": os.getloadavg(), "reference": {k: v for k, v in ev.reference.metrics.items()
                                                   if isinstance(v, (int, float))},
            "rows": rows, "layers": per_layer}


def _print(result) -> None:
    ref = result["reference"]
    print(f"\n{result['model']} {result['recipe']} (modes measured on {result['data']}; evaluation "
          f"{result['eval_seconds']:.0f} s, load {result['load'][0]:.1f})")
    if "perplexity" in ref:
        exact = next(r for r in result["rows"] if r["variant"] == "all exact")["perplexity"]
        print(f"float32 perplexity {ref['perplexity']:.4f}")
        print("| variant | fast layers | fast MACs | perplexity | Δppl vs float | vs all-exact (pp) | KL |")
        print("|---|---|---|---|---|---|---|")
        for r in result["rows"]:
            d = 100 * (r["perplexity"] / ref["perplexity"] - 1)
            pp = d - 100 * (exact / ref["perplexity"] - 1)
            print(f"| {r['variant']} | {r['fast']}/{r['layers']} | {100 * r['fast_macs']:.1f} % | {r['perplexity']:.4f} "
                  f"| {d:+.2f} % | {pp:+.2f} | {r['kl_divergence']:.4f} |")
    else:
        exact = next(r for r in result["rows"] if r["variant"] == "all exact")["cosine_mean"]
        print("| variant | fast layers | fast MACs | cosine mean | vs all-exact | cosine min |")
        print("|---|---|---|---|---|---|")
        for r in result["rows"]:
            print(f"| {r['variant']} | {r['fast']}/{r['layers']} | {100 * r['fast_macs']:.1f} % | {r['cosine_mean']:.5f} "
                  f"| {r['cosine_mean'] - exact:+.5f} | {r['cosine_min']:.4f} |")
    sys.stdout.flush()


def calibration(model: str, cache_dir: str):
    """(path, default calibration batches, their source) of a zoo model; the batches are
    kept in ``cache_dir`` (self-generation takes ~40 s) and reused by the next run."""
    import numpy as np

    from onnxq import zoo
    from onnxq.zoo.calibration import default_batches

    path = str(zoo.ensure(model))
    stem = os.path.join(cache_dir, os.path.basename(path) + ".calib")
    if os.path.exists(stem + ".npz"):
        with np.load(stem + ".npz") as z, open(stem + ".txt") as fh:
            count = int(fh.readline())
            batches = [{k.split("/", 1)[1]: z[k] for k in z.files if k.startswith(f"{i}/")} for i in range(count)]
            return path, batches, fh.read()
    batches, source = default_batches(path)
    np.savez(stem + ".npz", **{f"{i}/{k}": v for i, b in enumerate(batches) for k, v in b.items()})
    with open(stem + ".txt", "w") as fh:
        fh.write(f"{len(batches)}\n{source}")
    return path, batches, source


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2-135m,all-minilm-l6-v2")
    ap.add_argument("--lm-recipes", default="q4_k_m,q4_0,q6_k,q8_0")
    ap.add_argument("--encoder-recipes", default="encoder-q6")
    ap.add_argument("--thresholds", default=",".join(f"{t:g}" for t in THRESHOLDS))
    ap.add_argument("--rule", choices=sorted(RULES), default="added",
                    help="added (onnxq's rule): what fast mode adds to the relative output error, the LM head's "
                         "x HEAD_WEIGHT; unweighted: the same without the head's weight; relative: what it adds "
                         "over the exact error (the rule before this sweep)")
    ap.add_argument("--no-all-fast", action="store_true", help="skip the all-fast variant (to confirm one threshold)")
    ap.add_argument("--max-tokens", type=int, default=4096)
    ap.add_argument("--cache-dir", default=os.environ.get("ONNXQ_CACHE_DIR", tempfile.gettempdir()),
                    help="where the calibration batches are kept between runs")
    ap.add_argument("--json", help="write the results (with every layer's measured errors) here")
    args = ap.parse_args(argv)
    thresholds = [float(t) for t in args.thresholds.split(",")]
    results = []
    os.makedirs(args.cache_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            path, batches, source = calibration(model, args.cache_dir)
            recipes = args.lm_recipes if "smollm2" in model else args.encoder_recipes
            for recipe in recipes.split(","):
                results.append(sweep(model, path, batches, source, recipe, thresholds, tmp, args.max_tokens,
                                     RULES[args.rule], not args.no_all_fast))
                results[-1]["rule"] = args.rule
                _print(results[-1])
                if args.json:
                    with open(args.json, "w") as fh:
                        json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
