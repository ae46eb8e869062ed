"""Compile the custom-op kernels for the native tests, once per flag set.

Objects are cached under the system temp dir, keyed by a hash of every kernel source,
header and flag, so the test files that need the same build (ctypes harness, the C unit
test, valgrind) share it, and files compile in parallel (one process per source).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OPS = os.path.join(ROOT, "cython_kernels", "ops")
NATIVE = os.path.join(ROOT, "tests", "native")

# The library's own flags (setup.py): exact IEEE arithmetic; every warning an error here.
BASE_FLAGS = ["-std=c11", "-D_GNU_SOURCE", "-ffp-contract=off", "-fno-math-errno", "-fno-strict-aliasing",
              "-Wall", "-Wextra", "-Wshadow", "-Werror",
              "-I" + os.path.join(ROOT, "cython_kernels"), "-I" + OPS, "-I" + NATIVE]
OPT = ["-O2", "-g", "-fPIC"]
ASAN = ["-O1", "-g", "-fPIC", "-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all"]


def compiler() -> str | None:
    return shutil.which("gcc") or shutil.which("cc")


# Cross-building for aarch64 Linux (tests/test_ops_aarch64.py): Debian's cross gcc, run
# under qemu-user. Static links need no aarch64 sysroot at run time.
AARCH64_CC = "aarch64-linux-gnu-gcc"


def aarch64_compiler() -> str | None:
    return shutil.which(AARCH64_CC)


def qemu_aarch64() -> str | None:
    return shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")


def kernel_sources() -> list[str]:
    return sorted(os.path.join(OPS, f) for f in os.listdir(OPS) if f.startswith("kernels_") and f.endswith(".c"))


def _inputs() -> list[str]:
    heads = [os.path.join(ROOT, "cython_kernels", f) for f in ("ggml_blocks.h", "ggml_dequant.h")]
    heads += sorted(os.path.join(OPS, f) for f in os.listdir(OPS) if f.startswith("kernels") and f.endswith(".h"))
    heads += sorted(os.path.join(NATIVE, f) for f in os.listdir(NATIVE) if f.endswith((".c", ".h")))
    return kernel_sources() + heads


def objects(flags: list[str], cc: str | None = None) -> list[str]:
    """Object files of the kernels plus tests/native/*.c (except bench) built with flags
    (by cc, the native compiler unless given)."""
    cc = cc or compiler()
    h = hashlib.sha256(" ".join([cc or ""] + BASE_FLAGS + flags).encode())
    for path in _inputs():
        with open(path, "rb") as fh:
            h.update(path.encode() + fh.read())
    out_dir = os.path.join(tempfile.gettempdir(), "onnxq-kernel-tests", h.hexdigest()[:16])
    srcs = kernel_sources() + [os.path.join(NATIVE, f) for f in ("harness.c", "test_kernels.c")]
    objs = [os.path.join(out_dir, os.path.basename(s)[:-2] + ".o") for s in srcs]
    if all(os.path.exists(o) for o in objs):
        return objs
    os.makedirs(out_dir, exist_ok=True)

    def one(pair):
        src, obj = pair
        tmp = obj + f".{os.getpid()}.tmp"
        res = subprocess.run([cc, *BASE_FLAGS, *flags, "-c", src, "-o", tmp], capture_output=True, text=True)
        if res.returncode != 0 or "warning" in res.stderr:
            raise RuntimeError(f"compiling {src} failed:\n{res.stderr}")
        os.replace(tmp, obj)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(one, zip(srcs, objs)))
    return objs


def link(objs: list[str], out: str, flags: list[str], shared: bool = False, cc: str | None = None) -> str:
    cmd = [cc or compiler(), *flags, *(["-shared"] if shared else []), *objs, "-o", out, "-lpthread", "-lm"]
    subprocess.run(cmd, check=True, capture_output=True)
    return out


def sanitizers_work(tmp_dir: str) -> bool:
    cc = compiler()
    src = os.path.join(tmp_dir, "probe.c")
    with open(src, "w") as fh:
        fh.write("int main(void){return 0;}\n")
    exe = os.path.join(tmp_dir, "probe")
    res = subprocess.run([cc, "-fsanitize=address,undefined", src, "-o", exe], capture_output=True)
    return res.returncode == 0 and subprocess.run([exe], capture_output=True).returncode == 0


def dynamic_deps(readelf: str, lib: str) -> tuple[set[str], set[str]]:
    """(NEEDED libraries, exported functions and objects) of a shared library, from readelf."""
    dyn = subprocess.run([readelf, "-d", "-W", lib], capture_output=True, text=True, check=True).stdout
    needed = {line.split("[")[1].rstrip("]") for line in dyn.splitlines() if "(NEEDED)" in line}
    syms = subprocess.run([readelf, "--dyn-syms", "-W", lib], capture_output=True, text=True, check=True).stdout
    exported = set()
    for line in syms.splitlines():
        f = line.split()
        if len(f) >= 8 and f[4] in ("GLOBAL", "WEAK") and f[6] != "UND" and f[3] in ("FUNC", "OBJECT"):
            exported.add(f[7].split("@")[0])
    return needed, exported
