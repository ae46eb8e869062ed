/*
 * GgmlGather compute: Y[*indices.shape, K] = dequantized rows of the block table.
 * Every index is checked (and negative ones wrapped, as ONNX Gather does) before any
 * row is read.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops_common.h"

OrtStatus *onnxq_gather_compute(void *kernel, OrtKernelContext *ctx) {
    const onnxq_kernel *k = (const onnxq_kernel *)kernel;
    const OrtApi *api = k->api;
    const int64_t N = k->N;
    OrtStatus *st;

    size_t n_in = 0, n_out = 0;
    if ((st = ORT_CALL(api, KernelContext_GetInputCount)(ctx, &n_in))) return onnxq_wrap(k, st, "counting inputs");
    if ((st = ORT_CALL(api, KernelContext_GetOutputCount)(ctx, &n_out))) return onnxq_wrap(k, st, "counting outputs");
    if (n_in != 2) return onnxq_error(k, ORT_INVALID_ARGUMENT, "has %zu inputs, expected 2", n_in);
    if (n_out != 1) return onnxq_error(k, ORT_INVALID_ARGUMENT, "has %zu outputs, expected 1", n_out);

    onnxq_tensor T, I;
    if (!k->packed) {
        if ((st = onnxq_get_input(k, ctx, 0, "table", &T))) return st;
        if (!T.present) return onnxq_error(k, ORT_INVALID_ARGUMENT, "input table is missing");
        if ((st = onnxq_check_blocks(k, &T, "table"))) return st;
    }
    if ((st = onnxq_get_input(k, ctx, 1, "indices", &I))) return st;
    if (!I.present) return onnxq_error(k, ORT_INVALID_ARGUMENT, "input indices is missing");
    if (I.elem_type != ORT_TENSOR_INT64 && I.elem_type != ORT_TENSOR_INT32)
        return onnxq_error(k, ORT_INVALID_ARGUMENT, "indices must be int64 or int32, got %s",
                           onnxq_elem_type_name(I.elem_type));
    if (I.rank + 1 > ONNXQ_MAX_RANK)
        return onnxq_error(k, ORT_INVALID_ARGUMENT, "indices has rank %zu, at most %d is supported", I.rank,
                           ONNXQ_MAX_RANK - 1);
    const int64_t M = I.count;
    int64_t y_count = 0;
    if (!onnxq_mul_ok(M, k->L.K, &y_count) || y_count > INT64_MAX / (int64_t)sizeof(float))
        return onnxq_error(k, ORT_INVALID_ARGUMENT, "output of %lld rows of K=%lld floats is too large",
                           (long long)M, (long long)k->L.K);

    /* Validate every index first; rows are only read once all are known to be in range. */
    const int is64 = I.elem_type == ORT_TENSOR_INT64;
    int need_copy = !is64;
    for (int64_t i = 0; i < M; ++i) {
        const int64_t v = is64 ? ((const int64_t *)I.data)[i] : (int64_t)((const int32_t *)I.data)[i];
        if (v < -N || v >= N)
            return onnxq_error(k, ORT_INVALID_ARGUMENT,
                               "indices[%lld] = %lld is out of range for a table of N=%lld rows (valid: %lld..%lld)",
                               (long long)i, (long long)v, (long long)N, (long long)-N, (long long)(N - 1));
        if (v < 0) need_copy = 1;
    }

    int64_t ydims[ONNXQ_MAX_RANK];
    memcpy(ydims, I.dims, I.rank * sizeof(int64_t));
    ydims[I.rank] = k->L.K;
    OrtValue *Yv = NULL;
    if ((st = ORT_CALL(api, KernelContext_GetOutput)(ctx, 0, ydims, I.rank + 1, &Yv)))
        return onnxq_wrap(k, st, "allocating Y");
    void *yp = NULL;
    if ((st = ORT_CALL(api, GetTensorMutableData)(Yv, &yp))) return onnxq_wrap(k, st, "reading Y");
    if (M == 0) return NULL;
    if (yp == NULL) return onnxq_error(k, ORT_FAIL, "onnxruntime returned no memory for Y");

    const int64_t *idx = (const int64_t *)I.data;
    int64_t *norm = NULL;
    if (need_copy) {
        if ((uint64_t)M > SIZE_MAX / sizeof(int64_t)) return onnxq_error(k, ORT_FAIL, "too many indices");
        norm = (int64_t *)malloc((size_t)M * sizeof(int64_t));
        if (!norm) return onnxq_error(k, ORT_FAIL, "out of memory copying %lld indices", (long long)M);
        for (int64_t i = 0; i < M; ++i) {
            const int64_t v = is64 ? ((const int64_t *)I.data)[i] : (int64_t)((const int32_t *)I.data)[i];
            norm[i] = v < 0 ? v + N : v;
        }
        idx = norm;
    }

    onnxq_weight *tmp = NULL;
    const onnxq_weight *w = k->packed;
    if (!w) {
        tmp = onnxq_weight_create(&k->L, N, (const uint8_t *)T.data, 0);
        if (!tmp) {
            free(norm);
            return onnxq_error(k, ORT_FAIL, "out of memory preparing the table");
        }
        w = tmp;
    }
    onnxq_runner runner;
    onnxq_pf_state pfs;
    onnxq_runner_init(&runner, &pfs, k, ctx);
    int rc = onnxq_gather(w, idx, M, (float *)yp, &runner);
    if (tmp) onnxq_weight_destroy(tmp);
    free(norm);
    return onnxq_kernel_status(k, rc, &pfs);
}
