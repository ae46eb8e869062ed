"""Run the AVX-512 VNNI kernel checks in an emulated CPU (a development tool).

The machines onnxq is developed on have no AVX-512, so kernels_avx512.c cannot run there.
This builds tests/native/emu_avx512.c (the SIMD-against-scalar checks of simd_checks.h,
freestanding) statically with the kernels, loads the ELF into Bochs' x86-64 CPU model
through the ``bochscpu-python`` package (PyPI), enables SSE/AVX/AVX-512 state (CR4,
XCR0), runs it to its ``hlt`` and reads the pass/fail counters it leaves in memory.

Bochs' model in bochscpu 0.4.0 has AVX-512 F/BW/VL but not VNNI, so the kernels are built
with -DONNXQ_EMULATE_VNNI: vpdpbusd is replaced by an exact AVX-512BW sequence and the
compiler may not emit VNNI instructions. Everything else in kernels_avx512.c (loads,
nibble/bit expansion, broadcasts, reductions, scaling) runs as shipped.
The AVX-VNNI table's integer GEMM micro-kernels are checked too (against the AVX2 dot
kernels, bit for bit), with the ymm vpdpbusd emulated from AVX2 the same way.

    pip install bochscpu-python
    python tests/native/emulate_avx512.py

bochscpu-python 0.4.0's wheel needs glibc >= 2.38 (``__isoc23_*`` symbols). On an older
glibc, build a two-function shim and preload it (the script prints the commands).
Exit status 0 when every check passed.
"""
from __future__ import annotations

import os
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OPS = os.path.join(ROOT, "cython_kernels", "ops")

SHIM = r'''
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
unsigned long long __isoc23_strtoull(const char *s, char **e, int b) { return strtoull(s, e, b); }
int __isoc23_sscanf(const char *s, const char *f, ...) { va_list a; va_start(a, f); int r = vsscanf(s, f, a); va_end(a); return r; }
'''


def build(out: str) -> None:
    srcs = [os.path.join(HERE, "emu_avx512.c")] + [
        os.path.join(OPS, f) for f in ("kernels_avx512.c", "kernels_avx2.c", "kernels_scalar.c", "kernels_repack.c")
    ]
    cmd = ["gcc", "-std=c11", "-O2", "-DONNXQ_EMULATE_VNNI", "-fno-tree-loop-distribute-patterns", "-static", "-nostdlib", "-no-pie", "-fno-pie", "-fno-stack-protector",
           "-fno-asynchronous-unwind-tables", "-D_GNU_SOURCE", "-ffp-contract=off", "-fno-math-errno",
           "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-unused-function",
           "-I" + os.path.join(ROOT, "cython_kernels"), "-I" + OPS, "-I" + HERE, *srcs, "-o", out, "-lgcc"]
    subprocess.run(cmd, check=True)


def load_segments(path: str):
    """(vaddr, memsz, file bytes) of every PT_LOAD, the entry point, and the symbol table."""
    data = open(path, "rb").read()
    assert data[:4] == b"\x7fELF" and data[4] == 2, "a 64-bit ELF"
    entry, phoff = struct.unpack_from("<QQ", data, 24)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    segs = []
    for i in range(phnum):
        p_type, _flags, off, vaddr, _paddr, filesz, memsz, _align = struct.unpack_from("<IIQQQQQQ", data, phoff + i * phentsize)
        if p_type == 1:
            segs.append((vaddr, memsz, data[off:off + filesz]))
    syms = {}
    for line in subprocess.run(["nm", path], capture_output=True, text=True, check=True).stdout.splitlines():
        parts = line.split()
        if len(parts) == 3:
            syms[parts[2]] = int(parts[0], 16)
    return segs, entry, syms


def main() -> int:
    try:
        import bochscpu
        import bochscpu.cpu
        import bochscpu.memory
    except ImportError as e:
        print(f"bochscpu is not importable ({e}).")
        if "isoc23" in str(e):
            print("Older glibc: build the shim and preload it:\n"
                  f"  printf '%s' '{SHIM.strip()}' > /tmp/isoc23.c  (or copy SHIM from this file)\n"
                  "  gcc -shared -fPIC /tmp/isoc23.c -o /tmp/libisoc23.so\n"
                  f"  LD_PRELOAD=/tmp/libisoc23.so {sys.executable} {' '.join(sys.argv)}")
        return 2

    with tempfile.TemporaryDirectory() as tmp:
        elf = os.environ.get("EMU_KEEP_ELF") or os.path.join(tmp, "emu.elf")
        build(elf)
        segs, entry, syms = load_segments(elf)

    PAGE = bochscpu.memory.page_size()
    sess = bochscpu.Session()
    backing = {}

    def back(gpa: int) -> None:  # identity-mapped guest: a host page per guest page, on demand
        page = gpa & ~(PAGE - 1)
        if page not in backing:
            backing[page] = bochscpu.memory.allocate_host_page()
            bochscpu.memory.page_insert(page, backing[page])

    sess.missing_page_handler = back
    pt = bochscpu.memory.PageMapLevel4Table()
    pages = set()
    for vaddr, memsz, _ in segs:
        pages.update(range(vaddr & ~(PAGE - 1), vaddr + memsz, PAGE))
    STACK_TOP, STACK_PAGES = 0x7000_0000, 64
    pages.update(STACK_TOP - PAGE * (i + 1) for i in range(STACK_PAGES))
    for page in sorted(pages):
        pt.insert(page, page, 1)  # identity map, read/write/execute
    pml4 = 0x10_0000
    for hva, gpa in pt.commit(pml4):
        bochscpu.memory.page_insert(gpa, hva)
    for vaddr, _, blob in segs:
        for i in range(0, len(blob), PAGE):
            back(vaddr + i)
        for page in range(vaddr & ~(PAGE - 1), vaddr + len(blob), PAGE):
            back(page)
        assert bochscpu.memory.virt_write(pml4, vaddr, list(blob))

    state = bochscpu.State()
    bochscpu.cpu.set_long_mode(state)
    state.cr3 = pml4
    state.cr0 = (state.cr0 | (1 << 1)) & ~(1 << 2)  # MP set, EM clear: SSE/AVX allowed
    state.cr4 = state.cr4 | (1 << 9) | (1 << 10) | (1 << 18)  # OSFXSR, OSXMMEXCPT, OSXSAVE
    state.xcr0 = 0xE7  # x87, SSE, AVX, opmask, ZMM_Hi256, Hi16_ZMM
    state.mxcsr = 0x1F80  # all FP exceptions masked, round to nearest (the usual process state)
    state.fpcw = 0x037F
    state.rip = entry
    state.rsp = STACK_TOP - 8  # as after a call: the ABI's alignment at function entry
    cs = bochscpu.Segment()
    cs.present, cs.selector, cs.base, cs.limit, cs.attr = True, 0x33, 0, 0xFFFF_FFFF, 0x22FB
    ds = bochscpu.Segment()
    ds.present, ds.selector, ds.base, ds.limit, ds.attr = True, 0x2B, 0, 0xFFFF_FFFF, 0xCF3
    state.cs = cs
    state.ds = state.ss = state.es = state.fs = state.gs = ds
    sess.cpu.state = state

    faults = []

    done_addr = syms["emu_result"] + 24

    def on_exception(s, cpu_id, vector, error_code):
        finished = bytes(bochscpu.memory.virt_read(pml4, done_addr, 8)) != bytes(8)
        if not (finished and int(vector) == 13):  # the final hlt is privileged at CPL 3: #GP ends the run
            faults.append((int(vector), int(error_code), "rip " + hex(s.cpu.state.rip), "cr2 " + hex(s.cpu.state.cr2)))
        s.stop()

    hook = bochscpu.Hook()
    hook.exception = on_exception
    t0 = time.time()
    sess.run([hook])
    elapsed = time.time() - t0

    res = bytes(bochscpu.memory.virt_read(pml4, syms["emu_result"], 8 * 10))
    magic, npass, nfail, done, line, fmt_ptr = struct.unpack_from("<QQQQQQ", res)
    args = struct.unpack_from("<4q", res, 48)
    assert magic == 0x6F6E6E7871656D75, "emu_result not found"
    print(f"emulated AVX-512 VNNI (and AVX-VNNI igemm) checks: {npass} passed, {nfail} failed ({elapsed:.1f} s, rip {hex(sess.cpu.state.rip)})")
    if faults:
        print(f"CPU exception(s): {faults}")
    if nfail:
        fmt = bytes(bochscpu.memory.virt_read(pml4, fmt_ptr, 200)).split(b"\0")[0].decode(errors="replace")
        print(f"first failure: simd_checks.h line {line}: {fmt!r} args {args}")
    if not done:
        print("the checks did not run to the end")
    return 0 if done and nfail == 0 and not faults else 1


if __name__ == "__main__":
    sys.exit(main())
