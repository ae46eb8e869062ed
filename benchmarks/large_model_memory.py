"""Peak memory of ``onnxq quantize`` on a model whose external-data weights exceed 8 GB.

Run by hand (not in CI; needs ~11 GB of free disk for a few minutes):

    python benchmarks/large_model_memory.py [--gb 8.5] [--type q4_0] [--dir /tmp]

Builds a synthetic chain of MatMuls with 8192 x 8192 float32 weights (256 MiB each) in an
external data file — written one tensor at a time, so building it needs little memory
either — quantizes it in a child process with the CLI, and reports the child's peak
resident set size (``VmHWM`` from /proc, cross-checked with ``getrusage``), the input and
output sizes and the time. Checks the output with onnxruntime on a small input (first and
last layer against float), then deletes every file it made.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import onnx
from onnx import TensorProto, helper

SIDE = 8192


def build(path: str, n_layers: int, seed: int = 0) -> None:
    from onnxq.modelio import ModelWriter

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    with ModelWriter(path, external_data=True) as writer:
        x = "x"
        for i in range(n_layers):
            w = (rng.standard_normal((SIDE, SIDE), dtype=np.float32) * (1.0 / np.sqrt(SIDE))).astype(np.float32)
            name = f"model.layers.{i}.mlp.up_proj.weight"
            inits.append(writer.tensor_proto(name, w))
            del w
            y = f"h{i}"
            nodes.append(helper.make_node("MatMul", [x, name], [y], name=f"/model/layers.{i}/mlp/up_proj/MatMul"))
            x = y
        graph = helper.make_graph(
            nodes, "large", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", SIDE])],
            [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", SIDE])], initializer=inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 9
        writer.write(model)


def _watch(pid: int, peak: list, stop: threading.Event) -> None:
    """Sample the child's VmRSS every 50 ms (VmHWM is read at the end as well)."""
    while not stop.is_set():
        try:
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith(("VmRSS:", "VmHWM:")):
                        peak[0] = max(peak[0], int(line.split()[1]) * 1024)
        except OSError:
            return
        time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=8.5, help="size of the float32 weights in GB (default 8.5)")
    parser.add_argument("--type", default="q4_0", help="GGML type (default q4_0)")
    parser.add_argument("--dir", default=None, help="folder for the temporary files (default: system temp)")
    parser.add_argument("--keep", action="store_true", help="do not delete the files")
    args = parser.parse_args()

    n_layers = max(1, int(np.ceil(args.gb * 1e9 / (SIDE * SIDE * 4))))
    work = tempfile.mkdtemp(prefix="onnxq-large-", dir=args.dir)
    src, out = os.path.join(work, "large.onnx"), os.path.join(work, "large-q.onnx")
    try:
        t0 = time.perf_counter()
        build(src, n_layers)
        in_bytes = os.path.getsize(src) + os.path.getsize(src + ".data")
        print(f"built {n_layers} layers of {SIDE}x{SIDE} float32: {in_bytes / 1e9:.2f} GB in {time.perf_counter() - t0:.0f} s")

        cmd = [sys.executable, "-m", "onnxq", "quantize", src, "-o", out, "--type", args.type, "-q"]
        t0 = time.perf_counter()
        child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        peak, stop = [0], threading.Event()
        watcher = threading.Thread(target=_watch, args=(child.pid, peak, stop), daemon=True)
        watcher.start()
        stdout, stderr = child.communicate()
        stop.set()
        watcher.join()
        seconds = time.perf_counter() - t0
        if child.returncode != 0:
            print(stdout, stderr, sep="\n")
            return child.returncode
        rusage_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # kB on Linux
        out_bytes = os.path.getsize(out) + os.path.getsize(out + ".data")
        print(stdout.strip())
        print(f"quantize {args.type}: {seconds:.0f} s, output {out_bytes / 1e9:.2f} GB")
        print(f"peak RSS of the quantize process: {max(peak[0], rusage_peak) / 2**30:.2f} GiB "
              f"(sampled VmHWM {peak[0] / 2**30:.2f} GiB, getrusage {rusage_peak / 2**30:.2f} GiB); "
              f"largest tensor {SIDE * SIDE * 4 / 2**30:.2f} GiB; weights {in_bytes / 2**30:.2f} GiB")

        # correctness: first and last layer on a small input
        from onnxq.modelio import get_initializer_array, load_model
        from onnxq.runtime import InferenceSession

        model = load_model(src)
        x = np.random.default_rng(1).standard_normal((2, SIDE)).astype(np.float32)
        q = load_model(out)
        for index in (0, n_layers - 1):
            probe = onnx.ModelProto()
            probe.CopyFrom(q)
            node = next(n for n in q.graph.node if n.name == f"/model/layers.{index}/mlp/up_proj/MatMul")
            del probe.graph.node[:]
            probe.graph.node.append(node)
            del probe.graph.output[:]
            probe.graph.output.append(helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, ["batch", SIDE]))
            del probe.graph.input[:]
            probe.graph.input.append(helper.make_tensor_value_info(node.input[0], TensorProto.FLOAT, ["batch", SIDE]))
            keep = {node.input[1]}
            inits = [t for t in probe.graph.initializer if t.name in keep]
            del probe.graph.initializer[:]
            probe.graph.initializer.extend(inits)
            probe_path = os.path.join(work, f"probe{index}.onnx")
            onnx.save(probe, probe_path)
            got = InferenceSession(probe_path).run(None, {node.input[0]: x})[0]
            w = get_initializer_array(model, f"model.layers.{index}.mlp.up_proj.weight", work)
            ref = x @ np.asarray(w)
            rel = np.linalg.norm(got - ref) / np.linalg.norm(ref)
            print(f"layer {index}: relative error vs float {rel:.4f}")
        return 0
    finally:
        if args.keep:
            print(f"files kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
