/*
 * The subset of onnxruntime's C ABI that onnxq's custom-op library uses, declared from
 * the verified facts in DESIGN's ort-abi notes (no onnxruntime header is copied or
 * needed: the PyPI wheel ships none).
 *
 * OrtApi is a table of function pointers that only ever grows; a slot index names a
 * function for good. Every slot this library calls is listed ONCE, in ONNXQ_ORT_SLOTS,
 * with its index, the API version that introduced it and its signature; ORT_CALL() is
 * the only way code reaches a slot, so an index cannot drift between two places.
 * tests/test_ops_abi.py checks the table against the notes and that every slot is
 * exercised.
 */
#ifndef ONNXQ_ORT_ABI_H
#define ONNXQ_ORT_ABI_H

#include <stddef.h>
#include <stdint.h>

/* The API version requested from GetApi and the OrtCustomOp.version we declare.
 * 17 is the oldest that has KernelContext_ParallelFor; below 16, ORT would take the V1
 * kernel path on which returned errors are silently dropped. */
#define ONNXQ_ORT_API_VERSION 17
#define ONNXQ_ORT_MIN_RELEASE "1.17"

/* ---- opaque runtime objects ---- */
typedef struct OrtApi OrtApi; /* only ever accessed as an array of slots */
typedef struct OrtStatus OrtStatus;
typedef struct OrtSessionOptions OrtSessionOptions;
typedef struct OrtCustomOpDomain OrtCustomOpDomain;
typedef struct OrtKernelInfo OrtKernelInfo;
typedef struct OrtKernelContext OrtKernelContext;
typedef struct OrtValue OrtValue;
typedef struct OrtTensorTypeAndShapeInfo OrtTensorTypeAndShapeInfo;
typedef struct OrtShapeInferContext OrtShapeInferContext;
typedef struct OrtLogger OrtLogger;
typedef struct OrtCustomOp OrtCustomOp;

/* ---- enums (passed as int: the enums are int-sized on every supported ABI) ---- */
enum {
    ORT_TENSOR_UNDEFINED = 0,
    ORT_TENSOR_FLOAT = 1,
    ORT_TENSOR_UINT8 = 2,
    ORT_TENSOR_INT8 = 3,
    ORT_TENSOR_UINT16 = 4,
    ORT_TENSOR_INT16 = 5,
    ORT_TENSOR_INT32 = 6,
    ORT_TENSOR_INT64 = 7,
    ORT_TENSOR_STRING = 8,
    ORT_TENSOR_BOOL = 9,
    ORT_TENSOR_FLOAT16 = 10,
    ORT_TENSOR_DOUBLE = 11,
    ORT_TENSOR_UINT32 = 12,
    ORT_TENSOR_UINT64 = 13,
    ORT_TENSOR_BFLOAT16 = 16,
};

enum {
    ORT_OK = 0,
    ORT_FAIL = 1,
    ORT_INVALID_ARGUMENT = 2,
    ORT_NO_SUCHFILE = 3,
    ORT_NO_MODEL = 4,
    ORT_ENGINE_ERROR = 5,
    ORT_RUNTIME_EXCEPTION = 6,
    ORT_INVALID_PROTOBUF = 7,
    ORT_MODEL_LOADED = 8,
    ORT_NOT_IMPLEMENTED = 9,
    ORT_INVALID_GRAPH = 10,
    ORT_EP_FAIL = 11,
};

enum { ORT_INPUT_REQUIRED = 0, ORT_INPUT_OPTIONAL = 1, ORT_INPUT_VARIADIC = 2 };
enum { ORT_MEM_CPU_INPUT = -2, ORT_MEM_CPU_OUTPUT = -1, ORT_MEM_DEFAULT = 0 };
enum { ORT_LOG_VERBOSE = 0, ORT_LOG_INFO = 1, ORT_LOG_WARNING = 2, ORT_LOG_ERROR = 3, ORT_LOG_FATAL = 4 };

/* ---- OrtApiBase: what RegisterCustomOps receives ---- */
typedef struct OrtApiBase {
    const OrtApi *(*GetApi)(uint32_t version); /* NULL when that version is not offered */
    const char *(*GetVersionString)(void);
} OrtApiBase;

typedef void (*ort_parallel_fn)(void *user, size_t index);

/*
 * THE slot table: X(index, name, since_api_version, return_type, (parameters)).
 * Only slots this library calls are listed; all must exist in ONNXQ_ORT_API_VERSION.
 */
#define ONNXQ_ORT_SLOTS(X)                                                                                   \
    X(0, CreateStatus, 1, OrtStatus *, (int code, const char *msg))                                          \
    X(1, GetErrorCode, 1, int, (const OrtStatus *status))                                                    \
    X(2, GetErrorMessage, 1, const char *, (const OrtStatus *status))                                        \
    X(26, CreateCustomOpDomain, 1, OrtStatus *, (const char *domain, OrtCustomOpDomain **out))               \
    X(27, CustomOpDomain_Add, 1, OrtStatus *, (OrtCustomOpDomain * domain, const OrtCustomOp *op))           \
    X(28, AddCustomOpDomain, 1, OrtStatus *, (OrtSessionOptions * options, OrtCustomOpDomain *domain))       \
    X(51, GetTensorMutableData, 1, OrtStatus *, (OrtValue * value, void **out))                              \
    X(60, GetTensorElementType, 1, OrtStatus *, (const OrtTensorTypeAndShapeInfo *info, int *out))           \
    X(61, GetDimensionsCount, 1, OrtStatus *, (const OrtTensorTypeAndShapeInfo *info, size_t *out))          \
    X(62, GetDimensions, 1, OrtStatus *, (const OrtTensorTypeAndShapeInfo *info, int64_t *dims, size_t len)) \
    X(64, GetTensorShapeElementCount, 1, OrtStatus *, (const OrtTensorTypeAndShapeInfo *info, size_t *out))  \
    X(65, GetTensorTypeAndShape, 1, OrtStatus *, (const OrtValue *value, OrtTensorTypeAndShapeInfo **out))   \
    X(86, KernelInfoGetAttribute_int64, 1, OrtStatus *, (const OrtKernelInfo *info, const char *name, int64_t *out)) \
    X(87, KernelInfoGetAttribute_string, 1, OrtStatus *,                                                     \
      (const OrtKernelInfo *info, const char *name, char *out, size_t *size))                                \
    X(88, KernelContext_GetInputCount, 1, OrtStatus *, (const OrtKernelContext *ctx, size_t *out))           \
    X(89, KernelContext_GetOutputCount, 1, OrtStatus *, (const OrtKernelContext *ctx, size_t *out))          \
    X(90, KernelContext_GetInput, 1, OrtStatus *, (const OrtKernelContext *ctx, size_t index, const OrtValue **out)) \
    X(91, KernelContext_GetOutput, 1, OrtStatus *,                                                           \
      (OrtKernelContext * ctx, size_t index, const int64_t *dims, size_t ndims, OrtValue **out))             \
    X(93, ReleaseStatus, 1, void, (OrtStatus * status))                                                      \
    X(99, ReleaseTensorTypeAndShapeInfo, 1, void, (OrtTensorTypeAndShapeInfo * info))                        \
    X(101, ReleaseCustomOpDomain, 1, void, (OrtCustomOpDomain * domain))                                     \
    X(230, KernelInfo_GetInputCount, 14, OrtStatus *, (const OrtKernelInfo *info, size_t *out))              \
    X(231, KernelInfo_GetOutputCount, 14, OrtStatus *, (const OrtKernelInfo *info, size_t *out))             \
    X(244, KernelInfo_GetNodeName, 15, OrtStatus *, (const OrtKernelInfo *info, char *out, size_t *size))    \
    X(249, KernelInfoGetConstantInput_tensor, 15, OrtStatus *,                                               \
      (const OrtKernelInfo *info, size_t index, int *is_constant, const OrtValue **out))                     \
    X(274, KernelContext_ParallelFor, 17, OrtStatus *,                                                       \
      (const OrtKernelContext *ctx, ort_parallel_fn fn, size_t total, size_t max_batches, void *user))

/* ORT_SLOT_<name>: the index; ort_fn_<name>: the function-pointer type. */
#define ONNXQ_ORT_SLOT_ENUM_(slot, name, since, ret, params) ORT_SLOT_##name = (slot),
enum { ONNXQ_ORT_SLOTS(ONNXQ_ORT_SLOT_ENUM_) ORT_SLOT_END_ };

#define ONNXQ_ORT_SLOT_TYPEDEF_(slot, name, since, ret, params) typedef ret(*ort_fn_##name) params;
ONNXQ_ORT_SLOTS(ONNXQ_ORT_SLOT_TYPEDEF_)

#define ONNXQ_ORT_SLOT_CHECK_(slot, name, since, ret, params) \
    _Static_assert((since) <= ONNXQ_ORT_API_VERSION, #name " is newer than the API version onnxq requests");
ONNXQ_ORT_SLOTS(ONNXQ_ORT_SLOT_CHECK_)

/* A slot is read as a generic function pointer and converted to its real type (a
 * conversion between function-pointer types is well defined; calling through the
 * right type is what the table guarantees). */
typedef void (*ort_any_fn)(void);

#ifdef ONNXQ_ORT_SLOT_COVERAGE
/* Test builds record which slots were reached (tests/test_ops_abi.py). */
void onnxq_ort_slot_hit(int slot);
#define ONNXQ_ORT_SLOT_HIT_(slot) onnxq_ort_slot_hit(slot),
#else
#define ONNXQ_ORT_SLOT_HIT_(slot)
#endif

#define ORT_CALL(api, name) \
    (ONNXQ_ORT_SLOT_HIT_(ORT_SLOT_##name)(ort_fn_##name)(((const ort_any_fn *)(const void *)(api))[ORT_SLOT_##name]))

/*
 * OrtCustomOp, all 26 fields of API 18+ (ORT reads only those its `version` covers:
 * with version 17, fields 0..21). Unused fields must be NULL.
 */
struct OrtCustomOp {
    uint32_t version;
    void *(*CreateKernel)(const OrtCustomOp *op, const OrtApi *api, const OrtKernelInfo *info);
    const char *(*GetName)(const OrtCustomOp *op);
    const char *(*GetExecutionProviderType)(const OrtCustomOp *op);
    int (*GetInputType)(const OrtCustomOp *op, size_t index);
    size_t (*GetInputTypeCount)(const OrtCustomOp *op);
    int (*GetOutputType)(const OrtCustomOp *op, size_t index);
    size_t (*GetOutputTypeCount)(const OrtCustomOp *op);
    void (*KernelCompute)(void *kernel, OrtKernelContext *ctx);
    void (*KernelDestroy)(void *kernel);
    int (*GetInputCharacteristic)(const OrtCustomOp *op, size_t index);
    int (*GetOutputCharacteristic)(const OrtCustomOp *op, size_t index);
    int (*GetInputMemoryType)(const OrtCustomOp *op, size_t index);
    int (*GetVariadicInputMinArity)(const OrtCustomOp *op);
    int (*GetVariadicInputHomogeneity)(const OrtCustomOp *op);
    int (*GetVariadicOutputMinArity)(const OrtCustomOp *op);
    int (*GetVariadicOutputHomogeneity)(const OrtCustomOp *op);
    OrtStatus *(*CreateKernelV2)(const OrtCustomOp *op, const OrtApi *api, const OrtKernelInfo *info,
                                 void **kernel);
    OrtStatus *(*KernelComputeV2)(void *kernel, OrtKernelContext *ctx);
    OrtStatus *(*InferOutputShapeFn)(const OrtCustomOp *op, OrtShapeInferContext *ctx);
    int (*GetStartVersion)(const OrtCustomOp *op);
    int (*GetEndVersion)(const OrtCustomOp *op);
    int (*GetMayInplace)(int **input_index, int **output_index);
    void (*ReleaseMayInplace)(int *input_index, int *output_index);
    int (*GetAliasMap)(int **input_index, int **output_index);
    void (*ReleaseAliasMap)(int *input_index, int *output_index);
};

#if UINTPTR_MAX == 0xffffffffffffffffu
_Static_assert(sizeof(struct OrtCustomOp) == 208, "OrtCustomOp must be 26 fields, 208 bytes on LP64");
_Static_assert(offsetof(struct OrtCustomOp, CreateKernelV2) == 8 + 16 * 8, "OrtCustomOp field 17");
_Static_assert(offsetof(struct OrtCustomOp, GetEndVersion) == 8 + 20 * 8, "OrtCustomOp field 21");
#endif

#endif /* ONNXQ_ORT_ABI_H */
