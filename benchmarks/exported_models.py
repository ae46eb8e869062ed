"""Quantize models as users export them, with onnxq's default flags, and measure them.

For each full-size export of the real SmolLM2-135M and all-MiniLM-L6-v2 weights
(``tests/data/exported/make_fixtures.py --full``: optimum, torch.onnx dynamo,
onnxruntime-genai's builder, onnxruntime's transformer optimizer) this runs the CLI as a user
would, with default flags and nothing but a text file for calibration:

* ``onnxq quantize M -o Q --type q4_k`` (SmolLM2) / ``--type q6_k`` (MiniLM): file size
  against float, perplexity delta / mean cosine;
* ``onnxq quantize M -o S --method smoothquant --calib-text calib.txt``: the same measures;

and evaluates every candidate against its float export with ``onnxq.evaluate`` (defaults:
the shipped Python Reference prose, 8 windows of 512 tokens; the 64 shipped sentences),
with the tokenizer.json the exporter wrote beside the model. The calibration text is the
Python Reference topics other than the evaluation corpus's (``onnxq.zoo.calibration``), so
calibration and evaluation never overlap. ``--sweep`` also measures the settings the
defaults were chosen against (alpha 0.5, calibration window lengths and counts).

    python benchmarks/exported_models.py [--exports DIR] [--only optimum-minilm,...] [--sweep] [--json out.json]

The exports are built when missing if ``--exporter-python`` (default: this interpreter) has
torch, optimum and onnxruntime-genai (see tests/data/exported/make_fixtures.py); otherwise
the benchmark says so and stops.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxq.cli import main as onnxq_cli  # noqa: E402
from onnxq.evaluate import evaluate  # noqa: E402
from onnxq.modelio import file_bytes  # noqa: E402
from onnxq.zoo.calibration import python_reference_text  # noqa: E402

MAKE_FIXTURES = ROOT / "tests" / "data" / "exported" / "make_fixtures.py"
DEFAULT_EXPORTS = Path(os.environ.get("ONNXQ_CACHE", Path.home() / ".cache" / "onnxq")) / "exported"
EXPORTS = ("optimum-smollm2", "dynamo-smollm2", "genai-smollm2", "optimum-minilm", "dynamo-minilm", "ortopt-minilm")
#: what part B of issue 13 still has to deliver for an export (rows marked in the table)
NEEDS_PART_B = {
    "genai-smollm2": "tied table read through Transpose stays float",
    "ortopt-minilm": "Attention QKV and EmbedLayerNormalization tables stay float",
}


def ensure_exports(exports: Path, names: List[str], python: str) -> None:
    missing = [n for n in names if not (exports / n / "model.onnx").is_file()]
    if not missing:
        return
    probe = subprocess.run([python, "-c", "import torch, optimum.exporters.onnx, onnxruntime_genai, transformers"],
                           capture_output=True)
    if probe.returncode != 0:
        sys.exit(f"missing full-size exports {missing} in {exports}, and {python} cannot build them (it lacks "
                 f"torch / optimum / onnxruntime-genai). Build them with: PYTHON {MAKE_FIXTURES} --full "
                 f"--out {exports}  (PYTHON: a venv with the exporters, see {MAKE_FIXTURES.name})")
    subprocess.run([python, str(MAKE_FIXTURES), "--full", "--out", str(exports), "--only", *missing], check=True)


def quantize(src: Path, out: Path, *flags: str) -> float:
    """Run ``onnxq quantize`` as a user would; the output's size (with external data) in bytes."""
    code = onnxq_cli(["quantize", str(src), "-o", str(out), "-q", *flags])
    if code != 0:
        raise RuntimeError(f"onnxq quantize {src} {' '.join(flags)} failed ({code})")
    return float(file_bytes(out))


def variants(name: str, calib: Path, sweep: bool) -> Dict[str, List[str]]:
    """label -> onnxq quantize flags (defaults apart from what the label says)."""
    llm = name.endswith("smollm2")
    out = {"ggml q4_k" if llm else "ggml q6_k": ["--type", "q4_k" if llm else "q6_k"],
           "smoothquant": ["--method", "smoothquant", "--calib-text", str(calib)]}
    if not llm:
        out["ggml q4_k"] = ["--type", "q4_k"]
    if sweep:
        out["smoothquant alpha 0.5"] = out["smoothquant"] + ["--alpha", "0.5"]
        windows = ((64, 32), (128, 32)) if llm else ((32, 32), (64, 32), (128, 32), (512, 32), (64, 64), (256, 16),
                                                    (256, 64))
        for window, count in windows:
            out[f"smoothquant window {window}x{count}"] = out["smoothquant"] + [
                "--calib-window", str(window), "--calib-windows", str(count)]
    return out


def measure(name: str, exports: Path, work: Path, calib: Path, sweep: bool) -> Dict[str, Any]:
    src = exports / name / "model.onnx"
    float_bytes = float(file_bytes(src))
    labels, paths, sizes = [], [], {}
    for label, flags in variants(name, calib, sweep).items():
        out = work / name / (label.replace(" ", "_") + ".onnx")
        out.parent.mkdir(parents=True, exist_ok=True)
        print(f"[{name}] {label}: onnxq quantize {' '.join(flags)}", flush=True)
        sizes[label] = quantize(src, out, *flags)
        labels.append(label)
        paths.append(out)
    report = evaluate(src, paths, progress=False)
    rows = {}
    for label, cand in zip(labels, report.candidates):
        m = cand.metrics
        row = {"ratio": float_bytes / sizes[label], "mb": sizes[label] / 1e6}
        if report.task == "lm":
            ref = report.reference.metrics["perplexity"]
            row.update(ppl=m["perplexity"], delta=m["perplexity"] / ref - 1.0, kl=m["kl_divergence"],
                       top1=m["top1_agreement"])
        else:
            row.update(cosine=m["cosine_mean"], cosine_min=m["cosine_min"])
        rows[label] = row
    return {"task": report.task, "float_mb": float_bytes / 1e6, "reference": report.reference.metrics,
            "data": report.data, "rows": rows, "needs_part_b": NEEDS_PART_B.get(name)}


def table(results: Dict[str, Any]) -> str:
    lines = ["| export | variant | MB | x smaller | quality | KL | top-1 |", "|---|---|---|---|---|---|---|"]
    for name, res in results.items():
        mark = f" ¹" if res["needs_part_b"] else ""
        for label, row in res["rows"].items():
            if res["task"] == "lm":
                quality = f"Δppl {row['delta'] * 100:+.2f} %"
                extra = f"{row['kl']:.4f} | {row['top1'] * 100:.1f} %"
            else:
                quality = f"cosine {row['cosine']:.5f} (min {row['cosine_min']:.3f})"
                extra = " | "
            lines.append(f"| {name}{mark} | {label} | {row['mb']:.1f} | {row['ratio']:.2f} | {quality} | {extra} |")
    notes = {res["needs_part_b"] for res in results.values() if res["needs_part_b"]}
    if notes:
        lines.append("")
        lines.append("¹ needs issue 13 part B: " + "; ".join(
            f"{n}: {res['needs_part_b']}" for n, res in results.items() if res["needs_part_b"]))
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exports", type=Path, default=DEFAULT_EXPORTS, help=f"full-size exports (default {DEFAULT_EXPORTS})")
    parser.add_argument("--only", help="comma-separated export names (default: all)")
    parser.add_argument("--sweep", action="store_true", help="also alpha 0.5 and calibration window settings")
    parser.add_argument("--sweep-only", help="comma-separated exports the sweep applies to (default: all measured)")
    parser.add_argument("--exporter-python", default=sys.executable, help="python with the exporters, to build missing exports")
    parser.add_argument("--json", type=Path, help="write the results as JSON")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(EXPORTS)
    unknown = [n for n in names if n not in EXPORTS]
    if unknown:
        parser.error(f"unknown export(s) {unknown}; known: {', '.join(EXPORTS)}")
    ensure_exports(args.exports, names, args.exporter_python)
    results: Dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        calib = work / "calibration.txt"
        calib.write_text(python_reference_text(), encoding="utf-8")
        for name in names:
            sweep = args.sweep and (not args.sweep_only or name in args.sweep_only.split(","))
            results[name] = measure(name, args.exports, work, calib, sweep)
            print(table({name: results[name]}), flush=True)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
