/*
 * aarch64 integer GEMM panels: x8 group-blocks expanded into the layout of the ARM micro-
 * kernels (kernels_igemm_arm.h), once per K chunk and micro-tile (kernels_matmul.c
 * igemm_part), then read by every row tile. Plain ARMv8.0 NEON (no target attribute): the
 * same expansion as the dot kernels (kernels_arm.h nq_expand_*), so the codes are the
 * ones the dot kernels multiply, signed, with ggml's offsets taken out.
 *   lane4 (NEON, dotprod): 16 bytes = 4 columns x 4 consecutive elements: the dot kernels'
 *         register shape, one SDOT per column vector and 4 activation bytes;
 *   pair8 (i8mm): 16 bytes = 2 columns x 8 consecutive elements: SMMLA's 8x2 operand.
 */
#include "kernels_arm.h"

#ifdef ONNXQ_ARM

/* Codes of a 32-element unit u (elements 32u .. 32u+31) of group gi into the panel block. */
NQ_INLINE void put_unit(int8_t *codes, int nc, int gi, int u, nq_codes w, const int pair8) {
    if (!pair8) {
        NQ_UNROLL
        for (int j = 0; j < 8; ++j)
            NQ_UNROLL
            for (int h = 0; h < 2; ++h) vst1q_s8(codes + ((int64_t)(8 * u + j) * nc + 8 * gi + 4 * h) * 4, w[h][j]);
        return;
    }
    int8x16_t wp[4][4];
    nq_row_pairs(w, wp);
    NQ_UNROLL
    for (int jp = 0; jp < 4; ++jp)
        NQ_UNROLL
        for (int p = 0; p < 4; ++p) vst1q_s8(codes + ((int64_t)(4 * u + jp) * (nc / 2) + 4 * gi + p) * 16, wp[p][jp]);
}

/* 8 fp16 scales at src -> float columns 8gi .. 8gi+7 of f. */
NQ_INLINE void put_half8(float *f, int gi, const uint8_t *src) {
    float32x4_t v[2];
    nq_half8(src, v);
    vst1q_f32(f + 8 * gi, v[0]);
    vst1q_f32(f + 8 * gi + 4, v[1]);
}

/* One group-block gb into group slot gi of panel block pb (layout: kernels_igemm_arm.h). */
NQ_INLINE void expand_block(const int type, const uint8_t *gb, uint8_t *pb, int ng, int gi, const int pair8) {
    const int nc = 8 * ng, bs = onnxq_is_kquant(type) ? QK_K : 32;
    int8_t *codes = (int8_t *)pb;
    float *f0 = (float *)(pb + (int64_t)bs * nc), *f1 = f0 + nc;
    nq_codes w;
    if (type != ONNXQ_TYPE_Q4_K && type != ONNXQ_TYPE_Q5_K) put_half8(f0, gi, gb); /* d (Q4_K/Q5_K: ds instead) */
    switch (type) {
    case ONNXQ_TYPE_Q4_0: nq_expand_nib(gb + GB_Q4_0_QS, 8, w); break;
    case ONNXQ_TYPE_Q4_1: nq_expand_nib(gb + GB_Q4_1_QS, 0, w); put_half8(f1, gi, gb + GB_Q4_1_M); break;
    case ONNXQ_TYPE_Q5_0: nq_expand_q5(gb + GB_Q5_0_QH, gb + GB_Q5_0_QS, 16, w); break;
    case ONNXQ_TYPE_Q5_1:
        nq_expand_q5(gb + GB_Q5_1_QH, gb + GB_Q5_1_QS, 0, w);
        put_half8(f1, gi, gb + GB_Q5_1_M);
        break;
    case ONNXQ_TYPE_Q8_0: nq_expand_q8(gb + GB_Q8_0_QS, w); break;
    case ONNXQ_TYPE_Q4_K:
    case ONNXQ_TYPE_Q5_K: { /* ds float[8][nc] (d * sc_s, exact in fp32), dmin float[nc], mn int16[8][nc] */
        const int q5 = type == ONNXQ_TYPE_Q5_K;
        float *ds = f0, *dmin = f0 + 8 * nc;
        int16_t *mn = (int16_t *)(dmin + nc);
        float32x4_t d[2];
        nq_half8(gb, d);
        put_half8(dmin, gi, gb + GB_QK_DMIN);
        for (int s = 0; s < 8; ++s) {
            nq_expand_qk(gb + (q5 ? GB_Q5_K_QS : GB_Q4_K_QS), q5 ? gb + GB_Q5_K_QH : NULL, s, w);
            put_unit(codes, nc, gi, s, w, pair8);
            NQ_UNROLL
            for (int h = 0; h < 2; ++h) {
                vst1q_f32(ds + s * nc + 8 * gi + 4 * h, vmulq_f32(d[h], vcvtq_f32_s32(nq_qk_scale(gb, s, h))));
                vst1_s16(mn + s * nc + 8 * gi + 4 * h, vmovn_s32(nq_qk_min(gb, s, h)));
            }
        }
        return;
    }
    default: { /* Q6_K: quarter hq is elements 32 hq .. 32 hq + 31, sub-blocks 2hq and 2hq+1 */
        int32_t *sc = (int32_t *)f1;
        for (int hq = 0; hq < 8; ++hq) {
            nq_expand_q6(gb, hq >> 2, hq & 3, w);
            put_unit(codes, nc, gi, hq, w, pair8);
        }
        for (int s = 0; s < 16; ++s)
            NQ_UNROLL
            for (int h = 0; h < 2; ++h) vst1q_s32(sc + s * nc + 8 * gi + 4 * h, nq_q6_scale(gb, s, h));
        return;
    }
    }
    put_unit(codes, nc, gi, 0, w, pair8);
}

/* Blocks [b0, b0 + nblk) of groups gd, gd + gstride, ...: nvalid real groups, the rest zero
 * (zero codes and scales: their columns come out 0 and are never stored). */
NQ_INLINE void gexpand_impl(const int type, const int pair8, const uint8_t *gd, int64_t gstride, int nvalid, int ng,
                            int64_t b0, int64_t nblk, uint8_t *panel) {
    const int64_t gbytes = onnxq_group_block_bytes(type), pbytes = onnxq_igemm_block_bytes(type, ng);
    for (int64_t b = 0; b < nblk; ++b) {
        uint8_t *pb = panel + b * pbytes;
        if (nvalid < ng) memset(pb, 0, (size_t)pbytes);
        for (int gi = 0; gi < nvalid; ++gi) expand_block(type, gd + gi * gstride + (b0 + b) * gbytes, pb, ng, gi, pair8);
    }
}

#define GEXPAND_ENTRY(t, TYPE)                                                                              \
    void onnxq_arm_gexpand_lane4_##t(const uint8_t *gd, int64_t gstride, int nvalid, int ng, int64_t b0,     \
                                     int64_t nblk, uint8_t *panel) {                                         \
        gexpand_impl(TYPE, 0, gd, gstride, nvalid, ng, b0, nblk, panel);                                    \
    }                                                                                                       \
    void onnxq_arm_gexpand_pair8_##t(const uint8_t *gd, int64_t gstride, int nvalid, int ng, int64_t b0,     \
                                     int64_t nblk, uint8_t *panel) {                                         \
        gexpand_impl(TYPE, 1, gd, gstride, nvalid, ng, b0, nblk, panel);                                    \
    }
ONNXQ_FOR_EACH_WTYPE(GEXPAND_ENTRY)
#undef GEXPAND_ENTRY

#else

/* ISO C forbids an empty translation unit. */
typedef int onnxq_arm_gexpand_unused;

#endif
