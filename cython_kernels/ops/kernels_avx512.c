/*
 * AVX-512 VNNI fast-mode dot products (everything else is the AVX2 code, which runs on
 * these CPUs too). Used only where __builtin_cpu_supports reports avx512f, avx512bw,
 * avx512vl and avx512vnni (kernels_matmul.c).
 *
 * UNTESTED ON HARDWARE: the development machine has no AVX-512. The code mirrors the
 * AVX2 kernels step for step and the native test compares it with the scalar reference
 * whenever the CPU running the tests has VNNI.
 *
 * A 64-byte load of a group-block is two consecutive 4-element chunks of the 8 rows:
 * chunk j in dwords 0..7 (lane r = row r), chunk j+1 in dwords 8..15. vpdpbusd adds the
 * four u8 x s8 products of each dword to an int32 lane with no intermediate int16, so
 * there are no overflow limits to respect and no widening steps; signed 8-bit weights
 * are biased by 128 (and the bias taken out through the activation sums). The two halves
 * are added at the end of a block (a 32-element sub-block of a K-quant, or half of one for
 * Q6_K's 16-element sub-blocks), leaving the same 8 int32 row sums as the AVX2 path.
 */
#include "kernels_x86.h"

#ifdef ONNXQ_X86

#ifdef ONNXQ_EMULATE_VNNI
/* Test builds only (tests/native/emulate_avx512.py): CPU models without VNNI get an exact
 * vpdpbusd from AVX-512BW, and no "avx512vnni" target, so the compiler emits none. */
#define AVX512_TARGET "avx512f,avx512bw,avx512vl,avx2,fma,f16c"
#else
#define AVX512_TARGET "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c"
#endif
#define AVX512 __attribute__((target(AVX512_TARGET)))
#define AVX512_INLINE static inline __attribute__((always_inline, target(AVX512_TARGET)))

#ifdef ONNXQ_EMULATE_VNNI
/* acc + per dword the sum of 4 u8 x s8 products, exactly: widen to int16, vpmaddwd, add pairs. */
AVX512_INLINE __m512i dpbusd(__m512i acc, __m512i u, __m512i s) {
    const __m512i plo = _mm512_madd_epi16(_mm512_cvtepu8_epi16(_mm512_castsi512_si256(u)),
                                          _mm512_cvtepi8_epi16(_mm512_castsi512_si256(s)));
    const __m512i phi = _mm512_madd_epi16(_mm512_cvtepu8_epi16(_mm512_extracti64x4_epi64(u, 1)),
                                          _mm512_cvtepi8_epi16(_mm512_extracti64x4_epi64(s, 1)));
    /* pair sums 2j and 2j+1 make dword j: add within 64-bit lanes, keep the even dwords */
    const __m512i tlo = _mm512_add_epi32(plo, _mm512_srli_epi64(plo, 32));
    const __m512i thi = _mm512_add_epi32(phi, _mm512_srli_epi64(phi, 32));
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    return _mm512_add_epi32(acc, _mm512_permutex2var_epi32(tlo, even, thi));
}
#else
#define dpbusd _mm512_dpbusd_epi32
#endif

AVX512_INLINE __m512i ld512(const uint8_t *p) { return _mm512_loadu_si512((const void *)p); }
AVX512_INLINE __m512i lo4z(__m512i v) { return _mm512_and_si512(v, _mm512_set1_epi8(0x0F)); }
AVX512_INLINE __m512i hi4z(__m512i v) { return _mm512_and_si512(_mm512_srli_epi16(v, 4), _mm512_set1_epi8(0x0F)); }

/* (v >> s) & mask per byte for a compile-time s in [-7, 7], as shr_mask. */
AVX512_INLINE __m512i shr_maskz(__m512i v, int s, int mask) {
    const __m512i m = _mm512_set1_epi8((char)mask);
    if (s > 0) return _mm512_and_si512(_mm512_srli_epi16(v, s), m);
    if (s < 0) return _mm512_and_si512(_mm512_slli_epi16(v, -s), m);
    return _mm512_and_si512(v, m);
}

/* y[0..3] in dwords 0..7, y[4..7] in dwords 8..15: the activations of a chunk pair. */
AVX512_INLINE __m512i bcast8(const int8_t *p) {
    const __m512i idx = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    return _mm512_permutexvar_epi32(idx, _mm512_castsi128_si512(_mm_loadl_epi64((const __m128i *)p)));
}

/* Row sums (8 x int32) of w[i] . y[8i .. 8i+7] for i in [i0, i1); w[i] holds elements 8i..8i+7. */
AVX512_INLINE __m256i dp_run(const __m512i *w, const int8_t *y, int i0, int i1) {
    __m512i s = _mm512_setzero_si512();
    ONNXQ_UNROLL
    for (int i = i0; i < i1; ++i) s = dpbusd(s, w[i], bcast8(y + 8 * i));
    return _mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64(s, 1));
}

/* 32-element blocks: w[0..3] cover elements 0-7, 8-15 (low nibbles of chunk pairs 0-1, 2-3)
 * and 16-23, 24-31 (their high nibbles). */
AVX512_INLINE void expand_nib32(const uint8_t *qs, __m512i w[4]) {
    const __m512i v0 = ld512(qs), v1 = ld512(qs + 64);
    w[0] = lo4z(v0);
    w[1] = lo4z(v1);
    w[2] = hi4z(v0);
    w[3] = hi4z(v1);
}

/* Q5_0/Q5_1: plane bit j (j = element / 4) to bit 4 of each code. w[i] spans chunks 2i
 * (low half) and 2i+1 (high half): a per-half shift count. */
AVX512_INLINE void expand_q5z(const uint8_t *qh, const uint8_t *qs, __m512i w[4]) {
    expand_nib32(qs, w);
    const __m512i h = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)qh));
    ONNXQ_UNROLL
    for (int i = 0; i < 4; ++i) {
        const __m512i cnt = _mm512_inserti64x4(_mm512_set1_epi16((short)(2 * i)), _mm256_set1_epi16((short)(2 * i + 1)), 1);
        const __m512i bit = _mm512_and_si512(_mm512_srlv_epi16(h, cnt), _mm512_set1_epi8(1));
        w[i] = _mm512_or_si512(w[i], _mm512_slli_epi16(bit, 4));
    }
}

AVX512_INLINE void store_accz(const __m256 *acc, int M, float *out) {
    for (int m = 0; m < M; ++m) _mm256_storeu_ps(out + 8 * m, acc[m]);
}

/* Q4_0 / Q5_0 / Q8_0 (sym) and Q4_1 / Q5_1 (asym, + m * s_y). */
AVX512_INLINE void dot32_impl(int type, const uint8_t *g, int64_t nb, const onnxq_qact *a, const int M, float *out) {
    const int64_t gbytes = onnxq_group_block_bytes(type);
    const int asym = type == ONNXQ_TYPE_Q4_1 || type == ONNXQ_TYPE_Q5_1;
    /* codes are unsigned; the signed value is code - off */
    const int off = type == ONNXQ_TYPE_Q4_0 ? 8 : type == ONNXQ_TYPE_Q5_0 ? 16 : type == ONNXQ_TYPE_Q8_0 ? 128 : 0;
    __m256 acc[8];
    for (int m = 0; m < M; ++m) acc[m] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t *gb = g + b * gbytes;
        prefetch_block(gb, gbytes);
        const __m256 dx = ld_half8(gb);
        __m512i w[4];
        switch (type) {
        case ONNXQ_TYPE_Q4_0: expand_nib32(gb + GB_Q4_0_QS, w); break;
        case ONNXQ_TYPE_Q4_1: expand_nib32(gb + GB_Q4_1_QS, w); break;
        case ONNXQ_TYPE_Q5_0: expand_q5z(gb + GB_Q5_0_QH, gb + GB_Q5_0_QS, w); break;
        case ONNXQ_TYPE_Q5_1: expand_q5z(gb + GB_Q5_1_QH, gb + GB_Q5_1_QS, w); break;
        default: /* Q8_0: 8 chunks, element order; bias to unsigned */
            for (int i = 0; i < 4; ++i) w[i] = _mm512_xor_si512(ld512(gb + GB_Q8_0_QS + 64 * i), _mm512_set1_epi8((char)0x80));
            break;
        }
        const __m256 mx = asym ? ld_half8(gb + (type == ONNXQ_TYPE_Q4_1 ? GB_Q4_1_M : GB_Q5_1_M)) : _mm256_setzero_ps();
        for (int m = 0; m < M; ++m) {
            __m256i s = dp_run(w, a[m].qs + 32 * b, 0, 4);
            if (off) s = _mm256_sub_epi32(s, _mm256_set1_epi32(a[m].isum[b] * off));
            const float dy = a[m].d[b];
            acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dx, _mm256_set1_ps(dy)), acc[m]);
            if (asym) acc[m] = _mm256_fmadd_ps(mx, _mm256_set1_ps(dy * (float)a[m].isum[b]), acc[m]);
        }
    }
    store_accz(acc, M, out);
}

/* Q4_K / Q5_K: sub-block s, w[i] = elements 32s + 8i .. +7 (chunk pair 2i, 2i+1). */
AVX512_INLINE void expand_qk_subz(const uint8_t *qs, const uint8_t *qh, int s, __m512i w[4]) {
    const int c = s >> 1;
    ONNXQ_UNROLL
    for (int i = 0; i < 4; ++i) {
        const __m512i v = ld512(qs + (c * 8 + 2 * i) * 32);
        w[i] = (s & 1) ? hi4z(v) : lo4z(v);
        if (qh) w[i] = _mm512_or_si512(w[i], shr_maskz(ld512(qh + 2 * i * 32), s - 4, 0x10));
    }
}

/* Every sub-block is a Q4_1 / Q5_1 block with d = ds, m = -ms (kernels_impl.h), as the AVX2 kernels. */
AVX512_INLINE void dot_qk_implz(const uint8_t *g, int64_t nb, const onnxq_qact *a, const int M, float *out,
                                const int is_q5) {
    __m256 acc[8];
    for (int m = 0; m < M; ++m) acc[m] = _mm256_setzero_ps();
    const int64_t gbytes = is_q5 ? GB_Q5_K_BYTES : GB_Q4_K_BYTES;
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t *gb = g + b * gbytes;
        prefetch_block(gb, gbytes);
        const uint8_t *qs = gb + (is_q5 ? GB_Q5_K_QS : GB_Q4_K_QS);
        const uint8_t *qh = is_q5 ? gb + GB_Q5_K_QH : NULL;
        float dyis[8 * 8];
        for (int m = 0; m < M; ++m) qk_dyisum8(a[m].d + 8 * b, a[m].isum + 8 * b, dyis + 8 * m);
        ONNXQ_UNROLL
        for (int s = 0; s < 8; ++s) {
            __m512i w[4];
            expand_qk_subz(qs, qh, s, w);
            const __m256 ds = qk_ds(gb, s), ms = qk_ms(gb, s);
            const int64_t ab = 8 * b + s;
            for (int m = 0; m < M; ++m) {
                const __m256i sum = dp_run(w, a[m].qs + 32 * ab, 0, 4);
                const float dy = a[m].d[ab];
                acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_mul_ps(ds, _mm256_set1_ps(dy)), acc[m]);
                acc[m] = _mm256_fnmadd_ps(ms, _mm256_broadcast_ss(dyis + 8 * m + s), acc[m]);
            }
        }
    }
    store_accz(acc, M, out);
}

/* Q6_K quarter q of half h: w[i] = elements 128h + 32q + 8i .. +7; w[0..1] are sub-block
 * 8h + 2q, w[2..3] the next one. */
AVX512_INLINE void expand_q6_quarterz(const uint8_t *gb, int h, int q, __m512i w[4]) {
    const uint8_t *ql = gb + GB_Q6_K_QL + (h * 2 + (q & 1)) * 256;
    const uint8_t *qh = gb + GB_Q6_K_QH + h * 256;
    ONNXQ_UNROLL
    for (int i = 0; i < 4; ++i) {
        const __m512i l = ld512(ql + 64 * i);
        w[i] = _mm512_or_si512(q < 2 ? lo4z(l) : hi4z(l), shr_maskz(ld512(qh + 64 * i), 2 * q - 4, 0x30));
    }
}

/* Quarter (h, q) is 32-element block s = 4h + q: two sub-blocks of 16 scaled in int32, the offset
 * 32 * sum sc * bsum16 taken out, one fma (kernels_impl.h). */
AVX512_INLINE void dot_q6_K_implz(const uint8_t *g, int64_t nb, const onnxq_qact *a, const int M, float *out) {
    __m256 acc[8];
    for (int m = 0; m < M; ++m) acc[m] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t *gb = g + b * GB_Q6_K_BYTES;
        prefetch_block(gb, GB_Q6_K_BYTES);
        const __m256 d = ld_half8(gb);
        ONNXQ_UNROLL
        for (int h = 0; h < 2; ++h) {
            ONNXQ_UNROLL
            for (int q = 0; q < 4; ++q) {
                __m512i w[4];
                expand_q6_quarterz(gb, h, q, w);
                const int s = 4 * h + q;
                const int64_t ab = 8 * b + s;
                const __m256i sc0 = q6_scale(gb + GB_Q6_K_SC, 2 * s), sc1 = q6_scale(gb + GB_Q6_K_SC, 2 * s + 1);
                for (int m = 0; m < M; ++m) {
                    const int8_t *y = a[m].qs + 32 * ab;
                    const __m256i u = _mm256_add_epi32(_mm256_mullo_epi32(dp_run(w, y, 0, 2), sc0),
                                                       _mm256_mullo_epi32(dp_run(w, y, 2, 4), sc1));
                    const __m256i isum = _mm256_sub_epi32(u, _mm256_slli_epi32(q6_offset(gb + GB_Q6_K_SC, s, a[m].bsum16 + 16 * b), 5));
                    acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(d, _mm256_set1_ps(a[m].d[ab])), acc[m]);
                }
            }
        }
    }
    store_accz(acc, M, out);
}

#define DOT_ENTRYZ(name, call1, call8, callM)                                                                 \
    static AVX512 void name(const uint8_t *g, int64_t nb, const onnxq_qact *a, int M, float *out) {    \
        if (M == 1) call1;                                                                             \
        else if (M == 8) call8;                                                                        \
        else callM;                                                                 \
    }
DOT_ENTRYZ(dotz_q4_0, dot32_impl(ONNXQ_TYPE_Q4_0, g, nb, a, 1, out), dot32_impl(ONNXQ_TYPE_Q4_0, g, nb, a, 8, out), dot32_impl(ONNXQ_TYPE_Q4_0, g, nb, a, M, out))
DOT_ENTRYZ(dotz_q4_1, dot32_impl(ONNXQ_TYPE_Q4_1, g, nb, a, 1, out), dot32_impl(ONNXQ_TYPE_Q4_1, g, nb, a, 8, out), dot32_impl(ONNXQ_TYPE_Q4_1, g, nb, a, M, out))
DOT_ENTRYZ(dotz_q5_0, dot32_impl(ONNXQ_TYPE_Q5_0, g, nb, a, 1, out), dot32_impl(ONNXQ_TYPE_Q5_0, g, nb, a, 8, out), dot32_impl(ONNXQ_TYPE_Q5_0, g, nb, a, M, out))
DOT_ENTRYZ(dotz_q5_1, dot32_impl(ONNXQ_TYPE_Q5_1, g, nb, a, 1, out), dot32_impl(ONNXQ_TYPE_Q5_1, g, nb, a, 8, out), dot32_impl(ONNXQ_TYPE_Q5_1, g, nb, a, M, out))
DOT_ENTRYZ(dotz_q8_0, dot32_impl(ONNXQ_TYPE_Q8_0, g, nb, a, 1, out), dot32_impl(ONNXQ_TYPE_Q8_0, g, nb, a, 8, out), dot32_impl(ONNXQ_TYPE_Q8_0, g, nb, a, M, out))
DOT_ENTRYZ(dotz_q4_K, dot_qk_implz(g, nb, a, 1, out, 0), dot_qk_implz(g, nb, a, 8, out, 0), dot_qk_implz(g, nb, a, M, out, 0))
DOT_ENTRYZ(dotz_q5_K, dot_qk_implz(g, nb, a, 1, out, 1), dot_qk_implz(g, nb, a, 8, out, 1), dot_qk_implz(g, nb, a, M, out, 1))
DOT_ENTRYZ(dotz_q6_K, dot_q6_K_implz(g, nb, a, 1, out), dot_q6_K_implz(g, nb, a, 8, out), dot_q6_K_implz(g, nb, a, M, out))

/* The integer GEMM micro-kernels: 4 rows x 32 columns (two zmm of 16), vpdpbusd (kernels_igemm_x86.h). */
#define IG_NAME(x) x##_avx512
#define IG_ATTR AVX512_TARGET
#define IG_MR 4
#define IG_NV 2
#define IG_ZMM 1
#include "kernels_igemm_x86.h"

static const onnxq_kernel_table table_avx512vnni = {
    .name = "avx512vnni",
    .quant_q8_0 = onnxq_avx2_quant_q8_0,
    .dot = {dotz_q4_0, dotz_q4_1, dotz_q5_0, dotz_q5_1, dotz_q8_0, dotz_q4_K, dotz_q5_K, dotz_q6_K},
    .panel = {onnxq_avx2_panel_q4_0, onnxq_avx2_panel_q4_1, onnxq_avx2_panel_q5_0, onnxq_avx2_panel_q5_1,
              onnxq_avx2_panel_q8_0, onnxq_avx2_panel_q4_K, onnxq_avx2_panel_q5_K, onnxq_avx2_panel_q6_K},
    .fdot = {onnxq_avx2_fdot_q4_0, onnxq_avx2_fdot_q4_1, onnxq_avx2_fdot_q5_0, onnxq_avx2_fdot_q5_1,
             onnxq_avx2_fdot_q8_0, onnxq_avx2_fdot_q4_K, onnxq_avx2_fdot_q5_K, onnxq_avx2_fdot_q6_K},
    .ukernel = onnxq_avx2_ukernel,
    ONNXQ_X86_GEXPAND,
    .igemm = IGEMM_TABLE(avx512),
    .igemm_mr = IG_MR,
    .igemm_ng = 2 * IG_NV,
};

const onnxq_kernel_table *onnxq_kernels_avx512vnni(void) { return &table_avx512vnni; }

#else

const onnxq_kernel_table *onnxq_kernels_avx512vnni(void) { return NULL; }

#endif
