/*
 * aarch64 Advanced SIMD (ARMv8.0 NEON) kernels: the baseline ARM level, and the functions
 * every ARM table shares (activation quantizers, panels, exact-mode dots, the float
 * micro-kernel, gather). NEON is part of every aarch64 CPU, so nothing here carries a
 * target attribute; kernels_neon_dotprod.c adds the SDOT and SMMLA levels.
 *
 * Quantizers: vcvtnq_s32_f32 rounds half to even like the scalar reference's magic-number
 * rounding and vmaxnmq skips NaN like its `a > amax`, so the bytes are the scalar ones.
 * Panels and gather: the scalar formulas in their order, one IEEE operation per vector
 * operation (-ffp-contract=off), so they are bit-identical to ggml_dequant.h.
 * Fast dots (NEON level): vmull_s8 products (|w*y| <= 128*127 fits int16) added pairwise
 * into int32 by vpadalq_s16, one vpaddq per block half turns pair sums into row sums.
 */
#include "kernels_arm.h"

#ifdef ONNXQ_ARM

#include "ggml_dequant.h"

/* ---------------- activation quantizers ---------------- */

static inline float32x4_t absmax_acc(const float *x, int n, float32x4_t m) {
    for (int i = 0; i < n; i += 4) m = vmaxnmq_f32(m, vabsq_f32(vld1q_f32(x + i)));
    return m;
}

/* 32 codes round_half_even(x * id) into q; returns their sum. */
static inline int32_t quant32(const float *x, float id, int8_t *q) {
    int32x4_t v[8];
    for (int k = 0; k < 8; ++k) v[k] = vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(x + 4 * k), id));
    int16x8_t h[4];
    for (int k = 0; k < 4; ++k) h[k] = vcombine_s16(vmovn_s32(v[2 * k]), vmovn_s32(v[2 * k + 1]));
    vst1q_s8(q, vcombine_s8(vmovn_s16(h[0]), vmovn_s16(h[1])));
    vst1q_s8(q + 16, vcombine_s8(vmovn_s16(h[2]), vmovn_s16(h[3])));
    const int32x4_t s = vaddq_s32(vaddq_s32(vaddq_s32(v[0], v[1]), vaddq_s32(v[2], v[3])),
                                  vaddq_s32(vaddq_s32(v[4], v[5]), vaddq_s32(v[6], v[7])));
    return vaddvq_s32(s);
}

/* x[0 .. n) zero-padded to bs floats in buf when the block is not full. */
static inline const float *block_src(const float *x, int64_t n, int bs, float *buf) {
    if (n >= bs) return x;
    memset(buf, 0, sizeof(float) * (size_t)bs);
    if (n > 0) memcpy(buf, x, sizeof(float) * (size_t)n);
    return buf;
}

void onnxq_neon_quant_q8_0(const float *x, int64_t n, int64_t nb, int8_t *qs, float *d, int32_t *isum) {
    float buf[32];
    for (int64_t b = 0; b < nb; ++b) {
        const float *src = block_src(x + b * 32, n - b * 32, 32, buf);
        const float amax = vmaxnmvq_f32(absmax_acc(src, 32, vdupq_n_f32(0.0f)));
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        d[b] = amax / 127.0f;
        isum[b] = quant32(src, id, qs + b * 32);
    }
}

/* ---------------- fast-mode dot products, NEON level ---------------- */

NQ_INLINE int32x4_t nq_sum_neon(const int8x16_t *w, const int8_t *y, int j0, int j1) {
    int32x4_t lo = vdupq_n_s32(0), hi = vdupq_n_s32(0); /* (row, element pair) sums of rows 0-1, 2-3 */
    NQ_UNROLL
    for (int j = j0; j < j1; ++j) {
        const int8x16_t yv = nq_bcast4(y + 4 * j);
        lo = vpadalq_s16(lo, vmull_s8(vget_low_s8(w[j]), vget_low_s8(yv)));
        hi = vpadalq_s16(hi, vmull_high_s8(w[j], yv));
    }
    return vpaddq_s32(lo, hi);
}

#define NQ_FN(name) name##_neon
#define NQ_ATTR
#define NQ_SUM nq_sum_neon
#include "kernels_neon_dot.h"
#undef NQ_FN
#undef NQ_ATTR
#undef NQ_SUM

/* ---------------- panels (dequantization into [k][8 rows]) ---------------- */

/* [r][t] -> [t][r] in each 16-byte register of 4 rows x 4 elements. */
static const uint8_t TRANSPOSE4[16] = {0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15};

/* 4 rows x 4 elements of codes w -> p[8t + r] = (float)code * D, then + B (op > 0) or - B (op < 0). */
NQ_INLINE void panel_chunk(int8x16_t w, float32x4_t D, float32x4_t B, const int op, float *p) {
    const int8x16_t tr = vqtbl1q_s8(w, vld1q_u8(TRANSPOSE4));
    const int16x8_t lo = vmovl_s8(vget_low_s8(tr)), hi = vmovl_high_s8(tr);
    const int32x4_t c[4] = {vmovl_s16(vget_low_s16(lo)), vmovl_high_s16(lo), vmovl_s16(vget_low_s16(hi)),
                            vmovl_high_s16(hi)};
    NQ_UNROLL
    for (int t = 0; t < 4; ++t) {
        float32x4_t v = vmulq_f32(vcvtq_f32_s32(c[t]), D);
        if (op > 0) v = vaddq_f32(v, B);
        if (op < 0) v = vsubq_f32(v, B);
        vst1q_f32(p + 8 * t, v);
    }
}

/* 32-element types: (float)(q - off) * d, or (float)q * d + m for Q4_1/Q5_1. */
NQ_INLINE void panel32(const int type, const uint8_t *gb, int64_t nblk, float *p) {
    const int64_t gbytes = onnxq_group_block_bytes(type);
    const int asym = type == ONNXQ_TYPE_Q4_1 || type == ONNXQ_TYPE_Q5_1;
    for (int64_t b = 0; b < nblk; ++b, gb += gbytes, p += 32 * 8) {
        nq_codes w;
        switch (type) {
        case ONNXQ_TYPE_Q4_0: nq_expand_nib(gb + GB_Q4_0_QS, 8, w); break;
        case ONNXQ_TYPE_Q4_1: nq_expand_nib(gb + GB_Q4_1_QS, 0, w); break;
        case ONNXQ_TYPE_Q5_0: nq_expand_q5(gb + GB_Q5_0_QH, gb + GB_Q5_0_QS, 16, w); break;
        case ONNXQ_TYPE_Q5_1: nq_expand_q5(gb + GB_Q5_1_QH, gb + GB_Q5_1_QS, 0, w); break;
        default: nq_expand_q8(gb + GB_Q8_0_QS, w); break;
        }
        float32x4_t d[2], m[2] = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)};
        nq_half8(gb, d);
        if (asym) nq_half8(gb + (type == ONNXQ_TYPE_Q4_1 ? GB_Q4_1_M : GB_Q5_1_M), m);
        NQ_UNROLL
        for (int h = 0; h < 2; ++h)
            NQ_UNROLL
            for (int j = 0; j < 8; ++j) panel_chunk(w[h][j], d[h], m[h], asym, p + 32 * j + 4 * h);
    }
}

/* d1 * q - m1 with d1 = d * sc, m1 = dmin * m per sub-block. */
NQ_INLINE void panel_qk(const int is_q5, const uint8_t *gb, int64_t nblk, float *p) {
    const int64_t gbytes = is_q5 ? GB_Q5_K_BYTES : GB_Q4_K_BYTES;
    for (int64_t b = 0; b < nblk; ++b, gb += gbytes, p += QK_K * 8) {
        const uint8_t *qs = gb + (is_q5 ? GB_Q5_K_QS : GB_Q4_K_QS), *qh = is_q5 ? gb + GB_Q5_K_QH : NULL;
        float32x4_t d[2], dmin[2];
        nq_half8(gb, d);
        nq_half8(gb + GB_QK_DMIN, dmin);
        for (int s = 0; s < 8; ++s) {
            nq_codes w;
            nq_expand_qk(qs, qh, s, w);
            NQ_UNROLL
            for (int h = 0; h < 2; ++h) {
                const float32x4_t d1 = vmulq_f32(d[h], vcvtq_f32_s32(nq_qk_scale(gb, s, h)));
                const float32x4_t m1 = vmulq_f32(dmin[h], vcvtq_f32_s32(nq_qk_min(gb, s, h)));
                NQ_UNROLL
                for (int g = 0; g < 8; ++g) panel_chunk(w[h][g], d1, m1, -1, p + (32 * s + 4 * g) * 8 + 4 * h);
            }
        }
    }
}

/* (d * sc) * (L - 32). */
void onnxq_neon_panel_q6_K(const uint8_t *gb, int64_t nblk, float *p) {
    for (int64_t b = 0; b < nblk; ++b, gb += GB_Q6_K_BYTES, p += QK_K * 8) {
        float32x4_t d[2];
        nq_half8(gb, d);
        const float32x4_t zero = vdupq_n_f32(0.0f);
        for (int hq = 0; hq < 8; ++hq) {
            const int h6 = hq >> 2, q = hq & 3, s0 = 8 * h6 + 2 * q;
            nq_codes w;
            nq_expand_q6(gb, h6, q, w);
            NQ_UNROLL
            for (int h = 0; h < 2; ++h) {
                const float32x4_t ds0 = vmulq_f32(d[h], vcvtq_f32_s32(nq_q6_scale(gb, s0, h)));
                const float32x4_t ds1 = vmulq_f32(d[h], vcvtq_f32_s32(nq_q6_scale(gb, s0 + 1, h)));
                NQ_UNROLL
                for (int g = 0; g < 8; ++g)
                    panel_chunk(w[h][g], g < 4 ? ds0 : ds1, zero, 0, p + (128 * h6 + 32 * q + 4 * g) * 8 + 4 * h);
            }
        }
    }
}

void onnxq_neon_panel_q4_0(const uint8_t *gb, int64_t nblk, float *p) { panel32(ONNXQ_TYPE_Q4_0, gb, nblk, p); }
void onnxq_neon_panel_q4_1(const uint8_t *gb, int64_t nblk, float *p) { panel32(ONNXQ_TYPE_Q4_1, gb, nblk, p); }
void onnxq_neon_panel_q5_0(const uint8_t *gb, int64_t nblk, float *p) { panel32(ONNXQ_TYPE_Q5_0, gb, nblk, p); }
void onnxq_neon_panel_q5_1(const uint8_t *gb, int64_t nblk, float *p) { panel32(ONNXQ_TYPE_Q5_1, gb, nblk, p); }
void onnxq_neon_panel_q8_0(const uint8_t *gb, int64_t nblk, float *p) { panel32(ONNXQ_TYPE_Q8_0, gb, nblk, p); }
void onnxq_neon_panel_q4_K(const uint8_t *gb, int64_t nblk, float *p) { panel_qk(0, gb, nblk, p); }
void onnxq_neon_panel_q5_K(const uint8_t *gb, int64_t nblk, float *p) { panel_qk(1, gb, nblk, p); }

/* ---------------- exact mode, few rows ---------------- */

/* acc[8r ..] += panel . x_r for R rows; U = 4 / R independent chains per row keep 8 FMAs in flight. */
NQ_INLINE void gemv_rows(const float *p, int64_t kc, const float *x, int64_t ldx, const int R, float *acc) {
    const int U = 4 / R;
    float32x4_t c[4][4][2];
    for (int r = 0; r < R; ++r)
        for (int u = 0; u < U; ++u) c[r][u][0] = c[r][u][1] = vdupq_n_f32(0.0f);
    for (int64_t k = 0; k + U <= kc; k += U)
        NQ_UNROLL
        for (int u = 0; u < U; ++u) {
            const float32x4_t p0 = vld1q_f32(p + (k + u) * 8), p1 = vld1q_f32(p + (k + u) * 8 + 4);
            NQ_UNROLL
            for (int r = 0; r < R; ++r) {
                const float xv = x[r * ldx + k + u];
                c[r][u][0] = vfmaq_n_f32(c[r][u][0], p0, xv);
                c[r][u][1] = vfmaq_n_f32(c[r][u][1], p1, xv);
            }
        }
    for (int r = 0; r < R; ++r)
        for (int h = 0; h < 2; ++h) {
            float32x4_t v = c[r][0][h];
            for (int u = 1; u < U; ++u) v = vaddq_f32(v, c[r][u][h]);
            vst1q_f32(acc + 8 * r + 4 * h, vaddq_f32(vld1q_f32(acc + 8 * r + 4 * h), v));
        }
}

/* Dequantize up to 256 elements into a panel (L1) and multiply it with every row: the
 * panel costs about one FMA per element, so fusing would save little. kc is a multiple of 32. */
static void fdot_by_panels(onnxq_panel_fn panel, int bs, int64_t gbytes, const uint8_t *g, int64_t nb,
                           const float *x, int64_t ldx, int M, float *out) {
    float p[QK_K * 8] __attribute__((aligned(16)));
    const int64_t step = QK_K / bs;
    memset(out, 0, sizeof(float) * 8 * (size_t)M);
    for (int64_t b = 0; b < nb; b += step) {
        const int64_t nblk = nb - b < step ? nb - b : step, kc = nblk * bs;
        panel(g + b * gbytes, nblk, p);
        int m = 0;
        for (; m + 4 <= M; m += 4) gemv_rows(p, kc, x + m * ldx + b * bs, ldx, 4, out + 8 * m);
        for (; m + 2 <= M; m += 2) gemv_rows(p, kc, x + m * ldx + b * bs, ldx, 2, out + 8 * m);
        for (; m < M; ++m) gemv_rows(p, kc, x + m * ldx + b * bs, ldx, 1, out + 8 * m);
    }
}

/* The panels hold the min terms already: xsum is not needed. */
#define FDOT_NEON(t, bs, gbytes)                                                                              \
    void onnxq_neon_fdot_##t(const uint8_t *g, int64_t nb, const float *x, int64_t ldx, const float *xsum,     \
                             int64_t ldsum, int M, float *out) {                                               \
        (void)xsum, (void)ldsum;                                                                              \
        fdot_by_panels(onnxq_neon_panel_##t, bs, gbytes, g, nb, x, ldx, M, out);                                         \
    }
FDOT_NEON(q4_0, 32, GB_Q4_0_BYTES)
FDOT_NEON(q4_1, 32, GB_Q4_1_BYTES)
FDOT_NEON(q5_0, 32, GB_Q5_0_BYTES)
FDOT_NEON(q5_1, 32, GB_Q5_1_BYTES)
FDOT_NEON(q8_0, 32, GB_Q8_0_BYTES)
FDOT_NEON(q4_K, QK_K, GB_Q4_K_BYTES)
FDOT_NEON(q5_K, QK_K, GB_Q5_K_BYTES)
FDOT_NEON(q6_K, QK_K, GB_Q6_K_BYTES)
#undef FDOT_NEON

/* ---------------- many rows: float GEMM micro-kernel ---------------- */

/* 6 x 16 tile: 24 accumulators, 4 panel vectors, the 6 activations of one k as scalars
 * (by-element FMAs) -- all 32 vector registers, no spills. */
void onnxq_neon_ukernel(int64_t kc, const float *const xrows[ONNXQ_MR], const float *pa, const float *pb, float *c,
                        int64_t ldc, int accumulate, const float *bias) {
    float32x4_t acc[ONNXQ_MR][4];
    for (int i = 0; i < ONNXQ_MR; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = vdupq_n_f32(0.0f);
    for (int64_t k = 0; k < kc; ++k) {
        const float32x4_t b0 = vld1q_f32(pa + 8 * k), b1 = vld1q_f32(pa + 8 * k + 4);
        const float32x4_t b2 = vld1q_f32(pb + 8 * k), b3 = vld1q_f32(pb + 8 * k + 4);
        NQ_UNROLL
        for (int i = 0; i < ONNXQ_MR; ++i) {
            const float xv = xrows[i][k];
            acc[i][0] = vfmaq_n_f32(acc[i][0], b0, xv);
            acc[i][1] = vfmaq_n_f32(acc[i][1], b1, xv);
            acc[i][2] = vfmaq_n_f32(acc[i][2], b2, xv);
            acc[i][3] = vfmaq_n_f32(acc[i][3], b3, xv);
        }
    }
    for (int i = 0; i < ONNXQ_MR; ++i)
        for (int q = 0; q < 4; ++q) {
            float *ci = c + i * ldc + 4 * q;
            float32x4_t v = acc[i][q];
            if (accumulate) v = vaddq_f32(v, vld1q_f32(ci));
            else if (bias) v = vaddq_f32(v, vld1q_f32(bias + 4 * q));
            vst1q_f32(ci, v);
        }
}

/* ---------------- gather: one ggml block ---------------- */

/* y[0 .. 16) = (float)code * d, then + m (op > 0) or - m (op < 0). */
NQ_INLINE void store16(int8x16_t code, float d, float m, const int op, float *y) {
    const int16x8_t lo = vmovl_s8(vget_low_s8(code)), hi = vmovl_high_s8(code);
    const int32x4_t c[4] = {vmovl_s16(vget_low_s16(lo)), vmovl_high_s16(lo), vmovl_s16(vget_low_s16(hi)),
                            vmovl_high_s16(hi)};
    NQ_UNROLL
    for (int i = 0; i < 4; ++i) {
        float32x4_t v = vmulq_n_f32(vcvtq_f32_s32(c[i]), d);
        if (op > 0) v = vaddq_f32(v, vdupq_n_f32(m));
        if (op < 0) v = vsubq_f32(v, vdupq_n_f32(m));
        vst1q_f32(y + 4 * i, v);
    }
}
NQ_INLINE int8x16_t lo4s(uint8x16_t v, int off) {
    return vsubq_s8(vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0F))), vdupq_n_s8((int8_t)off));
}
NQ_INLINE int8x16_t hi4s(uint8x16_t v, int off) {
    return vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(v, 4)), vdupq_n_s8((int8_t)off));
}
/* The 5th bits of elements 16 half .. 16 half + 15 of a Q5_0/Q5_1 qh, at bit 4. */
NQ_INLINE uint8x16_t q5_bits(const uint8_t *qh, int half) {
    static const uint8_t byte_of[2][16] = {{0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1},
                                           {2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3}};
    static const uint8_t bit[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    uint32_t v;
    memcpy(&v, qh, 4);
    const uint8x16_t bytes = vqtbl1q_u8(vreinterpretq_u8_u32(vdupq_n_u32(v)), vld1q_u8(byte_of[half]));
    return vandq_u8(vtstq_u8(bytes, vld1q_u8(bit)), vdupq_n_u8(0x10));
}

void onnxq_neon_dequant_q4_0(const uint8_t *blk, float *y) {
    const float d = onnxq_rdh(blk);
    const uint8x16_t qs = vld1q_u8(blk + 2);
    store16(lo4s(qs, 8), d, 0.0f, 0, y);
    store16(hi4s(qs, 8), d, 0.0f, 0, y + 16);
}
void onnxq_neon_dequant_q4_1(const uint8_t *blk, float *y) {
    const float d = onnxq_rdh(blk), m = onnxq_rdh(blk + 2);
    const uint8x16_t qs = vld1q_u8(blk + 4);
    store16(lo4s(qs, 0), d, m, 1, y);
    store16(hi4s(qs, 0), d, m, 1, y + 16);
}
void onnxq_neon_dequant_q5_0(const uint8_t *blk, float *y) {
    const float d = onnxq_rdh(blk);
    const uint8x16_t qs = vld1q_u8(blk + 6);
    store16(vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(vandq_u8(qs, vdupq_n_u8(0x0F)), q5_bits(blk + 2, 0))), vdupq_n_s8(16)),
            d, 0.0f, 0, y);
    store16(vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8(qs, 4), q5_bits(blk + 2, 1))), vdupq_n_s8(16)), d, 0.0f,
            0, y + 16);
}
void onnxq_neon_dequant_q5_1(const uint8_t *blk, float *y) {
    const float d = onnxq_rdh(blk), m = onnxq_rdh(blk + 2);
    const uint8x16_t qs = vld1q_u8(blk + 8);
    store16(vreinterpretq_s8_u8(vorrq_u8(vandq_u8(qs, vdupq_n_u8(0x0F)), q5_bits(blk + 4, 0))), d, m, 1, y);
    store16(vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8(qs, 4), q5_bits(blk + 4, 1))), d, m, 1, y + 16);
}
void onnxq_neon_dequant_q8_0(const uint8_t *blk, float *y) {
    const float d = onnxq_rdh(blk);
    store16(vld1q_s8((const int8_t *)blk + 2), d, 0.0f, 0, y);
    store16(vld1q_s8((const int8_t *)blk + 18), d, 0.0f, 0, y + 16);
}
/* Q4_K / Q5_K: chunk c of 32 bytes = sub-blocks 2c (low nibbles) and 2c+1 (high). */
NQ_INLINE void dequant_qk(const int is_q5, const uint8_t *blk, float *y) {
    const float d = onnxq_rdh(blk), dmin = onnxq_rdh(blk + 2);
    const uint8_t *scales = blk + 4, *qh = blk + 16, *qs = blk + (is_q5 ? 48 : 16);
    for (int c = 0; c < 4; ++c) {
        uint8_t sc, m;
        onnxq_get_scale_min_k4(2 * c, scales, &sc, &m);
        const float d1 = d * sc, m1 = dmin * m;
        onnxq_get_scale_min_k4(2 * c + 1, scales, &sc, &m);
        const float d2 = d * sc, m2 = dmin * m;
        NQ_UNROLL
        for (int v = 0; v < 2; ++v) {
            const uint8x16_t q = vld1q_u8(qs + 32 * c + 16 * v);
            uint8x16_t lo = vandq_u8(q, vdupq_n_u8(0x0F)), hi = vshrq_n_u8(q, 4);
            if (is_q5) {
                const uint8x16_t h = vld1q_u8(qh + 16 * v);
                lo = vorrq_u8(lo, nq_shr_mask(h, 2 * c - 4, 0x10));
                hi = vorrq_u8(hi, nq_shr_mask(h, 2 * c - 3, 0x10));
            }
            store16(vreinterpretq_s8_u8(lo), d1, m1, -1, y + 64 * c + 16 * v);
            store16(vreinterpretq_s8_u8(hi), d2, m2, -1, y + 64 * c + 32 + 16 * v);
        }
    }
}
void onnxq_neon_dequant_q4_K(const uint8_t *blk, float *y) { dequant_qk(0, blk, y); }
void onnxq_neon_dequant_q5_K(const uint8_t *blk, float *y) { dequant_qk(1, blk, y); }
/* Q6_K: ql[128] qh[64] scales[16] d, two halves of 128; y = (d * sc) * (L - 32). */
void onnxq_neon_dequant_q6_K(const uint8_t *blk, float *y) {
    const float d = onnxq_rdh(blk + 208);
    const int8_t *sc = (const int8_t *)blk + 192;
    for (int n = 0; n < 2; ++n) {
        const uint8_t *ql = blk + 64 * n, *qh = blk + 128 + 32 * n;
        NQ_UNROLL
        for (int v = 0; v < 2; ++v) { /* l = 16 v .. 16 v + 15, scale index is = v */
            const uint8x16_t l0 = vld1q_u8(ql + 16 * v), l32 = vld1q_u8(ql + 32 + 16 * v), h = vld1q_u8(qh + 16 * v);
            const uint8x16_t q1 = vorrq_u8(vandq_u8(l0, vdupq_n_u8(0x0F)), nq_shr_mask(h, -4, 0x30));
            const uint8x16_t q2 = vorrq_u8(vandq_u8(l32, vdupq_n_u8(0x0F)), nq_shr_mask(h, -2, 0x30));
            const uint8x16_t q3 = vorrq_u8(vshrq_n_u8(l0, 4), nq_shr_mask(h, 0, 0x30));
            const uint8x16_t q4 = vorrq_u8(vshrq_n_u8(l32, 4), nq_shr_mask(h, 2, 0x30));
            const uint8x16_t q[4] = {q1, q2, q3, q4};
            NQ_UNROLL
            for (int i = 0; i < 4; ++i)
                store16(vsubq_s8(vreinterpretq_s8_u8(q[i]), vdupq_n_s8(32)), d * (float)sc[8 * n + v + 2 * i], 0.0f, 0,
                        y + 128 * n + 32 * i + 16 * v);
        }
    }
}

/* ---------------- integer GEMM ---------------- */

/* d[m][v] = sum over steps [ks0, ks0 + nks) (4 elements each, lane4 panel) of codes . row m:
 * vmull_s8 (|w*y| <= 128*128 fits int16) added pairwise into int32 by vpadalq_s16, one vpaddq
 * per column vector at the end, as in the dot kernels. */
static inline __attribute__((always_inline)) void subdot_neon(const uint8_t *pb, int ks0, int nks,
                                                             const onnxq_qact *const *rows, int64_t k0,
                                                             int32x4_t d[AG_MR][AG_NV]) {
    int32x4_t p[AG_MR][AG_NV][2];
    for (int m = 0; m < AG_MR; ++m)
        for (int v = 0; v < AG_NV; ++v) p[m][v][0] = p[m][v][1] = vdupq_n_s32(0);
    for (int ks = 0; ks < nks; ++ks) {
        int8x16_t w[AG_NV];
        for (int v = 0; v < AG_NV; ++v) w[v] = vld1q_s8((const int8_t *)pb + ((int64_t)(ks0 + ks) * AG_NC + 4 * v) * 4);
        for (int m = 0; m < AG_MR; ++m) {
            const int8x8_t y = vget_low_s8(nq_bcast4(rows[m]->qs + k0 + 4 * ks));
            for (int v = 0; v < AG_NV; ++v) {
                p[m][v][0] = vpadalq_s16(p[m][v][0], vmull_s8(vget_low_s8(w[v]), y));
                p[m][v][1] = vpadalq_s16(p[m][v][1], vmull_s8(vget_high_s8(w[v]), y));
            }
        }
    }
    for (int m = 0; m < AG_MR; ++m)
        for (int v = 0; v < AG_NV; ++v) d[m][v] = vpaddq_s32(p[m][v][0], p[m][v][1]);
}

#define AG_NAME(x) x##_neon
#define AG_ATTR
#define AG_SUBDOT subdot_neon
#include "kernels_igemm_arm.h"
#undef AG_NAME
#undef AG_ATTR
#undef AG_SUBDOT

/* ---------------- the table ---------------- */

static const onnxq_kernel_table table_neon = {
    .name = "neon",
    .dot = {dot_q4_0_neon, dot_q4_1_neon, dot_q5_0_neon, dot_q5_1_neon, dot_q8_0_neon, dot_q4_K_neon, dot_q5_K_neon,
            dot_q6_K_neon},
    ONNXQ_NEON_SHARED_ENTRIES,
    ONNXQ_ARM_GEXPAND(lane4),
    AG_TABLE(neon),
};

const onnxq_kernel_table *onnxq_kernels_neon(void) { return &table_neon; }

#else

const onnxq_kernel_table *onnxq_kernels_neon(void) { return NULL; }

#endif
