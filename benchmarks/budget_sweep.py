"""Budgeted mixes against fixed presets at the same size (issue 15), plus a PNG plot.

For each model the costs are measured once (onnxq.budget.measure_costs on the default
calibration data: 4 x 128 self-generated tokens for SmolLM2, the 16 shipped sentences for
MiniLM; never the evaluated text), then every preset and single type is quantized, and a
budgeted mix is made at the bits per weight of each preset (and of llama.cpp's Q4_K_M and
Q6_K files of the same weights, 6.16 and 8.12 bpw as benchmarks/ggml_vs_llamacpp.py
measured them). Every model is written in exact mode, so the comparison is about the
types only, and evaluated in one run: perplexity on the evaluation corpus (SmolLM2) or
mean cosine over the 64 evaluation sentences (MiniLM).

    python benchmarks/budget_sweep.py [--models smollm2-135m,all-minilm-l6-v2] [--plot budget_sweep.png]
        [--cache-dir DIR (keep the cost tables)] [--eval-chunk 5] [--also earlier.json]

The measured tables (docs/budget.md) came from
    python benchmarks/budget_sweep.py --models all-minilm-l6-v2 --json minilm.json
    python benchmarks/budget_sweep.py --models smollm2-135m --lm-presets q4_k_m,q5_k_m,q6_k,q4_k,q8_0 \
        --extra-bpw '' --no-llamacpp-bpw --max-tokens 2048 --eval-chunk 4 --also minilm.json \
        --plot docs/budget_sweep.png
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

LM_PRESETS = ("q4_k_m", "q5_k_m", "q6_k", "q4_k", "q5_k", "q8_0")
ENCODER_PRESETS = ("encoder-q5", "q6_k", "encoder-q6", "q5_k", "q8_0")
#: bits per weight of llama.cpp's own files of SmolLM2-135M (README, ggml_vs_llamacpp.py)
LLAMACPP_BPW = {"llama.cpp Q4_K_M": 6.16, "llama.cpp Q6_K": 8.12}
EXTRA_BPW = (4.8, 5.5, 7.0)


def _costs(path: str, batches, source: str, cache: str):
    """The cost table of ``path``, measured once and kept in ``cache`` (a pickle: ~20 min
    of model runs for SmolLM2 on a loaded machine)."""
    import pickle

    from onnxq.budget import measure_costs

    if cache and os.path.exists(cache):
        with open(cache, "rb") as fh:
            return pickle.load(fh)
    table = measure_costs(path, batches, data_source=source)
    if cache:
        with open(cache, "wb") as fh:
            pickle.dump(table, fh)
    return table


def _evaluate(path: str, rows, chunk: int, **kw):
    """Evaluate every row's model, ``chunk`` candidates a run (14 SmolLM2 sessions at
    once took 7 GB and were killed on a shared 23 GB machine); metrics into the rows."""
    from onnxq.evaluate import evaluate

    reference = None
    for i in range(0, len(rows), chunk):
        part = rows[i:i + chunk]
        ev = evaluate(path, [r["path"] for r in part], **kw)
        reference = ev.reference.metrics
        for r, cand in zip(part, ev.candidates):
            r.update(cand.metrics)
            del r["path"]
    return reference


def run(model: str, out_dir: str, max_tokens: int, presets=None, extra_bpw=EXTRA_BPW, llamacpp=True,
        chunk: int = 5, cache: str = ""):
    import onnxq
    from onnxq import zoo
    from onnxq.budget import quantize_to_budget
    from onnxq.zoo.calibration import default_batches

    path = str(zoo.ensure(model))
    lm = "smollm2" in model
    batches, source = default_batches(path)
    table = _costs(path, batches, source, cache)
    rows = []
    for preset in presets or (LM_PRESETS if lm else ENCODER_PRESETS):
        out = os.path.join(out_dir, f"{model}.{preset}.onnx")
        r = onnxq.quantize(path, out, recipe=preset, mode="exact", progress=False)
        rows.append({"variant": preset, "kind": "preset", "path": out, "bpw": r.bits_per_weight})
    targets = {f"budget @ {r['variant']}": r["bpw"] for r in rows if r["variant"] in ("q4_k_m", "q5_k_m", "q6_k",
                                                                                      "encoder-q5", "encoder-q6")}
    if lm and llamacpp:
        targets.update({f"budget @ {k}": v for k, v in LLAMACPP_BPW.items()})
    targets.update({f"budget {b:g}": b for b in extra_bpw})
    for label, bpw in targets.items():
        out = os.path.join(out_dir, f"{model}.{label.replace(' ', '_').replace('@', 'at')}.onnx")
        r = quantize_to_budget(path, out, target_bpw=bpw, calibration_data=batches, costs=table, mode="exact",
                               progress=False)
        rows.append({"variant": label, "kind": "budget", "path": out, "bpw": r.bits_per_weight,
                     "predicted": r.budget.predicted, "measured": r.budget.measured})
    kw = {"max_tokens": max_tokens} if lm else {}
    reference = _evaluate(path, rows, chunk, **kw)
    rows = [{k: v for k, v in r.items() if isinstance(v, (int, float, str))} for r in rows]
    return {"model": model, "data": source, "reference": {k: v for k, v in reference.items()
                                                          if isinstance(v, (int, float))}, "rows": rows,
            "proxy_correlation": table.proxy_correlation(), "proxy_ratio": table.proxy_ratio(),
            "validation_runs": len(table.validation)}


def _print(res) -> None:
    ref = res["reference"]
    print(f"\n{res['model']}: costs on {res['data']}; proxy check {res['validation_runs']} runs, "
          f"log-correlation {res['proxy_correlation']:.3f}, measured/proxy median {res['proxy_ratio']:.2f}")
    if "perplexity" in ref:
        print(f"float32 perplexity {ref['perplexity']:.4f}")
        print("| variant | bpw | perplexity | Δppl | KL | top-1 |")
        print("|---|---|---|---|---|---|")
        for r in sorted(res["rows"], key=lambda r: r["bpw"]):
            d = 100 * (r["perplexity"] / ref["perplexity"] - 1)
            print(f"| {r['variant']} | {r['bpw']:.3f} | {r['perplexity']:.4f} | {d:+.2f} % | {r['kl_divergence']:.4f} | "
                  f"{100 * r['top1_agreement']:.1f} % |")
    else:
        print("| variant | bpw | cosine mean | cosine min |")
        print("|---|---|---|---|")
        for r in sorted(res["rows"], key=lambda r: r["bpw"]):
            print(f"| {r['variant']} | {r['bpw']:.3f} | {r['cosine_mean']:.5f} | {r['cosine_min']:.4f} |")


def plot(results, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5))
    axes = axes if len(results) > 1 else [axes]
    for ax, res in zip(axes, results):
        lm = "perplexity" in res["reference"]
        key = (lambda r: 100 * (r["perplexity"] / res["reference"]["perplexity"] - 1)) if lm else \
            (lambda r: r["cosine_mean"])
        for kind, style in (("budget", "o-"), ("preset", "s")):
            pts = sorted((r["bpw"], key(r), r["variant"]) for r in res["rows"] if r["kind"] == kind)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=kind)
            if kind == "preset":
                for x, y, name in pts:
                    ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("bits per weight")
        ax.set_ylabel("Δ perplexity vs float32 (%)" if lm else "mean cosine vs float32")
        if lm:  # symlog: a mix can be lossless (0 %), e.g. SmolLM2's Q4_1-dequantized weights in Q4_1
            ax.set_yscale("symlog", linthresh=0.1)
        ax.set_title(res["model"])
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2-135m,all-minilm-l6-v2")
    ap.add_argument("--max-tokens", type=int, default=4096)
    ap.add_argument("--plot", default="budget_sweep.png")
    ap.add_argument("--json")
    ap.add_argument("--lm-presets", default=",".join(LM_PRESETS))
    ap.add_argument("--extra-bpw", default=",".join(f"{b:g}" for b in EXTRA_BPW), help="more budgets ('' for none)")
    ap.add_argument("--no-llamacpp-bpw", action="store_true", help="no budgets at llama.cpp's file sizes")
    ap.add_argument("--eval-chunk", type=int, default=5, help="candidates evaluated in one run (memory)")
    ap.add_argument("--cache-dir", default="", help="keep each model's cost table here and reuse it")
    ap.add_argument("--also", help="results JSON of an earlier run to add to the plot (e.g. the other model)")
    args = ap.parse_args(argv)
    results = []
    extra = [float(b) for b in args.extra_bpw.split(",") if b]
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            cache = os.path.join(args.cache_dir, f"{model}.costs.pkl") if args.cache_dir else ""
            results.append(run(model, tmp, args.max_tokens, args.lm_presets.split(",") if "smollm2" in model else None,
                               extra, not args.no_llamacpp_bpw, args.eval_chunk, cache))
            _print(results[-1])
            if args.json:
                with open(args.json, "w") as fh:
                    json.dump(results, fh, indent=2)
    if args.also:
        with open(args.also) as fh:
            results.extend(json.load(fh))
    plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
