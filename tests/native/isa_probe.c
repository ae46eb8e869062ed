/*
 * What the dispatcher picked and what it computes: prints the active ISA level (ONNXQ_ISA
 * and the CPU decide; nothing here forces one), then a fast-mode and an exact-mode matmul
 * of every type through onnxq_matmul. tests/test_ops_aarch64.py runs it under qemu for
 * each ONNXQ_ISA value and CPU model and compares the runs: fast-mode output must be the
 * same bits at every ARM level (and scalar), exact-mode output equal to float rounding.
 *
 * Output lines: "isa NAME", then per case "fast TYPE M N" / "exact TYPE M N" followed by
 * M*N values (fast: the float's bits in hex; exact: %.9g).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml_blocks.h"
#include "harness.h"

static uint64_t state = 0x243F6A8885A308D3ull;
static uint64_t next(void) {
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return state * 0x2545F4914F6CDD1Dull;
}
static float unif(void) { return (float)((next() >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f; }

/* Random quants, small finite fp16 scales where the type has them. */
static void fill_block(int type, uint8_t *blk) {
    const onnxq_type_traits *t = onnxq_type_traits_of(type);
    for (int i = 0; i < t->type_size; ++i) blk[i] = (uint8_t)next();
    const int first = type == ONNXQ_TYPE_Q6_K ? 208 : 0;
    const int second = (type == ONNXQ_TYPE_Q4_1 || type == ONNXQ_TYPE_Q5_1 || type == ONNXQ_TYPE_Q4_K ||
                        type == ONNXQ_TYPE_Q5_K) ? 2 : -1;
    ggml_half h = onnxq_fp32_to_fp16(0.02f * unif());
    memcpy(blk + first, &h, 2);
    h = onnxq_fp32_to_fp16(0.02f * unif());
    if (second >= 0) memcpy(blk + second, &h, 2);
}

int main(void) {
    static const struct { int type, tail; int64_t K; } cases[] = {
        {ONNXQ_TYPE_Q4_0, -1, 77},  {ONNXQ_TYPE_Q4_1, -1, 96},  {ONNXQ_TYPE_Q5_0, -1, 70},
        {ONNXQ_TYPE_Q5_1, -1, 45},  {ONNXQ_TYPE_Q8_0, -1, 300}, {ONNXQ_TYPE_Q4_K, ONNXQ_TYPE_Q8_0, 300},
        {ONNXQ_TYPE_Q5_K, ONNXQ_TYPE_Q4_1, 290}, {ONNXQ_TYPE_Q6_K, -1, 520},
    };
    static const int64_t Ms[] = {1, 3, 17, 64}; /* 17, 64: the integer GEMM where the level has one */
    const int64_t N = 9;
    printf("isa %s\n", h_isa());
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; ++c) {
        const int64_t rb = h_row_bytes(cases[c].type, cases[c].tail, cases[c].K), K = cases[c].K;
        onnxq_row_layout L;
        if (rb < 0 || onnxq_row_layout_init(&L, cases[c].type, cases[c].tail, K) != ONNXQ_LAYOUT_OK) return 2;
        uint8_t *W = malloc((size_t)(N * rb));
        for (int64_t n = 0; n < N; ++n) {
            for (int64_t b = 0; b < L.n_main; ++b)
                fill_block(L.main_type, W + n * rb + b * onnxq_type_traits_of(L.main_type)->type_size);
            for (int64_t b = 0; b < L.n_tail; ++b)
                fill_block(L.tail_type, W + n * rb + L.main_bytes + b * onnxq_type_traits_of(L.tail_type)->type_size);
        }
        float *X = malloc(sizeof(float) * (size_t)(64 * K)), *Y = malloc(sizeof(float) * (size_t)(64 * N));
        for (int64_t i = 0; i < 64 * K; ++i) X[i] = unif();
        for (int mi = 0; mi < 4; ++mi)
            for (int mode = 1; mode >= 0; --mode) {
                const int64_t M = Ms[mi];
                if (h_matmul(cases[c].type, cases[c].tail, K, N, W, X, M, NULL, Y, mode, 2) != 0) return 3;
                printf("%s %s %lld %lld", mode ? "fast" : "exact", onnxq_type_traits_of(cases[c].type)->name,
                       (long long)M, (long long)N);
                for (int64_t i = 0; i < M * N; ++i) {
                    uint32_t bits;
                    memcpy(&bits, &Y[i], 4);
                    if (mode) printf(" %08x", (unsigned)bits);
                    else printf(" %.9g", (double)Y[i]);
                }
                printf("\n");
            }
        free(X);
        free(Y);
        free(W);
    }
    return 0;
}
