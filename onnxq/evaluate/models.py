"""Open the models under evaluation: validate the files, read metadata, create sessions,
check that reference and candidates have the same interface, and time every run."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import onnx
import onnxruntime as ort

from .. import runtime
from ..errors import ModelError, OnnxqError
from ..checks import check_input_model
from ..model_inputs import ModelInputs
from ..modelio import check_model_file, load_model

PathLike = Union[str, os.PathLike]

FAMILY_KEY = "onnxq.model.family"
KIND_KEY = "onnxq.model.kind"

# onnxruntime type strings -> numpy dtypes for the tensor types evaluation can feed.
_ORT_DTYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
}


@dataclass(frozen=True)
class TensorSpec:
    """Name, onnxruntime type string and shape (ints, symbolic names, or None) of a graph input/output."""

    name: str
    type: str
    shape: tuple[Union[int, str, None], ...]

    @property
    def dtype(self) -> Any:
        dtype = _ORT_DTYPES.get(self.type)
        if dtype is None:
            raise ModelError(f"tensor {self.name!r} has type {self.type}, which evaluation cannot feed or compare")
        return dtype


@dataclass
class TimedModel:
    """An onnxruntime session plus what evaluation needs to know about its model.

    ``run`` adds the wall time of each ``session.run`` call to ``seconds`` (the session is
    created before, outside any timed region).
    """

    path: str
    session: ort.InferenceSession
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    metadata: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    runs: int = 0
    _proto: Optional[onnx.ModelProto] = field(default=None, repr=False)
    _interface: Optional[ModelInputs] = field(default=None, repr=False)

    @property
    def proto(self) -> onnx.ModelProto:
        """The graph without external data, loaded on first use (only graph queries need it)."""
        if self._proto is None:
            self._proto = load_model(self.path)
        return self._proto

    @property
    def interface(self) -> ModelInputs:
        """The model's inputs and how the ones a text task does not give are synthesized."""
        if self._interface is None:
            self._interface = ModelInputs.of(self.proto, self.path)
        return self._interface

    def feeds_from(self, batch: Mapping[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
        """The inputs for one run from ``batch`` (token ids, maybe a mask): the arrays the model
        takes, the rest synthesized; ModelError naming the model for anything else."""
        interface = self.interface
        given = {k: v for k, v in batch.items() if k in interface.by_name}
        try:
            return interface.complete(given, f"{self.path}: {what}")
        except OnnxqError as exc:
            raise ModelError(str(exc)) from None

    @property
    def family(self) -> Optional[str]:
        return self.metadata.get(FAMILY_KEY)

    @property
    def kind(self) -> Optional[str]:
        return self.metadata.get(KIND_KEY)

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [spec.name for spec in self.outputs]

    def output(self, name: str) -> TensorSpec:
        for spec in self.outputs:
            if spec.name == name:
                return spec
        raise ModelError(f"{self.path}: has no output {name!r} (outputs: {', '.join(self.output_names)})")

    def output_for(self, preferred: str, what: str) -> str:
        """The output holding ``what``: the one named ``preferred`` if present, else the only one."""
        if preferred in self.output_names:
            return preferred
        if len(self.outputs) == 1:
            return self.outputs[0].name
        raise ModelError(
            f"{self.path}: cannot tell which output holds the {what} (no output named {preferred!r}; "
            f"outputs: {', '.join(self.output_names)})"
        )

    def run(self, output_names: Optional[Sequence[str]], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """session.run, timed; onnxruntime failures become ModelError naming the model."""
        start = time.perf_counter()
        try:
            result = self.session.run(list(output_names) if output_names is not None else None, dict(feeds))
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidArgument types
            raise ModelError(f"{self.path}: onnxruntime failed to run the model: {_first_line(exc)}") from None
        self.seconds += time.perf_counter() - start
        self.runs += 1
        return result

    def warm_up(self, output_names: Optional[Sequence[str]], feeds: Mapping[str, np.ndarray]) -> None:
        """One untimed run, so the timed work excludes first-run allocation and kernel selection."""
        seconds, runs = self.seconds, self.runs
        self.run(output_names, feeds)
        self.seconds, self.runs = seconds, runs


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def session_options(threads: int = 0, config: Optional[Mapping[str, str]] = None) -> ort.SessionOptions:
    """Options shared by every model of one evaluation: ``threads`` intra-op threads
    (0 = onnxruntime's default, one per physical core) and onnxruntime session config
    entries (e.g. ``session.qdq_matmulnbits_accuracy_level``)."""
    if threads < 0:
        raise ModelError(f"threads must be >= 0, got {threads}")
    options = ort.SessionOptions()
    for key, value in (config or {}).items():
        options.add_session_config_entry(str(key), str(value))
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    runtime.quiet_between_runs(options)  # models are timed in turn: no spinning into the next one
    # Fatal only: run errors reach the user once, as the exception evaluation turns into a
    # one-line message, and warnings about e.g. unused initializers are noise here.
    options.log_severity_level = 4
    return options


def _specs(args: Sequence[Any]) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(a.name, a.type, tuple(a.shape)) for a in args)


def open_model(path: PathLike, threads: int = 0, config: Optional[Mapping[str, str]] = None) -> TimedModel:
    """Validate ``path`` and create its session with onnxq's custom ops registered.

    The session is the up-front check: when onnxruntime refuses the model,
    :func:`onnxq.checks.check_input_model` names the cause (not ONNX, no nodes, missing
    or short external data, an unknown domain / opset / op and its node) where it can. On
    success the graph is not parsed a second time (for a 500 MB model that costs seconds).
    """
    path = check_model_file(path)
    try:
        session = runtime.InferenceSession(path, session_options(threads, config), ["CPUExecutionProvider"])
    except OnnxqError:
        raise  # e.g. the op library is missing: the runtime's message says what to do
    except Exception as exc:
        check_input_model(load_model(path), path)  # clearer than onnxruntime's message
        raise ModelError(f"{path}: onnxruntime cannot load the model: {_first_line(exc)}") from None
    if not session.get_outputs():
        load_model(path)  # a graph without nodes: says so
        raise ModelError(f"{path}: the model has no outputs to evaluate")
    metadata = dict(session.get_modelmeta().custom_metadata_map)
    return TimedModel(
        path=path,
        session=session,
        inputs=_specs(session.get_inputs()),
        outputs=_specs(session.get_outputs()),
        metadata=metadata,
    )


def check_same_interface(
    reference: TimedModel,
    candidate: TimedModel,
    outputs: Optional[Sequence[str]] = None,
    inputs: bool = True,
) -> None:
    """Raise ModelError naming every input that differs (name or type; skipped when
    ``inputs`` is False, for tasks that build each model's inputs itself) and every needed
    output (``outputs``, default all of the reference's) the candidate lacks."""
    problems: list[str] = []
    if inputs:
        _input_problems(reference, candidate, problems)
    needed = list(outputs) if outputs is not None else reference.output_names
    lacking = [n for n in needed if n not in candidate.output_names]
    if lacking:
        problems.append(f"candidate lacks output(s) {', '.join(lacking)}")
    ref_family, cand_family = reference.family, candidate.family
    if ref_family and cand_family and ref_family != cand_family:
        problems.append(f"reference is model family {ref_family!r} but candidate is {cand_family!r}")
    if problems:
        raise ModelError(
            f"models do not match: reference {reference.path}, candidate {candidate.path}: " + "; ".join(problems)
        )


def name_problems(expected: Sequence[str], given: Sequence[str], missing_text: str, extra_text: str) -> list[str]:
    """``["<missing_text> a, b", "<extra_text> c"]`` for names missing from / extra in ``given``."""
    problems = []
    missing = [n for n in expected if n not in given]
    extra = [n for n in given if n not in expected]
    if missing:
        problems.append(f"{missing_text} {', '.join(missing)}")
    if extra:
        problems.append(f"{extra_text} {', '.join(extra)}")
    return problems


def _input_problems(reference: TimedModel, candidate: TimedModel, problems: list[str]) -> None:
    ref_inputs = {s.name: s for s in reference.inputs}
    cand_inputs = {s.name: s for s in candidate.inputs}
    problems.extend(name_problems(list(ref_inputs), list(cand_inputs), "candidate lacks input(s)",
                                  "candidate has extra input(s)"))
    for name, spec in ref_inputs.items():
        other = cand_inputs.get(name)
        if other is not None and other.type != spec.type:
            problems.append(f"input {name!r} is {spec.type} in the reference but {other.type} in the candidate")
