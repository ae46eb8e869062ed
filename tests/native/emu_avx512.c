/*
 * Freestanding driver for running the SIMD checks (simd_checks.h) of the AVX-512 VNNI
 * kernels inside an emulated CPU (tests/native/emulate_avx512.py, Bochs through the
 * bochscpu-python package), on machines without AVX-512. No libc: linked -nostdlib
 * -static, entered at _start, results left in emu_result for the host to read, then hlt.
 */
#include <stddef.h>
#include <stdint.h>

/* ---- the little of libc the checks and kernels use ---- */
void *memcpy(void *d, const void *s, size_t n) {
    unsigned char *dd = d;
    const unsigned char *ss = s;
    while (n--) *dd++ = *ss++;
    return d;
}
void *memmove(void *d, const void *s, size_t n) {
    unsigned char *dd = d;
    const unsigned char *ss = s;
    if (dd < ss) while (n--) *dd++ = *ss++;
    else while (n--) dd[n] = ss[n];
    return d;
}
void *memset(void *d, int c, size_t n) {
    unsigned char *dd = d;
    while (n--) *dd++ = (unsigned char)c;
    return d;
}
int memcmp(const void *a, const void *b, size_t n) {
    const unsigned char *x = a, *y = b;
    for (; n; --n, ++x, ++y)
        if (*x != *y) return *x < *y ? -1 : 1;
    return 0;
}

/* A bump heap: the checks free in (nearly) LIFO order; whatever is not last just leaks. */
static unsigned char heap[24 << 20] __attribute__((aligned(64)));
static size_t heap_top;
void *malloc(size_t n) {
    const size_t at = (heap_top + 63) & ~(size_t)63;
    if (at + n > sizeof heap) return 0;
    heap_top = at + n;
    return heap + at;
}
void free(void *p) {
    if (p && (unsigned char *)p >= heap && (unsigned char *)p < heap + heap_top) heap_top = (size_t)((unsigned char *)p - heap);
}
#define fabs __builtin_fabs
#define fabsf __builtin_fabsf

/* ---- results for the host ---- */
struct emu_result {
    uint64_t magic, pass, fail, done;
    uint64_t first_fail_line;
    const char *first_fail_fmt;
    int64_t first_fail_args[4];
} emu_result = {0x6f6e6e7871656d75ull, 0, 0, 0, 0, 0, {0, 0, 0, 0}};

#define EMU_ARGS(a, b, c, d, ...) { (int64_t)(a), (int64_t)(b), (int64_t)(c), (int64_t)(d) }
#define CHECK(cond, fmt, ...)                                                                     \
    do {                                                                                          \
        if (cond) {                                                                               \
            ++emu_result.pass;                                                                    \
        } else if (emu_result.fail++ == 0) {                                                      \
            int64_t args_[4] = EMU_ARGS(__VA_ARGS__, 0, 0, 0, 0);                                 \
            emu_result.first_fail_line = __LINE__;                                                \
            emu_result.first_fail_fmt = fmt;                                                      \
            for (int i_ = 0; i_ < 4; ++i_) emu_result.first_fail_args[i_] = args_[i_];            \
        }                                                                                         \
    } while (0)

#include "simd_checks.h"

__attribute__((noreturn, used)) void _start(void) {
    const onnxq_kernel_table *T = onnxq_kernels_avx512vnni();
    test_quant(T);
    test_dot(T);
    test_igemm(T);
    test_panel(T);
    test_fdot(T);
    test_gemm(T);
    test_dequant(T);
    /* the AVX-VNNI table: AVX2 with the VEX vpdpbusd micro-kernels (emulated from AVX2 here) */
    test_igemm(onnxq_kernels_avxvnni());
    emu_result.done = 1;
    for (;;) __asm__ volatile("hlt");
}
