"""Soak: quantize -> load -> infer -> eval in a loop, watching memory and open files.

One process runs, for ``--minutes`` (default 2), cycles over every (model, type) pair:
``onnxq.quantize`` the float model into the same output path, open an onnxruntime session
with onnxq's ops, run one inference, and ``onnxq.evaluate`` the quantized model against
the float one (encoder: 64 sentences; language model: 256 tokens). After every step it
samples the process's resident memory (VmRSS), open file descriptors, threads, and the
files in the output folder.

Bounds (exit status 1 when one is broken):

* RSS: the highest RSS of the last cycle is at most the highest RSS of the second cycle
  plus ``--rss-bound-mib`` (default 64 MiB); the first cycle, in which every pair runs
  for the first time, warms caches and allocator arenas and is not measured;
* open file descriptors and threads at the end of every measured cycle are equal;
* the output folder holds only the outputs (no temporary file) after every step.

    python benchmarks/soak.py                                   # 2 minutes, MiniLM, 4 types
    python benchmarks/soak.py --minutes 25 --models all-minilm-l6-v2,smollm2-135m --json soak.json
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

import onnxq
from onnxq import zoo
from onnxq.evaluate import evaluate

TYPES = ("q4_0", "q4_k", "q6_k", "q8_0")
MIB = 1 << 20


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def sample(folder: Path) -> Dict[str, Any]:
    return {
        "t": time.monotonic(),
        "rss": rss_bytes(),
        "fds": len(os.listdir("/proc/self/fd")),
        "threads": len(os.listdir("/proc/self/task")),
        "files": sorted(os.listdir(folder)),
    }


def feeds_for(name: str) -> Dict[str, np.ndarray]:
    """One realistic inference input: a tokenized sentence."""
    tok = zoo.load_tokenizer(name)
    text = "The quick brown fox jumps over the lazy dog while the soak test keeps running."
    if zoo.spec(name).kind == "encoder":
        return {k: v for k, v in tok.batch([text]).items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    ids = np.array([tok.encode(text, add_special_tokens=False)], dtype=np.int64)
    return {"input_ids": ids}


def step(name: str, src: Path, qtype: str, out: Path, feeds: Dict[str, np.ndarray]) -> Dict[str, Any]:
    """quantize -> load -> infer -> eval once; returns what it measured."""
    t0 = time.perf_counter()
    onnxq.quantize(src, out, type=qtype, progress=False)
    session = onnxq.InferenceSession(str(out))
    names = [i.name for i in session.get_inputs()]
    output = session.run(None, {k: v for k, v in feeds.items() if k in names})[0]
    del session
    if zoo.spec(name).kind == "encoder":
        report = evaluate(src, out, progress=False)
        quality = report.candidates[0].metrics["cosine_mean"]
    else:
        report = evaluate(src, out, ctx=128, max_tokens=256, progress=False)
        quality = report.candidates[0].metrics["kl_divergence"]
    if not np.all(np.isfinite(output)) or report.nonfinite_candidates:
        raise RuntimeError(f"{name} {qtype}: non-finite output")
    return {"model": name, "type": qtype, "seconds": time.perf_counter() - t0, "quality": quality}


def check(cycles: List[List[Dict[str, Any]]], expected_files: List[str], bound_mib: float) -> List[str]:
    """The broken bounds, as sentences (empty: all held)."""
    problems = []
    first, last = cycles[0], cycles[-1]
    growth = max(s["rss"] for s in last) - max(s["rss"] for s in first)
    if growth > bound_mib * MIB:
        problems.append(f"RSS grew {growth / MIB:.1f} MiB from the first full cycle to the last (bound {bound_mib} MiB)")
    for key in ("fds", "threads"):
        ends = [c[-1][key] for c in cycles]
        if any(e != ends[0] for e in ends):
            problems.append(f"{key} at the end of each cycle changed: {ends}")
    for c in cycles:
        for s in c:
            if s["files"] != expected_files:
                problems.append(f"output folder held {s['files']} (expected {expected_files})")
                return problems
    return problems


def run(models: List[str], types: List[str], minutes: float, bound_mib: float) -> Dict[str, Any]:
    sources = {m: zoo.ensure(m, progress=False) for m in models}
    inputs = {m: feeds_for(m) for m in models}
    pairs = [(m, t) for m in models for t in types]
    cycles: List[List[Dict[str, Any]]] = []
    steps: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="onnxq-soak-") as tmp:
        folder = Path(tmp)
        out = folder / "soak.onnx"
        start_sample = sample(folder)
        deadline = time.monotonic() + 60.0 * minutes
        while not cycles or time.monotonic() < deadline:
            cycle = []
            for name, qtype in pairs:
                steps.append(step(name, sources[name], qtype, out, inputs[name]))
                cycle.append(sample(folder))
            cycles.append(cycle)
            print(f"cycle {len(cycles)}: RSS {cycle[-1]['rss'] / MIB:.1f} MiB (max {max(s['rss'] for s in cycle) / MIB:.1f}), "
                  f"{cycle[-1]['fds']} fds, {cycle[-1]['threads']} threads, {len(steps)} steps", file=sys.stderr)
        expected = sorted(os.listdir(folder))
    measured = cycles[1:] if len(cycles) > 2 else cycles  # the first cycle warms every cache
    problems = check(measured, expected, bound_mib) if len(measured) > 1 else ["fewer than 2 measured cycles: run longer"]
    ends = [c[-1]["rss"] for c in cycles]
    hours = (cycles[-1][-1]["t"] - start_sample["t"]) / 3600
    return {
        "models": models, "types": types, "minutes": round(hours * 60, 1), "cycles": len(cycles), "iterations": len(steps),
        "rss_start_mib": round(start_sample["rss"] / MIB, 1),
        "rss_after_first_cycle_mib": round(ends[0] / MIB, 1),
        "rss_after_second_cycle_mib": round(ends[min(1, len(ends) - 1)] / MIB, 1),
        "rss_end_mib": round(ends[-1] / MIB, 1),
        "rss_max_first_measured_cycle_mib": round(max(s["rss"] for s in measured[0]) / MIB, 1),
        "rss_max_last_cycle_mib": round(max(s["rss"] for s in measured[-1]) / MIB, 1),
        "rss_bound_mib": bound_mib,
        "fds_start": start_sample["fds"], "fds_end": cycles[-1][-1]["fds"],
        "threads_start": start_sample["threads"], "threads_end": cycles[-1][-1]["threads"],
        "rss_cycle_ends_mib": [round(e / MIB, 1) for e in ends],
        "cycle_end_minutes": [round((c[-1]["t"] - start_sample["t"]) / 60, 2) for c in cycles],
        "seconds_per_step": {f"{s['model']} {s['type']}": round(s["seconds"], 2) for s in steps[-len(pairs):]},
        "quality": {f"{s['model']} {s['type']}": s["quality"] for s in steps[-len(pairs):]},
        "problems": problems,
    }


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=2.0, help="how long to loop (default 2; whole cycles)")
    ap.add_argument("--models", default="all-minilm-l6-v2", help=f"comma-separated zoo models ({', '.join(zoo.available())})")
    ap.add_argument("--types", default=",".join(TYPES), help=f"comma-separated GGML types (default {','.join(TYPES)})")
    ap.add_argument("--rss-bound-mib", type=float, default=64.0, help="allowed RSS growth, first to last cycle (MiB)")
    ap.add_argument("--json", metavar="FILE", help="also write the result here")
    args = ap.parse_args(argv)
    result = run(args.models.split(","), args.types.split(","), args.minutes, args.rss_bound_mib)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    for p in result["problems"]:
        print(f"soak: {p}", file=sys.stderr)
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
