/*
 * Internal glue shared by ops_*.c: the kernel state of both ops, status helpers,
 * tensor inspection and the ParallelFor runner. Nothing here is exported.
 */
#ifndef ONNXQ_OPS_COMMON_H
#define ONNXQ_OPS_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "kernels.h"
#include "ort_abi.h"

#define ONNXQ_EXPORT __attribute__((visibility("default")))
#define ONNXQ_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))

/* The ops of the `onnxq` domain. */
typedef enum { ONNXQ_OP_MATMUL = 0, ONNXQ_OP_GATHER = 1 } onnxq_op_kind;

/* A custom op: ORT sees `base`; the glue recovers the kind from the same pointer. */
typedef struct {
    OrtCustomOp base; /* must stay first */
    onnxq_op_kind kind;
    const char *name;
} onnxq_op;

/* Largest rank accepted for any input (ONNX has no limit; this bounds stack use). */
#define ONNXQ_MAX_RANK 32
/* Largest N (rows of W) accepted; with ONNXQ_MAX_K it keeps N * row_bytes far from overflow. */
#define ONNXQ_MAX_N ((int64_t)1 << 40)
/* Node names longer than this are cut in messages. */
#define ONNXQ_NAME_CAP 256

/* Per-node state. Read-only once CreateKernelV2 returns: ORT runs compute concurrently. */
typedef struct {
    const OrtApi *api;
    onnxq_op_kind kind;
    char node[ONNXQ_NAME_CAP]; /* for messages; "" when the node has no name */
    onnxq_row_layout L;
    int64_t N;
    int64_t w_bytes;      /* N * L.row_bytes, the exact byte count W must have */
    int mode;             /* ONNXQ_MODE_EXACT / FAST (GgmlMatMul) */
    int num_threads;      /* hint for the kernels' work split */
    size_t w_index;       /* input index of the blocks: 1 for GgmlMatMul, 0 for GgmlGather */
    onnxq_weight *packed; /* non-NULL when W is a constant initializer, prepared once */
} onnxq_kernel;

/* Status carrying "<Op> '<node>': <message>". */
OrtStatus *onnxq_error(const onnxq_kernel *k, int code, const char *fmt, ...) ONNXQ_PRINTF(3, 4);
/* Wraps a status returned by ORT: "<Op> '<node>': <what>: <ORT's message>"; releases `inner`. */
OrtStatus *onnxq_wrap(const onnxq_kernel *k, OrtStatus *inner, const char *what);

const char *onnxq_op_name(onnxq_op_kind kind);
/* Human form of the row layout, e.g. "Q4_K (tail Q8_0)". */
const char *onnxq_layout_name(const onnxq_row_layout *L, char *buf, size_t cap);

/* Everything compute needs to know about one input tensor. */
typedef struct {
    int present;     /* 0: optional input not given */
    int elem_type;   /* ORT_TENSOR_* */
    size_t rank;
    int64_t dims[ONNXQ_MAX_RANK];
    int64_t count;   /* element count, checked against the product of dims */
    void *data;      /* may be NULL when count == 0 */
} onnxq_tensor;

/* Reads type, shape and data of an OrtValue; `label` names it in errors ("X", "W"...). */
OrtStatus *onnxq_inspect(const onnxq_kernel *k, const OrtValue *v, const char *label, onnxq_tensor *t);
/* Input `index` of the context (present = 0 if it is an omitted optional input). */
OrtStatus *onnxq_get_input(const onnxq_kernel *k, const OrtKernelContext *ctx, size_t index, const char *label,
                           onnxq_tensor *t);
const char *onnxq_elem_type_name(int elem_type);
/* "[2, 3, 4]" */
const char *onnxq_shape_str(const onnxq_tensor *t, char *buf, size_t cap);

/* Checks blocks tensor `t` (uint8, exactly k->w_bytes elements). */
OrtStatus *onnxq_check_blocks(const onnxq_kernel *k, const onnxq_tensor *t, const char *label);

/* a * b into *out; 0 on overflow (or negative operands). */
int onnxq_mul_ok(int64_t a, int64_t b, int64_t *out);

/* The runner the kernels get: KernelContext_ParallelFor on this call's context. */
typedef struct {
    const OrtApi *api;
    const OrtKernelContext *ctx;
    OrtStatus *failure; /* first failed ParallelFor status, handed back by onnxq_runner_finish */
} onnxq_pf_state;
void onnxq_runner_init(onnxq_runner *r, onnxq_pf_state *st, const onnxq_kernel *k, const OrtKernelContext *ctx);
/* Turns a kernel return code into a status (NULL when OK). */
OrtStatus *onnxq_kernel_status(const onnxq_kernel *k, int rc, onnxq_pf_state *st);

/* Creation shared by both ops; compute is per op. */
OrtStatus *onnxq_create_kernel(const OrtCustomOp *op, const OrtApi *api, const OrtKernelInfo *info, void **out);
void onnxq_destroy_kernel(void *kernel);
OrtStatus *onnxq_matmul_compute(void *kernel, OrtKernelContext *ctx);
OrtStatus *onnxq_gather_compute(void *kernel, OrtKernelContext *ctx);

#endif /* ONNXQ_OPS_COMMON_H */
