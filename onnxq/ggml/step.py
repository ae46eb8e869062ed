"""The GGML wing's pass in :func:`onnxq.quantize`: importance matrix and AWQ from the
run's one calibration, then the streamed rewrite into ``GgmlMatMul`` / ``GgmlGather``."""
from __future__ import annotations

import json
import os
from typing import Any, Optional, Tuple

import numpy as np
import onnx

from ..calibrate import StatsRequest
from ..errors import CalibrationError
from ..passes import MethodPass, QuantizeJob
from ..plan import AUTO, GGML
from ..recipe import Recipe
from .awq import AWQConfig, apply_awq, awq_tensors
from .imatrix import ImportanceMatrix, as_imatrix, imatrix_from_stats, is_imatrix_file
from .modes import DEFAULT_THRESHOLD, SAMPLE_ROWS, check_threshold
from .portable_ops import check_portable_ops
from .rewrite import default_quantizer, run_ggml_pass

__all__ = ["GGMLPass", "IMATRIX_KEY", "AWQ_KEY", "MODES_KEY"]

IMATRIX_KEY = "onnxq.imatrix"
AWQ_KEY = "onnxq.awq"
MODES_KEY = "onnxq.modes"

_IMATRIX, _AWQ, _MODES = "ggml.imatrix", "ggml.awq", "ggml.modes"


def _is_inputs(data: Any) -> bool:
    """True for calibration inputs (not None, not a saved importance matrix)."""
    return data is not None and not (isinstance(data, (str, os.PathLike)) and is_imatrix_file(data))


def awq_config(awq: Any, recipe: Recipe) -> Tuple[Optional[AWQConfig], bool]:
    """(AWQConfig or None, whether the caller asked for it explicitly): ``awq`` is the
    run's option (True, a dict of settings, False to turn a recipe's off, None: the recipe's)."""
    if awq is False:
        return None, False
    if awq is not None:
        return AWQConfig.from_options(awq), True
    if recipe.awq:
        return AWQConfig.from_options(recipe.awq_options), False
    return None, False


class GGMLPass(MethodPass):
    """Importance matrix, AWQ, then the streamed GGML rewrite of every GGML-planned site."""

    kind = GGML

    def __init__(self) -> None:
        self.awq: Optional[AWQConfig] = None
        self.awq_data: Any = None
        self.imatrix: Optional[ImportanceMatrix] = None
        self.imatrix_data: Any = None
        self.threshold = DEFAULT_THRESHOLD

    @staticmethod
    def check_recipe(recipe: Recipe) -> None:
        """The recipe's ``awq`` settings (raises RecipeError)."""
        if recipe.awq:
            AWQConfig.from_options(recipe.awq_options)

    def check(self, job: QuantizeJob) -> None:
        o = job.options
        if o.imatrix is not None and o.imatrix_data is not None:
            raise CalibrationError("give either an importance matrix or data to compute one, not both")
        if o.imatrix is not None:
            self.imatrix = ImportanceMatrix.load(o.imatrix) if isinstance(o.imatrix, (str, os.PathLike)) \
                else as_imatrix(o.imatrix)
        elif o.imatrix_data is not None and not _is_inputs(o.imatrix_data):
            self.imatrix = ImportanceMatrix.load(o.imatrix_data)
        else:
            self.imatrix_data = o.imatrix_data
        self.awq, explicit = awq_config(o.awq, job.recipe)
        self.awq_data = o.calibration_inputs
        if self.awq is not None and self.awq_data is None:
            if explicit:
                raise CalibrationError(
                    "awq needs calibration inputs (activations of the layers it scales): pass --calib DATA.npz "
                    "(or --imatrix-data DATA.npz with model inputs)")
            job.warnings.append(f"recipe {job.recipe.name!r} asks for awq, but no calibration data was given: "
                                "awq skipped")
            self.awq = None
        if o.auto_threshold is not None:
            self.threshold = check_threshold(o.auto_threshold)
        if o.portable is not None:
            check_portable_ops(o.portable)
        if self._auto_sites(job) and o.auto_data is None:
            from .modes import resolve_without_data

            resolve_without_data(job, o.auto_data_source)

    def _site_inputs(self, job: QuantizeJob) -> list:
        sites = {s.name: s for s in job.analysis.linear}
        return [sites[d.site].input for d in job.plan.by_kind(GGML) if d.site in sites]

    @staticmethod
    def _auto_sites(job: QuantizeJob) -> list:
        linear = {s.name for s in job.analysis.linear}
        return [d.site for d in job.plan.by_kind(GGML) if d.method.mode == AUTO and d.site in linear]

    def request(self, job: QuantizeJob) -> None:
        calib = job.calibration
        auto = self._auto_sites(job)
        if auto:
            sites = {s.name: s for s in job.analysis.linear}
            calib.request(_MODES, job.options.auto_data,
                          StatsRequest(tuple(dict.fromkeys(sites[n].input for n in auto)), 16, SAMPLE_ROWS))
        want_imatrix = self.imatrix_data is not None
        if self.awq is not None:
            tensors = awq_tensors(job.analysis, job.plan)
            shared = want_imatrix and calib.same_source(self.imatrix_data, self.awq_data)
            if shared:  # one request serves both: AWQ's samples plus everyone's mean of x²
                tensors = list(dict.fromkeys(self._site_inputs(job) + tensors))
            calib.request(_AWQ, self.awq_data, StatsRequest(tuple(tensors), 16, self.awq.sample_rows),
                          batch_size=self.awq.batch_size)
            if shared:
                return
        if want_imatrix:
            calib.request(_IMATRIX, self.imatrix_data, StatsRequest(tuple(dict.fromkeys(self._site_inputs(job))), 16))

    def prepare(self, job: QuantizeJob) -> None:
        o = job.options
        if self.imatrix_data is not None:
            key = _IMATRIX if job.calibration.requested(_IMATRIX) else _AWQ
            self.imatrix = imatrix_from_stats(job.calibration.stats(key), self._site_inputs(job))
        if self.imatrix is not None and o.save_imatrix is not None:
            self.imatrix.save(o.save_imatrix)  # of the model as given, so that it can be reused
        scaled = self._apply_awq(job) if self.awq is not None else []
        if self.imatrix is not None:
            rows = max(self.imatrix.counts.values()) if self.imatrix.counts else 0
            job.metadata[IMATRIX_KEY] = json.dumps({"tensors": len(self.imatrix), "rows": rows}, sort_keys=True)
            job.reports["imatrix_tensors"] = len(self.imatrix)
        if self._auto_sites(job):
            from .modes import resolve_auto_modes

            resolve_auto_modes(job, job.calibration.stats(_MODES), scaled, self.threshold,
                               self.imatrix.values if self.imatrix else None, MODES_KEY)

    def _apply_awq(self, job: QuantizeJob) -> list:
        """Scale and fold (in memory), re-analyze, and carry the importance matrix over to
        the scaled inputs (the imatrix of X / s is imatrix / s²); returns AWQ's
        ``[(input, new input, s)]``."""
        imx = self.imatrix
        report, scaled = apply_awq(job.model, job.analysis, job.plan, job.calibration.stats(_AWQ), self.awq,
                                   imatrix=imx.values if imx else None, base_dir=job.base_dir,
                                   threads=job.options.threads, progress=job.options.progress)
        job.replan("AWQ")
        if imx is not None and scaled:
            values, counts = dict(imx.values), dict(imx.counts)
            for x, new_x, s in scaled:
                if x in imx.values:
                    values[new_x] = (imx.values[x] / np.square(s.astype(np.float64))).astype(np.float32)
                    if x in imx.counts:
                        counts[new_x] = imx.counts[x]
            self.imatrix = ImportanceMatrix(values, counts)
        job.reports["awq"] = report
        job.metadata[AWQ_KEY] = report.metadata()
        return scaled

    def write(self, job: QuantizeJob, writer: Any) -> Optional[onnx.ModelProto]:
        result = run_ggml_pass(
            job.model, job.analysis, job.plan, writer, base_dir=job.base_dir,
            imatrix=self.imatrix.values if self.imatrix else None, skipped=job.skipped,
            quantizer=default_quantizer(job.options.threads), progress=job.options.progress,
        )
        job.layers.extend(result.layers)
        job.skipped = result.skipped
        return result.model
