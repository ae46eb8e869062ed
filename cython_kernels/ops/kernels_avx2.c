/*
 * AVX2 + FMA + F16C kernels. Compiled for every x86 build through target attributes and
 * used only after __builtin_cpu_supports says yes (kernels_matmul.c).
 *
 * Fast mode: a 32-byte load of a group-block is 8 rows x 4 consecutive elements, so
 * maddubs against a broadcast of the 4 matching activation bytes puts row r's partial
 * sums in lane r: no horizontal reductions anywhere. Weight codes are expanded to
 * unsigned bytes (maddubs wants its first operand unsigned); the offset of signed types
 * (q - 8, q - 16, L - 32) is taken out once per block through the activation sums. int16
 * partial sums are widened before they can overflow: 8 products-pairs of 4-bit codes, 4 of
 * 5-bit, 2 of 6-bit, 1 of 8-bit (|y| <= 127 and the bounds are in each function).
 *
 * Panels: the same expansion, one byte per lane shifted out per k, converted to float and
 * scaled with the same operations, in the same order, as ggml_dequant.h (no FMA), so
 * panels are bit-identical to the scalar dequantization.
 */
#include "kernels_x86.h"

#ifdef ONNXQ_X86

AVX2_INLINE float hmax8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}
AVX2_INLINE int32_t hsum8i(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

/* ---------------- activation quantizers ---------------- */

/* Quantize 32 floats with multiplier id (round half to even, as the scalar reference),
 * store 32 int8, return their sum. */
AVX2_INLINE int32_t quant32(const float *x, __m256 id, int8_t *q) {
    __m256i i0 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + 0), id), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    __m256i i1 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + 8), id), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    __m256i i2 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + 16), id), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    __m256i i3 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + 24), id), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    const int32_t sum = hsum8i(_mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3)));
    /* packs works within 128-bit lanes: undo the interleave with one permute */
    const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
    _mm256_storeu_si256((__m256i *)q, _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    return sum;
}

AVX2_INLINE __m256 absmax32(const float *x, __m256 m) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int i = 0; i < 32; i += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)));
    return m;
}

/* x[0 .. n) zero-padded to bs floats in buf when the block is not full. */
static inline const float *block_src(const float *x, int64_t n, int bs, float *buf) {
    if (n >= bs) return x;
    memset(buf, 0, sizeof(float) * (size_t)bs);
    if (n > 0) memcpy(buf, x, sizeof(float) * (size_t)n);
    return buf;
}

AVX2 void onnxq_avx2_quant_q8_0(const float *x, int64_t n, int64_t nb, int8_t *qs, float *d, int32_t *isum) {
    float buf[32];
    for (int64_t b = 0; b < nb; ++b) {
        const float *src = block_src(x + b * 32, n - b * 32, 32, buf);
        const float amax = hmax8(absmax32(src, _mm256_setzero_ps()));
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        d[b] = amax / 127.0f;
        isum[b] = quant32(src, _mm256_set1_ps(id), qs + b * 32);
    }
}

/* ---------------- fast-mode dot products ---------------- */

/* sum_j maddubs(w[j], y[4j..4j+3]) for j in [j0, j1): int16 lanes, caller bounds the count. */
AVX2_INLINE __m256i mb_run(const __m256i *w, const int8_t *y, int j0, int j1) {
    __m256i s = _mm256_maddubs_epi16(w[j0], bcast4(y + 4 * j0));
    ONNXQ_UNROLL
    for (int j = j0 + 1; j < j1; ++j) s = _mm256_add_epi16(s, _mm256_maddubs_epi16(w[j], bcast4(y + 4 * j)));
    return s;
}

AVX2_INLINE void store_acc(const __m256 *acc, int M, float *out) {
    for (int m = 0; m < M; ++m) _mm256_storeu_ps(out + 8 * m, acc[m]);
}

/* Q4_0: codes 0..15; 8 pairs of products <= 8 * 2 * 15 * 128 < 32768 fit int16. */
AVX2_INLINE void dot_q4_0_impl(const uint8_t *g, int64_t nb, const onnxq_qact *a, const int M, float *out) {
    __m256 acc[8];
    for (int m = 0; m < M; ++m) acc[m] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t *gb = g + b * GB_Q4_0_BYTES;
        prefetch_block(gb, GB_Q4_0_BYTES);
        const __m256 dx = ld_half8(gb);
        __m256i w[8];
        ONNXQ_UNROLL
        for (int j = 0; j < 4; ++j) {
            const __m256i v = ld(gb + GB_Q4_0_QS + 32 * j);
            w[j] = lo4(v);
            w[4 + j] = hi4(v);
        }
        for (int m = 0; m < M; ++m) {
            __m256i s = madd1(mb_run(w, a[m].qs + 32 * b, 0, 8));
            s = _mm256_sub_epi32(s, _mm256_slli_epi32(_mm256_set1_epi32(a[m].isum[b]), 3));
            acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dx, _mm256_set1_ps(a[m].d[b])), acc[m]);
        }
    }
    store_acc(acc, M, out);
}

/* Q4_1: as Q4_0 without offset, plus m * s_y. */
AVX2_INLINE void dot_q4_1_impl(const uint8_t *g, int64_t nb, const onnxq_qact *a, const int M, float *out) {
    __m256 acc[8];
    for (int m = 0; m < M; ++m) acc[m] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t *gb = g + b * GB_Q4_1_BYTES;
        prefetch_block(gb, GB_Q4_1_BYTES);
        const __m256 dx = ld_half8(gb), mx = ld_half8(gb + GB_Q4_1_M);
        __m256i w[8];
        ONNXQ_UNROLL
        for (int j = 0; j < 4; ++j) {
            const __m256i v = ld(gb + GB_Q4_1_QS + 32 * j);
            w[j] = lo4(v);
            w[4 + j] = hi4(v);
        }
        for (int m = 0; m < M; ++m) {
            const __m256i s = madd1(mb_run(w, a[m].qs + 32 * b, 0, 8));
            const float dy = a[m].d[b];
            acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dx, _mm256_set1_ps(dy)), acc[m]);
            acc[m] = _mm256_fmadd_ps(mx, _mm256_set1_ps(dy * (float)a[m].isum[b]), acc[m]);
        }
    }
    store_acc(acc, M, out);
}

/* Q5_0/Q5_1 codes: nibble | bit j of the plane at bit 4 (plane bit j = element 4j+t). */
AVX2_INLINE void expand_q5(const uint8_t *qh, const uint8_t *qs, __m256i w[8]) {
    const __m256i h = ld(qh);
    ONNXQ_UNROLL
    for (int j = 0; j < 4; ++j) {
        const __m256i v = ld(qs + 32 * j);
        w[j] = _mm256_or_si256(lo4(v), shr_mask(h, j - 4, 0x10));
        w[4 + j] = _mm256_or_si256(hi4(v), shr_mask(h, j, 0x10));
    }
}

/* Q5_0: codes 0..31, 4 pairs <= 4 * 2 * 31 * 128 < 32768 per int16 sum. */
AVX2_INLINE void dot_q5_0_impl(const uint8_t *g, int64_t nb, const onnxq_qact *a, const int M, float *out) {
    __m256 acc[8];
    for (int m = 0; m < M; ++m) acc[m] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t *gb = g + b * GB_Q5_0_BYTES;
        prefetch_block(gb, GB_Q5_0_BYTES);
        const __m256 dx = ld_half8(gb);
        __m256i w[8];
        expand_q5(gb + GB_Q5_0_QH, gb + GB_Q5_0_QS, w);
        for (int m = 0; m < M; ++m) {
            const int8_t *y = a[m].qs + 32 * b;
            __m256i s = _mm256_add_epi32(madd1(mb_run(w, y, 0, 4)), madd1(mb_run(w, y, 4, 8)));
            s = _mm256_sub_epi32(s, _mm256_slli_epi32(_mm256_set1_epi32(a[m].isum[b]), 4));
            acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dx, _mm256_set1_ps(a[m].d[b])), acc[m]);
        }
    }
    store_acc(acc, M, out);
}

AVX2_INLINE void dot_q5_1_impl(const uint8_t *g, int64_t nb, const onnxq_qact *a, const int M, float *out) {
    __m256 acc[8];
    for (int m = 0; m < M; ++m) acc[m] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t *gb = g + b * GB_Q5_1_BYTES;
        prefetch_block(gb, GB_Q5_1_BYTES);
        const __m256 dx = ld_half8(gb), mx = ld_half8(gb + GB_Q5_1_M);
        __m256i w[8];
        expand_q5(gb + GB_Q5_1_QH, gb + GB_Q5_1_QS, w);
        for (int m = 0; m < M; ++m) {
            const int8_t *y = a[m].qs + 32 * b;
            const __m256i s = _mm256_add_epi32(madd1(mb_run(w, y, 0, 4)), madd1(mb_run(w, y, 4, 8)));
            const float dy = a[m].d[b];
            acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dx, _mm256_set1_ps(dy)), acc[m]);
            acc[m] = _mm256_fmadd_ps(mx, _mm256_set1_ps(dy * (float)a[m].isum[b]), acc[m]);
        }
    }
    store_acc(acc, M, out);
}

/* Q8_0: signed codes; maddubs(|w|, y * sign(w)), one pair of products (<= 2 * 128 * 127) per int16. */
AVX2_INLINE void dot_q8_0_impl(const uint8_t *g, int64_t nb, const onnxq_qact *a, const int M, float *out) {
    __m256 acc[8];
    for (int m = 0; m < M; ++m) acc[m] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t *gb = g + b * GB_Q8_0_BYTES;
        prefetch_block(gb, GB_Q8_0_BYTES);
        const __m256 dx = ld_half8(gb);
        __m256i w[8], aw[8];
        ONNXQ_UNROLL
        for (int j = 0; j < 8; ++j) {
            w[j] = ld(gb + GB_Q8_0_QS + 32 * j);
            aw[j] = _mm256_sign_epi8(w[j], w[j]);
        }
        for (int m = 0; m < M; ++m) {
            const int8_t *y = a[m].qs + 32 * b;
            __m256i s = _mm256_setzero_si256();
            ONNXQ_UNROLL
            for (int j = 0; j < 8; ++j)
                s = _mm256_add_epi32(s, madd1(_mm256_maddubs_epi16(aw[j], _mm256_sign_epi8(bcast4(y + 4 * j), w[j]))));
            acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dx, _mm256_set1_ps(a[m].d[b])), acc[m]);
        }
    }
    store_acc(acc, M, out);
}

/* Q4_K/Q5_K sub-block s (elements 32s .. 32s+31): codes of vector g hold elements 32s+4g+t.
 * qh == NULL for Q4_K. Shift counts come from s at run time (vpsrlw by register), so the
 * sub-block loop needs no unrolling: the masks drop the bits that cross bytes. */
AVX2_INLINE void expand_qk_sub(const uint8_t *qs, const uint8_t *qh, int s, __m256i w[8]) {
    const int c = s >> 1;
    const __m128i nib_shift = _mm_cvtsi32_si128(4 * (s & 1)), bit_shift = _mm_cvtsi32_si128(s);
    ONNXQ_UNROLL
    for (int g = 0; g < 8; ++g) {
        w[g] = _mm256_and_si256(_mm256_srl_epi16(ld(qs + (c * 8 + g) * 32), nib_shift), _mm256_set1_epi8(0x0F));
        if (qh) /* bit s of qh to bit 4 */
            w[g] = _mm256_or_si256(w[g], _mm256_and_si256(_mm256_slli_epi16(_mm256_srl_epi16(ld(qh + g * 32), bit_shift), 4),
                                                          _mm256_set1_epi8(0x10)));
    }
}

/* Q4_K (5-bit: Q5_K) sub-block s: every sub-block is a Q4_1 (Q5_1) block with d = ds, m = -ms:
 * acc = fma(cvt(dot), ds * dy, acc); acc = fnma(ms, dy * isum, acc), dy and isum the activation
 * block's (kernels_impl.h). 4-bit codes: 8 pairs fit int16; 5-bit: 4. */
AVX2_INLINE void qk_sub(const uint8_t *gb, const uint8_t *qs, const uint8_t *qh, int s, const onnxq_qact *a, int64_t b,
                        const int M, const int is_q5, const float *dyis, __m256 *acc) {
    __m256i w[8];
    expand_qk_sub(qs, qh, s, w);
    const __m256 ds = qk_ds(gb, s), ms = qk_ms(gb, s);
    const int64_t ab = 8 * b + s;
    for (int m = 0; m < M; ++m) {
        const int8_t *y = a[m].qs + 32 * ab;
        const __m256i sum = is_q5 ? _mm256_add_epi32(madd1(mb_run(w, y, 0, 4)), madd1(mb_run(w, y, 4, 8)))
                                  : madd1(mb_run(w, y, 0, 8));
        const float dy = a[m].d[ab];
        acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_mul_ps(ds, _mm256_set1_ps(dy)), acc[m]);
        acc[m] = _mm256_fnmadd_ps(ms, _mm256_broadcast_ss(dyis + 8 * m + s), acc[m]);
    }
}

AVX2_INLINE void dot_qk_impl(const uint8_t *g, int64_t nb, const onnxq_qact *a, const int M, float *out,
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
        if (M == 1) { /* decode: unrolled, the sub-blocks overlap in the pipeline */
            ONNXQ_UNROLL
            for (int s = 0; s < 8; ++s) qk_sub(gb, qs, qh, s, a, b, M, is_q5, dyis, acc);
        } else {
            for (int s = 0; s < 8; ++s) qk_sub(gb, qs, qh, s, a, b, M, is_q5, dyis, acc);
        }
    }
    store_acc(acc, M, out);
}

/* Q6_K codes L (0..63) of quarter q (elements 128h + 32q + 4g + t) for the 8 g; run-time
 * shift counts as in expand_qk_sub. */
AVX2_INLINE void expand_q6_quarter(const uint8_t *gb, int h, int q, __m256i w[8]) {
    const uint8_t *ql = gb + GB_Q6_K_QL + (h * 2 + (q & 1)) * 256;
    const uint8_t *qh = gb + GB_Q6_K_QH + h * 256;
    const __m128i nib_shift = _mm_cvtsi32_si128(q < 2 ? 0 : 4), bit_shift = _mm_cvtsi32_si128(2 * q);
    ONNXQ_UNROLL
    for (int g = 0; g < 8; ++g) {
        const __m256i lo = _mm256_and_si256(_mm256_srl_epi16(ld(ql + 32 * g), nib_shift), _mm256_set1_epi8(0x0F));
        const __m256i hi = _mm256_and_si256(_mm256_slli_epi16(_mm256_srl_epi16(ld(qh + 32 * g), bit_shift), 4),
                                            _mm256_set1_epi8(0x30));
        w[g] = _mm256_or_si256(lo, hi);
    }
}

/* Quarter (h, q) is 32-element block s = 4h + q, sub-blocks 2s and 2s + 1 of 16: 2 pairs of 6-bit
 * products per int16 (<= 4 * 63 * 127), scaled while widened, then the offset 32 * sum sc * bsum16:
 * acc = fma(cvt(isum), d * dy, acc) (kernels_impl.h). */
AVX2_INLINE void q6_quarter(const uint8_t *gb, int h, int q, const onnxq_qact *a, int64_t b, const int M, __m256 *acc) {
    __m256i w[8];
    expand_q6_quarter(gb, h, q, w);
    const int s = 4 * h + q;
    const __m256i sc0 = q6_scale_dup(gb + GB_Q6_K_SC, 2 * s), sc1 = q6_scale_dup(gb + GB_Q6_K_SC, 2 * s + 1);
    const __m256 d = ld_half8(gb);
    const int64_t ab = 8 * b + s;
    for (int m = 0; m < M; ++m) {
        const int8_t *y = a[m].qs + 32 * ab;
        const __m256i u0 = _mm256_add_epi32(_mm256_madd_epi16(mb_run(w, y, 0, 2), sc0),
                                            _mm256_madd_epi16(mb_run(w, y, 2, 4), sc0));
        const __m256i u1 = _mm256_add_epi32(_mm256_madd_epi16(mb_run(w, y, 4, 6), sc1),
                                            _mm256_madd_epi16(mb_run(w, y, 6, 8), sc1));
        const __m256i off = q6_offset(gb + GB_Q6_K_SC, s, a[m].bsum16 + 16 * b);
        const __m256i isum = _mm256_sub_epi32(_mm256_add_epi32(u0, u1), _mm256_slli_epi32(off, 5));
        acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(d, _mm256_set1_ps(a[m].d[ab])), acc[m]);
    }
}

AVX2_INLINE void dot_q6_K_impl(const uint8_t *g, int64_t nb, const onnxq_qact *a, const int M, float *out) {
    __m256 acc[8];
    for (int m = 0; m < M; ++m) acc[m] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t *gb = g + b * GB_Q6_K_BYTES;
        prefetch_block(gb, GB_Q6_K_BYTES);
        if (M == 1) { /* decode: unrolled, the quarters overlap in the pipeline */
            ONNXQ_UNROLL
            for (int hq = 0; hq < 8; ++hq) q6_quarter(gb, hq >> 2, hq & 3, a, b, M, acc);
        } else {
            for (int hq = 0; hq < 8; ++hq) q6_quarter(gb, hq >> 2, hq & 3, a, b, M, acc);
        }
    }
    store_acc(acc, M, out);
}

/* One row is the decode case and 8 rows the prefill chunk: give the compiler M as a constant. */
#define DOT_ENTRY(name, call1, call8, callM)                                                                  \
    static AVX2 void name(const uint8_t *g, int64_t nb, const onnxq_qact *a, int M, float *out) {      \
        if (M == 1) call1;                                                                             \
        else if (M == 8) call8;                                                                        \
        else callM;                                                                 \
    }
DOT_ENTRY(dot_q4_0, dot_q4_0_impl(g, nb, a, 1, out), dot_q4_0_impl(g, nb, a, 8, out), dot_q4_0_impl(g, nb, a, M, out))
DOT_ENTRY(dot_q4_1, dot_q4_1_impl(g, nb, a, 1, out), dot_q4_1_impl(g, nb, a, 8, out), dot_q4_1_impl(g, nb, a, M, out))
DOT_ENTRY(dot_q5_0, dot_q5_0_impl(g, nb, a, 1, out), dot_q5_0_impl(g, nb, a, 8, out), dot_q5_0_impl(g, nb, a, M, out))
DOT_ENTRY(dot_q5_1, dot_q5_1_impl(g, nb, a, 1, out), dot_q5_1_impl(g, nb, a, 8, out), dot_q5_1_impl(g, nb, a, M, out))
DOT_ENTRY(dot_q8_0, dot_q8_0_impl(g, nb, a, 1, out), dot_q8_0_impl(g, nb, a, 8, out), dot_q8_0_impl(g, nb, a, M, out))
DOT_ENTRY(dot_q4_K, dot_qk_impl(g, nb, a, 1, out, 0), dot_qk_impl(g, nb, a, 8, out, 0), dot_qk_impl(g, nb, a, M, out, 0))
DOT_ENTRY(dot_q5_K, dot_qk_impl(g, nb, a, 1, out, 1), dot_qk_impl(g, nb, a, 8, out, 1), dot_qk_impl(g, nb, a, M, out, 1))
DOT_ENTRY(dot_q6_K, dot_q6_K_impl(g, nb, a, 1, out), dot_q6_K_impl(g, nb, a, 8, out), dot_q6_K_impl(g, nb, a, M, out))

/* ---------------- panels (dequantization) ---------------- */

/* Byte t of every lane of codes v as int32. */
AVX2_INLINE __m256i byte_u(__m256i v, int t) {
    return t == 3 ? _mm256_srli_epi32(v, 24) : _mm256_and_si256(_mm256_srli_epi32(v, 8 * t), _mm256_set1_epi32(0xFF));
}
AVX2_INLINE __m256i byte_s(__m256i v, int t) { return _mm256_srai_epi32(_mm256_slli_epi32(v, 24 - 8 * t), 24); }

/* Elements 4j..4j+3 of w[j], j < nj, as (float)(q - off) * d (+ m when m != NULL), ggml's order. */
AVX2_INLINE void panel_codes(const __m256i *w, int nj, int off, __m256 d, const __m256 *m, float *p) {
    ONNXQ_UNROLL
    for (int j = 0; j < nj; ++j)
        ONNXQ_UNROLL
        for (int t = 0; t < 4; ++t) {
            const __m256i q = _mm256_sub_epi32(byte_u(w[j], t), _mm256_set1_epi32(off));
            __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(q), d);
            if (m) v = _mm256_add_ps(v, *m);
            _mm256_storeu_ps(p + (4 * j + t) * 8, v);
        }
}

AVX2 void onnxq_avx2_panel_q4_0(const uint8_t *gb, int64_t nblk, float *p) {
    for (int64_t b = 0; b < nblk; ++b, gb += GB_Q4_0_BYTES, p += 256) {
        __m256i w[8];
        ONNXQ_UNROLL
        for (int j = 0; j < 4; ++j) {
            const __m256i v = ld(gb + GB_Q4_0_QS + 32 * j);
            w[j] = lo4(v);
            w[4 + j] = hi4(v);
        }
        panel_codes(w, 8, 8, ld_half8(gb), NULL, p);
    }
}
AVX2 void onnxq_avx2_panel_q4_1(const uint8_t *gb, int64_t nblk, float *p) {
    for (int64_t b = 0; b < nblk; ++b, gb += GB_Q4_1_BYTES, p += 256) {
        __m256i w[8];
        ONNXQ_UNROLL
        for (int j = 0; j < 4; ++j) {
            const __m256i v = ld(gb + GB_Q4_1_QS + 32 * j);
            w[j] = lo4(v);
            w[4 + j] = hi4(v);
        }
        const __m256 m = ld_half8(gb + GB_Q4_1_M);
        panel_codes(w, 8, 0, ld_half8(gb), &m, p);
    }
}
AVX2 void onnxq_avx2_panel_q5_0(const uint8_t *gb, int64_t nblk, float *p) {
    for (int64_t b = 0; b < nblk; ++b, gb += GB_Q5_0_BYTES, p += 256) {
        __m256i w[8];
        expand_q5(gb + GB_Q5_0_QH, gb + GB_Q5_0_QS, w);
        panel_codes(w, 8, 16, ld_half8(gb), NULL, p);
    }
}
AVX2 void onnxq_avx2_panel_q5_1(const uint8_t *gb, int64_t nblk, float *p) {
    for (int64_t b = 0; b < nblk; ++b, gb += GB_Q5_1_BYTES, p += 256) {
        __m256i w[8];
        expand_q5(gb + GB_Q5_1_QH, gb + GB_Q5_1_QS, w);
        const __m256 m = ld_half8(gb + GB_Q5_1_M);
        panel_codes(w, 8, 0, ld_half8(gb), &m, p);
    }
}
AVX2 void onnxq_avx2_panel_q8_0(const uint8_t *gb, int64_t nblk, float *p) {
    for (int64_t b = 0; b < nblk; ++b, gb += GB_Q8_0_BYTES, p += 256) {
        const __m256 d = ld_half8(gb);
        ONNXQ_UNROLL
        for (int j = 0; j < 8; ++j) {
            const __m256i v = ld(gb + GB_Q8_0_QS + 32 * j);
            ONNXQ_UNROLL
            for (int t = 0; t < 4; ++t)
                _mm256_storeu_ps(p + (4 * j + t) * 8, _mm256_mul_ps(_mm256_cvtepi32_ps(byte_s(v, t)), d));
        }
    }
}

/* d1 * q - m1 with d1 = d * sc, m1 = dmin * m per sub-block, as ggml_dequant.h. */
AVX2_INLINE void panel_qk(const uint8_t *gb, int64_t nblk, float *p, const int is_q5) {
    const int64_t gbytes = is_q5 ? GB_Q5_K_BYTES : GB_Q4_K_BYTES;
    for (int64_t b = 0; b < nblk; ++b, gb += gbytes, p += QK_K * 8) {
        const uint8_t *qs = gb + (is_q5 ? GB_Q5_K_QS : GB_Q4_K_QS);
        const uint8_t *qh = is_q5 ? gb + GB_Q5_K_QH : NULL;
        ONNXQ_UNROLL
        for (int s = 0; s < 8; ++s) {
            __m256i w[8];
            expand_qk_sub(qs, qh, s, w);
            const __m256 d1 = qk_ds(gb, s), m1 = qk_ms(gb, s);
            ONNXQ_UNROLL
            for (int gi = 0; gi < 8; ++gi)
                ONNXQ_UNROLL
                for (int t = 0; t < 4; ++t) {
                    const __m256 q = _mm256_cvtepi32_ps(byte_u(w[gi], t));
                    _mm256_storeu_ps(p + (32 * s + 4 * gi + t) * 8, _mm256_sub_ps(_mm256_mul_ps(d1, q), m1));
                }
        }
    }
}
AVX2 void onnxq_avx2_panel_q4_K(const uint8_t *gb, int64_t nblk, float *p) { panel_qk(gb, nblk, p, 0); }
AVX2 void onnxq_avx2_panel_q5_K(const uint8_t *gb, int64_t nblk, float *p) { panel_qk(gb, nblk, p, 1); }

/* d * sc * (L - 32), as ggml_dequant.h: (d * sc) first. */
AVX2 void onnxq_avx2_panel_q6_K(const uint8_t *gb, int64_t nblk, float *p) {
    for (int64_t b = 0; b < nblk; ++b, gb += GB_Q6_K_BYTES, p += QK_K * 8) {
        const __m256 d = ld_half8(gb);
        ONNXQ_UNROLL
        for (int h = 0; h < 2; ++h)
            ONNXQ_UNROLL
            for (int q = 0; q < 4; ++q) {
                __m256i w[8];
                expand_q6_quarter(gb, h, q, w);
                const int s0 = 8 * h + 2 * q;
                const __m256 ds0 = _mm256_mul_ps(d, _mm256_cvtepi32_ps(q6_scale(gb + GB_Q6_K_SC, s0)));
                const __m256 ds1 = _mm256_mul_ps(d, _mm256_cvtepi32_ps(q6_scale(gb + GB_Q6_K_SC, s0 + 1)));
                ONNXQ_UNROLL
                for (int gi = 0; gi < 8; ++gi)
                    ONNXQ_UNROLL
                    for (int t = 0; t < 4; ++t) {
                        const __m256i L = _mm256_sub_epi32(byte_u(w[gi], t), _mm256_set1_epi32(32));
                        const __m256 v = _mm256_mul_ps(gi < 4 ? ds0 : ds1, _mm256_cvtepi32_ps(L));
                        _mm256_storeu_ps(p + (128 * h + 32 * q + 4 * gi + t) * 8, v);
                    }
            }
    }
}

/* ---------------- float products ---------------- */

/* ---------------- exact mode, few rows: fused dequantize-and-dot ---------------- */

/* Row sums (lane r) of code(w[j], t) * x_m[4j + t] for j in [j0, j1), t < 4, into r[m];
 * signed codes when sgn. C independent chains per row keep the FMA latency covered. */
AVX2_INLINE void fdot_run(const __m256i *w, int j0, int j1, const int sgn, const float *x, int64_t ldx, const int M,
                          __m256 *r) {
    const int C = M == 1 ? 4 : M == 2 ? 2 : 1;
    __m256 s[8];
    for (int i = 0; i < M * C; ++i) s[i] = _mm256_setzero_ps();
    ONNXQ_UNROLL
    for (int j = j0; j < j1; ++j) {
        ONNXQ_UNROLL
        for (int t = 0; t < 4; ++t) {
            const __m256 q = _mm256_cvtepi32_ps(sgn ? byte_s(w[j], t) : byte_u(w[j], t));
            for (int m = 0; m < M; ++m)
                s[m * C + t % C] = _mm256_fmadd_ps(q, _mm256_broadcast_ss(x + m * ldx + 4 * j + t), s[m * C + t % C]);
        }
    }
    for (int m = 0; m < M; ++m) {
        __m256 v = s[m * C];
        for (int c = 1; c < C; ++c) v = _mm256_add_ps(v, s[m * C + c]);
        r[m] = v;
    }
}

/* 32-element types: codes of block b in w (signed: q - offset), then
 * acc += (sum q*x) * d  (+ m * sum x for Q4_1/Q5_1). */
AVX2_INLINE void fdot32_impl(int type, const uint8_t *g, int64_t nb, const float *x, int64_t ldx, const float *xsum,
                             int64_t ldsum, const int M, float *out) {
    const int64_t gbytes = onnxq_group_block_bytes(type);
    const int asym = type == ONNXQ_TYPE_Q4_1 || type == ONNXQ_TYPE_Q5_1;
    __m256 acc[8];
    for (int m = 0; m < M; ++m) acc[m] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t *gb = g + b * gbytes;
        prefetch_block(gb, gbytes);
        __m256i w[8];
        if (type == ONNXQ_TYPE_Q8_0) {
            ONNXQ_UNROLL
            for (int j = 0; j < 8; ++j) w[j] = ld(gb + GB_Q8_0_QS + 32 * j);
        } else if (type == ONNXQ_TYPE_Q5_0 || type == ONNXQ_TYPE_Q5_1) {
            expand_q5(gb + (asym ? GB_Q5_1_QH : GB_Q5_0_QH), gb + (asym ? GB_Q5_1_QS : GB_Q5_0_QS), w);
        } else {
            const uint8_t *qs = gb + (asym ? GB_Q4_1_QS : GB_Q4_0_QS);
            ONNXQ_UNROLL
            for (int j = 0; j < 4; ++j) {
                const __m256i v = ld(qs + 32 * j);
                w[j] = lo4(v);
                w[4 + j] = hi4(v);
            }
        }
        if (type == ONNXQ_TYPE_Q4_0 || type == ONNXQ_TYPE_Q5_0) {
            const __m256i off = _mm256_set1_epi8(type == ONNXQ_TYPE_Q4_0 ? 8 : 16);
            ONNXQ_UNROLL
            for (int j = 0; j < 8; ++j) w[j] = _mm256_sub_epi8(w[j], off);
        }
        __m256 r[8];
        fdot_run(w, 0, 8, !asym, x + 32 * b, ldx, M, r);
        const __m256 d = ld_half8(gb);
        for (int m = 0; m < M; ++m) acc[m] = _mm256_fmadd_ps(r[m], d, acc[m]);
        if (asym) {
            const __m256 mn = ld_half8(gb + (type == ONNXQ_TYPE_Q4_1 ? GB_Q4_1_M : GB_Q5_1_M));
            for (int m = 0; m < M; ++m) acc[m] = _mm256_fmadd_ps(mn, _mm256_broadcast_ss(xsum + m * ldsum + b), acc[m]);
        }
    }
    store_acc(acc, M, out);
}

/* Q4_K/Q5_K: per sub-block s, acc += (sum q*x) * (d*sc_s) - (dmin*m_s) * sum x. */
AVX2_INLINE void fdot_qk_impl(const uint8_t *g, int64_t nb, const float *x, int64_t ldx, const float *xsum,
                              int64_t ldsum, const int M, float *out, const int is_q5) {
    const int64_t gbytes = is_q5 ? GB_Q5_K_BYTES : GB_Q4_K_BYTES;
    __m256 acc[8];
    for (int m = 0; m < M; ++m) acc[m] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t *gb = g + b * gbytes;
        prefetch_block(gb, gbytes);
        const uint8_t *qs = gb + (is_q5 ? GB_Q5_K_QS : GB_Q4_K_QS);
        const uint8_t *qh = is_q5 ? gb + GB_Q5_K_QH : NULL;
        for (int s = 0; s < 8; ++s) {
            __m256i w[8];
            expand_qk_sub(qs, qh, s, w);
            __m256 r[8];
            fdot_run(w, 0, 8, 0, x + QK_K * b + 32 * s, ldx, M, r);
            const __m256 d1 = qk_ds(gb, s), m1 = qk_ms(gb, s);
            for (int m = 0; m < M; ++m) {
                acc[m] = _mm256_fmadd_ps(r[m], d1, acc[m]);
                acc[m] = _mm256_fnmadd_ps(m1, _mm256_broadcast_ss(xsum + m * ldsum + 8 * b + s), acc[m]);
            }
        }
    }
    store_acc(acc, M, out);
}

/* Q6_K: per sub-block of 16, acc += (sum (L-32)*x) * (d*sc_s). */
AVX2_INLINE void fdot_q6_K_impl(const uint8_t *g, int64_t nb, const float *x, int64_t ldx, const int M, float *out) {
    __m256 acc[8];
    for (int m = 0; m < M; ++m) acc[m] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t *gb = g + b * GB_Q6_K_BYTES;
        prefetch_block(gb, GB_Q6_K_BYTES);
        const __m256 d = ld_half8(gb);
        for (int h = 0; h < 2; ++h) {
            for (int q = 0; q < 4; ++q) {
                __m256i w[8];
                expand_q6_quarter(gb, h, q, w);
                ONNXQ_UNROLL
                for (int j = 0; j < 8; ++j) w[j] = _mm256_sub_epi8(w[j], _mm256_set1_epi8(32));
                const int s0 = 8 * h + 2 * q;
                const float *xq = x + QK_K * b + 128 * h + 32 * q;
                __m256 r0[8], r1[8];
                fdot_run(w, 0, 4, 1, xq, ldx, M, r0);
                fdot_run(w, 4, 8, 1, xq, ldx, M, r1);
                const __m256 ds0 = _mm256_mul_ps(d, _mm256_cvtepi32_ps(q6_scale(gb + GB_Q6_K_SC, s0)));
                const __m256 ds1 = _mm256_mul_ps(d, _mm256_cvtepi32_ps(q6_scale(gb + GB_Q6_K_SC, s0 + 1)));
                for (int m = 0; m < M; ++m) acc[m] = _mm256_fmadd_ps(r1[m], ds1, _mm256_fmadd_ps(r0[m], ds0, acc[m]));
            }
        }
    }
    store_acc(acc, M, out);
}

/* R rows at once with U independent accumulators per row (R * U = 8 chains cover FMA latency). */
AVX2_INLINE void gemv_rows(const float *panel, int64_t kc, const float *x, int64_t ldx, const int R, float *acc) {
    const int U = 8 / R;
    __m256 c[8];
    for (int i = 0; i < 8; ++i) c[i] = _mm256_setzero_ps();
    for (int64_t k = 0; k + U <= kc; k += U)
        for (int u = 0; u < U; ++u) {
            const __m256 p = _mm256_loadu_ps(panel + (k + u) * 8);
            for (int r = 0; r < R; ++r) c[r * U + u] = _mm256_fmadd_ps(p, _mm256_broadcast_ss(x + r * ldx + k + u), c[r * U + u]);
        }
    for (int r = 0; r < R; ++r) {
        __m256 v = c[r * U];
        for (int u = 1; u < U; ++u) v = _mm256_add_ps(v, c[r * U + u]);
        _mm256_storeu_ps(acc + 8 * r, _mm256_add_ps(_mm256_loadu_ps(acc + 8 * r), v));
    }
}

/* 3 to 8 rows: the fused loop would have too few FMA chains per row; dequantize 256
 * elements into a panel (L1) and multiply it with all rows, 4 at a time. kc is a multiple of 8. */
AVX2_INLINE void fdot_by_panels(onnxq_panel_fn panel, int bs, int64_t gbytes, const uint8_t *g, int64_t nb,
                                const float *x, int64_t ldx, int M, float *out) {
    float p[QK_K * 8] __attribute__((aligned(32)));
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

/* 1 or 2 rows: fused, each a compile-time count so the accumulators stay in registers. */
#define FDOT_ENTRY(name, impl_call, panel_fn, bs, gbytes)                                                        \
    AVX2 void name(const uint8_t *g, int64_t nb, const float *x, int64_t ldx, const float *xsum, int64_t ldsum, \
                   int M, float *out) {                                                                          \
        if (M > 2) {                                                                                             \
            fdot_by_panels(panel_fn, bs, gbytes, g, nb, x, ldx, M, out);                                         \
            return;                                                                                              \
        }                                                                                                        \
        const int m0 = 0;                                                                                        \
        if (M == 2) impl_call(2);                                                                                \
        else impl_call(1);                                                                                       \
    }
#define CALL_Q4_0(R) fdot32_impl(ONNXQ_TYPE_Q4_0, g, nb, x + m0 * ldx, ldx, xsum + m0 * ldsum, ldsum, R, out + 8 * m0)
#define CALL_Q4_1(R) fdot32_impl(ONNXQ_TYPE_Q4_1, g, nb, x + m0 * ldx, ldx, xsum + m0 * ldsum, ldsum, R, out + 8 * m0)
#define CALL_Q5_0(R) fdot32_impl(ONNXQ_TYPE_Q5_0, g, nb, x + m0 * ldx, ldx, xsum + m0 * ldsum, ldsum, R, out + 8 * m0)
#define CALL_Q5_1(R) fdot32_impl(ONNXQ_TYPE_Q5_1, g, nb, x + m0 * ldx, ldx, xsum + m0 * ldsum, ldsum, R, out + 8 * m0)
#define CALL_Q8_0(R) fdot32_impl(ONNXQ_TYPE_Q8_0, g, nb, x + m0 * ldx, ldx, xsum + m0 * ldsum, ldsum, R, out + 8 * m0)
#define CALL_Q4_K(R) fdot_qk_impl(g, nb, x + m0 * ldx, ldx, xsum + m0 * ldsum, ldsum, R, out + 8 * m0, 0)
#define CALL_Q5_K(R) fdot_qk_impl(g, nb, x + m0 * ldx, ldx, xsum + m0 * ldsum, ldsum, R, out + 8 * m0, 1)
#define CALL_Q6_K(R) ((void)xsum, (void)ldsum, fdot_q6_K_impl(g, nb, x + m0 * ldx, ldx, R, out + 8 * m0)) /* no min term */
FDOT_ENTRY(onnxq_avx2_fdot_q4_0, CALL_Q4_0, onnxq_avx2_panel_q4_0, 32, GB_Q4_0_BYTES)
FDOT_ENTRY(onnxq_avx2_fdot_q4_1, CALL_Q4_1, onnxq_avx2_panel_q4_1, 32, GB_Q4_1_BYTES)
FDOT_ENTRY(onnxq_avx2_fdot_q5_0, CALL_Q5_0, onnxq_avx2_panel_q5_0, 32, GB_Q5_0_BYTES)
FDOT_ENTRY(onnxq_avx2_fdot_q5_1, CALL_Q5_1, onnxq_avx2_panel_q5_1, 32, GB_Q5_1_BYTES)
FDOT_ENTRY(onnxq_avx2_fdot_q8_0, CALL_Q8_0, onnxq_avx2_panel_q8_0, 32, GB_Q8_0_BYTES)
FDOT_ENTRY(onnxq_avx2_fdot_q4_K, CALL_Q4_K, onnxq_avx2_panel_q4_K, QK_K, GB_Q4_K_BYTES)
FDOT_ENTRY(onnxq_avx2_fdot_q5_K, CALL_Q5_K, onnxq_avx2_panel_q5_K, QK_K, GB_Q5_K_BYTES)
FDOT_ENTRY(onnxq_avx2_fdot_q6_K, CALL_Q6_K, onnxq_avx2_panel_q6_K, QK_K, GB_Q6_K_BYTES)

/* 6 x 16 register tile: 12 accumulators, 2 panel vectors, 1 broadcast. */
AVX2 void onnxq_avx2_ukernel(int64_t kc, const float *const xrows[ONNXQ_MR], const float *pa, const float *pb, float *c,
                         int64_t ldc, int accumulate, const float *bias) {
    __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps(), c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
    __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps(), c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
    __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps(), c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
    const float *x0 = xrows[0], *x1 = xrows[1], *x2 = xrows[2], *x3 = xrows[3], *x4 = xrows[4], *x5 = xrows[5];
    /* C is needed only at the end: start fetching it now (its rows are far apart, in L3) */
    for (int i = 0; i < ONNXQ_MR; ++i) {
        _mm_prefetch((const char *)(c + i * ldc), _MM_HINT_T0);
        _mm_prefetch((const char *)(c + i * ldc + 15), _MM_HINT_T0);
    }
#define ONNXQ_UK_STEP(k)                                                                                     \
    do {                                                                                                     \
        const __m256 b0 = _mm256_loadu_ps(pa + 8 * (k)), b1 = _mm256_loadu_ps(pb + 8 * (k));                 \
        __m256 a;                                                                                            \
        a = _mm256_broadcast_ss(x0 + (k)); c00 = _mm256_fmadd_ps(a, b0, c00); c01 = _mm256_fmadd_ps(a, b1, c01); \
        a = _mm256_broadcast_ss(x1 + (k)); c10 = _mm256_fmadd_ps(a, b0, c10); c11 = _mm256_fmadd_ps(a, b1, c11); \
        a = _mm256_broadcast_ss(x2 + (k)); c20 = _mm256_fmadd_ps(a, b0, c20); c21 = _mm256_fmadd_ps(a, b1, c21); \
        a = _mm256_broadcast_ss(x3 + (k)); c30 = _mm256_fmadd_ps(a, b0, c30); c31 = _mm256_fmadd_ps(a, b1, c31); \
        a = _mm256_broadcast_ss(x4 + (k)); c40 = _mm256_fmadd_ps(a, b0, c40); c41 = _mm256_fmadd_ps(a, b1, c41); \
        a = _mm256_broadcast_ss(x5 + (k)); c50 = _mm256_fmadd_ps(a, b0, c50); c51 = _mm256_fmadd_ps(a, b1, c51); \
    } while (0)
    int64_t k = 0;
    for (; k + 4 <= kc; k += 4) {
        ONNXQ_UK_STEP(k);
        ONNXQ_UK_STEP(k + 1);
        ONNXQ_UK_STEP(k + 2);
        ONNXQ_UK_STEP(k + 3);
    }
    for (; k < kc; ++k) ONNXQ_UK_STEP(k);
#undef ONNXQ_UK_STEP
    __m256 *acc[12] = {&c00, &c01, &c10, &c11, &c20, &c21, &c30, &c31, &c40, &c41, &c50, &c51};
    for (int i = 0; i < ONNXQ_MR; ++i)
        for (int h = 0; h < 2; ++h) {
            float *ci = c + i * ldc + 8 * h;
            __m256 v = *acc[2 * i + h];
            if (accumulate) v = _mm256_add_ps(v, _mm256_loadu_ps(ci));
            else if (bias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias + 8 * h));
            _mm256_storeu_ps(ci, v);
        }
}

/* ---------------- integer GEMM panels (shared by every x86 level) ---------------- */

/* Vector v of group slot gi in a panel block (v counts codes steps first, then f0, f1, sc, pr). */
static inline uint8_t *pslot(uint8_t *pb, int ng, int v, int gi) { return pb + ((int64_t)v * ng + gi) * 32; }

AVX2_INLINE void put_codes(uint8_t *pb, int ng, int gi, int ks0, const __m256i *w, int nw) {
    for (int i = 0; i < nw; ++i) _mm256_storeu_si256((__m256i *)pslot(pb, ng, ks0 + i, gi), w[i]);
}

/* One group-block gb into slot gi of panel block pb (layout in kernels_impl.h). */
AVX2_INLINE void gexpand_block(const int type, const uint8_t *gb, uint8_t *pb, int ng, int gi) {
    const onnxq_igemm_shape sh = onnxq_igemm_shape_of(type);
    __m256i w[8];
    if (sh.nsub == 0) _mm256_storeu_ps((float *)pslot(pb, ng, sh.nks, gi), ld_half8(gb)); /* 32-element types: d */
    switch (type) {
    case ONNXQ_TYPE_Q4_0:
    case ONNXQ_TYPE_Q4_1: {
        const uint8_t *qs = gb + (type == ONNXQ_TYPE_Q4_0 ? GB_Q4_0_QS : GB_Q4_1_QS);
        ONNXQ_UNROLL
        for (int j = 0; j < 4; ++j) {
            const __m256i v = ld(qs + 32 * j);
            w[j] = lo4(v);
            w[4 + j] = hi4(v);
        }
        put_codes(pb, ng, gi, 0, w, 8);
        if (type == ONNXQ_TYPE_Q4_1) _mm256_storeu_ps((float *)pslot(pb, ng, sh.nks + 1, gi), ld_half8(gb + GB_Q4_1_M));
        break;
    }
    case ONNXQ_TYPE_Q5_0: expand_q5(gb + GB_Q5_0_QH, gb + GB_Q5_0_QS, w); put_codes(pb, ng, gi, 0, w, 8); break;
    case ONNXQ_TYPE_Q5_1:
        expand_q5(gb + GB_Q5_1_QH, gb + GB_Q5_1_QS, w);
        put_codes(pb, ng, gi, 0, w, 8);
        _mm256_storeu_ps((float *)pslot(pb, ng, sh.nks + 1, gi), ld_half8(gb + GB_Q5_1_M));
        break;
    case ONNXQ_TYPE_Q8_0: /* biased to unsigned; the kernels take 128 * sum(y) back out */
        for (int j = 0; j < 8; ++j) w[j] = _mm256_xor_si256(ld(gb + GB_Q8_0_QS + 32 * j), _mm256_set1_epi8((char)0x80));
        put_codes(pb, ng, gi, 0, w, 8);
        break;
    case ONNXQ_TYPE_Q4_K:
    case ONNXQ_TYPE_Q5_K: {
        const int q5 = type == ONNXQ_TYPE_Q5_K;
        for (int s = 0; s < 8; ++s) {
            expand_qk_sub(gb + (q5 ? GB_Q5_K_QS : GB_Q4_K_QS), q5 ? gb + GB_Q5_K_QH : NULL, s, w);
            put_codes(pb, ng, gi, 8 * s, w, 8);
            _mm256_storeu_ps((float *)pslot(pb, ng, IGK_DS + s, gi), qk_ds(gb, s));
        }
        _mm256_storeu_ps((float *)pslot(pb, ng, IGK_DMIN, gi), ld_half8(gb + GB_QK_DMIN));
        uint8_t *mn = igk_mins(pb, ng) + 8 * gi;
        for (int s = 0; s < 8; ++s)
            for (int r = 0; r < 8; ++r) mn[s * ng * 8 + r] = gb[GB_QK_MN + ((s >> 1) * 8 + r) * 2 + (s & 1)];
        break;
    }
    default: /* Q6_K */
        _mm256_storeu_ps((float *)pslot(pb, ng, IGK_Q6_D, gi), ld_half8(gb));
        for (int hq = 0; hq < 8; ++hq) {
            expand_q6_quarter(gb, hq >> 2, hq & 3, w);
            put_codes(pb, ng, gi, 8 * hq, w, 8);
            const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(gb + GB_Q6_K_SC + 16 * hq)));
            _mm256_storeu_si256((__m256i *)pslot(pb, ng, IGK_Q6_SC + 3 * hq, gi), q6_scale_dup(gb + GB_Q6_K_SC, 2 * hq));
            _mm256_storeu_si256((__m256i *)pslot(pb, ng, IGK_Q6_SC + 3 * hq + 1, gi), q6_scale_dup(gb + GB_Q6_K_SC, 2 * hq + 1));
            _mm256_storeu_si256((__m256i *)pslot(pb, ng, IGK_Q6_SC + 3 * hq + 2, gi), _mm256_slli_epi16(sc16, 5)); /* 32 * sc */
        }
        break;
    }
}

AVX2_INLINE void gexpand_impl(const int type, const uint8_t *gd, int64_t gstride, int nvalid, int ng, int64_t b0,
                              int64_t nblk, uint8_t *panel) {
    const int64_t gbytes = onnxq_group_block_bytes(type), pbytes = onnxq_igemm_block_bytes(type, ng);
    for (int64_t b = 0; b < nblk; ++b) {
        uint8_t *pb = panel + b * pbytes;
        /* padding groups: zero codes and scales, their columns are never stored */
        if (nvalid < ng) memset(pb, 0, (size_t)pbytes);
        for (int gi = 0; gi < nvalid; ++gi) gexpand_block(type, gd + gi * gstride + (b0 + b) * gbytes, pb, ng, gi);
    }
}

#define GEXPAND_ENTRY(t, TYPE)                                                                              \
    AVX2 void onnxq_avx2_gexpand_##t(const uint8_t *gd, int64_t gstride, int nvalid, int ng, int64_t b0, \
                                     int64_t nblk, uint8_t *panel) {                                      \
        gexpand_impl(TYPE, gd, gstride, nvalid, ng, b0, nblk, panel);                                     \
    }
GEXPAND_ENTRY(q4_0, ONNXQ_TYPE_Q4_0)
GEXPAND_ENTRY(q4_1, ONNXQ_TYPE_Q4_1)
GEXPAND_ENTRY(q5_0, ONNXQ_TYPE_Q5_0)
GEXPAND_ENTRY(q5_1, ONNXQ_TYPE_Q5_1)
GEXPAND_ENTRY(q8_0, ONNXQ_TYPE_Q8_0)
GEXPAND_ENTRY(q4_K, ONNXQ_TYPE_Q4_K)
GEXPAND_ENTRY(q5_K, ONNXQ_TYPE_Q5_K)
GEXPAND_ENTRY(q6_K, ONNXQ_TYPE_Q6_K)
#undef GEXPAND_ENTRY

/* AVX-VNNI (VEX vpdpbusd on ymm, 16 registers): 4 rows x 16 columns, one instruction per step. */
#ifdef ONNXQ_EMULATE_VNNI
/* Test builds only (tests/native/emulate_avx512.py runs this table too): an exact vpdpbusd from
 * AVX2, and no "avxvnni" target, so CPUs without AVX-VNNI run the micro-kernels as shipped. */
AVX2_INLINE __m256i dpbusd_avx2(__m256i acc, __m256i u, __m256i s) {
    const __m256i plo = _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm256_castsi256_si128(u)),
                                          _mm256_cvtepi8_epi16(_mm256_castsi256_si128(s)));
    const __m256i phi = _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm256_extracti128_si256(u, 1)),
                                          _mm256_cvtepi8_epi16(_mm256_extracti128_si256(s, 1)));
    /* hadd gives dwords 0 1 4 5 | 2 3 6 7 */
    const __m256i h = _mm256_hadd_epi32(plo, phi);
    return _mm256_add_epi32(acc, _mm256_permutevar8x32_epi32(h, _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7)));
}
#define IG_ATTR "avx2,fma,f16c"
#else
#define IG_ATTR "avxvnni,avx2,fma,f16c"
#endif
#define IG_NAME(x) x##_avxvnni
#define IG_MR 4
#define IG_NV 2
#define IG_VEXVNNI 1
#include "kernels_igemm_x86.h"
#undef IG_NAME
#undef IG_ATTR
#undef IG_VEXVNNI

/* AVX2 (maddubs): its own micro-kernels, shaped for 16 registers without VNNI. */
#include "kernels_igemm_avx2.h"

/* Everything but the name and the GEMM micro-kernels: AVX2 and AVX-VNNI share it (the dot
 * kernels stay AVX2's at both levels: decode is bound by memory bandwidth, and one dot per
 * level keeps the results identical). */
#define AVX2_TABLE_COMMON                                                                                    \
    .quant_q8_0 = onnxq_avx2_quant_q8_0,                                                                     \
    .dot = {dot_q4_0, dot_q4_1, dot_q5_0, dot_q5_1, dot_q8_0, dot_q4_K, dot_q5_K, dot_q6_K},                  \
    .panel = {onnxq_avx2_panel_q4_0, onnxq_avx2_panel_q4_1, onnxq_avx2_panel_q5_0, onnxq_avx2_panel_q5_1,     \
              onnxq_avx2_panel_q8_0, onnxq_avx2_panel_q4_K, onnxq_avx2_panel_q5_K, onnxq_avx2_panel_q6_K},    \
    .fdot = {onnxq_avx2_fdot_q4_0, onnxq_avx2_fdot_q4_1, onnxq_avx2_fdot_q5_0, onnxq_avx2_fdot_q5_1,         \
             onnxq_avx2_fdot_q8_0, onnxq_avx2_fdot_q4_K, onnxq_avx2_fdot_q5_K, onnxq_avx2_fdot_q6_K},        \
    .ukernel = onnxq_avx2_ukernel, ONNXQ_X86_GEXPAND, .igemm_ng = I2_NG

static const onnxq_kernel_table table_avx2 = {
    .name = "avx2", AVX2_TABLE_COMMON, .igemm = IGEMM_TABLE(avx2), .igemm_mr = I2_MR};
/* AVX-VNNI: the AVX2 table with the VNNI micro-kernels. */
static const onnxq_kernel_table table_avxvnni = {
    .name = "avxvnni", AVX2_TABLE_COMMON, .igemm = IGEMM_TABLE(avxvnni), .igemm_mr = IG_MR};

const onnxq_kernel_table *onnxq_kernels_avx2(void) { return &table_avx2; }
const onnxq_kernel_table *onnxq_kernels_avxvnni(void) { return &table_avxvnni; }

#else

const onnxq_kernel_table *onnxq_kernels_avx2(void) { return NULL; }
const onnxq_kernel_table *onnxq_kernels_avxvnni(void) { return NULL; }

#endif
