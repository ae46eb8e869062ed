"""The op library under AddressSanitizer + UBSan, through onnxruntime: tests/native/sanitize.py
builds it, preloads libasan and libstdc++, and fuzzes every kernel ISA the CPU has; a
sanitizer report would end a worker and be counted as a crash."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from onnxq import runtime

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "native"))
import kbuild  # noqa: E402

SCRIPT = os.path.join(HERE, "native", "sanitize.py")


@pytest.mark.slow
def test_fuzz_cases_under_asan_and_ubsan_on_every_isa(tmp_path):
    if kbuild.compiler() is None or not kbuild.sanitizers_work(str(tmp_path)):
        pytest.skip("the compiler cannot build AddressSanitizer/UBSan programs here")
    res = subprocess.run([sys.executable, SCRIPT, "--cases", "100", "--seed", "11"], capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    best = runtime.kernel_isa()
    isas = ["avx512vnni", "avxvnni", "avx2", "scalar"]
    expected = isas[isas.index(best):] if best in isas else ["scalar"]
    ran = [r["isa"] for r in summary["runs"]]
    # AVX-VNNI is not implied by AVX-512 VNNI (Ice Lake, Cascade Lake lack it)
    assert ran == expected or ran == [i for i in expected if i != "avxvnni"], ran
    for run in summary["runs"]:
        assert run["cases"] == 100 and run["crashes"] == 0 and run["n_mismatches"] == 0
        assert run["errors_as_expected"] > 40 and run["valid"] > 20
        assert {s["kernels"] for s in run["seeds"]} == {run["isa"]}
        assert {s["library"] for s in run["seeds"]} == {summary["library"]} and "asan" in summary["library"]


@pytest.mark.slow
def test_the_sanitized_library_reports_a_crash(tmp_path):
    """Under the script's environment a segmentation fault is a sanitizer report and a
    counted crash, not a dead run: the guard works with ASan preloaded."""
    if kbuild.compiler() is None or not kbuild.sanitizers_work(str(tmp_path)):
        pytest.skip("the compiler cannot build AddressSanitizer/UBSan programs here")
    sys.path.insert(0, os.path.join(HERE, "native"))
    import sanitize

    env = sanitize.sanitizer_env(kbuild.ops_library(kbuild.ASAN, "libonnxq_ops_asan"))
    res = subprocess.run([sys.executable, os.path.join(HERE, "ops_fuzz.py"), "--cases", "16", "--seed", "5",
                          "--batch", "16", "--crash-at", "12", "--jobs", "1"], capture_output=True, text=True,
                         env=env, timeout=600)
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert res.returncode == 1 and summary["crashes"] == 1 and summary["cases"] == 16
    crash = summary["seeds"][0]["crash_cases"][0]
    assert crash["case"] == 12 and "AddressSanitizer: SEGV" in crash["stderr"], crash
