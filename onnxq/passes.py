"""What a method pass of :func:`onnxq.quantize` sees: the run (:class:`QuantizeJob`), the
shared calibration (:class:`Calibration`) and the interface every pass implements
(:class:`MethodPass`). The pipeline (:mod:`onnxq.pipeline`) holds the registry that maps
a method kind of the plan to its pass; the passes live in the wings.

A run calls, for the passes of the kinds the plan uses, in :data:`onnxq.plan.KINDS` order:
``check`` (options and data, before any work), ``request`` (statistics it needs; one
onnxruntime pass per calibration source then serves them all), ``prepare`` (in-memory
rewrites: SmoothQuant, AWQ), and last ``write`` (the pass that streams the output
model; only the GGML pass does).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import onnx

from .calibrate import CalibrationCache, StatsRequest, TensorStats, calibrate_many
from .plan import Plan
from .recipe import Recipe
from .report import LayerResult
from .sites import Analysis, Skipped

__all__ = ["QuantizeOptions", "QuantizeJob", "Calibration", "MethodPass"]


@dataclass
class QuantizeOptions:
    """The per-run options of :func:`onnxq.quantize` that passes read."""

    imatrix_data: Any = None
    imatrix: Any = None
    save_imatrix: Any = None
    calibration_data: Any = None
    #: the model inputs the in-memory passes calibrate on: ``calibration_data``, else
    #: ``imatrix_data`` when it holds inputs (not a saved importance matrix); None: none given
    calibration_inputs: Any = None
    smoothquant_options: Dict[str, Any] = field(default_factory=dict)
    awq: Any = None
    threads: Optional[int] = None
    calibration_batches: Optional[int] = None
    progress: bool = True
    #: the inputs the ``auto`` mode measures layers on (the calibration inputs, or what the
    #: pipeline made when none were given: self-generated text, shipped sentences)
    auto_data: Any = None
    #: where ``auto_data`` came from, or why there is none (reports and metadata)
    auto_data_source: str = ""
    #: auto-mode threshold (None: :data:`onnxq.ggml.modes.DEFAULT_THRESHOLD`)
    auto_threshold: Optional[float] = None
    #: write the GGML layers as stock onnxruntime ops: ``"matmulnbits"`` or ``"qdq"`` (None: GGML ops)
    portable: Optional[str] = None


class Calibration:
    """The calibration of one run: each data source is validated once (a
    :class:`~onnxq.calibrate.CalibrationCache`) and run once, serving every request on it."""

    def __init__(self, model: onnx.ModelProto, base_dir: str, max_batches: Optional[int], progress: bool) -> None:
        self.model, self.base_dir, self.max_batches, self.progress = model, base_dir, max_batches, progress
        self._caches: Dict[Tuple, CalibrationCache] = {}
        self._requests: Dict[str, Tuple[Tuple, StatsRequest]] = {}
        self._stats: Dict[str, Dict[str, TensorStats]] = {}

    @staticmethod
    def _source_key(data: Any) -> Any:
        return ("path", os.path.abspath(os.fspath(data))) if isinstance(data, (str, os.PathLike)) else ("obj", id(data))

    def cache(self, data: Any, batch_size: int = 8, max_samples: Optional[int] = None) -> CalibrationCache:
        """The validated batches of ``data`` (read once per source)."""
        key = (self._source_key(data), max_samples)
        found = self._caches.get(key)
        if found is None:
            found = self._caches[key] = CalibrationCache(
                data, self.model, batch_size=batch_size, max_batches=self.max_batches, max_samples=max_samples)
        return found

    def request(self, consumer: str, data: Any, request: StatsRequest, batch_size: int = 8,
                max_samples: Optional[int] = None) -> None:
        """Ask for statistics; :meth:`stats` returns them after :meth:`run`."""
        self.cache(data, batch_size, max_samples)
        self._requests[consumer] = ((self._source_key(data), max_samples), request)

    def same_source(self, a: Any, b: Any) -> bool:
        """True when two data arguments name the same calibration source."""
        return self._source_key(a) == self._source_key(b)

    def requested(self, consumer: str) -> bool:
        return consumer in self._requests

    def run(self) -> None:
        """One onnxruntime pass over each source that has requests."""
        by_source: Dict[Tuple, Dict[str, StatsRequest]] = {}
        for consumer, (key, request) in self._requests.items():
            by_source.setdefault(key, {})[consumer] = request
        for key, requests in by_source.items():
            self._stats.update(calibrate_many(self.model, requests, self._caches[key], base_dir=self.base_dir,
                                              progress=self.progress))

    def stats(self, consumer: str) -> Dict[str, TensorStats]:
        return self._stats[consumer]

    def rescale(self, tensor: str, new_tensor: str, s: np.ndarray, skip: str = "") -> None:
        """A pass replaced activation ``tensor`` by ``new_tensor`` = tensor / s (a fold or an
        explicit Mul): every other consumer's statistics follow, exactly."""
        for consumer, stats in self._stats.items():
            if consumer != skip and tensor in stats:
                stats[new_tensor] = stats[tensor].scaled(s)


@dataclass
class QuantizeJob:
    """One run of :func:`onnxq.quantize`: the working model (rewritten in memory by the
    ``prepare`` steps), its sites and plan, and what the passes report."""

    input_path: str
    output_path: str
    base_dir: str
    recipe: Recipe
    model: onnx.ModelProto
    analysis: Analysis
    plan: Plan
    options: QuantizeOptions
    calibration: Calibration
    #: metadata_props the output gets
    metadata: Dict[str, str] = field(default_factory=dict)
    layers: List[LayerResult] = field(default_factory=list)
    #: per-method reports for the QuantizeReport: "smoothquant", "awq", "imatrix_tensors"
    reports: Dict[str, Any] = field(default_factory=dict)
    #: what analysis of the input passed over (the final report adds kept sites)
    skipped: List[Skipped] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    #: what the run changed in the graph besides quantizing (for the report)
    notes: List[str] = field(default_factory=list)

    def replan(self, step: str, done: Optional[str] = None) -> None:
        """Re-analyze the model after ``step`` changed it (see :meth:`Plan.carry_over`)."""
        self.analysis, self.plan = self.plan.carry_over(self.model, step, done)


class MethodPass:
    """A method's part in a run. Subclasses override what they need."""

    #: the plan's method kind this pass handles
    kind = ""

    def check(self, job: QuantizeJob) -> None:
        """Validate options and data before any work (raise an OnnxqError)."""

    def request(self, job: QuantizeJob) -> None:
        """Ask ``job.calibration`` for the statistics the pass needs."""

    def prepare(self, job: QuantizeJob) -> None:
        """Rewrite ``job.model`` in memory; report layers into ``job.layers``."""

    def write(self, job: QuantizeJob, writer: Any) -> Optional[onnx.ModelProto]:
        """Stream the output model through ``writer`` (a ModelWriter); None: not this pass."""
        return None
