"""The custom-op library as shipped and as built without Python: it depends on libc and
libm only (nothing from onnxruntime, libstdc++, libgomp or Python) and exports exactly its
two entry points. Checked on the library setup.py installed and on the standalone builds of
cython_kernels/ops (Makefile, and CMakeLists.txt where cmake is installed). The aarch64
cross build is checked in test_ops_aarch64.py.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "native"))
import kbuild  # noqa: E402

READELF = shutil.which("readelf")
pytestmark = pytest.mark.skipif(READELF is None or sys.platform != "linux", reason="needs binutils' readelf (Linux)")
ENTRY_POINTS = {"RegisterCustomOps", "onnxq_ops_kernel_isa"}
ALLOWED = {"libc.so.6", "libm.so.6"}


def check(lib: str) -> None:
    needed, exported = kbuild.dynamic_deps(READELF, lib)
    assert needed and needed <= ALLOWED, needed
    assert exported == ENTRY_POINTS, exported


def test_installed_library():
    from onnxq import runtime

    check(runtime.get_library_path())


def test_makefile_build(tmp_path):
    if kbuild.compiler() is None or shutil.which("make") is None:
        pytest.skip("no C compiler or make")
    res = subprocess.run(["make", "-s", "-j2", "-C", kbuild.OPS, f"CC={kbuild.compiler()}", f"BUILD={tmp_path}"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    check(str(tmp_path / "libonnxq_ops.so"))


def test_cmake_build(tmp_path):
    cmake = shutil.which("cmake")
    if cmake is None or subprocess.run([cmake, "--version"], capture_output=True).returncode != 0:
        pytest.skip("cmake is not installed")
    res = subprocess.run([cmake, "-S", kbuild.OPS, "-B", str(tmp_path), f"-DCMAKE_C_COMPILER={kbuild.compiler()}"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    res = subprocess.run([cmake, "--build", str(tmp_path), "-j2"], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    check(str(tmp_path / "libonnxq_ops.so"))
