/*
 * Fast-mode dot products over the x8 layout for the two ARM levels that differ only in
 * how 4-element int8 dot products are summed: included once by kernels_neon.c (NEON:
 * vmull_s8 + vpadalq_s16) and once by kernels_neon_dotprod.c (SDOT). The includer defines
 *   NQ_FN(name)   the level's name for a function,
 *   NQ_ATTR       the level's target attribute (empty for the baseline),
 *   NQ_SUM(w, y, j0, j1)   int32x4_t: lane r = sum over chunks j in [j0, j1) of the 4
 *                 products w[j] lane r . y[4j .. 4j+3] (w: one half of an nq_codes).
 * Each function follows the scalar reference of its format in kernels_scalar.c: the same
 * exact integer sum per 32 activation elements (K-quants too: their activations are blocks of
 * 32 inside each super-block), the same float tail (kernels_arm.h).
 * Codes are signed (offsets taken out while expanding), so no offset terms are needed and
 * nothing overflows: the sums are int32 from the first product on.
 */

#define NQ_IMPL static inline __attribute__((always_inline)) NQ_ATTR

/* Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (type a compile-time constant after inlining). */
NQ_IMPL void NQ_FN(dot32_impl)(const int type, const uint8_t *g, int64_t nb, const onnxq_qact *a, const int M,
                               float *out) {
    const int64_t gbytes = onnxq_group_block_bytes(type);
    const int asym = type == ONNXQ_TYPE_Q4_1 || type == ONNXQ_TYPE_Q5_1;
    float32x4_t acc[8][2];
    for (int m = 0; m < M; ++m) acc[m][0] = acc[m][1] = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t *gb = g + b * gbytes;
        nq_prefetch(gb, gbytes);
        nq_codes w;
        float32x4_t dx[2], mx[2];
        switch (type) {
        case ONNXQ_TYPE_Q4_0: nq_expand_nib(gb + GB_Q4_0_QS, 8, w); break;
        case ONNXQ_TYPE_Q4_1: nq_expand_nib(gb + GB_Q4_1_QS, 0, w); break;
        case ONNXQ_TYPE_Q5_0: nq_expand_q5(gb + GB_Q5_0_QH, gb + GB_Q5_0_QS, 16, w); break;
        case ONNXQ_TYPE_Q5_1: nq_expand_q5(gb + GB_Q5_1_QH, gb + GB_Q5_1_QS, 0, w); break;
        default: nq_expand_q8(gb + GB_Q8_0_QS, w); break;
        }
        nq_half8(gb, dx);
        if (asym) nq_half8(gb + (type == ONNXQ_TYPE_Q4_1 ? GB_Q4_1_M : GB_Q5_1_M), mx);
        for (int m = 0; m < M; ++m) {
            const int8_t *y = a[m].qs + 32 * b;
            const float dy = a[m].d[b];
            NQ_UNROLL
            for (int h = 0; h < 2; ++h) {
                const int32x4_t s = NQ_SUM(w[h], y, 0, 8);
                acc[m][h] = asym ? nq_acc_asym(acc[m][h], s, dx[h], mx[h], dy, a[m].isum[b])
                                 : nq_acc_sym(acc[m][h], s, dx[h], dy);
            }
        }
    }
    nq_store_acc(acc, M, out);
}

/* Q4_K / Q5_K: every 32-element sub-block s is a Q4_1/Q5_1-like block against activation
 * block 8b+s: dot = sum(q*y) exact in int32 (codes 0..31), ds/ms once per sub-block
 * for all rows, the float tail per sub-block (nq_acc_kq). */
NQ_IMPL void NQ_FN(dot_qk_impl)(const int is_q5, const uint8_t *g, int64_t nb, const onnxq_qact *a, const int M,
                                float *out) {
    const int64_t gbytes = is_q5 ? GB_Q5_K_BYTES : GB_Q4_K_BYTES;
    float32x4_t acc[8][2];
    for (int m = 0; m < M; ++m) acc[m][0] = acc[m][1] = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t *gb = g + b * gbytes;
        nq_prefetch(gb, gbytes);
        const uint8_t *qs = gb + (is_q5 ? GB_Q5_K_QS : GB_Q4_K_QS), *qh = is_q5 ? gb + GB_Q5_K_QH : NULL;
        float32x4_t d[2], dmin[2];
        nq_half8(gb, d);
        nq_half8(gb + GB_QK_DMIN, dmin);
        for (int s = 0; s < 8; ++s) {
            nq_codes w;
            nq_expand_qk(qs, qh, s, w);
            float32x4_t ds[2], ms[2];
            NQ_UNROLL
            for (int h = 0; h < 2; ++h) nq_qk_dsms(gb, s, h, d[h], dmin[h], &ds[h], &ms[h]);
            const int64_t ab = 8 * b + s;
            for (int m = 0; m < M; ++m) {
                const int8_t *y = a[m].qs + 32 * ab;
                const float dy = a[m].d[ab];
                const int32_t ysum = a[m].isum[ab];
                NQ_UNROLL
                for (int h = 0; h < 2; ++h) acc[m][h] = nq_acc_kq(acc[m][h], NQ_SUM(w[h], y, 0, 8), ds[h], ms[h], dy, ysum);
            }
        }
    }
    nq_store_acc(acc, M, out);
}

/* Q6_K: quarter hq (elements 32hq .. 32hq+31) is activation block 8b+hq: its two
 * 16-element sub-blocks' sums of (L-32)*y times their int8 scales, exact in int32 (the codes
 * are signed, so the scalar reference's -32 * bsum16 is already in the sums), then
 * acc += (d * dy) * isum per quarter. */
NQ_IMPL void NQ_FN(dot_q6_K_impl)(const uint8_t *g, int64_t nb, const onnxq_qact *a, const int M, float *out) {
    float32x4_t acc[8][2];
    for (int m = 0; m < M; ++m) acc[m][0] = acc[m][1] = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t *gb = g + b * GB_Q6_K_BYTES;
        nq_prefetch(gb, GB_Q6_K_BYTES);
        float32x4_t d[2];
        nq_half8(gb, d);
        for (int hq = 0; hq < 8; ++hq) {
            const int h6 = hq >> 2, q = hq & 3, s0 = 2 * hq;
            nq_codes w;
            nq_expand_q6(gb, h6, q, w);
            int32x4_t sc[2][2]; /* [sub-block s0 / s0+1][half] */
            NQ_UNROLL
            for (int h = 0; h < 2; ++h) sc[0][h] = nq_q6_scale(gb, s0, h), sc[1][h] = nq_q6_scale(gb, s0 + 1, h);
            const int64_t ab = 8 * b + hq;
            for (int m = 0; m < M; ++m) {
                const int8_t *y = a[m].qs + 32 * ab;
                const float dy = a[m].d[ab];
                NQ_UNROLL
                for (int h = 0; h < 2; ++h) {
                    const int32x4_t isum =
                        vmlaq_s32(vmulq_s32(NQ_SUM(w[h], y, 0, 4), sc[0][h]), NQ_SUM(w[h], y, 4, 8), sc[1][h]);
                    acc[m][h] = nq_acc_sym(acc[m][h], isum, d[h], dy);
                }
            }
        }
    }
    nq_store_acc(acc, M, out);
}

/* One row is the decode case and 8 rows the prefill chunk: give the compiler M as a constant. */
#define NQ_DOT_ENTRY(name, call)                                                                   \
    static NQ_ATTR void NQ_FN(name)(const uint8_t *g, int64_t nb, const onnxq_qact *a, int M, float *out) { \
        if (M == 1) call(1);                                                                       \
        else if (M == 8) call(8);                                                                  \
        else call(M);                                                                              \
    }
#define NQ_CALL_Q4_0(R) NQ_FN(dot32_impl)(ONNXQ_TYPE_Q4_0, g, nb, a, R, out)
#define NQ_CALL_Q4_1(R) NQ_FN(dot32_impl)(ONNXQ_TYPE_Q4_1, g, nb, a, R, out)
#define NQ_CALL_Q5_0(R) NQ_FN(dot32_impl)(ONNXQ_TYPE_Q5_0, g, nb, a, R, out)
#define NQ_CALL_Q5_1(R) NQ_FN(dot32_impl)(ONNXQ_TYPE_Q5_1, g, nb, a, R, out)
#define NQ_CALL_Q8_0(R) NQ_FN(dot32_impl)(ONNXQ_TYPE_Q8_0, g, nb, a, R, out)
#define NQ_CALL_Q4_K(R) NQ_FN(dot_qk_impl)(0, g, nb, a, R, out)
#define NQ_CALL_Q5_K(R) NQ_FN(dot_qk_impl)(1, g, nb, a, R, out)
#define NQ_CALL_Q6_K(R) NQ_FN(dot_q6_K_impl)(g, nb, a, R, out)
NQ_DOT_ENTRY(dot_q4_0, NQ_CALL_Q4_0)
NQ_DOT_ENTRY(dot_q4_1, NQ_CALL_Q4_1)
NQ_DOT_ENTRY(dot_q5_0, NQ_CALL_Q5_0)
NQ_DOT_ENTRY(dot_q5_1, NQ_CALL_Q5_1)
NQ_DOT_ENTRY(dot_q8_0, NQ_CALL_Q8_0)
NQ_DOT_ENTRY(dot_q4_K, NQ_CALL_Q4_K)
NQ_DOT_ENTRY(dot_q5_K, NQ_CALL_Q5_K)
NQ_DOT_ENTRY(dot_q6_K, NQ_CALL_Q6_K)
#undef NQ_DOT_ENTRY
#undef NQ_CALL_Q4_0
#undef NQ_CALL_Q4_1
#undef NQ_CALL_Q5_0
#undef NQ_CALL_Q5_1
#undef NQ_CALL_Q8_0
#undef NQ_CALL_Q4_K
#undef NQ_CALL_Q5_K
#undef NQ_CALL_Q6_K
#undef NQ_IMPL
