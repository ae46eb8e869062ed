"""End-to-end sensitivity: which quantized sites cost the model's output most.

The per-site simulated error (``MigrationAnalyzer``) sees one layer in isolation; an error
that later layers amplify (an early layer's rare, huge activations, e.g. the first
token's) can matter far more than its local size says. This measures it end to end:

1. take the W8A8 model (QDQ format) and, for every candidate site, add a float path next
   to its quantized one — the same smoothed input X' and the same dequantized int8 weight,
   only without quantizing X' — and a boolean graph input that picks the float path;
2. run the float reference once and the switched model once with nothing switched and
   once per candidate with only that candidate switched (leave-one-out);
3. a site's *gain* is how much the output error drops when its activation quantization
   is removed.

One onnxruntime session serves all runs (the switches are inputs), so the cost is one
forward pass per candidate on the given batches.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import ModelError

__all__ = ["activation_sensitivity", "output_mse"]


def output_mse(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> float:
    """Mean squared difference of all outputs, relative to the reference's mean square."""
    num = sum(float(np.mean((np.asarray(c, np.float64) - r) ** 2)) for r, c in zip(reference, candidate))
    den = sum(float(np.mean(np.asarray(r, np.float64) ** 2)) for r in reference)
    return num / den if den > 0 else num


def _switchable(model: onnx.ModelProto, sites: Sequence[str]) -> tuple[onnx.ModelProto, Dict[str, str]]:
    """Copy of a QDQ model from ``apply_smoothquant`` where each site's MatMul output can be
    replaced by MatMul(X', DQ(W)) through a bool graph input. Returns (model, site -> input)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    nodes = {n.name: n for n in m.graph.node}
    producers = {o: n for n in m.graph.node for o in n.output}
    switches: Dict[str, str] = {}
    new_nodes: List[onnx.NodeProto] = []
    for site in sites:
        mm = nodes.get(f"{site}/MatMul")
        if mm is None:
            raise ModelError(f"{site!r} is not a QDQ-quantized site of this model")
        dq_in = producers[mm.input[0]]
        q = producers[dq_in.input[0]]
        x_smoothed = q.input[0]
        y = mm.output[0]
        y_q = f"{y}/sensitivity_quantized"
        y_f = f"{y}/sensitivity_float"
        flag = f"{site}/sensitivity_float_switch"
        mm.output[0] = y_q
        new_nodes.append(helper.make_node("MatMul", [x_smoothed, mm.input[1]], [y_f], name=f"{site}/SensitivityMatMul"))
        new_nodes.append(helper.make_node("Where", [flag, y_f, y_q], [y], name=f"{site}/SensitivitySwitch"))
        m.graph.input.append(helper.make_tensor_value_info(flag, TensorProto.BOOL, []))
        switches[site] = flag
    m.graph.node.extend(new_nodes)
    from ..graph_edit import topological_sort

    topological_sort(m)
    return m, switches


def activation_sensitivity(
    float_model: onnx.ModelProto,
    quantized_model: onnx.ModelProto,
    sites: Iterable[str],
    batches: Iterable[Dict[str, np.ndarray]],
    *,
    metric: Callable[[Sequence[np.ndarray], Sequence[np.ndarray]], float] = output_mse,
    progress: bool = False,
) -> Dict[str, float]:
    """Gain of removing each site's activation quantization from ``quantized_model`` (a
    QDQ model made by ``apply_smoothquant``), measured on the outputs over ``batches``:
    ``metric(all quantized) - metric(all quantized but this site)``. Larger = more sensitive.
    Both models must be self-contained protos (no external data)."""
    import onnxruntime as ort
    from tqdm.auto import tqdm

    sites = list(sites)
    batches = list(batches)
    if not batches:
        raise ModelError("sensitivity needs at least one input batch")
    switched, flags = _switchable(quantized_model, sites)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    ref_sess = ort.InferenceSession(float_model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    sess = ort.InferenceSession(switched.SerializeToString(), so, providers=["CPUExecutionProvider"])
    refs = [ref_sess.run(None, b) for b in batches]
    off = {f: np.array(False) for f in flags.values()}

    def error(on: Optional[str]) -> float:
        feeds_flags = dict(off)
        if on is not None:
            feeds_flags[on] = np.array(True)
        return float(np.mean([metric(r, sess.run(None, {**b, **feeds_flags})) for r, b in zip(refs, batches)]))

    base = error(None)
    gains: Dict[str, float] = {}
    for site in tqdm(sites, desc="sensitivity", unit="site", disable=not progress, leave=False):
        gains[site] = base - error(flags[site])
    return gains
