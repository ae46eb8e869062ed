"""The GGML weight-only pass: rewrite planned sites into onnxq's ``GgmlMatMul`` / ``GgmlGather``.

Rewrite rules (pattern -> replacement), one per site form found by :mod:`onnxq.sites`:

* ``MatMul(X, W)`` / ``MatMul(X, Transpose(W))`` [``+ Add(b)``] -> ``GgmlMatMul(X, blocks[, b])``
* ``Gemm(X, W, C; transB, alpha, beta)`` -> ``GgmlMatMul(X, blocks(alpha·W), beta·C)``
* ``Gather(table, ids)`` -> ``GgmlGather(blocks, ids)``

The replacement writes the covered nodes' final output tensor, so downstream nodes are
untouched; a Transpose that also feeds another node stays. Float16/double sites get a
Cast to float32 and back around the op. Sites that pack the same weight the same way
(a tied LM head and its embedding table, given one type) share one blocks initializer.

The rewrite streams: initializers are visited in their original order and each weight
is read (memory-mapped when external), packed row chunk by row chunk, and handed to a
:class:`~onnxq.modelio.ModelWriter` before the next is touched, so peak memory stays near
one tensor plus its blocks. Float initializers no node uses any more are dropped.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple

import numpy as np
import onnx
from onnx import NodeProto, TensorProto, helper

from ..errors import ModelError
from ..formats import row_bytes
from ..graph_edit import names_read, unique_name
from ..modelio import with_initializers
from ..plan import GGML, OP_MODES, Plan
from ..report import LayerResult
from ..sites import Analysis, EmbeddingSite, LinearSite, ModelGraph, Skipped, bias_vector
from .nodes import make_ggml_gather_node, make_ggml_matmul_node, onnxq_opset

#: float32 bytes of weight rows packed per codec call (bounds the temporary float copy)
CHUNK_BYTES = 64 << 20


@dataclass
class PassResult:
    model: onnx.ModelProto
    layers: List[LayerResult] = field(default_factory=list)
    skipped: List[Skipped] = field(default_factory=list)


@dataclass
class _Pack:
    """One blocks initializer: a weight packed one way, used by one or more sites."""

    key: tuple
    name: str
    weight: str
    rows_stored: bool  # True: the stored weight is [N, K] already (Transpose'd use or embedding table)
    qtype: str
    tail: Optional[str]
    alpha: float
    K: int
    N: int
    sites: List[str] = field(default_factory=list)
    imatrix_inputs: List[str] = field(default_factory=list)
    nbytes: int = 0


Quantizer = Callable[[str, Optional[str], np.ndarray, Optional[np.ndarray]], np.ndarray]


def default_quantizer(threads: Optional[int] = None) -> Quantizer:
    """Pack float32 rows ``[R, K]`` with onnxq's codecs -> uint8 ``[R, row_bytes]``."""
    from .codec import GGMLQuantizer

    cache: Dict[Tuple[str, Optional[str]], object] = {}

    def quantize(qtype: str, tail: Optional[str], rows: np.ndarray, imatrix: Optional[np.ndarray]) -> np.ndarray:
        key = (qtype, tail)
        q = cache.get(key)
        if q is None:
            # tail None: no tail blocks (K a multiple of 256, a 32-element type, or padded)
            q = cache[key] = GGMLQuantizer(qtype, tail_type=tail, num_threads=threads)
        return np.asarray(q.quantize(rows, imatrix=imatrix).data)

    return quantize


def _pack_name(weight: str, qtype: str, tail: Optional[str], rows_stored: bool, alpha: float, taken: Set[str]) -> str:
    base = f"{weight}.{qtype.lower()}" + (f"_{tail.lower()}" if tail else "")
    if alpha != 1.0:
        base += ".scaled"
    return unique_name(None, base, taken, sep=".")


def _eliminate_dead(nodes: List[NodeProto], graph_outputs: Set[str], keep_inputs: Set[str]) -> List[NodeProto]:
    """Drop nodes none of whose outputs is read (e.g. a Transpose whose MatMuls were all
    rewritten), repeatedly; subgraph reads count as reads."""
    while True:
        used: Set[str] = set(graph_outputs) | keep_inputs | names_read(nodes)
        kept = [n for n in nodes if any(o and o in used for o in n.output)]
        if len(kept) == len(nodes):
            return kept
        nodes = kept


def _float_type(graph: ModelGraph, name: str) -> int:
    return graph.constant_dtype(name) or TensorProto.FLOAT


@dataclass
class _Rewrite:
    """The state of one run of the pass, shared by its phases."""

    model: onnx.ModelProto
    graph: ModelGraph
    plan: Plan
    base_dir: Optional[str]
    linear: Dict[str, LinearSite]
    embeddings: Dict[str, EmbeddingSite]
    taken: Set[str]
    packs: Dict[tuple, _Pack] = field(default_factory=dict)
    site_pack: Dict[str, _Pack] = field(default_factory=dict)
    #: anchor node name -> the nodes that replace it (the MatMul / Gemm / Gather of a site)
    replacement: Dict[str, List[NodeProto]] = field(default_factory=dict)
    removed: Set[str] = field(default_factory=set)
    #: blocks initializer name -> new float32 biases to write right after it
    new_biases: Dict[str, List[Tuple[str, np.ndarray]]] = field(default_factory=dict)

    def site(self, name: str):
        site = self.linear.get(name) or self.embeddings.get(name)
        if site is None:
            raise ModelError(f"plan names site {name!r}, which the analysis does not have")
        return site

    def ggml_decisions(self):
        return [d for d in self.plan.decisions if d.method.kind == GGML]


def run_ggml_pass(
    model: onnx.ModelProto,
    analysis: Analysis,
    plan: Plan,
    writer,
    *,
    base_dir: Optional[str] = None,
    imatrix: Optional[Mapping[str, np.ndarray]] = None,
    quantizer: Optional[Quantizer] = None,
    skipped: Optional[Sequence[Skipped]] = None,
    progress: bool = True,
) -> PassResult:
    """Rewrite every site the plan gives a GGML type; returns the new model (initializers
    already converted by ``writer``, a :class:`~onnxq.modelio.ModelWriter`) and a per-site
    report of the GGML sites. ``model`` is not modified. ``imatrix`` maps a site's input
    tensor name to the per-column mean of x² (length K). ``skipped``: what analysis
    passed over (default ``analysis.skipped``), carried into the result."""
    taken: Set[str] = {t.name for t in model.graph.initializer} | {o for n in model.graph.node for o in n.output}
    taken |= {i.name for i in model.graph.input}
    job = _Rewrite(model, ModelGraph(model), plan, base_dir, {s.name: s for s in analysis.linear},
                   {s.name: s for s in analysis.embeddings}, taken)
    for d in plan.decisions:
        job.site(d.site)  # every decision names a site of the analysis
    _group_packs(job)
    _build_nodes(job)
    new_nodes = _new_node_list(job)
    out_inits = _stream_initializers(job, new_nodes, writer, quantizer or default_quantizer(), imatrix, progress)
    result = PassResult(model=_assemble(job, new_nodes, out_inits),
                        skipped=list(analysis.skipped if skipped is None else skipped))
    _report(job, result)
    return result


def _group_packs(job: _Rewrite) -> None:
    """Phase 1: one pack (blocks initializer) per weight packed one way; sites that pack
    the same weight the same way (a tied head and its table) share it."""
    for decision in job.ggml_decisions():
        site = job.site(decision.site)
        m = decision.method
        if isinstance(site, EmbeddingSite):
            weight, rows_stored, alpha = site.table, not site.table_transposed, 1.0
        else:
            weight, rows_stored, alpha = site.weight, site.weight_transposed, site.gemm_alpha
        key = (weight, rows_stored, m.qtype, m.tail_type, alpha)
        pack = job.packs.get(key)
        if pack is None:
            pack = job.packs[key] = _Pack(
                key, _pack_name(weight, m.qtype, m.tail_type, rows_stored, alpha, job.taken), weight, rows_stored,
                m.qtype, m.tail_type, alpha, site.K, site.N,
            )
        pack.sites.append(site.name)
        if isinstance(site, LinearSite) and site.input not in pack.imatrix_inputs:
            pack.imatrix_inputs.append(site.input)
        job.site_pack[site.name] = pack


def _build_nodes(job: _Rewrite) -> None:
    """Phase 2: the GgmlGather / GgmlMatMul (with Casts around non-float32 sites) of each site."""
    for decision in job.ggml_decisions():
        site = job.site(decision.site)
        nodes = _gather_nodes(job, site, decision.method) if isinstance(site, EmbeddingSite) else \
            _matmul_nodes(job, site, decision.method)
        job.removed.update(site.nodes if isinstance(site, LinearSite) else (site.name,))
        # the main node (MatMul / Gemm / Gather) is the anchor: its input is ready there
        job.replacement[site.name] = nodes


def _gather_nodes(job: _Rewrite, site: EmbeddingSite, m) -> List[NodeProto]:
    dtype = _float_type(job.graph, site.table)
    out = site.output if dtype == TensorProto.FLOAT else f"{site.output}.f32"
    made = make_ggml_gather_node(site.name, site.indices, out, job.site_pack[site.name].name, quant_type=m.qtype,
                                 K=site.K, N=site.N, tail_type=m.tail_type)
    nodes = [made.node]
    if dtype != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", [out], [site.output], to=dtype, name=f"{site.name}/cast_out"))
    return nodes


def _matmul_nodes(job: _Rewrite, site: LinearSite, m) -> List[NodeProto]:
    pack = job.site_pack[site.name]
    dtype = _float_type(job.graph, site.weight)
    bias_name = _bias_input(job, site, pack) if site.bias is not None else None
    x, y = site.input, site.output
    nodes = []
    if dtype != TensorProto.FLOAT:
        x, y = f"{site.name}/x.f32", f"{site.output}.f32"
        nodes.append(helper.make_node("Cast", [site.input], [x], to=TensorProto.FLOAT, name=f"{site.name}/cast_in"))
    if m.mode not in OP_MODES:  # "auto" is resolved per layer by the pass before the rewrite
        raise ModelError(f"layer {site.name!r}: mode {m.mode!r} was not resolved to one of {', '.join(OP_MODES)}")
    made = make_ggml_matmul_node(site.name, x, y, pack.name, quant_type=m.qtype, K=site.K, N=site.N, bias=bias_name,
                                 tail_type=m.tail_type, mode=m.mode)
    nodes.append(made.node)
    if dtype != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", [y], [site.output], to=dtype, name=f"{site.name}/cast_out"))
    return nodes


def _new_node_list(job: _Rewrite) -> List[NodeProto]:
    nodes: List[NodeProto] = []
    for node in job.model.graph.node:
        if node.name in job.replacement:
            nodes.extend(job.replacement[node.name])
        elif node.name not in job.removed:
            nodes.append(node)
    return _eliminate_dead(nodes, {o.name for o in job.model.graph.output}, set())


def _stream_initializers(job: _Rewrite, new_nodes: List[NodeProto], writer, quantize: Quantizer,
                         imatrix: Optional[Mapping[str, np.ndarray]], progress: bool) -> List[TensorProto]:
    """Phase 3: the initializers in their original order, each pack right where its float
    weight stood, streamed through the writer (one float weight in memory at a time)."""
    used: Set[str] = {o.name for o in job.model.graph.output} | names_read(new_nodes)
    input_names = {i.name for i in job.model.graph.input}
    packs_by_weight: Dict[str, List[_Pack]] = {}
    for pack in job.packs.values():
        packs_by_weight.setdefault(pack.weight, []).append(pack)
    bar = _progress(sum(p.K * p.N for p in job.packs.values()), progress)
    out: List[TensorProto] = []

    def emit(pack: _Pack) -> None:
        blocks = _pack_weight(job.graph, pack, job.base_dir, quantize, _pack_imatrix(pack, imatrix), bar)
        pack.nbytes = int(blocks.nbytes)
        out.append(writer.tensor_proto(pack.name, blocks))
        for name, value in job.new_biases.get(pack.name, ()):
            out.append(writer.tensor_proto(name, value))

    try:
        for tensor in job.model.graph.initializer:
            for pack in packs_by_weight.get(tensor.name, ()):
                emit(pack)
            if tensor.name in used or tensor.name in input_names:
                out.append(writer.copy_tensor(tensor, job.base_dir))
        for pack in job.packs.values():  # weights that are Constant nodes, not initializers
            if pack.nbytes == 0:
                emit(pack)
    finally:
        bar.close()
    return out


def _assemble(job: _Rewrite, new_nodes: List[NodeProto], inits: List[TensorProto]) -> onnx.ModelProto:
    """Phase 4: the new model: nodes, initializers, value_info of tensors that still exist."""
    new_model = with_initializers(job.model, inits)
    del new_model.graph.node[:]
    new_model.graph.node.extend(new_nodes)
    produced = {o for n in new_nodes for o in n.output} | {i.name for i in job.model.graph.input}
    produced |= {t.name for t in inits}
    kept_vi = [vi for vi in new_model.graph.value_info if vi.name in produced]
    del new_model.graph.value_info[:]
    new_model.graph.value_info.extend(kept_vi)
    if job.packs and not any(op.domain == onnxq_opset().domain for op in new_model.opset_import):
        new_model.opset_import.append(onnxq_opset())
    return new_model


def _report(job: _Rewrite, result: PassResult) -> None:
    """Phase 5: a LayerResult per GGML site in graph order (shared blocks counted once)."""
    first_site: Dict[str, str] = {}
    position = {node.name: i for i, node in enumerate(job.model.graph.node)}
    for decision in sorted(job.ggml_decisions(), key=lambda d: position.get(d.site, len(position))):
        site = job.site(decision.site)
        is_emb = isinstance(site, EmbeddingSite)
        pack = job.site_pack[site.name]
        layer = LayerResult(
            name=site.name, kind="embedding" if is_emb else "linear", role="embedding" if is_emb else site.role,
            layer=site.layer, method=decision.method.label, K=site.K, N=site.N, source=decision.source,
            note=decision.note, tail_type=decision.method.tail_type,
            mode=None if is_emb else decision.method.mode, packed_bytes=pack.nbytes,
            mode_reason=None if is_emb else decision.mode_reason,
        )
        owner = first_site.setdefault(pack.name, site.name)
        if owner == site.name:
            layer.nbytes = pack.nbytes
        else:
            layer.shared_with = owner
        result.layers.append(layer)


def _bias_input(job: _Rewrite, site: LinearSite, pack: _Pack) -> str:
    """The bias tensor the op reads: the original initializer when it already is float32
    [N] (and beta = 1), else a new float32 [N] initializer written after the blocks."""
    graph = job.graph
    init = graph.initializer(site.bias)
    if (
        init is not None
        and site.gemm_beta == 1.0
        and init.data_type == TensorProto.FLOAT
        and tuple(init.dims) == (site.N,)
        and site.bias not in graph.graph_inputs
    ):
        return site.bias
    value = bias_vector(graph, site, job.base_dir)
    name = unique_name(None, f"{site.bias}.f32" if site.gemm_beta == 1.0 else f"{site.bias}.beta", job.taken, sep=".")
    job.new_biases.setdefault(pack.name, []).append((name, np.ascontiguousarray(value, dtype=np.float32)))
    return name


def _pack_imatrix(pack: _Pack, imatrix: Optional[Mapping[str, np.ndarray]]) -> Optional[np.ndarray]:
    if not imatrix:
        return None
    found = [np.asarray(imatrix[name], dtype=np.float32) for name in pack.imatrix_inputs if name in imatrix]
    if not found:
        return None
    for name, values in zip(pack.imatrix_inputs, found):
        if values.shape != (pack.K,):
            raise ModelError(
                f"importance matrix for {name!r} has {values.size} columns, the layer's weight "
                f"{pack.weight!r} has K={pack.K} (was the imatrix computed on another model?)"
            )
    # several sites reading one weight through different inputs: average their importance
    return found[0] if len(found) == 1 else np.mean(found, axis=0, dtype=np.float64).astype(np.float32)


def _pack_weight(graph: ModelGraph, pack: _Pack, base_dir, quantize: Quantizer, imatrix, bar) -> np.ndarray:
    source = graph.constant_value(pack.weight, base_dir)  # memory-mapped when external
    K, N = pack.K, pack.N
    expected = row_bytes(pack.qtype, K, pack.tail)
    out = np.empty((N, expected), dtype=np.uint8)
    step = max(1, CHUNK_BYTES // (4 * K))
    alpha = np.float32(pack.alpha)
    for n0 in range(0, N, step):
        n1 = min(N, n0 + step)
        part = source[n0:n1] if pack.rows_stored else source[:, n0:n1].T
        rows = np.ascontiguousarray(part, dtype=np.float32)
        if pack.alpha != 1.0:
            rows = rows * alpha
        if not np.all(np.isfinite(rows)):
            raise ModelError(f"weight {pack.weight!r} has NaN or infinite values: cannot quantize it")
        blocks = quantize(pack.qtype, pack.tail, rows, imatrix)
        if blocks.shape != (n1 - n0, expected) or blocks.dtype != np.uint8:
            raise ModelError(
                f"codec returned {blocks.dtype} {list(blocks.shape)} for {pack.weight!r} "
                f"({pack.qtype}, K={K}): expected uint8 [{n1 - n0}, {expected}]"
            )
        out[n0:n1] = blocks
        bar.update((n1 - n0) * K)
    del source
    return out


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="quantizing", unit="w", unit_scale=True, disable=not enabled or total == 0,
                leave=False, dynamic_ncols=True)
