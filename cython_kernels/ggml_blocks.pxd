# Cython declarations of the shared C headers ggml_blocks.h (block structs, type table,
# fp16 conversion, row layout) and ggml_dequant.h (reference dequantization).
# The headers are the single source of truth; this file only mirrors them.

from libc.stdint cimport int8_t, int16_t, int64_t, uint8_t, uint16_t


cdef extern from "ggml_blocks.h" nogil:
    int QK4_0
    int QK4_1
    int QK5_0
    int QK5_1
    int QK8_0
    int QK_K
    int K_SCALE_SIZE

    ctypedef uint16_t ggml_half

    ctypedef struct block_q4_0:
        ggml_half d
        uint8_t qs[16]

    ctypedef struct block_q4_1:
        ggml_half d
        ggml_half m
        uint8_t qs[16]

    ctypedef struct block_q5_0:
        ggml_half d
        uint8_t qh[4]
        uint8_t qs[16]

    ctypedef struct block_q5_1:
        ggml_half d
        ggml_half m
        uint8_t qh[4]
        uint8_t qs[16]

    ctypedef struct block_q8_0:
        ggml_half d
        int8_t qs[32]

    ctypedef struct block_q4_K:
        ggml_half d
        ggml_half dmin
        uint8_t scales[12]
        uint8_t qs[128]

    ctypedef struct block_q5_K:
        ggml_half d
        ggml_half dmin
        uint8_t scales[12]
        uint8_t qh[32]
        uint8_t qs[128]

    ctypedef struct block_q6_K:
        uint8_t ql[128]
        uint8_t qh[64]
        int8_t scales[16]
        ggml_half d

    ctypedef struct block_q8_K:
        float d
        int8_t qs[256]
        int16_t bsums[16]

    enum onnxq_type:
        ONNXQ_TYPE_NONE
        ONNXQ_TYPE_Q4_0
        ONNXQ_TYPE_Q4_1
        ONNXQ_TYPE_Q5_0
        ONNXQ_TYPE_Q5_1
        ONNXQ_TYPE_Q8_0
        ONNXQ_TYPE_Q8_1
        ONNXQ_TYPE_Q4_K
        ONNXQ_TYPE_Q5_K
        ONNXQ_TYPE_Q6_K
        ONNXQ_TYPE_Q8_K

    ctypedef struct onnxq_type_traits:
        int type
        const char *name
        int block_size
        int type_size
        int is_weight_type

    const onnxq_type_traits ONNXQ_TYPE_TABLE[]
    int ONNXQ_TYPE_COUNT

    const onnxq_type_traits *onnxq_type_traits_of(int type)
    int onnxq_type_from_name(const char *name)

    float onnxq_fp16_to_fp32(ggml_half h)
    ggml_half onnxq_fp32_to_fp16(float value)

    ctypedef struct onnxq_row_layout:
        int main_type
        int tail_type
        int64_t K
        int64_t n_main
        int64_t main_elems
        int64_t n_tail
        int64_t main_bytes
        int64_t row_bytes

    enum:
        ONNXQ_LAYOUT_OK
        ONNXQ_LAYOUT_BAD_MAIN_TYPE
        ONNXQ_LAYOUT_BAD_TAIL_TYPE
        ONNXQ_LAYOUT_BAD_K

    int64_t ONNXQ_MAX_K

    int onnxq_row_layout_init(onnxq_row_layout *L, int main_type, int tail_type, int64_t K)


cdef extern from "ggml_dequant.h" nogil:
    void onnxq_get_scale_min_k4(int j, const uint8_t *q, uint8_t *sc, uint8_t *m)
    int onnxq_dequantize_blocks(int type, const void *blocks, float *y, int64_t k)
    int onnxq_dequantize_row(const onnxq_row_layout *L, const uint8_t *row, float *y, float *scratch)
