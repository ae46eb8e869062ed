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
 *   then, 32-element types: f0 float[NC] d;  f1 float[NC] m (Q4_1 Q5_1)
 *         Q4_K Q5_K: ds float[8][NC] (d * sc_s, exact), dmin float[NC], mn int16[8][NC] (mins)
 *         Q6_K:      d float[NC], sc int32[16][NC] (16-element sub-block scales)
 *   (within onnxq_igemm_block_bytes: Q4_K/Q5_K use 52 * NC of its 56 * NC bytes after the codes;
 *   ms = dmin * mn is one multiply per sub-block and column vector, shared by the AG_MR rows)
 * The float tail is the dot kernels' (kernels_arm.h nq_acc_*), operation for operation, on
 * exact integer sums per 32 activation elements (K-quants too): C is bit-identical to the
 * table's dot kernel, whatever M and the tiling.
 */

#define AG_INLINE static inline __attribute__((always_inline)) AG_ATTR

typedef float32x4_t AG_NAME(ag_acc)[AG_MR][AG_NV]; /* the C tile, in registers over a run of blocks */

/* Q4_0 Q5_0 Q8_0 Q4_1 Q5_1: block ab (panel block pb): its sums, then the float tail. */
AG_INLINE void AG_NAME(ag_block32)(const int type, const uint8_t *pb, int64_t ab, const onnxq_qact *const *rows,
                                   AG_NAME(ag_acc) acc) {
    const int asym = type == ONNXQ_TYPE_Q4_1 || type == ONNXQ_TYPE_Q5_1;
    const float *f0 = (const float *)(pb + 32 * AG_NC), *f1 = f0 + AG_NC;
    int32x4_t d[AG_MR][AG_NV];
    AG_SUBDOT(pb, 0, 8, rows, 32 * ab, d);
    NQ_UNROLL
    for (int v = 0; v < AG_NV; ++v) {
        const float32x4_t dx = vld1q_f32(f0 + 4 * v), mx = asym ? vld1q_f32(f1 + 4 * v) : dx;
        for (int m = 0; m < AG_MR; ++m)
            acc[m][v] = asym ? nq_acc_asym(acc[m][v], d[m][v], dx, mx, rows[m]->d[ab], rows[m]->isum[ab])
                             : nq_acc_sym(acc[m][v], d[m][v], dx, rows[m]->d[ab]);
    }
}

/* Q4_K Q5_K, 32-element sub-block s of super-block ab (activation block 8ab+s): its sums,
 * then the dot kernels' tail with ds from the panel and ms = dmin * mn (exact). */
AG_INLINE void AG_NAME(ag_sub_qk)(const uint8_t *pb, int64_t ab, int s, const onnxq_qact *const *rows,
                                  AG_NAME(ag_acc) acc) {
    const float *ds = (const float *)(pb + QK_K * AG_NC), *dmin = ds + 8 * AG_NC;
    const int16_t *mn = (const int16_t *)(dmin + AG_NC);
    const int64_t ai = 8 * ab + s;
    int32x4_t d[AG_MR][AG_NV];
    AG_SUBDOT(pb, 8 * s, 8, rows, QK_K * ab + 32 * s, d);
    NQ_UNROLL
    for (int v = 0; v < AG_NV; ++v) {
        const float32x4_t dsv = vld1q_f32(ds + s * AG_NC + 4 * v);
        const float32x4_t msv =
            vmulq_f32(vld1q_f32(dmin + 4 * v), vcvtq_f32_s32(vmovl_s16(vld1_s16(mn + s * AG_NC + 4 * v))));
        for (int m = 0; m < AG_MR; ++m)
            acc[m][v] = nq_acc_kq(acc[m][v], d[m][v], dsv, msv, rows[m]->d[ai], rows[m]->isum[ai]);
    }
}

/* Q6_K, quarter s of super-block ab (activation block 8ab+s): the sums of its two
 * 16-element sub-blocks times their int8 scales (exact int32), then acc += (d * dy) * isum. */
AG_INLINE void AG_NAME(ag_sub_q6)(const uint8_t *pb, int64_t ab, int s, const onnxq_qact *const *rows,
                                  AG_NAME(ag_acc) acc) {
    const float *dx = (const float *)(pb + QK_K * AG_NC);
    const int32_t *sc = (const int32_t *)(dx + AG_NC);
    const int64_t ai = 8 * ab + s, k0 = QK_K * ab + 32 * s;
    int32x4_t d[AG_MR][AG_NV], isum[AG_MR][AG_NV];
    AG_SUBDOT(pb, 8 * s, 4, rows, k0, d);
    NQ_UNROLL
    for (int v = 0; v < AG_NV; ++v) {
        const int32x4_t scv = vld1q_s32(sc + 2 * s * AG_NC + 4 * v);
        for (int m = 0; m < AG_MR; ++m) isum[m][v] = vmulq_s32(d[m][v], scv);
    }
    AG_SUBDOT(pb, 8 * s + 4, 4, rows, k0 + 16, d);
    NQ_UNROLL
    for (int v = 0; v < AG_NV; ++v) {
        const int32x4_t scv = vld1q_s32(sc + (2 * s + 1) * AG_NC + 4 * v);
        const float32x4_t dv = vld1q_f32(dx + 4 * v);
        for (int m = 0; m < AG_MR; ++m)
            acc[m][v] = nq_acc_sym(acc[m][v], vmlaq_s32(isum[m][v], d[m][v], scv), dv, rows[m]->d[ai]);
    }
}

/* Blocks [b0, b0 + nblk) of the panel into the C tile (first: from zero, else continuing C). */
#define AG_ENTRY(t, TYPE)                                                                                       \
    static AG_ATTR void AG_NAME(igemm_##t)(const uint8_t *panel, int64_t b0, int64_t nblk,                    \
                                           const onnxq_qact *const *rows, float *C, int64_t ldc, int first) {  \
        const int64_t pbytes = onnxq_igemm_block_bytes(TYPE, AG_NG);                                           \
        AG_NAME(ag_acc) acc;                                                                                   \
        for (int m = 0; m < AG_MR; ++m)                                                                        \
            for (int v = 0; v < AG_NV; ++v) acc[m][v] = first ? vdupq_n_f32(0.0f) : vld1q_f32(C + m * ldc + 4 * v); \
        for (int64_t b = 0; b < nblk; ++b) {                                                                   \
            const uint8_t *pb = panel + b * pbytes;                                                            \
            if (!onnxq_is_kquant(TYPE)) AG_NAME(ag_block32)(TYPE, pb, b0 + b, rows, acc);                      \
            else                                                                                               \
                for (int s = 0; s < 8; ++s)                                                                    \
                    if (TYPE == ONNXQ_TYPE_Q6_K) AG_NAME(ag_sub_q6)(pb, b0 + b, s, rows, acc);                 \
                    else AG_NAME(ag_sub_qk)(pb, b0 + b, s, rows, acc);                                         \
        }                                                                                                      \
        for (int m = 0; m < AG_MR; ++m)                                                                        \
            for (int v = 0; v < AG_NV; ++v) vst1q_f32(C + m * ldc + 4 * v, acc[m][v]);                        \
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
