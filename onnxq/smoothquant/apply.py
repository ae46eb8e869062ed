"""The SmoothQuant model pass: smooth, fold, quantize and rewrite linear sites.

``apply_smoothquant`` works on an in-memory ``ModelProto`` (changed in place) for any
subset of linear sites, so methods mix per layer (:func:`onnxq.quantize` runs it for
the sites a recipe gives to SmoothQuant, before the GGML pass rewrites its own).
``quantize_model`` (:mod:`.model`) is the file-to-file entry point.

Per group of sites sharing an input X (q/k/v after one norm, gate/up after one norm):

1. s from the calibrated per-channel max|X| and the max|W| over every weight of the group
   (alpha fixed, per group, or searched on held-out calibration rows);
2. 1/s folded into X's producer (:data:`onnxq.folding.RULES`) — then every site of the
   group gets W' = diag(s) W, quantized or not, so the function is unchanged — or, when
   nothing can be folded, an explicit Mul(X, 1/s) feeding only the quantized sites;
3. activation range of X' = X / s: exact from the per-channel extrema (MinMax) or, with a
   percentile, from a second calibration pass over the smoothed float model;
4. each quantized site replaced in the chosen format (:mod:`.emit`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Set, Tuple, Union

import numpy as np
import onnx
from onnx import TensorProto

from ..calibrate import CalibrationCache, TensorStats, calibrate
from ..errors import CalibrationError, ModelError
from ..folding import Fold, FoldContext, LinearOutputMulRule, NoFold, SiteWeights, find_fold, insert_explicit_mul
from ..graph_edit import prune_initializers, remove_nodes, topological_sort
from ..sites import LinearSite, ModelGraph, bias_vector, find_sites, input_groups
from .config import SmoothQuantConfig, resolve_alpha
from .emit import FORMATS, Emitter, SiteQuant
from .migration import MigrationAnalyzer, Metric, relative_mse, smoothing_scales, weight_row_absmax
from .quant import ActivationQParams, activation_qparams, quantize_weight
from .report import SiteReport, SmoothQuantReport

__all__ = ["apply_smoothquant", "required_tensors", "default_sites", "AlphaSpec"]

AlphaSpec = Union[None, float, str, Mapping[str, float]]


# ----------------------------------------------------------------------------- helpers


def default_sites(model: onnx.ModelProto) -> List[LinearSite]:
    """Every linear site except the LM head (and any site whose weight is shared)."""
    return [s for s in find_sites(model).linear if s.role != "head" and not s.weight_shared]


def _resolve_sites(model: onnx.ModelProto, sites: Optional[Iterable[Union[str, LinearSite]]]) -> List[LinearSite]:
    analysis = find_sites(model)
    by_name = {s.name: s for s in analysis.linear}
    if sites is None:
        return [s for s in analysis.linear if s.role != "head" and not s.weight_shared]
    out = []
    for s in sites:
        name = s.name if isinstance(s, LinearSite) else str(s)
        if name not in by_name:
            raise ModelError(f"{name!r} is not a linear site of the model (MatMul/Gemm with a constant 2-D weight)")
        out.append(by_name[name])
    return out


def required_tensors(model: onnx.ModelProto, sites: Optional[Iterable[Union[str, LinearSite]]] = None,
                     format: str = "qdq") -> List[str]:
    """Tensors ``apply_smoothquant`` needs statistics of: each group's input, plus each
    quantized site's output for the QOperator format (its output scale)."""
    targets = _resolve_sites(model, sites)
    names = list(dict.fromkeys(s.input for s in targets))
    if format == "qoperator":
        names += [s.output for s in targets]
    return names


def _opset(model: onnx.ModelProto, domain: str = "") -> Optional[int]:
    for op in model.opset_import:
        if op.domain in ((domain,) if domain else ("", "ai.onnx")):
            return int(op.version)
    return None




# ----------------------------------------------------------------------------- the pass


@dataclass
class _Group:
    x: str
    sites: List[LinearSite]
    targets: List[LinearSite]
    fold: Optional[Fold]
    #: why 1/s cannot be folded into X's producer (fold is None)
    no_fold: str = ""
    s: Optional[np.ndarray] = None
    alpha: Optional[float] = None
    x_smoothed: Optional[str] = None
    errors: Dict[str, tuple] = field(default_factory=dict)

    @property
    def folds_into_linear(self) -> bool:
        return self.fold is not None and isinstance(self.fold.rule, LinearOutputMulRule)


@dataclass
class _Run:
    """The state of one apply_smoothquant call, shared by its phases."""

    model: onnx.ModelProto
    graph: ModelGraph
    stats: Mapping[str, TensorStats]
    config: SmoothQuantConfig
    format: str
    alpha: AlphaSpec
    metric: Metric
    weights: SiteWeights
    ctx: FoldContext
    report: SmoothQuantReport
    requested: Set[str]
    targets: Set[str]
    keep_float: Set[str]
    groups: List[_Group] = field(default_factory=list)
    fallback: Set[str] = field(default_factory=set)
    #: site -> c: its output became (X W + b) / c (a fold into its columns)
    output_divisor: Dict[str, np.ndarray] = field(default_factory=dict)
    ranges: Dict[str, Tuple[float, float]] = field(default_factory=dict)

    @property
    def static(self) -> bool:
        return self.format in ("qdq", "qoperator")


def apply_smoothquant(
    model: onnx.ModelProto,
    sites: Optional[Iterable[Union[str, LinearSite]]],
    stats: Mapping[str, TensorStats],
    config: Optional[SmoothQuantConfig] = None,
    format: str = "qdq",
    *,
    alpha: AlphaSpec = None,
    calibration_data: Optional[CalibrationCache] = None,
    base_dir: Optional[str] = None,
    metric: Metric = relative_mse,
    keep_float: Iterable[str] = (),
    keep_float_top: int = 0,
    progress: bool = False,
) -> SmoothQuantReport:
    """Smooth and quantize ``sites`` of ``model`` in place.

    Args:
        model: the model to rewrite (changed in place; pass a copy to keep the original).
        sites: names or ``LinearSite``s to quantize; None = every linear site but the LM
            head. Other sites sharing an input with them are smoothed in float when 1/s is
            folded into the shared producer, so the function stays the same.
        stats: calibration statistics of the float model for ``required_tensors(...)``
            (``onnxq.calibrate.calibrate``); samples (``sample_rows``) are needed for
            ``alpha="auto"`` and for the per-site error columns of the report.
        format: "qdq", "qoperator", "dynamic", or "none" (smoothing only, float model).
        alpha: None (config.alpha), a float, "auto" (per-group search over
            ``config.alpha_grid`` on held-out rows), or {group input or site name: alpha}.
        calibration_data: the calibration batches again, needed for a percentile clip
            (second pass over the smoothed float model).
        keep_float: site names to leave in float (still smoothed when that is free).
        keep_float_top: also keep float the this many sites with the largest simulated
            W8A8 error after smoothing (sensitivity fallback; needs samples).
    Returns:
        the report; ``report.folded`` lists (X, s) of every group whose 1/s went into X's
        producer (X now carries X / s, also for other consumers' statistics).
    """
    run = _start(model, sites, stats, config or SmoothQuantConfig(), format, alpha, metric, base_dir, keep_float)
    _make_groups(run)
    for g in run.groups:
        _choose_scales(run, g)
    if keep_float_top > 0 and format != "none":
        _keep_most_sensitive(run, keep_float_top)
    for g in run.groups:
        _apply_scales(run, g)
    quantized = {t.name for g in run.groups for t in g.targets} if format != "none" else set()
    # float sites (and, for the percentile pass, all sites) get their smoothed weights
    run.weights.write_back(run.ctx, skip=quantized if not (run.static and run.config.activation_percentile) else ())
    if run.static:
        _activation_ranges(run, calibration_data, base_dir, progress)
    site_bytes = _emit(run) if format != "none" else {}
    topological_sort(model)
    prune_initializers(model)
    _site_reports(run, quantized, site_bytes)
    return run.report


def _start(model: onnx.ModelProto, sites, stats, config: SmoothQuantConfig, format: str, alpha: AlphaSpec,
           metric: Metric, base_dir: Optional[str], keep_float: Iterable[str]) -> _Run:
    """Check the format against the model and collect the sites to quantize."""
    if format not in FORMATS + ("none",):
        raise ModelError(f"unknown SmoothQuant format {format!r}: expected one of {', '.join(FORMATS + ('none',))}")
    if format in ("qdq", "qoperator") and not config.quantize_activations:
        raise ModelError(f"format {format!r} quantizes activations statically; with quantize_activations=False use format 'dynamic'")
    if format == "qdq" and (_opset(model) or 0) < 13:
        raise ModelError(
            f"the model's default-domain opset is {_opset(model)}; QDQ with per-channel weights needs "
            "opset >= 13 (DequantizeLinear axis). Re-export with opset 13+ or use format 'qoperator'"
        )
    report = SmoothQuantReport(format=format)
    graph = ModelGraph(model)
    targets = _resolve_sites(model, sites)
    keep = set(keep_float)
    chosen = set()
    for t in targets:
        if graph.constant_dtype(t.weight) != TensorProto.FLOAT:
            report.notes.append(f"{t.name}: weight is not float32, left as is")
        elif t.name not in keep:
            chosen.add(t.name)
    weights = SiteWeights(model, graph, base_dir)
    return _Run(model, graph, stats, config, format, alpha, metric, weights, weights.context(find_sites(model).linear),
                report, {t.name for t in targets}, chosen, keep)


def _make_groups(run: _Run) -> None:
    """A group per input X with targets, with the fold of 1/s into X's producer (or None)."""
    for x, gsites in input_groups(find_sites(run.model).linear).items():
        gt = [s for s in gsites if s.name in run.targets]
        if not gt:
            continue
        if x not in run.stats:
            raise CalibrationError(
                f"no calibration statistics for tensor {x!r} (input of {gt[0].name}); calibrate "
                "the tensors listed by required_tensors()"
            )
        found = find_fold(run.ctx, x, gsites[0].K, [s.name for s in gsites])
        fold, why = (None, found.reason) if isinstance(found, NoFold) else (found, "")
        if (run.format == "qoperator" and fold is not None and isinstance(fold.rule, LinearOutputMulRule)
                and fold.extra.name in run.targets):
            # QOperator requantizes that site's output per tensor: scaling its columns by
            # 1/s (a spread of orders of magnitude) would wipe out its small channels
            fold, why = None, f"not folded into {fold.extra.name} (its QOperator output is requantized)"
        run.groups.append(_Group(x, gsites, gt, fold, why))
    # a fold into a linear site's output columns changes that site's weight, which the
    # site's own group needs for its s: do those groups first
    run.groups.sort(key=lambda g: 0 if g.folds_into_linear else 1)


def _choose_scales(run: _Run, g: _Group) -> None:
    """Phase 1 for one group: alpha (fixed or searched), s, and simulated errors."""
    st = run.stats[g.x]
    rows = st.rows_for_evaluation()
    ws = {s.name: run.weights.weight(s) for s in g.sites}
    spec = resolve_alpha(run.alpha, [g.x] + [s.name for s in g.sites], run.config)
    analyzer: Optional[MigrationAnalyzer] = None
    if rows is not None and rows.shape[0] > 0:
        analyzer = MigrationAnalyzer(run.config, run.metric)
        analyzer.add_stats(g.x, st, {s.name: ws[s.name] for s in g.targets})
    smoothing = run.config.migration_strength > 0.0
    if not smoothing:
        g.alpha, g.s = None, None
    elif spec == "auto":
        if analyzer is None:
            raise CalibrationError(f"alpha='auto' needs sampled activation rows of {g.x!r}: calibrate with sample_rows > 0")
        # no smoothing is a candidate; an explicit Mul costs run time, so then smoothing
        # must win by a margin
        choice = analyzer.find_optimal_alpha(
            [g.x], metric=run.metric, include_unsmoothed=True,
            min_gain=run.config.explicit_mul_min_gain if g.fold is None else 0.0)[g.x]
        run.report.alpha_search[g.x] = choice
        g.alpha = choice.alpha
    else:
        g.alpha = float(spec)
    if smoothing and g.alpha is not None:
        c = run.config
        g.s = smoothing_scales(st.absmax, weight_row_absmax(list(ws.values())), g.alpha, strength=c.migration_strength,
                               min_scale=c.min_scale, max_scale=c.max_scale, tiny=c.tiny)
        if g.folds_into_linear:
            g.fold.apply(run.ctx, g.s)  # cache only: later groups read the changed columns
            run.output_divisor[g.fold.extra.name] = g.s
    if analyzer is not None and run.format != "none":
        plain = analyzer.site_errors(g.x, None, run.metric)
        smooth = analyzer.site_errors(g.x, g.alpha, run.metric) if g.alpha is not None else plain
        g.errors = {n: (plain[n], smooth[n]) for n in plain}


def _keep_most_sensitive(run: _Run, count: int) -> None:
    """Sensitivity fallback: the ``count`` sites with the largest simulated error stay float."""
    ranked = sorted(((e[1], n) for g in run.groups for n, e in g.errors.items()), reverse=True)
    if not ranked:
        raise CalibrationError("keep_float_top needs sampled activation rows (calibrate with sample_rows > 0)")
    worst = {n for _, n in ranked[:count]}
    run.report.notes.append(f"kept float by sensitivity (largest simulated error): {', '.join(sorted(worst))}")
    for g in run.groups:
        g.targets = [t for t in g.targets if t.name not in worst]
    run.targets -= worst
    run.fallback = worst


def _apply_scales(run: _Run, g: _Group) -> None:
    """Phase 2 for one group: fold 1/s (or insert an explicit Mul) and scale the weights
    that now see X / s."""
    g.x_smoothed = g.x
    if g.s is None:
        return
    if not g.targets and not g.folds_into_linear:
        g.s, g.alpha = None, None  # nothing quantized here: smoothing would only cost
        return
    if g.fold is not None:
        if not g.folds_into_linear:
            g.fold.apply(run.ctx, g.s)
        for site in g.sites:
            run.weights.scale_rows(site, g.s)
        run.report.folded.append((g.x, g.s))
        return
    consumers = [run.graph.node(t.name) for t in g.targets]
    run.report.notes.append(f"{g.x}: explicit Mul: {g.no_fold}")
    g.x_smoothed = insert_explicit_mul(run.ctx, g.x, g.s, consumers, g.targets[0].name)
    for site in g.targets:
        run.weights.scale_rows(site, g.s)


def _activation_ranges(run: _Run, calibration_data: Optional[CalibrationCache], base_dir: Optional[str],
                       progress: bool) -> None:
    """Per-tensor range of each group's X' = X / s: exact from the per-channel extrema, or
    (with a percentile clip) from a second calibration pass over the smoothed model."""
    p = run.config.activation_percentile
    if p is not None and p < 100.0:
        if calibration_data is None:
            raise CalibrationError(
                "a percentile activation clip needs the calibration data again (calibration_data=...) "
                "to measure X / s on the smoothed model"
            )
        tensors = [g.x_smoothed for g in run.groups if g.targets]
        smoothed = calibrate(run.model, tensors, calibration_data, base_dir=base_dir, progress=progress)
        for g in run.groups:
            if g.targets:
                run.ranges[g.x] = smoothed[g.x_smoothed].range(p)
        return
    for g in run.groups:
        st = run.stats[g.x]
        s = g.s if g.s is not None else np.ones(st.channels, np.float32)
        run.ranges[g.x] = (float(np.min(st.channel_min / s)), float(np.max(st.channel_max / s)))


def _emit(run: _Run) -> Dict[str, int]:
    """Replace every quantized site in the chosen format; returns its stored bytes per site."""
    model, config = run.model, run.config
    emitter = Emitter(model, run.format, config.weight_type, run.ctx.taken)
    if run.format == "dynamic" and _opset(model, "com.microsoft") is None:
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    replaced: List[str] = []
    for g in run.groups:
        act = None
        if run.static and g.targets:
            act = activation_qparams(*run.ranges[g.x], symmetric=config.activation_symmetric)
        for site in g.targets:
            qw = quantize_weight(run.weights.weight(site), config.per_channel, config.weight_qmax)
            out_act = None
            if run.format == "qoperator":
                out_act = _output_qparams(site, run.stats, bias_vector(run.graph, site, run.ctx.base_dir),
                                          run.output_divisor.get(site.name), config)
            emitter.emit(SiteQuant(site, g.x_smoothed, qw, run.weights.bias(site), act, out_act))
            replaced.extend(site.nodes)
    remove_nodes(model, replaced)
    return emitter.weight_bytes


def _site_reports(run: _Run, quantized: Set[str], site_bytes: Mapping[str, int]) -> None:
    for g in run.groups:
        act_q = None
        if run.static and g.targets:
            act_q = activation_qparams(*run.ranges[g.x], symmetric=run.config.activation_symmetric)
        fold_kind = "none" if g.s is None else (g.fold.kind if g.fold is not None else "explicit-mul")
        for site in g.sites:
            requested = site.name in run.requested
            smoothed_float = g.s is not None and g.fold is not None
            if not requested and not smoothed_float:
                continue
            q = site.name in quantized
            sees_smoothed = q or smoothed_float or (run.format == "none" and g.s is not None and requested)
            e = g.errors.get(site.name, (None, None))
            run.report.sites.append(SiteReport(
                name=site.name, input=g.x, role=site.role, layer=site.layer, quantized=q,
                alpha=g.alpha if sees_smoothed else None, fold=fold_kind if sees_smoothed else "none",
                activation_scale=act_q.scale if (q and act_q) else None,
                activation_zero_point=act_q.zero_point if (q and act_q) else None,
                error_plain=e[0], error_smoothed=e[1], note=_site_note(run, site.name, q, requested),
                nbytes=site_bytes.get(site.name, 0),
            ))


def _site_note(run: _Run, name: str, quantized: bool, requested: bool) -> str:
    if quantized or run.format == "none":
        return ""
    if name in run.fallback:
        return "kept float (sensitivity)"
    if name in run.keep_float:
        return "kept float (keep_float)"
    if requested:
        return "kept float"
    return "not a target: smoothed weight kept float"


def _output_qparams(site: LinearSite, stats: Mapping[str, TensorStats], bias: Optional[np.ndarray],
                    divisor: Optional[np.ndarray], config: SmoothQuantConfig) -> ActivationQParams:
    """Scale of the new X W (before the bias) for QLinearMatMul's output.

    ``stats`` are of the original output X W + b (``bias``: the original bias); when a
    fold divided this site's output columns by c (``divisor``) the new product is
    (X W) / c. Per-channel extrema make both corrections exact.
    """
    st = stats.get(site.output)
    if st is None:
        raise CalibrationError(
            f"format 'qoperator' needs calibration statistics of {site.output!r} (output of {site.name})"
        )
    if bias is None and divisor is None:
        lo, hi = st.range(config.activation_percentile)
    else:
        b = 0.0 if bias is None else bias
        c = 1.0 if divisor is None else divisor
        lo = float(np.min((st.channel_min - b) / c))
        hi = float(np.max((st.channel_max - b) / c))
    return activation_qparams(lo, hi, config.activation_symmetric)
