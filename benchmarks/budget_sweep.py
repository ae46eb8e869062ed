"""Budgeted mixes against fixed presets at the same size (issue 15), plus a PNG plot.

For each model the costs are measured once (onnxq.budget.measure_costs on the default
calibration data: 4 x 128 self-generated tokens for SmolLM2, the 16 shipped sentences for
MiniLM; never the evaluated text), then every preset and single type is quantized, and a
budgeted mix is made at the bits per weight of each preset. Every model is written in exact
mode, so the comparison is about the types only, and evaluated in one run: perplexity on the
evaluation corpus (SmolLM2) or mean cosine over the 64 evaluation sentences (MiniLM).

llama.cpp's own points (SmolLM2, when llama-cpp-python is installed): its Q4_K_M and Q6_K
re-quantizations of the same weights (the package's GGUF dequantized to F32, then
``llama_model_quantize`` with llama.cpp's own mixes and fallbacks, as
benchmarks/gguf_vs_llamacpp.py makes them), their bits per weight counted as onnxq counts
them (bytes of every 2-D weight over its parameters: the same 211 weights, the tied table
once; checked against onnxq's count), their perplexity on the same tokens (the same corpus,
tokenizer and windows as onnxq eval) with an F32 KV cache (llama.cpp's default F16 cache
alone moves perplexity by ~0.2 %; onnxq's cache is float32), KL and top-1 against
llama.cpp's own F32 file; and a budgeted onnxq mix at each file's bits per weight. Without
llama-cpp-python the budgets are made at the bits per weight benchmarks/ggml_vs_llamacpp.py
recorded (LLAMACPP_BPW) and no llama.cpp point is drawn.

    python benchmarks/budget_sweep.py [--models smollm2-135m,all-minilm-l6-v2] [--plot budget_sweep.png]
        [--cache-dir DIR (keep the cost tables)] [--eval-chunk 5] [--also earlier.json]

The measured tables (docs/budget.md) came from (llama-cpp-python installed; --cache-dir keeps
the cost tables, measured once: SmolLM2's took 31 min on the loaded machine)
    python benchmarks/budget_sweep.py --models all-minilm-l6-v2 --cache-dir costs --json minilm.json
    python benchmarks/budget_sweep.py --models smollm2-135m --lm-presets q4_k_m,q5_k_m,q6_k,q4_k,q8_0 \
        --extra-bpw '' --max-tokens 2048 --eval-chunk 4 --cache-dir costs --json smollm2.json \
        --also minilm.json --plot docs/budget_sweep.png
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

LM_PRESETS = ("q4_k_m", "q5_k_m", "q6_k", "q4_k", "q5_k", "q8_0")
ENCODER_PRESETS = ("encoder-q5", "q6_k", "encoder-q6", "q5_k", "q8_0")
#: bits per weight of llama.cpp's own files of SmolLM2-135M as ggml_vs_llamacpp.py recorded them:
#: the budgets' targets when llama-cpp-python is not installed (measured here when it is)
LLAMACPP_BPW = {"llama.cpp Q4_K_M": 6.16, "llama.cpp Q6_K": 8.12}
#: llama.cpp's files drawn as points: label -> ftype of gguf_vs_llamacpp.FTYPES
LLAMACPP_FILES = {"llama.cpp Q4_K_M": "q4_k_m", "llama.cpp Q6_K": "q6_k"}
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


def llamacpp_installed() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def llamacpp_files(work: str, params: int, threads: int = 2) -> Dict[str, Dict]:
    """llama.cpp's re-quantizations of SmolLM2 (and the F32 file they come from):
    ``{label: {"path", "bpw", "types", "file_bytes"}}``, bits per weight as onnxq counts them
    (``params``: onnxq's count of the weights, which the GGUF's 2-D tensors must match)."""
    import gguf
    import numpy as np
    from ggml_vs_llamacpp import gguf_stats, gguf_to_f32, llama_quantize
    from gguf_vs_llamacpp import FTYPES

    from onnxq.zoo.checkpoints import smollm2_gguf_path

    f32 = os.path.join(work, "smollm2-f32.gguf")
    gguf_to_f32(str(smollm2_gguf_path()), f32)
    files = {"llama.cpp F32": {"path": f32}}
    for label, name in LLAMACPP_FILES.items():
        out = os.path.join(work, f"smollm2-{name}.gguf")
        llama_quantize(f32, out, FTYPES[name], pure=False, threads=threads)
        weights = sum(int(np.prod(t.shape)) for t in gguf.GGUFReader(out, "r").tensors if len(t.shape) >= 2)
        if weights != params:
            raise RuntimeError(f"{out}: its 2-D tensors hold {weights:,} weights, onnxq counts {params:,}: "
                               "bits per weight would not be comparable")
        files[label] = {"path": out, **gguf_stats(out)}
    return files


def llamacpp_rows(files: Dict[str, Dict], max_tokens: int, threads: int = 2) -> List[Dict]:
    """Perplexity of llama.cpp's files on onnx eval's tokens (F32 KV cache), KL and top-1
    against its F32 file, the models run window by window in step."""
    from ggml_vs_llamacpp import Scores, llama_logits

    from onnxq import zoo
    from onnxq.corpora import default_corpus
    from onnxq.evaluate.lm import DEFAULT_CTX, make_windows, tokenize_corpus

    ids = tokenize_corpus(zoo.load_tokenizer("smollm2-135m").backend, default_corpus())
    windows = make_windows(ids, DEFAULT_CTX, max_tokens)
    labels = list(files)  # the F32 file first: the reference
    scores = {label: Scores() for label in labels}
    runs = [llama_logits(files[label]["path"], windows, DEFAULT_CTX, threads, kv_f32=True) for label in labels]
    for window, *logits in zip(windows, *runs):
        ref = scores[labels[0]].add(logits[0], window, None)
        for label, lg in zip(labels[1:], logits[1:]):
            scores[label].add(lg, window, ref)
    float_ppl = scores[labels[0]].result()["perplexity"]
    rows = []
    for label in labels[1:]:
        r = scores[label].result()
        f = files[label]
        rows.append({"variant": label, "kind": "llama.cpp", "bpw": f["bpw"], "file_bytes": f["file_bytes"],
                     "types": ", ".join(f"{k} {v}" for k, v in sorted(f["types"].items(), key=lambda kv: -kv[1])),
                     "perplexity": r["perplexity"], "kl_divergence": r["kl"], "top1_agreement": r["top1"],
                     "float_perplexity": float_ppl, "predicted_tokens": r["tokens"]})
    return rows


def run(model: str, out_dir: str, max_tokens: int, presets=None, extra_bpw=EXTRA_BPW, llamacpp=True,
        chunk: int = 5, cache: str = ""):
    import onnxq
    from onnxq import zoo
    from onnxq.budget import quantize_to_budget
    from onnxq.inspect_model import inspect_model
    from onnxq.zoo.calibration import default_batches

    path = str(zoo.ensure(model))
    lm = "smollm2" in model
    batches, source = default_batches(path)
    table = _costs(path, batches, source, cache)
    rows = []
    for preset in presets or (LM_PRESETS if lm else ENCODER_PRESETS):
        out = os.path.join(out_dir, f"{model}.{preset}.onnx")
        onnxq.quantize(path, out, recipe=preset, mode="exact", progress=False)
        # every layer weight, float ones at 32, as inspect and --target-bpw count them (the
        # quantize report's figure leaves kept float weights out)
        rows.append({"variant": preset, "kind": "preset", "path": out, "bpw": inspect_model(out).bits_per_weight})
    targets = {f"budget @ {r['variant']}": r["bpw"] for r in rows if r["variant"] in ("q4_k_m", "q5_k_m", "q6_k",
                                                                                      "encoder-q5", "encoder-q6")}
    files = llamacpp_files(out_dir, table.params) if lm and llamacpp and llamacpp_installed() else {}
    if lm and llamacpp:
        targets.update({f"budget @ {k}": files[k]["bpw"] if files else v for k, v in LLAMACPP_BPW.items()})
    targets.update({f"budget {b:g}": b for b in extra_bpw})
    for label, bpw in targets.items():
        out = os.path.join(out_dir, f"{model}.{label.replace(' ', '_').replace('@', 'at')}.onnx")
        r = quantize_to_budget(path, out, target_bpw=bpw, calibration_data=batches, costs=table, mode="exact",
                               progress=False)
        rows.append({"variant": label, "kind": "budget", "path": out, "bpw": inspect_model(out).bits_per_weight,
                     "target_bpw": bpw, "predicted": r.budget.predicted, "measured": r.budget.measured})
    kw = {"max_tokens": max_tokens} if lm else {}
    reference = _evaluate(path, rows, chunk, **kw)
    if files:
        rows += llamacpp_rows(files, max_tokens)
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
        for r in res["rows"]:
            if r["kind"] == "llama.cpp":
                print(f"{r['variant']} ({r['types']}): F32 file perplexity {r['float_perplexity']:.4f} "
                      f"(F32 KV cache), {r['predicted_tokens']} predicted tokens; its Δppl, KL and top-1 are "
                      "against that F32 file")
        print("| variant | bpw | perplexity | Δppl | KL | top-1 |")
        print("|---|---|---|---|---|---|")
        for r in sorted(res["rows"], key=lambda r: r["bpw"]):
            d = 100 * _delta(r, ref)
            print(f"| {r['variant']} | {r['bpw']:.3f} | {r['perplexity']:.4f} | {d:+.2f} % | {r['kl_divergence']:.4f} | "
                  f"{100 * r['top1_agreement']:.1f} % |")
    else:
        print("| variant | bpw | cosine mean | cosine min |")
        print("|---|---|---|---|")
        for r in sorted(res["rows"], key=lambda r: r["bpw"]):
            print(f"| {r['variant']} | {r['bpw']:.3f} | {r['cosine_mean']:.5f} | {r['cosine_min']:.4f} |")


def _delta(row, reference) -> float:
    """Relative perplexity change against the row's own float model (llama.cpp's F32 file
    for its points, onnxq's float32 model otherwise)."""
    return row["perplexity"] / row.get("float_perplexity", reference["perplexity"]) - 1


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
        key = (lambda r: 100 * _delta(r, res["reference"])) if lm else (lambda r: r["cosine_mean"])
        for kind, style in (("budget", "o-"), ("preset", "s"), ("llama.cpp", "^")):
            pts = sorted((r["bpw"], key(r), r["variant"]) for r in res["rows"] if r["kind"] == kind)
            if not pts:
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=kind + (" (F32 KV)" if kind == "llama.cpp"
                                                                                   else ""))
            if kind != "budget":
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
    ap.add_argument("--no-llamacpp-bpw", action="store_true",
                    help="no llama.cpp points nor budgets at llama.cpp's file sizes")
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
