"""``onnxq.quantize``: quantize an ONNX model file with a GGML type or a recipe.

load (lazily) -> analyze -> plan (recipe) -> [SmoothQuant sites, in memory]
-> [importance matrix: calibrate the float model] -> [AWQ: activation-aware input scaling
of the GGML sites, folded into the producers] -> GGML pass (streamed) -> atomic save.

The input is never modified; the output is written to temporary files and renamed into
place only when complete; the same input, recipe and imatrix give byte-identical output.
The output records ``onnxq.version`` and ``onnxq.recipe`` (JSON) in its metadata.
"""
from __future__ import annotations

import json
import sys
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Union

import numpy as np
import onnx

from ._version import __version__
from .analyze import Skipped, find_sites
from .errors import CalibrationError, ModelError, RecipeError
from .ggml_pass import LayerResult, run_ggml_pass
from .imatrix import ImportanceMatrix, as_imatrix, compute_imatrix, is_imatrix_file
from .inspect_model import format_bytes as _size
from .modelio import (
    EXTERNAL_DATA_THRESHOLD,
    ModelWriter,
    check_output_path,
    is_external,
    load_model,
    model_dir,
    tensor_nbytes,
)
from .recipe import GGML, KEEP, SMOOTHQUANT, Plan, Recipe, load_recipe, plan as make_plan, single_type_recipe

PathLike = Union[str, os.PathLike]

VERSION_KEY = "onnxq.version"
RECIPE_KEY = "onnxq.recipe"
IMATRIX_KEY = "onnxq.imatrix"
AWQ_KEY = "onnxq.awq"
#: the recipe ``onnxq quantize`` uses when given neither --type nor --recipe (see the demo)
DEFAULT_RECIPE = "q5_k_m"


@dataclass
class TypeSummary:
    """One line of the closing table: all sites stored with one method."""

    method: str
    layers: int = 0
    params: int = 0
    nbytes: int = 0

    @property
    def bits_per_weight(self) -> Optional[float]:
        return 8.0 * self.nbytes / self.params if self.params else None


@dataclass
class QuantizeReport:
    """What :func:`quantize` did: per-site results, skipped nodes, sizes, time."""

    input: str
    output: str
    recipe: Recipe
    layers: List[LayerResult] = field(default_factory=list)
    skipped: List[Skipped] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    input_bytes: int = 0
    output_bytes: int = 0
    seconds: float = 0.0
    imatrix_tensors: int = 0
    smoothquant: Any = None
    awq: Any = None

    # -- summaries
    def by_method(self) -> List[TypeSummary]:
        """Per method (GGML type, keep, smoothquant): layers, params and stored bytes
        (shared blocks counted once); kept layers count their float bytes."""
        rows: "OrderedDict[str, TypeSummary]" = OrderedDict()
        for layer in sorted(self.layers, key=lambda l: _method_order(l.method)):
            row = rows.setdefault(layer.method, TypeSummary(layer.method))
            row.layers += 1
            if layer.shared_with is None:
                row.params += layer.params
                row.nbytes += layer.nbytes if layer.method != KEEP else 0
        return list(rows.values())

    @property
    def quantized_params(self) -> int:
        return sum(l.params for l in self.layers if l.method not in (KEEP, SMOOTHQUANT) and l.shared_with is None)

    @property
    def quantized_bytes(self) -> int:
        return sum(l.nbytes for l in self.layers if l.method not in (KEEP, SMOOTHQUANT))

    @property
    def bits_per_weight(self) -> Optional[float]:
        """Effective bits per weight over all GGML-quantized weights (shared ones once)."""
        p = self.quantized_params
        return 8.0 * self.quantized_bytes / p if p else None

    @property
    def size_ratio(self) -> Optional[float]:
        """Input file bytes / output file bytes."""
        return self.input_bytes / self.output_bytes if self.output_bytes else None

    def table(self) -> str:
        """The closing table the CLI prints."""
        lines = [f"{'method':<12}{'layers':>7}{'params':>12}{'bytes':>12}{'bpw':>8}"]
        for row in self.by_method():
            if row.method == KEEP or not row.nbytes:
                lines.append(f"{row.method:<12}{row.layers:>7}{_count(row.params):>12}{'-':>12}{'-':>8}")
            else:
                bpw = f"{row.bits_per_weight:.3f}" if row.bits_per_weight else "-"
                lines.append(f"{row.method:<12}{row.layers:>7}{_count(row.params):>12}{_size(row.nbytes):>12}{bpw:>8}")
        bpw = f"{self.bits_per_weight:.3f}" if self.bits_per_weight else "-"
        ggml_layers = sum(r.layers for r in self.by_method() if r.method not in (KEEP, SMOOTHQUANT))
        if ggml_layers:  # a SmoothQuant-only run has no GGML total to show
            lines.append(
                f"{'ggml total':<12}{ggml_layers:>7}"
                f"{_count(self.quantized_params):>12}{_size(self.quantized_bytes):>12}{bpw:>8}"
            )
        float_bytes = 4 * self.quantized_params
        if self.quantized_bytes:
            lines.append(
                f"quantized weights: {_size(self.quantized_bytes)} vs {_size(float_bytes)} as float32 "
                f"({float_bytes / self.quantized_bytes:.2f}x smaller)"
            )
        ratio = f" ({self.size_ratio:.2f}x smaller)" if self.size_ratio else ""
        lines.append(f"model file: {_size(self.input_bytes)} -> {_size(self.output_bytes)}{ratio}")
        if self.awq is not None:
            lines.append(self.awq.summary())
        if self.skipped:
            lines.append("skipped: " + summarize_skipped(self.skipped))
        return "\n".join(lines)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "input": self.input,
            "output": self.output,
            "recipe": self.recipe.to_dict(),
            "seconds": round(self.seconds, 3),
            "input_bytes": self.input_bytes,
            "output_bytes": self.output_bytes,
            "bits_per_weight": self.bits_per_weight,
            "quantized_params": self.quantized_params,
            "quantized_bytes": self.quantized_bytes,
            "imatrix_tensors": self.imatrix_tensors,
            "by_method": [
                {"method": r.method, "layers": r.layers, "params": r.params, "bytes": r.nbytes,
                 "bits_per_weight": r.bits_per_weight}
                for r in self.by_method()
            ],
            "layers": [
                {
                    "name": l.name, "kind": l.kind, "role": l.role, "layer": l.layer, "method": l.method,
                    "K": l.K, "N": l.N, "tail_type": l.tail_type, "mode": l.mode, "bytes": l.nbytes,
                    "bits_per_weight": l.bits_per_weight, "shared_with": l.shared_with, "rule": l.source,
                    "note": l.note,
                }
                for l in self.layers
            ],
            "skipped": [{"node": s.node, "op_type": s.op_type, "reason": s.reason} for s in self.skipped],
            "warnings": list(self.warnings),
            "smoothquant": self.smoothquant.to_dict() if self.smoothquant is not None else None,
            "awq": self.awq.to_dict() if self.awq is not None else None,
        }


def _method_order(method: str) -> tuple:
    order = ["Q8_0", "Q6_K", "Q5_K", "Q5_1", "Q5_0", "Q4_K", "Q4_1", "Q4_0", SMOOTHQUANT, KEEP]
    return (order.index(method) if method in order else len(order), method)


def _count(n: int) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def summarize_skipped(skipped: List[Skipped]) -> str:
    """``"60 MatMul: activation x activation; 2 Gather: ..."`` (reasons grouped)."""
    groups: "OrderedDict[tuple, int]" = OrderedDict()
    for s in skipped:
        reason = s.reason
        if reason.startswith("weight ") and "'" in reason:  # drop the tensor name for grouping
            reason = reason.split("'", 2)[-1].strip() or reason
        groups[(s.op_type, reason)] = groups.get((s.op_type, reason), 0) + 1
    return "; ".join(f"{n} {op}: {reason}" for (op, reason), n in groups.items())


def model_file_bytes(path: PathLike, model: Optional[onnx.ModelProto] = None) -> int:
    """Bytes of an .onnx file plus every external data file it references (``model``:
    the same file already loaded, to avoid parsing it again)."""
    path = os.fspath(path)
    total = os.path.getsize(path)
    if model is None:
        try:
            model = onnx.load(path, load_external_data=False)
        except Exception:
            return total
    base = model_dir(path)
    seen = set()
    for t in model.graph.initializer:
        if is_external(t):
            loc = next((e.value for e in t.external_data if e.key == "location"), None)
            if loc and loc not in seen:
                seen.add(loc)
                full = os.path.join(base, loc)
                if os.path.isfile(full):
                    total += os.path.getsize(full)
    return total


def resolve_recipe(type: Optional[str] = None, recipe: Any = None, mode: Optional[str] = None) -> Recipe:
    """The recipe for ``type`` (one GGML type everywhere) or ``recipe`` (file, preset, dict)."""
    if type is not None and recipe is not None:
        raise RecipeError("give either a type or a recipe, not both")
    if type is not None:
        result = single_type_recipe(type, mode)
    else:
        result = load_recipe(recipe if recipe is not None else DEFAULT_RECIPE)
    return result.with_mode(mode)


def _set_metadata(model: onnx.ModelProto, values: Mapping[str, str]) -> None:
    keep = [p for p in model.metadata_props if p.key not in values]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in values.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def quantize(
    input: PathLike,
    output: PathLike,
    *,
    type: Optional[str] = None,
    recipe: Any = None,
    mode: Optional[str] = None,
    imatrix_data: Any = None,
    imatrix: Union[ImportanceMatrix, Mapping[str, np.ndarray], PathLike, None] = None,
    save_imatrix: Optional[PathLike] = None,
    calibration_data: Any = None,
    smoothquant_options: Optional[Mapping[str, Any]] = None,
    awq: Any = None,
    threads: Optional[int] = None,
    calibration_batches: Optional[int] = None,
    external_data: Optional[bool] = None,
    progress: bool = True,
) -> QuantizeReport:
    """Quantize the ONNX model at ``input`` into ``output``.

    Args:
        type: one GGML type for every linear layer and embedding (``"q6_k"``), or
        recipe: a preset name (``"q5_k_m"``), a JSON/YAML recipe file, a dict or a
            :class:`~onnxq.recipe.Recipe`; neither: the ``q5_k_m`` preset.
        mode: ``exact`` or ``fast`` for every GGML layer whose rule does not say.
        imatrix_data: calibration inputs for an importance matrix (``.npz`` of model
            inputs, dict of arrays, iterable of input dicts, CalibrationDataReader), or an
            ``.npz`` saved by :meth:`ImportanceMatrix.save`.
        imatrix: a ready importance matrix (object, mapping or saved ``.npz``).
        save_imatrix: write the importance matrix used to this ``.npz``.
        calibration_data: inputs for SmoothQuant layers of a recipe and for AWQ (defaults
            to ``imatrix_data``).
        awq: activation-aware weight scaling of the GGML layers (:mod:`onnxq.awq`): True,
            a dict of :class:`~onnxq.awq.AWQConfig` fields, or False to turn off a recipe's
            ``awq``. None: as the recipe says (a recipe's awq runs only when calibration
            data is given; ``awq=True`` without data is an error).
        threads: codec threads (None: all cores).
        external_data: store weights in ``<output>.data`` (None: when the input does or
            the weights are large).
    Returns:
        a :class:`QuantizeReport`.
    """
    start = time.perf_counter()
    in_path = os.path.abspath(os.fspath(input))
    out_path = check_output_path(in_path, output)
    chosen = resolve_recipe(type, recipe, mode)
    model = load_model(in_path)
    input_bytes = model_file_bytes(in_path, model)
    base_dir = model_dir(in_path)
    analysis = find_sites(model)
    analysis_order = {node.name: i for i, node in enumerate(model.graph.node)}
    if not analysis.linear and not analysis.embeddings:
        detail = f" (looked at: {summarize_skipped(analysis.skipped)})" if analysis.skipped else ""
        raise ModelError(
            f"{in_path}: no quantizable layer: no MatMul/Gemm with a constant 2-D float weight "
            f"and no Gather on a constant table{detail}"
        )
    skipped_before = list(analysis.skipped)
    the_plan = make_plan(analysis, chosen)
    if not any(d.method.kind in (GGML, SMOOTHQUANT) for d in the_plan.decisions):
        raise RecipeError(f"recipe {chosen.name!r} keeps every layer of {in_path}: nothing to quantize")
    warnings = list(the_plan.warnings)
    sq_report = None
    awq_config, awq_explicit = _awq_config(awq, chosen)
    awq_data = calibration_data if calibration_data is not None else imatrix_data
    if awq_data is not None and isinstance(awq_data, (str, os.PathLike)) and is_imatrix_file(awq_data):
        awq_data = None
    if awq_config is not None and awq_data is None:
        if awq_explicit:
            raise CalibrationError(
                "awq needs calibration inputs (activations of the layers it scales): pass --calib DATA.npz "
                "(or --imatrix-data DATA.npz with model inputs)")
        warnings.append(f"recipe {chosen.name!r} asks for awq, but no calibration data was given: awq skipped")
        awq_config = None

    if any(d.method.kind == SMOOTHQUANT for d in the_plan.decisions):
        from .hybrid import apply_recipe_smoothquant

        data = calibration_data if calibration_data is not None else imatrix_data
        if data is None or (isinstance(data, (str, os.PathLike)) and is_imatrix_file(data)):
            n = len(the_plan.by_kind(SMOOTHQUANT))
            raise CalibrationError(
                f"recipe {chosen.name!r} puts {n} layer(s) in smoothquant, which needs calibration "
                "inputs: pass --calib DATA.npz (or --imatrix-data)"
            )
        sq_layers = _smoothquant_layers(analysis, the_plan)
        model, sq_report = apply_recipe_smoothquant(
            model, analysis, the_plan, data, base_dir=base_dir, options=smoothquant_options or {},
            max_batches=calibration_batches, progress=progress,
        )
        analysis, the_plan = _replan(model, the_plan, "SmoothQuant")
    else:
        sq_layers = []

    sites = {s.name: s for s in analysis.linear}
    tensors = [sites[d.site].input for d in the_plan.decisions if d.method.kind == GGML and d.site in sites]
    imx = _get_imatrix(model, base_dir, tensors, imatrix, imatrix_data, calibration_batches, progress)
    if imx is not None and save_imatrix is not None:
        imx.save(save_imatrix)  # of the model as given, so that it can be reused

    awq_report = None
    if awq_config is not None:
        model, analysis, the_plan, imx, awq_report = _run_awq(
            model, analysis, the_plan, awq_data, awq_config, imx, base_dir, calibration_batches, threads, progress)

    if external_data is None:
        weights = sum(tensor_nbytes(t) for t in model.graph.initializer)
        external_data = any(is_external(t) for t in model.graph.initializer) or weights > EXTERNAL_DATA_THRESHOLD

    from .ggml_pass import default_quantizer

    with ModelWriter(out_path, external_data=external_data) as writer:
        result = run_ggml_pass(
            model, analysis, the_plan, writer, base_dir=base_dir, imatrix=imx.values if imx else None,
            skipped=skipped_before,
            quantizer=default_quantizer(threads), progress=progress,
        )
        meta = {VERSION_KEY: __version__, RECIPE_KEY: chosen.to_json()}
        if imx is not None:
            rows = max(imx.counts.values()) if imx.counts else 0
            meta[IMATRIX_KEY] = json.dumps({"tensors": len(imx), "rows": rows}, sort_keys=True)
        if awq_report is not None:
            meta[AWQ_KEY] = awq_report.metadata()
        _set_metadata(result.model, meta)
        writer.write(result.model)

    if sq_layers:
        _fill_smoothquant_bytes(sq_layers, out_path, sq_report)
    report = QuantizeReport(
        input=in_path,
        output=out_path,
        recipe=chosen,
        layers=_in_graph_order(result.layers + sq_layers, analysis_order),
        skipped=result.skipped,
        warnings=warnings,
        input_bytes=input_bytes,
        output_bytes=model_file_bytes(out_path, result.model),
        imatrix_tensors=len(imx) if imx is not None else 0,
        smoothquant=sq_report,
        awq=awq_report,
    )
    report.seconds = time.perf_counter() - start
    return report


def _awq_config(awq: Any, recipe: Recipe):
    """(AWQConfig or None, whether the caller asked for it explicitly)."""
    from .awq import AWQConfig

    if awq is False:
        return None, False
    if awq is not None:
        return AWQConfig.from_options(awq), True
    if recipe.awq:
        return AWQConfig.from_options(recipe.awq_options), False
    return None, False


def _run_awq(model, analysis, the_plan, data, config, imx, base_dir, max_batches, threads, progress):
    """Calibrate the group inputs, scale and fold (in memory), re-analyze, and carry the
    importance matrix over to the scaled inputs (the imatrix of X / s is imatrix / s²)."""
    from .awq import apply_awq, awq_tensors, calibrate_for_awq

    tensors = awq_tensors(analysis, the_plan)
    stats = calibrate_for_awq(model, tensors, data, config, base_dir=base_dir, max_batches=max_batches,
                              progress=progress)
    report, scaled = apply_awq(model, analysis, the_plan, stats, config, imatrix=imx.values if imx else None,
                               base_dir=base_dir, threads=threads, progress=progress)
    analysis, the_plan = _replan(model, the_plan, "AWQ")
    if imx is not None and scaled:
        values, counts = dict(imx.values), dict(imx.counts)
        for x, new_x, s in scaled:
            if x in imx.values:
                values[new_x] = (imx.values[x] / np.square(s.astype(np.float64))).astype(np.float32)
                if x in imx.counts:
                    counts[new_x] = imx.counts[x]
        imx = ImportanceMatrix(values, counts)
    return model, analysis, the_plan, imx, report


def _replan(model: onnx.ModelProto, old: Plan, step: str = "SmoothQuant"):
    """Re-analyze the rewritten model and carry the GGML / keep decisions over by node name
    (SmoothQuant rewrote its own sites; the others keep their names, their weights may
    have been smoothed or scaled in float)."""
    analysis = find_sites(model)
    decisions = {d.site: d for d in old.decisions if d.method.kind != SMOOTHQUANT}
    new = Plan(old.recipe, warnings=list(old.warnings))
    found = set()
    for site in [*analysis.linear, *analysis.embeddings]:
        d = decisions.get(site.name)
        if d is not None:
            new.decisions.append(d)
            found.add(site.name)
    missing = [name for name in decisions if name not in found]
    if missing:
        raise ModelError(f"after {step}, layer {missing[0]!r} is no longer a linear site of the model")
    analysis.linear = [s for s in analysis.linear if s.name in found]
    analysis.embeddings = [s for s in analysis.embeddings if s.name in found]
    return analysis, new


def _smoothquant_layers(analysis, the_plan: Plan) -> List[LayerResult]:
    sites = {s.name: s for s in analysis.linear}
    out = []
    for d in the_plan.by_kind(SMOOTHQUANT):
        s = sites[d.site]
        out.append(LayerResult(name=s.name, kind="linear", role=s.role, layer=s.layer, method=SMOOTHQUANT,
                               K=s.K, N=s.N, source=d.source, note=d.note))
    return out


def _fill_smoothquant_bytes(layers: List[LayerResult], out_path: str, sq_report) -> None:
    """Stored bytes of the int8 layers, read back from the written model (weights, scales
    and zero points); layers SmoothQuant left in float are marked so."""
    from .inspect_model import inspect_model

    info = {l.name: l for l in inspect_model(out_path).layers}
    left_float = {s.name for s in getattr(sq_report, "sites", []) if not s.quantized}
    for layer in layers:
        # SmoothQuant names its nodes after the site's node ("<site>/MatMul")
        found = info.get(layer.name) or next(
            (l for name, l in info.items() if name.startswith(layer.name + "/")), None)
        if layer.name in left_float:
            layer.note = "left in float by SmoothQuant"
        if found is not None:
            layer.nbytes = layer.packed_bytes = found.nbytes


def _in_graph_order(layers: List[LayerResult], order: Mapping[str, int]) -> List[LayerResult]:
    return sorted(layers, key=lambda l: order.get(l.name, len(order)))


def _get_imatrix(model, base_dir, tensors, imatrix, imatrix_data, max_batches, progress) -> Optional[ImportanceMatrix]:
    if imatrix is not None and imatrix_data is not None:
        raise CalibrationError("give either an importance matrix or data to compute one, not both")
    if imatrix is not None:
        return ImportanceMatrix.load(imatrix) if isinstance(imatrix, (str, os.PathLike)) else as_imatrix(imatrix)
    if imatrix_data is None:
        return None
    if isinstance(imatrix_data, (str, os.PathLike)) and is_imatrix_file(imatrix_data):
        return ImportanceMatrix.load(imatrix_data)
    return compute_imatrix(model, tensors, imatrix_data, base_dir=base_dir, max_batches=max_batches, progress=progress)


class _CallableModule(sys.modules[__name__].__class__):
    """``onnxq.quantize`` names both this module and its function: importing the submodule
    (``from onnxq.quantize import ...``) makes the package attribute the module, so the
    module forwards calls to :func:`quantize` and ``onnxq.quantize(...)`` works either way."""

    def __call__(self, *args: Any, **kwargs: Any) -> QuantizeReport:
        return quantize(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
