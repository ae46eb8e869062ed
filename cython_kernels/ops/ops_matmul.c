/*
 * GgmlMatMul compute: Y[..., N] = X[..., K] @ dequant(W).T (+ bias). Every shape, type
 * and size is checked against the node's attributes before the kernel sees a pointer.
 */
#include <stdio.h>
#include <string.h>

#include "ops_common.h"

OrtStatus *onnxq_matmul_compute(void *kernel, OrtKernelContext *ctx) {
    const onnxq_kernel *k = (const onnxq_kernel *)kernel;
    const OrtApi *api = k->api;
    OrtStatus *st;
    char sh[160];

    size_t n_in = 0, n_out = 0;
    if ((st = ORT_CALL(api, KernelContext_GetInputCount)(ctx, &n_in))) return onnxq_wrap(k, st, "counting inputs");
    if ((st = ORT_CALL(api, KernelContext_GetOutputCount)(ctx, &n_out))) return onnxq_wrap(k, st, "counting outputs");
    if (n_in < 2 || n_in > 3) return onnxq_error(k, ORT_INVALID_ARGUMENT, "has %zu inputs, expected 2 or 3", n_in);
    if (n_out != 1) return onnxq_error(k, ORT_INVALID_ARGUMENT, "has %zu outputs, expected 1", n_out);

    onnxq_tensor X, W, B;
    if ((st = onnxq_get_input(k, ctx, 0, "X", &X))) return st;
    if (!X.present) return onnxq_error(k, ORT_INVALID_ARGUMENT, "input X is missing");
    if (X.elem_type != ORT_TENSOR_FLOAT)
        return onnxq_error(k, ORT_INVALID_ARGUMENT, "X must be float32, got %s", onnxq_elem_type_name(X.elem_type));
    if (X.rank < 1 || X.dims[X.rank - 1] != k->L.K)
        return onnxq_error(k, ORT_INVALID_ARGUMENT, "X has shape %s, its last dimension must be K=%lld",
                           onnxq_shape_str(&X, sh, sizeof sh), (long long)k->L.K);
    const int64_t M = X.count / k->L.K; /* exact: count is the product of dims, the last being K > 0 */

    if (!k->packed) {
        if ((st = onnxq_get_input(k, ctx, 1, "W", &W))) return st;
        if (!W.present) return onnxq_error(k, ORT_INVALID_ARGUMENT, "input W is missing");
        if ((st = onnxq_check_blocks(k, &W, "W"))) return st;
    }

    const float *bias = NULL;
    if (n_in == 3) {
        if ((st = onnxq_get_input(k, ctx, 2, "bias", &B))) return st;
        if (B.present) {
            if (B.elem_type != ORT_TENSOR_FLOAT)
                return onnxq_error(k, ORT_INVALID_ARGUMENT, "bias must be float32, got %s",
                                   onnxq_elem_type_name(B.elem_type));
            if (B.rank != 1 || B.dims[0] != k->N)
                return onnxq_error(k, ORT_INVALID_ARGUMENT, "bias has shape %s, expected [%lld] (N)",
                                   onnxq_shape_str(&B, sh, sizeof sh), (long long)k->N);
            bias = (const float *)B.data;
        }
    }

    int64_t y_count = 0;
    if (!onnxq_mul_ok(M, k->N, &y_count) || y_count > INT64_MAX / (int64_t)sizeof(float))
        return onnxq_error(k, ORT_INVALID_ARGUMENT, "output of %lld x %lld floats is too large", (long long)M,
                           (long long)k->N);
    int64_t ydims[ONNXQ_MAX_RANK];
    memcpy(ydims, X.dims, X.rank * sizeof(int64_t));
    ydims[X.rank - 1] = k->N;
    OrtValue *Yv = NULL;
    if ((st = ORT_CALL(api, KernelContext_GetOutput)(ctx, 0, ydims, X.rank, &Yv)))
        return onnxq_wrap(k, st, "allocating Y");
    void *yp = NULL;
    if ((st = ORT_CALL(api, GetTensorMutableData)(Yv, &yp))) return onnxq_wrap(k, st, "reading Y");
    if (M == 0) return NULL;
    if (yp == NULL) return onnxq_error(k, ORT_FAIL, "onnxruntime returned no memory for Y");

    onnxq_weight *tmp = NULL;
    const onnxq_weight *w = k->packed;
    if (!w) {
        tmp = onnxq_weight_create(&k->L, k->N, (const uint8_t *)W.data, 0);
        if (!tmp) return onnxq_error(k, ORT_FAIL, "out of memory preparing W");
        w = tmp;
    }
    onnxq_runner runner;
    onnxq_pf_state pfs;
    onnxq_runner_init(&runner, &pfs, k, ctx);
    int rc = onnxq_matmul(w, (const float *)X.data, M, bias, (float *)yp, k->mode, &runner);
    if (tmp) onnxq_weight_destroy(tmp);
    return onnxq_kernel_status(k, rc, &pfs);
}
