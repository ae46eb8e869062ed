"""The SmoothQuant wing's pass in :func:`onnxq.quantize` (a recipe's ``smoothquant`` layers,
and ``onnxq quantize --method smoothquant``, which is the recipe :func:`smoothquant_recipe`).

The work itself is :func:`onnxq.smoothquant.apply_smoothquant` (in memory, on the sites
the plan gives it); this pass checks the run's options (alpha per rule or global,
format, config fields), asks the run's calibration for the statistics it needs, and
tells the other consumers of that calibration which activations a fold rescaled.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping

from ..calibrate import DEFAULT_BINS, StatsRequest
from ..errors import CalibrationError, RecipeError
from ..passes import MethodPass, QuantizeJob
from ..plan import SMOOTHQUANT, parse_alpha
from ..recipe import Recipe, recipe_from_dict
from ..report import LayerResult
from .apply import apply_smoothquant, required_tensors
from .config import SmoothQuantConfig, searches_alpha
from .emit import FORMATS

__all__ = ["SmoothQuantPass", "smoothquant_recipe", "config_from_options"]

_CONSUMER = "smoothquant"
#: run options that are not SmoothQuantConfig fields
_RUN_KEYS = ("alpha", "format", "batch_size")


def config_from_options(options: Mapping[str, Any]) -> SmoothQuantConfig:
    """A SmoothQuantConfig from the run's ``smoothquant_options`` (unknown keys refused)."""
    fields = {f.name for f in dataclasses.fields(SmoothQuantConfig)}
    extra = {k: v for k, v in options.items() if k not in _RUN_KEYS}
    unknown = [k for k in extra if k not in fields]
    if unknown:
        raise RecipeError(f"unknown SmoothQuant option {unknown[0]!r} (known: alpha, format, {', '.join(sorted(fields))})")
    return SmoothQuantConfig(**extra)


def smoothquant_recipe() -> Recipe:
    """``--method smoothquant``: every linear layer but the LM head (and shared weights).
    Built in: an encoder has no head, and that is no reason to warn."""
    spec = {"name": "smoothquant", "default": "smoothquant", "rules": [{"role": "head", "method": "keep"}]}
    return dataclasses.replace(recipe_from_dict(spec), builtin=True)


class SmoothQuantPass(MethodPass):
    """Smooth and quantize (W8A8) the sites the plan gives ``smoothquant``."""

    kind = SMOOTHQUANT

    def check(self, job: QuantizeJob) -> None:
        options = job.options.smoothquant_options
        self.format = options.get("format", "qdq")
        if self.format not in FORMATS:
            raise RecipeError(f"SmoothQuant format {self.format!r} must be one of {', '.join(FORMATS)}")
        self.config = config_from_options(options)
        self.sites = [d.site for d in job.plan.by_kind(SMOOTHQUANT)]
        self.alpha_covers_all = False
        self.alpha = self._alpha(job)
        self.data = job.options.calibration_inputs
        if self.data is None:
            raise CalibrationError(
                f"recipe {job.recipe.name!r} puts {len(self.sites)} layer(s) in smoothquant, which needs calibration "
                "inputs: pass --calib DATA.npz or --calib-text FILE.txt (or --imatrix-data / --imatrix-text)"
            )

    def _alpha(self, job: QuantizeJob) -> Any:
        """The CLI / API option for every site, else per rule (a number or "auto"); sites
        no rule gives an alpha get the config's ("auto" unless set)."""
        given = job.options.smoothquant_options.get("alpha")
        if given is not None:
            return parse_alpha(given)
        decisions = job.plan.by_kind(SMOOTHQUANT)
        per_site = {d.site: parse_alpha(d.method.alpha) for d in decisions if d.method.alpha is not None}
        self.alpha_covers_all = len(per_site) == len(decisions)
        return per_site or None

    def request(self, job: QuantizeJob) -> None:
        calib = job.calibration
        batch_size = int(job.options.smoothquant_options.get("batch_size", 8))
        max_samples = self.config.num_calibration_samples
        cache = calib.cache(self.data, batch_size, max_samples)
        auto = searches_alpha(self.alpha, self.config, self.alpha_covers_all)
        self.searched = auto
        # alpha "auto" measures each candidate on held-out batches the scales never saw
        self.holdout = 4 if auto and len(cache) >= 4 else 0
        request = StatsRequest(tuple(required_tensors(job.model, self.sites, self.format)), DEFAULT_BINS,
                               512 if auto else 0, self.holdout)
        calib.request(_CONSUMER, self.data, request, batch_size, max_samples)
        self.cache_args = (batch_size, max_samples)

    def prepare(self, job: QuantizeJob) -> None:
        calib = job.calibration
        report = apply_smoothquant(
            job.model, self.sites, calib.stats(_CONSUMER), self.config, self.format, alpha=self.alpha,
            calibration_data=calib.cache(self.data, *self.cache_args), base_dir=job.base_dir,
            progress=job.options.progress,
        )
        if self.searched and not self.holdout:
            report.notes.append("fewer than 4 calibration batches: alpha was searched on in-sample rows")
        for x, s in report.folded:  # X now carries X / s for everyone downstream of the fold
            calib.rescale(x, x, s, skip=_CONSUMER)
        job.reports["smoothquant"] = report
        left_float = {s.name for s in report.sites if not s.quantized}
        by_name = {s.name: s for s in report.sites}
        sites = {s.name: s for s in job.analysis.linear}
        for d in job.plan.by_kind(SMOOTHQUANT):
            site, row = sites[d.site], by_name.get(d.site)
            job.layers.append(LayerResult(
                name=site.name, kind="linear", role=site.role, layer=site.layer, method=SMOOTHQUANT, K=site.K,
                N=site.N, source=d.source, note="left in float by SmoothQuant" if d.site in left_float else d.note,
                nbytes=row.nbytes if row else 0, packed_bytes=row.nbytes if row else 0,
            ))
        job.replan("SmoothQuant", done=SMOOTHQUANT)
