/*
 * Run an onnxq-quantized model from a C program, with no Python involved.
 *
 * onnxruntime's C API offers one call to load a custom-op library into session
 * options, RegisterCustomOpsLibrary_V2; onnxq's library (onnxq/libonnxq_ops.so, path
 * from `python -c "import onnxq; print(onnxq.get_library_path())"`) then provides the
 * `onnxq` domain (GgmlMatMul, GgmlGather) to every session made from those options.
 * C++, C# and Java have the same call (Ort::SessionOptions::RegisterCustomOpsLibrary,
 * SessionOptions.RegisterCustomOpLibraryV2, OrtSession.SessionOptions.registerCustomOpLibrary).
 *
 * Usage: load_from_c LIBONNXQ_OPS MODEL M K
 *   runs MODEL's input "X" = float32 [M, K] (x[i] = ((i * 37) % 19 - 9) / 8) and prints
 *   output "Y": its shape on the first line, then one value per line.
 * Exit status: 0 success, 1 onnxruntime error (message on stderr), 2 usage.
 *
 * A real application would include onnxruntime_c_api.h from an onnxruntime release; this
 * example declares the few pieces it uses so that it builds against the shared library
 * inside the onnxruntime Python wheel, which ships no headers. OrtApi is a table of
 * function pointers that only grows: each index below names one function for good.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct OrtApi OrtApi;
typedef struct OrtStatus OrtStatus;
typedef struct OrtEnv OrtEnv;
typedef struct OrtSession OrtSession;
typedef struct OrtSessionOptions OrtSessionOptions;
typedef struct OrtRunOptions OrtRunOptions;
typedef struct OrtMemoryInfo OrtMemoryInfo;
typedef struct OrtValue OrtValue;
typedef struct OrtTensorTypeAndShapeInfo OrtTensorTypeAndShapeInfo;

typedef struct OrtApiBase {
    const OrtApi *(*GetApi)(uint32_t version);
    const char *(*GetVersionString)(void);
} OrtApiBase;

/* Exported by libonnxruntime. */
const OrtApiBase *OrtGetApiBase(void);

enum { ORT_LOGGING_LEVEL_WARNING = 2, ORT_TENSOR_FLOAT = 1, ORT_ARENA_ALLOCATOR = 1, ORT_MEM_DEFAULT = 0 };

/* X(slot, name, return type, parameters) */
#define API_SLOTS(X)                                                                                           \
    X(2, GetErrorMessage, const char *, (const OrtStatus *status))                                             \
    X(3, CreateEnv, OrtStatus *, (int log_level, const char *log_id, OrtEnv **out))                            \
    X(7, CreateSession, OrtStatus *,                                                                           \
      (const OrtEnv *env, const char *model_path, const OrtSessionOptions *options, OrtSession **out))         \
    X(9, Run, OrtStatus *,                                                                                     \
      (OrtSession * session, const OrtRunOptions *run_options, const char *const *input_names,                 \
       const OrtValue *const *inputs, size_t n_inputs, const char *const *output_names, size_t n_outputs,      \
       OrtValue **outputs))                                                                                    \
    X(10, CreateSessionOptions, OrtStatus *, (OrtSessionOptions * *out))                                       \
    X(24, SetIntraOpNumThreads, OrtStatus *, (OrtSessionOptions * options, int n))                             \
    X(49, CreateTensorWithDataAsOrtValue, OrtStatus *,                                                         \
      (const OrtMemoryInfo *info, void *data, size_t bytes, const int64_t *shape, size_t rank, int type,       \
       OrtValue **out))                                                                                        \
    X(51, GetTensorMutableData, OrtStatus *, (OrtValue * value, void **out))                                   \
    X(61, GetDimensionsCount, OrtStatus *, (const OrtTensorTypeAndShapeInfo *info, size_t *out))               \
    X(62, GetDimensions, OrtStatus *, (const OrtTensorTypeAndShapeInfo *info, int64_t *dims, size_t n))        \
    X(64, GetTensorShapeElementCount, OrtStatus *, (const OrtTensorTypeAndShapeInfo *info, size_t *out))       \
    X(65, GetTensorTypeAndShape, OrtStatus *, (const OrtValue *value, OrtTensorTypeAndShapeInfo **out))        \
    X(69, CreateCpuMemoryInfo, OrtStatus *, (int allocator_type, int mem_type, OrtMemoryInfo **out))           \
    X(92, ReleaseEnv, void, (OrtEnv * env))                                                                    \
    X(93, ReleaseStatus, void, (OrtStatus * status))                                                           \
    X(94, ReleaseMemoryInfo, void, (OrtMemoryInfo * info))                                                     \
    X(95, ReleaseSession, void, (OrtSession * session))                                                        \
    X(96, ReleaseValue, void, (OrtValue * value))                                                              \
    X(99, ReleaseTensorTypeAndShapeInfo, void, (OrtTensorTypeAndShapeInfo * info))                             \
    X(100, ReleaseSessionOptions, void, (OrtSessionOptions * options))                                         \
    X(228, RegisterCustomOpsLibrary_V2, OrtStatus *, (OrtSessionOptions * options, const char *library_path))

#define SLOT_ENUM(slot, name, ret, params) SLOT_##name = (slot),
enum { API_SLOTS(SLOT_ENUM) SLOT_END_ };
#define SLOT_TYPEDEF(slot, name, ret, params) typedef ret(*fn_##name) params;
API_SLOTS(SLOT_TYPEDEF)

typedef void (*any_fn)(void);
static const OrtApi *g_api;
/* The one way to reach a slot. */
#define API(name) ((fn_##name)(((const any_fn *)(const void *)g_api)[SLOT_##name]))

/* Prints and releases a failed status; returns 1 if there was one. */
static int failed(OrtStatus *st, const char *what) {
    if (st == NULL) return 0;
    fprintf(stderr, "error: %s: %s\n", what, API(GetErrorMessage)(st));
    API(ReleaseStatus)(st);
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s LIBONNXQ_OPS MODEL M K\n", argv[0]);
        return 2;
    }
    const char *lib_path = argv[1], *model_path = argv[2];
    const long long M = atoll(argv[3]), K = atoll(argv[4]);
    if (M < 0 || K < 1 || M > (1 << 20) || K > (1 << 20)) {
        fprintf(stderr, "M must be in [0, 2^20] and K in [1, 2^20]\n");
        return 2;
    }

    /* 17: the API version onnxq's library needs as well (onnxruntime >= 1.17). */
    g_api = OrtGetApiBase()->GetApi(17);
    if (g_api == NULL) {
        fprintf(stderr, "error: onnxruntime %s is older than 1.17\n", OrtGetApiBase()->GetVersionString());
        return 1;
    }

    int rc = 1;
    OrtEnv *env = NULL;
    OrtSessionOptions *options = NULL;
    OrtSession *session = NULL;
    OrtMemoryInfo *mem = NULL;
    OrtValue *x_value = NULL, *y_value = NULL;
    OrtTensorTypeAndShapeInfo *y_info = NULL;
    float *x = malloc((size_t)(M * K > 0 ? M * K : 1) * sizeof(float));
    if (x == NULL) return 1;
    for (long long i = 0; i < M * K; ++i) x[i] = (float)((i * 37) % 19 - 9) / 8.0f;

    if (failed(API(CreateEnv)(ORT_LOGGING_LEVEL_WARNING, "load_from_c", &env), "creating the environment")) goto done;
    if (failed(API(CreateSessionOptions)(&options), "creating session options")) goto done;
    if (failed(API(SetIntraOpNumThreads)(options, 2), "setting threads")) goto done;
    /* The call this example is about: onnxruntime loads the library and calls its
     * RegisterCustomOps, which adds the `onnxq` domain to these options. onnxruntime keeps
     * the library loaded until the options are released. */
    if (failed(API(RegisterCustomOpsLibrary_V2)(options, lib_path), "registering onnxq's custom ops")) goto done;
    /* Errors in onnxq nodes (bad attributes, wrong weight sizes) surface here ... */
    if (failed(API(CreateSession)(env, model_path, options, &session), "loading the model")) goto done;

    if (failed(API(CreateCpuMemoryInfo)(ORT_ARENA_ALLOCATOR, ORT_MEM_DEFAULT, &mem), "creating memory info")) goto done;
    const int64_t x_shape[2] = {M, K};
    if (failed(API(CreateTensorWithDataAsOrtValue)(mem, x, (size_t)(M * K) * sizeof(float), x_shape, 2,
                                                   ORT_TENSOR_FLOAT, &x_value),
               "wrapping the input"))
        goto done;
    const char *in_names[] = {"X"}, *out_names[] = {"Y"};
    /* ... and errors found while running (wrong input sizes, bad indices) here. */
    if (failed(API(Run)(session, NULL, in_names, (const OrtValue *const *)&x_value, 1, out_names, 1, &y_value),
               "running the model"))
        goto done;

    size_t rank = 0, count = 0;
    int64_t dims[8];
    float *y = NULL;
    if (failed(API(GetTensorTypeAndShape)(y_value, &y_info), "reading the output shape")) goto done;
    if (failed(API(GetDimensionsCount)(y_info, &rank), "reading the output rank")) goto done;
    if (rank > 8) {
        fprintf(stderr, "error: output rank %zu\n", rank);
        goto done;
    }
    if (failed(API(GetDimensions)(y_info, dims, rank), "reading the output dims")) goto done;
    if (failed(API(GetTensorShapeElementCount)(y_info, &count), "counting the output")) goto done;
    if (failed(API(GetTensorMutableData)(y_value, (void **)&y), "reading the output")) goto done;
    for (size_t i = 0; i < rank; ++i) printf(i ? " %lld" : "%lld", (long long)dims[i]);
    printf("\n");
    for (size_t i = 0; i < count; ++i) printf("%.9g\n", y[i]);
    rc = 0;

done:
    if (y_info) API(ReleaseTensorTypeAndShapeInfo)(y_info);
    if (y_value) API(ReleaseValue)(y_value);
    if (x_value) API(ReleaseValue)(x_value);
    if (mem) API(ReleaseMemoryInfo)(mem);
    if (session) API(ReleaseSession)(session);
    if (options) API(ReleaseSessionOptions)(options);
    if (env) API(ReleaseEnv)(env);
    free(x);
    return rc;
}
