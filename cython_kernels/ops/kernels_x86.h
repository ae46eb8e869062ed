/*
 * Private to the x86 kernel files: target macros and the AVX2 helpers that both
 * kernels_avx2.c and kernels_avx512.c use, and the AVX2 functions the AVX-512 table reuses.
 */
#ifndef ONNXQ_KERNELS_X86_H
#define ONNXQ_KERNELS_X86_H

#include "kernels_impl.h"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define ONNXQ_X86 1
#include <immintrin.h>

#define AVX2 __attribute__((target("avx2,fma,f16c")))
/* Fixed-trip loops must be unrolled: their indices become shift counts and offsets. */
#define ONNXQ_PRAGMA(x) _Pragma(#x)
#define ONNXQ_UNROLL ONNXQ_PRAGMA(GCC unroll 16)
#define AVX2_INLINE static inline __attribute__((always_inline, target("avx2,fma,f16c")))

/* ---------------- helpers ---------------- */

AVX2_INLINE __m256i bcast4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}
AVX2_INLINE __m256i ld(const uint8_t *p) { return _mm256_loadu_si256((const __m256i *)p); }
AVX2_INLINE __m256 ld_half8(const uint8_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }
AVX2_INLINE __m256i madd1(__m256i s16) { return _mm256_madd_epi16(s16, _mm256_set1_epi16(1)); }
AVX2_INLINE __m256i lo4(__m256i v) { return _mm256_and_si256(v, _mm256_set1_epi8(0x0F)); }
AVX2_INLINE __m256i hi4(__m256i v) { return _mm256_and_si256(_mm256_srli_epi16(v, 4), _mm256_set1_epi8(0x0F)); }

/* (v >> s) & mask for a compile-time s in [-7, 7] (negative: shift left); 16-bit shifts
 * are fine because the mask drops whatever crosses from the neighbouring byte. */
AVX2_INLINE __m256i shr_mask(__m256i v, int s, int mask) {
    const __m256i m = _mm256_set1_epi8((char)mask);
    if (s > 0) return _mm256_and_si256(_mm256_srli_epi16(v, s), m);
    if (s < 0) return _mm256_and_si256(_mm256_slli_epi16(v, -s), m);
    return _mm256_and_si256(v, m);
}

/* Stream ahead: the weights are read once, and the hardware prefetcher alone leaves
 * DRAM latency exposed at the start of every page. */
#ifndef ONNXQ_PREFETCH_BYTES
#define ONNXQ_PREFETCH_BYTES 4096
#endif
AVX2_INLINE void prefetch_block(const uint8_t *gb, int64_t gbytes) {
    for (int64_t o = 0; o < gbytes; o += 64) _mm_prefetch((const char *)gb + ONNXQ_PREFETCH_BYTES + o, _MM_HINT_T0);
}

/* Q4_K/Q5_K sub-block s of the 8 rows: ds = d * sc_s and ms = dmin * mn_s, both exact in fp32
 * (an fp16 times a 6-bit integer), so wherever they are computed they are the same bits. */
AVX2_INLINE __m256 qk_ds(const uint8_t *gb, int s) {
    const __m256i sc = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(gb + GB_QK_SC + 8 * s)));
    return _mm256_mul_ps(ld_half8(gb), _mm256_cvtepi32_ps(sc));
}
/* mn[p][r][e] is the min of sub-block 2p + e: byte (s & 1) of pair (s >> 1). */
AVX2_INLINE __m256 qk_ms(const uint8_t *gb, int s) {
    const __m256i mp = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(gb + GB_QK_MN + 16 * (s >> 1))));
    const __m256i mn = (s & 1) ? _mm256_srli_epi32(mp, 16) : _mm256_and_si256(mp, _mm256_set1_epi32(0xFFFF));
    return _mm256_mul_ps(ld_half8(gb + GB_QK_DMIN), _mm256_cvtepi32_ps(mn));
}

/* Scale of sub-block s (int8, lane r) as int32, from the (s even, s odd) int16 pairs. */
AVX2_INLINE __m256i q6_scale(const uint8_t *sc, int s) {
    const __m256i v = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(sc + 16 * (s >> 1))));
    return (s & 1) ? _mm256_srai_epi32(v, 16) : _mm256_srai_epi32(_mm256_slli_epi32(v, 16), 16);
}

/* Scale of sub-block s in both int16 halves of lane r, so that madd(sums16, dup) widens
 * and scales at once (|sum16| <= 32004 and |sc| <= 128 keep it exact in int32). */
AVX2_INLINE __m256i q6_scale_dup(const uint8_t *sc, int s) {
    const __m256i v = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(sc + 16 * (s >> 1))));
    return (s & 1) ? _mm256_shufflehi_epi16(_mm256_shufflelo_epi16(v, 0xF5), 0xF5)
                   : _mm256_shufflehi_epi16(_mm256_shufflelo_epi16(v, 0xA0), 0xA0);
}

/* out[s] = dy_s * (float)isum_s for the 8 activation blocks of a super-block: the factor of the
 * Q4_K/Q5_K min terms, 8 at once (the same IEEE products as one at a time). */
AVX2_INLINE void qk_dyisum8(const float *d, const int32_t *isum, float *out) {
    _mm256_storeu_ps(out, _mm256_mul_ps(_mm256_loadu_ps(d), _mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)isum))));
}

/* Q6_K 32-element block s (sub-blocks 2s, 2s+1): lane r = sc_{2s} * bsum16_{2s} + sc_{2s+1} * bsum16_{2s+1}
 * (one madd over the scale pair; 32 times it is the offset of the codes L = q + 32). */
AVX2_INLINE __m256i q6_offset(const uint8_t *sc, int s, const int16_t *bsum16) {
    const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(sc + 16 * s)));
    int32_t pair;
    memcpy(&pair, bsum16 + 2 * s, 4);
    return _mm256_madd_epi16(sc16, _mm256_set1_epi32(pair));
}

/* The x86 integer GEMM panel of a K-quant super-block (kernels_impl.h): 64 code steps, then these
 * fields (32 bytes per group each, as the code steps). Q4_K Q5_K: ds of sub-block s (float), dmin
 * (float) and the mins, bytes mn[s][ng * 8] (a sub-block's columns side by side, so the mins of
 * 8 or 16 columns are one contiguous load). Q6_K: d (float), then per 32-element block s three int32 vectors:
 * sc_{2s} and sc_{2s+1}, each in both int16 halves of a lane, and 32 * (sc_{2s}, sc_{2s+1}) as int16 pairs. */
enum { IGK_DS = 64, IGK_DMIN = 72, IGK_MN = 73, IGK_Q6_D = 64, IGK_Q6_SC = 65 };
static inline uint8_t *igk_mins(uint8_t *pb, int ng) { return pb + (int64_t)IGK_MN * ng * 32; }
static inline const uint8_t *igk_mins_c(const uint8_t *pb, int ng) { return pb + (int64_t)IGK_MN * ng * 32; }

/* AVX2 functions that the AVX-512 table shares (defined in kernels_avx2.c). */
void onnxq_avx2_quant_q8_0(const float *x, int64_t n, int64_t nb, int8_t *qs, float *d, int32_t *isum);
void onnxq_avx2_ukernel(int64_t kc, const float *const xrows[ONNXQ_MR], const float *pa, const float *pb, float *c,
                        int64_t ldc, int accumulate, const float *bias);
#define ONNXQ_AVX2_PANEL_DECL(t) void onnxq_avx2_panel_##t(const uint8_t *gb, int64_t nblk, float *panel);
ONNXQ_AVX2_PANEL_DECL(q4_0)
ONNXQ_AVX2_PANEL_DECL(q4_1)
ONNXQ_AVX2_PANEL_DECL(q5_0)
ONNXQ_AVX2_PANEL_DECL(q5_1)
ONNXQ_AVX2_PANEL_DECL(q8_0)
ONNXQ_AVX2_PANEL_DECL(q4_K)
ONNXQ_AVX2_PANEL_DECL(q5_K)
ONNXQ_AVX2_PANEL_DECL(q6_K)
#undef ONNXQ_AVX2_PANEL_DECL
#define ONNXQ_AVX2_FDOT_DECL(t)                                                                            \
    void onnxq_avx2_fdot_##t(const uint8_t *g, int64_t nb, const float *x, int64_t ldx, const float *xsum, \
                             int64_t ldsum, int M, float *out);
ONNXQ_AVX2_FDOT_DECL(q4_0)
ONNXQ_AVX2_FDOT_DECL(q4_1)
ONNXQ_AVX2_FDOT_DECL(q5_0)
ONNXQ_AVX2_FDOT_DECL(q5_1)
ONNXQ_AVX2_FDOT_DECL(q8_0)
ONNXQ_AVX2_FDOT_DECL(q4_K)
ONNXQ_AVX2_FDOT_DECL(q5_K)
ONNXQ_AVX2_FDOT_DECL(q6_K)
#undef ONNXQ_AVX2_FDOT_DECL

#define ONNXQ_AVX2_GEXPAND_DECL(t)                                                                          \
    void onnxq_avx2_gexpand_##t(const uint8_t *gd, int64_t gstride, int nvalid, int ng, int64_t b0, int64_t nblk, \
                                uint8_t *panel);
ONNXQ_AVX2_GEXPAND_DECL(q4_0)
ONNXQ_AVX2_GEXPAND_DECL(q4_1)
ONNXQ_AVX2_GEXPAND_DECL(q5_0)
ONNXQ_AVX2_GEXPAND_DECL(q5_1)
ONNXQ_AVX2_GEXPAND_DECL(q8_0)
ONNXQ_AVX2_GEXPAND_DECL(q4_K)
ONNXQ_AVX2_GEXPAND_DECL(q5_K)
ONNXQ_AVX2_GEXPAND_DECL(q6_K)
#undef ONNXQ_AVX2_GEXPAND_DECL
/* The panel expansion of every x86 table (designated initializer). */
#define ONNXQ_X86_GEXPAND                                                                                   \
    .gexpand = {onnxq_avx2_gexpand_q4_0, onnxq_avx2_gexpand_q4_1, onnxq_avx2_gexpand_q5_0, onnxq_avx2_gexpand_q5_1, \
                onnxq_avx2_gexpand_q8_0, onnxq_avx2_gexpand_q4_K, onnxq_avx2_gexpand_q5_K, onnxq_avx2_gexpand_q6_K}

#endif /* x86 */
#endif /* ONNXQ_KERNELS_X86_H */
