# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""GGML block codecs: quantize float32 rows into byte-exact ggml blocks and back.

One plain ``cdef ... nogil`` function per format and direction, following ggml's
reference quantizers (ggml/src/ggml-quants.c) operation for operation, so that the
same float input gives the same bytes as ggml, with and without an importance matrix.
What keeps it byte-exact:

* every intermediate is a C ``float`` where ggml uses float (literals are cast with
  ``<float>``, divisions by integer constants divide by a float), the module is built
  with -ffp-contract=off, and no sum is reordered: loops that accumulate keep ggml's
  element order;
* the rounding helpers are ggml's: ``nearest_int`` is the 1.5*2^23 trick (round half
  to even, with ggml's wrap-around out of range), ``roundf`` rounds half away from zero,
  float->int casts give what x86's cvttss2si gives out of range (INT32_MIN);
* the fp16 of a scale is what is stored, while the inverse scale used for rounding is
  computed from the fp32 value, as in ggml.

Speed: the scale searches (make_qx_quants, make_qkx2/3_quants) run 8 independent
problems side by side in the SIMD lanes of ggml_lanes.h, each lane doing the scalar
operations in the scalar order. The plain scalar transliterations below remain the
reference (``quantize_rows(..., reference=True)``, and the fallback for the rare
degenerate inputs the lane code cannot prove exact). The 32-element formats find their
maxima with integer compares on the magnitude bits and round with exact float tricks so
that the compiler vectorises them.

Dequantization is the shared header ``ggml_dequant.h`` (the custom-op library includes
the same code), plus Q8_K here because it is not a weight type.

Row-level entry points (``quantize_rows`` / ``dequantize_rows``) follow onnxq's row
layout (``onnxq_row_layout_init``): main blocks, then optional 32-element tail blocks,
each part quantized as its own zero-padded ggml row. They release the GIL and split rows
over OpenMP threads; rows are independent, so any thread count gives the same bytes.
"""

from cython.parallel cimport parallel, prange
from libc.math cimport fabsf, sqrtf
from libc.stdint cimport INT32_MIN, int8_t, int16_t, int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

from ggml_blocks cimport (
    ONNXQ_LAYOUT_BAD_K,
    ONNXQ_LAYOUT_BAD_MAIN_TYPE,
    ONNXQ_LAYOUT_BAD_TAIL_TYPE,
    ONNXQ_LAYOUT_OK,
    ONNXQ_MAX_K,
    ONNXQ_TYPE_COUNT,
    ONNXQ_TYPE_NONE,
    ONNXQ_TYPE_Q4_0,
    ONNXQ_TYPE_Q4_1,
    ONNXQ_TYPE_Q4_K,
    ONNXQ_TYPE_Q5_0,
    ONNXQ_TYPE_Q5_1,
    ONNXQ_TYPE_Q5_K,
    ONNXQ_TYPE_Q6_K,
    ONNXQ_TYPE_Q8_0,
    ONNXQ_TYPE_Q8_K,
    ONNXQ_TYPE_TABLE,
    block_q4_0,
    block_q4_1,
    block_q4_K,
    block_q5_0,
    block_q5_1,
    block_q5_K,
    block_q6_K,
    block_q8_0,
    block_q8_K,
    ggml_half,
    onnxq_type_traits,
    onnxq_dequantize_row,
    onnxq_fp16_to_fp32,
    onnxq_fp32_to_fp16,
    onnxq_get_scale_min_k4,
    onnxq_row_layout,
    onnxq_row_layout_init,
    onnxq_type_traits_of,
)
from ggml_lanes cimport onnxq_make_qkx_quants_x8, onnxq_make_qx_quants_x8

import numpy as np

# ggml: #define GROUP_MAX_EPS 1e-15f
cdef float GROUP_MAX_EPS = <float>1e-15


# ---------------------------------------------------------------- rounding helpers

cdef inline int nearest_int(float fval) noexcept nogil:
    # ggml's nearest_int: adding 1.5*2^23 leaves round-half-even(fval) in the low 22
    # mantissa bits. Outside |fval| <= 4194303 it wraps exactly as ggml's does.
    cdef float val = fval + <float>12582912.0
    cdef int32_t i
    memcpy(&i, &val, 4)
    return (i & 0x007fffff) - 0x00400000


cdef inline int32_t trunc_i32(float v) noexcept nogil:
    # C's float->int cast. Out of range (and for NaN) C leaves it undefined; ggml's bytes
    # come from x86's cvttss2si, which returns INT32_MIN there, so that is what we return.
    return <int32_t>v if fabsf(v) < <float>2147483648.0 else INT32_MIN


# ---------------------------------------------------------------- ggml's scale searches (scalar reference)

cdef float make_qx_quants(int n, int nmax, const float *x, int8_t *L, const float *qw) noexcept nogil:
    # ggml make_qx_quants with rmse_type = 1 (the only one the formats here use):
    # weights qw[i], or x[i]^2 without qw; 18 scale candidates around -nmax/max.
    cdef float mx = 0, amax = 0, ax, iscale, sumlx, suml2, scale, best, w
    cdef int i, l, is_
    for i in range(n):
        ax = fabsf(x[i])
        if ax > amax:
            amax = ax
            mx = x[i]
    if amax < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return 0
    iscale = <float>(-nmax) / mx
    sumlx = 0
    suml2 = 0
    for i in range(n):
        l = nearest_int(iscale * x[i])
        l = -nmax if l < -nmax else (nmax - 1 if l > nmax - 1 else l)
        L[i] = <int8_t>(l + nmax)
        w = qw[i] if qw != NULL else x[i] * x[i]
        sumlx += w * x[i] * <float>l
        suml2 += w * <float>l * <float>l
    scale = sumlx / suml2 if suml2 != 0 else <float>0
    best = scale * sumlx
    for is_ in range(-9, 10):
        if is_ == 0:
            continue
        iscale = -(<float>nmax + <float>0.1 * <float>is_) / mx
        sumlx = 0
        suml2 = 0
        for i in range(n):
            l = nearest_int(iscale * x[i])
            l = -nmax if l < -nmax else (nmax - 1 if l > nmax - 1 else l)
            w = qw[i] if qw != NULL else x[i] * x[i]
            sumlx += w * x[i] * <float>l
            suml2 += w * <float>l * <float>l
        if suml2 > 0 and sumlx * sumlx > best * suml2:
            for i in range(n):
                l = nearest_int(iscale * x[i])
                l = -nmax if l < -nmax else (nmax - 1 if l > nmax - 1 else l)
                L[i] = <int8_t>(l + nmax)
            scale = sumlx / suml2
            best = scale * sumlx
    return scale


cdef float make_qkx2_quants(int n, int nmax, const float *x, const float *weights, uint8_t *L,
                            float *the_min, uint8_t *Laux, float rmin, float rdelta, int nstep) noexcept nogil:
    # ggml make_qkx2_quants with use_mad = false (squared error), as Q4_K/Q5_K use it.
    cdef float mn = x[0], mx = x[0], sum_w = weights[0], sum_x, w, iscale, scale, best_error, diff
    cdef float sum_l, sum_l2, sum_xl, D, this_scale, this_min, cur_error
    cdef int i, l, is_
    sum_x = sum_w * x[0]
    for i in range(1, n):
        if x[i] < mn:
            mn = x[i]
        if x[i] > mx:
            mx = x[i]
        w = weights[i]
        sum_w += w
        sum_x += w * x[i]
    if mn > 0:
        mn = 0
    if mx == mn:
        for i in range(n):
            L[i] = 0
        the_min[0] = -mn
        return 0
    iscale = <float>nmax / (mx - mn)
    scale = <float>1 / iscale
    best_error = 0
    for i in range(n):
        l = nearest_int(iscale * (x[i] - mn))
        L[i] = <uint8_t>(0 if l < 0 else (nmax if l > nmax else l))
        diff = scale * <float>L[i] + mn - x[i]
        diff = diff * diff
        best_error += weights[i] * diff
    for is_ in range(nstep + 1):
        iscale = (rmin + rdelta * <float>is_ + <float>nmax) / (mx - mn)
        sum_l = 0
        sum_l2 = 0
        sum_xl = 0
        for i in range(n):
            l = nearest_int(iscale * (x[i] - mn))
            l = 0 if l < 0 else (nmax if l > nmax else l)
            Laux[i] = <uint8_t>l
            w = weights[i]
            sum_l += w * <float>l
            sum_l2 += w * <float>l * <float>l
            sum_xl += w * <float>l * x[i]
        D = sum_w * sum_l2 - sum_l * sum_l
        if D > 0:
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            if this_min > 0:
                this_min = 0
                this_scale = sum_xl / sum_l2
            cur_error = 0
            for i in range(n):
                diff = this_scale * <float>Laux[i] + this_min - x[i]
                diff = diff * diff
                cur_error += weights[i] * diff
            if cur_error < best_error:
                for i in range(n):
                    L[i] = Laux[i]
                best_error = cur_error
                scale = this_scale
                mn = this_min
    the_min[0] = -mn
    return scale


cdef float make_qkx3_quants(int n, int nmax, const float *x, const float *weights, uint8_t *L,
                            float *the_min, uint8_t *Laux, float rmin, float rdelta, int nstep) noexcept nogil:
    # ggml make_qkx3_quants with explicit weights and use_mad = false (the imatrix paths).
    cdef float mn = x[0], mx = x[0], sum_w = weights[0], sum_x, w, iscale, scale, best_mad, diff, v
    cdef float sum_l, sum_l2, sum_xl, D, this_scale, this_min, mad
    cdef int i, l, is_
    sum_x = sum_w * x[0]
    for i in range(1, n):
        if x[i] < mn:
            mn = x[i]
        if x[i] > mx:
            mx = x[i]
        w = weights[i]
        sum_w += w
        sum_x += w * x[i]
    if mn > 0:
        mn = 0
    if mx <= mn:
        memset(L, 0, n)
        the_min[0] = -mn
        return 0
    iscale = <float>nmax / (mx - mn)
    scale = <float>1 / iscale
    best_mad = 0
    for i in range(n):
        l = nearest_int(iscale * (x[i] - mn))
        L[i] = <uint8_t>(0 if l < 0 else (nmax if l > nmax else l))
        diff = scale * <float>L[i] + mn - x[i]
        diff = diff * diff
        best_mad += weights[i] * diff
    for is_ in range(nstep + 1):
        iscale = (rmin + rdelta * <float>is_ + <float>nmax) / (mx - mn)
        sum_l = 0
        sum_l2 = 0
        sum_xl = 0
        for i in range(n):
            # the best min so far may sit at or near max: v can be huge, inf or NaN
            v = iscale * (x[i] - mn)
            l = nearest_int(v if v < <float>nmax else <float>nmax) if v > 0 else 0
            Laux[i] = <uint8_t>l
            w = weights[i]
            sum_l += w * <float>l
            sum_l2 += w * <float>l * <float>l
            sum_xl += w * <float>l * x[i]
        D = sum_w * sum_l2 - sum_l * sum_l
        if D > 0:
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            if this_min > 0:
                this_min = 0
                this_scale = sum_xl / sum_l2
            mad = 0
            for i in range(n):
                diff = this_scale * <float>Laux[i] + this_min - x[i]
                diff = diff * diff
                mad += weights[i] * diff
            if mad < best_mad:
                for i in range(n):
                    L[i] = Laux[i]
                best_mad = mad
                scale = this_scale
                mn = this_min
    the_min[0] = -mn
    return scale


cdef float make_qp_quants(int n, int nmax, const float *x, uint8_t *L, const float *quant_weights) noexcept nogil:
    # ggml make_qp_quants: non-negative values (sub-block scales or mins) to 6-bit codes,
    # a 9-point scale search then up to 5 rounds of coordinate descent.
    cdef float mx = 0, iscale, scale, best_mse, diff, w, iscale_is, scale_is, mse
    cdef float sumlx, suml2, slx, sl2
    cdef int i, l, is_, itry, n_changed, new_l
    for i in range(n):
        mx = mx if mx > x[i] else x[i]
    if mx < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return 0
    iscale = <float>nmax / mx
    for i in range(n):
        L[i] = <uint8_t>nearest_int(iscale * x[i])
    scale = <float>1 / iscale
    best_mse = 0
    for i in range(n):
        diff = x[i] - scale * <float>L[i]
        w = quant_weights[i]
        best_mse += w * diff * diff
    for is_ in range(-4, 5):
        if is_ == 0:
            continue
        iscale_is = (<float>0.1 * <float>is_ + <float>nmax) / mx
        scale_is = <float>1 / iscale_is
        mse = 0
        for i in range(n):
            l = nearest_int(iscale_is * x[i])
            l = nmax if l > nmax else l
            diff = x[i] - scale_is * <float>l
            w = quant_weights[i]
            mse += w * diff * diff
        if mse < best_mse:
            best_mse = mse
            iscale = iscale_is
    sumlx = 0
    suml2 = 0
    for i in range(n):
        l = nearest_int(iscale * x[i])
        l = nmax if l > nmax else l
        L[i] = <uint8_t>l
        w = quant_weights[i]
        sumlx += w * x[i] * <float>l
        suml2 += w * <float>l * <float>l
    for itry in range(5):
        n_changed = 0
        for i in range(n):
            w = quant_weights[i]
            slx = sumlx - w * x[i] * <float>L[i]
            sl2 = suml2 - w * <float>L[i] * <float>L[i]
            if slx > 0 and sl2 > 0:
                new_l = nearest_int(x[i] * sl2 / slx)
                new_l = nmax if new_l > nmax else new_l
                if new_l != L[i]:
                    slx += w * x[i] * <float>new_l
                    sl2 += w * <float>new_l * <float>new_l
                    if slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i] = <uint8_t>new_l
                        sumlx = slx
                        suml2 = sl2
                        n_changed += 1
        if n_changed == 0:
            break
    return sumlx / suml2 if suml2 > 0 else <float>0


# ---------------------------------------------------------------- searches, 8 problems at a time

cdef void qx_search_8(int n, int nmax, const float *x, const float *qw, int8_t *L, float *scales,
                      bint reference) noexcept nogil:
    # make_qx_quants on 8 consecutive problems of n elements (x[n*s + i]); qw may be NULL.
    # The lane-parallel version (ggml_lanes.h) gives the same bytes; it hands back the rare
    # degenerate inputs it cannot prove exact, which then take the scalar reference.
    cdef float w2[256]
    cdef int i, s
    cdef int rc = -1
    if not reference:
        if qw == NULL:
            for i in range(8 * n):
                w2[i] = x[i] * x[i]
        # literal sizes: the lane kernel is inlined and specialised for each
        if n == 16:
            rc = onnxq_make_qx_quants_x8(16, nmax, x, qw if qw != NULL else w2, L, scales)
        elif n == 32:
            rc = onnxq_make_qx_quants_x8(32, nmax, x, qw if qw != NULL else w2, L, scales)
        if rc == 0:
            return
    for s in range(8):
        scales[s] = make_qx_quants(n, nmax, x + n * s, L + n * s, qw + n * s if qw != NULL else NULL)


cdef void qkx_search_8(int nmax, const float *x, const float *w, uint8_t *L, float *scales, float *mins,
                       float rmin, float rdelta, int nstep, bint qkx3, bint reference) noexcept nogil:
    # make_qkx2_quants (qkx3 False) / make_qkx3_quants on 8 consecutive problems of 32
    # elements, lane-parallel unless reference or degenerate (see qx_search_8)
    cdef uint8_t Laux[32]
    cdef int s
    if not reference and onnxq_make_qkx_quants_x8(32, nmax, x, w, L, scales, mins, rmin, rdelta, nstep, qkx3) == 0:
        return
    for s in range(8):
        if qkx3:
            scales[s] = make_qkx3_quants(32, nmax, x + 32 * s, w + 32 * s, L + 32 * s, &mins[s], Laux,
                                         rmin, rdelta, nstep)
        else:
            scales[s] = make_qkx2_quants(32, nmax, x + 32 * s, w + 32 * s, L + 32 * s, &mins[s], Laux,
                                         rmin, rdelta, nstep)


# ---------------------------------------------------------------- 32-element formats

cdef inline int min_int(int a, int b) noexcept nogil:
    return a if a < b else b


cdef inline bint is_finite(float v) noexcept nogil:
    return fabsf(v) <= <float>3.4028234663852886e38


cdef inline float first_absmax(const float *x, int n) noexcept nogil:
    # ggml's scan `if (amax < fabsf(v)) { amax = fabsf(v); max = v; }`: the first element
    # of largest magnitude with its sign, +0 if all are zero. Magnitudes of finite floats
    # order like their bit patterns, so both passes are integer max/min reductions that vectorise.
    cdef uint32_t u
    cdef int32_t a, amax = 0, first = n, cand
    cdef int j
    for j in range(n):
        memcpy(&u, &x[j], 4)
        a = <int32_t>(u & 0x7fffffff)
        amax = a if a > amax else amax
    if amax == 0:
        return 0
    for j in range(n):
        memcpy(&u, &x[j], 4)
        cand = j if <int32_t>(u & 0x7fffffff) == amax else n
        first = cand if cand < first else first
    return x[first]


cdef inline float absmax(const float *x, int n) noexcept nogil:
    # max |x| (ggml's MAX(amax, fabsf(v)) scan) as an integer max over magnitude bits
    cdef uint32_t u
    cdef int32_t a, amax = 0
    cdef int j
    cdef float r
    for j in range(n):
        memcpy(&u, &x[j], 4)
        a = <int32_t>(u & 0x7fffffff)
        amax = a if a > amax else amax
    memcpy(&r, &amax, 4)
    return r


cdef inline void store_q4_codes(const uint8_t *q, uint8_t *qs) noexcept nogil:
    # element j in the low nibble of byte j, element j+16 in its high nibble
    cdef int j
    for j in range(16):
        qs[j] = <uint8_t>(q[j] | (q[j + 16] << 4))


cdef inline void store_q5_codes(const uint8_t *q, uint8_t *qs, uint8_t *qh) noexcept nogil:
    # low nibbles as Q4; the 5th bit of element j is bit j of qh (little-endian uint32)
    cdef uint8_t hb[32]
    cdef int j
    for j in range(16):
        qs[j] = <uint8_t>((q[j] & 0x0F) | ((q[j + 16] & 0x0F) << 4))
    for j in range(32):
        hb[j] = (q[j] >> 4) & 1
    pack_bits32(hb, qh)


cdef inline void pack_bits32(const uint8_t *hb, uint8_t *qh) noexcept nogil:
    # 32 bytes of 0/1 into 32 bits, element j -> bit j: multiplying 8 such bytes (as a
    # little-endian uint64) by 0x0102040810204080 gathers them in the top byte
    cdef uint64_t v
    cdef int j
    for j in range(4):
        memcpy(&v, hb + 8 * j, 8)
        qh[j] = <uint8_t>((v * <uint64_t>0x0102040810204080) >> 56)


cdef inline void absmax_codes(const float *xb, float id, float offset, int qmax, uint8_t *qs,
                              uint8_t *qh) noexcept nogil:
    # ggml: q = MIN(qmax, (int8_t)(x*id + offset)), packed two per byte (j and j+16) and,
    # for 5-bit codes (qh not NULL), the 5th bits into qh. With a finite id every
    # x*id + offset lies in [0, qmax+1], so the cast is a plain truncation; an infinite id
    # (a block of tiny values) makes every product inf or NaN, which x86's conversion
    # (ggml's bytes) turns into INT32_MIN: code 0.
    cdef int j, v0, v1
    cdef uint8_t hb[32]
    if not is_finite(id):
        memset(qs, 0, 16)
        if qh != NULL:
            memset(qh, 0, 4)
        return
    for j in range(16):
        v0 = <int>(xb[j] * id + offset)
        v1 = <int>(xb[j + 16] * id + offset)
        v0 = v0 if v0 < qmax else qmax
        v1 = v1 if v1 < qmax else qmax
        qs[j] = <uint8_t>((v0 & 0x0F) | ((v1 & 0x0F) << 4))
        hb[j] = <uint8_t>((v0 >> 4) & 1)
        hb[j + 16] = <uint8_t>((v1 >> 4) & 1)
    if qh != NULL:
        pack_bits32(hb, qh)


cdef void quantize_row_q4_0_ref(const float *x, block_q4_0 *y, int64_t k) noexcept nogil:
    cdef int64_t i, nb = k // 32
    cdef float mx, d, id
    for i in range(nb):
        mx = first_absmax(x + 32 * i, 32)
        d = mx / <float>-8
        id = <float>1 / d if d != 0 else <float>0
        y[i].d = onnxq_fp32_to_fp16(d)
        absmax_codes(x + 32 * i, id, <float>8.5, 15, y[i].qs, NULL)


cdef void quantize_row_q5_0_ref(const float *x, block_q5_0 *y, int64_t k) noexcept nogil:
    cdef int64_t i, nb = k // 32
    cdef float mx, d, id
    for i in range(nb):
        mx = first_absmax(x + 32 * i, 32)
        d = mx / <float>-16
        id = <float>1 / d if d != 0 else <float>0
        y[i].d = onnxq_fp32_to_fp16(d)
        absmax_codes(x + 32 * i, id, <float>16.5, 31, y[i].qs, y[i].qh)


cdef void quantize_row_q4_1_ref(const float *x, block_q4_1 *y, int64_t k) noexcept nogil:
    cdef int64_t i, nb = k // 32
    cdef int j
    cdef float mn, mx, v, d, id
    cdef uint8_t q[32]
    cdef const float *xb
    for i in range(nb):
        xb = x + 32 * i
        mn = <float>3.4028234663852886e38
        mx = <float>-3.4028234663852886e38
        for j in range(32):
            v = xb[j]
            if v < mn:
                mn = v
            if v > mx:
                mx = v
        d = (mx - mn) / <float>15
        id = <float>1 / d if d != 0 else <float>0
        y[i].d = onnxq_fp32_to_fp16(d)
        y[i].m = onnxq_fp32_to_fp16(mn)
        for j in range(32):
            q[j] = <uint8_t>min_int(15, <int8_t>trunc_i32((xb[j] - mn) * id + <float>0.5))
        store_q4_codes(q, y[i].qs)


cdef void quantize_row_q5_1_ref(const float *x, block_q5_1 *y, int64_t k) noexcept nogil:
    cdef int64_t i, nb = k // 32
    cdef int j
    cdef float mn, mx, v, d, id
    cdef uint8_t q[32]
    cdef const float *xb
    for i in range(nb):
        xb = x + 32 * i
        mn = <float>3.4028234663852886e38
        mx = <float>-3.4028234663852886e38
        for j in range(32):
            v = xb[j]
            if v < mn:
                mn = v
            if v > mx:
                mx = v
        d = (mx - mn) / <float>31
        id = <float>1 / d if d != 0 else <float>0
        y[i].d = onnxq_fp32_to_fp16(d)
        y[i].m = onnxq_fp32_to_fp16(mn)
        for j in range(32):
            q[j] = <uint8_t>trunc_i32((xb[j] - mn) * id + <float>0.5)
        store_q5_codes(q, y[i].qs, y[i].qh)


cdef void quantize_row_q8_0_ref(const float *x, block_q8_0 *y, int64_t k) noexcept nogil:
    # codes roundf(x*id): round half away from zero, computed exactly as trunc plus a
    # correction (v - trunc(v) is exact) so the loop vectorises; see absmax_codes for inf id
    cdef int64_t i, nb = k // 32
    cdef int j, t
    cdef float d, id, v, r
    cdef const float *xb
    for i in range(nb):
        xb = x + 32 * i
        d = absmax(xb, 32) / <float>127
        id = <float>1 / d if d != 0 else <float>0
        y[i].d = onnxq_fp32_to_fp16(d)
        if is_finite(id):
            for j in range(32):
                v = xb[j] * id
                t = <int>v
                r = v - <float>t
                y[i].qs[j] = <int8_t>(t + (r >= <float>0.5) - (r <= <float>-0.5))
        else:
            memset(y[i].qs, 0, 32)


cdef inline float row_sigma2(const float *x, int64_t n) noexcept nogil:
    # the imatrix paths of the 32-element formats weight by sqrt(sigma2 + x^2),
    # sigma2 = mean of x^2 over the whole row (ggml's element order)
    cdef float sum_x2 = 0
    cdef int64_t j
    for j in range(n):
        sum_x2 += x[j] * x[j]
    return sum_x2 / <float>n


cdef inline int load_group(const float *x, const float *qw, float sigma2, int64_t nb, int64_t g,
                           float *xg, float *wg) noexcept nogil:
    # blocks g .. g+7 of a row (zero-padded past the row's end) and their imatrix weights
    # qw*sqrt(sigma2 + x^2); returns how many blocks are real
    cdef int nblk = <int>(nb - g if nb - g < 8 else 8), j
    for j in range(32 * nblk):
        xg[j] = x[32 * g + j]
        wg[j] = qw[32 * g + j] * sqrtf(sigma2 + xg[j] * xg[j])
    for j in range(32 * nblk, 256):
        xg[j] = 0
        wg[j] = 0
    return nblk


cdef void quantize_row_q4_0_impl(const float *x, block_q4_0 *y, int64_t n_per_row, const float *qw,
                                 bint reference) noexcept nogil:
    cdef float xg[256]
    cdef float wg[256]
    cdef float scales[8]
    cdef int8_t L[256]
    cdef float sigma2 = row_sigma2(x, n_per_row)
    cdef int64_t g, nb = n_per_row // 32
    cdef int b, nblk
    for g in range(0, nb, 8):
        nblk = load_group(x, qw, sigma2, nb, g, xg, wg)
        qx_search_8(32, 8, xg, wg, L, scales, reference)
        for b in range(nblk):
            y[g + b].d = onnxq_fp32_to_fp16(scales[b])
            store_q4_codes(<uint8_t *>L + 32 * b, y[g + b].qs)


cdef void quantize_row_q5_0_impl(const float *x, block_q5_0 *y, int64_t n_per_row, const float *qw,
                                 bint reference) noexcept nogil:
    cdef float xg[256]
    cdef float wg[256]
    cdef float scales[8]
    cdef int8_t L[256]
    cdef float sigma2 = row_sigma2(x, n_per_row)
    cdef int64_t g, nb = n_per_row // 32
    cdef int b, nblk
    for g in range(0, nb, 8):
        nblk = load_group(x, qw, sigma2, nb, g, xg, wg)
        qx_search_8(32, 16, xg, wg, L, scales, reference)
        for b in range(nblk):
            y[g + b].d = onnxq_fp32_to_fp16(scales[b])
            store_q5_codes(<uint8_t *>L + 32 * b, y[g + b].qs, y[g + b].qh)


cdef void quantize_row_q4_1_impl(const float *x, block_q4_1 *y, int64_t n_per_row, const float *qw,
                                 bint reference) noexcept nogil:
    cdef float xg[256]
    cdef float wg[256]
    cdef float scales[8]
    cdef float mins[8]
    cdef uint8_t L[256]
    cdef float sigma2 = row_sigma2(x, n_per_row)
    cdef int64_t g, nb = n_per_row // 32
    cdef int b, nblk
    for g in range(0, nb, 8):
        nblk = load_group(x, qw, sigma2, nb, g, xg, wg)
        qkx_search_8(15, xg, wg, L, scales, mins, <float>-0.9, <float>0.05, 36, True, reference)
        for b in range(nblk):
            y[g + b].d = onnxq_fp32_to_fp16(scales[b])
            y[g + b].m = onnxq_fp32_to_fp16(-mins[b])
            store_q4_codes(L + 32 * b, y[g + b].qs)


cdef void quantize_row_q5_1_impl(const float *x, block_q5_1 *y, int64_t n_per_row, const float *qw,
                                 bint reference) noexcept nogil:
    cdef float xg[256]
    cdef float wg[256]
    cdef float scales[8]
    cdef float mins[8]
    cdef uint8_t L[256]
    cdef float sigma2 = row_sigma2(x, n_per_row)
    cdef int64_t g, nb = n_per_row // 32
    cdef int b, nblk
    for g in range(0, nb, 8):
        nblk = load_group(x, qw, sigma2, nb, g, xg, wg)
        qkx_search_8(31, xg, wg, L, scales, mins, <float>-0.9, <float>0.05, 36, True, reference)
        for b in range(nblk):
            y[g + b].d = onnxq_fp32_to_fp16(scales[b])
            y[g + b].m = onnxq_fp32_to_fp16(-mins[b])
            store_q5_codes(L + 32 * b, y[g + b].qs, y[g + b].qh)


# ---------------------------------------------------------------- K-quants

cdef inline void pack_scales_k4(const uint8_t *ls, const uint8_t *lm, uint8_t *scales) noexcept nogil:
    # 8 six-bit scales and mins into 12 bytes (ggml's Q4_K/Q5_K layout)
    cdef int j
    for j in range(4):
        scales[j] = ls[j]
        scales[j + 4] = lm[j]
    for j in range(4, 8):
        scales[j + 4] = <uint8_t>((ls[j] & 0xF) | ((lm[j] & 0xF) << 4))
        scales[j - 4] |= <uint8_t>((ls[j] >> 4) << 6)
        scales[j] |= <uint8_t>((lm[j] >> 4) << 6)


cdef inline void requantize_k(const float *x, const uint8_t *scales, ggml_half d16, ggml_half dmin16,
                              int nmax, uint8_t *L) noexcept nogil:
    # final codes from the stored (fp16, 6-bit) parameters; a sub-block with a zero
    # scale keeps the codes of the search, as in ggml
    cdef uint8_t sc, m
    cdef float d, dm
    cdef int j, ii, l
    for j in range(8):
        onnxq_get_scale_min_k4(j, scales, &sc, &m)
        d = onnxq_fp16_to_fp32(d16) * <float>sc
        if d == 0:
            continue
        dm = onnxq_fp16_to_fp32(dmin16) * <float>m
        for ii in range(32):
            l = nearest_int((x[32 * j + ii] + dm) / d)
            L[32 * j + ii] = <uint8_t>(0 if l < 0 else (nmax if l > nmax else l))


cdef inline void store_q4_K_codes(const uint8_t *L, uint8_t *q) noexcept nogil:
    cdef int j, l
    for j in range(4):
        for l in range(32):
            q[32 * j + l] = <uint8_t>(L[64 * j + l] | (L[64 * j + l + 32] << 4))


cdef inline void store_q5_K_codes(const uint8_t *L, uint8_t *ql, uint8_t *qh) noexcept nogil:
    cdef int j, l
    for l in range(32):
        qh[l] = 0
    for j in range(4):
        for l in range(32):
            qh[l] |= <uint8_t>(((L[64 * j + l] >> 4) << (2 * j)) | ((L[64 * j + l + 32] >> 4) << (2 * j + 1)))
            ql[32 * j + l] = <uint8_t>((L[64 * j + l] & 0xF) | ((L[64 * j + l + 32] & 0xF) << 4))


cdef inline void kquant_ref_params(const float *x, int nmax, float rmin, float rdelta, int nstep, bint reference,
                                   uint8_t *L, uint8_t *scales, ggml_half *d16, ggml_half *dmin16) noexcept nogil:
    # Q4_K / Q5_K without imatrix (ggml's _ref): per 32-element sub-block a (scale, min)
    # fit weighted by rms + |x|, then scales and mins rounded to 6 bits against their maxima.
    cdef float weights[256]
    cdef float sub_scales[8]
    cdef float mins[8]
    cdef uint8_t ls[8]
    cdef uint8_t lm[8]
    cdef float max_scale = 0, max_min = 0, sum_x2, av_x, inv_scale, inv_min
    cdef int j, l
    for j in range(8):
        sum_x2 = 0
        for l in range(32):
            sum_x2 += x[32 * j + l] * x[32 * j + l]
        av_x = sqrtf(sum_x2 / <float>32)
        for l in range(32):
            weights[32 * j + l] = av_x + fabsf(x[32 * j + l])
    qkx_search_8(nmax, x, weights, L, sub_scales, mins, rmin, rdelta, nstep, False, reference)
    for j in range(8):
        if sub_scales[j] > max_scale:
            max_scale = sub_scales[j]
        if mins[j] > max_min:
            max_min = mins[j]
    inv_scale = <float>63 / max_scale if max_scale > 0 else <float>0
    inv_min = <float>63 / max_min if max_min > 0 else <float>0
    for j in range(8):
        ls[j] = <uint8_t>nearest_int(inv_scale * sub_scales[j])
        lm[j] = <uint8_t>nearest_int(inv_min * mins[j])
        ls[j] = 63 if ls[j] > 63 else ls[j]
        lm[j] = 63 if lm[j] > 63 else lm[j]
    pack_scales_k4(ls, lm, scales)
    d16[0] = onnxq_fp32_to_fp16(max_scale / <float>63)
    dmin16[0] = onnxq_fp32_to_fp16(max_min / <float>63)


cdef inline void kquant_impl_params(const float *x, const float *qw, int nmax, bint clamp_codes, bint reference,
                                    uint8_t *L, uint8_t *scales, ggml_half *d16, ggml_half *dmin16) noexcept nogil:
    # Q4_K / Q5_K with imatrix (ggml's _impl): weights qw * sqrt(sigma2 + x^2), a finer
    # (scale, min) search, then 6-bit scales and mins from a weighted search of their own.
    cdef float weights[256]
    cdef float sub_scales[8]
    cdef float mins[8]
    cdef float sw[8]
    cdef uint8_t Ls[8]
    cdef uint8_t Lm[8]
    cdef float sum_x2 = 0, sigma2, sumw, d_block, m_block
    cdef int j, l
    for l in range(256):
        sum_x2 += x[l] * x[l]
    sigma2 = <float>2 * sum_x2 / <float>256
    for j in range(8):
        sumw = 0
        for l in range(32):
            weights[32 * j + l] = qw[32 * j + l] * sqrtf(sigma2 + x[32 * j + l] * x[32 * j + l])
            sumw += weights[32 * j + l]
        sw[j] = sumw
    qkx_search_8(nmax, x, weights, L, sub_scales, mins, <float>-0.9, <float>0.05, 36, True, reference)
    d_block = make_qp_quants(8, 63, sub_scales, Ls, sw)
    m_block = make_qp_quants(8, 63, mins, Lm, sw)
    if clamp_codes:  # ggml's Q5_K clamps here, its Q4_K does not
        for j in range(8):
            Ls[j] = 63 if Ls[j] > 63 else Ls[j]
            Lm[j] = 63 if Lm[j] > 63 else Lm[j]
    pack_scales_k4(Ls, Lm, scales)
    d16[0] = onnxq_fp32_to_fp16(d_block)
    dmin16[0] = onnxq_fp32_to_fp16(m_block)


cdef void quantize_row_q4_K(const float *x, block_q4_K *y, int64_t k, const float *qw, bint reference) noexcept nogil:
    # qw == NULL: ggml's quantize_row_q4_K_ref; otherwise quantize_row_q4_K_impl
    cdef uint8_t L[256]
    cdef int64_t i, nb = k // 256
    for i in range(nb):
        if qw == NULL:
            kquant_ref_params(x, 15, <float>-1, <float>0.1, 20, reference, L, y[i].scales, &y[i].d, &y[i].dmin)
        else:
            kquant_impl_params(x, qw + 256 * i, 15, False, reference, L, y[i].scales, &y[i].d, &y[i].dmin)
        requantize_k(x, y[i].scales, y[i].d, y[i].dmin, 15, L)
        store_q4_K_codes(L, y[i].qs)
        x += 256


cdef void quantize_row_q5_K(const float *x, block_q5_K *y, int64_t k, const float *qw, bint reference) noexcept nogil:
    # qw == NULL: ggml's quantize_row_q5_K_ref; otherwise quantize_row_q5_K_impl
    cdef uint8_t L[256]
    cdef int64_t i, nb = k // 256
    for i in range(nb):
        if qw == NULL:
            kquant_ref_params(x, 31, <float>-0.5, <float>0.1, 15, reference, L, y[i].scales, &y[i].d, &y[i].dmin)
        else:
            kquant_impl_params(x, qw + 256 * i, 31, True, reference, L, y[i].scales, &y[i].d, &y[i].dmin)
        requantize_k(x, y[i].scales, y[i].d, y[i].dmin, 31, L)
        store_q5_K_codes(L, y[i].qs, y[i].qh)
        x += 256


cdef void quantize_row_q6_K(const float *x, block_q6_K *y, int64_t k, const float *qw, bint reference) noexcept nogil:
    # qw == NULL: ggml's quantize_row_q6_K_ref (x^2 weights); otherwise _impl with the raw
    # imatrix as weights. 16 sub-blocks of 16 with int8 scales under one fp16 d.
    cdef int8_t L[256]
    cdef float scales[16]
    cdef float max_scale, max_abs_scale, iscale, d
    cdef int64_t i, nb = k // 256
    cdef int ib, j, ii, l
    cdef uint8_t *ql
    cdef uint8_t *qh
    for i in range(nb):
        qx_search_8(16, 32, x, qw + 256 * i if qw != NULL else NULL, L, scales, reference)
        qx_search_8(16, 32, x + 128, qw + 256 * i + 128 if qw != NULL else NULL, L + 128, scales + 8, reference)
        max_scale = 0
        max_abs_scale = 0
        for ib in range(16):
            if fabsf(scales[ib]) > max_abs_scale:
                max_abs_scale = fabsf(scales[ib])
                max_scale = scales[ib]
        if max_abs_scale < GROUP_MAX_EPS:
            memset(&y[i], 0, sizeof(block_q6_K))
            y[i].d = onnxq_fp32_to_fp16(0)
            x += 256
            continue
        iscale = <float>-128 / max_scale
        y[i].d = onnxq_fp32_to_fp16(<float>1 / iscale)
        for ib in range(16):
            y[i].scales[ib] = <int8_t>min_int(127, nearest_int(iscale * scales[ib]))
        for j in range(16):
            d = onnxq_fp16_to_fp32(y[i].d) * <float>y[i].scales[j]
            if d == 0:
                continue
            for ii in range(16):
                l = nearest_int(x[16 * j + ii] / d)
                l = -32 if l < -32 else (31 if l > 31 else l)
                L[16 * j + ii] = <int8_t>(l + 32)
        ql = y[i].ql
        qh = y[i].qh
        for j in range(0, 256, 128):
            for l in range(32):
                ql[l] = <uint8_t>((L[j + l] & 0xF) | ((L[j + l + 64] & 0xF) << 4))
                ql[l + 32] = <uint8_t>((L[j + l + 32] & 0xF) | ((L[j + l + 96] & 0xF) << 4))
                qh[l] = <uint8_t>((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2)
                                  | ((L[j + l + 64] >> 4) << 4) | ((L[j + l + 96] >> 4) << 6))
            ql += 64
            qh += 32
        x += 256


cdef void quantize_row_q8_K(const float *x, block_q8_K *y, int64_t k) noexcept nogil:
    # ggml's quantize_row_q8_K_ref (activation type): scale -127/max, bsums of 16 codes
    cdef int64_t i, nb = k // 256
    cdef int j, ii, v, s
    cdef float mx, iscale
    for i in range(nb):
        mx = first_absmax(x, 256)
        if mx == 0:
            # ggml leaves bsums untouched here; zero is what they mean
            memset(&y[i], 0, sizeof(block_q8_K))
            x += 256
            continue
        iscale = <float>-127 / mx
        for j in range(256):
            v = nearest_int(iscale * x[j])
            y[i].qs[j] = <int8_t>(v if v < 127 else 127)
        for j in range(16):
            s = 0
            for ii in range(16):
                s += y[i].qs[16 * j + ii]
            y[i].bsums[j] = <int16_t>s
        y[i].d = <float>1 / iscale
        x += 256


cdef void dequantize_row_q8_K(const block_q8_K *x, float *y, int64_t k) noexcept nogil:
    cdef int64_t i, nb = k // 256
    cdef int j
    for i in range(nb):
        for j in range(256):
            y[256 * i + j] = x[i].d * <float>x[i].qs[j]


# ---------------------------------------------------------------- dispatch and row layout

cdef int quantize_chunk(int qtype, const float *x, uint8_t *y, int64_t n, const float *qw,
                        bint reference) noexcept nogil:
    # Quantize n elements (a whole number of blocks) as ggml quantizes one row of n_per_row = n:
    # the imatrix paths of the 32-element formats take their sigma2 over these n elements.
    if qtype == ONNXQ_TYPE_Q4_0:
        if qw == NULL:
            quantize_row_q4_0_ref(x, <block_q4_0 *>y, n)
        else:
            quantize_row_q4_0_impl(x, <block_q4_0 *>y, n, qw, reference)
    elif qtype == ONNXQ_TYPE_Q4_1:
        if qw == NULL:
            quantize_row_q4_1_ref(x, <block_q4_1 *>y, n)
        else:
            quantize_row_q4_1_impl(x, <block_q4_1 *>y, n, qw, reference)
    elif qtype == ONNXQ_TYPE_Q5_0:
        if qw == NULL:
            quantize_row_q5_0_ref(x, <block_q5_0 *>y, n)
        else:
            quantize_row_q5_0_impl(x, <block_q5_0 *>y, n, qw, reference)
    elif qtype == ONNXQ_TYPE_Q5_1:
        if qw == NULL:
            quantize_row_q5_1_ref(x, <block_q5_1 *>y, n)
        else:
            quantize_row_q5_1_impl(x, <block_q5_1 *>y, n, qw, reference)
    elif qtype == ONNXQ_TYPE_Q8_0:  # ggml's Q8_0 ignores the imatrix
        quantize_row_q8_0_ref(x, <block_q8_0 *>y, n)
    elif qtype == ONNXQ_TYPE_Q4_K:
        quantize_row_q4_K(x, <block_q4_K *>y, n, qw, reference)
    elif qtype == ONNXQ_TYPE_Q5_K:
        quantize_row_q5_K(x, <block_q5_K *>y, n, qw, reference)
    elif qtype == ONNXQ_TYPE_Q6_K:
        quantize_row_q6_K(x, <block_q6_K *>y, n, qw, reference)
    elif qtype == ONNXQ_TYPE_Q8_K:  # activation type, no imatrix path
        quantize_row_q8_K(x, <block_q8_K *>y, n)
    else:
        return -1
    return 0


cdef int layout_init(onnxq_row_layout *L, int main_type, int tail_type, int64_t K) noexcept nogil:
    # onnxq_row_layout_init, extended to Q8_K (an activation type the header does not lay out):
    # ceil(K/256) blocks, the last zero-padded, never a tail.
    if main_type != ONNXQ_TYPE_Q8_K:
        return onnxq_row_layout_init(L, main_type, tail_type, K)
    memset(L, 0, sizeof(onnxq_row_layout))
    if K < 1 or K > ONNXQ_MAX_K:
        return ONNXQ_LAYOUT_BAD_K
    if tail_type != ONNXQ_TYPE_NONE:
        return ONNXQ_LAYOUT_BAD_TAIL_TYPE
    L.main_type = main_type
    L.tail_type = ONNXQ_TYPE_NONE
    L.K = K
    L.n_main = (K + 255) // 256
    L.main_elems = L.n_main * 256
    L.main_bytes = L.n_main * sizeof(block_q8_K)
    L.row_bytes = L.main_bytes
    return ONNXQ_LAYOUT_OK


cdef inline void copy_padded(float *dst, const float *src, int64_t n, int64_t npad) noexcept nogil:
    memcpy(dst, src, n * sizeof(float))
    memset(dst + n, 0, (npad - n) * sizeof(float))


cdef void quantize_one_row(const onnxq_row_layout *L, const float *x, const float *qw, uint8_t *out,
                           float *xpad, float *qwpad, bint reference) noexcept nogil:
    # One row of the layout: the main blocks, then the tail blocks, each part quantized as
    # its own zero-padded ggml row (the padding weighs nothing: its imatrix entries are 0).
    cdef int64_t real = L.K if L.main_elems > L.K else L.main_elems
    cdef int64_t rem, npad
    if real == L.main_elems:
        quantize_chunk(L.main_type, x, out, L.main_elems, qw, reference)
    else:
        copy_padded(xpad, x, real, L.main_elems)
        if qw != NULL:
            copy_padded(qwpad, qw, real, L.main_elems)
        quantize_chunk(L.main_type, xpad, out, L.main_elems, qwpad if qw != NULL else NULL, reference)
    if L.n_tail == 0:
        return
    rem = L.K - L.main_elems
    npad = L.n_tail * 32
    if rem == npad:
        quantize_chunk(L.tail_type, x + L.main_elems, out + L.main_bytes, npad,
                       qw + L.main_elems if qw != NULL else NULL, reference)
        return
    copy_padded(xpad, x + L.main_elems, rem, npad)
    if qw != NULL:
        copy_padded(qwpad, qw + L.main_elems, rem, npad)
    quantize_chunk(L.tail_type, xpad, out + L.main_bytes, npad, qwpad if qw != NULL else NULL, reference)


cdef inline bint all_finite(const float *x, int64_t n) noexcept nogil:
    # |x| is inf or NaN iff its magnitude bits are >= 0x7f800000, i.e. iff adding
    # 0x00800000 reaches bit 31: integer and/add/or only, so the loop vectorises
    cdef int64_t j
    cdef uint32_t u, acc = 0
    for j in range(n):
        memcpy(&u, &x[j], 4)
        acc |= (u & 0x7fffffff) + 0x00800000
    return (acc >> 31) == 0


cdef void dequantize_one_row(const onnxq_row_layout *L, const uint8_t *row, float *y) noexcept nogil:
    # the padded last block is decoded into this stack buffer, so y is never written past K
    cdef float scratch[256]
    cdef int64_t full
    if L.main_type != ONNXQ_TYPE_Q8_K:
        onnxq_dequantize_row(L, row, y, scratch)
        return
    full = L.K // 256
    dequantize_row_q8_K(<const block_q8_K *>row, y, full * 256)
    if full < L.n_main:
        dequantize_row_q8_K(<const block_q8_K *>row + full, scratch, 256)
        memcpy(y + full * 256, scratch, (L.K - full * 256) * sizeof(float))


# ---------------------------------------------------------------- Python entry points

_LAYOUT_ERRORS = {
    ONNXQ_LAYOUT_BAD_MAIN_TYPE: "main type {main} cannot hold weights",
    ONNXQ_LAYOUT_BAD_TAIL_TYPE: "tail type {tail} is not valid with main type {main}: a tail must be a "
                                "32-element weight type and is only allowed after a K-quant",
    ONNXQ_LAYOUT_BAD_K: "row length K={K} is out of range: expected 1 <= K <= " + str(ONNXQ_MAX_K),
}


cdef onnxq_row_layout checked_layout(int main_type, int tail_type, int64_t K) except *:
    cdef onnxq_row_layout L
    cdef int rc = layout_init(&L, main_type, tail_type, K)
    if rc != ONNXQ_LAYOUT_OK:
        raise ValueError(_LAYOUT_ERRORS.get(rc, "invalid row layout").format(
            main=type_name(main_type), tail=type_name(tail_type), K=K))
    return L


def type_name(int type_id) -> str:
    """ggml's name of a type id ("Q4_0", ...), "none" for -1, "#id" if unknown."""
    if type_id == ONNXQ_TYPE_NONE:
        return "none"
    cdef const onnxq_type_traits *t = onnxq_type_traits_of(type_id)
    return t.name.decode() if t != NULL else f"#{type_id}"


def type_table() -> list:
    """The C type table: (ggml id, name, block size, bytes per block, is weight type) per type."""
    cdef int i
    return [(ONNXQ_TYPE_TABLE[i].type, ONNXQ_TYPE_TABLE[i].name.decode(), ONNXQ_TYPE_TABLE[i].block_size,
             ONNXQ_TYPE_TABLE[i].type_size, bool(ONNXQ_TYPE_TABLE[i].is_weight_type))
            for i in range(ONNXQ_TYPE_COUNT)]


def row_layout(int main_type, int tail_type, int64_t K) -> dict:
    """The row layout of K elements (see ggml_blocks.h), Q8_K included; ValueError if invalid."""
    cdef onnxq_row_layout L = checked_layout(main_type, tail_type, K)
    return dict(main_type=L.main_type, tail_type=L.tail_type, K=L.K, n_main=L.n_main,
                main_elems=L.main_elems, n_tail=L.n_tail, main_bytes=L.main_bytes, row_bytes=L.row_bytes)


def quantize_rows(const float[:, ::1] x not None, uint8_t[:, ::1] out not None, int main_type, int tail_type,
                  const float[::1] imatrix=None, int num_threads=0, bint reference=False) -> int:
    """Quantize every row of x (float32 [rows, K]) into out (uint8 [rows, row_bytes]).

    imatrix: per-column importance (length K) or None. Rows are split over num_threads
    OpenMP threads (0: OpenMP's default, all cores). reference=True runs ggml's searches one problem at a time (the plain
    transliterations) instead of 8 side by side: same bytes, slower; a cross-check for tests.
    Returns -1, or the index of the first row holding a NaN or an infinity (such rows are
    left unwritten).
    """
    cdef int64_t K = x.shape[1]
    cdef Py_ssize_t rows = x.shape[0], r
    cdef onnxq_row_layout L = checked_layout(main_type, tail_type, K)
    if out.shape[0] != rows or out.shape[1] != L.row_bytes:
        raise ValueError(f"output has shape {(out.shape[0], out.shape[1])}, expected {(rows, L.row_bytes)}")
    if imatrix is not None and imatrix.shape[0] != K:
        raise ValueError(f"imatrix has {imatrix.shape[0]} values, expected K={K}")
    if num_threads < 0:
        raise ValueError(f"num_threads must be >= 0 (0: all cores), got {num_threads}")
    cdef const float *qw = &imatrix[0] if imatrix is not None else NULL
    cdef bint need_pad = L.main_elems > K or L.n_tail * 32 > K - L.main_elems
    cdef int64_t pad_n = L.main_elems + L.n_tail * 32
    status_arr = np.zeros(rows, dtype=np.int8)
    cdef int8_t[::1] status = status_arr
    cdef float *xpad = NULL
    cdef float *qwpad = NULL
    if rows == 0:
        return -1
    with nogil, parallel(num_threads=num_threads):
        xpad = NULL
        qwpad = NULL
        if need_pad:
            xpad = <float *>malloc(pad_n * sizeof(float))
            qwpad = <float *>malloc(pad_n * sizeof(float))
        for r in prange(rows, schedule='dynamic', chunksize=4):
            if need_pad and (xpad == NULL or qwpad == NULL):
                status[r] = 2
            elif not all_finite(&x[r, 0], K):
                status[r] = 1
            else:
                quantize_one_row(&L, &x[r, 0], qw, &out[r, 0], xpad, qwpad, reference)
        free(xpad)
        free(qwpad)
    if (status_arr == 2).any():
        raise MemoryError(f"could not allocate {pad_n * 4} bytes of padding scratch")
    bad = np.flatnonzero(status_arr)
    return int(bad[0]) if bad.size else -1


def dequantize_rows(const uint8_t[:, ::1] data not None, float[:, ::1] out not None, int main_type,
                    int tail_type, int num_threads=0) -> None:
    """Dequantize data (uint8 [rows, row_bytes]) into out (float32 [rows, K]) with
    num_threads OpenMP threads (0: all cores)."""
    cdef int64_t K = out.shape[1]
    cdef Py_ssize_t rows = data.shape[0], r
    cdef onnxq_row_layout L = checked_layout(main_type, tail_type, K)
    if out.shape[0] != rows or data.shape[1] != L.row_bytes:
        raise ValueError(f"data has shape {(data.shape[0], data.shape[1])} for output {(out.shape[0], K)}, "
                         f"expected {(out.shape[0], L.row_bytes)}")
    if num_threads < 0:
        raise ValueError(f"num_threads must be >= 0 (0: all cores), got {num_threads}")
    if rows == 0:
        return
    for r in prange(rows, nogil=True, num_threads=num_threads, schedule='static'):
        dequantize_one_row(&L, &data[r, 0], &out[r, 0])
