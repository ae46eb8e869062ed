"""Emit the int8 replacement of one linear site in one of three formats.

Every format ends in the site's original output tensor, so the rest of the graph is
untouched; the bias stays float and is added after the integer product.

* ``qdq``: ``QuantizeLinear(X') -> DequantizeLinear -> MatMul <- DequantizeLinear(W_int8)``;
  onnxruntime fuses it into ``MatMulIntegerToFloat`` (float output, no requantization).
* ``qoperator``: ``QuantizeLinear(X') -> QLinearMatMul -> DequantizeLinear``; the output is
  requantized with a calibrated scale of X W (the format's cost).
* ``dynamic``: ``com.microsoft.DynamicQuantizeMatMul(X', W_int8, scale, zero point, bias)``;
  activations are quantized per call (no activation calibration).

One QuantizeLinear is shared by all quantized sites reading the same X' (same scale);
each site gets its own DequantizeLinear so onnxruntime's QDQ fusion sees the single-use
DQ -> MatMul pattern it requires.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx
from onnx import NodeProto, helper, numpy_helper

from ..graph_edit import unique_name
from ..sites import LinearSite
from .quant import ActivationQParams, QuantizedWeight

__all__ = ["SiteQuant", "Emitter", "FORMATS"]

FORMATS = ("qdq", "qoperator", "dynamic")
MS_DOMAIN = "com.microsoft"


@dataclass
class SiteQuant:
    """Everything needed to rewrite one site."""

    site: LinearSite
    x: str
    weight: QuantizedWeight
    bias: Optional[np.ndarray]
    act: Optional[ActivationQParams] = None
    out_act: Optional[ActivationQParams] = None


class Emitter:
    """Builds the nodes and initializers of quantized sites into ``model`` (in place)."""

    def __init__(self, model: onnx.ModelProto, fmt: str, weight_type: str, taken: set) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
        self.model = model
        self.format = fmt
        self.weight_type = weight_type
        self.taken = taken
        self._quantized_inputs: Dict[Tuple[str, float, int], str] = {}
        #: site name -> bytes of its int8 weight, scales and zero points
        self.weight_bytes: Dict[str, int] = {}

    # -- helpers ------------------------------------------------------------------------

    def _name(self, base: str) -> str:
        return unique_name(self.model, base, self.taken)

    def _init(self, base: str, value: np.ndarray) -> str:
        name = self._name(base)
        self.model.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def _node(self, op: str, inputs: List[str], outputs: List[str], base: str, domain: str = "", **attrs) -> NodeProto:
        node = helper.make_node(op, inputs, outputs, name=self._name(base), domain=domain or None, **attrs)
        if not domain:
            node.ClearField("domain")
        self.model.graph.node.append(node)
        return node

    def _quantized_input(self, x: str, qp: ActivationQParams, label: str) -> Tuple[str, str, str]:
        """(x_q, scale, zero_point) for X quantized with ``qp``; shared between sites."""
        key = (x, qp.scale, qp.zero_point)
        if key in self._quantized_inputs:
            xq = self._quantized_inputs[key]
            return xq, xq + "_scale", xq + "_zero_point"
        xq = self._name(f"{label}/input_quantized")
        scale = xq + "_scale"
        zp = xq + "_zero_point"
        self.taken.update((scale, zp))
        self.model.graph.initializer.append(numpy_helper.from_array(np.array(qp.scale, np.float32), scale))
        self.model.graph.initializer.append(numpy_helper.from_array(np.array(qp.zero_point, qp.np_dtype), zp))
        self._node("QuantizeLinear", [x, scale, zp], [xq], f"{label}/QuantizeInput")
        self._quantized_inputs[key] = xq
        return xq, scale, zp

    def _weight_inits(self, sq: SiteQuant, label: str) -> Tuple[str, str, str]:
        data, zp = sq.weight.storage(self.weight_type)
        self.weight_bytes[sq.site.name] = int(data.nbytes + 4 * sq.weight.scale.size + zp.nbytes)
        return (
            self._init(f"{label}/weight_quantized", data),
            self._init(f"{label}/weight_scale", sq.weight.scale.astype(np.float32)),
            self._init(f"{label}/weight_zero_point", zp),
        )

    def _finish(self, y: str, sq: SiteQuant, label: str) -> None:
        """Add the float bias (if any) into the site's original output tensor."""
        if sq.bias is None:
            return
        b = self._init(f"{label}/bias", sq.bias.astype(np.float32))
        self._node("Add", [y, b], [sq.site.output], f"{label}/AddBias")

    # -- formats ------------------------------------------------------------------------

    def emit(self, sq: SiteQuant) -> None:
        label = sq.site.name
        if self.format == "dynamic":
            self._emit_dynamic(sq, label)
            return  # the bias is an input of the op
        y = sq.site.output if sq.bias is None else self._name(f"{label}/matmul_output")
        if self.format == "qdq":
            self._emit_qdq(sq, label, y)
        else:
            self._emit_qoperator(sq, label, y)
        self._finish(y, sq, label)

    def _emit_qdq(self, sq: SiteQuant, label: str, y: str) -> None:
        assert sq.act is not None
        xq, xs, xz = self._quantized_input(sq.x, sq.act, label)
        xd = self._name(f"{label}/input_dequantized")
        self._node("DequantizeLinear", [xq, xs, xz], [xd], f"{label}/DequantizeInput")
        wq, ws, wz = self._weight_inits(sq, label)
        wd = self._name(f"{label}/weight_dequantized")
        attrs = {"axis": 1} if sq.weight.scale.ndim == 1 else {}
        self._node("DequantizeLinear", [wq, ws, wz], [wd], f"{label}/DequantizeWeight", **attrs)
        self._node("MatMul", [xd, wd], [y], f"{label}/MatMul")

    def _emit_qoperator(self, sq: SiteQuant, label: str, y: str) -> None:
        assert sq.act is not None and sq.out_act is not None
        xq, xs, xz = self._quantized_input(sq.x, sq.act, label)
        wq, ws, wz = self._weight_inits(sq, label)
        ys = self._init(f"{label}/output_scale", np.array(sq.out_act.scale, np.float32))
        yz = self._init(f"{label}/output_zero_point", np.array(sq.out_act.zero_point, sq.out_act.np_dtype))
        yq = self._name(f"{label}/output_quantized")
        self._node("QLinearMatMul", [xq, xs, xz, wq, ws, wz, ys, yz], [yq], f"{label}/QLinearMatMul")
        self._node("DequantizeLinear", [yq, ys, yz], [y], f"{label}/DequantizeOutput")

    def _emit_dynamic(self, sq: SiteQuant, label: str) -> None:
        wq, ws, wz = self._weight_inits(sq, label)
        inputs = [sq.x, wq, ws, wz]
        if sq.bias is not None:
            inputs.append(self._init(f"{label}/bias", sq.bias.astype(np.float32)))
        self._node("DynamicQuantizeMatMul", inputs, [sq.site.output], f"{label}/DynamicQuantizeMatMul", domain=MS_DOMAIN)
