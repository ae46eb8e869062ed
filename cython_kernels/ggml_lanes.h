/*
 * Lane-parallel versions of ggml's scale searches for the onnxq codecs (_codecs.pyx).
 *
 * ggml's searches (make_qx_quants, make_qkx2_quants, make_qkx3_quants) are chains of
 * float sums that must not be reordered, so they cannot be vectorised along a block.
 * They can run side by side on independent problems: the sub-blocks of a super-block,
 * or consecutive blocks of a row. Here every problem lives in one lane of a 4-float
 * GCC/Clang vector (the width every x86-64 and ARM64 has); each lane performs exactly
 * the float operations of the scalar reference, in the same order (IEEE element-wise,
 * no contraction: build with -ffp-contract=off). Data-dependent branches become per-lane
 * selects. The bytes are therefore those of the scalar code, which stays in _codecs.pyx
 * as the reference.
 *
 * Rounding: for |v| <= 4194303 (the range ggml asserts for nearest_int), v + 1.5*2^23
 * is an integer-valued float, so (v + 1.5*2^23) - 1.5*2^23 is nearest_int(v) exactly,
 * as a float; clamping to integer bounds first equals clamping after (rounding is
 * monotone). Before rounding, each function proves from per-lane bounds (rounding of
 * +, *, / is monotone too) that all arguments lie in that range. If some lane's do not
 * (degenerate, subnormal or overflowing blocks) it returns -1 and the caller runs the
 * scalar reference, which reproduces ggml's wrap-around exactly.
 *
 * Entry points take 8 problems of n <= 32 elements stored one after the other
 * (x[n*s + i]) and run them as two groups of 4 lanes. Everything is inlined into the
 * caller, which passes n as a literal so that the loops over n unroll.
 */
#ifndef ONNXQ_GGML_LANES_H
#define ONNXQ_GGML_LANES_H

#include <stdint.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

typedef float onnxq_f4 __attribute__((vector_size(16)));
typedef int32_t onnxq_i4 __attribute__((vector_size(16)));

/* forced inlining: with n a compile-time constant the loops over n unroll fully and the
 * lanes stay in registers (an order of magnitude faster than with a runtime n) */
#define ONNXQ_LANE static inline __attribute__((always_inline))

#define ONNXQ_NEAREST_MAX 4194303.0f

ONNXQ_LANE onnxq_f4 onnxq_f4_set(float a) { return (onnxq_f4){a, a, a, a}; }
ONNXQ_LANE onnxq_i4 onnxq_i4_set(int32_t a) { return (onnxq_i4){a, a, a, a}; }

/* m is a lane mask (-1 or 0): a where set, b elsewhere */
ONNXQ_LANE onnxq_f4 onnxq_f4_sel(onnxq_i4 m, onnxq_f4 a, onnxq_f4 b) {
    return (onnxq_f4)(((onnxq_i4)a & m) | ((onnxq_i4)b & ~m));
}
ONNXQ_LANE onnxq_i4 onnxq_i4_sel(onnxq_i4 m, onnxq_i4 a, onnxq_i4 b) { return (a & m) | (b & ~m); }
ONNXQ_LANE onnxq_f4 onnxq_f4_abs(onnxq_f4 a) { return (onnxq_f4)((onnxq_i4)a & 0x7fffffff); }
/* max(v, lo) then min(., hi); a NaN v gives lo (ggml's `v > 0 ? ... : 0` in make_qkx3_quants) */
#if defined(__SSE2__)
ONNXQ_LANE onnxq_f4 onnxq_f4_clamp(onnxq_f4 v, float lo, float hi) {
    /* maxps returns its second operand when the first is NaN */
    return (onnxq_f4)_mm_min_ps(_mm_max_ps((__m128)v, _mm_set1_ps(lo)), _mm_set1_ps(hi));
}
#else
ONNXQ_LANE onnxq_f4 onnxq_f4_clamp(onnxq_f4 v, float lo, float hi) {
    v = onnxq_f4_sel(v > lo, v, onnxq_f4_set(lo));
    return onnxq_f4_sel(v < hi, v, onnxq_f4_set(hi));
}
#endif
/* nearest_int as a float: v + 1.5*2^23 is integer-valued for |v| <= ONNXQ_NEAREST_MAX and
 * subtracting 1.5*2^23 again is exact. Clamping to integer bounds before rounding equals
 * clamping after, rounding being monotone. */
ONNXQ_LANE onnxq_f4 onnxq_round4(onnxq_f4 v) { return (v + 12582912.0f) - 12582912.0f; }
ONNXQ_LANE int onnxq_i4_any(onnxq_i4 m) {
#if defined(__SSE2__)
    return _mm_movemask_ps((__m128)m) != 0;
#else
    int32_t v[4];
    memcpy(v, &m, sizeof v);
    return (v[0] | v[1] | v[2] | v[3]) != 0;
#endif
}
/* lanes that are not masked out must all satisfy bound <= ONNXQ_NEAREST_MAX (NaN fails) */
ONNXQ_LANE int onnxq_in_range(onnxq_f4 bound, onnxq_i4 ignore) {
    return !onnxq_i4_any(~ignore & ~(bound <= ONNXQ_NEAREST_MAX));
}

ONNXQ_LANE void onnxq_lanes_load(int n, const float *x, onnxq_f4 *xt) {
    for (int i = 0; i < n; ++i)
        for (int s = 0; s < 4; ++s) xt[i][s] = x[n * s + i];
}

/*
 * make_qx_quants(n, nmax, x, L, rmse_type = 1, w) on 4 problems; w[n*s + i] are the
 * weights (ggml's qw, or x*x where it passes none). L receives codes + nmax, scale[s] the
 * returned scale. Returns 0, or -1 if the scalar reference must be used instead.
 */
ONNXQ_LANE int onnxq_make_qx_quants_x4(int n, int nmax, const float *x, const float *w, int8_t *L,
                                      float *scale) {
    onnxq_f4 xt[32], wt[32], wx[32];
    onnxq_lanes_load(n, x, xt);
    onnxq_lanes_load(n, w, wt);
    /* ggml's w*x[i]*l is (w*x[i])*l: the first product is the same for every candidate */
    for (int i = 0; i < n; ++i) wx[i] = wt[i] * xt[i];

    onnxq_f4 amax = onnxq_f4_set(0.0f), mx = onnxq_f4_set(0.0f);
    for (int i = 0; i < n; ++i) {
        const onnxq_f4 ax = onnxq_f4_abs(xt[i]);
        const onnxq_i4 up = ax > amax;
        mx = onnxq_f4_sel(up, xt[i], mx);
        amax = onnxq_f4_sel(up, ax, amax);
    }
    /* ggml answers these lanes with zero codes and scale 0 before any search */
    const onnxq_i4 zero = amax < 1e-15f;
    const onnxq_f4 fzero = onnxq_f4_set(0.0f);

    /* |x| <= amax and the largest candidate iscale is (nmax + 0.9)/|max|: one bound covers
     * every candidate, division and multiplication rounding monotonically */
    if (!onnxq_in_range(onnxq_f4_set((float)nmax + 0.1f * 9.0f) / onnxq_f4_abs(mx) * amax, zero)) return -1;
    /* candidate 0 is -nmax/max, then -(nmax + 0.1*is)/max for is = -9..9, is != 0; a lane
     * keeps the iscale of its best candidate and its codes are rounded once at the end */
    onnxq_f4 sc = fzero, best = fzero, win = fzero;
    for (int is = -10; is <= 9; ++is) {
        if (is == 0) continue;
        const float num = is == -10 ? (float)(-nmax) : -((float)nmax + 0.1f * (float)is);
        const onnxq_f4 iscale = onnxq_f4_sel(zero, fzero, onnxq_f4_set(num) / mx);
        onnxq_f4 sumlx = fzero, suml2 = fzero;
        for (int i = 0; i < n; ++i) {
            const onnxq_f4 fl = onnxq_round4(onnxq_f4_clamp(iscale * xt[i], (float)-nmax, (float)(nmax - 1)));
            sumlx += wx[i] * fl;
            suml2 += wt[i] * fl * fl;
        }
        if (is == -10) {
            sc = onnxq_f4_sel(suml2 != 0.0f, sumlx / suml2, fzero);
            best = sc * sumlx;
            win = iscale;
            continue;
        }
        /* branch-free: whether some lane improved is unpredictable, selecting is cheap */
        const onnxq_i4 better = (suml2 > 0.0f) & (sumlx * sumlx > best * suml2);
        const onnxq_f4 nsc = sumlx / suml2;
        sc = onnxq_f4_sel(better, nsc, sc);
        best = onnxq_f4_sel(better, nsc * sumlx, best);
        win = onnxq_f4_sel(better, iscale, win);
    }
    sc = onnxq_f4_sel(zero, fzero, sc);
    for (int i = 0; i < n; ++i) {
        const onnxq_f4 fl = onnxq_round4(onnxq_f4_clamp(win * xt[i], (float)-nmax, (float)(nmax - 1)));
        const onnxq_i4 l = __builtin_convertvector(fl, onnxq_i4) + nmax;
        const onnxq_i4 code = onnxq_i4_sel(zero, onnxq_i4_set(0), l);
        for (int s = 0; s < 4; ++s) L[n * s + i] = (int8_t)code[s];
    }
    for (int s = 0; s < 4; ++s) scale[s] = sc[s];
    return 0;
}

/* the same on 8 problems, as two groups of 4 lanes */
ONNXQ_LANE int onnxq_make_qx_quants_x8(int n, int nmax, const float *x, const float *w, int8_t *L,
                                          float *scale) {
    if (onnxq_make_qx_quants_x4(n, nmax, x, w, L, scale)) return -1;
    return onnxq_make_qx_quants_x4(n, nmax, x + 4 * n, w + 4 * n, L + 4 * n, scale + 4);
}

/*
 * make_qkx2_quants (qkx3 = 0) or make_qkx3_quants (qkx3 = 1, explicit weights) with
 * use_mad = false, on 4 problems. L receives the codes, scale[s] the returned scale and
 * the_min[s] the positive offset. Returns 0, or -1 if the scalar reference must be used.
 */
ONNXQ_LANE int onnxq_make_qkx_quants_x4(int n, int nmax, const float *x, const float *w, uint8_t *L,
                                       float *scale, float *the_min, float rmin, float rdelta, int nstep,
                                       int qkx3) {
    onnxq_f4 xt[32], wt[32], fls[32];
    onnxq_lanes_load(n, x, xt);
    onnxq_lanes_load(n, w, wt);
    const onnxq_f4 fzero = onnxq_f4_set(0.0f);
    const float fnmax = (float)nmax;

    onnxq_f4 mn = xt[0], mx = xt[0], sum_w = wt[0];
    onnxq_f4 sum_x = sum_w * xt[0];
    for (int i = 1; i < n; ++i) {
        mn = onnxq_f4_sel(xt[i] < mn, xt[i], mn);
        mx = onnxq_f4_sel(xt[i] > mx, xt[i], mx);
        sum_w += wt[i];
        sum_x += wt[i] * xt[i];
    }
    const onnxq_f4 xmin = mn;
    mn = onnxq_f4_sel(mn > 0.0f, fzero, mn);
    /* ggml returns zero codes for these lanes at once; they run on with iscale 0, ignored */
    const onnxq_i4 flat = qkx3 ? (mx <= mn) : (mx == mn);
    const onnxq_f4 mn0 = mn;

    onnxq_f4 iscale = onnxq_f4_sel(flat, fzero, onnxq_f4_set(fnmax) / (mx - mn));
    /* x - mn lies between xmin - mn and mx - mn (subtraction rounds monotonically) */
    onnxq_f4 span = onnxq_f4_abs(mx - mn);
    span = onnxq_f4_sel(onnxq_f4_abs(xmin - mn) > span, onnxq_f4_abs(xmin - mn), span);
    if (!onnxq_in_range(onnxq_f4_abs(iscale) * span, flat)) return -1;
    onnxq_f4 sc = onnxq_f4_set(1.0f) / iscale;
    onnxq_f4 best = fzero;
    for (int i = 0; i < n; ++i) {
        const onnxq_f4 fl = onnxq_round4(onnxq_f4_clamp(iscale * (xt[i] - mn), 0.0f, fnmax));
        onnxq_f4 diff = sc * fl + mn - xt[i];
        diff = diff * diff;
        best += wt[i] * diff;
    }
    /* a lane's codes are rounded once at the end, from its best candidate's iscale and min */
    onnxq_f4 win_iscale = iscale, win_mn = mn;

    for (int is = 0; is <= nstep; ++is) {
        iscale = onnxq_f4_sel(flat, fzero, onnxq_f4_set(rmin + rdelta * (float)is + fnmax) / (mx - mn));
        if (!qkx3) {
            /* make_qkx2_quants rounds first and clamps after: only equal to clamping first
             * while every argument is in nearest_int's range */
            span = onnxq_f4_abs(mx - mn);
            span = onnxq_f4_sel(onnxq_f4_abs(xmin - mn) > span, onnxq_f4_abs(xmin - mn), span);
            if (!onnxq_in_range(onnxq_f4_abs(iscale) * span, flat)) return -1;
        }
        onnxq_f4 sum_l = fzero, sum_l2 = fzero, sum_xl = fzero;
        for (int i = 0; i < n; ++i) {
            /* qkx3: v > 0 ? nearest_int(MIN(v, nmax)) : 0, v possibly huge, inf or NaN */
            const onnxq_f4 fl = onnxq_round4(onnxq_f4_clamp(iscale * (xt[i] - mn), 0.0f, fnmax));
            const onnxq_f4 wl = wt[i] * fl;
            fls[i] = fl;
            sum_l += wl;
            sum_l2 += wl * fl;
            sum_xl += wl * xt[i];
        }
        const onnxq_f4 D = sum_w * sum_l2 - sum_l * sum_l;
        onnxq_f4 this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
        onnxq_f4 this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
        const onnxq_i4 pos = this_min > 0.0f;
        this_scale = onnxq_f4_sel(pos, sum_xl / sum_l2, this_scale);
        this_min = onnxq_f4_sel(pos, fzero, this_min);
        onnxq_f4 err = fzero;
        for (int i = 0; i < n; ++i) {
            onnxq_f4 diff = this_scale * fls[i] + this_min - xt[i];
            diff = diff * diff;
            err += wt[i] * diff;
        }
        const onnxq_i4 better = (D > 0.0f) & (err < best) & ~flat;
        best = onnxq_f4_sel(better, err, best);
        sc = onnxq_f4_sel(better, this_scale, sc);
        win_iscale = onnxq_f4_sel(better, iscale, win_iscale);
        win_mn = onnxq_f4_sel(better, mn, win_mn);
        mn = onnxq_f4_sel(better, this_min, mn);
    }
    sc = onnxq_f4_sel(flat, fzero, sc);
    mn = onnxq_f4_sel(flat, mn0, mn);
    win_iscale = onnxq_f4_sel(flat, fzero, win_iscale);
    for (int i = 0; i < n; ++i) {
        const onnxq_f4 fl = onnxq_round4(onnxq_f4_clamp(win_iscale * (xt[i] - win_mn), 0.0f, fnmax));
        const onnxq_i4 l = __builtin_convertvector(fl, onnxq_i4);
        for (int s = 0; s < 4; ++s) L[n * s + i] = (uint8_t)l[s];
    }
    for (int s = 0; s < 4; ++s) {
        scale[s] = sc[s];
        the_min[s] = -mn[s];
    }
    return 0;
}

ONNXQ_LANE int onnxq_make_qkx_quants_x8(int n, int nmax, const float *x, const float *w, uint8_t *L,
                                           float *scale, float *the_min, float rmin, float rdelta, int nstep,
                                           int qkx3) {
    if (onnxq_make_qkx_quants_x4(n, nmax, x, w, L, scale, the_min, rmin, rdelta, nstep, qkx3)) return -1;
    return onnxq_make_qkx_quants_x4(n, nmax, x + 4 * n, w + 4 * n, L + 4 * n, scale + 4, the_min + 4, rmin, rdelta,
                                    nstep, qkx3);
}

#endif /* ONNXQ_GGML_LANES_H */
