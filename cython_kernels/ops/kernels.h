/*
 * The compute kernels of onnxq's custom-op library, independent of onnxruntime.
 *
 * The ORT glue (ops_*.c) validates every size and index before calling in here;
 * the kernels trust their arguments. Kernel state (onnxq_weight) is read-only
 * after creation: onnxruntime calls compute concurrently on one kernel.
 */
#ifndef ONNXQ_KERNELS_H
#define ONNXQ_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "ggml_blocks.h"

typedef void (*onnxq_task_fn)(void *user, size_t task);

/* How kernels run work in parallel: the glue wraps KernelContext_ParallelFor. */
typedef struct {
    /* Runs fn(user, i) for every i in [0, total), possibly concurrently, and returns
     * when all are done. Returns 0, or nonzero when the runtime could not run them. */
    int (*parallel_for)(void *ctx, onnxq_task_fn fn, size_t total, void *user);
    void *ctx;
    int num_threads; /* >= 1, a hint for how finely to split work */
} onnxq_runner;

enum { ONNXQ_MODE_EXACT = 0, ONNXQ_MODE_FAST = 1 };

enum {
    ONNXQ_KERNEL_OK = 0,
    ONNXQ_KERNEL_NOMEM = 1,    /* an allocation failed */
    ONNXQ_KERNEL_RUNTIME = 2,  /* parallel_for failed */
};

/* A weight of N rows in layout L, prepared for the kernels. Opaque. */
typedef struct onnxq_weight onnxq_weight;

/*
 * Prepare a weight. W holds N * L->row_bytes bytes (the glue has checked that).
 * own_copy = 1: W is a constant initializer; the weight may copy or repack it into
 * any internal layout and must not keep a pointer to W (its lifetime is the session's,
 * but repacking is allowed to drop it). own_copy = 0: W is only valid for one call;
 * the weight may reference it without copying and is destroyed after the call.
 * Returns NULL on allocation failure.
 *
 * This implementation always repacks W into its own memory (row groups interleaved for
 * SIMD, see kernels_impl.h): about the size of W (+2.8% for Q4_K/Q5_K), in both cases.
 */
onnxq_weight *onnxq_weight_create(const onnxq_row_layout *L, int64_t N, const uint8_t *W, int own_copy);
void onnxq_weight_destroy(onnxq_weight *w);

/* Y[M, N] = X[M, K] @ dequant(W)[N, K]^T (+ bias[N] when bias != NULL).
 * EXACT: float activations against the dequantized weights (float32 accumulation).
 * FAST: each X row quantized to symmetric 8-bit blocks of 32 with fp32 scales and the
 * blocks' code sums (ggml's Q8_0 / Q8_1 for the 32-element types; K-quants take the same
 * blocks, not ggml's 256-element Q8_K), exact integer dot products per 32 elements; the
 * result does not depend on M or on the thread count. */
int onnxq_matmul(const onnxq_weight *w, const float *X, int64_t M, const float *bias, float *Y, int mode,
                 const onnxq_runner *run);

/* Y[i, 0..K) = dequant(W row idx[i]) for i in [0, M); every idx already in [0, N). */
int onnxq_gather(const onnxq_weight *w, const int64_t *idx, int64_t M, float *Y, const onnxq_runner *run);

/* The instruction set the kernels dispatch to on this CPU: "avx512vnni", "avxvnni" (AVX-VNNI,
 * VEX-encoded), "avx2" or "scalar" on x86-64; "i8mm", "dotprod", "neon" or "scalar" on aarch64. ONNXQ_ISA=<one of
 * them> in the environment (read once, at the first call) forces a lower level; asking for
 * a level the CPU lacks falls back to the best available one below it, and an unknown name
 * or another architecture's level means the best available. */
const char *onnxq_kernel_isa(void);

#endif /* ONNXQ_KERNELS_H */
