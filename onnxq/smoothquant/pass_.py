"""The SmoothQuant model pass: smooth, fold, quantize and rewrite linear sites.

``apply_smoothquant`` works on an in-memory ``ModelProto`` (changed in place) for any
subset of linear sites, so other passes can mix methods per layer (the ggml pass calls it
for the sites a recipe gives to SmoothQuant, before rewriting its own). ``quantize_model``
is the file-to-file entry point: load, calibrate, apply, save.

Per group of sites sharing an input X (q/k/v after one norm, gate/up after one norm):

1. s from the calibrated per-channel max|X| and the max|W| over every weight of the group
   (alpha fixed, per group, or searched on held-out calibration rows);
2. 1/s folded into X's producer (``folding.RULES``) — then every site of the group gets
   W' = diag(s) W, quantized or not, so the function is unchanged — or, when nothing can
   be folded, an explicit Mul(X, 1/s) feeding only the quantized sites;
3. activation range of X' = X / s: exact from the per-channel extrema (MinMax) or, with a
   percentile, from a second calibration pass over the smoothed float model;
4. each quantized site replaced in the chosen format (``emit``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np
import onnx
from onnx import TensorProto

from ..analyze import LinearSite, ModelGraph, bias_vector, find_sites, input_groups, weight_matrix_kn
from ..calibrate import CalibrationCache, TensorStats, calibrate
from ..errors import CalibrationError, ModelError
from ..graph_edit import all_names, prune_initializers, remove_nodes, topological_sort
from .config import SmoothQuantConfig
from .emit import FORMATS, Emitter, SiteQuant
from .folding import Fold, FoldContext, LinearOutputMulRule, insert_explicit_mul, match_fold
from .migration import AlphaChoice, MigrationAnalyzer, Metric, relative_mse, smoothing_scales, weight_row_absmax
from .quant import ActivationQParams, activation_qparams, quantize_weight

__all__ = [
    "SiteReport",
    "SmoothQuantReport",
    "apply_smoothquant",
    "quantize_model",
    "required_tensors",
    "default_sites",
]

AlphaSpec = Union[None, float, str, Mapping[str, float]]


@dataclass
class SiteReport:
    """What happened to one linear site."""

    name: str
    input: str
    role: str
    layer: Optional[int]
    quantized: bool
    alpha: Optional[float]
    fold: str
    activation_scale: Optional[float] = None
    activation_zero_point: Optional[int] = None
    error_plain: Optional[float] = None
    error_smoothed: Optional[float] = None
    note: str = ""


@dataclass
class SmoothQuantReport:
    """Result of a SmoothQuant pass: per-site rows, the alpha search and notes."""

    format: str
    sites: List[SiteReport] = field(default_factory=list)
    alpha_search: Dict[str, AlphaChoice] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    output_path: Optional[str] = None

    @property
    def quantized(self) -> List[SiteReport]:
        return [s for s in self.sites if s.quantized]

    def to_dict(self) -> Dict[str, Any]:
        return {
            "format": self.format,
            "output_path": self.output_path,
            "sites": [asdict(s) for s in self.sites],
            "alpha_search": {
                k: {"alpha": v.alpha, "error": v.error, "unsmoothed_error": v.unsmoothed_error,
                    "errors": {str(a): e for a, e in v.errors.items()}}
                for k, v in self.alpha_search.items()
            },
            "notes": list(self.notes),
        }

    def to_text(self) -> str:
        """A table: one row per site with alpha, fold and simulated W8A8 errors."""
        head = f"{'site':60s} {'role':5s} {'q':1s} {'alpha':>5s} {'err plain':>10s} {'err smooth':>10s}  fold"
        lines = [f"SmoothQuant ({self.format}): {len(self.quantized)} of {len(self.sites)} sites quantized", head]
        for s in self.sites:
            a = "-" if s.alpha is None else f"{s.alpha:.2f}"
            ep = "-" if s.error_plain is None else f"{s.error_plain:.2e}"
            es = "-" if s.error_smoothed is None else f"{s.error_smoothed:.2e}"
            lines.append(f"{s.name[-60:]:60s} {s.role[:5]:5s} {'y' if s.quantized else 'n'} {a:>5s} {ep:>10s} {es:>10s}  {s.fold}"
                         + (f"  ({s.note})" if s.note else ""))
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


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
    s: Optional[np.ndarray] = None
    alpha: Optional[float] = None
    x_smoothed: Optional[str] = None
    errors: Dict[str, tuple] = field(default_factory=dict)


class SiteWeights:
    """Float weights [K, N] and biases of the sites, read once, changed by folds, written
    back (in stored orientation) for sites that stay float."""

    def __init__(self, model: onnx.ModelProto, graph: ModelGraph, base_dir: Optional[str]) -> None:
        self.model, self.graph, self.base_dir = model, graph, base_dir
        self.w: Dict[str, np.ndarray] = {}
        self.b: Dict[str, Optional[np.ndarray]] = {}
        self.dirty: Dict[str, LinearSite] = {}

    def weight(self, site: LinearSite) -> np.ndarray:
        if site.name not in self.w:
            self.w[site.name] = weight_matrix_kn(self.graph, site, self.base_dir)
        return self.w[site.name]

    def bias(self, site: LinearSite) -> Optional[np.ndarray]:
        if site.name not in self.b:
            self.b[site.name] = bias_vector(self.graph, site, self.base_dir)
        return self.b[site.name]

    def set(self, site: LinearSite, w: np.ndarray, b: Optional[np.ndarray]) -> None:
        self.w[site.name] = np.asarray(w, np.float32)
        self.b[site.name] = None if b is None else np.asarray(b, np.float32)
        self.dirty[site.name] = site

    def write_back(self, ctx: FoldContext, skip: Iterable[str] = ()) -> None:
        """Store changed float weights/biases of every site not in ``skip`` in the model."""
        skip = set(skip)
        for name, site in list(self.dirty.items()):
            if name in skip:
                continue
            node = self.graph.node(site.name)
            w = self.w[name]
            if site.gemm_alpha != 1.0:
                w = w / np.float32(site.gemm_alpha)
            stored = w.T if site.weight_transposed else w
            if site.op_type == "MatMul" and site.weight_transposed:
                holder = self.graph.producer(node.input[1])
                ctx.replace_input(holder, 0, np.ascontiguousarray(stored))
            else:
                ctx.replace_input(node, 1, np.ascontiguousarray(stored))
            b = self.b.get(name)
            if site.bias is not None and b is not None:
                if site.gemm_beta != 1.0:
                    b = b / np.float32(site.gemm_beta)
                if site.op_type == "Gemm":
                    shape = self.graph.constant_shape(site.bias)
                    ctx.replace_input(node, 2, b.reshape(shape) if shape and int(np.prod(shape)) == b.size else b)
                else:
                    add = self.graph.node(site.nodes[-1])
                    idx = list(add.input).index(site.bias)
                    shape = self.graph.constant_shape(site.bias)
                    ctx.replace_input(add, idx, b.reshape(shape) if shape else b)
            del self.dirty[name]


def _resolve_alpha(alpha: AlphaSpec, x: str, sites: Sequence[LinearSite], config: SmoothQuantConfig) -> Union[float, str]:
    if alpha is None:
        return float(config.alpha)
    if isinstance(alpha, str):
        if alpha != "auto":
            try:
                return float(alpha)
            except ValueError:
                raise ModelError(f"alpha must be a number in [0, 1] or 'auto', got {alpha!r}") from None
        return "auto"
    if isinstance(alpha, Mapping):
        for key in [x] + [s.name for s in sites]:
            if key in alpha:
                return float(alpha[key])
        return float(config.alpha)
    return float(alpha)


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
    """
    config = config or SmoothQuantConfig()
    if format not in FORMATS + ("none",):
        raise ModelError(f"unknown SmoothQuant format {format!r}: expected one of {', '.join(FORMATS + ('none',))}")
    static = format in ("qdq", "qoperator")
    if static and not config.quantize_activations:
        raise ModelError(f"format {format!r} quantizes activations statically; with quantize_activations=False use format 'dynamic'")
    if format == "qdq" and (_opset(model) or 0) < 13:
        raise ModelError(
            f"the model's default-domain opset is {_opset(model)}; QDQ with per-channel weights needs "
            "opset >= 13 (DequantizeLinear axis). Re-export with opset 13+ or use format 'qoperator'"
        )
    report = SmoothQuantReport(format=format)
    analysis = find_sites(model)
    graph = ModelGraph(model)
    targets = _resolve_sites(model, sites)
    keep_float = set(keep_float)
    requested_names = {t.name for t in targets}
    fallback: set = set()
    target_names = set()
    for t in targets:
        if graph.constant_dtype(t.weight) != TensorProto.FLOAT:
            report.notes.append(f"{t.name}: weight is not float32, left as is")
        elif t.name in keep_float:
            continue
        else:
            target_names.add(t.name)

    weights = SiteWeights(model, graph, base_dir)
    ctx = FoldContext(
        model=model,
        graph=graph,
        sites_by_output={s.output: s for s in analysis.linear},
        float_weights=weights.weight,
        float_biases=weights.bias,
        set_site_weight=weights.set,
        base_dir=base_dir,
        taken=all_names(model),
    )

    groups: List[_Group] = []
    for x, gsites in input_groups(analysis.linear).items():
        gt = [s for s in gsites if s.name in target_names]
        if not gt:
            continue
        if x not in stats:
            raise CalibrationError(
                f"no calibration statistics for tensor {x!r} (input of {gt[0].name}); calibrate "
                "the tensors listed by required_tensors()"
            )
        fold = match_fold(ctx, x, gsites[0].K, [s.name for s in gsites])
        if (format == "qoperator" and fold is not None and isinstance(fold.rule, LinearOutputMulRule)
                and fold.extra.name in target_names):
            # QOperator requantizes that site's output per tensor: scaling its columns by
            # 1/s (a spread of orders of magnitude) would wipe out its small channels
            report.notes.append(f"{x}: not folded into {fold.extra.name} (its QOperator output is requantized); explicit Mul")
            fold = None
        groups.append(_Group(x, gsites, gt, fold))
    # a fold into a linear site's output columns changes that site's weight, which the
    # site's own group needs for its s: do those groups first
    groups.sort(key=lambda g: 0 if g.fold is not None and isinstance(g.fold.rule, LinearOutputMulRule) else 1)

    # phase 1: s per group (alpha fixed or searched), simulated errors
    output_divisor: Dict[str, np.ndarray] = {}  # site -> c: its output became (X W + b) / c
    smoothing = config.migration_strength > 0.0
    for g in groups:
        st = stats[g.x]
        rows = st.rows_for_evaluation()
        ws = {s.name: weights.weight(s) for s in g.sites}
        spec = _resolve_alpha(alpha, g.x, g.sites, config)
        analyzer: Optional[MigrationAnalyzer] = None
        if rows is not None and rows.shape[0] > 0:
            analyzer = MigrationAnalyzer(config, metric)
            analyzer.add_stats(g.x, st, {s.name: ws[s.name] for s in g.targets})
        if not smoothing:
            g.alpha, g.s = None, None
        elif spec == "auto":
            if analyzer is None:
                raise CalibrationError(
                    f"alpha='auto' needs sampled activation rows of {g.x!r}: calibrate with sample_rows > 0"
                )
            # no smoothing is a candidate; an explicit Mul costs run time, so then smoothing
            # must win by a margin
            choice = analyzer.find_optimal_alpha(
                [g.x], metric=metric, include_unsmoothed=True,
                min_gain=config.explicit_mul_min_gain if g.fold is None else 0.0)[g.x]
            report.alpha_search[g.x] = choice
            g.alpha = choice.alpha
        else:
            g.alpha = float(spec)
        if smoothing and g.alpha is not None:
            g.s = smoothing_scales(
                st.absmax, weight_row_absmax(list(ws.values())), g.alpha, strength=config.migration_strength,
                min_scale=config.min_scale, max_scale=config.max_scale, tiny=config.tiny,
            )
            if g.fold is not None and isinstance(g.fold.rule, LinearOutputMulRule):
                g.fold.apply(ctx, g.s)  # cache only: later groups read the changed columns
                output_divisor[g.fold.extra.name] = g.s
        if analyzer is not None and format != "none":
            plain = analyzer.site_errors(g.x, None, metric)
            smooth = analyzer.site_errors(g.x, g.alpha, metric) if g.alpha is not None else plain
            g.errors = {n: (plain[n], smooth[n]) for n in plain}

    # sensitivity fallback: the worst sites stay float
    if keep_float_top > 0 and format != "none":
        ranked = sorted(((e[1], n) for g in groups for n, e in g.errors.items()), reverse=True)
        if not ranked:
            raise CalibrationError("keep_float_top needs sampled activation rows (calibrate with sample_rows > 0)")
        worst = {n for _, n in ranked[:keep_float_top]}
        report.notes.append(f"kept float by sensitivity (largest simulated error): {', '.join(sorted(worst))}")
        for g in groups:
            g.targets = [t for t in g.targets if t.name not in worst]
        target_names -= worst
        fallback = worst

    # phase 2: fold / explicit Mul, scale the weights that now see X / s
    for g in groups:
        x_smoothed = g.x
        if g.s is not None:
            linear_out = g.fold is not None and isinstance(g.fold.rule, LinearOutputMulRule)
            if not g.targets and not linear_out:
                g.s, g.alpha = None, None  # nothing quantized here: smoothing would only cost
            elif g.fold is not None:
                if not linear_out:
                    g.fold.apply(ctx, g.s)
                for site in g.sites:
                    weights.set(site, weights.weight(site) * g.s[:, None], weights.bias(site))
            else:
                consumers = [graph.node(t.name) for t in g.targets]
                x_smoothed = insert_explicit_mul(ctx, g.x, g.s, consumers, g.targets[0].name)
                for site in g.targets:
                    weights.set(site, weights.weight(site) * g.s[:, None], weights.bias(site))
        g.x_smoothed = x_smoothed

    quantized = {t.name for g in groups for t in g.targets} if format != "none" else set()
    # float sites (and, for the percentile pass, all sites) get their smoothed weights
    weights.write_back(ctx, skip=quantized if not (static and config.activation_percentile) else ())

    # activation ranges of X' per group
    ranges: Dict[str, tuple] = {}
    if static:
        p = config.activation_percentile
        if p is not None and p < 100.0:
            if calibration_data is None:
                raise CalibrationError(
                    "a percentile activation clip needs the calibration data again (calibration_data=...) "
                    "to measure X / s on the smoothed model"
                )
            tensors = [g.x_smoothed for g in groups if g.targets]
            smoothed_stats = calibrate(model, tensors, calibration_data, base_dir=base_dir, progress=progress)
            for g in groups:
                if g.targets:
                    ranges[g.x] = smoothed_stats[g.x_smoothed].range(p)
        else:
            for g in groups:
                st = stats[g.x]
                s = g.s if g.s is not None else np.ones(st.channels, np.float32)
                ranges[g.x] = (float(np.min(st.channel_min / s)), float(np.max(st.channel_max / s)))

    # emit
    if format != "none":
        emitter = Emitter(model, format, config.weight_type, ctx.taken)
        if format == "dynamic" and _opset(model, "com.microsoft") is None:
            model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
        replaced: List[str] = []
        for g in groups:
            act = None
            if static and g.targets:
                lo, hi = ranges[g.x]
                act = activation_qparams(lo, hi, config.activation_symmetric)
            for site in g.targets:
                qw = quantize_weight(weights.weight(site), config.per_channel, config.weight_qmax)
                out_act = None
                if format == "qoperator":
                    out_act = _output_qparams(site, stats, bias_vector(graph, site, base_dir),
                                              output_divisor.get(site.name), config)
                emitter.emit(SiteQuant(site, g.x_smoothed, qw, weights.bias(site), act, out_act))
                replaced.extend(site.nodes)
        remove_nodes(model, replaced)
    topological_sort(model)
    prune_initializers(model)

    for g in groups:
        act_q = None
        if static and g.targets:
            act_q = activation_qparams(*ranges[g.x], symmetric=config.activation_symmetric)
        fold_kind = "none" if g.s is None else (g.fold.kind if g.fold is not None else "explicit-mul")
        for site in g.sites:
            requested = site.name in requested_names
            smoothed_float = g.s is not None and g.fold is not None
            if not requested and not smoothed_float:
                continue
            q = site.name in quantized
            sees_smoothed = q or smoothed_float or (format == "none" and g.s is not None and requested)
            if q or format == "none":
                note = ""
            elif site.name in fallback:
                note = "kept float (sensitivity)"
            elif site.name in keep_float:
                note = "kept float (keep_float)"
            elif requested:
                note = "kept float"
            else:
                note = "not a target: smoothed weight kept float"
            e = g.errors.get(site.name, (None, None))
            report.sites.append(SiteReport(
                name=site.name, input=g.x, role=site.role, layer=site.layer, quantized=q,
                alpha=g.alpha if sees_smoothed else None, fold=fold_kind if sees_smoothed else "none",
                activation_scale=act_q.scale if (q and act_q) else None,
                activation_zero_point=act_q.zero_point if (q and act_q) else None,
                error_plain=e[0], error_smoothed=e[1], note=note,
            ))
    return report


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
    path / dict of arrays (leading axis = samples, batched by ``batch_size``). ``format``
    None means "qdq" (or "dynamic" when ``config.quantize_activations`` is False). The input
    file is never modified; the output is written atomically. Returns the report.

    ``keep_float_top=k`` leaves the k most sensitive sites in float: ranked by their
    simulated per-layer error (``sensitivity="simulated"``) or, with
    ``sensitivity="end-to-end"``, by how much the model's output error drops when each
    site's activation quantization is removed (one forward pass per site on
    ``sensitivity_batches`` calibration batches; see ``onnxq.smoothquant.sensitivity``).
    """
    from ..modelio import check_output_path, load_model, model_dir, save_model

    config = config or SmoothQuantConfig()
    if format is None:
        format = "qdq" if config.quantize_activations else "dynamic"
    out = check_output_path(input_path, output_path)
    model = load_model(input_path)
    base_dir = model_dir(input_path)
    cache = CalibrationCache(calibration_data, model, batch_size=batch_size,
                             max_samples=config.num_calibration_samples)
    tensors = required_tensors(model, sites, format)
    auto = alpha == "auto"
    holdout = 4 if auto and len(cache) >= 4 else 0
    stats = calibrate(model, tensors, cache, sample_rows=sample_rows, holdout_every=holdout,
                      base_dir=base_dir, progress=progress)
    keep_float = list(keep_float)
    notes: List[str] = []
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
