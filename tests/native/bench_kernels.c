/*
 * Native speed check of the kernels without onnxruntime (a development tool; the op
 * benchmark against onnxruntime's own ops is benchmarks/op_speed.py).
 *
 *   bench_kernels TYPE K N M MODE THREADS [REPEAT]    e.g. bench_kernels Q4_0 4096 4096 1 fast 2
 *
 * Prints the median time per call over REPEAT calls (after 2 warm-up calls).
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "harness.h"
#include "kernels_impl.h"

#include <pthread.h>
#include <stdatomic.h>

typedef struct {
    onnxq_task_fn fn;
    void *user;
    size_t total;
    atomic_size_t next;
    atomic_int generation, done;
} pool;

/* A persistent spinning pool: thread start-up cost would swamp a 100 us call. */
static pool P;
static int P_threads;
static void run_share(void) {
    for (;;) {
        const size_t i = atomic_fetch_add(&P.next, 1);
        if (i >= P.total) break;
        P.fn(P.user, i);
    }
}
static void *worker(void *arg) {
    (void)arg;
    int seen = 0;
    for (;;) {
        int g;
        while ((g = atomic_load(&P.generation)) == seen) __builtin_ia32_pause();
        if (g < 0) return NULL;
        seen = g;
        run_share();
        atomic_fetch_add(&P.done, 1);
    }
}
static int pf(void *ctx, onnxq_task_fn fn, size_t total, void *user) {
    (void)ctx;
    P.fn = fn;
    P.user = user;
    P.total = total;
    atomic_store(&P.next, 0);
    atomic_store(&P.done, 0);
    atomic_fetch_add(&P.generation, 1);
    run_share();
    while (atomic_load(&P.done) < P_threads - 1) __builtin_ia32_pause();
    return 0;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}
/* CPU time of this thread: with one thread, immune to other processes taking the core. */
static double cpu_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}
static int cmp(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    if (argc < 7) {
        fprintf(stderr, "usage: %s TYPE K N M fast|exact THREADS [REPEAT]\n", argv[0]);
        return 2;
    }
    const int type = onnxq_type_from_name(argv[1]);
    const int64_t K = atoll(argv[2]), N = atoll(argv[3]), M = atoll(argv[4]);
    const int mode = argv[5][0] == 'f' ? ONNXQ_MODE_FAST : ONNXQ_MODE_EXACT;
    P_threads = atoi(argv[6]);
    const int rep = argc > 7 ? atoi(argv[7]) : 20;
    onnxq_row_layout L;
    if (onnxq_row_layout_init(&L, type, ONNXQ_TYPE_NONE, K)) return 2;
    uint8_t *W = malloc((size_t)(N * L.row_bytes));
    for (int64_t i = 0; i < N * L.row_bytes; ++i) W[i] = (uint8_t)(i * 2654435761u >> 13);
    const int ts = onnxq_type_traits_of(type)->type_size;
    for (int64_t b = 0; b < N * L.n_main; ++b) { /* sane fp16 scales */
        const ggml_half h = onnxq_fp32_to_fp16(0.001f);
        memcpy(W + b * ts + (type == ONNXQ_TYPE_Q6_K ? 208 : 0), &h, 2);
    }
    onnxq_weight *w = onnxq_weight_create(&L, N, W, 1);
    float *X = malloc(sizeof(float) * (size_t)(M * K)), *Y = malloc(sizeof(float) * (size_t)(M * N));
    for (int64_t i = 0; i < M * K; ++i) X[i] = (float)((i * 7919) % 1000) / 500.0f - 1.0f;
    pthread_t th[16];
    for (int i = 1; i < P_threads; ++i) pthread_create(&th[i], NULL, worker, NULL);
    onnxq_runner run = {pf, NULL, P_threads};
    double *t = malloc(sizeof(double) * (size_t)rep), *c = malloc(sizeof(double) * (size_t)rep);
    for (int i = 0; i < rep + 2; ++i) {
        const double t0 = now(), c0 = cpu_now();
        onnxq_matmul(w, X, M, NULL, Y, mode, &run);
        if (i >= 2) t[i - 2] = now() - t0, c[i - 2] = cpu_now() - c0;
    }
    qsort(t, (size_t)rep, sizeof(double), cmp);
    qsort(c, (size_t)rep, sizeof(double), cmp);
    printf("%-5s %-5s K=%-5lld N=%-5lld M=%-4lld thr=%d %s: wall median %8.3f ms min %8.3f | cpu(main) median %8.3f ms\n",
           argv[1], argv[5], (long long)K, (long long)N, (long long)M, P_threads, onnxq_kernel_isa(), t[rep / 2] * 1e3,
           t[0] * 1e3, c[rep / 2] * 1e3);
    atomic_store(&P.generation, -1);
    for (int i = 1; i < P_threads; ++i) pthread_join(th[i], NULL);
    onnxq_weight_destroy(w);
    return 0;
}
