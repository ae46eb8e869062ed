/*
 * The kernel driver: ISA dispatch, weight preparation (repack into x8 groups), and the
 * four ways a matmul runs:
 *   fast, few rows    - quantize X rows to Q8_0-style 32-element blocks, integer dot
 *                       products of each group of 8 weight rows with 8 activation rows at a
 *                       time; for one row every weight byte is streamed once;
 *   fast, many rows   - the same quantized rows, integer GEMM: 2-D tiles, each expanding its
 *                       columns' weights per K chunk into micro-kernel panels (same numbers
 *                       as the dot products, bit for bit);
 *   exact, few rows   - fused dequantize-and-dot per group of 8 weight rows, float arithmetic;
 *   exact, many rows  - dequantize panels of a column chunk into L2, register-blocked
 *                       float GEMM.
 * Work is split over groups of output columns (N): tasks never share output memory.
 */
#include <stdatomic.h>
#include <stdlib.h>

#include "ggml_dequant.h"
#include "kernels_impl.h"

/* Exact mode: fused dequantize-and-dot up to this many rows, the float GEMM above. Fast mode
 * always takes integer arithmetic (the dot kernels, or the integer GEMM from ONNXQ_IGEMM_MIN_M
 * rows on): maddubs / vpdpbusd do two to four times the multiply-adds of an FMA per
 * instruction, and the results do not depend on how many rows come in one call. */
#define ONNXQ_EXACT_GEMV_MAX_M 8
/* Fast mode with many rows: weight groups are taken in blocks of about this many bytes
 * (L2-resident) and every 8-row chunk of activations meets the whole block. */
#define ONNXQ_FAST_BLOCK_BYTES (192 * 1024)
#define ONNXQ_KC 256 /* elements per panel: one K-quant super-block, eight 32-blocks */

/* ---------------- dispatch ---------------- */

#if defined(__aarch64__) && (defined(__linux__) || defined(__ANDROID__))
#include <sys/auxv.h>
/* Bit values from the kernel's uapi hwcap.h, for C libraries whose headers predate them. */
#ifndef AT_HWCAP2
#define AT_HWCAP2 26
#endif
#ifndef HWCAP_ASIMD
#define HWCAP_ASIMD (1UL << 1)
#endif
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1UL << 20)
#endif
#ifndef HWCAP2_I8MM
#define HWCAP2_I8MM (1UL << 13)
#endif
#elif defined(__aarch64__) && defined(__APPLE__)
#include <sys/sysctl.h>
static int apple_feature(const char *name) {
    int v = 0;
    size_t len = sizeof v;
    /* unknown names (older macOS) fail: the feature then counts as absent */
    return sysctlbyname(name, &v, &len, NULL, 0) == 0 && v != 0;
}
#endif

static int cpu_has(int isa) {
    if (isa == ONNXQ_ISA_SCALAR) return 1;
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    switch (isa) {
    case ONNXQ_ISA_AVX2:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    case ONNXQ_ISA_AVXVNNI: return cpu_has(ONNXQ_ISA_AVX2) && __builtin_cpu_supports("avxvnni");
    case ONNXQ_ISA_AVX512VNNI:
        return cpu_has(ONNXQ_ISA_AVX2) && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
    default: return 0;
    }
#elif defined(__aarch64__) && (defined(__linux__) || defined(__ANDROID__))
    const unsigned long hw = getauxval(AT_HWCAP), hw2 = getauxval(AT_HWCAP2);
    switch (isa) {
    case ONNXQ_ISA_NEON: return (hw & HWCAP_ASIMD) != 0;
    case ONNXQ_ISA_DOTPROD: return (hw & HWCAP_ASIMD) && (hw & HWCAP_ASIMDDP);
    /* the i8mm table keeps SDOT for single rows */
    case ONNXQ_ISA_I8MM: return (hw & HWCAP_ASIMD) && (hw & HWCAP_ASIMDDP) && (hw2 & HWCAP2_I8MM);
    default: return 0;
    }
#elif defined(__aarch64__) && defined(__APPLE__)
    switch (isa) {
    case ONNXQ_ISA_NEON: return 1;
    case ONNXQ_ISA_DOTPROD: return apple_feature("hw.optional.arm.FEAT_DotProd");
    case ONNXQ_ISA_I8MM: return apple_feature("hw.optional.arm.FEAT_DotProd") && apple_feature("hw.optional.arm.FEAT_I8MM");
    default: return 0;
    }
#elif defined(__aarch64__)
    /* Advanced SIMD is part of every aarch64 CPU; other OSes get no probe for the extensions. */
    return isa == ONNXQ_ISA_NEON;
#else
    return 0;
#endif
}

const onnxq_kernel_table *onnxq_kernels_for_isa(int isa) {
    if (!cpu_has(isa)) return NULL;
    switch (isa) {
    case ONNXQ_ISA_SCALAR: return &onnxq_kernels_scalar;
    case ONNXQ_ISA_AVX2: return onnxq_kernels_avx2();
    case ONNXQ_ISA_AVXVNNI: return onnxq_kernels_avxvnni();
    case ONNXQ_ISA_AVX512VNNI: return onnxq_kernels_avx512vnni();
    case ONNXQ_ISA_NEON: return onnxq_kernels_neon();
    case ONNXQ_ISA_DOTPROD: return onnxq_kernels_dotprod();
    case ONNXQ_ISA_I8MM: return onnxq_kernels_i8mm();
    default: return NULL;
    }
}

static const char *const ISA_NAMES[ONNXQ_ISA_COUNT] = {"scalar", "avx2", "avxvnni", "avx512vnni",
                                                            "neon", "dotprod", "i8mm"};

static _Atomic(const onnxq_kernel_table *) g_active;

const onnxq_kernel_table *onnxq_kernels_active(void) {
    const onnxq_kernel_table *t = atomic_load_explicit(&g_active, memory_order_acquire);
    if (t) return t;
    /* Every thread that races here computes the same answer; storing it twice is harmless. */
    int cap = ONNXQ_ISA_COUNT - 1;
    const char *env = getenv("ONNXQ_ISA");
    for (int isa = 0; env && isa < ONNXQ_ISA_COUNT; ++isa)
        if (!strcmp(env, ISA_NAMES[isa])) cap = isa;
    /* A level of the other architecture means nothing here: like an unknown name, the best. */
    const int family_base = cap <= ONNXQ_ISA_AVX512VNNI ? ONNXQ_ISA_AVX2 : ONNXQ_ISA_NEON;
    if (cap != ONNXQ_ISA_SCALAR && !onnxq_kernels_for_isa(family_base)) cap = ONNXQ_ISA_COUNT - 1;
    /* levels of the other architecture below the cap are never available: the walk skips them */
    for (int isa = cap; isa >= 0 && !t; --isa) t = onnxq_kernels_for_isa(isa);
    atomic_store_explicit(&g_active, t, memory_order_release);
    return t;
}

void onnxq_kernels_set_active(const onnxq_kernel_table *t) { atomic_store_explicit(&g_active, t, memory_order_release); }

const char *onnxq_kernel_isa(void) { return onnxq_kernels_active()->name; }

/* ---------------- weights ---------------- */

onnxq_weight *onnxq_weight_create(const onnxq_row_layout *L, int64_t N, const uint8_t *W, int own_copy) {
    (void)own_copy; /* the repacked copy never points into W, so both cases are the same */
    onnxq_weight *w = calloc(1, sizeof *w);
    if (!w) return NULL;
    w->L = *L;
    w->N = N;
    w->n_groups = (N + ONNXQ_GR - 1) / ONNXQ_GR;
    const onnxq_type_traits *mt = onnxq_type_traits_of(L->main_type);
    w->nparts = L->n_tail > 0 ? 2 : 1;
    w->part[0] = (onnxq_wpart){L->main_type, mt->block_size, L->n_main, 0, onnxq_group_block_bytes(L->main_type), NULL};
    if (w->nparts == 2)
        w->part[1] = (onnxq_wpart){L->tail_type, 32, L->n_tail, L->main_elems, onnxq_group_block_bytes(L->tail_type), NULL};
    size_t total = 0;
    for (int p = 0; p < w->nparts; ++p) total += (size_t)(w->n_groups * w->part[p].nb * w->part[p].gbytes);
    w->mem = aligned_alloc(64, total ? (total + 63) / 64 * 64 : 64);
    if (!w->mem) {
        free(w);
        return NULL;
    }
    uint8_t *dst = w->mem;
    int64_t src_off = 0;
    for (int p = 0; p < w->nparts; ++p) {
        onnxq_wpart *pt = &w->part[p];
        const int tsize = onnxq_type_traits_of(pt->type)->type_size;
        pt->data = dst;
        for (int64_t g = 0; g < w->n_groups; ++g)
            for (int64_t b = 0; b < pt->nb; ++b) {
                const uint8_t *rows[ONNXQ_GR];
                for (int r = 0; r < ONNXQ_GR; ++r) {
                    const int64_t n = g * ONNXQ_GR + r;
                    rows[r] = n < N ? W + n * L->row_bytes + src_off + b * tsize : NULL;
                }
                onnxq_repack_group_block(pt->type, rows, dst);
                dst += pt->gbytes;
            }
        src_off += pt->nb * tsize;
    }
    return w;
}

void onnxq_weight_destroy(onnxq_weight *w) {
    if (!w) return;
    free(w->mem);
    free(w);
}

static inline const uint8_t *group_data(const onnxq_wpart *pt, int64_t g) { return pt->data + g * pt->nb * pt->gbytes; }

/* ---------------- running tasks ---------------- */

static int run_tasks(const onnxq_runner *run, onnxq_task_fn fn, size_t total, void *user) {
    if (total == 0) return ONNXQ_KERNEL_OK;
    if (total == 1 || !run || !run->parallel_for || run->num_threads <= 1) {
        for (size_t i = 0; i < total; ++i) fn(user, i);
        return ONNXQ_KERNEL_OK;
    }
    return run->parallel_for(run->ctx, fn, total, user) ? ONNXQ_KERNEL_RUNTIME : ONNXQ_KERNEL_OK;
}

/* Tasks of at least min_per_task units, about 4 per thread so a busy core does not stall the rest. */
static int64_t units_per_task(int64_t units, const onnxq_runner *run, int64_t min_per_task) {
    const int64_t threads = run && run->num_threads > 1 ? run->num_threads : 1;
    int64_t per = (units + threads * 4 - 1) / (threads * 4);
    if (per < min_per_task) per = min_per_task;
    return per < 1 ? 1 : per;
}

/* Store the 8 columns of group g for rows [m0, m0+mm) from acc[m*8 + r]. */
static void store_group(const onnxq_weight *w, int64_t g, int64_t m0, int mm, const float *acc, const float *bias,
                        float *Y) {
    const int64_t n0 = g * ONNXQ_GR;
    const int nr = (int)(w->N - n0 < ONNXQ_GR ? w->N - n0 : ONNXQ_GR);
    for (int m = 0; m < mm; ++m) {
        float *y = Y + (m0 + m) * w->N + n0;
        for (int r = 0; r < nr; ++r) y[r] = acc[m * 8 + r] + (bias ? bias[n0 + r] : 0.0f);
    }
}

/* ---------------- fast mode ---------------- */

typedef struct {
    const onnxq_weight *w;
    const onnxq_kernel_table *T;
    const onnxq_qact *act[2]; /* per part, M rows */
    int64_t M;
    const float *bias;
    float *Y;
    int64_t per_task;
    int64_t block_groups; /* groups per L2 block */
} fast_job;

static void fast_task(void *user, size_t t) {
    const fast_job *J = user;
    const onnxq_weight *w = J->w;
    const int64_t g0 = (int64_t)t * J->per_task;
    const int64_t g1 = g0 + J->per_task < w->n_groups ? g0 + J->per_task : w->n_groups;
    float acc[ONNXQ_GR * 8], tmp[ONNXQ_GR * 8];
    /* a block of groups (L2-resident) meets every 8-row chunk of activations in turn */
    for (int64_t b0 = g0; b0 < g1; b0 += J->block_groups) {
        const int64_t b1 = b0 + J->block_groups < g1 ? b0 + J->block_groups : g1;
        for (int64_t m0 = 0; m0 < J->M; m0 += 8) {
            const int mm = (int)(J->M - m0 < 8 ? J->M - m0 : 8);
            for (int64_t g = b0; g < b1; ++g) {
                for (int p = 0; p < w->nparts; ++p) {
                    const onnxq_wpart *pt = &w->part[p];
                    J->T->dot[onnxq_type_slot(pt->type)](group_data(pt, g), pt->nb, J->act[p] + m0, mm, p ? tmp : acc);
                    if (p)
                        for (int i = 0; i < mm * 8; ++i) acc[i] += tmp[i];
                }
                store_group(w, g, m0, mm, acc, J->bias, J->Y);
            }
        }
    }
}

/* s[i] = the sum of codes 16i .. 16i+15 (Q6_K's 16-element sub-blocks take the offset out with them). */
static void sums16(const int8_t *qs, int64_t n16, int16_t *s) {
    for (int64_t i = 0; i < n16; ++i) {
        int v = 0;
        for (int j = 0; j < 16; ++j) v += qs[16 * i + j];
        s[i] = (int16_t)v;
    }
}

typedef struct {
    const onnxq_weight *w;
    const onnxq_kernel_table *T;
    const float *X;
    onnxq_qact *act[2];
    int64_t rows_per_task, M;
} quant_job;

/* Quantize rows [t * rows_per_task, ...) of X for every part into the buffers the qact
 * headers point at (this call owns them; the headers are const for the dot kernels). */
static void quant_task(void *user, size_t t) {
    const quant_job *J = user;
    const onnxq_weight *w = J->w;
    const int64_t K = w->L.K, m0 = (int64_t)t * J->rows_per_task;
    const int64_t m1 = m0 + J->rows_per_task < J->M ? m0 + J->rows_per_task : J->M;
    for (int p = 0; p < w->nparts; ++p) {
        const onnxq_wpart *pt = &w->part[p];
        const int64_t n = pt->nb * pt->bs, valid = K - pt->k0 < n ? K - pt->k0 : n;
        for (int64_t m = m0; m < m1; ++m) {
            const onnxq_qact *a = &J->act[p][m];
            const float *x = J->X + m * K + pt->k0;
            J->T->quant_q8_0(x, valid, n / 32, (int8_t *)a->qs, (float *)a->d, (int32_t *)a->isum);
            if (a->bsum16) sums16(a->qs, n / 16, (int16_t *)a->bsum16);
        }
    }
}

/* ---------------- fast mode, integer GEMM ---------------- */

/* From this many rows on, fast mode takes the integer GEMM (the same numbers as the dot kernels;
 * measured crossover on AVX-512 VNNI, 4096x4096 Q4_0: 8 rows 1.75 vs 1.88 ms, 16 rows 3.55 vs 2.60 ms). */
#ifndef ONNXQ_IGEMM_MIN_M
#define ONNXQ_IGEMM_MIN_M 16
#endif
#ifndef ONNXQ_IGEMM_KC
#define ONNXQ_IGEMM_KC 512      /* elements of K per panel: the micro-kernel's weights stay in L1 */
#endif
#ifndef ONNXQ_IGEMM_TILE_G
#define ONNXQ_IGEMM_TILE_G 16   /* groups (x8 columns) per task: the panel stays in L2 */
#endif
#ifndef ONNXQ_IGEMM_TILE_M
#define ONNXQ_IGEMM_TILE_M 128  /* activation rows per task */
#endif
#ifndef ONNXQ_IGEMM_TASKS_PER_THREAD
/* runs of tiles per thread: with 8, a thread slowed by another process held the rest up
 * (2 cores, one shared with a busy process: 2-17 % slower than 32) */
#define ONNXQ_IGEMM_TASKS_PER_THREAD 32
#endif

typedef struct {
    const onnxq_weight *w;
    const onnxq_kernel_table *T;
    const onnxq_qact *act[2];
    int64_t M;
    const float *bias;
    float *Y;
    int64_t tile_g, tile_m, n_ntiles, n_tiles, tiles_per_task;
    atomic_int *failed;
} igemm_job;

/* Blocks per K chunk: about ONNXQ_IGEMM_KC elements, the chunks of a part equal (no short last one). */
static int64_t igemm_chunk_blocks(const onnxq_wpart *pt) {
    const int64_t target = ONNXQ_IGEMM_KC / pt->bs > 0 ? ONNXQ_IGEMM_KC / pt->bs : 1;
    const int64_t chunks = (pt->nb + target - 1) / target;
    return chunks > 0 ? (pt->nb + chunks - 1) / chunks : 1;
}

/* C[rows][width] of one part over its K chunks: expand a chunk of every micro-tile's groups, then
 * run every row tile against it (the micro-tile's panel is L1-resident while the rows go by). */
static void igemm_part(const igemm_job *J, int p, int64_t g0, int64_t g1, int64_t m0, int64_t m1, uint8_t *panel,
                       float *C, int64_t width) {
    const onnxq_weight *w = J->w;
    const onnxq_wpart *pt = &w->part[p];
    const int slot = onnxq_type_slot(pt->type), ng = J->T->igemm_ng, mr = J->T->igemm_mr;
    const int64_t kcb = igemm_chunk_blocks(pt);
    const int64_t pbytes = onnxq_igemm_block_bytes(pt->type, ng), gstride = pt->nb * pt->gbytes;
    const int64_t nmicro = (g1 - g0 + ng - 1) / ng;
    const onnxq_qact *rows[16]; /* igemm_mr <= 16 in every table */
    /* a row shorter than one super-block has no main blocks: the part adds zeros, as in the dot path */
    if (pt->nb == 0) memset(C, 0, sizeof(float) * (size_t)(width * ((m1 - m0 + mr - 1) / mr * mr)));
    for (int64_t b = 0; b < pt->nb; b += kcb) {
        const int64_t nblk = pt->nb - b < kcb ? pt->nb - b : kcb;
        for (int64_t u = 0; u < nmicro; ++u) {
            const int64_t gu = g0 + u * ng;
            const int nvalid = (int)(g1 - gu < ng ? g1 - gu : ng);
            J->T->gexpand[slot](group_data(pt, gu), gstride, nvalid, ng, b, nblk, panel + u * nblk * pbytes);
        }
        for (int64_t u = 0; u < nmicro; ++u)
            for (int64_t mi = m0; mi < m1; mi += mr) {
                /* rows past the end repeat the first row: computed into C's padding, never stored */
                for (int i = 0; i < mr; ++i) rows[i] = &J->act[p][mi + i < m1 ? mi + i : m0];
                J->T->igemm[slot](panel + u * nblk * pbytes, b, nblk, rows, C + (mi - m0) * width + u * ng * 8, width,
                                  b == 0);
            }
    }
}

/* Scratch of one tile: the panel of the widest K chunk, then C for every part. */
static size_t igemm_scratch(const igemm_job *J, int64_t width, int64_t rows, size_t *panel_bytes) {
    const onnxq_weight *w = J->w;
    int64_t pb = 0;
    for (int p = 0; p < w->nparts; ++p) {
        const int64_t kcb = igemm_chunk_blocks(&w->part[p]);
        const int64_t nblk = w->part[p].nb < kcb ? w->part[p].nb : kcb;
        const int64_t bytes = width / 8 * nblk * onnxq_igemm_block_bytes(w->part[p].type, 1);
        if (bytes > pb) pb = bytes;
    }
    *panel_bytes = (size_t)(pb + 63) / 64 * 64;
    return (*panel_bytes + (size_t)(rows * width) * sizeof(float) * (size_t)w->nparts + 63) / 64 * 64;
}

static void igemm_tile(const igemm_job *J, int64_t t, uint8_t *mem) {
    const onnxq_weight *w = J->w;
    const int64_t nt = t % J->n_ntiles, mt = t / J->n_ntiles;
    const int64_t g0 = nt * J->tile_g, g1 = g0 + J->tile_g < w->n_groups ? g0 + J->tile_g : w->n_groups;
    const int64_t m0 = mt * J->tile_m, m1 = m0 + J->tile_m < J->M ? m0 + J->tile_m : J->M;
    const int ng = J->T->igemm_ng, mr = J->T->igemm_mr;
    const int64_t width = (g1 - g0 + ng - 1) / ng * ng * 8, rows = (m1 - m0 + mr - 1) / mr * mr;
    size_t panel_bytes;
    igemm_scratch(J, width, rows, &panel_bytes);
    float *C0 = (float *)(mem + panel_bytes), *C1 = C0 + rows * width;
    for (int p = 0; p < w->nparts; ++p) igemm_part(J, p, g0, g1, m0, m1, mem, p ? C1 : C0, width);
    /* the dot path's order: part 0, + part 1, + bias (0.0f without one); simple loops vectorize */
    const int64_t n0 = g0 * 8, nn = (g1 * 8 < w->N ? g1 * 8 : w->N) - n0;
    for (int64_t m = m0; m < m1; ++m) {
        float *c0 = C0 + (m - m0) * width, *y = J->Y + m * w->N + n0;
        const float *c1 = C1 + (m - m0) * width, *bias = J->bias ? J->bias + n0 : NULL;
        if (w->nparts == 2)
            for (int64_t n = 0; n < nn; ++n) c0[n] += c1[n];
        if (bias)
            for (int64_t n = 0; n < nn; ++n) y[n] = c0[n] + bias[n];
        else
            for (int64_t n = 0; n < nn; ++n) y[n] = c0[n] + 0.0f;
    }
}

/* A run of tiles with one scratch allocation (many small tiles would each pay for fresh pages). */
static void igemm_task(void *user, size_t t) {
    const igemm_job *J = user;
    const int64_t t0 = (int64_t)t * J->tiles_per_task;
    const int64_t t1 = t0 + J->tiles_per_task < J->n_tiles ? t0 + J->tiles_per_task : J->n_tiles;
    const int ng = J->T->igemm_ng, mr = J->T->igemm_mr;
    size_t panel_bytes;
    const size_t bytes = igemm_scratch(J, (J->tile_g + ng - 1) / ng * ng * 8, (J->tile_m + mr - 1) / mr * mr, &panel_bytes);
    uint8_t *mem = aligned_alloc(64, bytes);
    if (!mem) {
        atomic_store_explicit(J->failed, 1, memory_order_relaxed);
        return;
    }
    for (int64_t i = t0; i < t1; ++i) igemm_tile(J, i, mem);
    free(mem);
}

static int matmul_igemm(const onnxq_weight *w, const onnxq_kernel_table *T, onnxq_qact *const act[2], int64_t M,
                        const float *bias, float *Y, const onnxq_runner *run) {
    atomic_int failed = 0;
    igemm_job J = {w, T, {act[0], act[1]}, M, bias, Y, 0, 0, 0, 0, 0, &failed};
    const int64_t threads = run && run->num_threads > 1 ? run->num_threads : 1;
    const int ng = T->igemm_ng, mr = T->igemm_mr;
    J.tile_m = M < ONNXQ_IGEMM_TILE_M ? M : ONNXQ_IGEMM_TILE_M;
    J.tile_m = (J.tile_m + mr - 1) / mr * mr;
    const int64_t n_mtiles = (M + J.tile_m - 1) / J.tile_m;
    /* narrower column tiles when there would be fewer than 4 tasks per thread */
    int64_t tg = ONNXQ_IGEMM_TILE_G;
    while (tg > ng && n_mtiles * ((w->n_groups + tg - 1) / tg) < 4 * threads) tg /= 2;
    J.tile_g = (tg + ng - 1) / ng * ng;
    J.n_ntiles = (w->n_groups + J.tile_g - 1) / J.tile_g;
    J.n_tiles = J.n_ntiles * n_mtiles;
    const int64_t per = J.n_tiles / (ONNXQ_IGEMM_TASKS_PER_THREAD * threads);
    J.tiles_per_task = per > 1 ? per : 1;
    const int rc = run_tasks(run, igemm_task, (size_t)((J.n_tiles + J.tiles_per_task - 1) / J.tiles_per_task), &J);
    return rc ? rc : atomic_load(&failed) ? ONNXQ_KERNEL_NOMEM : ONNXQ_KERNEL_OK;
}

static int matmul_fast(const onnxq_weight *w, const onnxq_kernel_table *T, const float *X, int64_t M,
                       const float *bias, float *Y, const onnxq_runner *run) {
    /* One allocation: per part, M rows of (qs, d, sums) plus the onnxq_qact headers. */
    size_t bytes = 0, off[2][4];
    for (int p = 0; p < w->nparts; ++p) {
        const onnxq_wpart *pt = &w->part[p];
        const int64_t n = pt->nb * pt->bs;
        off[p][0] = bytes; bytes += (size_t)(M * n + 63) / 64 * 64;                         /* qs */
        const int64_t nb32 = n / 32; /* activation blocks per row */
        off[p][1] = bytes; bytes += (size_t)(M * nb32 * 4 + 63) / 64 * 64;                  /* d */
        const int64_t sbytes = pt->type == ONNXQ_TYPE_Q6_K ? 8 : 4; /* isum, and bsum16 for Q6_K */
        off[p][2] = bytes; bytes += (size_t)(M * nb32 * sbytes + 63) / 64 * 64;
        off[p][3] = bytes; bytes += (size_t)(M * sizeof(onnxq_qact) + 63) / 64 * 64;
    }
    uint8_t *mem = aligned_alloc(64, bytes);
    if (!mem) return ONNXQ_KERNEL_NOMEM;
    int64_t group_bytes = 0;
    for (int p = 0; p < w->nparts; ++p) group_bytes += w->part[p].nb * w->part[p].gbytes;
    fast_job J = {w, T, {NULL, NULL}, M, bias, Y, 0, ONNXQ_FAST_BLOCK_BYTES / group_bytes + 1};
    quant_job Q = {w, T, X, {NULL, NULL}, 0, M};
    for (int p = 0; p < w->nparts; ++p) {
        const onnxq_wpart *pt = &w->part[p];
        const int64_t n = pt->nb * pt->bs;
        onnxq_qact *a = (onnxq_qact *)(mem + off[p][3]);
        for (int64_t m = 0; m < M; ++m) {
            int8_t *qs = (int8_t *)(mem + off[p][0]) + m * n;
            const int64_t nb32 = n / 32;
            float *d = (float *)(mem + off[p][1]) + m * nb32;
            int32_t *isum = (int32_t *)(mem + off[p][2]) + m * nb32;
            int16_t *b16 = pt->type != ONNXQ_TYPE_Q6_K ? NULL
                                                       : (int16_t *)((int32_t *)(mem + off[p][2]) + M * nb32) + m * 2 * nb32;
            a[m] = (onnxq_qact){qs, d, isum, b16};
        }
        J.act[p] = Q.act[p] = a;
    }
    /* rows of at least 64 Ki elements per task: below that, starting a task costs more */
    Q.rows_per_task = units_per_task(M, run, (1 << 16) / w->L.K + 1);
    int rc = run_tasks(run, quant_task, (size_t)((M + Q.rows_per_task - 1) / Q.rows_per_task), &Q);
    int use_igemm = M >= ONNXQ_IGEMM_MIN_M;
    for (int p = 0; p < w->nparts; ++p)
        use_igemm &= T->igemm[onnxq_type_slot(w->part[p].type)] != NULL;
    if (rc == ONNXQ_KERNEL_OK && use_igemm) {
        rc = matmul_igemm(w, T, Q.act, M, bias, Y, run);
    } else if (rc == ONNXQ_KERNEL_OK) {
        J.per_task = units_per_task(w->n_groups, run, 4);
        rc = run_tasks(run, fast_task, (size_t)((w->n_groups + J.per_task - 1) / J.per_task), &J);
    }
    free(mem);
    return rc;
}

/* ---------------- exact mode, few rows ---------------- */

typedef struct {
    const onnxq_weight *w;
    const onnxq_kernel_table *T;
    const float *x[2];    /* per part: M rows of nb * bs floats, zero-padded */
    const float *xsum[2]; /* per part: M rows of the 32-element sums */
    int64_t M;
    const float *bias;
    float *Y;
    int64_t per_task;
} fdot_job;

static void fdot_task(void *user, size_t t) {
    const fdot_job *J = user;
    const onnxq_weight *w = J->w;
    const int64_t g0 = (int64_t)t * J->per_task;
    const int64_t g1 = g0 + J->per_task < w->n_groups ? g0 + J->per_task : w->n_groups;
    float acc[ONNXQ_EXACT_GEMV_MAX_M * 8], tmp[ONNXQ_EXACT_GEMV_MAX_M * 8];
    for (int64_t g = g0; g < g1; ++g) {
        for (int p = 0; p < w->nparts; ++p) {
            const onnxq_wpart *pt = &w->part[p];
            const int64_t n = pt->nb * pt->bs;
            J->T->fdot[onnxq_type_slot(pt->type)](group_data(pt, g), pt->nb, J->x[p], n, J->xsum[p], n / 32,
                                                  (int)J->M, p ? tmp : acc);
            if (p)
                for (int i = 0; i < (int)J->M * 8; ++i) acc[i] += tmp[i];
        }
        store_group(w, g, 0, (int)J->M, acc, J->bias, J->Y);
    }
}

static int matmul_exact_few(const onnxq_weight *w, const onnxq_kernel_table *T, const float *X, int64_t M,
                            const float *bias, float *Y, const onnxq_runner *run) {
    const int64_t K = w->L.K;
    size_t floats = 0;
    for (int p = 0; p < w->nparts; ++p) floats += (size_t)(M * w->part[p].nb * w->part[p].bs * 33 / 32);
    float *mem = malloc(floats * sizeof(float));
    if (!mem) return ONNXQ_KERNEL_NOMEM;
    fdot_job J = {w, T, {NULL, NULL}, {NULL, NULL}, M, bias, Y, 0};
    float *at = mem;
    for (int p = 0; p < w->nparts; ++p) {
        const onnxq_wpart *pt = &w->part[p];
        const int64_t n = pt->nb * pt->bs, valid = K - pt->k0 < n ? K - pt->k0 : n;
        float *xp = at, *xs = at + M * n;
        at = xs + M * (n / 32);
        for (int64_t m = 0; m < M; ++m) {
            float *row = xp + m * n;
            memcpy(row, X + m * K + pt->k0, (size_t)valid * sizeof(float));
            memset(row + valid, 0, (size_t)(n - valid) * sizeof(float));
            for (int64_t c = 0; c < n / 32; ++c) {
                float sum = 0.0f;
                for (int i = 0; i < 32; ++i) sum += row[32 * c + i];
                xs[m * (n / 32) + c] = sum;
            }
        }
        J.x[p] = xp;
        J.xsum[p] = xs;
    }
    J.per_task = units_per_task(w->n_groups, run, 4);
    const int rc = run_tasks(run, fdot_task, (size_t)((w->n_groups + J.per_task - 1) / J.per_task), &J);
    free(mem);
    return rc;
}

/* ---------------- many rows: float GEMM ---------------- */

/* Up to 32 groups (256 columns) per task: their panels (256 KiB) stay in L2 while each
 * packed 6-row slice of X, in L1, meets all of them. */
#define ONNXQ_GEMM_GROUPS 32
/* Packed X rows: 6 rows of up to 256 floats, a stride that is not a multiple of 4 KiB so
 * the rows do not share L1 sets (X's own row stride usually is one). */
#define ONNXQ_XPACK_LD (ONNXQ_KC + 16)

typedef struct {
    const onnxq_weight *w;
    const onnxq_kernel_table *T;
    const float *X;
    int64_t M;
    const float *bias;
    float *Y;
    int64_t per_task;
    atomic_int *failed; /* set by a task that could not allocate */
} gemm_job;

/* Blocks per panel of a part, and the elements of blocks [b, b+nblk) that lie inside K. */
static inline int64_t panel_blocks(const onnxq_wpart *pt) { return ONNXQ_KC / pt->bs; }
static inline int64_t valid_elems(const onnxq_weight *w, const onnxq_wpart *pt, int64_t b, int64_t nblk) {
    const int64_t k = pt->k0 + b * pt->bs, left = w->L.K - k;
    return left < nblk * pt->bs ? left : nblk * pt->bs;
}

static const float g_zeros[ONNXQ_KC * 8];

static void gemm_task(void *user, size_t t) {
    const gemm_job *J = user;
    const onnxq_weight *w = J->w;
    const int64_t K = w->L.K, M = J->M, N = w->N;
    const int64_t g0 = (int64_t)t * J->per_task;
    const int64_t g1 = g0 + J->per_task < w->n_groups ? g0 + J->per_task : w->n_groups;
    const int64_t ng = g1 - g0;
    float *panels = aligned_alloc(64, (size_t)(ng * ONNXQ_KC * 8 + ONNXQ_MR * ONNXQ_XPACK_LD) * sizeof(float));
    if (!panels) {
        atomic_store_explicit(J->failed, 1, memory_order_relaxed);
        return;
    }
    float *xpack = panels + ng * ONNXQ_KC * 8;
    float tile[ONNXQ_MR * ONNXQ_NR] __attribute__((aligned(64)));
    int first = 1;
    for (int p = 0; p < w->nparts; ++p) {
        const onnxq_wpart *pt = &w->part[p];
        const int slot = onnxq_type_slot(pt->type);
        const int64_t step = panel_blocks(pt);
        for (int64_t b = 0; b < pt->nb; b += step, first = 0) {
            const int64_t nblk = pt->nb - b < step ? pt->nb - b : step;
            const int64_t kc = valid_elems(w, pt, b, nblk);
            if (kc <= 0) break;
            const int64_t kx = pt->k0 + b * pt->bs;
            for (int64_t g = g0; g < g1; ++g)
                J->T->panel[slot](group_data(pt, g) + b * pt->gbytes, nblk, panels + (g - g0) * ONNXQ_KC * 8);
            for (int64_t m0 = 0; m0 < M; m0 += ONNXQ_MR) {
                const int mr = (int)(M - m0 < ONNXQ_MR ? M - m0 : ONNXQ_MR);
                const float *xrows[ONNXQ_MR];
                for (int i = 0; i < ONNXQ_MR; ++i) {
                    if (i < mr) {
                        memcpy(xpack + i * ONNXQ_XPACK_LD, J->X + (m0 + i) * K + kx, (size_t)kc * sizeof(float));
                        xrows[i] = xpack + i * ONNXQ_XPACK_LD;
                    } else {
                        xrows[i] = g_zeros;
                    }
                }
                /* while the tiles run, bring the next 6 rows' slice of X closer: one row per tile */
                const int next_rows = (int)(M - m0 - mr < ONNXQ_MR ? M - m0 - mr : ONNXQ_MR);
                int pf_row = 0;
                for (int64_t g = g0; g < g1; g += 2) {
                    if (pf_row < next_rows) {
                        const char *r = (const char *)(J->X + (m0 + mr + pf_row++) * K + kx);
                        for (int64_t o = 0; o < kc * (int64_t)sizeof(float); o += 64) __builtin_prefetch(r + o, 0, 3);
                    }
                    const float *pa = panels + (g - g0) * ONNXQ_KC * 8;
                    const float *pb = g + 1 < g1 ? pa + ONNXQ_KC * 8 : g_zeros;
                    const int64_t n0 = g * ONNXQ_GR, width = g + 1 < g1 ? ONNXQ_NR : ONNXQ_GR;
                    const int cols = (int)(N - n0 < width ? N - n0 : width);
                    const float *bias = J->bias && first ? J->bias + n0 : NULL;
                    float *y = J->Y + m0 * N + n0;
                    if (mr == ONNXQ_MR && cols == ONNXQ_NR) { /* a full tile: straight into Y */
                        J->T->ukernel(kc, xrows, pa, pb, y, N, !first, bias);
                        continue;
                    }
                    J->T->ukernel(kc, xrows, pa, pb, tile, ONNXQ_NR, 0, NULL);
                    for (int i = 0; i < mr; ++i)
                        for (int j = 0; j < cols; ++j)
                            y[i * N + j] = first ? tile[i * ONNXQ_NR + j] + (bias ? bias[j] : 0.0f) : y[i * N + j] + tile[i * ONNXQ_NR + j];
                }
            }
        }
    }
    free(panels);
}

/* ---------------- entry points ---------------- */

int onnxq_matmul(const onnxq_weight *w, const float *X, int64_t M, const float *bias, float *Y, int mode,
                 const onnxq_runner *run) {
    if (M <= 0 || w->N <= 0) return ONNXQ_KERNEL_OK;
    const onnxq_kernel_table *T = onnxq_kernels_active();
    if (mode == ONNXQ_MODE_FAST) return matmul_fast(w, T, X, M, bias, Y, run);
    if (M <= ONNXQ_EXACT_GEMV_MAX_M) return matmul_exact_few(w, T, X, M, bias, Y, run);
    atomic_int failed = 0;
    gemm_job J = {w, T, X, M, bias, Y, 0, &failed};
    /* Two tasks per thread at least (fewer and wider is better for reuse, but a busy core
     * must not hold the last big task); even group counts keep the 16-wide tile full. */
    const int64_t threads = run && run->num_threads > 1 ? run->num_threads : 1;
    int64_t per = (w->n_groups + 2 * threads - 1) / (2 * threads);
    if (per > ONNXQ_GEMM_GROUPS) per = ONNXQ_GEMM_GROUPS;
    if (per < 2) per = 2;
    per += per & 1;
    J.per_task = per;
    const int rc = run_tasks(run, gemm_task, (size_t)((w->n_groups + per - 1) / per), &J);
    return rc ? rc : atomic_load(&failed) ? ONNXQ_KERNEL_NOMEM : ONNXQ_KERNEL_OK;
}

typedef struct {
    const onnxq_weight *w;
    const onnxq_kernel_table *T;
    const int64_t *idx;
    int64_t M;
    float *Y;
    int64_t per_task;
} gather_job;

static void gather_task(void *user, size_t t) {
    const gather_job *J = user;
    const onnxq_weight *w = J->w;
    const int64_t K = w->L.K;
    const int64_t i0 = (int64_t)t * J->per_task;
    const int64_t i1 = i0 + J->per_task < J->M ? i0 + J->per_task : J->M;
    uint8_t block[sizeof(block_q6_K) > sizeof(block_q5_K) ? sizeof(block_q6_K) : sizeof(block_q5_K)];
    float scratch[QK_K];
    for (int64_t i = i0; i < i1; ++i) {
        const int64_t n = J->idx[i], g = n / ONNXQ_GR;
        const int r = (int)(n % ONNXQ_GR);
        float *y = J->Y + i * K;
        for (int p = 0; p < w->nparts; ++p) {
            const onnxq_wpart *pt = &w->part[p];
            const uint8_t *gd = group_data(pt, g);
            const int slot = onnxq_type_slot(pt->type);
            const onnxq_dequant_fn dq = J->T->dequant[slot] ? J->T->dequant[slot] : onnxq_kernels_scalar.dequant[slot];
            for (int64_t b = 0; b < pt->nb; ++b) {
                const int64_t k = pt->k0 + b * pt->bs;
                if (k >= K) break;
                onnxq_unpack_group_block(pt->type, gd + b * pt->gbytes, r, block);
                if (K - k >= pt->bs) {
                    dq(block, y + k);
                } else { /* padded last block: only K - k elements exist in Y */
                    dq(block, scratch);
                    memcpy(y + k, scratch, (size_t)(K - k) * sizeof(float));
                }
            }
        }
    }
}

int onnxq_gather(const onnxq_weight *w, const int64_t *idx, int64_t M, float *Y, const onnxq_runner *run) {
    if (M <= 0) return ONNXQ_KERNEL_OK;
    gather_job J = {w, onnxq_kernels_active(), idx, M, Y, 0};
    J.per_task = units_per_task(M, run, (1 << 16) / (w->L.K + 1) + 1);
    return run_tasks(run, gather_task, (size_t)((M + J.per_task - 1) / J.per_task), &J);
}
