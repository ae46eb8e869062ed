"""``quantize_model``: SmoothQuant W8A8 from file to file (load, calibrate, apply, save)."""
from __future__ import annotations

from typing import Any, Iterable, List, Optional, Union

import onnx
from onnx import TensorProto

from ..calibrate import CalibrationCache, calibrate
from ..checks import check_input_model
from ..errors import ModelError
from ..fused_ops import unfuse_weights
from ..modelio import check_output_path, load_model, model_dir, save_model
from ..sites import LinearSite
from .apply import AlphaSpec, apply_smoothquant, required_tensors
from .config import SmoothQuantConfig, searches_alpha
from .migration import Metric, relative_mse
from .report import SmoothQuantReport

__all__ = ["quantize_model"]


def quantize_model(
    input_path: str,
    output_path: str,
    calibration_data: Any,
    config: Optional[SmoothQuantConfig] = None,
    format: Optional[str] = None,
    sites: Optional[Iterable[Union[str, LinearSite]]] = None,
    alpha: AlphaSpec = None,
    *,
    batch_size: int = 8,
    sample_rows: int = 512,
    keep_float: Iterable[str] = (),
    keep_float_top: int = 0,
    sensitivity: str = "simulated",
    sensitivity_batches: int = 2,
    metric: Metric = relative_mse,
    progress: bool = True,
) -> SmoothQuantReport:
    """Quantize the ONNX model at ``input_path`` with SmoothQuant W8A8; write ``output_path``.

    ``calibration_data``: a CalibrationDataReader, an iterable of input dicts, or an .npz
    path / dict of arrays (leading axis = samples, batched by ``batch_size``); token ids
    alone will do (:func:`onnxq.text_inputs.text_batches` makes them from a text file), the
    other inputs are synthesized. ``alpha`` None: ``config.alpha`` ("auto" by default). ``format``
    None means "qdq" (or "dynamic" when ``config.quantize_activations`` is False). The input
    file is never modified; the output is written atomically. Returns the report.

    ``keep_float_top=k`` leaves the k most sensitive sites in float: ranked by their
    simulated per-layer error (``sensitivity="simulated"``) or, with
    ``sensitivity="end-to-end"``, by how much the model's output error drops when each
    site's activation quantization is removed (one forward pass per site on
    ``sensitivity_batches`` calibration batches; see ``onnxq.smoothquant.sensitivity``).
    """
    config = config or SmoothQuantConfig()
    if format is None:
        format = "qdq" if config.quantize_activations else "dynamic"
    out = check_output_path(input_path, output_path)
    model = load_model(input_path)
    check_input_model(model, input_path)
    base_dir = model_dir(input_path)
    opened = unfuse_weights(model, base_dir)  # fused Attention's QKV weights become sites
    cache = CalibrationCache(calibration_data, model, batch_size=batch_size,
                             max_samples=config.num_calibration_samples)
    tensors = required_tensors(model, sites, format)
    auto = searches_alpha(alpha, config)
    holdout = 4 if auto and len(cache) >= 4 else 0
    stats = calibrate(model, tensors, cache, sample_rows=sample_rows, holdout_every=holdout,
                      base_dir=base_dir, progress=progress)
    keep_float = list(keep_float)
    notes: List[str] = [f"opened up {op} {name!r} so its weights can be quantized" for name, op in opened.replaced.items()]
    if keep_float_top > 0 and sensitivity == "end-to-end":
        from .sensitivity import activation_sensitivity

        if any(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer):
            raise ModelError("end-to-end sensitivity needs a model without external data; use sensitivity='simulated'")
        trial = onnx.ModelProto()
        trial.CopyFrom(model)
        trial_report = apply_smoothquant(
            trial, sites, stats, config, "qdq", alpha=alpha, calibration_data=cache, base_dir=base_dir,
            metric=metric, keep_float=keep_float, progress=progress,
        )
        gains = activation_sensitivity(model, trial, [s.name for s in trial_report.quantized],
                                       cache.batches[:max(1, sensitivity_batches)], progress=progress)
        del trial
        ranked = sorted(((g, n) for n, g in gains.items() if g > 0), reverse=True)[:keep_float_top]
        keep_float += [n for _, n in ranked]
        notes.append("kept float by end-to-end sensitivity (output error gain): "
                     + ", ".join(f"{n} ({g:.2e})" for g, n in ranked))
        keep_float_top = 0
    elif sensitivity not in ("simulated", "end-to-end"):
        raise ModelError(f"sensitivity must be 'simulated' or 'end-to-end', got {sensitivity!r}")
    report = apply_smoothquant(
        model, sites, stats, config, format, alpha=alpha, calibration_data=cache, base_dir=base_dir,
        metric=metric, keep_float=keep_float, keep_float_top=keep_float_top, progress=progress,
    )
    report.notes.extend(notes)
    if auto and not holdout:
        report.notes.append("fewer than 4 calibration batches: alpha was searched on in-sample rows")
    report.output_path = save_model(model, out, base_dir=base_dir)
    return report
