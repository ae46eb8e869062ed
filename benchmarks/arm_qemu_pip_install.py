"""`pip install` of onnxq natively on aarch64, emulated: an arm64 Debian chroot run through
qemu-user and binfmt_misc, where apt's python3/gcc build onnxq from a copy of this repository
exactly as on an ARM board (setup.py picks the sources and flags itself), then quantize and run
a small model there and compare with this (x86-64) machine.

What it does (Linux host, root, Debian's debootstrap and qemu-user-static, PyPI reachable;
30-60 minutes, most of it compiling under emulation):
  1. binfmt_misc: mounted and qemu-aarch64 registered (Debian's /usr/lib/binfmt.d entry, whose
     F flag lets the chroot use the host's interpreter) when absent;
  2. an arm64 Debian bookworm userland in --rootfs made by a full two-stage debootstrap with
     python3, python3-venv, python3-dev, python3-pip, gcc, libc6-dev;
  3. the repository's tracked files copied to ROOTFS/src/onnxq; `python3 -m venv` and
     `pip install /src/onnxq` inside the chroot (onnx, onnxruntime, numpy wheels for aarch64
     from PyPI; onnxq's Cython codecs and op library compiled by the emulated gcc);
  4. in the chroot: `import onnxq`, onnxq.kernel_isa(), quantize a two-layer float model (random
     weights, K = 320 with a K-quant tail) to q4_K / q8_0 in fast and exact mode and run it on
     24 rows (fast mode takes the integer GEMM) at every ONNXQ_ISA level;
  5. here: the same float model quantized by the x86 install (the GGML bytes must be the same)
     and the ARM-quantized models run by the x86 library (outputs within float rounding; fast
     mode bit-identical across the ARM levels);
  6. benchmarks/op_speed.py run unchanged in the chroot (with --check, on tiny shapes).
Prints how far it got at every step; the pip log is kept in ROOTFS/src/pip-install.log.
Measures correctness and that the install works, not speed: an emulator says nothing about it.

    python benchmarks/arm_qemu_pip_install.py [--rootfs /work/arm-pip-rootfs]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from arm_qemu_session import MIRROR, fake_cpuinfo, need, rel_err, run  # noqa: E402

BINFMT = "/proc/sys/fs/binfmt_misc"
PACKAGES = "python3,python3-venv,python3-dev,python3-pip,gcc,libc6-dev,ca-certificates"
LEVELS = ("scalar", "neon", "dotprod", "i8mm")
CASES = (("q4_K", "fast"), ("q8_0", "fast"), ("q4_K", "exact"))

# Runs in the chroot (and, for the x86 side, here): model building, quantization, inference.
CHECK = r'''
import json, os, sys
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

def float_model(path):
    rng = np.random.default_rng(7)
    w1 = (rng.standard_normal((320, 96)) * 0.05).astype(np.float32)
    w2 = (rng.standard_normal((96, 320)) * 0.05).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 320])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 320])],
                          [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)

def main(work, cases, role):
    import onnxq
    from onnxq import runtime
    src = os.path.join(work, "mlp.onnx")
    float_model(src)
    x = np.random.default_rng(1).standard_normal((24, 320)).astype(np.float32)
    np.save(os.path.join(work, "x.npy"), x)
    out = {"isa": onnxq.kernel_isa(), "version": onnxq.__version__, "models": {}}
    for qtype, mode in cases:
        dst = os.path.join(work, f"mlp-{qtype}-{mode}-{role}.onnx")
        onnxq.quantize(src, dst, type=qtype, mode=mode, progress=False)
        sess = onnxq.InferenceSession(dst)
        y = sess.run(None, {"x": x})[0]
        np.save(dst + ".y.npy", y)
        out["models"][f"{qtype}-{mode}"] = dst
    print(json.dumps(out), flush=True)

main(sys.argv[1], [tuple(c.split(":")) for c in sys.argv[2].split(",")], sys.argv[3])
'''

# Runs in the chroot with ONNXQ_ISA set: the ARM-quantized models at one level.
LEVEL_RUN = r'''
import json, sys
import numpy as np
import onnxq
work, models, tag = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
x = np.load(work + "/x.npy")
for name, path in models.items():
    np.save(f"{path}.{tag}.npy", onnxq.InferenceSession(path).run(None, {"x": x})[0])
print(onnxq.kernel_isa())
'''


def step(msg: str) -> None:
    print(f"\n=== [{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def ensure_binfmt() -> None:
    entry = os.path.join(BINFMT, "qemu-aarch64")
    if os.path.exists(entry):
        return
    if not os.path.exists(os.path.join(BINFMT, "register")):
        run(["mount", "-t", "binfmt_misc", "binfmt_misc", BINFMT])
    if not os.path.exists(entry):
        conf = "/usr/lib/binfmt.d/qemu-aarch64.conf"
        if not os.path.exists(conf):
            sys.exit(f"{conf} not found: apt-get install qemu-user-static")
        with open(conf) as fh, open(os.path.join(BINFMT, "register"), "w") as reg:
            reg.write(fh.read().strip())
    with open(entry) as fh:
        flags = [ln for ln in fh.read().splitlines() if ln.startswith("flags")]
    print(f"binfmt_misc qemu-aarch64 registered ({flags[0] if flags else 'no flags'})")


def make_rootfs(rootfs: str) -> None:
    if os.path.exists(os.path.join(rootfs, "usr", "bin", "gcc")) and os.path.exists(
            os.path.join(rootfs, "usr", "lib", "python3", "dist-packages", "pip")):
        print(f"{rootfs}: arm64 userland already there")
        return
    need("debootstrap", "debootstrap")
    os.makedirs(rootfs, exist_ok=True)
    run(["debootstrap", "--arch=arm64", "--variant=minbase", f"--include={PACKAGES}", "bookworm", rootfs, MIRROR])


def copy_repo(rootfs: str) -> str:
    dst = os.path.join(rootfs, "src", "onnxq")
    shutil.rmtree(dst, ignore_errors=True)
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.splitlines()
    for f in files:
        s = os.path.join(ROOT, f)
        if os.path.isfile(s) and not f.endswith((".so", ".dylib")):
            os.makedirs(os.path.dirname(os.path.join(dst, f)), exist_ok=True)
            shutil.copy2(s, os.path.join(dst, f))
    print(f"copied {len(files)} files to {dst}")
    return dst


class Chroot:
    """proc, dev, a fake ARM /proc/cpuinfo (onnxruntime's cpuinfo dies on the host's x86 one),
    DNS and the host's CA bundle, mounted for the duration."""

    def __init__(self, rootfs: str):
        self.rootfs = rootfs
        self.mounts: list[str] = []

    def __enter__(self):
        r = self.rootfs
        for src, dst, kind in (("proc", "proc", ["-t", "proc"]), ("/dev", "dev", ["--bind"])):
            target = os.path.join(r, dst)
            os.makedirs(target, exist_ok=True)
            run(["mount", *kind, src, target])
            self.mounts.append(target)
        fake = os.path.join(r, "etc", "onnxq-cpuinfo")
        fake_cpuinfo(os.path.join(r, "etc", "onnxq-cpuinfo-dir"))
        shutil.copy(os.path.join(r, "etc", "onnxq-cpuinfo-dir", "proc", "cpuinfo"), fake)
        run(["mount", "--bind", fake, os.path.join(r, "proc", "cpuinfo")])
        self.mounts.append(os.path.join(r, "proc", "cpuinfo"))
        shutil.copy("/etc/resolv.conf", os.path.join(r, "etc", "resolv.conf"))
        shutil.copy("/etc/ssl/certs/ca-certificates.crt", os.path.join(r, "etc", "onnxq-host-ca.crt"))
        return self

    def __exit__(self, *exc):
        for target in reversed(self.mounts):
            subprocess.run(["umount", "-l", target], check=False)

    def sh(self, script: str, env: dict | None = None, log: str | None = None) -> subprocess.CompletedProcess:
        base = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8",
                "PIP_CERT": "/etc/onnxq-host-ca.crt", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        cmd = [need("chroot", "coreutils"), self.rootfs, "/bin/sh", "-ec", script]
        print("+ chroot:", script, flush=True)
        if log is None:
            return subprocess.run(cmd, env={**base, **(env or {})}, check=True, text=True, capture_output=True)
        with open(log, "w") as fh:
            return subprocess.run(cmd, env={**base, **(env or {})}, check=True, stdout=fh, stderr=subprocess.STDOUT)


def compare(work_host: str, arm: dict, x86: dict, levels: dict) -> list[str]:
    """Verdict lines; failures start with FAIL."""
    import onnx

    lines = []
    for name in arm["models"]:
        pa, px = arm["models"][name].replace("/src/work", work_host), x86["models"][name]
        ta = {t.name: t.raw_data for t in onnx.load(pa).graph.initializer}
        tx = {t.name: t.raw_data for t in onnx.load(px).graph.initializer}
        same = ta == tx
        lines.append(f"{'ok' if same else 'FAIL'} {name}: GGML bytes quantized on aarch64 == x86: {same}")
        ya, yx = np.load(pa + ".y.npy"), np.load(px + ".y.npy")
        yxa = levels["x86"][name]
        tol = 1e-5 if name.endswith("exact") else 1e-2
        err, err2 = rel_err(ya, yx), rel_err(ya, yxa)
        ok = err <= tol and err2 <= tol
        lines.append(f"{'ok' if ok else 'FAIL'} {name}: aarch64 vs x86 max|diff|/max {err:.2e}, same model on x86 "
                     f"{err2:.2e} (bound {tol:.0e})")
        if name.endswith("fast"):
            ref = levels["scalar"][name]
            same_bits = {lv: bool(np.array_equal(levels[lv][name], ref)) for lv in LEVELS}
            ok = all(same_bits.values())
            lines.append(f"{'ok' if ok else 'FAIL'} {name}: fast mode, ARM levels bit-identical to ARM scalar: {same_bits}")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rootfs", default="/work/arm-pip-rootfs")
    ap.add_argument("--reuse-install", action="store_true",
                    help="keep the chroot's installed onnxq from an earlier run (skip the 30-60 minute build)")
    args = ap.parse_args()
    rootfs = os.path.abspath(args.rootfs)
    t0 = time.time()
    step("binfmt_misc")
    ensure_binfmt()
    step("arm64 userland (debootstrap, both stages)")
    make_rootfs(rootfs)
    step("repository copy")
    copy_repo(rootfs)
    work = os.path.join(rootfs, "src", "work")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    with open(os.path.join(work, "check.py"), "w") as fh:
        fh.write(CHECK)
    with open(os.path.join(work, "level_run.py"), "w") as fh:
        fh.write(LEVEL_RUN)
    cases = ",".join(f"{t}:{m}" for t, m in CASES)
    with Chroot(rootfs) as ch:
        step("inside: " + ch.sh("uname -m; python3 --version; gcc --version | head -1").stdout.replace("\n", " | "))
        step("pip install /src/onnxq (native build under emulation; log: ROOTFS/src/pip-install.log)")
        t = time.time()
        if args.reuse_install and os.path.exists(os.path.join(rootfs, "opt", "onnxq-venv", "bin", "python")):
            print("--reuse-install: the venv of an earlier run (its log: ROOTFS/src/pip-install.log)")
        else:
            try:
                ch.sh("rm -rf /opt/onnxq-venv; python3 -m venv /opt/onnxq-venv; "
                      "/opt/onnxq-venv/bin/pip install -v /src/onnxq", log=os.path.join(rootfs, "src", "pip-install.log"))
            except subprocess.CalledProcessError:
                with open(os.path.join(rootfs, "src", "pip-install.log")) as fh:
                    print(fh.read()[-6000:])
                print("FAILED: pip install")
                return 1
            print(f"pip install done in {time.time() - t:.0f} s")
        step("import, quantize and run in the chroot")
        arm = json.loads(ch.sh(f"cd /tmp && /opt/onnxq-venv/bin/python /src/work/check.py /src/work {cases} arm")
                         .stdout.strip().splitlines()[-1])
        print(f"aarch64 onnxq {arm['version']}: kernel_isa() = {arm['isa']}")
        models_in = json.dumps(arm["models"])
        for level in LEVELS:
            got = ch.sh(f"cd /tmp && /opt/onnxq-venv/bin/python /src/work/level_run.py /src/work '{models_in}' {level}",
                        env={"ONNXQ_ISA": level}).stdout.strip().splitlines()[-1]
            print(f"ONNXQ_ISA={level}: the installed library ran {got}")
            if got != level:
                print(f"FAILED: ONNXQ_ISA={level} ran {got}")
                return 1
        step("benchmarks/op_speed.py, unchanged, in the chroot (--check; tiny shapes: emulated times mean nothing)")
        # a copy outside the source tree: the script puts its checkout first on sys.path, and this
        # checkout has no in-place build (the installed onnxq is the one to measure)
        os.makedirs(os.path.join(work, "bench"), exist_ok=True)
        shutil.copy(os.path.join(ROOT, "benchmarks", "op_speed.py"), os.path.join(work, "bench", "op_speed.py"))
        try:  # --check's reference dequantizer is gguf's (onnxq's [models] extra): pure Python
            ch.sh("/opt/onnxq-venv/bin/pip install -q gguf")
            res = ch.sh("cd /tmp && /opt/onnxq-venv/bin/python /src/work/bench/op_speed.py --check --shapes 512x256 "
                        "--M 1,32 --types Q4_0,Q4_K --threads 1 --rounds 1 --budget 0.02")
            print(res.stdout[-3000:])
            op_speed = "ok op_speed.py ran unchanged on aarch64 (--check passed)"
        except subprocess.CalledProcessError as e:
            print((e.stdout or "")[-2000:], (e.stderr or "")[-3000:])
            op_speed = f"FAIL op_speed.py exited {e.returncode} on aarch64"
    step("x86 side: the same float model quantized here, the ARM-quantized models run here")
    xwork = os.path.join(work, "x86")
    os.makedirs(xwork)
    res = subprocess.run([sys.executable, os.path.join(work, "check.py"), xwork, cases, "x86"], check=True,
                         capture_output=True, text=True, cwd="/tmp")
    x86 = json.loads(res.stdout.strip().splitlines()[-1])
    import onnxq

    x = np.load(os.path.join(work, "x.npy"))
    levels = {lv: {n: np.load(f"{p.replace('/src/work', work)}.{lv}.npy") for n, p in arm["models"].items()}
              for lv in LEVELS}
    levels["x86"] = {n: onnxq.InferenceSession(p.replace("/src/work", work)).run(None, {"x": x})[0]
                     for n, p in arm["models"].items()}
    lines = compare(work, arm, x86, levels) + [op_speed]
    print("\n".join(lines))
    failed = [ln for ln in lines if ln.startswith("FAIL")]
    print(f"\n{'FAILED' if failed else 'PASSED'}: native pip install on emulated aarch64, kernel_isa {arm['isa']}, "
          f"{len(lines) - len(failed)}/{len(lines)} checks, {time.time() - t0:.0f} s in all")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
