/*
 * Test harness around the kernels, independent of onnxruntime: a pthread runner for
 * onnxq_runner and one-call wrappers (create weight, run, destroy) that both the C tests
 * and the Python tests (through ctypes) use.
 */
#ifndef ONNXQ_TEST_HARNESS_H
#define ONNXQ_TEST_HARNESS_H

#include <stdint.h>

/* Select the kernels by ISA level (0 scalar, 1 avx2, 2 avxvnni, 3 avx512vnni, 4 neon, 5 dotprod, 6 i8mm):
 * 1 if this build has it and this CPU runs it, else 0. */
int h_set_isa(int isa);
const char *h_isa(void);
/* Y[M, N] = X @ dequant(W).T (+ bias); tail_type -1 for none. Returns the kernel status,
 * or -1 for a bad layout, -2 when the weight could not be created. */
int h_matmul(int type, int tail_type, int64_t K, int64_t N, const uint8_t *W, const float *X, int64_t M,
             const float *bias, float *Y, int mode, int nthreads);
int h_gather(int type, int tail_type, int64_t K, int64_t N, const uint8_t *W, const int64_t *idx, int64_t M,
             float *Y, int nthreads);
int64_t h_row_bytes(int type, int tail_type, int64_t K);

#endif
