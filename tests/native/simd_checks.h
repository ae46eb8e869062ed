/*
 * The SIMD-against-scalar checks, shared by test_kernels.c (native, with libc) and
 * emu_avx512.c (freestanding, run in an emulated AVX-512 CPU). The includer defines
 * CHECK(cond, fmt, ...) and provides malloc/free, memcpy/memset/memcmp, fabs/fabsf.
 */
#ifndef ONNXQ_SIMD_CHECKS_H
#define ONNXQ_SIMD_CHECKS_H

#include "ggml_dequant.h"
#include "kernels_impl.h"

/* xorshift64*: reproducible without libc's rand state */
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rnd(void) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1Dull;
}
static int rnd_int(int lo, int hi) { return lo + (int)(rnd() % (uint64_t)(hi - lo + 1)); }
static float rnd_unif(float lo, float hi) { return lo + (hi - lo) * (float)((rnd() >> 40) * (1.0 / 16777216.0)); }
static float rnd_normal(void) {
    float s = 0;
    for (int i = 0; i < 12; ++i) s += rnd_unif(0, 1);
    return s - 6.0f;
}

static const int TYPES[] = {ONNXQ_TYPE_Q4_0, ONNXQ_TYPE_Q4_1, ONNXQ_TYPE_Q5_0, ONNXQ_TYPE_Q5_1,
                            ONNXQ_TYPE_Q8_0, ONNXQ_TYPE_Q4_K, ONNXQ_TYPE_Q5_K, ONNXQ_TYPE_Q6_K};
#define NTYPES 8

static const char *tname(int type) { return onnxq_type_traits_of(type)->name; }
static int tsize(int type) { return onnxq_type_traits_of(type)->type_size; }
static int tbs(int type) { return onnxq_type_traits_of(type)->block_size; }

/* Offsets of the fp16 scale fields in a ggml block (second one -1 when absent). */
static void half_fields(int type, int *f0, int *f1) {
    *f1 = -1;
    switch (type) {
    case ONNXQ_TYPE_Q6_K: *f0 = 208; break;
    case ONNXQ_TYPE_Q4_1: case ONNXQ_TYPE_Q5_1: case ONNXQ_TYPE_Q4_K: case ONNXQ_TYPE_Q5_K: *f0 = 0; *f1 = 2; break;
    default: *f0 = 0; break;
    }
}

enum { SCALES_UNIT, SCALES_RANDOM, SCALES_ANY_FINITE };

/* A random block: random bytes, then the fp16 fields set as asked. */
static void random_block(int type, uint8_t *blk, int scales) {
    for (int i = 0; i < tsize(type); ++i) blk[i] = (uint8_t)rnd();
    int f0, f1;
    half_fields(type, &f0, &f1);
    for (int k = 0; k < 2; ++k) {
        const int f = k ? f1 : f0;
        if (f < 0) continue;
        ggml_half h;
        if (scales == SCALES_UNIT) h = onnxq_fp32_to_fp16(1.0f);
        else if (scales == SCALES_RANDOM) h = onnxq_fp32_to_fp16(rnd_unif(-0.02f, 0.02f));
        else h = (ggml_half)(rnd() & 0x7BFF) | (ggml_half)(rnd() & 0x8000); /* exponent < 31: finite, subnormals too */
        memcpy(blk + f, &h, 2);
    }
}

/* Extreme codes: every quant bit set (or cleared), scales at their extremes. */
static void extreme_block(int type, uint8_t *blk, int ones) {
    memset(blk, ones ? 0xFF : 0x00, (size_t)tsize(type));
    if (type == ONNXQ_TYPE_Q6_K) {
        memset(blk + 192, ones ? 0x80 : 0x7F, 16); /* scales -128 or 127 */
    } else if (type == ONNXQ_TYPE_Q8_0) {
        memset(blk + 2, ones ? 0x80 : 0x7F, 32); /* -128 or 127 */
    }
    int f0, f1;
    half_fields(type, &f0, &f1);
    const ggml_half h = onnxq_fp32_to_fp16(1.0f);
    memcpy(blk + f0, &h, 2);
    if (f1 >= 0) memcpy(blk + f1, &h, 2);
}

/* ---------------------------------------------------------------- repack */

static void test_repack(void) {
    for (int ti = 0; ti < NTYPES; ++ti) {
        const int type = TYPES[ti];
        uint8_t src[ONNXQ_GR][512], gb[2048], back[512];
        const uint8_t *rows[ONNXQ_GR];
        for (int trial = 0; trial < 50; ++trial) {
            for (int r = 0; r < ONNXQ_GR; ++r) {
                for (int i = 0; i < tsize(type); ++i) src[r][i] = (uint8_t)rnd();
                rows[r] = (trial % 5 == 4 && r >= 5) ? NULL : src[r];
            }
            onnxq_repack_group_block(type, rows, gb);
            int ok = 1;
            for (int r = 0; r < ONNXQ_GR; ++r) {
                onnxq_unpack_group_block(type, gb, r, back);
                if (rows[r]) ok &= memcmp(back, src[r], (size_t)tsize(type)) == 0;
                else for (int i = 0; i < tsize(type); ++i) ok &= back[i] == 0;
            }
            CHECK(ok, "repack round trip %s trial %d", tname(type), trial);
        }
    }
}

/* ---------------------------------------------------------------- quantizers */

static void test_quant(const onnxq_kernel_table *T) {
    const int64_t nbk[] = {1, 3, 8, 24}; /* 24: three K-quant super-blocks' worth */
    for (int c = 0; c < 4; ++c) {
        const int64_t nb = nbk[c];
        float x[24 * 32];
        for (int64_t i = 0; i < nb * 32; ++i) {
            switch ((int)(rnd() % 4)) {
            case 0: x[i] = rnd_normal(); break;
            case 1: x[i] = (float)rnd_int(-127, 127) / 127.0f * 3.0f; break; /* on or near the grid */
            case 2: x[i] = ((float)rnd_int(-254, 254) + 0.5f) / 254.0f; break; /* ties after scaling */
            default: x[i] = rnd_normal() * 1e-30f; break;
            }
        }
        if (c == 1) for (int i = 0; i < 32; ++i) x[i] = 0.0f; /* an all-zero block */
        if (c == 2) /* amax 127 makes the multiplier 1: every x + 0.5 is an exact tie */
            for (int64_t b = 0; b < nb; ++b)
                for (int i = 0; i < 32; ++i) x[b * 32 + i] = i == 0 ? 127.0f : (float)rnd_int(-127, 126) + 0.5f;
        const int64_t lens[] = {nb * 32, nb * 32 - 1, nb * 32 - 19, 1};
        for (int li = 0; li < 4; ++li) {
            const int64_t n = lens[li];
            int8_t q0[24 * 32], q1[24 * 32];
            float d0[24], d1[24];
            int32_t s0[24], s1[24];
            memset(q1, 0x55, sizeof q1);
            onnxq_quant_q8_0_scalar(x, n, nb, q0, d0, s0);
            T->quant_q8_0(x, n, nb, q1, d1, s1);
            CHECK(!memcmp(q0, q1, (size_t)(nb * 32)) && !memcmp(d0, d1, (size_t)nb * 4) && !memcmp(s0, s1, (size_t)nb * 4),
                  "%s quant_q8_0 nb=%lld n=%lld", T->name, (long long)nb, (long long)n);
            int ok = 1; /* the codes are in range and reproduce x to half a step */
            for (int64_t i = 0; i < nb * 32; ++i) {
                const float xi = i < n ? x[i] : 0.0f, dd = d1[i / 32];
                ok &= q1[i] != -128 && fabsf(xi - dd * (float)q1[i]) <= dd * 0.5f * 1.0001f + 1e-37f;
            }
            CHECK(ok, "%s quant_q8_0 codes reproduce x", T->name);
        }
    }
}

/* ---------------------------------------------------------------- dot products */

typedef struct {
    int8_t qs[4 * QK_K];
    float d[32];
    int32_t isum[32];
    int16_t b16[4 * 16];
} act_buf;

/* Activation codes in [-lim, lim]: pattern 0 random, 1 all sign*lim, 2 alternating +-lim;
 * dscale < 0 draws random scales. A scale and a sum per 32 codes, K-quants also sums of 16. */
static void make_act(act_buf *A, int kind, int64_t nb, int lim, int pattern, int sign, float dscale, onnxq_qact *a) {
    const int64_t n = nb * (kind ? QK_K : 32);
    for (int64_t i = 0; i < n; ++i)
        A->qs[i] = (int8_t)(pattern == 1 ? sign * lim : pattern == 2 ? ((i & 1) ? -lim : lim) : rnd_int(-lim, lim));
    for (int64_t b = 0; b < n / 32; ++b) {
        A->d[b] = dscale < 0 ? rnd_unif(0.001f, 0.1f) : dscale;
        int32_t s = 0;
        for (int i = 0; i < 32; ++i) s += A->qs[b * 32 + i];
        A->isum[b] = s;
    }
    for (int64_t i = 0; kind && i < n / 16; ++i) {
        int s = 0;
        for (int j = 0; j < 16; ++j) s += A->qs[16 * i + j];
        A->b16[i] = (int16_t)s;
    }
    *a = (onnxq_qact){A->qs, A->d, A->isum, kind ? A->b16 : NULL};
}

/* Largest activation code that keeps every per-block integer result below 2^24 with unit
 * scales, so the float results are exact integers and must agree exactly. */
static int exact_act_limit(int type) {
    switch (type) {
    case ONNXQ_TYPE_Q4_K: case ONNXQ_TYPE_Q5_K: return 31; /* 8*63*32*31*31 < 2^24 */
    case ONNXQ_TYPE_Q6_K: return 15;                      /* 16*128*16*32*15 < 2^24 */
    default: return 127;                                  /* 4 blocks * 32*128*127 < 2^24 */
    }
}

/* The ARM dot kernels repeat the scalar float tail operation for operation (kernels_arm.h):
 * their results must be the scalar bits with any scales. x86 ones fuse multiply-adds. */
#if defined(__aarch64__)
#define DOT_BIT_EXACT 1
#else
#define DOT_BIT_EXACT 0
#endif

static void test_dot(const onnxq_kernel_table *T) {
    for (int ti = 0; ti < NTYPES; ++ti) {
        const int type = TYPES[ti], slot = onnxq_type_slot(type), kind = onnxq_is_kquant(type);
        const int64_t gbytes = onnxq_group_block_bytes(type);
        for (int trial = 0; trial < 60; ++trial) {
            const int mode = trial % 3; /* 0 exact integers, 1 random scales, 2 extremes */
            const int64_t nb = kind ? (mode == 0 ? 1 : 1 + trial % 3) : 1 + trial % 4;
            const int M = 1 + trial % 8;
            uint8_t *gbuf = malloc((size_t)(nb * gbytes));
            for (int64_t b = 0; b < nb; ++b) {
                uint8_t blk[ONNXQ_GR][512];
                const uint8_t *rows[ONNXQ_GR];
                for (int r = 0; r < ONNXQ_GR; ++r) {
                    if (mode == 2) extreme_block(type, blk[r], (r + b) & 1);
                    else random_block(type, blk[r], mode == 0 ? SCALES_UNIT : SCALES_RANDOM);
                    rows[r] = blk[r];
                }
                onnxq_repack_group_block(type, rows, gbuf + b * gbytes);
            }
            act_buf *A = malloc(sizeof(act_buf) * 8);
            onnxq_qact a[8];
            for (int m = 0; m < M; ++m) {
                const int lim = mode == 0 ? exact_act_limit(type) : 127;
                const int pattern = mode == 2 ? 1 + (m & 1) : 0, sign = (m & 2) ? -1 : 1;
                make_act(&A[m], kind, nb, lim, pattern, sign, mode == 1 ? -1.0f : 1.0f, &a[m]);
            }
            float ref[64], got[64];
            onnxq_kernels_scalar.dot[slot](gbuf, nb, a, M, ref);
            memset(got, 0x7F, sizeof got);
            T->dot[slot](gbuf, nb, a, M, got);
            int ok = 1;
            double worst = 0;
            for (int i = 0; i < 8 * M; ++i) {
                if (mode == 0 || DOT_BIT_EXACT) {
                    ok &= got[i] == ref[i];
                } else {
                    const double e = fabs((double)got[i] - ref[i]), tol = 1e-5 * fabs(ref[i]) + 1e-3;
                    ok &= e <= tol;
                    if (e > worst) worst = e;
                }
            }
            CHECK(ok, "%s dot %s mode %d nb %lld M %d (worst %g, [0] %.9g vs %.9g)", T->name, tname(type), mode,
                  (long long)nb, M, worst, got[0], ref[0]);
            free(A);
            free(gbuf);
        }
    }
}

/* ---------------------------------------------------------------- integer GEMM */

/* The GEMM micro-kernel against the same table's dot kernel, bit for bit: 1 to 5 groups (a
 * partial tile), random, unit and extreme blocks and activations, the run split in two calls
 * (first = 0 continues the accumulation). */
static void test_igemm(const onnxq_kernel_table *T) {
    if (!T->igemm[0]) return;
    const int mr = T->igemm_mr, ng = T->igemm_ng;
    for (int ti = 0; ti < NTYPES; ++ti) {
        const int type = TYPES[ti], slot = onnxq_type_slot(type), kind = onnxq_is_kquant(type);
        const int64_t gbytes = onnxq_group_block_bytes(type), pbytes = onnxq_igemm_block_bytes(type, ng);
        for (int trial = 0; trial < 24; ++trial) {
            const int mode = trial % 3; /* 0 unit scales, 1 random scales, 2 extremes */
            const int64_t nb = kind ? 1 + trial % 2 : 1 + trial % 4;
            const int G = 1 + trial % 5, nmicro = (G + ng - 1) / ng;
            uint8_t *gbuf = malloc((size_t)(G * nb * gbytes));
            for (int g = 0; g < G; ++g)
                for (int64_t b = 0; b < nb; ++b) {
                    uint8_t blk[ONNXQ_GR][512];
                    const uint8_t *rows[ONNXQ_GR];
                    for (int r = 0; r < ONNXQ_GR; ++r) {
                        if (mode == 2) extreme_block(type, blk[r], (r + b + g) & 1);
                        else random_block(type, blk[r], mode == 0 ? SCALES_UNIT : SCALES_RANDOM);
                        rows[r] = blk[r];
                    }
                    onnxq_repack_group_block(type, rows, gbuf + (g * nb + b) * gbytes);
                }
            act_buf *A = malloc(sizeof(act_buf) * (size_t)mr);
            onnxq_qact a[16];
            const onnxq_qact *arows[16];
            for (int m = 0; m < mr; ++m) {
                const int pattern = mode == 2 ? 1 + (m & 1) : 0, sign = (m & 2) ? -1 : 1;
                make_act(&A[m], kind, nb, 127, pattern, sign, mode == 1 ? -1.0f : 1.0f, &a[m]);
                arows[m] = &a[m];
            }
            uint8_t *panel = malloc((size_t)(nmicro * nb * pbytes));
            float *C = malloc(sizeof(float) * (size_t)(mr * nmicro * ng * 8));
            const int64_t ldc = nmicro * ng * 8, split = nb / 2;
            for (int u = 0; u < nmicro; ++u) {
                const int nvalid = G - u * ng < ng ? G - u * ng : ng;
                uint8_t *pu = panel + u * nb * pbytes;
                T->gexpand[slot](gbuf + u * ng * nb * gbytes, nb * gbytes, nvalid, ng, 0, nb, pu);
                if (split) T->igemm[slot](pu, 0, split, arows, C + u * ng * 8, ldc, 1);
                T->igemm[slot](pu + split * pbytes, split, nb - split, arows, C + u * ng * 8, ldc, split == 0);
            }
            int ok = 1;
            float ref[16 * 8];
            for (int g = 0; g < G; ++g) {
                T->dot[slot](gbuf + g * nb * gbytes, nb, a, mr, ref);
                for (int m = 0; m < mr; ++m)
                    for (int r = 0; r < 8; ++r) ok &= !memcmp(&C[m * ldc + g * 8 + r], &ref[m * 8 + r], sizeof(float));
            }
            CHECK(ok, "%s igemm %s mode %d nb %lld groups %d: not the dot kernel's bits", T->name, tname(type), mode,
                  (long long)nb, G);
            free(C);
            free(panel);
            free(A);
            free(gbuf);
        }
    }
}

/* ---------------------------------------------------------------- panels */

static void test_panel(const onnxq_kernel_table *T) {
    for (int ti = 0; ti < NTYPES; ++ti) {
        const int type = TYPES[ti], slot = onnxq_type_slot(type), bs = tbs(type);
        const int64_t gbytes = onnxq_group_block_bytes(type);
        for (int trial = 0; trial < 20; ++trial) {
            const int64_t nblk = 1 + trial % 3;
            uint8_t *gbuf = malloc((size_t)(nblk * gbytes));
            uint8_t blk[3][ONNXQ_GR][512];
            for (int64_t b = 0; b < nblk; ++b) {
                const uint8_t *rows[ONNXQ_GR];
                for (int r = 0; r < ONNXQ_GR; ++r) {
                    random_block(type, blk[b][r], trial & 1 ? SCALES_ANY_FINITE : SCALES_RANDOM);
                    rows[r] = blk[b][r];
                }
                onnxq_repack_group_block(type, rows, gbuf + b * gbytes);
            }
            float *p0 = malloc(sizeof(float) * (size_t)(nblk * bs * 8)), *p1 = malloc(sizeof(float) * (size_t)(nblk * bs * 8));
            float ref[QK_K];
            onnxq_kernels_scalar.panel[slot](gbuf, nblk, p0);
            T->panel[slot](gbuf, nblk, p1);
            int same_ref = 1;
            for (int64_t b = 0; b < nblk; ++b)
                for (int r = 0; r < ONNXQ_GR; ++r) {
                    onnxq_dequantize_blocks(type, blk[b][r], ref, bs);
                    for (int i = 0; i < bs; ++i) same_ref &= !memcmp(&ref[i], &p0[(b * bs + i) * 8 + r], 4);
                }
            CHECK(same_ref, "scalar panel %s == ggml_dequant.h", tname(type));
            CHECK(!memcmp(p0, p1, sizeof(float) * (size_t)(nblk * bs * 8)), "%s panel %s bit-exact", T->name, tname(type));
            free(p0);
            free(p1);
            free(gbuf);
        }
    }
}

/* ---------------------------------------------------------------- gather's block dequantization */

static void test_dequant(const onnxq_kernel_table *T) {
    for (int ti = 0; ti < NTYPES; ++ti) {
        const int type = TYPES[ti], slot = onnxq_type_slot(type), bs = tbs(type);
        if (!T->dequant[slot]) continue; /* the driver uses the scalar entry */
        int ok = 1;
        for (int trial = 0; trial < 40; ++trial) {
            uint8_t blk[512];
            if (trial % 10 == 9) extreme_block(type, blk, trial & 1);
            else random_block(type, blk, trial & 1 ? SCALES_ANY_FINITE : SCALES_RANDOM);
            float ref[QK_K], got[QK_K];
            onnxq_dequantize_blocks(type, blk, ref, bs);
            memset(got, 0x7F, sizeof got);
            T->dequant[slot](blk, got);
            ok &= !memcmp(ref, got, sizeof(float) * (size_t)bs);
        }
        CHECK(ok, "%s dequant %s bit-exact", T->name, tname(type));
    }
}

/* ---------------------------------------------------------------- exact few-row dots */

static void test_fdot(const onnxq_kernel_table *T) {
    for (int ti = 0; ti < NTYPES; ++ti) {
        const int type = TYPES[ti], slot = onnxq_type_slot(type), bs = tbs(type);
        const int64_t gbytes = onnxq_group_block_bytes(type);
        for (int trial = 0; trial < 24; ++trial) {
            const int64_t nb = 1 + trial % 3, n = nb * bs, ldx = n + 5, ldsum = n / 32 + 1;
            const int M = 1 + trial % 8;
            uint8_t *gbuf = malloc((size_t)(nb * gbytes));
            for (int64_t b = 0; b < nb; ++b) {
                uint8_t blk[ONNXQ_GR][512];
                const uint8_t *rows[ONNXQ_GR];
                for (int r = 0; r < ONNXQ_GR; ++r) {
                    random_block(type, blk[r], trial & 1 ? SCALES_RANDOM : SCALES_UNIT);
                    rows[r] = blk[r];
                }
                onnxq_repack_group_block(type, rows, gbuf + b * gbytes);
            }
            float *x = malloc(sizeof(float) * (size_t)(8 * ldx)), *xs = malloc(sizeof(float) * (size_t)(8 * ldsum));
            for (int m = 0; m < M; ++m) {
                for (int64_t k = 0; k < n; ++k) x[m * ldx + k] = rnd_normal();
                for (int64_t c = 0; c < n / 32; ++c) {
                    float sum = 0;
                    for (int i = 0; i < 32; ++i) sum += x[m * ldx + 32 * c + i];
                    xs[m * ldsum + c] = sum;
                }
            }
            /* magnitude sum_k |w||x| per (m, r), from the scalar dequantization */
            float *p = malloc(sizeof(float) * (size_t)(n * 8));
            onnxq_kernels_scalar.panel[slot](gbuf, nb, p);
            float ref[64], got[64];
            onnxq_kernels_scalar.fdot[slot](gbuf, nb, x, ldx, xs, ldsum, M, ref);
            memset(got, 0x7F, sizeof got);
            T->fdot[slot](gbuf, nb, x, ldx, xs, ldsum, M, got);
            int ok = 1;
            for (int m = 0; m < M; ++m)
                for (int r = 0; r < 8; ++r) {
                    double mag = 0;
                    for (int64_t k = 0; k < n; ++k) mag += fabs((double)p[k * 8 + r] * x[m * ldx + k]);
                    ok &= fabs((double)got[m * 8 + r] - ref[m * 8 + r]) <= 2e-6 * mag + 1e-30;
                }
            CHECK(ok, "%s fdot %s nb %lld M %d", T->name, tname(type), (long long)nb, M);
            free(p);
            free(xs);
            free(x);
            free(gbuf);
        }
    }
}

/* ---------------------------------------------------------------- float products */

static void test_gemm(const onnxq_kernel_table *T) {
    const int64_t kcs[] = {1, 7, 64, 255, 256};
    for (int c = 0; c < 5; ++c) {
        const int64_t kc = kcs[c];
        float pa[256 * 8], pb[256 * 8], x[8 * 300];
        for (int i = 0; i < 256 * 8; ++i) pa[i] = rnd_normal(), pb[i] = rnd_normal();
        for (int i = 0; i < 8 * 300; ++i) x[i] = rnd_normal();
        const float *xr[ONNXQ_MR];
        for (int i = 0; i < ONNXQ_MR; ++i) xr[i] = x + i * 300 + i;
        /* three calls per kernel: store with bias, accumulate, store without bias; ldc 20 */
        float t0[ONNXQ_MR * 20], t1[ONNXQ_MR * 20], bias[ONNXQ_NR];
        for (int j = 0; j < ONNXQ_NR; ++j) bias[j] = rnd_normal();
        for (int i = 0; i < ONNXQ_MR * 20; ++i) t0[i] = t1[i] = -7.0f;
        int ok = 1;
        for (int call = 0; call < 3; ++call) {
            onnxq_kernels_scalar.ukernel(kc, xr, pa, pb, t0, 20, call == 1, call == 0 ? bias : NULL);
            T->ukernel(kc, xr, pa, pb, t1, 20, call == 1, call == 0 ? bias : NULL);
            for (int i = 0; i < ONNXQ_MR * 20; ++i) ok &= fabsf(t0[i] - t1[i]) <= 1e-5f * (float)kc + 1e-5f;
            if (call == 0) /* untouched columns stay, and the tile holds t + bias */
                for (int i = 0; i < ONNXQ_MR; ++i) ok &= t1[i * 20 + 16] == -7.0f && t1[i * 20 + 19] == -7.0f;
        }
        CHECK(ok, "%s ukernel kc %lld", T->name, (long long)kc);
    }
}

#endif /* ONNXQ_SIMD_CHECKS_H */
