"""The aarch64 kernels, cross-compiled here and run under qemu-user.

* tests/native/test_kernels.c (every SIMD level against the scalar reference: quantizers,
  dots, panels, gather, micro-kernels, and the whole driver for every type and mode with
  odd shapes) on emulated CPUs with and without the extensions: `-cpu max` (NEON, dotprod
  and i8mm all run), cortex-a76 (dotprod, no i8mm), cortex-a53 (NEON only: a dispatch
  that reached for SDOT there would die of SIGILL).
* tests/native/isa_probe.c for each ONNXQ_ISA value: what the dispatcher picks, and the
  results it computes through it (fast mode the same bits at every level, M = 17 and 64
  through the integer GEMM, M = 1 and 3 through the dot kernels), and the same bits as
  x86's scalar kernels.
* test_kernels.c's igemm checks: each ARM level's integer GEMM micro-kernel against its dot
  kernel, and the whole fast-mode driver at M = 16, 17, 64 against the same level's
  row-by-row GEMV and the scalar kernels, bit for bit, every type and odd shapes.
* the whole custom-op library built by cython_kernels/ops/Makefile with the cross
  compiler: it links, depends on libc/libm only and exports exactly the two entry points.

Needs Debian's gcc-aarch64-linux-gnu (+ libc6-dev-arm64-cross) and qemu-user-static;
.ci/run installs them with apt-get where apt exists. Without them the tests are skipped.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "native"))
import kbuild  # noqa: E402

CC = kbuild.aarch64_compiler()
QEMU = kbuild.qemu_aarch64()
if CC is None or QEMU is None:
    pytest.skip(
        f"aarch64 cross toolchain absent ({kbuild.AARCH64_CC}: {CC or 'missing'}, qemu-aarch64(-static): "
        f"{QEMU or 'missing'}); install with apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross "
        "qemu-user-static (.ci/run does where apt-get exists)",
        allow_module_level=True,
    )

OPS = kbuild.OPS
# Static: the binaries run under qemu-user with no aarch64 sysroot.
LINK = ["-static"]
ARM_LEVELS = ("neon", "dotprod", "i8mm")


def qemu(binary: str, cpu: str, isa: str | None = None) -> str:
    env = dict(os.environ)
    env.pop("ONNXQ_ISA", None)
    if isa is not None:
        env["ONNXQ_ISA"] = isa
    res = subprocess.run([QEMU, "-cpu", cpu, binary], capture_output=True, text=True, env=env, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 0, f"{binary} -cpu {cpu} ONNXQ_ISA={isa}: exit {res.returncode}\n{out[-4000:]}"
    return out


@pytest.fixture(scope="module")
def objects():
    return kbuild.objects(kbuild.OPT, cc=CC)


@pytest.fixture(scope="module")
def test_kernels(objects, tmp_path_factory):
    return kbuild.link(objects, str(tmp_path_factory.mktemp("a64") / "test_kernels"), LINK, cc=CC)


@pytest.fixture(scope="module")
def probe(objects, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("a64probe")
    obj = str(tmp / "isa_probe.o")
    src = os.path.join(kbuild.NATIVE, "isa_probe.c")
    res = subprocess.run([CC, *kbuild.BASE_FLAGS, *kbuild.OPT, "-c", src, "-o", obj], capture_output=True, text=True)
    assert res.returncode == 0 and "warning" not in res.stderr, res.stderr
    keep = [o for o in objects if os.path.basename(o).startswith(("kernels_", "harness"))]
    return kbuild.link([obj, *keep], str(tmp / "isa_probe"), LINK, cc=CC)


@pytest.mark.parametrize(
    "cpu,levels",
    [("max", ARM_LEVELS), ("cortex-a76", ("neon", "dotprod")), ("cortex-a53", ("neon",))],
)
def test_kernels_against_scalar(test_kernels, cpu, levels):
    out = qemu(test_kernels, cpu)
    assert " 0 failed" in out, out[-4000:]
    tested = {line.split()[1] for line in out.splitlines() if line.startswith("testing ")}
    assert tested == set(levels), out[-2000:]
    # every ARM SIMD level has the integer GEMM, and its driver checks ran (== GEMV, == scalar bits)
    igemm = {f[2]: int(f[3]) for f in (line.split() for line in out.splitlines()) if f[:2] == ["igemm", "driver"]}
    assert set(igemm) == set(levels) and min(igemm.values()) >= 45 * 6, out[-2000:]


def parse_probe(out: str):
    lines = out.splitlines()
    assert lines[0].startswith("isa "), out[:500]
    cases = {}
    for line in lines[1:]:
        f = line.split()
        cases[(f[0], f[1], int(f[2]))] = f[4:]
    return lines[0].split()[1], cases


def test_dispatch_and_forced_levels(probe):
    runs = {isa: parse_probe(qemu(probe, "max", isa)) for isa in ("scalar", *ARM_LEVELS)}
    for isa, (picked, _) in runs.items():
        assert picked == isa
    # unset, unknown or another architecture's level: the best this CPU has
    for value in (None, "bogus", "avx2", "avxvnni", "avx512vnni"):
        assert parse_probe(qemu(probe, "max", value))[0] == "i8mm", value
    # levels the CPU lacks fall back to the best it has
    assert parse_probe(qemu(probe, "cortex-a76", "i8mm"))[0] == "dotprod"
    assert parse_probe(qemu(probe, "cortex-a53"))[0] == "neon"
    a53 = parse_probe(qemu(probe, "cortex-a53", "i8mm"))
    assert a53[0] == "neon"

    ref = runs["scalar"][1]
    assert len(ref) == 8 * 4 * 2  # types x M in {1, 3, 17, 64} x modes
    for isa, (_, cases) in [*runs.items(), ("neon on cortex-a53", a53)]:
        assert cases.keys() == ref.keys()
        for key, vals in cases.items():
            if key[0] == "fast":  # exact integer sums and the scalar float tail: identical bits
                assert vals == ref[key], (isa, key)
            else:
                a = [float(v) for v in vals]
                b = [float(v) for v in ref[key]]
                scale = max(abs(v) for v in b) + 1e-30
                assert all(abs(x - y) <= 1e-5 * scale for x, y in zip(a, b)), (isa, key)


def test_fast_mode_bits_match_x86(probe, tmp_path):
    """Fast mode is defined by the scalar reference, whatever the architecture: exact integer
    sums and the same float operations (-ffp-contract=off) give x86's scalar kernels and every
    ARM level the same bits, so a model's fast-mode output does not depend on where it runs."""
    host_cc = kbuild.compiler()
    if host_cc is None or sys.platform != "linux" or os.uname().machine != "x86_64":
        pytest.skip("needs an x86-64 Linux host compiler")
    objs = kbuild.objects(kbuild.OPT)
    obj = str(tmp_path / "isa_probe.o")
    subprocess.run([host_cc, *kbuild.BASE_FLAGS, *kbuild.OPT, "-c", os.path.join(kbuild.NATIVE, "isa_probe.c"), "-o",
                    obj], check=True)
    keep = [o for o in objs if os.path.basename(o).startswith(("kernels_", "harness"))]
    host = kbuild.link([obj, *keep], str(tmp_path / "isa_probe_x86"), [], cc=host_cc)
    env = dict(os.environ, ONNXQ_ISA="scalar")
    x86 = parse_probe(subprocess.run([host], capture_output=True, text=True, env=env, check=True).stdout)
    assert x86[0] == "scalar"
    fast = [k for k in x86[1] if k[0] == "fast"]
    assert len(fast) == 8 * 4
    for cpu, isa in (("max", "scalar"), ("cortex-a53", "neon"), ("cortex-a76", "dotprod"), ("max", "i8mm")):
        picked, cases = parse_probe(qemu(probe, cpu, isa))
        assert picked == isa
        assert [k for k in fast if cases[k] != x86[1][k]] == [], (cpu, isa)


def test_cross_built_library(tmp_path):
    build = tmp_path / "build"
    res = subprocess.run(["make", "-s", "-j2", "-C", OPS, f"CC={CC}", f"BUILD={build}"], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    lib = build / "libonnxq_ops.so"
    readelf = shutil.which("aarch64-linux-gnu-readelf") or shutil.which("readelf")
    header = subprocess.run([readelf, "-h", str(lib)], capture_output=True, text=True, check=True).stdout
    assert "AArch64" in header
    needed, exported = kbuild.dynamic_deps(readelf, str(lib))
    assert needed and needed <= {"libc.so.6", "libm.so.6"}, needed
    assert exported == {"RegisterCustomOps", "onnxq_ops_kernel_isa"}, exported
