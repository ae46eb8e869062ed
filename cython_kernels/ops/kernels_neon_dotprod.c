/*
 * aarch64 fast-mode dot products with the ARMv8.2+ integer extensions, compiled into
 * every aarch64 build through target attributes and used only where the CPU reports them
 * (kernels_matmul.c: HWCAP_ASIMDDP / HWCAP2_I8MM, or the FEAT_ sysctls on Apple).
 * Everything but the dot products is the NEON code (kernels_neon.c).
 *
 * dotprod: SDOT (vdotq_s32) against a broadcast of 4 activation bytes adds the 4
 *   products of each row's chunk to that row's int32 lane: the x8 layout is made for it.
 * i8mm: SMMLA (vmmlaq_s32) multiplies a 2x8 int8 matrix by an 8x2 one: two activation rows
 *   (8 consecutive elements each, two plain 8-byte loads) against two weight rows (the
 *   row pair's 4-byte chunks j and j+1 zipped together). One instruction does 32
 *   multiply-adds where SDOT does 16, and the 8-row activation chunks of the fast path
 *   come in pairs. A single row (decode) would waste half of it: M = 1 stays on SDOT.
 *   The 2x2 results ([y0.r, y0.r', y1.r, y1.r']) are turned back into per-row lanes with
 *   64-bit zips once per 32-element block (Q6_K's integer scales are applied in the pair
 *   layout first; the K-quants' float tail runs per 32-element sub-block).
 * Both levels reproduce the scalar reference's integer sums exactly and its float tail
 * operation for operation (kernels_arm.h), so they give the scalar kernels' bits.
 */
#include "kernels_arm.h"

#ifdef ONNXQ_ARM

/* ---------------- dotprod ---------------- */

static inline __attribute__((always_inline)) ONNXQ_DOTPROD int32x4_t nq_sum_sdot(const int8x16_t *w, const int8_t *y,
                                                                                 int j0, int j1) {
    int32x4_t acc = vdupq_n_s32(0);
    NQ_UNROLL
    for (int j = j0; j < j1; ++j) acc = vdotq_s32(acc, w[j], nq_bcast4(y + 4 * j));
    return acc;
}

#define NQ_FN(name) name##_dotprod
#define NQ_ATTR ONNXQ_DOTPROD
#define NQ_SUM nq_sum_sdot
#include "kernels_neon_dot.h"
#undef NQ_FN
#undef NQ_ATTR
#undef NQ_SUM

/* Integer GEMM: d[m][v] = sum over steps [ks0, ks0 + nks) (lane4 panel) of codes . row m; one
 * 16-byte activation load per 4 steps, SDOT by lane (nks is a multiple of 4). */
static inline __attribute__((always_inline)) ONNXQ_DOTPROD void subdot_dotprod(const uint8_t *pb, int ks0, int nks,
                                                                              const onnxq_qact *const *rows,
                                                                              int64_t k0, int32x4_t d[AG_MR][AG_NV]) {
    for (int m = 0; m < AG_MR; ++m)
        for (int v = 0; v < AG_NV; ++v) d[m][v] = vdupq_n_s32(0);
    for (int ks = 0; ks < nks; ks += 4) {
        int8x16_t y[AG_MR];
        for (int m = 0; m < AG_MR; ++m) y[m] = vld1q_s8(rows[m]->qs + k0 + 4 * ks);
#define SDOT_STEP(l)                                                                                      \
    for (int v = 0; v < AG_NV; ++v) {                                                                     \
        const int8x16_t w = vld1q_s8((const int8_t *)pb + ((int64_t)(ks0 + ks + (l)) * AG_NC + 4 * v) * 4); \
        for (int m = 0; m < AG_MR; ++m) d[m][v] = vdotq_laneq_s32(d[m][v], w, y[m], l);                    \
    }
        SDOT_STEP(0)
        SDOT_STEP(1)
        SDOT_STEP(2)
        SDOT_STEP(3)
#undef SDOT_STEP
    }
}

#define AG_NAME(x) x##_dotprod
#define AG_ATTR ONNXQ_DOTPROD
#define AG_SUBDOT subdot_dotprod
#include "kernels_igemm_arm.h"
#undef AG_NAME
#undef AG_ATTR
#undef AG_SUBDOT

static const onnxq_kernel_table table_dotprod = {
    .name = "dotprod",
    .dot = {dot_q4_0_dotprod, dot_q4_1_dotprod, dot_q5_0_dotprod, dot_q5_1_dotprod, dot_q8_0_dotprod,
            dot_q4_K_dotprod, dot_q5_K_dotprod, dot_q6_K_dotprod},
    ONNXQ_NEON_SHARED_ENTRIES,
    ONNXQ_ARM_GEXPAND(lane4),
    AG_TABLE(dotprod),
};

const onnxq_kernel_table *onnxq_kernels_dotprod(void) { return &table_dotprod; }

/* ---------------- i8mm ---------------- */

#define I8MM_INLINE static inline __attribute__((always_inline)) ONNXQ_I8MM

/* The second activation row of an odd M's last pair. */
static const int8_t ZEROS[32]; /* the kernels read one 32-element block of it */

/* s[p] = [y0.r, y0.r', y1.r, y1.r'] (r = 2p, r' = 2p + 1) over chunk pairs [jp0, jp1). */
I8MM_INLINE void mm_sums(int8x16_t wp[4][4], const int8_t *y0, const int8_t *y1, int jp0, int jp1, int32x4_t s[4]) {
    NQ_UNROLL
    for (int p = 0; p < 4; ++p) s[p] = vdupq_n_s32(0);
    NQ_UNROLL
    for (int jp = jp0; jp < jp1; ++jp) {
        const int8x16_t yp = vcombine_s8(vld1_s8(y0 + 8 * jp), vld1_s8(y1 + 8 * jp));
        NQ_UNROLL
        for (int p = 0; p < 4; ++p) s[p] = vmmlaq_s32(s[p], yp, wp[p][jp]);
    }
}

/* Pair layout -> r[e][h] = rows 4h..4h+3 of activation row e of the pair. */
NQ_INLINE void nq_unpair(int32x4_t s[4], int32x4_t r[2][2]) {
    NQ_UNROLL
    for (int h = 0; h < 2; ++h) {
        const int64x2_t a = vreinterpretq_s64_s32(s[2 * h]), b = vreinterpretq_s64_s32(s[2 * h + 1]);
        r[0][h] = vreinterpretq_s32_s64(vzip1q_s64(a, b));
        r[1][h] = vreinterpretq_s32_s64(vzip2q_s64(a, b));
    }
}

/* Per-row scales (rows 4h..4h+3 in sc[h]) -> pair layout [sc_r, sc_r', sc_r, sc_r']. */
NQ_INLINE void nq_pair_scales(const int32x4_t sc[2], int32x4_t sp[4]) {
    NQ_UNROLL
    for (int h = 0; h < 2; ++h) {
        sp[2 * h] = vcombine_s32(vget_low_s32(sc[h]), vget_low_s32(sc[h]));
        sp[2 * h + 1] = vcombine_s32(vget_high_s32(sc[h]), vget_high_s32(sc[h]));
    }
}

/* Every activation row m < M against one 32-element block of the 8 weight rows (wp), activation
 * block ab: SMMLA sums by row pair, back in row lanes, then the float tail of the kind (tail). */
enum { NQ_TAIL_SYM, NQ_TAIL_ASYM, NQ_TAIL_KQ };
I8MM_INLINE void mm_rows32(int8x16_t wp[4][4], const onnxq_qact *a, const int M, int64_t ab, const int tail,
                           const float32x4_t dx[2], const float32x4_t mx[2], float32x4_t acc[8][2]) {
    for (int m = 0; m < M; m += 2) {
        const int n2 = m + 1 < M ? 2 : 1;
        int32x4_t s[4], r[2][2];
        mm_sums(wp, a[m].qs + 32 * ab, n2 == 2 ? a[m + 1].qs + 32 * ab : ZEROS, 0, 4, s);
        nq_unpair(s, r);
        for (int e = 0; e < n2; ++e) {
            const float dy = a[m + e].d[ab];
            NQ_UNROLL
            for (int h = 0; h < 2; ++h) {
                float32x4_t *c = &acc[m + e][h];
                if (tail == NQ_TAIL_SYM) *c = nq_acc_sym(*c, r[e][h], dx[h], dy);
                else if (tail == NQ_TAIL_ASYM) *c = nq_acc_asym(*c, r[e][h], dx[h], mx[h], dy, a[m + e].isum[ab]);
                else *c = nq_acc_kq(*c, r[e][h], dx[h], mx[h], dy, a[m + e].isum[ab]);
            }
        }
    }
}

/* Q4_0, Q4_1, Q5_0, Q5_1, Q8_0; M >= 2. */
I8MM_INLINE void mm32_impl(const int type, const uint8_t *g, int64_t nb, const onnxq_qact *a, const int M,
                            float *out) {
    const int64_t gbytes = onnxq_group_block_bytes(type);
    const int asym = type == ONNXQ_TYPE_Q4_1 || type == ONNXQ_TYPE_Q5_1;
    float32x4_t acc[8][2];
    for (int m = 0; m < M; ++m) acc[m][0] = acc[m][1] = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t *gb = g + b * gbytes;
        nq_prefetch(gb, gbytes);
        nq_codes w;
        switch (type) {
        case ONNXQ_TYPE_Q4_0: nq_expand_nib(gb + GB_Q4_0_QS, 8, w); break;
        case ONNXQ_TYPE_Q4_1: nq_expand_nib(gb + GB_Q4_1_QS, 0, w); break;
        case ONNXQ_TYPE_Q5_0: nq_expand_q5(gb + GB_Q5_0_QH, gb + GB_Q5_0_QS, 16, w); break;
        case ONNXQ_TYPE_Q5_1: nq_expand_q5(gb + GB_Q5_1_QH, gb + GB_Q5_1_QS, 0, w); break;
        default: nq_expand_q8(gb + GB_Q8_0_QS, w); break;
        }
        int8x16_t wp[4][4];
        nq_row_pairs(w, wp);
        float32x4_t dx[2], mx[2];
        nq_half8(gb, dx);
        if (asym) nq_half8(gb + (type == ONNXQ_TYPE_Q4_1 ? GB_Q4_1_M : GB_Q5_1_M), mx);
        mm_rows32(wp, a, M, b, asym ? NQ_TAIL_ASYM : NQ_TAIL_SYM, dx, mx, acc);
    }
    nq_store_acc(acc, M, out);
}

/* Q4_K / Q5_K; M >= 2: per 32-element sub-block (activation block 8b+s) the 2x2 sums
 * back in row lanes, then the float tail of the dot kernels (nq_acc_kq). */
I8MM_INLINE void mm_qk_impl(const int is_q5, const uint8_t *g, int64_t nb, const onnxq_qact *a, const int M,
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
            int8x16_t wp[4][4];
            nq_row_pairs(w, wp);
            float32x4_t ds[2], ms[2];
            NQ_UNROLL
            for (int h = 0; h < 2; ++h) nq_qk_dsms(gb, s, h, d[h], dmin[h], &ds[h], &ms[h]);
            mm_rows32(wp, a, M, 8 * b + s, NQ_TAIL_KQ, ds, ms, acc);
        }
    }
    nq_store_acc(acc, M, out);
}

/* Q6_K; M >= 2. Quarter hq is activation block 8b+hq; its sub-blocks of 16 are chunk
 * pairs 0-1 and 2-3, their int8 scales applied in the pair layout. */
I8MM_INLINE void mm_q6_K_impl(const uint8_t *g, int64_t nb, const onnxq_qact *a, const int M, float *out) {
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
            int8x16_t wp[4][4];
            nq_row_pairs(w, wp);
            const int32x4_t sc0[2] = {nq_q6_scale(gb, s0, 0), nq_q6_scale(gb, s0, 1)};
            const int32x4_t sc1[2] = {nq_q6_scale(gb, s0 + 1, 0), nq_q6_scale(gb, s0 + 1, 1)};
            int32x4_t sp0[4], sp1[4];
            nq_pair_scales(sc0, sp0);
            nq_pair_scales(sc1, sp1);
            const int64_t ab = 8 * b + hq;
            for (int m = 0; m < M; m += 2) {
                const int n2 = m + 1 < M ? 2 : 1;
                const int8_t *y0 = a[m].qs + 32 * ab, *y1 = n2 == 2 ? a[m + 1].qs + 32 * ab : ZEROS;
                int32x4_t t0[4], t1[4], isum[4], r[2][2];
                mm_sums(wp, y0, y1, 0, 2, t0);
                mm_sums(wp, y0, y1, 2, 4, t1);
                NQ_UNROLL
                for (int p = 0; p < 4; ++p) isum[p] = vmlaq_s32(vmulq_s32(t0[p], sp0[p]), t1[p], sp1[p]);
                nq_unpair(isum, r);
                for (int e = 0; e < n2; ++e)
                    NQ_UNROLL
                    for (int h = 0; h < 2; ++h) acc[m + e][h] = nq_acc_sym(acc[m + e][h], r[e][h], d[h], a[m + e].d[ab]);
            }
        }
    }
    nq_store_acc(acc, M, out);
}

/* M = 1 on SDOT (the same bits: exact integer sums, the same float tail), 8 as a constant. */
#define I8MM_ENTRY(t, call)                                                                              \
    static ONNXQ_I8MM void dot_##t##_i8mm(const uint8_t *g, int64_t nb, const onnxq_qact *a, int M, float *out) { \
        if (M == 1) dot_##t##_dotprod(g, nb, a, 1, out);                                                 \
        else if (M == 8) call(8);                                                                        \
        else call(M);                                                                                    \
    }
#define CALL_Q4_0(R) mm32_impl(ONNXQ_TYPE_Q4_0, g, nb, a, R, out)
#define CALL_Q4_1(R) mm32_impl(ONNXQ_TYPE_Q4_1, g, nb, a, R, out)
#define CALL_Q5_0(R) mm32_impl(ONNXQ_TYPE_Q5_0, g, nb, a, R, out)
#define CALL_Q5_1(R) mm32_impl(ONNXQ_TYPE_Q5_1, g, nb, a, R, out)
#define CALL_Q8_0(R) mm32_impl(ONNXQ_TYPE_Q8_0, g, nb, a, R, out)
#define CALL_Q4_K(R) mm_qk_impl(0, g, nb, a, R, out)
#define CALL_Q5_K(R) mm_qk_impl(1, g, nb, a, R, out)
#define CALL_Q6_K(R) mm_q6_K_impl(g, nb, a, R, out)
I8MM_ENTRY(q4_0, CALL_Q4_0)
I8MM_ENTRY(q4_1, CALL_Q4_1)
I8MM_ENTRY(q5_0, CALL_Q5_0)
I8MM_ENTRY(q5_1, CALL_Q5_1)
I8MM_ENTRY(q8_0, CALL_Q8_0)
I8MM_ENTRY(q4_K, CALL_Q4_K)
I8MM_ENTRY(q5_K, CALL_Q5_K)
I8MM_ENTRY(q6_K, CALL_Q6_K)

/* Integer GEMM: d[m][v] = sum over steps [ks0, ks0 + nks) of codes . row m, from the pair8
 * panel: 8 elements per SMMLA (nks, ks0 even), activation rows in pairs 2rp, 2rp+1, each 2x2
 * result [y0.c, y0.c', y1.c, y1.c'] of column pair cp; 64-bit zips give the row lanes back. */
I8MM_INLINE void subdot_i8mm(const uint8_t *pb, int ks0, int nks, const onnxq_qact *const *rows, int64_t k0,
                             int32x4_t d[AG_MR][AG_NV]) {
    int32x4_t s[AG_MR / 2][AG_NC / 2];
    for (int rp = 0; rp < AG_MR / 2; ++rp)
        for (int cp = 0; cp < AG_NC / 2; ++cp) s[rp][cp] = vdupq_n_s32(0);
    for (int k8 = 0; k8 < nks / 2; ++k8) {
        int8x16_t yp[AG_MR / 2];
        for (int rp = 0; rp < AG_MR / 2; ++rp)
            yp[rp] = vcombine_s8(vld1_s8(rows[2 * rp]->qs + k0 + 8 * k8), vld1_s8(rows[2 * rp + 1]->qs + k0 + 8 * k8));
        for (int cp = 0; cp < AG_NC / 2; ++cp) {
            const int8x16_t w = vld1q_s8((const int8_t *)pb + ((int64_t)(ks0 / 2 + k8) * (AG_NC / 2) + cp) * 16);
            for (int rp = 0; rp < AG_MR / 2; ++rp) s[rp][cp] = vmmlaq_s32(s[rp][cp], yp[rp], w);
        }
    }
    for (int rp = 0; rp < AG_MR / 2; ++rp)
        for (int v = 0; v < AG_NV; ++v) {
            const int64x2_t a = vreinterpretq_s64_s32(s[rp][2 * v]), b = vreinterpretq_s64_s32(s[rp][2 * v + 1]);
            d[2 * rp][v] = vreinterpretq_s32_s64(vzip1q_s64(a, b));
            d[2 * rp + 1][v] = vreinterpretq_s32_s64(vzip2q_s64(a, b));
        }
}

#define AG_NAME(x) x##_i8mm
#define AG_ATTR ONNXQ_I8MM
#define AG_SUBDOT subdot_i8mm
#include "kernels_igemm_arm.h"
#undef AG_NAME
#undef AG_ATTR
#undef AG_SUBDOT

static const onnxq_kernel_table table_i8mm = {
    .name = "i8mm",
    .dot = {dot_q4_0_i8mm, dot_q4_1_i8mm, dot_q5_0_i8mm, dot_q5_1_i8mm, dot_q8_0_i8mm, dot_q4_K_i8mm, dot_q5_K_i8mm,
            dot_q6_K_i8mm},
    ONNXQ_NEON_SHARED_ENTRIES,
    ONNXQ_ARM_GEXPAND(pair8),
    AG_TABLE(i8mm),
};

const onnxq_kernel_table *onnxq_kernels_i8mm(void) { return &table_i8mm; }

#else

const onnxq_kernel_table *onnxq_kernels_dotprod(void) { return NULL; }
const onnxq_kernel_table *onnxq_kernels_i8mm(void) { return NULL; }

#endif
