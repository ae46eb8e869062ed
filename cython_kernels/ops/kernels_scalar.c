/*
 * Scalar reference kernels: plain C over the x8 group layout, one function per type.
 * They define the results the SIMD kernels must reproduce: the same integer sum per
 * block (super-block for K-quants), the same activation bytes, the same dequantized
 * floats. Each row's quants are first decoded from the group-block (decode_*), then
 * used exactly as ggml's scalar vec_dot / dequantize_row use them.
 */
#include "ggml_dequant.h"
#include "kernels_impl.h"

/* ---- activation quantizers ---- */

/* Round half to even for |v| < 2^22 (the FPU's default mode does the rounding), the
 * same as _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT) in the SIMD quantizers. */
static inline int round_half_even(float v) {
    const float magic = 12582912.0f; /* 1.5 * 2^23 */
    return (int)((v + magic) - magic);
}

/* One block of bs values: x[0 .. n) then zeros. Returns d; q gets the codes. */
static float quant_block(const float *x, int64_t n, int bs, int8_t *q) {
    float amax = 0.0f;
    for (int i = 0; i < bs && i < n; ++i) {
        const float a = x[i] < 0 ? -x[i] : x[i];
        if (a > amax) amax = a;
    }
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    for (int i = 0; i < bs; ++i) q[i] = (int8_t)(i < n ? round_half_even(x[i] * id) : 0);
    return amax / 127.0f;
}

void onnxq_quant_q8_0_scalar(const float *x, int64_t n, int64_t nb, int8_t *qs, float *d, int32_t *isum) {
    for (int64_t b = 0; b < nb; ++b) {
        const int64_t left = n - b * 32;
        int8_t *q = qs + b * 32;
        d[b] = quant_block(x + b * 32, left > 0 ? left : 0, 32, q);
        int32_t s = 0;
        for (int i = 0; i < 32; ++i) s += q[i];
        isum[b] = s;
    }
}

/* ---- decoding one row of a group-block into codes ---- */

/* Q4_0/Q4_1 nibbles (0..15), element order. */
static void decode_nib32(const uint8_t *qs, int r, uint8_t c[32]) {
    for (int j = 0; j < 4; ++j)
        for (int t = 0; t < 4; ++t) {
            const uint8_t v = qs[(j * 8 + r) * 4 + t];
            c[4 * j + t] = v & 0xF;
            c[16 + 4 * j + t] = v >> 4;
        }
}

/* Q5_0/Q5_1 codes (0..31). */
static void decode_q5(const uint8_t *qh, const uint8_t *qs, int r, uint8_t c[32]) {
    decode_nib32(qs, r, c);
    for (int e = 0; e < 32; ++e) c[e] |= (uint8_t)(((qh[4 * r + (e & 3)] >> (e >> 2)) & 1) << 4);
}

/* Q4_K/Q5_K codes (0..15 / 0..31), 6-bit scales and mins; qh NULL for Q4_K. */
static void decode_qk(const uint8_t *gb, const uint8_t *qh, const uint8_t *qs, int r, uint8_t c[256], int sc[8],
                      int mn[8]) {
    for (int cc = 0; cc < 4; ++cc)
        for (int g = 0; g < 8; ++g)
            for (int t = 0; t < 4; ++t) {
                const uint8_t v = qs[((cc * 8 + g) * 8 + r) * 4 + t];
                const int l = 4 * g + t;
                c[64 * cc + l] = v & 0xF;
                c[64 * cc + 32 + l] = v >> 4;
                if (qh) {
                    const uint8_t h = qh[(g * 8 + r) * 4 + t];
                    c[64 * cc + l] |= (uint8_t)(((h >> (2 * cc)) & 1) << 4);
                    c[64 * cc + 32 + l] |= (uint8_t)(((h >> (2 * cc + 1)) & 1) << 4);
                }
            }
    for (int s = 0; s < 8; ++s) {
        sc[s] = gb[GB_QK_SC + s * 8 + r];
        mn[s] = gb[GB_QK_MN + ((s >> 1) * 8 + r) * 2 + (s & 1)];
    }
}

/* Q6_K codes L = q + 32 (0..63) and the 16 int8 scales. */
static void decode_q6_K(const uint8_t *gb, int r, uint8_t c[256], int sc[16]) {
    const uint8_t *ql = gb + GB_Q6_K_QL, *qh = gb + GB_Q6_K_QH;
    for (int h = 0; h < 2; ++h)
        for (int g = 0; g < 8; ++g)
            for (int t = 0; t < 4; ++t) {
                const uint8_t a = ql[(((h * 2 + 0) * 8 + g) * 8 + r) * 4 + t];
                const uint8_t b = ql[(((h * 2 + 1) * 8 + g) * 8 + r) * 4 + t];
                const uint8_t hh = qh[((h * 8 + g) * 8 + r) * 4 + t];
                const int l = 4 * g + t;
                c[128 * h + l] = (uint8_t)((a & 0xF) | ((hh & 3) << 4));
                c[128 * h + 32 + l] = (uint8_t)((b & 0xF) | (((hh >> 2) & 3) << 4));
                c[128 * h + 64 + l] = (uint8_t)((a >> 4) | (((hh >> 4) & 3) << 4));
                c[128 * h + 96 + l] = (uint8_t)((b >> 4) | (((hh >> 6) & 3) << 4));
            }
    for (int s = 0; s < 16; ++s) sc[s] = (int8_t)gb[GB_Q6_K_SC + ((s >> 1) * 8 + r) * 2 + (s & 1)];
}

static int dot_i(const uint8_t *c, int off, const int8_t *y, int n) {
    int s = 0;
    for (int i = 0; i < n; ++i) s += ((int)c[i] - off) * y[i];
    return s;
}

/* ---- fast-mode dot products ---- */

/* Q4_0, Q5_0, Q8_0 x Q8_0: sum_b (dx*dy) * sum(q*y). */
static void dot_sym32(int type, const uint8_t *g, int64_t nb, const onnxq_qact *a, int M, float *out) {
    float acc[ONNXQ_GR * ONNXQ_GR] = {0};
    const int64_t gbytes = onnxq_group_block_bytes(type);
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t *gb = g + b * gbytes;
        for (int r = 0; r < ONNXQ_GR; ++r) {
            uint8_t c[32];
            int off;
            if (type == ONNXQ_TYPE_Q4_0) {
                decode_nib32(gb + GB_Q4_0_QS, r, c);
                off = 8;
            } else if (type == ONNXQ_TYPE_Q5_0) {
                decode_q5(gb + GB_Q5_0_QH, gb + GB_Q5_0_QS, r, c);
                off = 16;
            } else { /* Q8_0: offset the int8 by 128 to share the unsigned path */
                for (int j = 0; j < 8; ++j)
                    for (int t = 0; t < 4; ++t) c[4 * j + t] = (uint8_t)(gb[GB_Q8_0_QS + (j * 8 + r) * 4 + t] ^ 0x80);
                off = 128;
            }
            const float dx = onnxq_rdh(gb + 2 * r);
            for (int m = 0; m < M; ++m) {
                const int sumi = dot_i(c, off, a[m].qs + b * 32, 32);
                acc[m * 8 + r] += (dx * a[m].d[b]) * (float)sumi;
            }
        }
    }
    memcpy(out, acc, sizeof(float) * 8 * (size_t)M);
}

/* Q4_1, Q5_1 x Q8_1: sum_b (dx*dy) * sum(q*y) + mx * (dy * sum(y)). */
static void dot_asym32(int type, const uint8_t *g, int64_t nb, const onnxq_qact *a, int M, float *out) {
    float acc[ONNXQ_GR * ONNXQ_GR] = {0};
    const int64_t gbytes = onnxq_group_block_bytes(type);
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t *gb = g + b * gbytes;
        for (int r = 0; r < ONNXQ_GR; ++r) {
            uint8_t c[32];
            float mx;
            if (type == ONNXQ_TYPE_Q4_1) {
                decode_nib32(gb + GB_Q4_1_QS, r, c);
                mx = onnxq_rdh(gb + GB_Q4_1_M + 2 * r);
            } else {
                decode_q5(gb + GB_Q5_1_QH, gb + GB_Q5_1_QS, r, c);
                mx = onnxq_rdh(gb + GB_Q5_1_M + 2 * r);
            }
            const float dx = onnxq_rdh(gb + 2 * r);
            for (int m = 0; m < M; ++m) {
                const int sumi = dot_i(c, 0, a[m].qs + b * 32, 32);
                const float dy = a[m].d[b];
                acc[m * 8 + r] += (dx * dy) * (float)sumi + mx * (dy * (float)a[m].isum[b]);
            }
        }
    }
    memcpy(out, acc, sizeof(float) * 8 * (size_t)M);
}

/* Q4_K, Q5_K: every 32-element sub-block s is a Q4_1/Q5_1 block with d = d*sc_s, m = -dmin*mn_s
 * (both products exact in fp32) against the activation block 8b+s. */
static void dot_qk(int type, const uint8_t *g, int64_t nb, const onnxq_qact *a, int M, float *out) {
    float acc[ONNXQ_GR * ONNXQ_GR] = {0};
    const int64_t gbytes = onnxq_group_block_bytes(type);
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t *gb = g + b * gbytes;
        for (int r = 0; r < ONNXQ_GR; ++r) {
            uint8_t c[256];
            int sc[8], mn[8];
            if (type == ONNXQ_TYPE_Q4_K)
                decode_qk(gb, NULL, gb + GB_Q4_K_QS, r, c, sc, mn);
            else
                decode_qk(gb, gb + GB_Q5_K_QH, gb + GB_Q5_K_QS, r, c, sc, mn);
            const float d = onnxq_rdh(gb + 2 * r), dmin = onnxq_rdh(gb + GB_QK_DMIN + 2 * r);
            for (int m = 0; m < M; ++m)
                for (int s = 0; s < 8; ++s) {
                    const int64_t ab = b * 8 + s;
                    const float ds = d * (float)sc[s], ms = dmin * (float)mn[s], dy = a[m].d[ab];
                    const int dot = dot_i(c + 32 * s, 0, a[m].qs + 32 * ab, 32);
                    acc[m * 8 + r] += (ds * dy) * (float)dot - ms * (dy * (float)a[m].isum[ab]);
                }
        }
    }
    memcpy(out, acc, sizeof(float) * 8 * (size_t)M);
}

/* Q6_K: per activation block 8b+s, (d*dy) * sum over its two 16-element sub-blocks h of
 * sc_h * sum((L-32)*y), the offset taken out through the activation sums. */
static void dot_q6_K(const uint8_t *g, int64_t nb, const onnxq_qact *a, int M, float *out) {
    float acc[ONNXQ_GR * ONNXQ_GR] = {0};
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t *gb = g + b * GB_Q6_K_BYTES;
        for (int r = 0; r < ONNXQ_GR; ++r) {
            uint8_t c[256];
            int sc[16];
            decode_q6_K(gb, r, c, sc);
            const float d = onnxq_rdh(gb + 2 * r);
            for (int m = 0; m < M; ++m)
                for (int s = 0; s < 8; ++s) {
                    const int64_t ab = b * 8 + s;
                    int32_t isum = 0;
                    for (int h = 2 * s; h < 2 * s + 2; ++h)
                        isum += sc[h] * (dot_i(c + 16 * h, 0, a[m].qs + 16 * (b * 16 + h), 16) -
                                         32 * a[m].bsum16[b * 16 + h]);
                    acc[m * 8 + r] += (d * a[m].d[ab]) * (float)isum;
                }
        }
    }
    memcpy(out, acc, sizeof(float) * 8 * (size_t)M);
}

static void dot_q4_0(const uint8_t *g, int64_t nb, const onnxq_qact *a, int M, float *out) {
    dot_sym32(ONNXQ_TYPE_Q4_0, g, nb, a, M, out);
}
static void dot_q5_0(const uint8_t *g, int64_t nb, const onnxq_qact *a, int M, float *out) {
    dot_sym32(ONNXQ_TYPE_Q5_0, g, nb, a, M, out);
}
static void dot_q8_0(const uint8_t *g, int64_t nb, const onnxq_qact *a, int M, float *out) {
    dot_sym32(ONNXQ_TYPE_Q8_0, g, nb, a, M, out);
}
static void dot_q4_1(const uint8_t *g, int64_t nb, const onnxq_qact *a, int M, float *out) {
    dot_asym32(ONNXQ_TYPE_Q4_1, g, nb, a, M, out);
}
static void dot_q5_1(const uint8_t *g, int64_t nb, const onnxq_qact *a, int M, float *out) {
    dot_asym32(ONNXQ_TYPE_Q5_1, g, nb, a, M, out);
}
static void dot_q4_K(const uint8_t *g, int64_t nb, const onnxq_qact *a, int M, float *out) {
    dot_qk(ONNXQ_TYPE_Q4_K, g, nb, a, M, out);
}
static void dot_q5_K(const uint8_t *g, int64_t nb, const onnxq_qact *a, int M, float *out) {
    dot_qk(ONNXQ_TYPE_Q5_K, g, nb, a, M, out);
}

/* ---- dequantization into panels, in ggml_dequant.h's arithmetic ---- */

static void panel_q4_0(const uint8_t *gb, int64_t nblk, float *p) {
    for (int64_t b = 0; b < nblk; ++b, gb += GB_Q4_0_BYTES, p += 32 * 8)
        for (int r = 0; r < 8; ++r) {
            uint8_t c[32];
            decode_nib32(gb + GB_Q4_0_QS, r, c);
            const float d = onnxq_rdh(gb + 2 * r);
            for (int i = 0; i < 32; ++i) p[i * 8 + r] = (float)((int)c[i] - 8) * d;
        }
}
static void panel_q4_1(const uint8_t *gb, int64_t nblk, float *p) {
    for (int64_t b = 0; b < nblk; ++b, gb += GB_Q4_1_BYTES, p += 32 * 8)
        for (int r = 0; r < 8; ++r) {
            uint8_t c[32];
            decode_nib32(gb + GB_Q4_1_QS, r, c);
            const float d = onnxq_rdh(gb + 2 * r), m = onnxq_rdh(gb + GB_Q4_1_M + 2 * r);
            for (int i = 0; i < 32; ++i) p[i * 8 + r] = (float)c[i] * d + m;
        }
}
static void panel_q5_0(const uint8_t *gb, int64_t nblk, float *p) {
    for (int64_t b = 0; b < nblk; ++b, gb += GB_Q5_0_BYTES, p += 32 * 8)
        for (int r = 0; r < 8; ++r) {
            uint8_t c[32];
            decode_q5(gb + GB_Q5_0_QH, gb + GB_Q5_0_QS, r, c);
            const float d = onnxq_rdh(gb + 2 * r);
            for (int i = 0; i < 32; ++i) p[i * 8 + r] = (float)((int)c[i] - 16) * d;
        }
}
static void panel_q5_1(const uint8_t *gb, int64_t nblk, float *p) {
    for (int64_t b = 0; b < nblk; ++b, gb += GB_Q5_1_BYTES, p += 32 * 8)
        for (int r = 0; r < 8; ++r) {
            uint8_t c[32];
            decode_q5(gb + GB_Q5_1_QH, gb + GB_Q5_1_QS, r, c);
            const float d = onnxq_rdh(gb + 2 * r), m = onnxq_rdh(gb + GB_Q5_1_M + 2 * r);
            for (int i = 0; i < 32; ++i) p[i * 8 + r] = (float)c[i] * d + m;
        }
}
static void panel_q8_0(const uint8_t *gb, int64_t nblk, float *p) {
    for (int64_t b = 0; b < nblk; ++b, gb += GB_Q8_0_BYTES, p += 32 * 8)
        for (int r = 0; r < 8; ++r) {
            const float d = onnxq_rdh(gb + 2 * r);
            for (int i = 0; i < 32; ++i)
                p[i * 8 + r] = (float)(int8_t)gb[GB_Q8_0_QS + ((i >> 2) * 8 + r) * 4 + (i & 3)] * d;
        }
}
static void panel_qk(int type, const uint8_t *gb, int64_t nblk, float *p) {
    const int64_t gbytes = onnxq_group_block_bytes(type);
    for (int64_t b = 0; b < nblk; ++b, gb += gbytes, p += QK_K * 8)
        for (int r = 0; r < 8; ++r) {
            uint8_t c[256];
            int sc[8], mn[8];
            if (type == ONNXQ_TYPE_Q4_K)
                decode_qk(gb, NULL, gb + GB_Q4_K_QS, r, c, sc, mn);
            else
                decode_qk(gb, gb + GB_Q5_K_QH, gb + GB_Q5_K_QS, r, c, sc, mn);
            const float d = onnxq_rdh(gb + 2 * r), dmin = onnxq_rdh(gb + GB_QK_DMIN + 2 * r);
            for (int s = 0; s < 8; ++s) {
                const float d1 = d * (float)sc[s], m1 = dmin * (float)mn[s];
                for (int i = 32 * s; i < 32 * s + 32; ++i) p[i * 8 + r] = d1 * (float)c[i] - m1;
            }
        }
}
static void panel_q4_K(const uint8_t *gb, int64_t nblk, float *p) { panel_qk(ONNXQ_TYPE_Q4_K, gb, nblk, p); }
static void panel_q5_K(const uint8_t *gb, int64_t nblk, float *p) { panel_qk(ONNXQ_TYPE_Q5_K, gb, nblk, p); }
static void panel_q6_K(const uint8_t *gb, int64_t nblk, float *p) {
    for (int64_t b = 0; b < nblk; ++b, gb += GB_Q6_K_BYTES, p += QK_K * 8)
        for (int r = 0; r < 8; ++r) {
            uint8_t c[256];
            int sc[16];
            decode_q6_K(gb, r, c, sc);
            const float d = onnxq_rdh(gb + 2 * r);
            for (int i = 0; i < 256; ++i) p[i * 8 + r] = d * (float)sc[i >> 4] * (float)((int)c[i] - 32);
        }
}

/* ---- float products ---- */

static void gemv_scalar(const float *panel, int64_t kc, const float *x, int64_t ldx, int M, float *acc) {
    for (int m = 0; m < M; ++m)
        for (int64_t k = 0; k < kc; ++k) {
            const float xv = x[m * ldx + k];
            for (int r = 0; r < 8; ++r) acc[m * 8 + r] += panel[k * 8 + r] * xv;
        }
}

/* Exact few-row dot: dequantize each block into a panel, then multiply (the definition). */
static void fdot_panels(int type, onnxq_panel_fn panel, const uint8_t *g, int64_t nb, const float *x, int64_t ldx,
                        int M, float *out) {
    const int bs = onnxq_type_traits_of(type)->block_size;
    const int64_t gbytes = onnxq_group_block_bytes(type);
    float p[QK_K * 8];
    memset(out, 0, sizeof(float) * 8 * (size_t)M);
    for (int64_t b = 0; b < nb; ++b) {
        panel(g + b * gbytes, 1, p);
        gemv_scalar(p, bs, x + b * bs, ldx, M, out);
    }
}
#define FDOT_SCALAR(t, T)                                                                                   \
    static void fdot_##t(const uint8_t *g, int64_t nb, const float *x, int64_t ldx, const float *xsum,      \
                         int64_t ldsum, int M, float *out) {                                                \
        (void)xsum, (void)ldsum; /* the panels hold the min terms already */                              \
        fdot_panels(T, panel_##t, g, nb, x, ldx, M, out);                                                   \
    }
FDOT_SCALAR(q4_0, ONNXQ_TYPE_Q4_0)
FDOT_SCALAR(q4_1, ONNXQ_TYPE_Q4_1)
FDOT_SCALAR(q5_0, ONNXQ_TYPE_Q5_0)
FDOT_SCALAR(q5_1, ONNXQ_TYPE_Q5_1)
FDOT_SCALAR(q8_0, ONNXQ_TYPE_Q8_0)
FDOT_SCALAR(q4_K, ONNXQ_TYPE_Q4_K)
FDOT_SCALAR(q5_K, ONNXQ_TYPE_Q5_K)
FDOT_SCALAR(q6_K, ONNXQ_TYPE_Q6_K)

static void ukernel_scalar(int64_t kc, const float *const xrows[ONNXQ_MR], const float *pa, const float *pb,
                           float *c, int64_t ldc, int accumulate, const float *bias) {
    for (int i = 0; i < ONNXQ_MR; ++i) {
        float t[ONNXQ_NR] = {0};
        for (int64_t k = 0; k < kc; ++k) {
            const float xv = xrows[i][k];
            for (int j = 0; j < 8; ++j) {
                t[j] += xv * pa[k * 8 + j];
                t[8 + j] += xv * pb[k * 8 + j];
            }
        }
        float *ci = c + i * ldc;
        for (int j = 0; j < ONNXQ_NR; ++j) ci[j] = accumulate ? ci[j] + t[j] : bias ? t[j] + bias[j] : t[j];
    }
}

static void quant_q8_0(const float *x, int64_t n, int64_t nb, int8_t *qs, float *d, int32_t *isum) {
    onnxq_quant_q8_0_scalar(x, n, nb, qs, d, isum);
}

/* ---- gather: one ggml block ---- */

#define DEQUANT_SCALAR(t, T, BS) \
    static void dequant_##t(const uint8_t *block, float *y) { onnxq_dequantize_blocks(T, block, y, BS); }
DEQUANT_SCALAR(q4_0, ONNXQ_TYPE_Q4_0, 32)
DEQUANT_SCALAR(q4_1, ONNXQ_TYPE_Q4_1, 32)
DEQUANT_SCALAR(q5_0, ONNXQ_TYPE_Q5_0, 32)
DEQUANT_SCALAR(q5_1, ONNXQ_TYPE_Q5_1, 32)
DEQUANT_SCALAR(q8_0, ONNXQ_TYPE_Q8_0, 32)
DEQUANT_SCALAR(q4_K, ONNXQ_TYPE_Q4_K, QK_K)
DEQUANT_SCALAR(q5_K, ONNXQ_TYPE_Q5_K, QK_K)
DEQUANT_SCALAR(q6_K, ONNXQ_TYPE_Q6_K, QK_K)

const onnxq_kernel_table onnxq_kernels_scalar = {
    .name = "scalar",
    .quant_q8_0 = quant_q8_0,
    .dot = {dot_q4_0, dot_q4_1, dot_q5_0, dot_q5_1, dot_q8_0, dot_q4_K, dot_q5_K, dot_q6_K},
    .panel = {panel_q4_0, panel_q4_1, panel_q5_0, panel_q5_1, panel_q8_0, panel_q4_K, panel_q5_K, panel_q6_K},
    .fdot = {fdot_q4_0, fdot_q4_1, fdot_q5_0, fdot_q5_1, fdot_q8_0, fdot_q4_K, fdot_q5_K, fdot_q6_K},
    .ukernel = ukernel_scalar,
    .dequant = {dequant_q4_0, dequant_q4_1, dequant_q5_0, dequant_q5_1, dequant_q8_0, dequant_q4_K, dequant_q5_K,
                dequant_q6_K},
};
