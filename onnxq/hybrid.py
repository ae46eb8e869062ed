"""SmoothQuant layers inside a recipe (also the recipe behind ``onnxq quantize --method smoothquant``).

The SmoothQuant work itself is :func:`onnxq.smoothquant.apply_smoothquant` (in memory, on
the subset of sites a recipe gives it); this module calibrates the float model for it,
passes the recipe's options (alpha per rule or global, format) and hands the smoothed
model back to the GGML pass for the remaining sites.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional, Tuple

import onnx

from .analyze import Analysis
from .errors import RecipeError
from .recipe import SMOOTHQUANT, Plan

#: SmoothQuant options a recipe / the CLI may pass (besides alpha and format)
_FORMATS = ("qdq", "qoperator", "dynamic")


def _config(options: Mapping[str, Any]):
    from .smoothquant import SmoothQuantConfig

    fields = {f.name for f in dataclasses.fields(SmoothQuantConfig)}
    extra = {k: v for k, v in options.items() if k not in ("alpha", "format", "batch_size")}
    unknown = [k for k in extra if k not in fields]
    if unknown:
        raise RecipeError(f"unknown SmoothQuant option {unknown[0]!r} (known: alpha, format, {', '.join(sorted(fields))})")
    return SmoothQuantConfig(**extra)


def apply_recipe_smoothquant(
    model: onnx.ModelProto,
    analysis: Analysis,
    plan: Plan,
    data: Any,
    *,
    base_dir: Optional[str],
    options: Mapping[str, Any],
    max_batches: Optional[int] = None,
    progress: bool = True,
) -> Tuple[onnx.ModelProto, Any]:
    """Smooth and quantize (W8A8) the sites ``plan`` gives ``smoothquant``; returns the
    changed model (``model`` itself, rewritten in place) and SmoothQuant's report."""
    from .calibrate import CalibrationCache, calibrate
    from .smoothquant import apply_smoothquant, required_tensors

    fmt = options.get("format", "qdq")
    if fmt not in _FORMATS:
        raise RecipeError(f"SmoothQuant format {fmt!r} must be one of {', '.join(_FORMATS)}")
    config = _config(options)
    decisions = plan.by_kind(SMOOTHQUANT)
    sites = [d.site for d in decisions]
    # alpha: the CLI / API option for every site, else per rule (a number or "auto")
    alpha: Any = options.get("alpha")
    if alpha is None:
        per_site = {d.site: d.method.alpha for d in decisions if d.method.alpha is not None}
        if per_site and all(a == "auto" for a in per_site.values()) and len(per_site) == len(sites):
            alpha = "auto"
        elif any(a == "auto" for a in per_site.values()):
            raise RecipeError("alpha 'auto' must apply to every smoothquant layer of a recipe (or none)")
        elif per_site:
            alpha = {k: float(v) for k, v in per_site.items()}
    cache = CalibrationCache(data, model, batch_size=int(options.get("batch_size", 8)), max_batches=max_batches,
                             max_samples=config.num_calibration_samples)
    auto = alpha == "auto"
    holdout = 4 if auto and len(cache) >= 4 else 0
    stats = calibrate(model, required_tensors(model, sites, fmt), cache, sample_rows=512 if auto else 0,
                      holdout_every=holdout, base_dir=base_dir, progress=progress)
    report = apply_smoothquant(model, sites, stats, config, fmt, alpha=alpha, calibration_data=cache,
                               base_dir=base_dir, progress=progress)
    return model, report


def smoothquant_recipe() -> Dict[str, Any]:
    """``--method smoothquant``: every linear layer but the LM head (and shared weights)."""
    return {"name": "smoothquant", "default": "smoothquant", "rules": [{"role": "head", "method": "keep"}]}
