"""Portable export (issue 11): SmolLM2-135M and all-MiniLM-L6-v2 per GGML type, in one run.

For each model and type this writes the GGML model in exact mode and in fast mode
(``onnxq.quantize``), converts the exact one to both portable targets
(``convert_model``: MatMulNBits / GatherBlockQuantized, and opset-21 blocked
DequantizeLinear), and measures, on the same work in one process:

* file size of every variant;
* quality against float32 with ``onnxq.evaluate`` (perplexity on the shipped corpus for
  SmolLM2, cosine of mean-pooled embeddings of the shipped sentences for MiniLM), with
  ``session.qdq_matmulnbits_accuracy_level=0`` so that onnxruntime's DQ -> MatMulNBits fusion
  keeps float activations; the QDQ file is measured once more with onnxruntime's default
  (accuracy level 4: activations quantized to int8 by the fused kernel);
* prefill: the wall time of that evaluation per model (float32 the peer, same inputs);
* decode (SmolLM2): greedy tokens per second on the KV-cache twin, converted the same way,
  interleaved runs (``onnxq.zoo.time_greedy``, the demo's timing);
* for the types with a min, the largest difference between the MatMulNBits float-zero-point
  weights and ggml's (``scale * code - (z * scale)`` as the op computes it, against
  onnxq's dequantizer), over every layer.

The portable quality must equal the exact-mode GGML model's within 0.05 % (checked, printed).
Timings on a shared machine are noisy: the load average is printed with them.

    python benchmarks/portable.py [--models smollm2-135m,all-minilm-l6-v2] [--types q4_0,...]
                                  [--max-tokens 1024] [--no-decode] [--out results.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import onnxruntime as ort

from onnxq import quantize, zoo
from onnxq.evaluate import evaluate
from onnxq.ggml.nodes import ggml_node_attributes, is_ggml_node
from onnxq.ggml.portable import row_segments
from onnxq.ggml.portable_ops import float_zero_points
from onnxq.ggml.portable_rewrite import convert_model
from onnxq.modelio import get_initializer_array, load_model, model_dir
from onnxq.runtime import InferenceSession, quiet_between_runs

TYPES = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q4_k", "q5_k", "q6_k")
MODELS = ("smollm2-135m", "all-minilm-l6-v2")
FLOAT_ACTIVATIONS = {"session.qdq_matmulnbits_accuracy_level": "0"}
TOLERANCE = 0.0005  # 0.05 %
DECODE_PROMPT, DECODE_TOKENS, DECODE_REPEATS = "The capital of France is", 32, 3
VARIANTS = ("exact", "fast", "matmulnbits", "qdq")


def float_zero_point_error(path: str) -> Optional[Dict[str, float]]:
    """Largest |MatMulNBits float-zero-point weight - ggml weight| over the linear layers of
    a GGML model (None when no 4-bit segment has a min)."""
    model = load_model(path)
    base = model_dir(path)
    worst, worst_rel, blocks, exact_blocks = 0.0, 0.0, 0, 0
    for node in model.graph.node:
        if not is_ggml_node(node) or node.op_type != "GgmlMatMul":
            continue
        a = ggml_node_attributes(node)
        data = np.asarray(get_initializer_array(model, node.input[1], base)).reshape(a["N"], -1)
        for seg in row_segments(data, a["quant_type"], a["K"], a["tail_type"]):
            c = seg.codes
            if c.mins is None or c.bits > 4:
                continue
            z = float_zero_points(c.scales, c.mins)
            if z is None:
                continue
            s = c.scales[:, :, None]
            codes = c.codes.reshape(c.codes.shape[0], c.groups, c.group).astype(np.float32)
            portable = (codes * s - (z * c.scales)[:, :, None]).reshape(c.codes.shape[0], -1)
            ggml = c.dequantize()
            diff = float(np.abs(portable - ggml).max())
            worst = max(worst, diff)
            worst_rel = max(worst_rel, diff / max(float(np.abs(ggml).max()), 1e-30))
            blocks += z.size
            exact_blocks += int(np.sum(z * c.scales == -c.mins))
    if not blocks:
        return None
    return {"max_abs": worst, "max_rel_to_layer_max": worst_rel, "blocks_bit_exact": exact_blocks / blocks}


def zero_point_speed(K: int = 576, N: int = 49152, calls: int = 20) -> Dict[str, float]:
    """Milliseconds per call of one 4-bit MatMulNBits of SmolLM2's head shape on one token,
    as convert writes it (integer zero point 0, plus the min term's two small MatMuls) and with a
    float zero point instead: the reason the min term is the default."""
    from onnxq.ggml.codec import GGMLQuantizer
    from onnxq.ggml.nodes import make_ggml_matmul_node, onnxq_opset
    from onnx import TensorProto, helper

    w = (np.random.default_rng(0).standard_normal((N, K)) * 0.05).astype(np.float32)
    q = GGMLQuantizer("q4_1").quantize(w)
    g = make_ggml_matmul_node("head", "X", "Y", q.data, quant_type="Q4_1", K=K, N=N, mode="exact")
    model = helper.make_model(helper.make_graph(
        [g.node], "head", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, K])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, N])], g.initializers),
        opset_imports=[helper.make_opsetid("", 17), onnxq_opset()])
    model.ir_version = 10
    result: Dict[str, float] = {"load": os.getloadavg()[0]}
    x = {"X": np.random.default_rng(1).standard_normal((1, K)).astype(np.float32)}
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "g.onnx")
        import onnx

        onnx.save(model, src)
        for label, float_zp in (("min_term_ms", False), ("float_zero_point_ms", True)):
            out = os.path.join(tmp, f"{label}.onnx")
            convert_model(src, out, float_zero_points=float_zp, progress=False)
            sess = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
            sess.run(None, x)
            t = time.perf_counter()
            for _ in range(calls):
                sess.run(None, x)
            result[label] = 1000 * (time.perf_counter() - t) / calls
    return result


def build_variants(src: Path, qtype: str, tmp: Path, tag: str) -> Dict[str, str]:
    """The four files of one type: GGML exact, GGML fast, and the exact one converted."""
    paths = {v: str(tmp / f"{tag}-{qtype}-{v}.onnx") for v in VARIANTS}
    for mode in ("exact", "fast"):
        quantize(src, paths[mode], type=qtype, mode=mode, progress=False)
    for ops in ("matmulnbits", "qdq"):
        convert_model(paths["exact"], paths[ops], ops=ops, progress=False)
    return paths


def quality_of(result: Any, task: str) -> float:
    return result.metrics["perplexity"] if task == "lm" else result.metrics.get("cosine_mean", 1.0)  # ref: itself


def measure_type(model: str, src: Path, qtype: str, tmp: Path, max_tokens: int, decode: bool) -> Dict[str, Any]:
    paths = build_variants(src, qtype, tmp, model)
    ev = evaluate(src, [paths[v] for v in VARIANTS], max_tokens=max_tokens, session_config=FLOAT_ACTIVATIONS,
                  progress=False)
    ev_default = evaluate(src, [paths["qdq"]], max_tokens=max_tokens, progress=False)
    row: Dict[str, Any] = {"model": model, "type": qtype, "task": ev.task, "load": os.getloadavg()[0],
                           "float_quality": quality_of(ev.reference, ev.task), "float_seconds": ev.reference.seconds}
    for v, cand in zip(VARIANTS, ev.candidates):
        row[f"{v}_bytes"] = sum(os.path.getsize(p) for p in (paths[v], paths[v] + ".data") if os.path.exists(p))
        row[f"{v}_quality"] = quality_of(cand, ev.task)
        row[f"{v}_prefill_s"] = cand.seconds
    row["qdq_default_quality"] = quality_of(ev_default.candidates[0], ev.task)
    row["qdq_default_prefill_s"] = ev_default.candidates[0].seconds
    for ops in ("matmulnbits", "qdq"):
        row[f"{ops}_vs_exact"] = abs(row[f"{ops}_quality"] / row["exact_quality"] - 1)
    row["within_tolerance"] = max(row["matmulnbits_vs_exact"], row["qdq_vs_exact"]) <= TOLERANCE
    row["float_zero_point"] = float_zero_point_error(paths["exact"])
    if decode and f"{model}-kv" in zoo.available():
        row["decode"] = decode_speed(model, qtype, tmp)
    return row


def decode_speed(model: str, qtype: str, tmp: Path) -> Dict[str, float]:
    """Tokens per second of greedy decoding on the KV-cache twin, every variant and float32."""
    kv_src = zoo.ensure(f"{model}-kv", progress=False)
    paths = build_variants(kv_src, qtype, tmp, f"{model}-kv")
    plain = ort.SessionOptions()
    plain.log_severity_level = 3
    float_acts = ort.SessionOptions()
    float_acts.log_severity_level = 3
    for key, value in FLOAT_ACTIVATIONS.items():
        float_acts.add_session_config_entry(key, value)
    for options in (plain, float_acts):  # the variants are timed in turn: no spinning into the next one
        quiet_between_runs(options)
    cpu = ["CPUExecutionProvider"]
    sessions = {
        "float32": ort.InferenceSession(str(kv_src), plain, providers=cpu),
        "exact": InferenceSession(paths["exact"], plain, providers=cpu),
        "fast": InferenceSession(paths["fast"], plain, providers=cpu),
        "matmulnbits": ort.InferenceSession(paths["matmulnbits"], plain, providers=cpu),
        "qdq": ort.InferenceSession(paths["qdq"], float_acts, providers=cpu),
        "qdq_default": ort.InferenceSession(paths["qdq"], plain, providers=cpu),
    }
    prompt = zoo.load_tokenizer(model).encode(DECODE_PROMPT)
    speed, texts = zoo.time_greedy(sessions, prompt, DECODE_TOKENS, DECODE_REPEATS)
    speed["same_tokens_portable_as_exact"] = float(texts["matmulnbits"] == texts["exact"] == texts["qdq"])
    speed["load"] = os.getloadavg()[0]
    return speed


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f}"


def table(rows: List[Dict[str, Any]]) -> str:
    """Markdown: size, quality and speed per model and type."""
    out = ["| model | type | GGML MB | MatMulNBits MB | QDQ MB | quality: float / exact / fast / MatMulNBits / "
           "QDQ / QDQ (ORT default) | portable vs exact | prefill s: float / exact / fast / MNB / QDQ / QDQ dflt | "
           "decode tok/s: float / exact / fast / MNB / QDQ / QDQ dflt | load |",
           "|---|---|---:|---:|---:|---|---:|---|---|---:|"]
    for r in rows:
        fmt = "{:.3f}" if r["task"] == "lm" else "{:.5f}"
        q = " / ".join(fmt.format(r[k]) for k in ("float_quality", "exact_quality", "fast_quality",
                                                    "matmulnbits_quality", "qdq_quality", "qdq_default_quality"))
        pre = " / ".join(f"{r[k]:.2f}" for k in ("float_seconds", "exact_prefill_s", "fast_prefill_s",
                                                 "matmulnbits_prefill_s", "qdq_prefill_s", "qdq_default_prefill_s"))
        d = r.get("decode")
        dec = " / ".join(f"{d[k]:.1f}" for k in ("float32", "exact", "fast", "matmulnbits", "qdq", "qdq_default")) \
            if d else "-"
        vs = max(r["matmulnbits_vs_exact"], r["qdq_vs_exact"])
        out.append(f"| {r['model']} | {r['type']} | {_mb(r['exact_bytes'])} | {_mb(r['matmulnbits_bytes'])} | "
                   f"{_mb(r['qdq_bytes'])} | {q} | {100 * vs:.4f} % | {pre} | {dec} | {r['load']:.1f} |")
    return "\n".join(out)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--max-tokens", type=int, default=1024, help="SmolLM2 perplexity tokens (default 1024)")
    ap.add_argument("--no-decode", action="store_true", help="skip the decode speed (KV-cache twin)")
    ap.add_argument("--out", help="write every number as JSON here")
    ap.add_argument("--zero-point-speed", action="store_true",
                    help="only time one head-shaped MatMulNBits with the min term vs a float zero point")
    args = ap.parse_args(argv)
    if args.zero_point_speed:
        print(json.dumps(zero_point_speed()))
        return 0
    rows: List[Dict[str, Any]] = []
    print(f"onnxruntime {ort.__version__}, {os.cpu_count()} cores", flush=True)
    for model in args.models.split(","):
        src = zoo.ensure(model, progress=False)
        for qtype in args.types.split(","):
            with tempfile.TemporaryDirectory(dir=os.environ.get("ONNXQ_CACHE_DIR")) as tmp:
                row = measure_type(model, src, qtype, Path(tmp), args.max_tokens, not args.no_decode)
            rows.append(row)
            print(table([row]).splitlines()[-1], flush=True)
            if args.out:  # after every row: a stopped run keeps what it measured
                with open(args.out, "w", encoding="utf-8") as fh:
                    json.dump(rows, fh, indent=2)
    print(table(rows))
    bad = [f"{r['model']} {r['type']}" for r in rows if not r["within_tolerance"]]
    for r in rows:
        if r["float_zero_point"]:
            z = r["float_zero_point"]
            print(f"{r['model']} {r['type']}: MatMulNBits float zero point: largest |w - w_ggml| = {z['max_abs']:.3g} "
                  f"({z['max_rel_to_layer_max']:.3g} of the layer's largest weight); {100 * z['blocks_bit_exact']:.1f} % "
                  "of blocks bit-exact")
    if bad:
        print(f"portable quality differs from exact mode by more than {100 * TOLERANCE} %: {', '.join(bad)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
