/*
 * RegisterCustomOps: the library's entry point, and the two op descriptions.
 *
 * The op structs are static and constant, so they outlive every session and can be
 * added to any number of domains: registering the library twice (on two session
 * options, or twice on one) is fine.
 */
#include <stdio.h>

#include "ops_common.h"

static const char *op_get_name(const OrtCustomOp *op) { return ((const onnxq_op *)op)->name; }
static const char *op_get_ep(const OrtCustomOp *op) { return NULL; /* CPU */ }

static int matmul_input_type(const OrtCustomOp *op, size_t i) {
    return i == 1 ? ORT_TENSOR_UINT8 : ORT_TENSOR_FLOAT; /* X, W, bias */
}
static size_t matmul_input_count(const OrtCustomOp *op) { return 3; }
static int matmul_input_characteristic(const OrtCustomOp *op, size_t i) {
    return i == 2 ? ORT_INPUT_OPTIONAL : ORT_INPUT_REQUIRED;
}

/* indices may be int64 or int32: UNDEFINED lets ORT accept any type and compute
 * reports anything else by name. */
static int gather_input_type(const OrtCustomOp *op, size_t i) {
    return i == 0 ? ORT_TENSOR_UINT8 : ORT_TENSOR_UNDEFINED;
}
static size_t gather_input_count(const OrtCustomOp *op) { return 2; }
static int gather_input_characteristic(const OrtCustomOp *op, size_t i) { return ORT_INPUT_REQUIRED; }

static int output_type(const OrtCustomOp *op, size_t i) { return ORT_TENSOR_FLOAT; }
static size_t output_count(const OrtCustomOp *op) { return 1; }
static int output_characteristic(const OrtCustomOp *op, size_t i) { return ORT_INPUT_REQUIRED; }
static int input_memory_type(const OrtCustomOp *op, size_t i) { return ORT_MEM_DEFAULT; }
/* No input is variadic; these are only consulted for variadic ones. */
static int variadic_min_arity(const OrtCustomOp *op) { return 1; }
static int variadic_homogeneity(const OrtCustomOp *op) { return 1; }

#define ONNXQ_OP_COMMON_FIELDS                                                                              \
    .version = ONNXQ_ORT_API_VERSION, .CreateKernel = NULL, .GetName = op_get_name,                         \
    .GetExecutionProviderType = op_get_ep, .GetOutputType = output_type, .GetOutputTypeCount = output_count, \
    .KernelCompute = NULL, .KernelDestroy = onnxq_destroy_kernel, .GetOutputCharacteristic = output_characteristic, \
    .GetInputMemoryType = input_memory_type, .GetVariadicInputMinArity = variadic_min_arity,                \
    .GetVariadicInputHomogeneity = variadic_homogeneity, .GetVariadicOutputMinArity = variadic_min_arity,   \
    .GetVariadicOutputHomogeneity = variadic_homogeneity, .CreateKernelV2 = onnxq_create_kernel,            \
    .InferOutputShapeFn = NULL, .GetStartVersion = NULL, .GetEndVersion = NULL, .GetMayInplace = NULL,      \
    .ReleaseMayInplace = NULL, .GetAliasMap = NULL, .ReleaseAliasMap = NULL

static const onnxq_op OP_MATMUL = {
    .base = {ONNXQ_OP_COMMON_FIELDS, .GetInputType = matmul_input_type, .GetInputTypeCount = matmul_input_count,
             .GetInputCharacteristic = matmul_input_characteristic, .KernelComputeV2 = onnxq_matmul_compute},
    .kind = ONNXQ_OP_MATMUL,
    .name = "GgmlMatMul",
};

static const onnxq_op OP_GATHER = {
    .base = {ONNXQ_OP_COMMON_FIELDS, .GetInputType = gather_input_type, .GetInputTypeCount = gather_input_count,
             .GetInputCharacteristic = gather_input_characteristic, .KernelComputeV2 = onnxq_gather_compute},
    .kind = ONNXQ_OP_GATHER,
    .name = "GgmlGather",
};

ONNXQ_EXPORT OrtStatus *RegisterCustomOps(OrtSessionOptions *options, const OrtApiBase *base);

ONNXQ_EXPORT OrtStatus *RegisterCustomOps(OrtSessionOptions *options, const OrtApiBase *base) {
    if (base == NULL || base->GetApi == NULL) return NULL; /* nothing to report an error through */
    const OrtApi *api = base->GetApi(ONNXQ_ORT_API_VERSION);
    if (api == NULL) {
        const OrtApi *api1 = base->GetApi(1);
        const char *ver = base->GetVersionString ? base->GetVersionString() : NULL;
        char msg[256];
        snprintf(msg, sizeof msg,
                 "onnxq custom ops need onnxruntime >= " ONNXQ_ORT_MIN_RELEASE " (this is %.64s)",
                 ver ? ver : "an unknown version");
        return api1 ? ORT_CALL(api1, CreateStatus)(ORT_FAIL, msg) : NULL;
    }
    OrtCustomOpDomain *domain = NULL;
    OrtStatus *st = ORT_CALL(api, CreateCustomOpDomain)("onnxq", &domain);
    if (st) return st;
    if (!(st = ORT_CALL(api, CustomOpDomain_Add)(domain, &OP_MATMUL.base)) &&
        !(st = ORT_CALL(api, CustomOpDomain_Add)(domain, &OP_GATHER.base)) &&
        !(st = ORT_CALL(api, AddCustomOpDomain)(options, domain))) {
        /* The session options keep a plain pointer to the domain and sessions made from
         * them need it for their whole life, which the library cannot observe: the domain
         * (a few hundred bytes per registration) is deliberately never released. */
        return NULL;
    }
    ORT_CALL(api, ReleaseCustomOpDomain)(domain);
    return st;
}

/* What the kernels dispatch to, for onnxq.runtime.kernel_isa() (read with ctypes). */
ONNXQ_EXPORT const char *onnxq_ops_kernel_isa(void);
ONNXQ_EXPORT const char *onnxq_ops_kernel_isa(void) { return onnxq_kernel_isa(); }

#ifdef ONNXQ_ORT_SLOT_COVERAGE
static unsigned char slot_hits[512];
void onnxq_ort_slot_hit(int slot) {
    if (slot >= 0 && slot < (int)sizeof slot_hits) __atomic_store_n(&slot_hits[slot], 1, __ATOMIC_RELAXED);
}
/* 1 if the slot was called since load (test builds only). */
ONNXQ_EXPORT int onnxq_ops_slot_hit(int slot);
ONNXQ_EXPORT int onnxq_ops_slot_hit(int slot) {
    return slot >= 0 && slot < (int)sizeof slot_hits ? __atomic_load_n(&slot_hits[slot], __ATOMIC_RELAXED) : 0;
}
#endif
