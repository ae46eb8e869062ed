#include "harness.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "kernels_impl.h"

typedef struct {
    onnxq_task_fn fn;
    void *user;
    size_t total;
    atomic_size_t next;
} pool_job;

static void *pool_worker(void *arg) {
    pool_job *j = arg;
    for (;;) {
        const size_t i = atomic_fetch_add(&j->next, 1);
        if (i >= j->total) break;
        j->fn(j->user, i);
    }
    return NULL;
}

/* A fresh set of threads per call: slow, but simple and what ASan/valgrind check best. */
static int pool_parallel_for(void *ctx, onnxq_task_fn fn, size_t total, void *user) {
    const int nt = *(const int *)ctx;
    pool_job j = {fn, user, total, 0};
    pthread_t th[16];
    int started = 0;
    for (int i = 1; i < nt && i < 16; ++i)
        if (pthread_create(&th[started], NULL, pool_worker, &j) == 0) ++started;
    pool_worker(&j);
    for (int i = 0; i < started; ++i) pthread_join(th[i], NULL);
    return 0;
}

int h_set_isa(int isa) {
    const onnxq_kernel_table *t = onnxq_kernels_for_isa(isa);
    if (!t) return 0;
    onnxq_kernels_set_active(t);
    return 1;
}

const char *h_isa(void) { return onnxq_kernel_isa(); }

int64_t h_row_bytes(int type, int tail_type, int64_t K) {
    onnxq_row_layout L;
    if (onnxq_row_layout_init(&L, type, tail_type, K) != ONNXQ_LAYOUT_OK) return -1;
    return L.row_bytes;
}

int h_matmul(int type, int tail_type, int64_t K, int64_t N, const uint8_t *W, const float *X, int64_t M,
             const float *bias, float *Y, int mode, int nthreads) {
    onnxq_row_layout L;
    if (onnxq_row_layout_init(&L, type, tail_type, K) != ONNXQ_LAYOUT_OK) return -1;
    onnxq_weight *w = onnxq_weight_create(&L, N, W, 1);
    if (!w) return -2;
    onnxq_runner run = {pool_parallel_for, &nthreads, nthreads};
    const int rc = onnxq_matmul(w, X, M, bias, Y, mode, &run);
    onnxq_weight_destroy(w);
    return rc;
}

int h_gather(int type, int tail_type, int64_t K, int64_t N, const uint8_t *W, const int64_t *idx, int64_t M,
             float *Y, int nthreads) {
    onnxq_row_layout L;
    if (onnxq_row_layout_init(&L, type, tail_type, K) != ONNXQ_LAYOUT_OK) return -1;
    onnxq_weight *w = onnxq_weight_create(&L, N, W, 1);
    if (!w) return -2;
    onnxq_runner run = {pool_parallel_for, &nthreads, nthreads};
    const int rc = onnxq_gather(w, idx, M, Y, &run);
    onnxq_weight_destroy(w);
    return rc;
}
