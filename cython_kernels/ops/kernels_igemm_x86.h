/*
 * The x86 VNNI integer GEMM micro-kernel, a template (AVX2 without VNNI: kernels_igemm_avx2.h): each including file defines
 *   IG_NAME(x)  the name suffix of its functions (x##_avxvnni, x##_avx512)
 *   IG_ATTR     the target attribute string
 *   IG_MR       rows of the register tile; IG_NV vectors of columns (8 columns per ymm, 16 per zmm)
 *   IG_ZMM      1 for 512-bit vectors (needs the file's dpbusd), else ymm
 *   IG_VEXVNNI  1: AVX-VNNI (VEX vpdpbusd on ymm)
 * and gets onnxq_kernel_table-ready entry points igemm_<type>_<suffix> plus IGEMM_TABLE(suffix).
 *
 * Panel layout and contract: kernels_impl.h (onnxq_igemm_fn). Per block the float part is the
 * dot kernels' (kernels_avx2.c / kernels_avx512.c) operation for operation:
 *   Q4_0 Q5_0 Q8_0: acc = fma(cvt(dot - off * isum), d * dy, acc)
 *   Q4_1 Q5_1:      acc = fma(cvt(dot), d * dy, acc); acc = fma(m, dy * (float)isum, acc)
 *   Q4_K Q5_K, per 32-element sub-block s: acc = fma(cvt(dot_s), ds * dy, acc); acc = fnma(ms, dy * isum, acc)
 *                   with ds = d * sc_s, ms = dmin * mn_s (exact) and the activation block's dy, isum
 *   Q6_K, per 32 elements: acc = fma(cvt(sc_a * dot16_a + sc_b * dot16_b - 32 * offset), d * dy, acc)
 * with every integer exact, so C is bit-identical to the dot kernels' output.
 */
#if IG_ZMM
#define IG_W __m512i
#define IG_F __m512
#define IG_VB 64
#define IG_LD(p) _mm512_loadu_si512((const void *)(p))
#define IG_LDF(p) _mm512_loadu_ps((const void *)(p))
#define IG_STF(p, v) _mm512_storeu_ps((void *)(p), v)
#define IG_BC32(p) _mm512_set1_epi32(ig_rd32(p))
#define IG_SETI(x) _mm512_set1_epi32(x)
#define IG_SETF(x) _mm512_set1_ps(x)
#define IG_ZERO() _mm512_setzero_si512()
#define IG_ZEROF() _mm512_setzero_ps()
#define IG_ADD(a, b) _mm512_add_epi32(a, b)
#define IG_SUB(a, b) _mm512_sub_epi32(a, b)
#define IG_SLLI(a, n) _mm512_slli_epi32(a, n)
#define IG_SRAI(a, n) _mm512_srai_epi32(a, n)
#define IG_LDU8(p) _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(p)))
#define IG_Q6_NV IG_NV /* 32 registers: both sub-blocks' sums of every vector fit */
#define IG_MULLO(a, b) _mm512_mullo_epi32(a, b)
#define IG_MADD16(a, b) _mm512_madd_epi16(a, b)
#define IG_CVT(a) _mm512_cvtepi32_ps(a)
#define IG_MULF(a, b) _mm512_mul_ps(a, b)
#define IG_FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define IG_FNMA(a, b, c) _mm512_fnmadd_ps(a, b, c)
#define IG_DP(acc, w, y) dpbusd(acc, w, y)
#else
#define IG_W __m256i
#define IG_F __m256
#define IG_VB 32
#define IG_LD(p) _mm256_loadu_si256((const __m256i *)(p))
#define IG_LDF(p) _mm256_loadu_ps((const float *)(p))
#define IG_STF(p, v) _mm256_storeu_ps((float *)(p), v)
#define IG_BC32(p) _mm256_set1_epi32(ig_rd32(p))
#define IG_SETI(x) _mm256_set1_epi32(x)
#define IG_SETF(x) _mm256_set1_ps(x)
#define IG_ZERO() _mm256_setzero_si256()
#define IG_ZEROF() _mm256_setzero_ps()
#define IG_ADD(a, b) _mm256_add_epi32(a, b)
#define IG_SUB(a, b) _mm256_sub_epi32(a, b)
#define IG_SLLI(a, n) _mm256_slli_epi32(a, n)
#define IG_SRAI(a, n) _mm256_srai_epi32(a, n)
#define IG_LDU8(p) _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p)))
#define IG_Q6_NV 1 /* 16 registers: one vector of columns at a time */
#define IG_MULLO(a, b) _mm256_mullo_epi32(a, b)
#define IG_MADD16(a, b) _mm256_madd_epi16(a, b)
#define IG_CVT(a) _mm256_cvtepi32_ps(a)
#define IG_MULF(a, b) _mm256_mul_ps(a, b)
#define IG_FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define IG_FNMA(a, b, c) _mm256_fnmadd_ps(a, b, c)
#if IG_VEXVNNI && defined(ONNXQ_EMULATE_VNNI)
#define IG_DP(acc, w, y) dpbusd_avx2(acc, w, y) /* test builds (kernels_avx2.c) */
#elif IG_VEXVNNI
#define IG_DP(acc, w, y) _mm256_dpbusd_avx_epi32(acc, w, y)
#endif
#endif

#define IG_INLINE static inline __attribute__((always_inline, target(IG_ATTR)))
#define IG_NG (IG_NV * IG_VB / 32) /* groups per tile */

#ifndef ONNXQ_IG_RD32
#define ONNXQ_IG_RD32
static inline int32_t ig_rd32(const void *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}
#endif

/* d[m][v] = sum over steps [ks0, ks0 + nks) of codes . activations (row m from element k0), v in [v0, v0 + nv). */
IG_INLINE void IG_NAME(ig_subdot)(const uint8_t *pb, const int ks0, const int nks, const onnxq_qact *const *rows,
                                  int64_t k0, const int v0, const int nv, IG_W d[IG_MR][IG_NV]) {
    for (int m = 0; m < IG_MR; ++m)
        for (int v = v0; v < v0 + nv; ++v) d[m][v] = IG_ZERO();
    ONNXQ_UNROLL
    for (int ks = 0; ks < nks; ++ks) {
        IG_W w[IG_NV];
        for (int v = v0; v < v0 + nv; ++v) w[v] = IG_LD(pb + ((int64_t)(ks0 + ks) * IG_NG) * 32 + v * IG_VB);
        for (int m = 0; m < IG_MR; ++m) {
            const IG_W y = IG_BC32(rows[m]->qs + k0 + 4 * ks);
            for (int v = v0; v < v0 + nv; ++v) d[m][v] = IG_DP(d[m][v], w[v], y);
        }
    }
}

/* Vector v of field f (0 = f0, 1 = f1, ...) of a panel block. */
#define IG_FIELD(pb, nks, f, v) ((pb) + ((int64_t)((nks) + (f)) * IG_NG) * 32 + (v) * IG_VB)

IG_INLINE void IG_NAME(ig_impl)(const int type, const uint8_t *panel, int64_t b0, int64_t nblk,
                                const onnxq_qact *const *rows, float *C, int64_t ldc, int first) {
    const onnxq_igemm_shape sh = onnxq_igemm_shape_of(type);
    const int64_t pbytes = (int64_t)IG_NG * 32 * (sh.nks + sh.nf + sh.nsub + sh.npair);
    const int off_shift = type == ONNXQ_TYPE_Q4_0 ? 3 : type == ONNXQ_TYPE_Q5_0 ? 4 : type == ONNXQ_TYPE_Q8_0 ? 7 : -1;
#if IG_ZMM
    /* 32 registers: the float accumulators stay in registers for the whole run */
    IG_F acc[IG_MR][IG_NV];
    for (int m = 0; m < IG_MR; ++m)
        for (int v = 0; v < IG_NV; ++v) acc[m][v] = first ? IG_ZEROF() : IG_LDF(C + m * ldc + v * (IG_VB / 4));
#define IG_ACC_LOAD(m, v) ((void)0)
#define IG_ACC_STORE(m, v) ((void)0)
#else
    /* 16 registers hold the integer sums; the float accumulators live in C (L1), touched once per block */
    IG_F acc[IG_MR][IG_NV];
    if (first)
        for (int m = 0; m < IG_MR; ++m)
            for (int v = 0; v < IG_NV; ++v) IG_STF(C + m * ldc + v * (IG_VB / 4), IG_ZEROF());
#define IG_ACC_LOAD(m, v) (acc[m][v] = IG_LDF(C + (m) * ldc + (v) * (IG_VB / 4)))
#define IG_ACC_STORE(m, v) IG_STF(C + (m) * ldc + (v) * (IG_VB / 4), acc[m][v])
#endif
    for (int64_t b = 0; b < nblk; ++b) {
        const uint8_t *pb = panel + b * pbytes;
        const int64_t ab = b0 + b;
        IG_W d[IG_MR][IG_NV];
        if (sh.nks == 8) { /* 32-element blocks */
            IG_NAME(ig_subdot)(pb, 0, 8, rows, 32 * ab, 0, IG_NV, d);
            for (int v = 0; v < IG_NV; ++v) {
                const IG_F dx = IG_LDF(IG_FIELD(pb, 8, 0, v));
                for (int m = 0; m < IG_MR; ++m) {
                    const float dy = rows[m]->d[ab];
                    IG_W s = d[m][v];
                    if (off_shift >= 0) s = IG_SUB(s, IG_SLLI(IG_SETI(rows[m]->isum[ab]), off_shift));
                    IG_ACC_LOAD(m, v);
                    acc[m][v] = IG_FMA(IG_CVT(s), IG_MULF(dx, IG_SETF(dy)), acc[m][v]);
                    if (sh.nf == 2)
                        acc[m][v] = IG_FMA(IG_LDF(IG_FIELD(pb, 8, 1, v)), IG_SETF(dy * (float)rows[m]->isum[ab]), acc[m][v]);
                    IG_ACC_STORE(m, v);
                }
            }
            continue;
        }
        /* K-quant super-block: eight 32-element blocks (panel fields: kernels_x86.h) */
        float dyis[IG_MR][8];
        for (int m = 0; m < IG_MR && type != ONNXQ_TYPE_Q6_K; ++m) qk_dyisum8(rows[m]->d + 8 * ab, rows[m]->isum + 8 * ab, dyis[m]);
        for (int s = 0; s < 8; ++s) {
            const int64_t a32 = 8 * ab + s;
            if (type == ONNXQ_TYPE_Q6_K) { /* two sub-blocks of 16, each scaled in int32 */
                for (int v0 = 0; v0 < IG_NV; v0 += IG_Q6_NV) {
                    IG_W d1[IG_MR][IG_NV];
                    IG_NAME(ig_subdot)(pb, 8 * s, 4, rows, 32 * a32, v0, IG_Q6_NV, d);
                    IG_NAME(ig_subdot)(pb, 8 * s + 4, 4, rows, 32 * a32 + 16, v0, IG_Q6_NV, d1);
                    for (int v = v0; v < v0 + IG_Q6_NV; ++v) {
                        const IG_W sc0 = IG_SRAI(IG_LD(IG_FIELD(pb, 0, IGK_Q6_SC + 3 * s, v)), 16);
                        const IG_W sc1 = IG_SRAI(IG_LD(IG_FIELD(pb, 0, IGK_Q6_SC + 3 * s + 1, v)), 16);
                        const IG_W pr = IG_LD(IG_FIELD(pb, 0, IGK_Q6_SC + 3 * s + 2, v));
                        const IG_F f0 = IG_LDF(IG_FIELD(pb, 0, IGK_Q6_D, v));
                        for (int m = 0; m < IG_MR; ++m) {
                            const IG_W off = IG_MADD16(pr, IG_BC32(rows[m]->bsum16 + 16 * ab + 2 * s));
                            const IG_W isum = IG_SUB(IG_ADD(IG_MULLO(d[m][v], sc0), IG_MULLO(d1[m][v], sc1)), off);
                            IG_ACC_LOAD(m, v);
                            acc[m][v] = IG_FMA(IG_CVT(isum), IG_MULF(f0, IG_SETF(rows[m]->d[a32])), acc[m][v]);
                            IG_ACC_STORE(m, v);
                        }
                    }
                }
                continue;
            }
            /* Q4_K Q5_K: a Q4_1 / Q5_1 block with d = ds, m = -ms */
            IG_NAME(ig_subdot)(pb, 8 * s, 8, rows, 32 * a32, 0, IG_NV, d);
            for (int v = 0; v < IG_NV; ++v) {
                const IG_F ds = IG_LDF(IG_FIELD(pb, 0, IGK_DS + s, v));
                const IG_F ms = IG_MULF(IG_LDF(IG_FIELD(pb, 0, IGK_DMIN, v)),
                                        IG_CVT(IG_LDU8(igk_mins_c(pb, IG_NG) + s * IG_NG * 8 + v * (IG_VB / 4))));
                for (int m = 0; m < IG_MR; ++m) {
                    const float dy = rows[m]->d[a32];
                    IG_ACC_LOAD(m, v);
                    acc[m][v] = IG_FMA(IG_CVT(d[m][v]), IG_MULF(ds, IG_SETF(dy)), acc[m][v]);
                    acc[m][v] = IG_FNMA(ms, IG_SETF(dyis[m][s]), acc[m][v]);
                    IG_ACC_STORE(m, v);
                }
            }
        }
    }
#if IG_ZMM
    for (int m = 0; m < IG_MR; ++m)
        for (int v = 0; v < IG_NV; ++v) IG_STF(C + m * ldc + v * (IG_VB / 4), acc[m][v]);
#endif
#undef IG_ACC_LOAD
#undef IG_ACC_STORE
}

#define IG_ENTRY(t, TYPE)                                                                                       \
    static __attribute__((target(IG_ATTR))) void IG_NAME(igemm_##t)(const uint8_t *panel, int64_t b0,          \
                                                                    int64_t nblk, const onnxq_qact *const *rows, \
                                                                    float *C, int64_t ldc, int first) {         \
        IG_NAME(ig_impl)(TYPE, panel, b0, nblk, rows, C, ldc, first);                                           \
    }
IG_ENTRY(q4_0, ONNXQ_TYPE_Q4_0)
IG_ENTRY(q4_1, ONNXQ_TYPE_Q4_1)
IG_ENTRY(q5_0, ONNXQ_TYPE_Q5_0)
IG_ENTRY(q5_1, ONNXQ_TYPE_Q5_1)
IG_ENTRY(q8_0, ONNXQ_TYPE_Q8_0)
IG_ENTRY(q4_K, ONNXQ_TYPE_Q4_K)
IG_ENTRY(q5_K, ONNXQ_TYPE_Q5_K)
IG_ENTRY(q6_K, ONNXQ_TYPE_Q6_K)
#undef IG_ENTRY

#ifndef IGEMM_TABLE
#define IGEMM_TABLE(sfx)                                                                                   \
    {igemm_q4_0_##sfx, igemm_q4_1_##sfx, igemm_q5_0_##sfx, igemm_q5_1_##sfx, igemm_q8_0_##sfx, igemm_q4_K_##sfx, \
     igemm_q5_K_##sfx, igemm_q6_K_##sfx}
#endif

#undef IG_W
#undef IG_F
#undef IG_VB
#undef IG_LD
#undef IG_LDF
#undef IG_STF
#undef IG_BC32
#undef IG_SETI
#undef IG_SETF
#undef IG_ZERO
#undef IG_ZEROF
#undef IG_ADD
#undef IG_SUB
#undef IG_SLLI
#undef IG_SRAI
#undef IG_LDU8
#undef IG_Q6_NV
#undef IG_MULLO
#undef IG_MADD16
#undef IG_CVT
#undef IG_MULF
#undef IG_FMA
#undef IG_FNMA
#undef IG_DP
#undef IG_INLINE
#undef IG_NG
#undef IG_FIELD
