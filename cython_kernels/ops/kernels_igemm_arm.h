/*
 * The aarch64 integer GEMM micro-kernel (fast mode, M >= ONNXQ_IGEMM_MIN_M), a template
 * included once per level. The includer defines
 *   AG_NAME(x)   the level's name for a function (x##_neon, x##_dotprod, x##_i8mm)
 *   AG_ATTR      the level's target attribute (empty for NEON)
 *   AG_PAIR8     1: the panel holds column pairs of 8 elements (SMMLA), 0: columns of 4 (SDOT, vmull)
 *   AG_SUBDOT    a function (panel block, first step, steps, rows, first element, d) that sets
 *                d[m][v] = sum over the steps of codes . activations, lanes = columns 4v..4v+3
 * and gets igemm_<type>_<level> entry points and AG_TABLE(level) for its kernel table.
 *
 * Panel (onnxq_igemm_block_bytes sizes it; this layout is the ARM levels' own, written by
 * onnxq_arm_gexpand_*): per block, NC = 8 * AG_NG columns,
 *   codes  bs * NC int8, signed (ggml offsets 8 / 16 / 32 taken out, as in the dot kernels):
 *          AG_PAIR8 0: [bs/4][NC][4]  (16 bytes = 4 columns x 4 consecutive elements)
 *          AG_PAIR8 1: [bs/8][NC/2][2][8] (16 bytes = 2 columns x 8 consecutive elements)
 *   f0     float[NC] d;  f1 float[NC] m (Q4_1 Q5_1) or dmin (Q4_K Q5_K)
 *   sc     int32[nsub][NC] sub-block scales (Q4_K Q5_K: 8 of 32 elements, Q6_K: 16 of 16)
 *   mn     int16[8][NC] sub-block mins (Q4_K Q5_K)
 * The float tail is the dot kernels' (kernels_arm.h nq_acc_*), operation for operation, on
 * exact integer sums: C is bit-identical to the table's dot kernel, whatever M and the tiling.
 */

#define AG_INLINE static inline __attribute__((always_inline)) AG_ATTR

/* Q4_0 Q5_0 Q8_0 Q4_1 Q5_1: per block, sums then the float tail. */
AG_INLINE void AG_NAME(ag_blocks32)(const int type, const uint8_t *panel, int64_t b0, int64_t nblk,
                                    const onnxq_qact *const *rows, float *C, int64_t ldc) {
    const int64_t pbytes = onnxq_igemm_block_bytes(type, AG_NG);
    const int asym = type == ONNXQ_TYPE_Q4_1 || type == ONNXQ_TYPE_Q5_1;
    for (int64_t b = 0; b < nblk; ++b) {
        const uint8_t *pb = panel + b * pbytes;
        const int64_t ab = b0 + b;
        const float *f0 = (const float *)(pb + 32 * AG_NC), *f1 = f0 + AG_NC;
        int32x4_t d[AG_MR][AG_NV];
        AG_SUBDOT(pb, 0, 8, rows, 32 * ab, d);
        for (int m = 0; m < AG_MR; ++m) {
            const float dy = rows[m]->d[ab];
            NQ_UNROLL
            for (int v = 0; v < AG_NV; ++v) {
                float *c = C + m * ldc + 4 * v;
                const float32x4_t dx = vld1q_f32(f0 + 4 * v);
                vst1q_f32(c, asym ? nq_acc_asym(vld1q_f32(c), d[m][v], dx, vld1q_f32(f1 + 4 * v), dy, rows[m]->isum[ab])
                                  : nq_acc_sym(vld1q_f32(c), d[m][v], dx, dy));
            }
        }
    }
}

/* Q4_K Q5_K Q6_K: per super-block isc = sum_s sc_s * (sub-block sum), then the float tail
 * (Q4_K/Q5_K: minus dmin * sum_s m_s * bsum32_s). */
AG_INLINE void AG_NAME(ag_blocks_k)(const int type, const uint8_t *panel, int64_t b0, int64_t nblk,
                                    const onnxq_qact *const *rows, float *C, int64_t ldc) {
    const int64_t pbytes = onnxq_igemm_block_bytes(type, AG_NG);
    const int q6 = type == ONNXQ_TYPE_Q6_K, nsub = q6 ? 16 : 8, steps = q6 ? 4 : 8;
    for (int64_t b = 0; b < nblk; ++b) {
        const uint8_t *pb = panel + b * pbytes;
        const int64_t ab = b0 + b;
        const float *f0 = (const float *)(pb + QK_K * AG_NC), *f1 = f0 + AG_NC;
        const int32_t *sc = (const int32_t *)(f0 + (q6 ? 1 : 2) * AG_NC);
        const int16_t *mn = (const int16_t *)(sc + 8 * AG_NC);
        int32x4_t isc[AG_MR][AG_NV];
        for (int s = 0; s < nsub; ++s) {
            int32x4_t d[AG_MR][AG_NV];
            AG_SUBDOT(pb, s * steps, steps, rows, QK_K * ab + 4 * steps * s, d);
            NQ_UNROLL
            for (int v = 0; v < AG_NV; ++v) {
                const int32x4_t scv = vld1q_s32(sc + s * AG_NC + 4 * v);
                for (int m = 0; m < AG_MR; ++m) isc[m][v] = s ? vmlaq_s32(isc[m][v], d[m][v], scv) : vmulq_s32(d[m][v], scv);
            }
        }
        for (int m = 0; m < AG_MR; ++m) {
            const float dy = rows[m]->d[ab];
            const int16_t *bs = rows[m]->bsum32 + 8 * ab;
            NQ_UNROLL
            for (int v = 0; v < AG_NV; ++v) {
                float *c = C + m * ldc + 4 * v;
                const float32x4_t dv = vld1q_f32(f0 + 4 * v);
                if (q6) {
                    vst1q_f32(c, nq_acc_sym(vld1q_f32(c), isc[m][v], dv, dy));
                    continue;
                }
                int32x4_t imn = vdupq_n_s32(0);
                NQ_UNROLL
                for (int s = 0; s < 8; ++s) imn = vmlal_n_s16(imn, vld1_s16(mn + s * AG_NC + 4 * v), bs[s]);
                vst1q_f32(c, nq_acc_qk(vld1q_f32(c), isc[m][v], imn, dv, vld1q_f32(f1 + 4 * v), dy));
            }
        }
    }
}

#define AG_ENTRY(t, TYPE)                                                                                       \
    static AG_ATTR void AG_NAME(igemm_##t)(const uint8_t *panel, int64_t b0, int64_t nblk,                    \
                                           const onnxq_qact *const *rows, float *C, int64_t ldc, int first) {  \
        if (first)                                                                                             \
            for (int m = 0; m < AG_MR; ++m) memset(C + m * ldc, 0, sizeof(float) * AG_NC);                     \
        if (onnxq_act_kind(TYPE) == ONNXQ_ACT_Q8_K) AG_NAME(ag_blocks_k)(TYPE, panel, b0, nblk, rows, C, ldc);   \
        else AG_NAME(ag_blocks32)(TYPE, panel, b0, nblk, rows, C, ldc);                                        \
    }
ONNXQ_FOR_EACH_WTYPE(AG_ENTRY)
#undef AG_ENTRY
#undef AG_INLINE

#ifndef AG_TABLE
#define AG_TABLE(sfx)                                                                                        \
    .igemm = {igemm_q4_0_##sfx, igemm_q4_1_##sfx, igemm_q5_0_##sfx, igemm_q5_1_##sfx, igemm_q8_0_##sfx,      \
              igemm_q4_K_##sfx, igemm_q5_K_##sfx, igemm_q6_K_##sfx},                                         \
    .igemm_mr = AG_MR, .igemm_ng = AG_NG
#endif
