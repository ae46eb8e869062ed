"""Build onnxq's native code.

Two kinds of artefacts, both compiled on install (there is no pure-Python fallback):

* Cython extension modules: every ``cython_kernels/*.pyx`` becomes ``onnxq.<stem>``,
  built with optimisation and OpenMP where the compiler has it.
* The onnxruntime custom-op library ``onnxq/libonnxq_ops.so``: plain C from
  ``cython_kernels/ops/*.c``, no Python, no libonnxruntime link (onnxruntime hands the
  library its API table at registration), exporting only ``RegisterCustomOps`` and
  ``onnxq_ops_kernel_isa``. The same sources and flags on every architecture: the x86
  and aarch64 kernel files compile to empty tables elsewhere, and every ISA level of the
  target is built in through per-function target attributes (no -march), chosen at run
  time. ``cython_kernels/ops/Makefile`` / ``CMakeLists.txt`` build it without Python.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import numpy as np
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
KERNELS = "cython_kernels"
OPS_LIB_NAME = "onnxq.libonnxq_ops"

COMMON_C_FLAGS = [
    "-O3",
    "-fno-strict-aliasing",
    # Byte-exact ggml quantization needs IEEE float arithmetic exactly as written:
    # no a*b+c contraction into FMA, no fast-math reassociation.
    "-ffp-contract=off",
    "-fno-math-errno",
]


def _compiler_accepts(flags: list[str], code: str = "int main(void){return 0;}\n") -> bool:
    cc = sysconfig.get_config_var("CC") or "cc"
    cc = cc.split()
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as fh:
            fh.write(code)
        try:
            res = subprocess.run(
                cc + flags + [src, "-o", os.path.join(tmp, "probe")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
        except OSError:
            return False
        return res.returncode == 0


def _openmp_flags() -> list[str]:
    if os.environ.get("ONNXQ_NO_OPENMP"):
        print("onnxq build: OpenMP disabled by ONNXQ_NO_OPENMP; codecs will run single-threaded")
        return []
    code = "#include <omp.h>\nint main(void){return omp_get_max_threads() > 0 ? 0 : 1;}\n"
    if _compiler_accepts(["-fopenmp"], code):
        return ["-fopenmp"]
    print(
        "onnxq build: the C compiler has no OpenMP (-fopenmp failed); "
        "the codecs will be built single-threaded. Install libgomp / libomp for multi-threaded packing."
    )
    return []


class SharedLibrary(Extension):
    """A plain C shared library placed inside the package (not a Python module)."""


class BuildExt(build_ext):
    def get_ext_filename(self, fullname: str) -> str:
        # distutils passes the full dotted name from some call sites and only the last
        # component from others (get_ext_fullpath); answer both for the shared library.
        for ext in self.extensions:
            if isinstance(ext, SharedLibrary) and fullname in (ext.name, ext.name.split(".")[-1]):
                parts = fullname.split(".")
                suffix = ".dylib" if sys.platform == "darwin" else ".so"
                return os.path.join(*parts[:-1], parts[-1] + suffix)
        return super().get_ext_filename(fullname)

    def get_export_symbols(self, ext):
        if isinstance(ext, SharedLibrary):
            return []
        return super().get_export_symbols(ext)

    def build_extension(self, ext):
        if not isinstance(ext, SharedLibrary):
            return super().build_extension(ext)
        out = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        depends = ext.sources + list(ext.depends)
        if not self.force and os.path.exists(out):
            newest = max(os.path.getmtime(p) for p in depends)
            if newest <= os.path.getmtime(out):
                print(f"onnxq build: {out} is up to date")
                return
        objects = self.compiler.compile(
            ext.sources,
            output_dir=self.build_temp,
            include_dirs=ext.include_dirs,
            extra_postargs=ext.extra_compile_args,
            depends=ext.depends,
            debug=self.debug,
        )
        self.compiler.link_shared_object(
            objects,
            out,
            libraries=ext.libraries,
            extra_postargs=ext.extra_link_args,
            debug=self.debug,
            target_lang="c",
        )


def cython_extensions() -> list[Extension]:
    from Cython.Build import cythonize

    omp = _openmp_flags()
    exts = []
    for pyx in sorted(glob.glob(os.path.join(KERNELS, "*.pyx"))):
        stem = os.path.splitext(os.path.basename(pyx))[0]
        exts.append(
            Extension(
                f"onnxq.{stem}",
                sources=[pyx],
                include_dirs=[KERNELS, np.get_include()],
                depends=glob.glob(os.path.join(KERNELS, "*.h")) + glob.glob(os.path.join(KERNELS, "*.pxd")),
                extra_compile_args=COMMON_C_FLAGS + ["-Wall", "-Wno-unused-function", "-Wno-unreachable-code"] + omp,
                extra_link_args=omp,
                define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            )
        )
    return cythonize(
        exts,
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
            "nonecheck": False,
        },
        include_path=[KERNELS],
    )


def ops_library() -> list[Extension]:
    sources = sorted(glob.glob(os.path.join(KERNELS, "ops", "*.c")))
    if not sources:
        return []
    return [
        SharedLibrary(
            OPS_LIB_NAME,
            sources=sources,
            include_dirs=[KERNELS, os.path.join(KERNELS, "ops")],
            depends=glob.glob(os.path.join(KERNELS, "*.h")) + glob.glob(os.path.join(KERNELS, "ops", "*.h")),
            extra_compile_args=COMMON_C_FLAGS
            + [
                "-std=c11",
                "-D_GNU_SOURCE",
                "-fvisibility=hidden",
                "-fPIC",
                "-Wall",
                "-Wextra",
                "-Wshadow",
                "-Wno-unused-parameter",
            ],
            # -z defs (no unresolved symbols) is a GNU/LLVM ELF linker flag; Apple's ld has no -z
            extra_link_args=(["-lm"] if sys.platform == "darwin" else ["-Wl,-z,defs", "-lm"]),
        )
    ]


setup(
    ext_modules=cython_extensions() + ops_library(),
    cmdclass={"build_ext": BuildExt},
)
