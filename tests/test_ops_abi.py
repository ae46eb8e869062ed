"""The header-free onnxruntime ABI of onnxq's op library: the slot table against the
verified facts, registration against a fake runtime (old versions refused, failures
cleaned up, op structs laid out as onnxruntime reads them), and a coverage build proving
that every slot the library declares is called by a real onnxruntime."""
from __future__ import annotations

import ctypes
import os
import re

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from onnxq import runtime
from onnxq.formats import row_bytes
from onnxq.ggml.nodes import make_ggml_gather_node, make_ggml_matmul_node
from ops_testlib import OPS_DIR, ORT_ERRORS, UNDER_ASAN, build_ops_library, c_compiler, make_model, quantized_weight, vinfo

# From the verified ABI notes (DESIGN's ort-abi.md): name -> (slot, since API version).
FACTS = {
    "CreateStatus": (0, 1), "GetErrorCode": (1, 1), "GetErrorMessage": (2, 1),
    "CreateCustomOpDomain": (26, 1), "CustomOpDomain_Add": (27, 1), "AddCustomOpDomain": (28, 1),
    "GetTensorMutableData": (51, 1), "GetTensorElementType": (60, 1), "GetDimensionsCount": (61, 1),
    "GetDimensions": (62, 1), "GetTensorShapeElementCount": (64, 1), "GetTensorTypeAndShape": (65, 1),
    "CreateCpuMemoryInfo": (69, 1), "AllocatorAlloc": (75, 1), "AllocatorFree": (76, 1),
    "KernelInfoGetAttribute_float": (85, 1), "KernelInfoGetAttribute_int64": (86, 1),
    "KernelInfoGetAttribute_string": (87, 1), "KernelContext_GetInputCount": (88, 1),
    "KernelContext_GetOutputCount": (89, 1), "KernelContext_GetInput": (90, 1), "KernelContext_GetOutput": (91, 1),
    "ReleaseStatus": (93, 1), "ReleaseMemoryInfo": (94, 1), "ReleaseValue": (96, 1),
    "ReleaseTensorTypeAndShapeInfo": (99, 1), "ReleaseCustomOpDomain": (101, 1), "ReleaseAllocator": (132, 14),
    "KernelInfoGetAttributeArray_float": (162, 13), "KernelInfoGetAttributeArray_int64": (163, 13),
    "KernelInfo_GetInputCount": (230, 14), "KernelInfo_GetOutputCount": (231, 14),
    "KernelInfo_GetNodeName": (244, 15), "KernelContext_GetLogger": (246, 15), "Logger_LogMessage": (247, 15),
    "KernelInfoGetConstantInput_tensor": (249, 15), "KernelContext_GetAllocator": (253, 15),
    "KernelContext_ParallelFor": (274, 17), "KernelContext_GetScratchBuffer": (277, 18), "GetTensorData": (378, 23),
}
API_VERSION = 17


def header_slots():
    """(slot, name, since) of every X(...) entry of ONNXQ_ORT_SLOTS in ort_abi.h."""
    text = open(os.path.join(OPS_DIR, "ort_abi.h")).read()
    block = text[text.index("#define ONNXQ_ORT_SLOTS(X)"):]
    block = block[: block.index("\n\n")]
    return [(int(s), n, int(v)) for s, n, v in re.findall(r"X\((\d+),\s*(\w+),\s*(\d+),", block)]


def test_slot_table_matches_the_verified_facts():
    slots = header_slots()
    assert len(slots) >= 20
    names = [n for _, n, _ in slots]
    assert len(set(names)) == len(names) and len({s for s, _, _ in slots}) == len(slots)
    for slot, name, since in slots:
        assert name in FACTS, f"{name} is not in the verified ABI notes"
        assert (slot, since) == FACTS[name], f"{name}: header says slot {slot} since {since}, notes say {FACTS[name]}"
        assert since <= API_VERSION


def test_slots_are_only_reached_through_ORT_CALL():
    # One index per name: no source may index the table or spell a slot number itself.
    for fname in os.listdir(OPS_DIR):
        if not (fname.startswith("ops_") and fname.endswith(".c")):
            continue
        src = open(os.path.join(OPS_DIR, fname)).read()
        assert not re.search(r"\bORT_SLOT_", src), f"{fname} uses a slot index directly"
        assert "ort_any_fn" not in src, f"{fname} reads the table directly"
    used = set()
    for fname in os.listdir(OPS_DIR):
        if fname.startswith("ops_") and fname.endswith(".c"):
            used |= set(re.findall(r"ORT_CALL\(\s*\w+(?:->\w+)?\s*,\s*(\w+)\s*\)", open(os.path.join(OPS_DIR, fname)).read()))
    declared = {n for _, n, _ in header_slots()}
    assert used == declared, f"declared but unused: {declared - used}; used but undeclared: {used - declared}"


# ------------------------------------------------------------------ a fake onnxruntime


class OrtCustomOp(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32)] + [(f"f{i}", ctypes.c_void_p) for i in range(1, 26)]


FIELD = {
    "CreateKernel": 1, "GetName": 2, "GetExecutionProviderType": 3, "GetInputType": 4, "GetInputTypeCount": 5,
    "GetOutputType": 6, "GetOutputTypeCount": 7, "KernelCompute": 8, "KernelDestroy": 9,
    "GetInputCharacteristic": 10, "GetOutputCharacteristic": 11, "GetInputMemoryType": 12,
    "CreateKernelV2": 17, "KernelComputeV2": 18, "InferOutputShapeFn": 19, "GetStartVersion": 20,
    "GetEndVersion": 21,
}

GetApiT = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_uint32)
GetVersionT = ctypes.CFUNCTYPE(ctypes.c_void_p)


class OrtApiBase(ctypes.Structure):
    _fields_ = [("GetApi", GetApiT), ("GetVersionString", GetVersionT)]


class FakeRuntime:
    """An OrtApiBase whose tables hold Python callbacks at the slots registration uses."""

    def __init__(self, version: str, offer17: bool, offer1: bool = True, fail_at=None):
        self.version = ctypes.create_string_buffer(version.encode())
        self.statuses = {}
        self.released_statuses = []
        self.domains = []
        self.added_ops = []
        self.added_domains = []
        self.released_domains = []
        self.fail_at = fail_at  # "create_domain", "add_op1", "add_op2", "add_domain"
        self._keep = []
        self.add_calls = 0

        def cb(restype, *argtypes):
            def deco(fn):
                f = ctypes.CFUNCTYPE(restype, *argtypes)(fn)
                self._keep.append(f)
                return ctypes.cast(f, ctypes.c_void_p).value
            return deco

        @cb(ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p)
        def create_status(code, msg):
            buf = ctypes.create_string_buffer(msg)
            addr = ctypes.addressof(buf)
            self.statuses[addr] = (code, msg.decode(), buf)
            return addr

        @cb(ctypes.c_int, ctypes.c_void_p)
        def get_error_code(st):
            return self.statuses[st][0]

        @cb(ctypes.c_void_p, ctypes.c_void_p)
        def get_error_message(st):
            return ctypes.addressof(self.statuses[st][2])

        @cb(None, ctypes.c_void_p)
        def release_status(st):
            self.released_statuses.append(st)

        def fail(where):
            return create_status_py(1, f"fake failure in {where}".encode()) if self.fail_at == where else None

        def create_status_py(code, msg):
            buf = ctypes.create_string_buffer(msg)
            self.statuses[ctypes.addressof(buf)] = (code, msg.decode(), buf)
            return ctypes.addressof(buf)

        @cb(ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p))
        def create_domain(name, out):
            st = fail("create_domain")
            if st:
                return st
            buf = ctypes.create_string_buffer(16)
            self._keep.append(buf)
            self.domains.append((name.decode(), ctypes.addressof(buf)))
            out[0] = ctypes.addressof(buf)
            return None

        @cb(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
        def domain_add(domain, op):
            self.add_calls += 1
            st = fail(f"add_op{self.add_calls}")
            if st:
                return st
            self.added_ops.append(op)
            return None

        @cb(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
        def add_domain(options, domain):
            st = fail("add_domain")
            if st:
                return st
            self.added_domains.append((options, domain))
            return None

        @cb(None, ctypes.c_void_p)
        def release_domain(domain):
            self.released_domains.append(domain)

        self.api1 = (ctypes.c_void_p * 3)(create_status, get_error_code, get_error_message)
        self.api17 = (ctypes.c_void_p * 300)()
        for slot, fn in {0: create_status, 1: get_error_code, 2: get_error_message, 26: create_domain,
                         27: domain_add, 28: add_domain, 93: release_status, 101: release_domain}.items():
            self.api17[slot] = fn

        def get_api(v):
            if v == 17 and offer17:
                return ctypes.addressof(self.api17)
            if v == 1 and offer1:
                return ctypes.addressof(self.api1)
            return None

        def get_version():
            return ctypes.addressof(self.version)

        self.base = OrtApiBase(GetApiT(get_api), GetVersionT(get_version))

    def message(self, status) -> str:
        return self.statuses[status][1]


def _register(lib: ctypes.CDLL, fake: FakeRuntime, options=0x1234):
    fn = lib.RegisterCustomOps
    fn.restype = ctypes.c_void_p
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    return fn(options, ctypes.byref(fake.base) if fake else None)


@pytest.fixture(scope="module")
def lib():
    return ctypes.CDLL(runtime.get_library_path())


def test_old_runtime_is_refused_with_its_version(lib):
    fake = FakeRuntime("1.16.3", offer17=False)
    st = _register(lib, fake)
    assert st, "RegisterCustomOps must return an error status"
    assert fake.message(st) == "onnxq custom ops need onnxruntime >= 1.17 (this is 1.16.3)"
    assert fake.statuses[st][0] != 0
    assert fake.domains == []


def test_runtime_offering_nothing_does_not_crash(lib):
    assert _register(lib, FakeRuntime("0.1", offer17=False, offer1=False)) is None
    assert _register(lib, None) is None


def test_registration_adds_both_ops_in_one_onnxq_domain(lib):
    fake = FakeRuntime("1.17.0", offer17=True)
    assert _register(lib, fake, options=0xABC0) is None
    assert [d[0] for d in fake.domains] == ["onnxq"]
    assert fake.added_domains == [(0xABC0, fake.domains[0][1])]
    assert fake.released_domains == []  # sessions may need it for their whole life
    assert ctypes.sizeof(OrtCustomOp) == 208
    names = {}
    for addr in fake.added_ops:
        op = OrtCustomOp.from_address(addr)
        assert op.version == 17
        call = lambda field, restype, *args: ctypes.CFUNCTYPE(restype, ctypes.c_void_p, *[type(a) for a in args])(
            getattr(op, f"f{FIELD[field]}"))(addr, *args)
        name = call("GetName", ctypes.c_char_p).decode()
        for field in ("CreateKernel", "KernelCompute", "InferOutputShapeFn", "GetStartVersion", "GetEndVersion"):
            assert getattr(op, f"f{FIELD[field]}") is None, f"{name}.{field} must be NULL"
        for i in range(22, 26):
            assert getattr(op, f"f{i}") is None
        for field in ("CreateKernelV2", "KernelComputeV2", "KernelDestroy", "GetInputCharacteristic",
                      "GetOutputCharacteristic", "GetInputMemoryType"):
            assert getattr(op, f"f{FIELD[field]}"), f"{name}.{field} must be set"
        assert call("GetExecutionProviderType", ctypes.c_void_p) is None
        n_in = call("GetInputTypeCount", ctypes.c_size_t)
        types = [call("GetInputType", ctypes.c_int, ctypes.c_size_t(i)) for i in range(n_in)]
        chars = [call("GetInputCharacteristic", ctypes.c_int, ctypes.c_size_t(i)) for i in range(n_in)]
        assert call("GetOutputTypeCount", ctypes.c_size_t) == 1
        assert call("GetOutputType", ctypes.c_int, ctypes.c_size_t(0)) == 1
        names[name] = (types, chars)
    assert names == {
        "GgmlMatMul": ([1, 2, 1], [0, 0, 1]),  # float X, uint8 W, optional float bias
        "GgmlGather": ([2, 0], [0, 0]),  # uint8 table, indices of any type (checked at run time)
    }
    # Registering again creates a second domain with the same static ops.
    fake2 = FakeRuntime("1.17.0", offer17=True)
    assert _register(lib, fake2) is None
    assert fake2.added_ops == fake.added_ops


@pytest.mark.parametrize("where", ["create_domain", "add_op1", "add_op2", "add_domain"])
def test_registration_failures_are_returned_and_cleaned_up(lib, where):
    fake = FakeRuntime("1.20.0", offer17=True, fail_at=where)
    st = _register(lib, fake)
    assert st and fake.message(st) == f"fake failure in {where}"
    if where == "create_domain":
        assert fake.released_domains == []
    else:
        assert fake.released_domains == [fake.domains[0][1]]
        assert fake.added_domains == []


# ------------------------------------------------------------------ every slot, called by onnxruntime


def _scenario(lib_path: str):
    """Sessions and runs that together reach every slot of the table."""

    def sess(model, threads):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.log_severity_level = 4
        so.register_custom_ops_library(lib_path)
        return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])

    rng = np.random.default_rng(0)
    K, N = 512, 64
    blocks, W = quantized_weight("Q4_K", N, K, rng)
    bias = rng.standard_normal(N).astype(np.float32)
    mm = make_ggml_matmul_node("cov_mm", "X", "Y", blocks, quant_type="Q4_K", K=K, N=N, bias=bias, mode="exact")
    g = make_ggml_gather_node("cov_g", "ids", "G", "T", quant_type="Q4_K", K=K, N=N)
    model = make_model([mm.node, g.node], [vinfo("X"), vinfo("T", TensorProto.UINT8), vinfo("ids", TensorProto.INT32)],
                       [vinfo("Y"), vinfo("G")], mm.initializers)
    X = rng.standard_normal((64, K)).astype(np.float32)
    for threads in (1, 2):  # ParallelFor inline and on a 2-thread pool
        y, G = sess(model, threads).run(None, {"X": X, "T": blocks, "ids": np.array([-1, 3], np.int32)})
        np.testing.assert_allclose(y, X @ W.T + bias, rtol=1e-3, atol=1e-3)
        np.testing.assert_array_equal(G, W[[-1, 3]])
    # attribute errors: int and string readers on both kinds of mismatch
    for attrs in (dict(quant_type="Q4_0", K="64", N=4), dict(quant_type=3, K=64, N=4), dict(quant_type="Q4_0", N=4)):
        node = helper.make_node("GgmlMatMul", ["X", "W"], ["Y"], name="bad", domain="onnxq", **attrs)
        with pytest.raises(ORT_ERRORS):
            sess(make_model([node], [vinfo("X"), vinfo("W", TensorProto.UINT8)], [vinfo("Y")]), 1)
    # an error status from onnxruntime itself (allocation refused), wrapped with its code and message
    if UNDER_ASAN:
        pytest.skip("ASan aborts on the refused 4 TiB allocation inside onnxruntime")
    big = make_ggml_gather_node("big", "ids", "G", "T", quant_type="Q8_0", K=1 << 20, N=1)
    s = sess(make_model([big.node], [vinfo("T", TensorProto.UINT8), vinfo("ids", TensorProto.INT64)], [vinfo("G")]), 1)
    with pytest.raises(ORT_ERRORS, match="allocating Y"):
        s.run(None, {"T": np.zeros(row_bytes("Q8_0", 1 << 20), np.uint8), "ids": np.zeros(1 << 20, np.int64)})


def test_every_declared_slot_is_called(tmp_path):
    if c_compiler() is None:
        pytest.skip("no C compiler to build the coverage variant of the library")
    path = build_ops_library(str(tmp_path / "libonnxq_ops_cov.so"), ["-DONNXQ_ORT_SLOT_COVERAGE"], opt="-O0")
    cov = ctypes.CDLL(path)
    cov.onnxq_ops_slot_hit.restype = ctypes.c_int
    cov.onnxq_ops_slot_hit.argtypes = [ctypes.c_int]
    _scenario(path)
    # The cleanup slot after a failed registration is only reachable through a fake runtime.
    fake = FakeRuntime("1.17.0", offer17=True, fail_at="add_domain")
    assert _register(cov, fake)
    missing = [(s, n) for s, n, _ in header_slots() if not cov.onnxq_ops_slot_hit(s)]
    if (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1) < 2:
        # With one CPU the kernels run every task inline and never ask for the pool.
        missing = [(s, n) for s, n in missing if n != "KernelContext_ParallelFor"]
    assert missing == [], f"declared slots never called: {missing}"
