/*
 * The AVX2 integer GEMM micro-kernels (no VNNI), included by kernels_avx2.c: entry points
 * igemm_<type>_avx2 for the table, contract and panel layout in kernels_impl.h (onnxq_igemm_fn),
 * 4 rows by the panel's 2 groups (16 columns).
 *
 * AVX2 multiplies unsigned by signed bytes (vpmaddubsw) into int16 pairs, so the integer sums
 * run in int16 as long as they cannot overflow, then widen through vpmaddwd (by ones, or by a
 * sub-block scale in both halves of a lane, which scales while it widens). With 16 ymm
 * registers the tile is shaped so that every accumulator stays in a register (a spilled one
 * puts a store-to-load round trip into every step):
 *   Q4_0 Q4_1 Q4_K (one int16 run per 32-element block) and Q8_0 (int32 per step): 4 rows x 16 columns;
 *   Q5_0 Q5_1 (two runs, int32 sums kept across them): 4 rows x 8 columns, twice over the panel;
 *   Q5_K Q6_K (two or four runs; Q6_K's widen through its 16-element sub-block scales): 2 rows x
 *   16 columns, twice per block (a weight load feeds 2 rows, a broadcast 2 column vectors).
 * K-quant blocks of 32 are Q4_1 / Q5_1 / Q8_0-like blocks (kernels_impl.h), their float scales
 * in the panel (kernels_x86.h).
 * Q8_0's codes are stored biased (q ^ 0x80); here they go back to signed for ggml's sign
 * trick, maddubs(|w|, sign(y, w)), whose pairs (<= 2 * 128 * 127) leave no room to add in int16.
 * The float part is the dot kernels' operation for operation (see kernels_igemm_x86.h), the
 * integer sums exact: C is bit-identical to the dot path.
 */

#define I2_MR 4
#define I2_NG 2                  /* groups per panel block: one step is 2 x 32 bytes */
#define I2_STEP (I2_NG * 32)     /* bytes of one 4-element step (and of any field) */
/* An accumulator the compiler must take as it is: without this GCC reassociates the chain of
 * integer adds, computes every step's product first and spills them. */
#define I2_KEEP(x) __asm__("" : "+x"(x))

/* The rows' block data, hoisted out of the block loop. */
typedef struct {
    const int8_t *qs[I2_MR];
    const float *d[I2_MR];
    const int32_t *isum[I2_MR];
    const int16_t *bsum16[I2_MR]; /* Q6_K */
} i2_rows;

AVX2_INLINE i2_rows i2_rows_of(const onnxq_qact *const *rows) {
    i2_rows r;
    for (int m = 0; m < I2_MR; ++m) {
        r.qs[m] = rows[m]->qs;
        r.d[m] = rows[m]->d;
        r.isum[m] = rows[m]->isum;
        r.bsum16[m] = rows[m]->bsum16;
    }
    return r;
}

AVX2_INLINE void i2_zero_c(float *C, int64_t ldc) {
    for (int m = 0; m < I2_MR; ++m)
        for (int v = 0; v < I2_NG; ++v) _mm256_storeu_ps(C + m * ldc + 8 * v, _mm256_setzero_ps());
}

/* Largest number of 4-element steps whose int16 pair sums cannot overflow:
 * pairs <= 2*15*127 (4-bit codes), 2*31*127 (5-bit), 2*63*127 (6-bit). */
AVX2_INLINE int i2_run(const int type) {
    switch (type) {
    case ONNXQ_TYPE_Q6_K: return 2;
    case ONNXQ_TYPE_Q5_0:
    case ONNXQ_TYPE_Q5_1:
    case ONNXQ_TYPE_Q5_K: return 4;
    default: return 8;
    }
}

/* t[m][v] = sum over steps [ks0, ks0 + n) of maddubs(codes, y_m) (int16), for nv vectors from v0.
 * y[m] points at the activations of step ks0. */
AVX2_INLINE void i2_run16(const uint8_t *pb, const int ks0, const int n, const int v0, const int nv,
                          const int8_t *const y[I2_MR], __m256i t[I2_MR][2]) {
    ONNXQ_UNROLL
    for (int ks = 0; ks < n; ++ks) {
        __m256i w[2];
        for (int v = 0; v < nv; ++v) w[v] = ld(pb + (int64_t)(ks0 + ks) * I2_STEP + 32 * (v0 + v));
        for (int m = 0; m < I2_MR; ++m) {
            const __m256i yv = bcast4(y[m] + 4 * ks);
            for (int v = 0; v < nv; ++v) {
                const __m256i p = _mm256_maddubs_epi16(w[v], yv);
                t[m][v] = ks ? _mm256_add_epi16(t[m][v], p) : p;
                I2_KEEP(t[m][v]);
            }
        }
    }
}

/* Integer dot of one 32-element block for rows m < 4 and nv vectors from v0: d[m][v] (int32),
 * before the offset correction (Q4_0, Q5_0). */
AVX2_INLINE void i2_dot32(const int type, const uint8_t *pb, const int v0, const int nv, const int8_t *const y[I2_MR],
                          __m256i d[I2_MR][2]) {
    const __m256i ones = _mm256_set1_epi16(1);
    if (type == ONNXQ_TYPE_Q8_0) {
        for (int m = 0; m < I2_MR; ++m)
            for (int v = 0; v < nv; ++v) d[m][v] = _mm256_setzero_si256();
        ONNXQ_UNROLL
        for (int ks = 0; ks < 8; ++ks) {
            __m256i ws[2], aw[2];
            for (int v = 0; v < nv; ++v) {
                ws[v] = _mm256_xor_si256(ld(pb + ks * I2_STEP + 32 * (v0 + v)), _mm256_set1_epi8((char)0x80));
                aw[v] = _mm256_sign_epi8(ws[v], ws[v]);
            }
            for (int m = 0; m < I2_MR; ++m) {
                const __m256i yv = bcast4(y[m] + 4 * ks);
                for (int v = 0; v < nv; ++v) {
                    const __m256i p = _mm256_maddubs_epi16(aw[v], _mm256_sign_epi8(yv, ws[v]));
                    d[m][v] = _mm256_add_epi32(d[m][v], _mm256_madd_epi16(p, ones));
                    I2_KEEP(d[m][v]);
                }
            }
        }
        return;
    }
    const int run = i2_run(type);
    for (int r0 = 0; r0 < 8; r0 += run) {
        __m256i t[I2_MR][2];
        const int8_t *yr[I2_MR];
        for (int m = 0; m < I2_MR; ++m) yr[m] = y[m] + 4 * r0;
        i2_run16(pb, r0, run, v0, nv, yr, t);
        for (int m = 0; m < I2_MR; ++m)
            for (int v = 0; v < nv; ++v) {
                const __m256i s = _mm256_madd_epi16(t[m][v], ones);
                d[m][v] = r0 ? _mm256_add_epi32(d[m][v], s) : s;
            }
    }
}

/* 32-element blocks: acc = fma(cvt(dot - off * isum), d * dy, acc) (+ fma(m, dy * isum) for Q4_1, Q5_1). */
AVX2_INLINE void i2_impl32(const int type, const uint8_t *panel, int64_t b0, int64_t nblk,
                           const onnxq_qact *const *rows, float *C, int64_t ldc, int first) {
    const onnxq_igemm_shape sh = onnxq_igemm_shape_of(type);
    const int64_t pbytes = (int64_t)I2_STEP * (sh.nks + sh.nf);
    const int off_shift = type == ONNXQ_TYPE_Q4_0 ? 3 : type == ONNXQ_TYPE_Q5_0 ? 4 : -1;
    const int nv = i2_run(type) == 8 || type == ONNXQ_TYPE_Q8_0 ? 2 : 1; /* see the top of the file */
    const i2_rows R = i2_rows_of(rows);
    if (first) i2_zero_c(C, ldc);
    for (int v0 = 0; v0 < I2_NG; v0 += nv)
        for (int64_t b = 0; b < nblk; ++b) {
            const uint8_t *pb = panel + b * pbytes;
            const int64_t ab = b0 + b;
            const int8_t *y[I2_MR];
            for (int m = 0; m < I2_MR; ++m) y[m] = R.qs[m] + 32 * ab;
            __m256i d[I2_MR][2];
            i2_dot32(type, pb, v0, nv, y, d);
            __m256 dx[2], m1[2];
            for (int v = 0; v < nv; ++v) {
                dx[v] = _mm256_loadu_ps((const float *)(pb + 8 * I2_STEP + 32 * (v0 + v)));
                if (sh.nf == 2) m1[v] = _mm256_loadu_ps((const float *)(pb + 9 * I2_STEP + 32 * (v0 + v)));
            }
            /* row by row: dy and the offset are read once per row (a store to C may alias them) */
            for (int m = 0; m < I2_MR; ++m) {
                const float dy = R.d[m][ab];
                const int32_t isum = R.isum[m][ab];
                const __m256 dyv = _mm256_set1_ps(dy);
                const __m256i off = _mm256_set1_epi32(off_shift >= 0 ? (int32_t)((uint32_t)isum << off_shift) : 0);
                for (int v = 0; v < nv; ++v) {
                    __m256i s = d[m][v];
                    if (off_shift >= 0) s = _mm256_sub_epi32(s, off);
                    float *c = C + m * ldc + 8 * (v0 + v);
                    __m256 acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dx[v], dyv), _mm256_loadu_ps(c));
                    if (sh.nf == 2) acc = _mm256_fmadd_ps(m1[v], _mm256_set1_ps(dy * (float)isum), acc);
                    _mm256_storeu_ps(c, acc);
                }
            }
        }
}

/* Integer dots of one 32-element block (8 steps at pb) for rows [m0, m0 + nm), both column vectors:
 * int16 runs of i2_run(type) steps, widened through madd by mul[half][v] (steps 0..3: half 0). */
AVX2_INLINE void i2_dot_rows(const int type, const uint8_t *pb, const int m0, const int nm, const int8_t *const y[I2_MR],
                             const __m256i mul[2][2], __m256i d[I2_MR][2]) {
    const int run = i2_run(type);
    ONNXQ_UNROLL
    for (int r0 = 0; r0 < 8; r0 += run) {
        __m256i t[I2_MR][2];
        ONNXQ_UNROLL
        for (int ks = 0; ks < run; ++ks) {
            const __m256i w0 = ld(pb + (int64_t)(r0 + ks) * I2_STEP), w1 = ld(pb + (int64_t)(r0 + ks) * I2_STEP + 32);
            for (int m = m0; m < m0 + nm; ++m) {
                const __m256i yv = bcast4(y[m] + 4 * (r0 + ks));
                const __m256i p0 = _mm256_maddubs_epi16(w0, yv), p1 = _mm256_maddubs_epi16(w1, yv);
                t[m][0] = ks ? _mm256_add_epi16(t[m][0], p0) : p0;
                t[m][1] = ks ? _mm256_add_epi16(t[m][1], p1) : p1;
                I2_KEEP(t[m][0]);
                I2_KEEP(t[m][1]);
            }
        }
        for (int m = m0; m < m0 + nm; ++m)
            for (int v = 0; v < 2; ++v) {
                const __m256i w = _mm256_madd_epi16(t[m][v], mul[r0 >= 4][v]);
                d[m][v] = r0 ? _mm256_add_epi32(d[m][v], w) : w;
                I2_KEEP(d[m][v]); /* one running sum, not four live partial ones */
            }
    }
}

/* K-quant 32-element block s of super-block ab (activation block 8 ab + s), as the dot kernels
 * (kernels_avx2.c; panel fields in kernels_x86.h), 16 columns: Q4_K (one int16 run) all 4 rows at
 * once, Q5_K and Q6_K (int32 sums kept across runs) 2 rows at a time, so that every sum stays in a
 * register. Q4_K Q5_K: acc = fma(cvt(dot), ds * dy, acc); acc = fnma(ms, dy * isum, acc), ms = dmin * mn;
 * Q6_K: acc = fma(cvt(dot - 32 * (sc_{2s} bsum16_{2s} + sc_{2s+1} bsum16_{2s+1})), d * dy, acc). */
AVX2_INLINE void i2_kblock(const int type, const uint8_t *pb, const int64_t ab, const int s, const i2_rows *R,
                           const float dyis[I2_MR][8], float *C, int64_t ldc) {
    const int64_t a32 = 8 * ab + s;
    const int8_t *y[I2_MR];
    for (int m = 0; m < I2_MR; ++m) y[m] = R->qs[m] + 32 * a32;
    const uint8_t *codes = pb + (int64_t)8 * s * I2_STEP;
    const int nm = type == ONNXQ_TYPE_Q4_K ? I2_MR : 2;
#define I2_FIELD(f, v) (pb + (int64_t)(f) * I2_STEP + 32 * (v))
    if (type == ONNXQ_TYPE_Q6_K) {
        __m256i mul[2][2];
        for (int v = 0; v < 2; ++v)
            for (int h = 0; h < 2; ++h) mul[h][v] = ld(I2_FIELD(IGK_Q6_SC + 3 * s + h, v));
        ONNXQ_UNROLL
        for (int m0 = 0; m0 < I2_MR; m0 += nm) {
            __m256i d[I2_MR][2];
            i2_dot_rows(type, codes, m0, nm, y, mul, d);
            for (int m = m0; m < m0 + nm; ++m) {
                const __m256i bp = _mm256_set1_epi32(ig_rd32(R->bsum16[m] + 16 * ab + 2 * s));
                const __m256 dyv = _mm256_set1_ps(R->d[m][a32]);
                for (int v = 0; v < 2; ++v) {
                    const __m256i off = _mm256_madd_epi16(ld(I2_FIELD(IGK_Q6_SC + 3 * s + 2, v)), bp);
                    const __m256 dd = _mm256_mul_ps(_mm256_loadu_ps((const float *)I2_FIELD(IGK_Q6_D, v)), dyv);
                    float *c = C + m * ldc + 8 * v;
                    _mm256_storeu_ps(c, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(d[m][v], off)), dd, _mm256_loadu_ps(c)));
                }
            }
        }
        return;
    }
    const __m256i ones = _mm256_set1_epi16(1);
    const __m256i mul[2][2] = {{ones, ones}, {ones, ones}};
    __m256 ds[2], ms[2];
    for (int v = 0; v < 2; ++v) {
        ds[v] = _mm256_loadu_ps((const float *)I2_FIELD(IGK_DS + s, v));
        const __m128i mn8 = _mm_loadl_epi64((const __m128i *)(igk_mins_c(pb, I2_NG) + s * I2_NG * 8 + 8 * v));
        ms[v] = _mm256_mul_ps(_mm256_loadu_ps((const float *)I2_FIELD(IGK_DMIN, v)), _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(mn8)));
    }
#undef I2_FIELD
    ONNXQ_UNROLL
    for (int m0 = 0; m0 < I2_MR; m0 += nm) {
        __m256i d[I2_MR][2];
        i2_dot_rows(type, codes, m0, nm, y, mul, d);
        for (int m = m0; m < m0 + nm; ++m) {
            const __m256 dyv = _mm256_set1_ps(R->d[m][a32]), my = _mm256_broadcast_ss(&dyis[m][s]);
            for (int v = 0; v < 2; ++v) {
                float *c = C + m * ldc + 8 * v;
                const __m256 acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d[m][v]), _mm256_mul_ps(ds[v], dyv), _mm256_loadu_ps(c));
                _mm256_storeu_ps(c, _mm256_fnmadd_ps(ms[v], my, acc));
            }
        }
    }
}

AVX2_INLINE void i2_implK(const int type, const uint8_t *panel, int64_t b0, int64_t nblk,
                          const onnxq_qact *const *rows, float *C, int64_t ldc, int first) {
    const int64_t pbytes = onnxq_igemm_block_bytes(type, I2_NG);
    const i2_rows R = i2_rows_of(rows);
    if (first) i2_zero_c(C, ldc);
    for (int64_t b = 0; b < nblk; ++b) {
        float dyis[I2_MR][8];
        for (int m = 0; m < I2_MR && type != ONNXQ_TYPE_Q6_K; ++m)
            qk_dyisum8(R.d[m] + 8 * (b0 + b), R.isum[m] + 8 * (b0 + b), dyis[m]);
        for (int s = 0; s < 8; ++s) i2_kblock(type, panel + b * pbytes, b0 + b, s, &R, dyis, C, ldc);
    }
}

#define I2_ENTRY(t, TYPE, IMPL)                                                                                    \
    static AVX2 void igemm_##t##_avx2(const uint8_t *panel, int64_t b0, int64_t nblk, const onnxq_qact *const *rows, \
                                      float *C, int64_t ldc, int first) {                                        \
        IMPL(TYPE, panel, b0, nblk, rows, C, ldc, first);                                                        \
    }
I2_ENTRY(q4_0, ONNXQ_TYPE_Q4_0, i2_impl32)
I2_ENTRY(q4_1, ONNXQ_TYPE_Q4_1, i2_impl32)
I2_ENTRY(q5_0, ONNXQ_TYPE_Q5_0, i2_impl32)
I2_ENTRY(q5_1, ONNXQ_TYPE_Q5_1, i2_impl32)
I2_ENTRY(q8_0, ONNXQ_TYPE_Q8_0, i2_impl32)
I2_ENTRY(q4_K, ONNXQ_TYPE_Q4_K, i2_implK)
I2_ENTRY(q5_K, ONNXQ_TYPE_Q5_K, i2_implK)
I2_ENTRY(q6_K, ONNXQ_TYPE_Q6_K, i2_implK)
#undef I2_ENTRY
#undef I2_STEP
