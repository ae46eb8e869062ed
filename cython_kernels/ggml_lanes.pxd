# Cython declarations of ggml_lanes.h: ggml's scale searches run on 8 problems at once
# (byte-identical to the scalar reference; -1 means "use the scalar reference").

from libc.stdint cimport int8_t, uint8_t


cdef extern from "ggml_lanes.h" nogil:
    int onnxq_make_qx_quants_x8(int n, int nmax, const float *x, const float *w, int8_t *L, float *scale)
    int onnxq_make_qkx_quants_x8(int n, int nmax, const float *x, const float *w, uint8_t *L,
                                 float *scale, float *the_min, float rmin, float rdelta, int nstep, int qkx3)
