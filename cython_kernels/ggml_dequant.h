/*
 * Scalar reference dequantization, one plain function per type (ggml's
 * dequantize_row_* semantics: k is a multiple of the type's block size), and
 * onnxq_dequantize_row for a whole onnxq row layout (main blocks + tail, K logical).
 *
 * The arithmetic order matches ggml and the gguf package exactly (d*sc first, then
 * times q, then minus the min term), so results are bit-identical to both as long as
 * the compiler does not contract a*b+c into an FMA: build with -ffp-contract=off.
 */
#ifndef ONNXQ_GGML_DEQUANT_H
#define ONNXQ_GGML_DEQUANT_H

#include "ggml_blocks.h"

static inline uint32_t onnxq_load_u32le(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

/* 6-bit scale and min of sub-block j of a Q4_K / Q5_K super-block. */
static inline void onnxq_get_scale_min_k4(int j, const uint8_t *q, uint8_t *sc, uint8_t *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

static inline void onnxq_dequantize_row_q4_0(const block_q4_0 *x, float *y, int64_t k) {
    const int64_t nb = k / QK4_0;
    for (int64_t i = 0; i < nb; ++i) {
        const float d = onnxq_fp16_to_fp32(x[i].d);
        for (int j = 0; j < QK4_0 / 2; ++j) {
            const int x0 = (x[i].qs[j] & 0x0F) - 8;
            const int x1 = (x[i].qs[j] >> 4) - 8;
            y[i * QK4_0 + j] = (float)x0 * d;
            y[i * QK4_0 + j + QK4_0 / 2] = (float)x1 * d;
        }
    }
}

static inline void onnxq_dequantize_row_q4_1(const block_q4_1 *x, float *y, int64_t k) {
    const int64_t nb = k / QK4_1;
    for (int64_t i = 0; i < nb; ++i) {
        const float d = onnxq_fp16_to_fp32(x[i].d);
        const float m = onnxq_fp16_to_fp32(x[i].m);
        for (int j = 0; j < QK4_1 / 2; ++j) {
            const int x0 = x[i].qs[j] & 0x0F;
            const int x1 = x[i].qs[j] >> 4;
            y[i * QK4_1 + j] = (float)x0 * d + m;
            y[i * QK4_1 + j + QK4_1 / 2] = (float)x1 * d + m;
        }
    }
}

static inline void onnxq_dequantize_row_q5_0(const block_q5_0 *x, float *y, int64_t k) {
    const int64_t nb = k / QK5_0;
    for (int64_t i = 0; i < nb; ++i) {
        const float d = onnxq_fp16_to_fp32(x[i].d);
        const uint32_t qh = onnxq_load_u32le(x[i].qh);
        for (int j = 0; j < QK5_0 / 2; ++j) {
            const uint8_t xh0 = (uint8_t)(((qh >> j) << 4) & 0x10);
            const uint8_t xh1 = (uint8_t)((qh >> (j + 12)) & 0x10);
            const int x0 = ((x[i].qs[j] & 0x0F) | xh0) - 16;
            const int x1 = ((x[i].qs[j] >> 4) | xh1) - 16;
            y[i * QK5_0 + j] = (float)x0 * d;
            y[i * QK5_0 + j + QK5_0 / 2] = (float)x1 * d;
        }
    }
}

static inline void onnxq_dequantize_row_q5_1(const block_q5_1 *x, float *y, int64_t k) {
    const int64_t nb = k / QK5_1;
    for (int64_t i = 0; i < nb; ++i) {
        const float d = onnxq_fp16_to_fp32(x[i].d);
        const float m = onnxq_fp16_to_fp32(x[i].m);
        const uint32_t qh = onnxq_load_u32le(x[i].qh);
        for (int j = 0; j < QK5_1 / 2; ++j) {
            const uint8_t xh0 = (uint8_t)(((qh >> j) << 4) & 0x10);
            const uint8_t xh1 = (uint8_t)((qh >> (j + 12)) & 0x10);
            const int x0 = (x[i].qs[j] & 0x0F) | xh0;
            const int x1 = (x[i].qs[j] >> 4) | xh1;
            y[i * QK5_1 + j] = (float)x0 * d + m;
            y[i * QK5_1 + j + QK5_1 / 2] = (float)x1 * d + m;
        }
    }
}

static inline void onnxq_dequantize_row_q8_0(const block_q8_0 *x, float *y, int64_t k) {
    const int64_t nb = k / QK8_0;
    for (int64_t i = 0; i < nb; ++i) {
        const float d = onnxq_fp16_to_fp32(x[i].d);
        for (int j = 0; j < QK8_0; ++j) y[i * QK8_0 + j] = (float)x[i].qs[j] * d;
    }
}

static inline void onnxq_dequantize_row_q4_K(const block_q4_K *x, float *y, int64_t k) {
    const int64_t nb = k / QK_K;
    for (int64_t i = 0; i < nb; ++i) {
        const uint8_t *q = x[i].qs;
        const float d = onnxq_fp16_to_fp32(x[i].d);
        const float dmin = onnxq_fp16_to_fp32(x[i].dmin);
        int is = 0;
        uint8_t sc, m;
        for (int j = 0; j < QK_K; j += 64) {
            onnxq_get_scale_min_k4(is + 0, x[i].scales, &sc, &m);
            const float d1 = d * sc, m1 = dmin * m;
            onnxq_get_scale_min_k4(is + 1, x[i].scales, &sc, &m);
            const float d2 = d * sc, m2 = dmin * m;
            for (int l = 0; l < 32; ++l) *y++ = d1 * (float)(q[l] & 0xF) - m1;
            for (int l = 0; l < 32; ++l) *y++ = d2 * (float)(q[l] >> 4) - m2;
            q += 32;
            is += 2;
        }
    }
}

static inline void onnxq_dequantize_row_q5_K(const block_q5_K *x, float *y, int64_t k) {
    const int64_t nb = k / QK_K;
    for (int64_t i = 0; i < nb; ++i) {
        const uint8_t *ql = x[i].qs;
        const uint8_t *qh = x[i].qh;
        const float d = onnxq_fp16_to_fp32(x[i].d);
        const float dmin = onnxq_fp16_to_fp32(x[i].dmin);
        int is = 0;
        uint8_t sc, m;
        uint8_t u1 = 1, u2 = 2;
        for (int j = 0; j < QK_K; j += 64) {
            onnxq_get_scale_min_k4(is + 0, x[i].scales, &sc, &m);
            const float d1 = d * sc, m1 = dmin * m;
            onnxq_get_scale_min_k4(is + 1, x[i].scales, &sc, &m);
            const float d2 = d * sc, m2 = dmin * m;
            for (int l = 0; l < 32; ++l) *y++ = d1 * (float)((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
            for (int l = 0; l < 32; ++l) *y++ = d2 * (float)((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
            ql += 32;
            is += 2;
            u1 = (uint8_t)(u1 << 2);
            u2 = (uint8_t)(u2 << 2);
        }
    }
}

static inline void onnxq_dequantize_row_q6_K(const block_q6_K *x, float *y, int64_t k) {
    const int64_t nb = k / QK_K;
    for (int64_t i = 0; i < nb; ++i) {
        const float d = onnxq_fp16_to_fp32(x[i].d);
        const uint8_t *ql = x[i].ql;
        const uint8_t *qh = x[i].qh;
        const int8_t *sc = x[i].scales;
        for (int n = 0; n < QK_K; n += 128) {
            for (int l = 0; l < 32; ++l) {
                const int is = l / 16;
                const int q1 = (int)((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int q2 = (int)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int q3 = (int)((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int q4 = (int)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l + 0] = d * (float)sc[is + 0] * (float)q1;
                y[l + 32] = d * (float)sc[is + 2] * (float)q2;
                y[l + 64] = d * (float)sc[is + 4] * (float)q3;
                y[l + 96] = d * (float)sc[is + 6] * (float)q4;
            }
            y += 128;
            ql += 64;
            qh += 32;
            sc += 8;
        }
    }
}

/* Dequantize k elements (a multiple of the type's block size) of one type. 0 on success. */
static inline int onnxq_dequantize_blocks(int type, const void *blocks, float *y, int64_t k) {
    switch (type) {
    case ONNXQ_TYPE_Q4_0: onnxq_dequantize_row_q4_0((const block_q4_0 *)blocks, y, k); return 0;
    case ONNXQ_TYPE_Q4_1: onnxq_dequantize_row_q4_1((const block_q4_1 *)blocks, y, k); return 0;
    case ONNXQ_TYPE_Q5_0: onnxq_dequantize_row_q5_0((const block_q5_0 *)blocks, y, k); return 0;
    case ONNXQ_TYPE_Q5_1: onnxq_dequantize_row_q5_1((const block_q5_1 *)blocks, y, k); return 0;
    case ONNXQ_TYPE_Q8_0: onnxq_dequantize_row_q8_0((const block_q8_0 *)blocks, y, k); return 0;
    case ONNXQ_TYPE_Q4_K: onnxq_dequantize_row_q4_K((const block_q4_K *)blocks, y, k); return 0;
    case ONNXQ_TYPE_Q5_K: onnxq_dequantize_row_q5_K((const block_q5_K *)blocks, y, k); return 0;
    case ONNXQ_TYPE_Q6_K: onnxq_dequantize_row_q6_K((const block_q6_K *)blocks, y, k); return 0;
    default: return -1;
    }
}

/*
 * Dequantize one onnxq row (L->row_bytes bytes) into y[0 .. L->K). scratch must hold
 * 256 floats; it receives the padded last block so y is never written past K.
 */
static inline int onnxq_dequantize_row(const onnxq_row_layout *L, const uint8_t *row, float *y, float *scratch) {
    const onnxq_type_traits *mt = onnxq_type_traits_of(L->main_type);
    if (mt == NULL) return -1;
    int64_t done = 0;
    /* main blocks that lie fully inside K */
    int64_t full_main = L->n_main;
    if (L->main_elems > L->K) full_main = L->n_main - 1;
    if (full_main > 0) {
        if (onnxq_dequantize_blocks(L->main_type, row, y, full_main * mt->block_size)) return -1;
        done = full_main * mt->block_size;
    }
    if (full_main < L->n_main) { /* padded last main block */
        if (onnxq_dequantize_blocks(L->main_type, row + full_main * mt->type_size, scratch, mt->block_size)) return -1;
        memcpy(y + done, scratch, (size_t)(L->K - done) * sizeof(float));
        return 0;
    }
    if (L->n_tail > 0) {
        const onnxq_type_traits *tt = onnxq_type_traits_of(L->tail_type);
        if (tt == NULL) return -1;
        const uint8_t *tail = row + L->main_bytes;
        const int64_t rem = L->K - done;
        const int64_t full_tail = rem / 32;
        if (full_tail > 0) {
            if (onnxq_dequantize_blocks(L->tail_type, tail, y + done, full_tail * 32)) return -1;
            done += full_tail * 32;
        }
        if (full_tail < L->n_tail) {
            if (onnxq_dequantize_blocks(L->tail_type, tail + full_tail * tt->type_size, scratch, 32)) return -1;
            memcpy(y + done, scratch, (size_t)(L->K - done) * sizeof(float));
        }
    }
    return 0;
}

#endif /* ONNXQ_GGML_DEQUANT_H */
