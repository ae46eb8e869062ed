/*
 * ggml blocks <-> the x8 group layout described in kernels_impl.h. Pure byte shuffles:
 * repack then unpack gives back the original bytes (the Q4_K/Q5_K 12-byte scale
 * packing is a bijection on 8+8 six-bit values, so it is rebuilt exactly).
 */
#include "kernels_impl.h"

int64_t onnxq_group_block_bytes(int type) {
    switch (type) {
    case ONNXQ_TYPE_Q4_0: return GB_Q4_0_BYTES;
    case ONNXQ_TYPE_Q4_1: return GB_Q4_1_BYTES;
    case ONNXQ_TYPE_Q5_0: return GB_Q5_0_BYTES;
    case ONNXQ_TYPE_Q5_1: return GB_Q5_1_BYTES;
    case ONNXQ_TYPE_Q8_0: return GB_Q8_0_BYTES;
    case ONNXQ_TYPE_Q4_K: return GB_Q4_K_BYTES;
    case ONNXQ_TYPE_Q5_K: return GB_Q5_K_BYTES;
    case ONNXQ_TYPE_Q6_K: return GB_Q6_K_BYTES;
    default: return 0;
    }
}

/* The 4-byte chunks of a row's byte array src[0 .. 4*nchunks) go to out[(j*8 + r)*4 + t]. */
static void put_chunks(uint8_t *out, int r, const uint8_t *src, int nchunks) {
    for (int j = 0; j < nchunks; ++j) memcpy(out + (j * ONNXQ_GR + r) * 4, src + 4 * j, 4);
}
static void get_chunks(const uint8_t *in, int r, uint8_t *dst, int nchunks) {
    for (int j = 0; j < nchunks; ++j) memcpy(dst + 4 * j, in + (j * ONNXQ_GR + r) * 4, 4);
}

/* Q5_0/Q5_1 qh (bit e = 5th bit of element e) <-> bit planes: plane[t] bit j = bit 4j+t. */
static void qh_to_planes(const uint8_t qh[4], uint8_t plane[4]) {
    const uint32_t h = (uint32_t)qh[0] | ((uint32_t)qh[1] << 8) | ((uint32_t)qh[2] << 16) | ((uint32_t)qh[3] << 24);
    for (int t = 0; t < 4; ++t) {
        uint8_t p = 0;
        for (int j = 0; j < 8; ++j) p |= (uint8_t)(((h >> (4 * j + t)) & 1u) << j);
        plane[t] = p;
    }
}
static void planes_to_qh(const uint8_t plane[4], uint8_t qh[4]) {
    uint32_t h = 0;
    for (int t = 0; t < 4; ++t)
        for (int j = 0; j < 8; ++j) h |= (uint32_t)((plane[t] >> j) & 1u) << (4 * j + t);
    for (int i = 0; i < 4; ++i) qh[i] = (uint8_t)(h >> (8 * i));
}

static void scales_k4_decode(const uint8_t q[12], uint8_t sc[8], uint8_t mn[8]) {
    for (int j = 0; j < 8; ++j) {
        if (j < 4) {
            sc[j] = q[j] & 63;
            mn[j] = q[j + 4] & 63;
        } else {
            sc[j] = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
            mn[j] = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
        }
    }
}
static void scales_k4_encode(const uint8_t sc[8], const uint8_t mn[8], uint8_t q[12]) {
    for (int j = 0; j < 4; ++j) {
        q[j] = (uint8_t)((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
        q[j + 4] = (uint8_t)((mn[j] & 63) | ((mn[j + 4] >> 4) << 6));
        q[j + 8] = (uint8_t)((sc[j + 4] & 0xF) | ((mn[j + 4] & 0xF) << 4));
    }
}

static void repack_row(int type, const uint8_t *src, int r, uint8_t *gb) {
    switch (type) {
    case ONNXQ_TYPE_Q4_0: {
        const block_q4_0 *x = (const block_q4_0 *)src;
        memcpy(gb + 2 * r, &x->d, 2);
        put_chunks(gb + GB_Q4_0_QS, r, x->qs, 4);
        break;
    }
    case ONNXQ_TYPE_Q4_1: {
        const block_q4_1 *x = (const block_q4_1 *)src;
        memcpy(gb + 2 * r, &x->d, 2);
        memcpy(gb + GB_Q4_1_M + 2 * r, &x->m, 2);
        put_chunks(gb + GB_Q4_1_QS, r, x->qs, 4);
        break;
    }
    case ONNXQ_TYPE_Q5_0: {
        const block_q5_0 *x = (const block_q5_0 *)src;
        memcpy(gb + 2 * r, &x->d, 2);
        qh_to_planes(x->qh, gb + GB_Q5_0_QH + 4 * r);
        put_chunks(gb + GB_Q5_0_QS, r, x->qs, 4);
        break;
    }
    case ONNXQ_TYPE_Q5_1: {
        const block_q5_1 *x = (const block_q5_1 *)src;
        memcpy(gb + 2 * r, &x->d, 2);
        memcpy(gb + GB_Q5_1_M + 2 * r, &x->m, 2);
        qh_to_planes(x->qh, gb + GB_Q5_1_QH + 4 * r);
        put_chunks(gb + GB_Q5_1_QS, r, x->qs, 4);
        break;
    }
    case ONNXQ_TYPE_Q8_0: {
        const block_q8_0 *x = (const block_q8_0 *)src;
        memcpy(gb + 2 * r, &x->d, 2);
        put_chunks(gb + GB_Q8_0_QS, r, (const uint8_t *)x->qs, 8);
        break;
    }
    case ONNXQ_TYPE_Q4_K:
    case ONNXQ_TYPE_Q5_K: {
        /* Q4_K and Q5_K share the header; Q5_K adds qh. */
        const block_q4_K *x4 = (const block_q4_K *)src;
        const block_q5_K *x5 = (const block_q5_K *)src;
        const uint8_t *scales = type == ONNXQ_TYPE_Q4_K ? x4->scales : x5->scales;
        const uint8_t *qs = type == ONNXQ_TYPE_Q4_K ? x4->qs : x5->qs;
        memcpy(gb + 2 * r, src, 2);
        memcpy(gb + GB_QK_DMIN + 2 * r, src + 2, 2);
        uint8_t sc[8], mn[8];
        scales_k4_decode(scales, sc, mn);
        for (int s = 0; s < 8; ++s) gb[GB_QK_SC + s * 8 + r] = sc[s];
        for (int p = 0; p < 4; ++p) {
            gb[GB_QK_MN + (p * 8 + r) * 2 + 0] = mn[2 * p];
            gb[GB_QK_MN + (p * 8 + r) * 2 + 1] = mn[2 * p + 1];
        }
        if (type == ONNXQ_TYPE_Q5_K) {
            put_chunks(gb + GB_Q5_K_QH, r, x5->qh, 8);
            put_chunks(gb + GB_Q5_K_QS, r, qs, 32);
        } else {
            put_chunks(gb + GB_Q4_K_QS, r, qs, 32);
        }
        break;
    }
    case ONNXQ_TYPE_Q6_K: {
        const block_q6_K *x = (const block_q6_K *)src;
        memcpy(gb + 2 * r, &x->d, 2);
        for (int p = 0; p < 8; ++p) {
            gb[GB_Q6_K_SC + (p * 8 + r) * 2 + 0] = (uint8_t)x->scales[2 * p];
            gb[GB_Q6_K_SC + (p * 8 + r) * 2 + 1] = (uint8_t)x->scales[2 * p + 1];
        }
        put_chunks(gb + GB_Q6_K_QL, r, x->ql, 32);
        put_chunks(gb + GB_Q6_K_QH, r, x->qh, 16);
        break;
    }
    default: break;
    }
}

void onnxq_repack_group_block(int type, const uint8_t *const rows[ONNXQ_GR], uint8_t *out) {
    static const uint8_t zero[sizeof(block_q6_K) > sizeof(block_q5_K) ? sizeof(block_q6_K) : sizeof(block_q5_K)];
    memset(out, 0, (size_t)onnxq_group_block_bytes(type));
    for (int r = 0; r < ONNXQ_GR; ++r) repack_row(type, rows[r] ? rows[r] : zero, r, out);
}

void onnxq_unpack_group_block(int type, const uint8_t *gb, int r, uint8_t *out) {
    switch (type) {
    case ONNXQ_TYPE_Q4_0: {
        block_q4_0 *x = (block_q4_0 *)out;
        memcpy(&x->d, gb + 2 * r, 2);
        get_chunks(gb + GB_Q4_0_QS, r, x->qs, 4);
        break;
    }
    case ONNXQ_TYPE_Q4_1: {
        block_q4_1 *x = (block_q4_1 *)out;
        memcpy(&x->d, gb + 2 * r, 2);
        memcpy(&x->m, gb + GB_Q4_1_M + 2 * r, 2);
        get_chunks(gb + GB_Q4_1_QS, r, x->qs, 4);
        break;
    }
    case ONNXQ_TYPE_Q5_0: {
        block_q5_0 *x = (block_q5_0 *)out;
        memcpy(&x->d, gb + 2 * r, 2);
        planes_to_qh(gb + GB_Q5_0_QH + 4 * r, x->qh);
        get_chunks(gb + GB_Q5_0_QS, r, x->qs, 4);
        break;
    }
    case ONNXQ_TYPE_Q5_1: {
        block_q5_1 *x = (block_q5_1 *)out;
        memcpy(&x->d, gb + 2 * r, 2);
        memcpy(&x->m, gb + GB_Q5_1_M + 2 * r, 2);
        planes_to_qh(gb + GB_Q5_1_QH + 4 * r, x->qh);
        get_chunks(gb + GB_Q5_1_QS, r, x->qs, 4);
        break;
    }
    case ONNXQ_TYPE_Q8_0: {
        block_q8_0 *x = (block_q8_0 *)out;
        memcpy(&x->d, gb + 2 * r, 2);
        get_chunks(gb + GB_Q8_0_QS, r, (uint8_t *)x->qs, 8);
        break;
    }
    case ONNXQ_TYPE_Q4_K:
    case ONNXQ_TYPE_Q5_K: {
        block_q4_K *x4 = (block_q4_K *)out;
        block_q5_K *x5 = (block_q5_K *)out;
        uint8_t *scales = type == ONNXQ_TYPE_Q4_K ? x4->scales : x5->scales;
        uint8_t *qs = type == ONNXQ_TYPE_Q4_K ? x4->qs : x5->qs;
        memcpy(out, gb + 2 * r, 2);
        memcpy(out + 2, gb + GB_QK_DMIN + 2 * r, 2);
        uint8_t sc[8], mn[8];
        for (int s = 0; s < 8; ++s) sc[s] = gb[GB_QK_SC + s * 8 + r];
        for (int p = 0; p < 4; ++p) {
            mn[2 * p] = gb[GB_QK_MN + (p * 8 + r) * 2 + 0];
            mn[2 * p + 1] = gb[GB_QK_MN + (p * 8 + r) * 2 + 1];
        }
        scales_k4_encode(sc, mn, scales);
        if (type == ONNXQ_TYPE_Q5_K) {
            get_chunks(gb + GB_Q5_K_QH, r, x5->qh, 8);
            get_chunks(gb + GB_Q5_K_QS, r, qs, 32);
        } else {
            get_chunks(gb + GB_Q4_K_QS, r, qs, 32);
        }
        break;
    }
    case ONNXQ_TYPE_Q6_K: {
        block_q6_K *x = (block_q6_K *)out;
        memcpy(&x->d, gb + 2 * r, 2);
        for (int p = 0; p < 8; ++p) {
            x->scales[2 * p] = (int8_t)gb[GB_Q6_K_SC + (p * 8 + r) * 2 + 0];
            x->scales[2 * p + 1] = (int8_t)gb[GB_Q6_K_SC + (p * 8 + r) * 2 + 1];
        }
        get_chunks(gb + GB_Q6_K_QL, r, x->ql, 32);
        get_chunks(gb + GB_Q6_K_QH, r, x->qh, 16);
        break;
    }
    default: break;
    }
}

int64_t onnxq_igemm_block_bytes(int type, int ng) {
    const onnxq_igemm_shape s = onnxq_igemm_shape_of(type);
    /* every field is one 32-byte vector (8 lanes) per group and step/scale */
    return (int64_t)ng * 32 * (s.nks + s.nf + s.nsub + s.npair);
}
