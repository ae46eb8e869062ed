/*
 * ggml block formats: the one declaration of every block struct, the type table,
 * exact fp16 conversion and the row layout onnxq uses for a weight row.
 *
 * Shared by the Cython codecs (through ggml_blocks.pxd) and the onnxruntime
 * custom-op library. Plain C11, header only, no allocation, no globals.
 *
 * Layouts are byte-identical to ggml's (ggml/src/ggml-common.h); all multi-byte
 * fields are little-endian, which is what every target we build for is.
 */
#ifndef ONNXQ_GGML_BLOCKS_H
#define ONNXQ_GGML_BLOCKS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define QK4_0 32
#define QK4_1 32
#define QK5_0 32
#define QK5_1 32
#define QK8_0 32
#define QK8_1 32
#define QK_K 256
#define K_SCALE_SIZE 12

typedef uint16_t ggml_half;

typedef struct { ggml_half d; uint8_t qs[QK4_0 / 2]; } block_q4_0;
typedef struct { ggml_half d; ggml_half m; uint8_t qs[QK4_1 / 2]; } block_q4_1;
typedef struct { ggml_half d; uint8_t qh[4]; uint8_t qs[QK5_0 / 2]; } block_q5_0;
typedef struct { ggml_half d; ggml_half m; uint8_t qh[4]; uint8_t qs[QK5_1 / 2]; } block_q5_1;
typedef struct { ggml_half d; int8_t qs[QK8_0]; } block_q8_0;
/* activation type for Q4_1/Q5_1 dot products: s = d * sum(qs) */
typedef struct { ggml_half d; ggml_half s; int8_t qs[QK8_1]; } block_q8_1;
typedef struct {
    ggml_half d;
    ggml_half dmin;
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qs[QK_K / 2];
} block_q4_K;
typedef struct {
    ggml_half d;
    ggml_half dmin;
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qh[QK_K / 8];
    uint8_t qs[QK_K / 2];
} block_q5_K;
typedef struct {
    uint8_t ql[QK_K / 2];
    uint8_t qh[QK_K / 4];
    int8_t scales[QK_K / 16];
    ggml_half d; /* last, unlike every other type */
} block_q6_K;
/* activation type for K-quant dot products; bsums[i] = sum of qs[16i .. 16i+15] */
typedef struct { float d; int8_t qs[QK_K]; int16_t bsums[QK_K / 16]; } block_q8_K;

_Static_assert(sizeof(block_q4_0) == 18, "block_q4_0 size");
_Static_assert(sizeof(block_q4_1) == 20, "block_q4_1 size");
_Static_assert(sizeof(block_q5_0) == 22, "block_q5_0 size");
_Static_assert(sizeof(block_q5_1) == 24, "block_q5_1 size");
_Static_assert(sizeof(block_q8_0) == 34, "block_q8_0 size");
_Static_assert(sizeof(block_q8_1) == 36, "block_q8_1 size");
_Static_assert(sizeof(block_q4_K) == 144, "block_q4_K size");
_Static_assert(sizeof(block_q5_K) == 176, "block_q5_K size");
_Static_assert(sizeof(block_q6_K) == 210, "block_q6_K size");
_Static_assert(sizeof(block_q8_K) == 292, "block_q8_K size");

/* ggml's enum ggml_type values, so ids mean the same thing as in a GGUF file. */
enum onnxq_type {
    ONNXQ_TYPE_NONE = -1,
    ONNXQ_TYPE_Q4_0 = 2,
    ONNXQ_TYPE_Q4_1 = 3,
    ONNXQ_TYPE_Q5_0 = 6,
    ONNXQ_TYPE_Q5_1 = 7,
    ONNXQ_TYPE_Q8_0 = 8,
    ONNXQ_TYPE_Q8_1 = 9,
    ONNXQ_TYPE_Q4_K = 12,
    ONNXQ_TYPE_Q5_K = 13,
    ONNXQ_TYPE_Q6_K = 14,
    ONNXQ_TYPE_Q8_K = 15,
};

typedef struct {
    int type;           /* enum onnxq_type */
    const char *name;   /* "Q4_0", ... as ggml and gguf spell it */
    int block_size;     /* elements per block */
    int type_size;      /* bytes per block */
    int is_weight_type; /* 1 if a weight may be stored in it (not Q8_1 / Q8_K) */
} onnxq_type_traits;

static const onnxq_type_traits ONNXQ_TYPE_TABLE[] = {
    {ONNXQ_TYPE_Q4_0, "Q4_0", QK4_0, (int)sizeof(block_q4_0), 1},
    {ONNXQ_TYPE_Q4_1, "Q4_1", QK4_1, (int)sizeof(block_q4_1), 1},
    {ONNXQ_TYPE_Q5_0, "Q5_0", QK5_0, (int)sizeof(block_q5_0), 1},
    {ONNXQ_TYPE_Q5_1, "Q5_1", QK5_1, (int)sizeof(block_q5_1), 1},
    {ONNXQ_TYPE_Q8_0, "Q8_0", QK8_0, (int)sizeof(block_q8_0), 1},
    {ONNXQ_TYPE_Q8_1, "Q8_1", QK8_1, (int)sizeof(block_q8_1), 0},
    {ONNXQ_TYPE_Q4_K, "Q4_K", QK_K, (int)sizeof(block_q4_K), 1},
    {ONNXQ_TYPE_Q5_K, "Q5_K", QK_K, (int)sizeof(block_q5_K), 1},
    {ONNXQ_TYPE_Q6_K, "Q6_K", QK_K, (int)sizeof(block_q6_K), 1},
    {ONNXQ_TYPE_Q8_K, "Q8_K", QK_K, (int)sizeof(block_q8_K), 0},
};
#define ONNXQ_TYPE_COUNT ((int)(sizeof(ONNXQ_TYPE_TABLE) / sizeof(ONNXQ_TYPE_TABLE[0])))

/* NULL for an unknown id. */
static inline const onnxq_type_traits *onnxq_type_traits_of(int type) {
    for (int i = 0; i < ONNXQ_TYPE_COUNT; ++i)
        if (ONNXQ_TYPE_TABLE[i].type == type) return &ONNXQ_TYPE_TABLE[i];
    return NULL;
}

/* ONNXQ_TYPE_NONE for an unknown name; names compare case-insensitively. */
static inline int onnxq_type_from_name(const char *name) {
    if (name == NULL) return ONNXQ_TYPE_NONE;
    for (int i = 0; i < ONNXQ_TYPE_COUNT; ++i) {
        const char *a = ONNXQ_TYPE_TABLE[i].name, *b = name;
        while (*a && *b) {
            char cb = *b;
            if (cb >= 'a' && cb <= 'z') cb = (char)(cb - 'a' + 'A');
            if (*a != cb) break;
            ++a; ++b;
        }
        if (*a == 0 && *b == 0) return ONNXQ_TYPE_TABLE[i].type;
    }
    return ONNXQ_TYPE_NONE;
}

/* ---- fp16 <-> fp32, bit exact, round to nearest even (as F16C's vcvtps2ph with imm 0,
 * numpy's astype(float16) and ggml's scalar GGML_FP32_TO_FP16). ---- */

static inline float onnxq_fp16_to_fp32(ggml_half h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1fu) {
        bits = sign | 0x7f800000u | (mant << 13); /* inf / nan */
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (mant << 13);
    } else if (mant == 0) {
        bits = sign;
    } else {
        /* subnormal half: normalise into a float */
        int e = -1;
        do { ++e; mant <<= 1; } while ((mant & 0x400u) == 0);
        bits = sign | ((uint32_t)(112 - e) << 23) | ((mant & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline ggml_half onnxq_fp32_to_fp16(float value) {
    uint32_t f;
    memcpy(&f, &value, sizeof f);
    const uint32_t sign = f & 0x80000000u;
    f ^= sign;
    uint16_t out;
    if (f >= (143u << 23)) {               /* |x| >= 65536, inf or nan */
        out = (f > (255u << 23)) ? 0x7e00u : 0x7c00u;
    } else if (f < (113u << 23)) {         /* below the smallest normal half: subnormal or 0 */
        /* Adding 0.5 lets the FPU do the round-to-nearest-even of the mantissa shift. */
        const uint32_t magic_bits = 126u << 23;
        float magic, v;
        memcpy(&magic, &magic_bits, sizeof magic);
        memcpy(&v, &f, sizeof v);
        v += magic;
        memcpy(&f, &v, sizeof f);
        out = (uint16_t)(f - magic_bits);
    } else {
        const uint32_t mant_odd = (f >> 13) & 1u;
        f += ((uint32_t)(15 - 127) << 23) + 0xfffu; /* rebias, round half up ... */
        f += mant_odd;                              /* ... and to even on ties */
        out = (uint16_t)(f >> 13);                  /* carries into inf past 65519 */
    }
    return (ggml_half)(out | (sign >> 16));
}

/* ---- row layout ----
 * A weight row of K elements (one output feature) is stored as n_main blocks of the
 * main type followed by n_tail blocks of a 32-element tail type. The tail exists only
 * for a K-quant main type with tail_type != NONE: it covers K mod 256 elements so that
 * widths like 576 need no 256-element padding. Without a tail, the last block is
 * zero-padded. Padding elements are zero when quantized and ignored when read.
 */
typedef struct {
    int main_type;
    int tail_type;          /* ONNXQ_TYPE_NONE when there is no tail */
    int64_t K;              /* logical elements per row */
    int64_t n_main;         /* blocks of main_type */
    int64_t main_elems;     /* elements covered by the main blocks (may exceed K: padding) */
    int64_t n_tail;         /* blocks of tail_type */
    int64_t main_bytes;     /* n_main * main type_size */
    int64_t row_bytes;      /* bytes of one row */
} onnxq_row_layout;

enum {
    ONNXQ_LAYOUT_OK = 0,
    ONNXQ_LAYOUT_BAD_MAIN_TYPE = 1,   /* unknown or not a weight type */
    ONNXQ_LAYOUT_BAD_TAIL_TYPE = 2,   /* unknown, not 32-element, or given for a 32-element main */
    ONNXQ_LAYOUT_BAD_K = 3,           /* K < 1 or too large */
};

/* Largest K accepted: keeps every product below in int64 range with room to spare. */
#define ONNXQ_MAX_K ((int64_t)1 << 40)

static inline int onnxq_row_layout_init(onnxq_row_layout *L, int main_type, int tail_type, int64_t K) {
    memset(L, 0, sizeof *L);
    const onnxq_type_traits *mt = onnxq_type_traits_of(main_type);
    if (mt == NULL || !mt->is_weight_type) return ONNXQ_LAYOUT_BAD_MAIN_TYPE;
    if (K < 1 || K > ONNXQ_MAX_K) return ONNXQ_LAYOUT_BAD_K;
    L->main_type = main_type;
    L->tail_type = ONNXQ_TYPE_NONE;
    L->K = K;
    if (tail_type != ONNXQ_TYPE_NONE) {
        const onnxq_type_traits *tt = onnxq_type_traits_of(tail_type);
        if (tt == NULL || !tt->is_weight_type || tt->block_size != 32 || mt->block_size == 32)
            return ONNXQ_LAYOUT_BAD_TAIL_TYPE;
        L->tail_type = tail_type;
        L->n_main = K / mt->block_size;
        L->main_elems = L->n_main * mt->block_size;
        L->n_tail = (K - L->main_elems + 31) / 32;
        L->main_bytes = L->n_main * mt->type_size;
        L->row_bytes = L->main_bytes + L->n_tail * tt->type_size;
    } else {
        L->n_main = (K + mt->block_size - 1) / mt->block_size;
        L->main_elems = L->n_main * mt->block_size;
        L->n_tail = 0;
        L->main_bytes = L->n_main * mt->type_size;
        L->row_bytes = L->main_bytes;
    }
    return ONNXQ_LAYOUT_OK;
}

#endif /* ONNXQ_GGML_BLOCKS_H */
