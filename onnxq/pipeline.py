"""``onnxq.quantize``: quantize an ONNX model file with a GGML type or a recipe.

load (lazily) -> sites -> plan (recipe) -> one calibration per data source, serving every
pass -> the method passes (a registry: method kind -> pass), in memory first
(SmoothQuant, then AWQ) -> the GGML pass streams the output -> atomic save -> report.

The input is never modified; the output is written to temporary files and renamed into
place only when complete; the same input, recipe and imatrix give byte-identical output.
The output records ``onnxq.version`` and ``onnxq.recipe`` (JSON) in its metadata.
"""
from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import onnx

from ._version import __version__
from .checks import check_input_model
from .errors import ModelError, RecipeError
from .fused_ops import FUSED_RULES, unfuse_weights, weights_left_float
from .ggml.imatrix import ImportanceMatrix, is_imatrix_file
from .ggml.portable_rewrite import convert_model
from .ggml.step import GGMLPass
from .modelio import (
    EXTERNAL_DATA_THRESHOLD,
    ModelWriter,
    check_output_path,
    external_data_path,
    file_bytes,
    is_external,
    load_model,
    model_dir,
    set_metadata,
    tensor_nbytes,
    with_initializers,
)
from .passes import Calibration, MethodPass, QuantizeJob, QuantizeOptions
from .plan import AUTO, GGML, KEEP, SMOOTHQUANT
from .recipe import Recipe, load_recipe as _load_recipe, plan, single_type_recipe, with_keep_rules
from .report import LayerResult, QuantizeReport, summarize_skipped
from .sites import Analysis, Skipped, find_sites
from .smoothquant.step import SmoothQuantPass
from .tempfiles import temp_name

__all__ = ["quantize", "resolve_recipe", "default_recipe", "load_recipe", "PASSES", "DEFAULT_RECIPE",
           "DEFAULT_ENCODER_RECIPE", "VERSION_KEY", "RECIPE_KEY"]

PathLike = Union[str, os.PathLike]

VERSION_KEY = "onnxq.version"
RECIPE_KEY = "onnxq.recipe"
#: the recipe ``onnxq quantize`` uses when given neither --type nor --recipe, by the kind of
#: model (one with an LM head, else an encoder): the measured best of each (README: on
#: SmolLM2-135M q4_k_m +1.11 % perplexity at 5.26 bits/weight, ahead of q5_k_m's +1.88 % at
#: 5.91; on all-MiniLM-L6-v2 encoder-q6 cosine 0.9992, where q4_k_m-style mixes stay below 0.99)
DEFAULT_RECIPE = "q4_k_m"
DEFAULT_ENCODER_RECIPE = "encoder-q6"

#: method kind -> its pass; a new method is a wing plus one entry here
PASSES: Dict[str, type] = {SMOOTHQUANT: SmoothQuantPass, GGML: GGMLPass}


def load_recipe(source: Any) -> Recipe:
    """:func:`onnxq.recipe.load_recipe`, with every method's own settings checked too."""
    recipe = _load_recipe(source)
    for pass_type in PASSES.values():
        check = getattr(pass_type, "check_recipe", None)
        if check is not None:
            check(recipe)
    return recipe


def default_recipe(analysis: Optional[Analysis] = None) -> str:
    """The default recipe for a model: :data:`DEFAULT_RECIPE` for a language model (one with
    a head), :data:`DEFAULT_ENCODER_RECIPE` for an encoder; DEFAULT_RECIPE when unknown."""
    if analysis is not None and not any(s.role == "head" for s in analysis.linear):
        return DEFAULT_ENCODER_RECIPE
    return DEFAULT_RECIPE


def resolve_recipe(type: Optional[str] = None, recipe: Any = None, mode: Optional[str] = None,
                   analysis: Optional[Analysis] = None) -> Recipe:
    """The recipe for ``type`` (one GGML type everywhere) or ``recipe`` (file, preset, dict);
    neither: :func:`default_recipe` for the model ``analysis`` describes."""
    if type is not None and recipe is not None:
        raise RecipeError("give either a type or a recipe, not both")
    if type is not None:
        result = single_type_recipe(type, mode)
    else:
        result = load_recipe(recipe if recipe is not None else default_recipe(analysis))
    return result.with_mode(mode)


def quantize(
    input: PathLike,
    output: PathLike,
    *,
    type: Optional[str] = None,
    recipe: Any = None,
    mode: Optional[str] = None,
    imatrix_data: Any = None,
    imatrix: Union[ImportanceMatrix, Mapping[str, Any], PathLike, None] = None,
    save_imatrix: Optional[PathLike] = None,
    calibration_data: Any = None,
    smoothquant_options: Optional[Mapping[str, Any]] = None,
    awq: Any = None,
    threads: Optional[int] = None,
    calibration_batches: Optional[int] = None,
    external_data: Optional[bool] = None,
    auto_threshold: Optional[float] = None,
    keep: Sequence[str] = (),
    portable: Optional[str] = None,
    progress: bool = True,
) -> QuantizeReport:
    """Quantize the ONNX model at ``input`` into ``output``.

    Args:
        type: one GGML type for every linear layer and embedding (``"q6_k"``), or
        recipe: a preset name (``"q4_k_m"``), a JSON/YAML recipe file, a dict or a
            :class:`~onnxq.recipe.Recipe`; neither: :func:`default_recipe` (``q4_k_m`` for
            a language model, ``encoder-q6`` for an encoder).
        mode: ``exact``, ``fast`` or ``auto`` (the default: per layer, fast where the measured
            cost of rounding its activations is below ``auto_threshold``) for every GGML
            layer whose rule does not say. Auto measures on ``calibration_data`` (or
            ``imatrix_data`` inputs); without either, on text the float model writes itself
            (causal LMs) or shipped sentences (encoders) (:func:`onnxq.zoo.calibration.default_batches`).
        imatrix_data: calibration inputs for an importance matrix (``.npz`` of model
            inputs, dict of arrays, iterable of input dicts, CalibrationDataReader), or an
            ``.npz`` saved by :meth:`ImportanceMatrix.save`.
        imatrix: a ready importance matrix (object, mapping or saved ``.npz``).
        save_imatrix: write the importance matrix used to this ``.npz``.
        calibration_data: inputs for SmoothQuant layers of a recipe and for AWQ (defaults
            to ``imatrix_data``).
        awq: activation-aware weight scaling of the GGML layers (:mod:`onnxq.ggml.awq`):
            True, a dict of :class:`~onnxq.ggml.awq.AWQConfig` fields, or False to turn off
            a recipe's ``awq``. None: as the recipe says (a recipe's awq runs only when
            calibration data is given; ``awq=True`` without data is an error).
        threads: codec threads (None: all cores).
        external_data: store weights in ``<output>.data`` (None: when the input does or
            the weights are large).
        auto_threshold: fast where fast mode adds less than this to a layer's relative
            output error (None: :data:`onnxq.ggml.modes.DEFAULT_THRESHOLD`).
        keep: globs of node or weight names left in float, over whatever the recipe says
            (:func:`onnxq.recipe.with_keep_rules`).
        portable: write the GGML layers in stock onnxruntime operators, no onnxq library
            needed to run the file: ``"matmulnbits"`` (MatMulNBits / GatherBlockQuantized) or
            ``"qdq"`` (opset-21 blocked DequantizeLinear); the blocks are re-encoded, not
            re-quantized (:func:`onnxq.ggml.portable_rewrite.convert_model`).
    Returns:
        a :class:`~onnxq.report.QuantizeReport`.
    """
    start = time.perf_counter()
    options = QuantizeOptions(
        imatrix_data=imatrix_data, imatrix=imatrix, save_imatrix=save_imatrix, calibration_data=calibration_data,
        calibration_inputs=_calibration_inputs(calibration_data, imatrix_data),
        smoothquant_options=dict(smoothquant_options or {}), awq=awq, threads=threads,
        calibration_batches=calibration_batches, progress=progress, auto_threshold=auto_threshold,
        portable=portable,
    )
    # a given recipe is checked before any work; the default one needs the model's sites
    chosen = resolve_recipe(type, recipe, mode) if type is not None or recipe is not None else None
    job = _open(input, output, chosen, mode, list(keep), options)
    _auto_data(job)
    passes: List[MethodPass] = [PASSES[kind]() for kind in job.plan.kinds() if kind in PASSES]
    for p in passes:
        p.check(job)
    for p in passes:
        p.request(job)
    job.calibration.run()
    for p in passes:
        p.prepare(job)
    if portable is not None:
        if not job.plan.by_kind(GGML):
            raise RecipeError(f"--portable re-encodes GGML layers; recipe {job.recipe.name!r} gives none "
                              "(SmoothQuant output already uses stock operators)")
        model = _write_portable(job, passes, external_data)
    else:
        model = _write(job, passes, external_data)
    return _report(job, model, time.perf_counter() - start)


def _auto_data(job: QuantizeJob) -> None:
    """The inputs the auto mode measures on, when some GGML linear layer has mode auto:
    the calibration inputs, else a default source for the model's kind."""
    if not any(d.kind == "linear" and d.method.mode == AUTO for d in job.plan.by_kind(GGML)):
        return
    o = job.options
    if o.calibration_inputs is not None:
        o.auto_data, o.auto_data_source = o.calibration_inputs, "the given calibration inputs"
        return
    from .zoo.calibration import default_batches

    o.auto_data, o.auto_data_source = default_batches(job.input_path, progress=o.progress)


def _calibration_inputs(calibration_data: Any, imatrix_data: Any) -> Any:
    data = calibration_data if calibration_data is not None else imatrix_data
    if data is None or (isinstance(data, (str, os.PathLike)) and is_imatrix_file(data)):
        return None
    return data


def _open(input: PathLike, output: PathLike, recipe: Optional[Recipe], mode: Optional[str], keep: List[str],
          options: QuantizeOptions) -> QuantizeJob:
    """Check the paths, load the model (external data stays on disk), find its sites, plan
    (``recipe`` None: the default for the model)."""
    in_path = os.path.abspath(os.fspath(input))
    out_path = check_output_path(in_path, output)
    model = load_model(in_path)
    check_input_model(model, in_path)  # before any work: a model onnxruntime cannot load is refused
    base_dir = model_dir(in_path)
    input_bytes = file_bytes(in_path, model)  # before opening up fused ops drops their tensors
    opened = unfuse_weights(model, base_dir)  # fused ops' weights become sites (the file is untouched)
    analysis = find_sites(model)
    if not analysis.linear and not analysis.embeddings:
        detail = f" (looked at: {summarize_skipped(analysis.skipped)})" if analysis.skipped else ""
        raise ModelError(
            f"{in_path}: no quantizable layer: no MatMul/Gemm with a constant 2-D float weight "
            f"and no Gather on a constant table{detail}"
        )
    recipe = recipe if recipe is not None else resolve_recipe(None, None, mode, analysis)
    if keep:
        recipe = with_keep_rules(recipe, keep)
    the_plan = plan(analysis, recipe)
    if not any(d.method.kind in (GGML, SMOOTHQUANT) for d in the_plan.decisions):
        raise RecipeError(f"recipe {recipe.name!r} keeps every layer of {in_path}: nothing to quantize")
    job = QuantizeJob(
        input_path=in_path, output_path=out_path, base_dir=base_dir, recipe=recipe, model=model,
        analysis=analysis, plan=the_plan, options=options,
        calibration=Calibration(model, base_dir, options.calibration_batches, options.progress),
        skipped=list(analysis.skipped) + weights_left_float(model, analysis), warnings=list(the_plan.warnings),
    )
    if opened.replaced:
        job.notes.append(_opened_note(opened.replaced))
    job.metadata.update({VERSION_KEY: __version__, RECIPE_KEY: recipe.to_json()})
    job.reports["input_bytes"] = input_bytes
    job.reports["order"] = {node.name: i for i, node in enumerate(model.graph.node)}
    return job


def _opened_note(replaced: Mapping[str, str]) -> str:
    counts: Dict[str, int] = {}
    for op in replaced.values():
        counts[op] = counts.get(op, 0) + 1
    parts = [f"{n} {op} into {FUSED_RULES[op].becomes}" for op, n in counts.items()]
    return "opened up fused ops so their weights can be quantized: " + ", ".join(parts)


def _write(job: QuantizeJob, passes: List[MethodPass], external_data: Optional[bool]) -> onnx.ModelProto:
    """The output model, written atomically: streamed by the pass that writes (GGML), else
    the prepared model copied through the writer."""
    model = job.model
    if external_data is None:
        weights = sum(tensor_nbytes(t) for t in model.graph.initializer)
        external_data = any(is_external(t) for t in model.graph.initializer) or weights > EXTERNAL_DATA_THRESHOLD
    _report_kept(job)
    with ModelWriter(job.output_path, external_data=external_data) as writer:
        written = None
        for p in passes:
            written = p.write(job, writer) or written
        if written is None:
            written = with_initializers(model, [writer.copy_tensor(t, job.base_dir) for t in model.graph.initializer])
        set_metadata(written, job.metadata)
        writer.write(written)
    return written


def _write_portable(job: QuantizeJob, passes: List[MethodPass], external_data: Optional[bool]) -> onnx.ModelProto:
    """The GGML model to an onnxq temporary file beside the output, then converted into the
    output (:func:`~onnxq.ggml.portable_rewrite.convert_model`); the temporary is removed
    whatever happens. Records both sizes for the report."""
    final = job.output_path
    tmp = os.path.join(os.path.dirname(final), temp_name(os.path.basename(final)))
    job.output_path = tmp
    try:
        ggml_model = _write(job, passes, external_data)
        job.reports["ggml_bytes"] = file_bytes(tmp, ggml_model)
        convert_model(tmp, final, ops=job.options.portable, external_data=external_data,
                      progress=job.options.progress)
    finally:
        job.output_path = final
        for path in (tmp, external_data_path(tmp)):
            if os.path.exists(path):
                os.remove(path)
    return load_model(final)


def _report_kept(job: QuantizeJob) -> None:
    """LayerResults (and skipped entries) of the sites the plan keeps in float; a float
    table read by two sites counts once."""
    owner: Dict[str, str] = {}
    sites = {s.name: s for s in [*job.analysis.linear, *job.analysis.embeddings]}
    order = job.reports["order"]
    for d in sorted(job.plan.by_kind(KEEP), key=lambda d: order.get(d.site, len(order))):
        site = sites[d.site]
        is_emb = d.kind == "embedding"
        weight = site.table if is_emb else site.weight
        first = owner.setdefault(weight, site.name)
        job.layers.append(LayerResult(
            name=site.name, kind=d.kind, role="embedding" if is_emb else site.role, layer=site.layer, method=KEEP,
            K=site.K, N=site.N, source=d.source, note=d.note, shared_with=None if first == site.name else first,
        ))
        why = d.note or f"kept by recipe ({d.source})"
        job.skipped.append(Skipped(site.name, "Gather" if is_emb else site.op_type, why))


def _report(job: QuantizeJob, model: onnx.ModelProto, seconds: float) -> QuantizeReport:
    order = job.reports["order"]
    return QuantizeReport(
        input=job.input_path,
        output=job.output_path,
        recipe=job.recipe,
        layers=sorted(job.layers, key=lambda l: order.get(l.name, len(order))),
        skipped=job.skipped,
        warnings=job.warnings,
        input_bytes=job.reports["input_bytes"],
        output_bytes=file_bytes(job.output_path, model),
        seconds=seconds,
        imatrix_tensors=job.reports.get("imatrix_tensors", 0),
        smoothquant=job.reports.get("smoothquant"),
        awq=job.reports.get("awq"),
        notes=job.notes,
        modes=job.reports.get("modes"),
        portable_ops=job.options.portable,
        ggml_bytes=job.reports.get("ggml_bytes", 0),
    )
