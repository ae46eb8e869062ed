"""Fuzz onnxq's custom-op library under AddressSanitizer + UndefinedBehaviorSanitizer.

Builds the whole library (kernels and onnxruntime glue) with ``-fsanitize=address,undefined
-fno-sanitize-recover=all`` through kbuild (cached under the temp dir), then runs
tests/ops_fuzz.py through onnxruntime with that build (``ONNXQ_OPS_LIBRARY``), once per
kernel instruction set the CPU has (``ONNXQ_ISA``), libasan and libstdc++ preloaded:
libasan first, as ASan requires, and libstdc++ so that onnxruntime's C++ exceptions for
the (expected) errors unwind instead of aborting. Any sanitizer report ends its worker
with a non-zero status, which the fuzzer counts as a crash. Prints one line per ISA and a
JSON summary last; exit status 0 only when no case crashed or mismatched.

    python tests/native/sanitize.py                       # 2,000 cases per ISA, seed 1
    python tests/native/sanitize.py --cases 10000 --seed 1 --seed 2 --isa avx512vnni

This is where the AVX-512 kernels get a memory checker: valgrind cannot run AVX-512
instructions (it reports the CPU without them), so tests/test_ops_kernels_native.py runs
valgrind on the AVX2 and scalar kernels and ASan covers all three natively.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import kbuild  # noqa: E402

FUZZER = os.path.join(os.path.dirname(HERE), "ops_fuzz.py")
ISAS = ("avx512vnni", "avxvnni", "avx2", "scalar")
SANITIZER_ENV = {
    # Python's interpreter keeps its allocations to the end: leak reports would be noise.
    # onnxruntime probes allocation limits: let a refused malloc return NULL as it expects.
    "ASAN_OPTIONS": "detect_leaks=0:allocator_may_return_null=1:halt_on_error=1",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
}


def runtime_path(name: str) -> str:
    """The real file of a compiler runtime library (``libasan.so``, ``libstdc++.so``)."""
    found = subprocess.run([kbuild.compiler(), f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    path = os.path.realpath(found)
    if not os.path.isfile(path):
        raise SystemExit(f"sanitize: the compiler does not know where {name} is (got {found!r})")
    return path


def sanitizer_env(library: str) -> dict:
    env = dict(os.environ, **SANITIZER_ENV)
    env["ONNXQ_OPS_LIBRARY"] = library
    env["LD_PRELOAD"] = " ".join([runtime_path("libasan.so"), runtime_path("libstdc++.so")])
    return env


def check_env(env: dict) -> None:
    """The ASan runtime is in a Python process started with ``env``, and onnxruntime loads."""
    probe = "import ctypes; ctypes.CDLL(None)['__asan_init']; import onnxruntime; print('ok')"
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env)
    if res.returncode != 0 or res.stdout.strip() != "ok":
        raise SystemExit(f"sanitize: Python does not start under ASan here:\n{res.stderr[-2000:]}")


def available_isas(env: dict) -> list:
    """The levels this CPU runs, best first: each one asked for and answered as itself (AVX-512
    CPUs without AVX-VNNI exist, and AVX2 ones with it)."""
    code = "from onnxq import runtime; print(runtime.kernel_isa())"

    def picked(isa: str) -> str:
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env=dict(env, ONNXQ_ISA=isa))
        return res.stdout.strip()

    return [isa for isa in ISAS if picked(isa) == isa]


def fuzz_one_isa(env: dict, isa: str, seeds: list, cases: int, jobs: int) -> dict:
    cmd = [sys.executable, FUZZER, "--cases", str(cases), "--jobs", str(jobs), "--batch", "500"]
    for seed in seeds:
        cmd += ["--seed", str(seed)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=dict(env, ONNXQ_ISA=isa))
    lines = res.stdout.strip().splitlines()
    if not lines:
        raise SystemExit(f"sanitize: the fuzzer printed nothing (rc {res.returncode}):\n{res.stderr[-3000:]}")
    summary = json.loads(lines[-1])
    summary["isa"] = isa
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=2000, help="fuzz cases per seed and ISA (default 2000)")
    ap.add_argument("--seed", type=int, action="append", help="fuzz seed (repeatable; default 1)")
    ap.add_argument("--isa", action="append", choices=ISAS,
                    help="kernel instruction set to test (repeatable; default: every one this CPU has)")
    ap.add_argument("--jobs", type=int, default=2, help="fuzz workers at a time (default 2)")
    ap.add_argument("--build-only", action="store_true", help="build the sanitized library, print its path, exit")
    args = ap.parse_args(argv)
    if kbuild.compiler() is None:
        raise SystemExit("sanitize: no C compiler")
    library = kbuild.ops_library(kbuild.ASAN, "libonnxq_ops_asan")
    if args.build_only:
        print(library)
        return 0
    env = sanitizer_env(library)
    check_env(env)
    isas = args.isa or available_isas(env)
    runs = [fuzz_one_isa(env, isa, args.seed or [1], args.cases, args.jobs) for isa in isas]
    problems = 0
    for run in runs:
        used = {s["kernels"] for s in run["seeds"]}
        libraries = {s["library"] for s in run["seeds"]}
        if used != {run["isa"]} or libraries != {library}:
            print(f"sanitize: asked for {run['isa']} kernels of {library}, the fuzzer ran {used} of {libraries}",
                  file=sys.stderr)
            problems += 1
        problems += run["crashes"] + run["n_mismatches"]
        print(f"ASan+UBSan {run['isa']}: {run['cases']} cases, {run['checks']} checks, "
              f"{run['errors_as_expected']} errors as expected, {run['n_mismatches']} mismatches, "
              f"{run['crashes']} crashes ({run['seconds']} s)", file=sys.stderr)
    print(json.dumps({"library": library, "runs": runs}))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
