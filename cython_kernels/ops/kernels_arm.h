/*
 * Private to the aarch64 kernel files (kernels_neon.c, kernels_neon_dotprod.c,
 * kernels_arm_gexpand.c): target macros, the expansion of x8 group-blocks into int8 codes,
 * the float tail of the fast dot products (shared with the integer GEMM, kernels_igemm_arm.h),
 * and the NEON functions that every ARM table shares.
 *
 * Register view of a group-block: a 16-byte load of a 32-byte chunk is 4 rows x 4
 * consecutive elements ([r][t], row 4h + r for the half h). Expanded codes are kept in
 * that shape, w[h][j] = rows 4h..4h+3 of chunk j, so that:
 *   SDOT  (vdotq_s32) against a broadcast of 4 activation bytes gives one int32 lane per row;
 *   NEON  (vmull_s8 + vpadalq_s16) gives pair sums that one vpaddq turns into the same lanes;
 *   SMMLA (vmmlaq_s32) takes two chunks of a row pair zipped into 8 consecutive elements
 *         per row (vzip1q_s32 / vzip2q_s32 of w[h][j], w[h][j+1]);
 *   panels transpose each [r][t] to [t][r] with one TBL.
 * Everything here is ARMv8.0 NEON, with no target attribute: it inlines into the
 * functions of every level.
 */
#ifndef ONNXQ_KERNELS_ARM_H
#define ONNXQ_KERNELS_ARM_H

#include "kernels_impl.h"

#if defined(__aarch64__) && (defined(__GNUC__) || defined(__clang__))
#define ONNXQ_ARM 1
#include <arm_neon.h>

/* Per-function levels, so one library carries them all; armv8.2-a is the oldest
 * architecture that has the extensions, and nothing newer is assumed. */
#define ONNXQ_DOTPROD __attribute__((target("arch=armv8.2-a+dotprod")))
#define ONNXQ_I8MM __attribute__((target("arch=armv8.2-a+dotprod+i8mm")))
#define NQ_INLINE static inline __attribute__((always_inline))
/* Fixed-trip loops must be unrolled: their indices become shift counts and offsets. */
#define ONNXQ_PRAGMA(x) _Pragma(#x)
#define NQ_UNROLL ONNXQ_PRAGMA(GCC unroll 16)

typedef int8x16_t nq_codes[2][8]; /* [half][chunk]: rows 4h..4h+3 x elements 4j..4j+3 */

/* ---------------- loads ---------------- */

/* 8 fp16 scales (one per row) -> rows 0-3 and 4-7 as float; FCVTL is exact, subnormals too. */
NQ_INLINE void nq_half8(const uint8_t *p, float32x4_t d[2]) {
    const float16x8_t h = vreinterpretq_f16_u8(vld1q_u8(p));
    d[0] = vcvt_f32_f16(vget_low_f16(h));
    d[1] = vcvt_high_f32_f16(h);
}
/* 4 unsigned bytes -> 4 int32. */
NQ_INLINE int32x4_t nq_u8x4(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(vmovl_u8(vreinterpret_u8_u32(vdup_n_u32(v))))));
}
/* Byte e of 4 pairs at p (pair r = p[2r], p[2r+1]) -> 4 int32, signed or unsigned bytes. */
NQ_INLINE int32x4_t nq_pair_u8(const uint8_t *p, int e) {
    const uint8x8_t v = vld1_u8(p);
    const uint8x8_t sel = e ? vuzp2_u8(v, v) : vuzp1_u8(v, v);
    return vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(vmovl_u8(sel))));
}
NQ_INLINE int32x4_t nq_pair_s8(const uint8_t *p, int e) {
    const int8x8_t v = vreinterpret_s8_u8(vld1_u8(p));
    const int8x8_t sel = e ? vuzp2_s8(v, v) : vuzp1_s8(v, v);
    return vmovl_s16(vget_low_s16(vmovl_s8(sel)));
}
/* 4 activation bytes in every int32 lane. */
NQ_INLINE int8x16_t nq_bcast4(const int8_t *y) {
    int32_t v;
    memcpy(&v, y, 4);
    return vreinterpretq_s8_s32(vdupq_n_s32(v));
}
/* (v >> s) & mask for s in [-7, 7] known after unrolling (negative: shift left). */
NQ_INLINE uint8x16_t nq_shr_mask(uint8x16_t v, int s, uint8_t mask) {
    return vandq_u8(vshlq_u8(v, vdupq_n_s8((int8_t)-s)), vdupq_n_u8(mask));
}

/* ---------------- expansion into codes ---------------- */

/* Q4_0 / Q4_1: chunk j < 4 = low nibbles (elements 4j+t), j >= 4 = high (16+4(j-4)+t), minus off. */
NQ_INLINE void nq_expand_nib(const uint8_t *qs, int off, nq_codes w) {
    const int8x16_t o = vdupq_n_s8((int8_t)off);
    NQ_UNROLL
    for (int h = 0; h < 2; ++h)
        NQ_UNROLL
        for (int j = 0; j < 4; ++j) {
            const uint8x16_t v = vld1q_u8(qs + 32 * j + 16 * h);
            w[h][j] = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0F))), o);
            w[h][4 + j] = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(v, 4)), o);
        }
}

/* Q5_0 / Q5_1: nibble | bit j of the plane at bit 4 (plane bit j = element 4j+t), minus off. */
NQ_INLINE void nq_expand_q5(const uint8_t *qh, const uint8_t *qs, int off, nq_codes w) {
    const int8x16_t o = vdupq_n_s8((int8_t)off);
    NQ_UNROLL
    for (int h = 0; h < 2; ++h) {
        const uint8x16_t hv = vld1q_u8(qh + 16 * h);
        NQ_UNROLL
        for (int j = 0; j < 4; ++j) {
            const uint8x16_t v = vld1q_u8(qs + 32 * j + 16 * h);
            const uint8x16_t lo = vorrq_u8(vandq_u8(v, vdupq_n_u8(0x0F)), nq_shr_mask(hv, j - 4, 0x10));
            const uint8x16_t hi = vorrq_u8(vshrq_n_u8(v, 4), nq_shr_mask(hv, j, 0x10));
            w[h][j] = vsubq_s8(vreinterpretq_s8_u8(lo), o);
            w[h][4 + j] = vsubq_s8(vreinterpretq_s8_u8(hi), o);
        }
    }
}

NQ_INLINE void nq_expand_q8(const uint8_t *qs, nq_codes w) {
    NQ_UNROLL
    for (int h = 0; h < 2; ++h)
        NQ_UNROLL
        for (int j = 0; j < 8; ++j) w[h][j] = vld1q_s8((const int8_t *)qs + 32 * j + 16 * h);
}

/* Q4_K / Q5_K sub-block s (elements 32s + 4g + t in chunk g); qh NULL for Q4_K. */
NQ_INLINE void nq_expand_qk(const uint8_t *qs, const uint8_t *qh, int s, nq_codes w) {
    const int c = s >> 1;
    NQ_UNROLL
    for (int h = 0; h < 2; ++h)
        NQ_UNROLL
        for (int g = 0; g < 8; ++g) {
            uint8x16_t v = nq_shr_mask(vld1q_u8(qs + (c * 8 + g) * 32 + 16 * h), 4 * (s & 1), 0x0F);
            if (qh) v = vorrq_u8(v, nq_shr_mask(vld1q_u8(qh + 32 * g + 16 * h), s - 4, 0x10));
            w[h][g] = vreinterpretq_s8_u8(v);
        }
}

/* Q6_K quarter q of half h6 (elements 128 h6 + 32 q + 4g + t in chunk g), codes L - 32. */
NQ_INLINE void nq_expand_q6(const uint8_t *gb, int h6, int q, nq_codes w) {
    const uint8_t *ql = gb + GB_Q6_K_QL + (h6 * 2 + (q & 1)) * 256;
    const uint8_t *qh = gb + GB_Q6_K_QH + h6 * 256;
    NQ_UNROLL
    for (int h = 0; h < 2; ++h)
        NQ_UNROLL
        for (int g = 0; g < 8; ++g) {
            const uint8x16_t lo = nq_shr_mask(vld1q_u8(ql + 32 * g + 16 * h), q < 2 ? 0 : 4, 0x0F);
            const uint8x16_t hi = nq_shr_mask(vld1q_u8(qh + 32 * g + 16 * h), 2 * q - 4, 0x30);
            w[h][g] = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(lo, hi)), vdupq_n_s8(32));
        }
}

/* wp[p][jp] = rows 2p, 2p+1 x elements 8jp .. 8jp+7 (chunks 2jp and 2jp+1 of each row). */
NQ_INLINE void nq_row_pairs(nq_codes w, int8x16_t wp[4][4]) {
    NQ_UNROLL
    for (int h = 0; h < 2; ++h)
        NQ_UNROLL
        for (int jp = 0; jp < 4; ++jp) {
            const int32x4_t a = vreinterpretq_s32_s8(w[h][2 * jp]), b = vreinterpretq_s32_s8(w[h][2 * jp + 1]);
            wp[2 * h][jp] = vreinterpretq_s8_s32(vzip1q_s32(a, b));
            wp[2 * h + 1][jp] = vreinterpretq_s8_s32(vzip2q_s32(a, b));
        }
}

/* ---------------- scales of K-quant sub-blocks, rows 4h..4h+3 ---------------- */

NQ_INLINE int32x4_t nq_qk_scale(const uint8_t *gb, int s, int h) { return nq_u8x4(gb + GB_QK_SC + 8 * s + 4 * h); }
NQ_INLINE int32x4_t nq_qk_min(const uint8_t *gb, int s, int h) {
    return nq_pair_u8(gb + GB_QK_MN + 16 * (s >> 1) + 8 * h, s & 1);
}
NQ_INLINE int32x4_t nq_q6_scale(const uint8_t *gb, int s, int h) {
    return nq_pair_s8(gb + GB_Q6_K_SC + 16 * (s >> 1) + 8 * h, s & 1);
}

/* The K-quant float scales of sub-block s, rows 4h..4h+3 (d, dmin: the rows' fp16 scales
 * as float): ds = d * sc_s and ms = dmin * mn_s, exact in fp32 (fp16 times a 6-bit integer). */
NQ_INLINE void nq_qk_dsms(const uint8_t *gb, int s, int h, float32x4_t d, float32x4_t dmin, float32x4_t *ds,
                          float32x4_t *ms) {
    *ds = vmulq_f32(d, vcvtq_f32_s32(nq_qk_scale(gb, s, h)));
    *ms = vmulq_f32(dmin, vcvtq_f32_s32(nq_qk_min(gb, s, h)));
}

/* ---------------- float tails of the fast dot products ----------------
 * The same IEEE operations in the same order as the scalar reference (kernels_scalar.c),
 * so every ARM level gives the scalar kernels' bits: the integer sums are exact, and
 * -ffp-contract=off keeps these multiplies and adds apart. */

/* acc += (dx * dy) * sumi */
NQ_INLINE float32x4_t nq_acc_sym(float32x4_t acc, int32x4_t sumi, float32x4_t dx, float dy) {
    return vaddq_f32(acc, vmulq_f32(vmulq_n_f32(dx, dy), vcvtq_f32_s32(sumi)));
}
/* acc += (dx * dy) * sumi + mx * (dy * ysum) */
NQ_INLINE float32x4_t nq_acc_asym(float32x4_t acc, int32x4_t sumi, float32x4_t dx, float32x4_t mx, float dy,
                                  int32_t ysum) {
    const float32x4_t t = vaddq_f32(vmulq_f32(vmulq_n_f32(dx, dy), vcvtq_f32_s32(sumi)), vmulq_n_f32(mx, dy * (float)ysum));
    return vaddq_f32(acc, t);
}
/* K-quant 32-element block: acc += (ds * dy) * dot - ms * (dy * ysum) */
NQ_INLINE float32x4_t nq_acc_kq(float32x4_t acc, int32x4_t dot, float32x4_t ds, float32x4_t ms, float dy,
                                int32_t ysum) {
    const float32x4_t t = vsubq_f32(vmulq_f32(vmulq_n_f32(ds, dy), vcvtq_f32_s32(dot)), vmulq_n_f32(ms, dy * (float)ysum));
    return vaddq_f32(acc, t);
}

NQ_INLINE void nq_store_acc(float32x4_t acc[8][2], int M, float *out) {
    for (int m = 0; m < M; ++m) {
        vst1q_f32(out + 8 * m, acc[m][0]);
        vst1q_f32(out + 8 * m + 4, acc[m][1]);
    }
}

/* Stream ahead: the weights are read once. */
#ifndef ONNXQ_PREFETCH_BYTES
#define ONNXQ_PREFETCH_BYTES 2048
#endif
NQ_INLINE void nq_prefetch(const uint8_t *gb, int64_t gbytes) {
    for (int64_t o = 0; o < gbytes; o += 64) __builtin_prefetch(gb + ONNXQ_PREFETCH_BYTES + o, 0, 3);
}

/* ---------------- shared by every ARM table (kernels_neon.c) ---------------- */

void onnxq_neon_quant_q8_0(const float *x, int64_t n, int64_t nb, int8_t *qs, float *d, int32_t *isum);
void onnxq_neon_ukernel(int64_t kc, const float *const xrows[ONNXQ_MR], const float *pa, const float *pb, float *c,
                        int64_t ldc, int accumulate, const float *bias);
#define ONNXQ_NEON_DECL(t)                                                                                  \
    void onnxq_neon_panel_##t(const uint8_t *gb, int64_t nblk, float *panel);                              \
    void onnxq_neon_fdot_##t(const uint8_t *g, int64_t nb, const float *x, int64_t ldx, const float *xsum,  \
                             int64_t ldsum, int M, float *out);                                             \
    void onnxq_neon_dequant_##t(const uint8_t *block, float *y);
ONNXQ_NEON_DECL(q4_0)
ONNXQ_NEON_DECL(q4_1)
ONNXQ_NEON_DECL(q5_0)
ONNXQ_NEON_DECL(q5_1)
ONNXQ_NEON_DECL(q8_0)
ONNXQ_NEON_DECL(q4_K)
ONNXQ_NEON_DECL(q5_K)
ONNXQ_NEON_DECL(q6_K)
#undef ONNXQ_NEON_DECL

/* Integer GEMM (kernels_igemm_arm.h): every ARM level's micro-kernel tile is AG_MR rows x
 * AG_NG groups (AG_NC columns, AG_NV vectors of 4). 4 x 8: the K-quants' per-sub-block sums
 * and their scaled totals (2 x 8 int32x4) stay in the 32 registers with the codes and rows. */
#define AG_MR 4
#define AG_NG 1
#define AG_NC (8 * AG_NG)
#define AG_NV (AG_NC / 4)
/* Panel expansion shared by the levels: lane4 = columns of 4 elements (NEON, dotprod),
 * pair8 = column pairs of 8 elements (i8mm); layout in kernels_igemm_arm.h. */
#define ONNXQ_ARM_GEXPAND_DECL(t, TYPE)                                                                          \
    void onnxq_arm_gexpand_lane4_##t(const uint8_t *gd, int64_t gstride, int nvalid, int ng, int64_t b0,     \
                                     int64_t nblk, uint8_t *panel);                                          \
    void onnxq_arm_gexpand_pair8_##t(const uint8_t *gd, int64_t gstride, int nvalid, int ng, int64_t b0,     \
                                     int64_t nblk, uint8_t *panel);
ONNXQ_FOR_EACH_WTYPE(ONNXQ_ARM_GEXPAND_DECL)
#undef ONNXQ_ARM_GEXPAND_DECL
#define ONNXQ_ARM_GEXPAND(layout)                                                                            \
    .gexpand = {onnxq_arm_gexpand_##layout##_q4_0, onnxq_arm_gexpand_##layout##_q4_1,                        \
                onnxq_arm_gexpand_##layout##_q5_0, onnxq_arm_gexpand_##layout##_q5_1,                        \
                onnxq_arm_gexpand_##layout##_q8_0, onnxq_arm_gexpand_##layout##_q4_K,                        \
                onnxq_arm_gexpand_##layout##_q5_K, onnxq_arm_gexpand_##layout##_q6_K}

/* The entries every ARM table shares. */
#define ONNXQ_NEON_SHARED_ENTRIES                                                                            \
    .quant_q8_0 = onnxq_neon_quant_q8_0,                                                                    \
    .panel = {onnxq_neon_panel_q4_0, onnxq_neon_panel_q4_1, onnxq_neon_panel_q5_0, onnxq_neon_panel_q5_1,   \
              onnxq_neon_panel_q8_0, onnxq_neon_panel_q4_K, onnxq_neon_panel_q5_K, onnxq_neon_panel_q6_K},  \
    .fdot = {onnxq_neon_fdot_q4_0, onnxq_neon_fdot_q4_1, onnxq_neon_fdot_q5_0, onnxq_neon_fdot_q5_1,        \
             onnxq_neon_fdot_q8_0, onnxq_neon_fdot_q4_K, onnxq_neon_fdot_q5_K, onnxq_neon_fdot_q6_K},       \
    .ukernel = onnxq_neon_ukernel,                                                                          \
    .dequant = {onnxq_neon_dequant_q4_0, onnxq_neon_dequant_q4_1, onnxq_neon_dequant_q5_0,                  \
                onnxq_neon_dequant_q5_1, onnxq_neon_dequant_q8_0, onnxq_neon_dequant_q4_K,                  \
                onnxq_neon_dequant_q5_K, onnxq_neon_dequant_q6_K}

#endif /* aarch64 */
#endif /* ONNXQ_KERNELS_ARM_H */
