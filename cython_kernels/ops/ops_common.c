/*
 * Glue shared by GgmlMatMul and GgmlGather: messages, tensor inspection, kernel
 * creation (attributes, node name, constant-weight preparation) and the runner.
 */
#include "ops_common.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#if defined(__linux__)
#include <sched.h>
#endif

/* ------------------------------------------------------------------ messages */

const char *onnxq_op_name(onnxq_op_kind kind) { return kind == ONNXQ_OP_GATHER ? "GgmlGather" : "GgmlMatMul"; }

static int node_prefix(const onnxq_kernel *k, char *buf, size_t cap) {
    if (k->node[0])
        return snprintf(buf, cap, "%s '%s': ", onnxq_op_name(k->kind), k->node);
    return snprintf(buf, cap, "%s (unnamed node): ", onnxq_op_name(k->kind));
}

OrtStatus *onnxq_error(const onnxq_kernel *k, int code, const char *fmt, ...) {
    char msg[1024];
    int n = node_prefix(k, msg, sizeof msg);
    if (n < 0 || (size_t)n >= sizeof msg) n = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg + n, sizeof msg - (size_t)n, fmt, ap);
    va_end(ap);
    return ORT_CALL(k->api, CreateStatus)(code, msg);
}

OrtStatus *onnxq_wrap(const onnxq_kernel *k, OrtStatus *inner, const char *what) {
    const char *m = ORT_CALL(k->api, GetErrorMessage)(inner);
    int code = ORT_CALL(k->api, GetErrorCode)(inner);
    OrtStatus *st = onnxq_error(k, code == ORT_OK ? ORT_FAIL : code, "%s: %.600s", what, m ? m : "(no message)");
    ORT_CALL(k->api, ReleaseStatus)(inner);
    return st;
}

const char *onnxq_layout_name(const onnxq_row_layout *L, char *buf, size_t cap) {
    const onnxq_type_traits *mt = onnxq_type_traits_of(L->main_type);
    const onnxq_type_traits *tt = onnxq_type_traits_of(L->tail_type);
    if (tt)
        snprintf(buf, cap, "%s (tail %s)", mt ? mt->name : "?", tt->name);
    else
        snprintf(buf, cap, "%s", mt ? mt->name : "?");
    return buf;
}

const char *onnxq_elem_type_name(int t) {
    switch (t) {
    case ORT_TENSOR_FLOAT: return "float32";
    case ORT_TENSOR_UINT8: return "uint8";
    case ORT_TENSOR_INT8: return "int8";
    case ORT_TENSOR_UINT16: return "uint16";
    case ORT_TENSOR_INT16: return "int16";
    case ORT_TENSOR_INT32: return "int32";
    case ORT_TENSOR_INT64: return "int64";
    case ORT_TENSOR_STRING: return "string";
    case ORT_TENSOR_BOOL: return "bool";
    case ORT_TENSOR_FLOAT16: return "float16";
    case ORT_TENSOR_DOUBLE: return "float64";
    case ORT_TENSOR_UINT32: return "uint32";
    case ORT_TENSOR_UINT64: return "uint64";
    case ORT_TENSOR_BFLOAT16: return "bfloat16";
    default: return "an unsupported element type";
    }
}

const char *onnxq_shape_str(const onnxq_tensor *t, char *buf, size_t cap) {
    size_t n = 0;
    buf[0] = 0;
    n += (size_t)snprintf(buf, cap, "[");
    for (size_t i = 0; i < t->rank && n < cap; ++i)
        n += (size_t)snprintf(buf + n, cap - n, i ? ", %lld" : "%lld", (long long)t->dims[i]);
    if (n < cap) snprintf(buf + n, cap - n, "]");
    return buf;
}

int onnxq_mul_ok(int64_t a, int64_t b, int64_t *out) {
    if (a < 0 || b < 0) return 0;
    if (a != 0 && b > INT64_MAX / a) return 0;
    *out = a * b;
    return 1;
}

/* ------------------------------------------------------------------ tensors */

OrtStatus *onnxq_inspect(const onnxq_kernel *k, const OrtValue *v, const char *label, onnxq_tensor *t) {
    const OrtApi *api = k->api;
    char what[96];
    memset(t, 0, sizeof *t);
    t->present = 1;
    OrtTensorTypeAndShapeInfo *info = NULL;
    OrtStatus *st = ORT_CALL(api, GetTensorTypeAndShape)(v, &info);
    if (st) {
        snprintf(what, sizeof what, "reading the type and shape of %s", label);
        return onnxq_wrap(k, st, what);
    }
    size_t rank = 0, count = 0;
    st = ORT_CALL(api, GetTensorElementType)(info, &t->elem_type);
    if (!st) st = ORT_CALL(api, GetDimensionsCount)(info, &rank);
    if (!st && rank > ONNXQ_MAX_RANK) {
        ORT_CALL(api, ReleaseTensorTypeAndShapeInfo)(info);
        return onnxq_error(k, ORT_INVALID_ARGUMENT, "%s has rank %zu, at most %d is supported", label, rank,
                           ONNXQ_MAX_RANK);
    }
    if (!st) st = ORT_CALL(api, GetDimensions)(info, t->dims, rank);
    if (!st) st = ORT_CALL(api, GetTensorShapeElementCount)(info, &count);
    ORT_CALL(api, ReleaseTensorTypeAndShapeInfo)(info);
    if (st) {
        snprintf(what, sizeof what, "reading the type and shape of %s", label);
        return onnxq_wrap(k, st, what);
    }
    t->rank = rank;
    /* Never trust the element count alone: recompute it from the dims. */
    int64_t prod = 1;
    for (size_t i = 0; i < rank; ++i) {
        if (t->dims[i] < 0)
            return onnxq_error(k, ORT_INVALID_ARGUMENT, "%s has a negative dimension %lld", label,
                               (long long)t->dims[i]);
        if (!onnxq_mul_ok(prod, t->dims[i], &prod))
            return onnxq_error(k, ORT_INVALID_ARGUMENT, "%s has too many elements (the shape overflows)", label);
    }
    if (count > (size_t)INT64_MAX || (int64_t)count != prod)
        return onnxq_error(k, ORT_INVALID_ARGUMENT, "%s reports %zu elements but its shape has %lld", label, count,
                           (long long)prod);
    t->count = prod;
    void *data = NULL;
    /* Inputs are const; GetTensorMutableData is the API-17 way to read them and nothing is written. */
    st = ORT_CALL(api, GetTensorMutableData)((OrtValue *)(uintptr_t)v, &data);
    if (st) {
        snprintf(what, sizeof what, "reading the data of %s", label);
        return onnxq_wrap(k, st, what);
    }
    if (data == NULL && prod > 0)
        return onnxq_error(k, ORT_FAIL, "%s has %lld elements but no data", label, (long long)prod);
    t->data = data;
    return NULL;
}

OrtStatus *onnxq_get_input(const onnxq_kernel *k, const OrtKernelContext *ctx, size_t index, const char *label,
                           onnxq_tensor *t) {
    const OrtValue *v = NULL;
    memset(t, 0, sizeof *t);
    OrtStatus *st = ORT_CALL(k->api, KernelContext_GetInput)(ctx, index, &v);
    if (st) {
        char what[64];
        snprintf(what, sizeof what, "reading input %s", label);
        return onnxq_wrap(k, st, what);
    }
    if (v == NULL) return NULL; /* omitted optional input */
    return onnxq_inspect(k, v, label, t);
}

OrtStatus *onnxq_check_blocks(const onnxq_kernel *k, const onnxq_tensor *t, const char *label) {
    if (t->elem_type != ORT_TENSOR_UINT8)
        return onnxq_error(k, ORT_INVALID_ARGUMENT, "%s must be uint8 ggml blocks, got %s", label,
                           onnxq_elem_type_name(t->elem_type));
    if (t->count != k->w_bytes) {
        char lay[64];
        return onnxq_error(k, ORT_INVALID_ARGUMENT, "%s has %lld bytes, %s with K=%lld N=%lld needs %lld", label,
                           (long long)t->count, onnxq_layout_name(&k->L, lay, sizeof lay), (long long)k->L.K,
                           (long long)k->N, (long long)k->w_bytes);
    }
    return NULL;
}

/* ------------------------------------------------------------------ runner */

static int runner_parallel_for(void *c, onnxq_task_fn fn, size_t total, void *user) {
    onnxq_pf_state *st = (onnxq_pf_state *)c;
    if (total == 0) return 0;
    OrtStatus *s = ORT_CALL(st->api, KernelContext_ParallelFor)(st->ctx, fn, total, 0, user);
    if (s == NULL) return 0;
    if (st->failure == NULL)
        st->failure = s;
    else
        ORT_CALL(st->api, ReleaseStatus)(s);
    return 1;
}

void onnxq_runner_init(onnxq_runner *r, onnxq_pf_state *st, const onnxq_kernel *k, const OrtKernelContext *ctx) {
    st->api = k->api;
    st->ctx = ctx;
    st->failure = NULL;
    r->parallel_for = runner_parallel_for;
    r->ctx = st;
    r->num_threads = k->num_threads;
}

OrtStatus *onnxq_kernel_status(const onnxq_kernel *k, int rc, onnxq_pf_state *st) {
    if (st->failure) /* the kernel may not have noticed; the result is incomplete either way */
        return onnxq_wrap(k, st->failure, "parallel execution failed");
    switch (rc) {
    case ONNXQ_KERNEL_OK: return NULL;
    case ONNXQ_KERNEL_NOMEM: return onnxq_error(k, ORT_FAIL, "out of memory in the kernel");
    case ONNXQ_KERNEL_RUNTIME: return onnxq_error(k, ORT_FAIL, "parallel execution failed");
    default: return onnxq_error(k, ORT_FAIL, "kernel failed with code %d", rc);
    }
}

/* ------------------------------------------------------------------ kernel creation */

/* Hint for the kernels' work split: the CPUs this process may run on. The intra-op
 * pool size is not visible through the API; ParallelFor still only uses that pool. */
static int available_cpus(void) {
    long n = 0;
#if defined(__linux__)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) n = CPU_COUNT(&set);
#endif
    if (n <= 0) n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n <= 0) n = 1;
    if (n > 1024) n = 1024;
    return (int)n;
}

static void read_node_name(onnxq_kernel *k, const OrtKernelInfo *info) {
    const OrtApi *api = k->api;
    size_t size = 0;
    OrtStatus *st = ORT_CALL(api, KernelInfo_GetNodeName)(info, NULL, &size);
    if (st || size == 0) {
        /* A name is only used in messages; do not fail the session over it. */
        if (st) ORT_CALL(api, ReleaseStatus)(st);
        return;
    }
    char *buf = (char *)malloc(size);
    if (!buf) return;
    st = ORT_CALL(api, KernelInfo_GetNodeName)(info, buf, &size);
    if (st) {
        ORT_CALL(api, ReleaseStatus)(st);
    } else {
        buf[size - 1] = 0;
        size_t len = strlen(buf);
        if (len >= sizeof k->node) {
            memcpy(k->node, buf, sizeof k->node - 4);
            memcpy(k->node + sizeof k->node - 4, "...", 4);
        } else {
            memcpy(k->node, buf, len + 1);
        }
    }
    free(buf);
}

/* Strings longer than this are rejected rather than read (no attribute of ours is long). */
#define ATTR_STR_CAP 64

static const char *WEIGHT_TYPES = "Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q4_K Q5_K Q6_K";
static const char *TAIL_TYPES = "Q4_0 Q4_1 Q5_0 Q5_1 Q8_0";

/* found: 1 when the attribute exists with the right kind. A missing required attribute,
 * or one of another kind, is an error naming it. */
static OrtStatus *get_int_attr(const onnxq_kernel *k, const OrtKernelInfo *info, const char *name, int64_t *out) {
    const OrtApi *api = k->api;
    OrtStatus *st = ORT_CALL(api, KernelInfoGetAttribute_int64)(info, name, out);
    if (!st) return NULL;
    ORT_CALL(api, ReleaseStatus)(st);
    size_t size = 0;
    st = ORT_CALL(api, KernelInfoGetAttribute_string)(info, name, NULL, &size);
    if (!st) return onnxq_error(k, ORT_INVALID_ARGUMENT, "attribute '%s' must be an int, not a string", name);
    ORT_CALL(api, ReleaseStatus)(st);
    return onnxq_error(k, ORT_INVALID_ARGUMENT, "missing required int attribute '%s' (or it is not an int)", name);
}

/* *found = 0 and no error when the attribute is absent; the caller decides if that is fine. */
static OrtStatus *get_str_attr(const onnxq_kernel *k, const OrtKernelInfo *info, const char *name, char *buf,
                               int *found) {
    const OrtApi *api = k->api;
    size_t size = 0;
    *found = 0;
    buf[0] = 0;
    OrtStatus *st = ORT_CALL(api, KernelInfoGetAttribute_string)(info, name, NULL, &size);
    if (st) {
        ORT_CALL(api, ReleaseStatus)(st);
        int64_t ignored = 0;
        st = ORT_CALL(api, KernelInfoGetAttribute_int64)(info, name, &ignored);
        if (!st) return onnxq_error(k, ORT_INVALID_ARGUMENT, "attribute '%s' must be a string, not an int", name);
        ORT_CALL(api, ReleaseStatus)(st);
        return NULL;
    }
    if (size == 0 || size > ATTR_STR_CAP)
        return onnxq_error(k, ORT_INVALID_ARGUMENT, "attribute '%s' is %zu bytes long; no valid value is", name,
                           size);
    st = ORT_CALL(api, KernelInfoGetAttribute_string)(info, name, buf, &size);
    if (st) return onnxq_wrap(k, st, "reading a string attribute");
    buf[ATTR_STR_CAP - 1] = 0;
    if (size >= 1 && size <= ATTR_STR_CAP) buf[size - 1] = 0;
    *found = 1;
    return NULL;
}

static OrtStatus *read_attributes(onnxq_kernel *k, const OrtKernelInfo *info) {
    char qt[ATTR_STR_CAP], tail[ATTR_STR_CAP], mode[ATTR_STR_CAP];
    int found = 0;
    OrtStatus *st = get_str_attr(k, info, "quant_type", qt, &found);
    if (st) return st;
    if (!found) return onnxq_error(k, ORT_INVALID_ARGUMENT, "missing required string attribute 'quant_type'");
    int main_type = onnxq_type_from_name(qt);
    const onnxq_type_traits *mt = onnxq_type_traits_of(main_type);
    if (mt == NULL)
        return onnxq_error(k, ORT_INVALID_ARGUMENT, "unknown quant_type '%s' (expected one of %s)", qt, WEIGHT_TYPES);
    if (!mt->is_weight_type)
        return onnxq_error(k, ORT_INVALID_ARGUMENT,
                           "quant_type '%s' is an activation type, not a weight type (expected one of %s)", qt,
                           WEIGHT_TYPES);

    int64_t K = 0, N = 0;
    if ((st = get_int_attr(k, info, "K", &K))) return st;
    if ((st = get_int_attr(k, info, "N", &N))) return st;
    if (K < 1) return onnxq_error(k, ORT_INVALID_ARGUMENT, "attribute K=%lld must be >= 1", (long long)K);
    if (N < 1) return onnxq_error(k, ORT_INVALID_ARGUMENT, "attribute N=%lld must be >= 1", (long long)N);
    if (K > ONNXQ_MAX_K)
        return onnxq_error(k, ORT_INVALID_ARGUMENT, "attribute K=%lld exceeds the limit %lld", (long long)K,
                           (long long)ONNXQ_MAX_K);
    if (N > ONNXQ_MAX_N)
        return onnxq_error(k, ORT_INVALID_ARGUMENT, "attribute N=%lld exceeds the limit %lld", (long long)N,
                           (long long)ONNXQ_MAX_N);

    int tail_type = ONNXQ_TYPE_NONE;
    if ((st = get_str_attr(k, info, "tail_type", tail, &found))) return st;
    if (found && tail[0]) {
        tail_type = onnxq_type_from_name(tail);
        const onnxq_type_traits *tt = onnxq_type_traits_of(tail_type);
        if (tt == NULL || !tt->is_weight_type || tt->block_size != 32)
            return onnxq_error(k, ORT_INVALID_ARGUMENT, "tail_type '%s' is not a 32-element weight type (%s)", tail,
                               TAIL_TYPES);
        if (mt->block_size == 32)
            return onnxq_error(k, ORT_INVALID_ARGUMENT,
                               "tail_type '%s' is only valid with a K-quant quant_type, not %s", tail, mt->name);
    }

    int rc = onnxq_row_layout_init(&k->L, main_type, tail_type, K);
    if (rc != ONNXQ_LAYOUT_OK) /* every cause was checked above; keep the guard anyway */
        return onnxq_error(k, ORT_INVALID_ARGUMENT, "invalid row layout (code %d) for quant_type %s K=%lld", rc,
                           mt->name, (long long)K);
    k->N = N;
    if (!onnxq_mul_ok(N, k->L.row_bytes, &k->w_bytes))
        return onnxq_error(k, ORT_INVALID_ARGUMENT, "N=%lld rows of %lld bytes overflow a 64-bit size", (long long)N,
                           (long long)k->L.row_bytes);

    k->mode = ONNXQ_MODE_FAST;
    if (k->kind == ONNXQ_OP_MATMUL) {
        if ((st = get_str_attr(k, info, "mode", mode, &found))) return st;
        if (found) {
            if (strcmp(mode, "exact") == 0)
                k->mode = ONNXQ_MODE_EXACT;
            else if (strcmp(mode, "fast") != 0)
                return onnxq_error(k, ORT_INVALID_ARGUMENT, "mode '%s' must be 'exact' or 'fast'", mode);
        }
    }
    return NULL;
}

static OrtStatus *check_io_counts(const onnxq_kernel *k, const OrtKernelInfo *info) {
    const OrtApi *api = k->api;
    size_t n_in = 0, n_out = 0;
    OrtStatus *st = ORT_CALL(api, KernelInfo_GetInputCount)(info, &n_in);
    if (st) return onnxq_wrap(k, st, "reading the input count");
    st = ORT_CALL(api, KernelInfo_GetOutputCount)(info, &n_out);
    if (st) return onnxq_wrap(k, st, "reading the output count");
    const size_t lo = 2, hi = k->kind == ONNXQ_OP_MATMUL ? 3 : 2;
    if (n_in < lo || n_in > hi) {
        if (lo == hi) return onnxq_error(k, ORT_INVALID_ARGUMENT, "has %zu inputs, expected %zu", n_in, lo);
        return onnxq_error(k, ORT_INVALID_ARGUMENT, "has %zu inputs, expected %zu or %zu", n_in, lo, hi);
    }
    if (n_out != 1) return onnxq_error(k, ORT_INVALID_ARGUMENT, "has %zu outputs, expected 1", n_out);
    return NULL;
}

/* Constant inputs are checked now so that errors surface at session creation, and W
 * is prepared once for every run. */
static OrtStatus *prepare_constants(onnxq_kernel *k, const OrtKernelInfo *info) {
    const OrtApi *api = k->api;
    const char *wlabel = k->kind == ONNXQ_OP_MATMUL ? "W" : "table";
    int is_const = 0;
    const OrtValue *v = NULL;
    OrtStatus *st = ORT_CALL(api, KernelInfoGetConstantInput_tensor)(info, k->w_index, &is_const, &v);
    if (st) return onnxq_wrap(k, st, "reading the constant weight");
    if (is_const && v) {
        onnxq_tensor t;
        if ((st = onnxq_inspect(k, v, wlabel, &t))) return st;
        if ((st = onnxq_check_blocks(k, &t, wlabel))) return st;
        k->packed = onnxq_weight_create(&k->L, k->N, (const uint8_t *)t.data, 1);
        if (!k->packed)
            return onnxq_error(k, ORT_FAIL, "out of memory preparing %s (%lld bytes)", wlabel, (long long)k->w_bytes);
    }
    if (k->kind == ONNXQ_OP_MATMUL) {
        size_t n_in = 0;
        st = ORT_CALL(api, KernelInfo_GetInputCount)(info, &n_in);
        if (st) return onnxq_wrap(k, st, "reading the input count");
        if (n_in < 3) return NULL;
        is_const = 0;
        v = NULL;
        st = ORT_CALL(api, KernelInfoGetConstantInput_tensor)(info, 2, &is_const, &v);
        if (st) return onnxq_wrap(k, st, "reading the constant bias");
        if (is_const && v) {
            onnxq_tensor b;
            if ((st = onnxq_inspect(k, v, "bias", &b))) return st;
            if (b.elem_type != ORT_TENSOR_FLOAT)
                return onnxq_error(k, ORT_INVALID_ARGUMENT, "bias must be float32, got %s",
                                   onnxq_elem_type_name(b.elem_type));
            if (b.rank != 1 || b.dims[0] != k->N) {
                char sh[128];
                return onnxq_error(k, ORT_INVALID_ARGUMENT, "bias has shape %s, expected [%lld] (N)",
                                   onnxq_shape_str(&b, sh, sizeof sh), (long long)k->N);
            }
        }
    }
    return NULL;
}

void onnxq_destroy_kernel(void *kernel) {
    onnxq_kernel *k = (onnxq_kernel *)kernel;
    if (!k) return;
    if (k->packed) onnxq_weight_destroy(k->packed);
    free(k);
}

OrtStatus *onnxq_create_kernel(const OrtCustomOp *op, const OrtApi *api, const OrtKernelInfo *info, void **out) {
    const onnxq_op *o = (const onnxq_op *)op;
    if (out) *out = NULL;
    onnxq_kernel *k = (onnxq_kernel *)calloc(1, sizeof *k);
    if (!k) return ORT_CALL(api, CreateStatus)(ORT_FAIL, "onnxq: out of memory creating a kernel");
    k->api = api;
    k->kind = o->kind;
    k->w_index = o->kind == ONNXQ_OP_MATMUL ? 1 : 0;
    k->num_threads = available_cpus();
    read_node_name(k, info);
    OrtStatus *st = NULL;
    if (!out) st = onnxq_error(k, ORT_FAIL, "no place to return the kernel");
    if (!st) st = check_io_counts(k, info);
    if (!st) st = read_attributes(k, info);
    if (!st) st = prepare_constants(k, info);
    if (st) {
        onnxq_destroy_kernel(k);
        return st;
    }
    *out = k;
    return NULL;
}
