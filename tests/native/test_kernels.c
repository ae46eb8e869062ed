/*
 * Native unit tests of the kernels (no onnxruntime). Built and run by
 * tests/test_ops_kernels_native.py, also under AddressSanitizer.
 *
 *   repack    repack -> unpack gives back the ggml bytes of every row, every type
 *   quant     SIMD activation quantizers == scalar, bit for bit (partial blocks too)
 *   dot       SIMD fast-mode dot == scalar: exactly with unit scales (the integer sums
 *             decide the result), to 1e-5 relative with random scales, and with extreme
 *             codes and activations (int16 overflow would show as a gross error)
 *   igemm     integer GEMM micro-kernel == the same level's dot kernel, bit for bit
 *   panel     SIMD dequantization == scalar == ggml_dequant.h, bit for bit
 *   gemm      SIMD gemv / micro-kernel == scalar to float tolerance
 *   matmul    the whole driver (both modes, M in {1..}, padded K, tails, N % 8 != 0,
 *             1 and 3 threads) against a float64 reference from ggml_dequant.h
 *   gather    bit-identical to ggml_dequant.h, every ISA level (and each level's block
 *             dequantization on its own)
 *   odd       every type with K not a multiple of 256 (padded blocks, tails), N = 1 and 9,
 *             M in {1, 3, 17, 64}
 *   igemm driver  fast mode at M in {16, 17, 64} (the integer GEMM) == the same level's
 *             row-by-row GEMV bits, every type, odd shapes, N in {1, 9, 40}; on aarch64
 *             also == the scalar kernels' bits
 *
 * Prints one line per failure and "N passed, M failed" at the end; exit status 1 on failure.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "ggml_dequant.h"
#include "harness.h"
#include "kernels_impl.h"

static int n_pass, n_fail;

#define CHECK(cond, ...)                                                                       \
    do {                                                                                       \
        if (cond) {                                                                            \
            ++n_pass;                                                                          \
        } else {                                                                               \
            ++n_fail;                                                                          \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                                        \
            printf(__VA_ARGS__);                                                               \
            printf("\n");                                                                      \
        }                                                                                      \
    } while (0)

#include "simd_checks.h"

/* ---------------------------------------------------------------- the driver */

typedef struct {
    int type, tail;
    int64_t K;
} layout_case;

static const layout_case LAYOUTS[] = {
    {ONNXQ_TYPE_Q4_0, -1, 64},  {ONNXQ_TYPE_Q4_0, -1, 77},  {ONNXQ_TYPE_Q4_1, -1, 96},  {ONNXQ_TYPE_Q5_0, -1, 70},
    {ONNXQ_TYPE_Q5_1, -1, 32},  {ONNXQ_TYPE_Q8_0, -1, 600}, {ONNXQ_TYPE_Q4_K, -1, 256}, {ONNXQ_TYPE_Q4_K, -1, 300},
    {ONNXQ_TYPE_Q5_K, ONNXQ_TYPE_Q8_0, 600}, {ONNXQ_TYPE_Q6_K, ONNXQ_TYPE_Q5_0, 530},
    {ONNXQ_TYPE_Q6_K, ONNXQ_TYPE_Q4_1, 40},  {ONNXQ_TYPE_Q4_K, ONNXQ_TYPE_Q5_1, 512},
};

/* Odd shapes for every type: K never a multiple of 256 (padded last blocks, 32-element
 * tails after K-quant super-blocks), N = 1 and a group and a bit, M around the 8-row chunks. */
static const layout_case ODD_LAYOUTS[] = {
    {ONNXQ_TYPE_Q4_0, -1, 77},  {ONNXQ_TYPE_Q4_1, -1, 45},  {ONNXQ_TYPE_Q5_0, -1, 100},
    {ONNXQ_TYPE_Q5_1, -1, 33},  {ONNXQ_TYPE_Q8_0, -1, 290}, {ONNXQ_TYPE_Q4_K, ONNXQ_TYPE_Q4_0, 300},
    {ONNXQ_TYPE_Q5_K, ONNXQ_TYPE_Q8_0, 333}, {ONNXQ_TYPE_Q6_K, ONNXQ_TYPE_Q5_1, 600},
    {ONNXQ_TYPE_Q4_K, -1, 300}, {ONNXQ_TYPE_Q5_K, -1, 260}, {ONNXQ_TYPE_Q6_K, -1, 700},
};

/* N random rows of a layout (main blocks, then the tail's), random scales. */
static uint8_t *random_weight(const layout_case *lc, const onnxq_row_layout *L, int64_t N) {
    uint8_t *W = malloc((size_t)(N * L->row_bytes));
    for (int64_t n = 0; n < N; ++n) {
        uint8_t *row = W + n * L->row_bytes;
        for (int64_t b = 0; b < L->n_main; ++b) random_block(lc->type, row + b * tsize(lc->type), SCALES_RANDOM);
        for (int64_t b = 0; b < L->n_tail; ++b)
            random_block(lc->tail, row + L->main_bytes + b * tsize(lc->tail), SCALES_RANDOM);
    }
    return W;
}

/* One layout with N rows: gather bit-exact and matmul within tolerance of a float64
 * reference, for every ISA level this CPU runs, both modes, each M in Ms. */
static void check_layout(const layout_case *lc, int64_t N, const int64_t *Ms, int nM) {
    onnxq_row_layout L;
    if (onnxq_row_layout_init(&L, lc->type, lc->tail, lc->K) != ONNXQ_LAYOUT_OK) {
        CHECK(0, "layout %s K %lld", tname(lc->type), (long long)lc->K);
        return;
    }
    const int64_t K = lc->K;
    int64_t Mmax = 1;
    for (int i = 0; i < nM; ++i) Mmax = Ms[i] > Mmax ? Ms[i] : Mmax;
    uint8_t *W = random_weight(lc, &L, N);
    /* reference: dequantize every row */
    float *Wd = malloc(sizeof(float) * (size_t)(N * K)), scratch[QK_K];
    for (int64_t n = 0; n < N; ++n) onnxq_dequantize_row(&L, W + n * L.row_bytes, Wd + n * K, scratch);
    int64_t idx[23];
    for (int i = 0; i < 23; ++i) idx[i] = (int64_t)(rnd() % (uint64_t)N);
    float *G = malloc(sizeof(float) * (size_t)(23 * K));
    float *X = malloc(sizeof(float) * (size_t)(Mmax * K)), *bias = malloc(sizeof(float) * (size_t)N);
    float *Y = malloc(sizeof(float) * (size_t)(Mmax * N));
    for (int64_t i = 0; i < Mmax * K; ++i) X[i] = rnd_normal();
    for (int64_t n = 0; n < N; ++n) bias[n] = rnd_normal();
    /* per element, the abs-max of the activation block it is quantized in */
    float *amax = malloc(sizeof(float) * (size_t)(Mmax * K));
    for (int64_t m = 0; m < Mmax; ++m)
        for (int64_t k0 = 0; k0 < K;) {
            const int bsz = (k0 < L.main_elems && tbs(lc->type) == QK_K) ? QK_K : 32;
            const int64_t k1 = k0 + bsz < K ? k0 + bsz : K;
            float a = 0;
            for (int64_t k = k0; k < k1; ++k) a = fmaxf(a, fabsf(X[m * K + k]));
            for (int64_t k = k0; k < k1; ++k) amax[m * K + k] = a;
            k0 = k1;
        }
    for (int isa = 0; isa < ONNXQ_ISA_COUNT; ++isa) {
        if (!h_set_isa(isa)) continue;
        /* gather: bit-exact */
        CHECK(h_gather(lc->type, lc->tail, K, N, W, idx, 23, G, 3) == 0, "gather rc");
        int gok = 1;
        for (int i = 0; i < 23; ++i) gok &= !memcmp(G + i * K, Wd + idx[i] * K, sizeof(float) * (size_t)K);
        CHECK(gok, "gather %s K %lld isa %s", tname(lc->type), (long long)K, h_isa());
        for (int mi = 0; mi < nM; ++mi)
            for (int mode = 0; mode < 2; ++mode) {
                const int64_t M = Ms[mi];
                const int threads = 1 + 2 * (mi & 1);
                const float *bp = (mi & 2) ? bias : NULL;
                for (int64_t i = 0; i < M * N; ++i) Y[i] = NAN;
                const int rc = h_matmul(lc->type, lc->tail, K, N, W, X, M, bp, Y, mode, threads);
                int ok = rc == 0;
                double worst = 0;
                for (int64_t m = 0; m < M && ok; ++m)
                    for (int64_t n = 0; n < N; ++n) {
                        double ref = bp ? bp[n] : 0.0, mag = bp ? fabs(bp[n]) : 0.0, q8 = 0.0;
                        /* fast mode: Q8 rounding moves x by at most amax of its block / 254 */
                        for (int64_t k = 0; k < K; ++k) {
                            const double w = Wd[n * K + k], x = X[m * K + k];
                            ref += w * x;
                            mag += fabs(w * x);
                            q8 += fabs(w) * amax[m * K + k] / 254.0;
                        }
                        const double tol = 2e-6 * sqrt((double)K) * mag + (mode ? q8 * 1.001 : 0.0) + 1e-30;
                        const double e = fabs((double)Y[m * N + n] - ref);
                        if (!(e <= tol)) ok = 0;
                        if (e / (tol + 1e-300) > worst) worst = e / tol;
                    }
                CHECK(ok, "matmul %s tail %d K %lld N %lld M %lld mode %d isa %s threads %d (err/tol %g)",
                      tname(lc->type), lc->tail, (long long)K, (long long)N, (long long)M, mode, h_isa(), threads, worst);
            }
    }
    free(amax);
    free(X);
    free(bias);
    free(Y);
    free(G);
    free(Wd);
    free(W);
}

static void test_matmul_and_gather(void) {
    const int64_t Ms[] = {1, 2, 7, 8, 13, 16, 17, 40};
    for (int li = 0; li < (int)(sizeof LAYOUTS / sizeof LAYOUTS[0]); ++li) check_layout(&LAYOUTS[li], 19 + li, Ms, 8);
    const int64_t odd_Ms[] = {1, 3, 17, 64}, odd_Ns[] = {1, 9};
    for (int li = 0; li < (int)(sizeof ODD_LAYOUTS / sizeof ODD_LAYOUTS[0]); ++li)
        for (int ni = 0; ni < 2; ++ni) check_layout(&ODD_LAYOUTS[li], odd_Ns[ni], odd_Ms, 4);
}

/* Fast mode from ONNXQ_IGEMM_MIN_M rows on takes a level's integer GEMM where it has one:
 * the whole driver (tiles, K chunks, tails, bias, 3 threads) must give the bits of the same
 * level's row-by-row GEMV path (M = 1, the dot kernels) for every type and odd shape; and
 * on aarch64, whose dot kernels repeat the scalar float tail, the scalar kernels' bits. */
static int g_igemm_driver_checks[ONNXQ_ISA_COUNT]; /* per level, printed for tests/test_ops_aarch64.py */
static void check_igemm_driver(const layout_case *lc, int64_t N) {
    onnxq_row_layout L;
    if (onnxq_row_layout_init(&L, lc->type, lc->tail, lc->K) != ONNXQ_LAYOUT_OK) {
        CHECK(0, "layout %s K %lld", tname(lc->type), (long long)lc->K);
        return;
    }
    const int64_t K = lc->K, Mmax = 64, Ms[] = {16, 17, 64};
    uint8_t *W = random_weight(lc, &L, N);
    float *X = malloc(sizeof(float) * (size_t)(Mmax * K)), *bias = malloc(sizeof(float) * (size_t)N);
    float *Yg = malloc(sizeof(float) * (size_t)(Mmax * N)), *Yr = malloc(sizeof(float) * (size_t)(Mmax * N));
    float *Ys = malloc(sizeof(float) * (size_t)(Mmax * N));
    for (int64_t i = 0; i < Mmax * K; ++i) X[i] = rnd_normal();
    for (int64_t n = 0; n < N; ++n) bias[n] = rnd_normal();
    int have_scalar = h_set_isa(ONNXQ_ISA_SCALAR);
    for (int64_t m = 0; m < Mmax && have_scalar; ++m)
        have_scalar = h_matmul(lc->type, lc->tail, K, N, W, X + m * K, 1, bias, Ys + m * N, ONNXQ_MODE_FAST, 1) == 0;
    CHECK(have_scalar, "scalar gemv %s K %lld", tname(lc->type), (long long)K);
    for (int isa = 1; isa < ONNXQ_ISA_COUNT; ++isa) {
        if (!h_set_isa(isa) || !onnxq_kernels_for_isa(isa)->igemm[0]) continue;
        g_igemm_driver_checks[isa] += isa >= ONNXQ_ISA_NEON ? 6 : 3;
        int ok = 1;
        for (int64_t m = 0; m < Mmax && ok; ++m)
            ok = h_matmul(lc->type, lc->tail, K, N, W, X + m * K, 1, bias, Yr + m * N, ONNXQ_MODE_FAST, 1) == 0;
        for (int mi = 0; mi < 3 && ok; ++mi) {
            const int64_t M = Ms[mi];
            for (int64_t i = 0; i < M * N; ++i) Yg[i] = NAN;
            ok = h_matmul(lc->type, lc->tail, K, N, W, X, M, bias, Yg, ONNXQ_MODE_FAST, 3) == 0;
            CHECK(ok && !memcmp(Yg, Yr, sizeof(float) * (size_t)(M * N)),
                  "igemm driver %s tail %d K %lld N %lld M %lld isa %s: not the GEMV path's bits", tname(lc->type),
                  lc->tail, (long long)K, (long long)N, (long long)M, h_isa());
            if (isa >= ONNXQ_ISA_NEON)
                CHECK(!memcmp(Yg, Ys, sizeof(float) * (size_t)(M * N)),
                      "igemm driver %s tail %d K %lld N %lld M %lld isa %s: not the scalar kernels' bits",
                      tname(lc->type), lc->tail, (long long)K, (long long)N, (long long)M, h_isa());
        }
    }
    free(Ys);
    free(Yr);
    free(Yg);
    free(bias);
    free(X);
    free(W);
}

static void test_igemm_driver(void) {
    const int64_t Ns[] = {1, 9, 40};
    for (int li = 0; li < (int)(sizeof ODD_LAYOUTS / sizeof ODD_LAYOUTS[0]); ++li)
        for (int ni = 0; ni < 3; ++ni) check_igemm_driver(&ODD_LAYOUTS[li], Ns[ni]);
    for (int li = 0; li < (int)(sizeof LAYOUTS / sizeof LAYOUTS[0]); ++li) check_igemm_driver(&LAYOUTS[li], 33);
    for (int isa = 1; isa < ONNXQ_ISA_COUNT; ++isa)
        if (g_igemm_driver_checks[isa]) printf("igemm driver %s %d\n", onnxq_kernels_for_isa(isa)->name, g_igemm_driver_checks[isa]);
}

int main(void) {
    test_repack();
    for (int isa = 1; isa < ONNXQ_ISA_COUNT; ++isa) {
        const onnxq_kernel_table *T = onnxq_kernels_for_isa(isa);
        if (!T) {
            printf("isa %d not available on this CPU/build: its tests are skipped\n", isa);
            continue;
        }
        printf("testing %s against scalar\n", T->name);
        test_quant(T);
        test_dot(T);
        test_igemm(T);
        test_panel(T);
        test_fdot(T);
        test_gemm(T);
        test_dequant(T);
    }
    test_panel(&onnxq_kernels_scalar); /* scalar panels against ggml_dequant.h */
    test_matmul_and_gather();
    test_igemm_driver();
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
