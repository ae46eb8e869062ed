/*
 * Private to the kernels (kernels_*.c) and their native tests: the repacked weight
 * layout, the quantized-activation layout and the per-ISA function tables.
 *
 * Weight layout ("x8 groups"). Rows are taken 8 at a time (a group; the last group is
 * padded with all-zero rows). For every block index b, the 8 rows' block b is stored as
 * one group-block: the rows' scales side by side (so one vector load gets all 8) and
 * the quants interleaved in 4-byte chunks, chunk j of row r at [j][r][0..3]. A 32-byte
 * load is then 8 rows x 4 consecutive elements, which is what a maddubs/dpbusd against a
 * broadcast of 4 activation bytes needs (one int32 lane per row, no horizontal sums), and
 * what the GEMM panel packer needs (one float vector per k holds the 8 rows). The bit
 * planes keep ggml's nibble/bit pairing, so expanding a chunk is the same shifts and
 * masks ggml uses. Group-block byte layouts (GB_* offsets below):
 *
 *   Q4_0  d[8] qs[4][8][4]                        lo nibble: elem 4j+t, hi: 16+4j+t
 *   Q4_1  d[8] m[8] qs[4][8][4]
 *   Q5_0  d[8] qh[8][4] qs[4][8][4]               qh[r][t] bit j = 5th bit of elem 4j+t
 *   Q5_1  d[8] m[8] qh[8][4] qs[4][8][4]
 *   Q8_0  d[8] qs[8][8][4]                        elem 4j+t
 *   Q4_K  d[8] dmin[8] sc[8][8] mn[4][8][2] qs[4][8][8][4]
 *         sc[s][r] 6-bit scale of sub-block s; mn[p][r][e] min of sub-block 2p+e;
 *         qs[c][g][r][t] = row's qs[32c+4g+t]: lo elem 64c+4g+t, hi 64c+32+4g+t
 *   Q5_K  as Q4_K, then qh[8][8][4] (qh[g][r][t] = row's qh[4g+t]) before qs
 *   Q6_K  d[8] sc[8][8][2] ql[2][2][8][8][4] qh[2][8][8][4]
 *         sc[p][r][e] = scale of sub-block 2p+e; ql[h][p][g][r][t] = row's ql[64h+32p+4g+t];
 *         qh[h][g][r][t] = row's qh[32h+4g+t]
 *
 * The repacked weight has the same size as the ggml bytes, except Q4_K/Q5_K whose
 * 12-byte packed scales become 16 plain bytes (+2.8%). Every format is reversible:
 * onnxq_unpack_group_block restores a row's original ggml block (gather uses it).
 */
#ifndef ONNXQ_KERNELS_IMPL_H
#define ONNXQ_KERNELS_IMPL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "ggml_blocks.h"
#include "kernels.h"

#define ONNXQ_GR 8 /* rows per group */

/* One part of a row: the main blocks, or the 32-element tail of a K-quant row. */
typedef struct {
    int type;        /* enum onnxq_type of the blocks */
    int bs;          /* elements per block */
    int64_t nb;      /* blocks per row */
    int64_t k0;      /* index of the part's first element in the row */
    int64_t gbytes;  /* bytes of one group-block */
    uint8_t *data;   /* n_groups * nb group-blocks, group-major */
} onnxq_wpart;

struct onnxq_weight {
    onnxq_row_layout L;
    int64_t N;
    int64_t n_groups; /* ceil(N / 8) */
    int nparts;       /* 1, or 2 when the row has a tail */
    onnxq_wpart part[2];
    void *mem;
};

/* Bytes of one repacked group-block of a weight type; 0 for other types. */
int64_t onnxq_group_block_bytes(int type);
/* Repack block b of 8 rows: rows[r] points at the row's block (NULL = a zero row). */
void onnxq_repack_group_block(int type, const uint8_t *const rows[ONNXQ_GR], uint8_t *out);
/* Restore row r's original ggml block from a repacked group-block. */
void onnxq_unpack_group_block(int type, const uint8_t *gb, int r, uint8_t *out);

/*
 * A quantized activation row for one weight part. Every type's activations are Q8_0-style
 * blocks of 32 (ggml's Q8_0 / Q8_1 for the 32-element types):
 *   32-element types: qs, d (one per block), isum (sum of the block's qs; Q8_1's s is d * isum);
 *   K-quants (onnxq_is_kquant: nb super-blocks of 256 = 8 blocks each): qs, d and isum per
 *     32-element block (8 per super-block); for Q6_K also bsum16 (16 per super-block: sums
 *     of 16 for its 16-element sub-blocks; bsum16[2i] + bsum16[2i + 1] == isum[i]), NULL
 *     for the other types, which never read it.
 * Values are symmetric: q = round_half_even(x * 127 / amax) in [-127, 127], d = amax / 127,
 * kept as fp32 (ggml stores Q8_0/Q8_1's d as fp16; fp32 only removes a rounding).
 * K-quants use 32-element activation blocks, not ggml's Q8_K (one d per 256): on SmolLM2
 * Q4_K_M that costs +0.35 pp perplexity instead of +1.17 pp (benchmarks/activation_blocks.py),
 * which lets the auto mode run K-quant layers fast.
 */
typedef struct {
    const int8_t *qs;
    const float *d;
    const int32_t *isum;
    const int16_t *bsum16;  /* Q6_K */
} onnxq_qact;

/* x[0 .. n) then zeros up to nb blocks of 32 (n <= nb * 32): qs[32 * nb], d[nb], isum[nb]. */
typedef void (*onnxq_quant32_fn)(const float *x, int64_t n, int64_t nb, int8_t *qs, float *d, int32_t *isum);

/*
 * Fast mode: out[m*8 + r] = sum over the part's nb blocks of row r of the group (g, a
 * run of group-blocks) dotted with activation a[m], for m < M <= 8: an exact int32 sum per
 * 32 activation elements times fp32 scales, accumulated in fp32 in block order. Per 32
 * elements (the scalar kernels write it out; x86 levels may fuse, ARM levels may not):
 *   Q4_0 Q5_0 Q8_0:  acc += (d * dy) * (float)(dot - off * isum)
 *   Q4_1 Q5_1:       acc += (d * dy) * (float)dot + m * (dy * (float)isum)
 *   Q4_K Q5_K:       sub-block s of 32, ds = d * sc_s and ms = dmin * mn_s (both exact in fp32):
 *                    acc += (ds * dy) * (float)dot - ms * (dy * (float)isum)
 *   Q6_K:            16-element sub-blocks 2s, 2s+1 with int8 scales, codes L = q + 32:
 *                    acc += (d * dy) * (float)(sum_h sc_h * (dot16_h - 32 * bsum16_h))
 */
typedef void (*onnxq_dot_fn)(const uint8_t *g, int64_t nb, const onnxq_qact *a, int M, float *out);

/*
 * Dequantize nblk group-blocks (starting at gb) into panel[k*8 + r], k < nblk * block:
 * bit-identical to onnxq_dequantize_blocks (ggml_dequant.h) for every element.
 */
typedef void (*onnxq_panel_fn)(const uint8_t *gb, int64_t nblk, float *panel);

/*
 * Exact mode, few rows: out[m*8 + r] = dequant(row r of the nb group-blocks at g) . x_m for
 * m < M <= 8, in float arithmetic (equal to dequantize-then-dot up to rounding). x_m =
 * x + m*ldx holds nb * block floats, zero-padded by the caller; xsum[m*ldsum + i] is the
 * sum of x_m's 32-element chunk i (the min terms of Q4_1, Q5_1, Q4_K, Q5_K use it).
 */
typedef void (*onnxq_fdot_fn)(const uint8_t *g, int64_t nb, const float *x, int64_t ldx, const float *xsum,
                              int64_t ldsum, int M, float *out);

/*
 * GEMM micro-kernel on a 6 x 16 tile of C (row stride ldc): with t = sum_{k < kc} x[i][k] * P[k][j]
 * for i < 6, j < 16, where x[i] = xrows[i] and P's columns 0..7 come from panel pa, 8..15 from
 * pb ([kc][8] each): accumulate ? C += t : C = t (+ bias[j] when bias != NULL).
 */
#define ONNXQ_MR 6
#define ONNXQ_NR 16
typedef void (*onnxq_ukernel_fn)(int64_t kc, const float *const xrows[ONNXQ_MR], const float *pa, const float *pb,
                                 float *c, int64_t ldc, int accumulate, const float *bias);

/*
 * Gather: dequantize one ggml block (a row's block restored by onnxq_unpack_group_block)
 * into y[0 .. block size), bit-identical to onnxq_dequantize_blocks. NULL in a table: the
 * scalar one is used.
 */
typedef void (*onnxq_dequant_fn)(const uint8_t *block, float *y);

/*
 * Integer GEMM (fast mode, many rows). A panel holds nblk consecutive blocks of ng
 * consecutive weight groups, expanded once per call into what the micro-kernel wants; per
 * block (onnxq_igemm_block_bytes; the x86 layout below, the ARM levels write their own
 * within the same size, kernels_igemm_arm.h):
 *   codes [bs/4][ng][8][4]   unsigned codes (Q8_0: q ^ 0x80, Q6_K: L = q + 32), 4 consecutive
 *                            elements of each of the ng*8 columns: one vector load is 8 or 16
 *                            columns; then fields of [ng*8] lanes (one vector per group each):
 *   32-element types:        f0 float d; f1 float m (Q4_1, Q5_1 only)
 *   Q4_K Q5_K (x86 fields, kernels_x86.h IGK_*): ds[8] float d * sc_s; dmin float; the mins
 *                            as bytes mn[8][ng*8] (2 vectors); 3 vectors unused
 *   Q6_K:                    d float; per 32-element block s: sc_{2s}, sc_{2s+1} int32 with the
 *                            scale in both int16 halves (vpmaddwd scales while it widens), and
 *                            32 * (sc_{2s}, sc_{2s+1}) as int16 pairs against the bsum16 pair
 * The micro-kernel computes C[MR rows][ng*8] (row stride ldc) over the blocks with the same
 * float operations, in the same order, as the table's dot kernel: the integer sums are
 * exact, so the result is bit-identical to the dot path whatever M and the tiling.
 * first = 1: C starts at zero; else the kernel continues the accumulation held in C.
 */
typedef struct {
    int nks, nsub, npair, nf; /* 4-element steps per block, scale vectors, pair vectors, float vectors */
} onnxq_igemm_shape;
/* inline: the micro-kernels' loop bounds become constants */
static inline onnxq_igemm_shape onnxq_igemm_shape_of(int type) {
    switch (type) {
    case ONNXQ_TYPE_Q4_0:
    case ONNXQ_TYPE_Q5_0:
    case ONNXQ_TYPE_Q8_0: return (onnxq_igemm_shape){8, 0, 0, 1};
    case ONNXQ_TYPE_Q4_1:
    case ONNXQ_TYPE_Q5_1: return (onnxq_igemm_shape){8, 0, 0, 2};
    case ONNXQ_TYPE_Q4_K:
    case ONNXQ_TYPE_Q5_K: return (onnxq_igemm_shape){64, 8, 4, 2};
    case ONNXQ_TYPE_Q6_K: return (onnxq_igemm_shape){64, 16, 8, 1};
    default: return (onnxq_igemm_shape){0, 0, 0, 0};
    }
}

int64_t onnxq_igemm_block_bytes(int type, int ng);
/* Expand blocks [b0, b0 + nblk) of groups g, g+1, .. (gd = group g's data, gstride bytes between
 * groups): nvalid <= ng real groups, the rest zero. */
typedef void (*onnxq_gexpand_fn)(const uint8_t *gd, int64_t gstride, int nvalid, int ng, int64_t b0, int64_t nblk,
                                 uint8_t *panel);
/* rows[i] for i < MR: the activation rows (a row may repeat; its results are then ignored). */
typedef void (*onnxq_igemm_fn)(const uint8_t *panel, int64_t b0, int64_t nblk, const onnxq_qact *const *rows,
                               float *C, int64_t ldc, int first);

/* Levels of one architecture are consecutive, lowest first (ONNXQ_ISA caps within them). */
enum {
    ONNXQ_ISA_SCALAR = 0,
    ONNXQ_ISA_AVX2 = 1, ONNXQ_ISA_AVXVNNI = 2, ONNXQ_ISA_AVX512VNNI = 3,
    ONNXQ_ISA_NEON = 4, ONNXQ_ISA_DOTPROD = 5, ONNXQ_ISA_I8MM = 6,
    ONNXQ_ISA_COUNT = 7
};

/* X(suffix, type) for the weight types in slot order: one entry point per type. */
#define ONNXQ_FOR_EACH_WTYPE(X)                                                                              \
    X(q4_0, ONNXQ_TYPE_Q4_0) X(q4_1, ONNXQ_TYPE_Q4_1) X(q5_0, ONNXQ_TYPE_Q5_0) X(q5_1, ONNXQ_TYPE_Q5_1)      \
    X(q8_0, ONNXQ_TYPE_Q8_0) X(q4_K, ONNXQ_TYPE_Q4_K) X(q5_K, ONNXQ_TYPE_Q5_K) X(q6_K, ONNXQ_TYPE_Q6_K)

/* Indexed by weight type through onnxq_type_slot(). */
#define ONNXQ_NSLOTS 8

typedef struct {
    const char *name;
    onnxq_quant32_fn quant_q8_0;
    onnxq_dot_fn dot[ONNXQ_NSLOTS];
    onnxq_panel_fn panel[ONNXQ_NSLOTS];
    onnxq_fdot_fn fdot[ONNXQ_NSLOTS];
    onnxq_ukernel_fn ukernel;
    onnxq_dequant_fn dequant[ONNXQ_NSLOTS];
    /* integer GEMM: NULL where the level has none (the dot kernels then take every M) */
    onnxq_gexpand_fn gexpand[ONNXQ_NSLOTS];
    onnxq_igemm_fn igemm[ONNXQ_NSLOTS];
    int igemm_mr, igemm_ng; /* rows and groups of the micro-kernel's tile */
} onnxq_kernel_table;

/* 0..7 for Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q4_K Q5_K Q6_K, -1 otherwise. */
static inline int onnxq_type_slot(int type) {
    switch (type) {
    case ONNXQ_TYPE_Q4_0: return 0;
    case ONNXQ_TYPE_Q4_1: return 1;
    case ONNXQ_TYPE_Q5_0: return 2;
    case ONNXQ_TYPE_Q5_1: return 3;
    case ONNXQ_TYPE_Q8_0: return 4;
    case ONNXQ_TYPE_Q4_K: return 5;
    case ONNXQ_TYPE_Q5_K: return 6;
    case ONNXQ_TYPE_Q6_K: return 7;
    default: return -1;
    }
}

/* 1 for the K-quants: weight blocks are 256-element super-blocks (their activations are the
 * same 32-element blocks as every type's, 8 per super-block), else 0. */
static inline int onnxq_is_kquant(int type) {
    return type == ONNXQ_TYPE_Q4_K || type == ONNXQ_TYPE_Q5_K || type == ONNXQ_TYPE_Q6_K;
}

/* Group-block field offsets (bytes). */
enum {
    GB_Q4_0_QS = 16,
    GB_Q4_1_M = 16, GB_Q4_1_QS = 32,
    GB_Q5_0_QH = 16, GB_Q5_0_QS = 48,
    GB_Q5_1_M = 16, GB_Q5_1_QH = 32, GB_Q5_1_QS = 64,
    GB_Q8_0_QS = 16,
    GB_QK_DMIN = 16, GB_QK_SC = 32, GB_QK_MN = 96, GB_Q4_K_QS = 160,
    GB_Q5_K_QH = 160, GB_Q5_K_QS = 416,
    GB_Q6_K_SC = 16, GB_Q6_K_QL = 144, GB_Q6_K_QH = 1168,
};
enum {
    GB_Q4_0_BYTES = 144, GB_Q4_1_BYTES = 160, GB_Q5_0_BYTES = 176, GB_Q5_1_BYTES = 192, GB_Q8_0_BYTES = 272,
    GB_Q4_K_BYTES = 1184, GB_Q5_K_BYTES = 1440, GB_Q6_K_BYTES = 1680,
};

/* The tables: scalar always; the SIMD ones are NULL where the compiler cannot build them. */
extern const onnxq_kernel_table onnxq_kernels_scalar;
const onnxq_kernel_table *onnxq_kernels_avx2(void);
const onnxq_kernel_table *onnxq_kernels_avxvnni(void);
const onnxq_kernel_table *onnxq_kernels_avx512vnni(void);
const onnxq_kernel_table *onnxq_kernels_neon(void);
const onnxq_kernel_table *onnxq_kernels_dotprod(void);
const onnxq_kernel_table *onnxq_kernels_i8mm(void);

/* The table for an ISA level if this build has it and this CPU runs it, else NULL. */
const onnxq_kernel_table *onnxq_kernels_for_isa(int isa);
/* The table in use (ONNXQ_ISA applied), chosen once. */
const onnxq_kernel_table *onnxq_kernels_active(void);
/* Tests only: make t the table in use (t from onnxq_kernels_for_isa). */
void onnxq_kernels_set_active(const onnxq_kernel_table *t);

/* Scalar activation quantizers (the reference the SIMD ones must match bit for bit). */
void onnxq_quant_q8_0_scalar(const float *x, int64_t n, int64_t nb, int8_t *qs, float *d, int32_t *isum);

static inline uint16_t onnxq_rd16(const uint8_t *p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}
static inline float onnxq_rdh(const uint8_t *p) { return onnxq_fp16_to_fp32(onnxq_rd16(p)); }

#endif /* ONNXQ_KERNELS_IMPL_H */
