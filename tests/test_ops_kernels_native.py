"""Build and run the kernels' native C tests (tests/native/test_kernels.c).

They check every SIMD path against the scalar reference on random and extreme blocks
(exact integer sums, bit-exact activation quantizers and dequantization), the repacked
layout's round trip, and the whole driver against a float64 reference. Run three ways:
optimised as shipped (-O3), with AddressSanitizer + UndefinedBehaviorSanitizer when the
compiler has them, and under valgrind when it is installed (a second, independent memory
checker; skipped otherwise).

Valgrind cannot execute AVX-512 (its CPU model reports none), so under valgrind the kernel
dispatch stops at AVX2: valgrind covers the AVX2 and scalar kernels, and the AVX-512 VNNI
kernels get their memory checking from the AddressSanitizer runs (this file's C tests and
tests/native/sanitize.py through onnxruntime). The tests below check that split.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "native"))
import kbuild  # noqa: E402

if kbuild.compiler() is None:
    pytest.skip("no C compiler", allow_module_level=True)


def program(tmp_path, name: str, flags: list[str]) -> str:
    return kbuild.link(kbuild.objects(flags), str(tmp_path / name), flags)


def run(binary: str, env_extra: dict | None = None, prefix: list[str] | None = None) -> str:
    env = dict(os.environ, **(env_extra or {}))
    res = subprocess.run([*(prefix or []), binary], capture_output=True, text=True, env=env, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert " 0 failed" in out, out[-4000:]
    return out


def test_native_optimised(tmp_path):
    out = run(program(tmp_path, "test_kernels", kbuild.OPT))
    assert "passed" in out
    # the forced-scalar dispatch runs the same driver checks on the reference kernels
    run(program(tmp_path, "test_kernels", kbuild.OPT), {"ONNXQ_ISA": "scalar"})


def _best_isa() -> str:
    from onnxq import runtime

    return runtime.kernel_isa()


def _has_avxvnni() -> bool:
    """AVX-VNNI (VEX vpdpbusd) per the kernel's CPU flags: some AVX-512 CPUs lack it, some AVX2 ones have it."""
    try:
        with open("/proc/cpuinfo") as fh:
            return " avx_vnni" in fh.read()
    except OSError:
        return False


def _x86_levels(best: str) -> set:
    """The SIMD levels below and at the best one that this CPU runs."""
    levels = {"avx2": {"avx2"}, "avxvnni": {"avx2", "avxvnni"}, "avx512vnni": {"avx2", "avx512vnni"}}.get(best, set())
    return levels | ({"avxvnni"} if best == "avx512vnni" and _has_avxvnni() else set())


def _tested_isas(output: str) -> set:
    return {line.split()[1] for line in output.splitlines() if line.startswith("testing ") and "against scalar" in line}


def test_native_sanitizers(tmp_path):
    if not kbuild.sanitizers_work(str(tmp_path)):
        pytest.skip("the compiler cannot build AddressSanitizer/UBSan programs here")
    binary = program(tmp_path, "test_kernels_asan", kbuild.ASAN)
    out = run(binary, {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=1", "UBSAN_OPTIONS": "print_stacktrace=1"})
    assert _tested_isas(out) == _x86_levels(_best_isa()), out[-2000:]  # ASan reaches every SIMD path the CPU has


def test_native_valgrind(tmp_path):
    if shutil.which("valgrind") is None:
        pytest.skip("valgrind is not installed")
    binary = program(tmp_path, "test_kernels_vg", kbuild.OPT)
    out = run(binary, prefix=["valgrind", "--error-exitcode=3", "--leak-check=full", "--errors-for-leak-kinds=definite", "-q"])
    # valgrind's CPU has no AVX-512: AVX2 and scalar run under it, AVX-512 is ASan's (above)
    tested = _tested_isas(out)
    assert tested - {"avxvnni"} == ({"avx2"} if _best_isa() in ("avx2", "avxvnni", "avx512vnni") else set()), out[-2000:]


def test_isa_override_falls_back(tmp_path):
    """ONNXQ_ISA picks a lower level; one the CPU lacks falls back to the best available."""
    src = tmp_path / "isa.c"
    src.write_text('#include <stdio.h>\n#include "kernels.h"\nint main(void){puts(onnxq_kernel_isa());return 0;}\n')
    kernels = [o for o in kbuild.objects(kbuild.OPT) if os.path.basename(o).startswith("kernels_")]
    obj = str(tmp_path / "isa.o")
    subprocess.run([kbuild.compiler(), *kbuild.BASE_FLAGS, "-O1", "-c", str(src), "-o", obj], check=True)
    out = kbuild.link([obj, *kernels], str(tmp_path / "isa"), [])

    def isa(value):
        env = dict(os.environ)
        env.pop("ONNXQ_ISA", None)
        if value is not None:
            env["ONNXQ_ISA"] = value
        return subprocess.run([out], capture_output=True, text=True, env=env, check=True).stdout.strip()

    best = isa(None)
    assert best in ("scalar", "avx2", "avxvnni", "avx512vnni", "neon", "dotprod", "i8mm")
    assert isa("scalar") == "scalar"
    assert isa("bogus") == best
    if best in ("avx2", "avxvnni", "avx512vnni"):
        assert isa("avx512vnni") == best  # never above what the CPU has
        assert isa("avx2") == "avx2"
        assert isa("avxvnni") == ("avxvnni" if "avxvnni" in _x86_levels(best) else "avx2")
        assert isa("i8mm") == best  # another architecture's level: as unknown
    if best in ("neon", "dotprod", "i8mm"):
        assert isa("i8mm") == best
        assert isa("neon") == "neon"
        assert isa("avx2") == best
