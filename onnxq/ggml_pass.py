"""The GGML weight-only pass: rewrite planned sites into onnxq's ``GgmlMatMul`` / ``GgmlGather``.

Rewrite rules (pattern -> replacement), one per site form found by :mod:`onnxq.analyze`:

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

from .analyze import Analysis, EmbeddingSite, LinearSite, ModelGraph, Skipped
from .errors import ModelError
from .ggml_ops import make_ggml_gather_node, make_ggml_matmul_node, onnxq_opset, row_bytes
from .graph_edit import names_read, unique_name
from .recipe import DEFAULT_MODE, GGML, Plan

#: float32 bytes of weight rows packed per codec call (bounds the temporary float copy)
CHUNK_BYTES = 64 << 20


@dataclass
class LayerResult:
    """What happened to one site."""

    name: str
    kind: str  # "linear" | "embedding"
    role: str
    layer: Optional[int]
    method: str  # "Q4_K", "keep", "smoothquant"
    K: int
    N: int
    tail_type: Optional[str] = None
    mode: Optional[str] = None
    #: bytes this site adds to the model (0 when it shares another site's blocks)
    nbytes: int = 0
    #: bytes of its blocks whether or not they are shared
    packed_bytes: int = 0
    shared_with: Optional[str] = None
    source: str = "default"
    note: Optional[str] = None

    @property
    def params(self) -> int:
        return self.K * self.N

    @property
    def bits_per_weight(self) -> Optional[float]:
        """Effective bits per weight of the stored blocks (tails and padding included)."""
        return 8.0 * self.packed_bytes / self.params if self.packed_bytes else None


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
    from .ggml import GGMLQuantizer

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
    report. ``model`` is not modified. ``imatrix`` maps a site's input tensor name to the
    per-column mean of x² (length K). ``skipped``: what analysis passed over (default
    ``analysis.skipped``); kept sites are added to it."""
    quantize = quantizer or default_quantizer()
    graph = ModelGraph(model)
    linear: Dict[str, LinearSite] = {s.name: s for s in analysis.linear}
    embeddings: Dict[str, EmbeddingSite] = {s.name: s for s in analysis.embeddings}
    result = PassResult(model=model, skipped=list(analysis.skipped if skipped is None else skipped))

    # ---- 1. group the GGML decisions into packs (one blocks initializer each)
    packs: Dict[tuple, _Pack] = {}
    site_pack: Dict[str, _Pack] = {}
    taken: Set[str] = {t.name for t in model.graph.initializer} | {o for n in model.graph.node for o in n.output}
    taken |= {i.name for i in model.graph.input}
    for decision in plan.decisions:
        site = linear.get(decision.site) or embeddings.get(decision.site)
        if site is None:
            raise ModelError(f"plan names site {decision.site!r}, which the analysis does not have")
        if decision.method.kind != GGML:
            continue
        m = decision.method
        if isinstance(site, EmbeddingSite):
            key = (site.table, True, m.qtype, m.tail_type, 1.0)
            weight, rows_stored, alpha = site.table, True, 1.0
        else:
            key = (site.weight, site.weight_transposed, m.qtype, m.tail_type, site.gemm_alpha)
            weight, rows_stored, alpha = site.weight, site.weight_transposed, site.gemm_alpha
        pack = packs.get(key)
        if pack is None:
            pack = packs[key] = _Pack(
                key, _pack_name(weight, m.qtype, m.tail_type, rows_stored, alpha, taken), weight, rows_stored,
                m.qtype, m.tail_type, alpha, site.K, site.N,
            )
        pack.sites.append(site.name)
        if isinstance(site, LinearSite) and site.input not in pack.imatrix_inputs:
            pack.imatrix_inputs.append(site.input)
        site_pack[site.name] = pack

    # ---- 2. new nodes
    removed: Set[str] = set()
    replacement: Dict[str, List[NodeProto]] = {}  # anchor node name -> nodes to put there
    new_biases: Dict[str, List[Tuple[str, np.ndarray]]] = {}  # pack weight -> biases to emit after it
    for decision in plan.decisions:
        if decision.method.kind != GGML:
            continue
        pack = site_pack[decision.site]
        m = decision.method
        if decision.site in embeddings:
            site_e = embeddings[decision.site]
            dtype = _float_type(graph, site_e.table)
            out = site_e.output if dtype == TensorProto.FLOAT else f"{site_e.output}.f32"
            made = make_ggml_gather_node(
                site_e.name, site_e.indices, out, pack.name, quant_type=m.qtype, K=site_e.K, N=site_e.N,
                tail_type=m.tail_type,
            )
            nodes = [made.node]
            if dtype != TensorProto.FLOAT:
                nodes.append(helper.make_node("Cast", [out], [site_e.output], to=dtype, name=f"{site_e.name}/cast_out"))
            removed.add(site_e.name)
            replacement[site_e.name] = nodes
            continue
        site = linear[decision.site]
        dtype = _float_type(graph, site.weight)
        bias_name: Optional[str] = None
        if site.bias is not None:
            bias_name = _bias_input(graph, site, base_dir, taken, new_biases, pack)
        x, y = site.input, site.output
        nodes = []
        if dtype != TensorProto.FLOAT:
            x = f"{site.name}/x.f32"
            y = f"{site.output}.f32"
            nodes.append(helper.make_node("Cast", [site.input], [x], to=TensorProto.FLOAT, name=f"{site.name}/cast_in"))
        made = make_ggml_matmul_node(
            site.name, x, y, pack.name, quant_type=m.qtype, K=site.K, N=site.N, bias=bias_name,
            tail_type=m.tail_type, mode=m.mode or DEFAULT_MODE,
        )
        nodes.append(made.node)
        if dtype != TensorProto.FLOAT:
            nodes.append(helper.make_node("Cast", [y], [site.output], to=dtype, name=f"{site.name}/cast_out"))
        removed.update(site.nodes)
        # the main node (MatMul / Gemm) is the anchor: X is ready there, consumers come later
        replacement[site.name] = nodes

    new_nodes: List[NodeProto] = []
    for node in model.graph.node:
        if node.name in replacement:
            new_nodes.extend(replacement[node.name])
        elif node.name not in removed:
            new_nodes.append(node)
    graph_outputs = {o.name for o in model.graph.output}
    input_names = {i.name for i in model.graph.input}
    new_nodes = _eliminate_dead(new_nodes, graph_outputs, set())

    # ---- 3. initializers, in their original order, streamed through the writer
    used: Set[str] = set(graph_outputs) | names_read(new_nodes)
    packs_by_weight: Dict[str, List[_Pack]] = {}
    for pack in packs.values():
        packs_by_weight.setdefault(pack.weight, []).append(pack)
    total = sum(p.K * p.N for p in packs.values())
    bar = _progress(total, progress)
    out_inits: List[TensorProto] = []
    try:
        for tensor in model.graph.initializer:
            for pack in packs_by_weight.get(tensor.name, ()):
                imx = _pack_imatrix(pack, imatrix)
                blocks = _pack_weight(graph, pack, base_dir, quantize, imx, bar)
                pack.nbytes = int(blocks.nbytes)
                out_inits.append(writer.tensor_proto(pack.name, blocks))
                del blocks
                for name, value in new_biases.get(pack.name, ()):
                    out_inits.append(writer.tensor_proto(name, value))
            if tensor.name in used or tensor.name in input_names:
                out_inits.append(writer.copy_tensor(tensor, base_dir))
        # packs of weights that are Constant nodes rather than initializers
        for pack in packs.values():
            if pack.nbytes == 0:
                imx = _pack_imatrix(pack, imatrix)
                blocks = _pack_weight(graph, pack, base_dir, quantize, imx, bar)
                pack.nbytes = int(blocks.nbytes)
                out_inits.append(writer.tensor_proto(pack.name, blocks))
                for name, value in new_biases.get(pack.name, ()):
                    out_inits.append(writer.tensor_proto(name, value))
    finally:
        bar.close()

    # ---- 4. assemble the model
    from .modelio import with_initializers

    new_model = with_initializers(model, out_inits)
    del new_model.graph.node[:]
    new_model.graph.node.extend(new_nodes)
    produced = {o for n in new_nodes for o in n.output} | input_names | {t.name for t in out_inits}
    kept_vi = [vi for vi in new_model.graph.value_info if vi.name in produced]
    del new_model.graph.value_info[:]
    new_model.graph.value_info.extend(kept_vi)
    if packs and not any(op.domain == onnxq_opset().domain for op in new_model.opset_import):
        new_model.opset_import.append(onnxq_opset())
    result.model = new_model

    # ---- 5. report
    first_site: Dict[str, str] = {}
    kept_owner: Dict[str, str] = {}
    position = {node.name: i for i, node in enumerate(model.graph.node)}
    for decision in sorted(plan.decisions, key=lambda d: position.get(d.site, len(position))):
        site = linear.get(decision.site) or embeddings.get(decision.site)
        is_emb = isinstance(site, EmbeddingSite)
        layer = LayerResult(
            name=site.name,
            kind="embedding" if is_emb else "linear",
            role="embedding" if is_emb else site.role,
            layer=site.layer,
            method=decision.method.label,
            K=site.K,
            N=site.N,
            source=decision.source,
            note=decision.note,
        )
        if decision.method.kind == GGML:
            pack = site_pack[site.name]
            layer.tail_type = decision.method.tail_type
            layer.mode = None if is_emb else decision.method.mode
            layer.packed_bytes = pack.nbytes
            owner = first_site.setdefault(pack.name, site.name)
            if owner == site.name:
                layer.nbytes = pack.nbytes
            else:
                layer.shared_with = owner
        else:
            if decision.method.kind == "keep":  # a float table read by two sites counts once
                weight = site.table if is_emb else site.weight
                owner = kept_owner.setdefault(weight, site.name)
                if owner != site.name:
                    layer.shared_with = owner
            op = "Gather" if is_emb else site.op_type
            why = decision.note or f"kept by recipe ({decision.source})"
            if decision.method.kind != "smoothquant":
                result.skipped.append(Skipped(site.name, op, why))
        result.layers.append(layer)
    return result


def _bias_input(graph: ModelGraph, site: LinearSite, base_dir, taken: Set[str], new_biases, pack: _Pack) -> str:
    """The bias tensor the op reads: the original initializer when it already is float32
    [N] (and beta = 1), else a new float32 [N] initializer written after the blocks."""
    from .analyze import bias_vector

    init = graph.initializer(site.bias)
    if (
        init is not None
        and site.gemm_beta == 1.0
        and init.data_type == TensorProto.FLOAT
        and tuple(init.dims) == (site.N,)
        and site.bias not in graph.graph_inputs
    ):
        return site.bias
    value = bias_vector(graph, site, base_dir)
    base = f"{site.bias}.f32" if site.gemm_beta == 1.0 else f"{site.bias}.beta"
    name, i = base, 1
    while name in taken:
        name = f"{base}.{i}"
        i += 1
    taken.add(name)
    new_biases.setdefault(pack.name, []).append((name, np.ascontiguousarray(value, dtype=np.float32)))
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
