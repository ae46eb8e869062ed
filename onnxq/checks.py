"""Up-front checks of an input model, before any work: what would otherwise fail late
(in onnxruntime, after minutes of quantizing) or silently (sizes of data that is not there).

* external data: every file an initializer references exists, and holds the tensor's
  bytes (declared length = dims x dtype size, offset + length within the file);
* operators: every node, in the main graph and in subgraphs, is one the installed
  onnxruntime can load. The rule, checked against onnxruntime's own operator-schema
  registry (no session is created, so this costs milliseconds on any model):

  - its domain is one onnxruntime registers operators for ("" = "ai.onnx",
    "ai.onnx.ml", "com.microsoft", ...), ``onnxq`` (onnxq's op library, when it is
    installed), or a domain of the model's own local functions;
  - the model imports that domain, at an opset no newer than the highest version
    onnxruntime registers for it;
  - the op exists in that domain at that opset (for ``onnxq``: GgmlMatMul, GgmlGather).

  Whether a CPU kernel exists for every type combination is left to the session: that
  depends on shapes and types only a run knows.
"""
from __future__ import annotations

import functools
import os
from typing import Dict, Iterator, List, Optional, Sequence, Set, Tuple, Union

import onnx

from .errors import ExternalDataMissing, ModelError, OnnxqError
from .modelio import external_location, is_external, model_dir

PathLike = Union[str, os.PathLike]

#: the ops of onnxq's library (``cython_kernels/ops``), domain :data:`onnxq.runtime.DOMAIN`
ONNXQ_DOMAIN = "onnxq"
ONNXQ_OPS = ("GgmlMatMul", "GgmlGather")
_SHOWN = 5  # problems listed in one message


def check_input_model(model: onnx.ModelProto, path: PathLike, operators: bool = True) -> None:
    """Every check of this module on ``model`` loaded from ``path`` (external data is
    resolved against its folder); ModelError naming the file and what is wrong."""
    check_external_data(model, path)
    if operators:
        check_operators(model, path)


# ----------------------------------------------------------------------------- external data


def check_external_data(model: onnx.ModelProto, path: PathLike) -> None:
    """ModelError when an external data file is missing or too short for its tensors."""
    base = model_dir(path)
    missing: Dict[str, List[str]] = {}
    problems: List[str] = []
    for tensor in _initializers(model.graph):
        if not is_external(tensor):
            continue
        try:
            external_location(tensor, base)
        except ExternalDataMissing as exc:
            missing.setdefault(exc.file, []).append(tensor.name)
        except ModelError as exc:
            problems.append(str(exc))
    found = [
        f"external data file {file} is missing (needed by {len(names)} initializer(s), e.g. {names[0]!r})"
        for file, names in missing.items()
    ]
    problems = found + problems
    if problems:
        more = f"; and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
        raise ModelError(f"{os.fspath(path)}: " + "; ".join(problems[:_SHOWN]) + more)


def _initializers(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for node in graph.node:
        for sub in _subgraphs(node):
            yield from _initializers(sub)


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


# ----------------------------------------------------------------------------- operators


@functools.lru_cache(maxsize=1)
def onnxruntime_operators() -> Dict[str, Dict[str, Tuple[int, ...]]]:
    """domain -> op -> the opset versions at which onnxruntime registers a schema for it."""
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_c

    table: Dict[str, Dict[str, Set[int]]] = {}
    for schema in ort_c.get_all_operator_schema():
        table.setdefault(schema.domain, {}).setdefault(schema.name, set()).add(int(schema.since_version))
    return {d: {op: tuple(sorted(v)) for op, v in ops.items()} for d, ops in table.items()}


def _onnxq_library_present() -> bool:
    from . import runtime

    try:
        runtime.get_library_path()
    except OnnxqError:
        return False
    return True


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _canonical(domain: str) -> str:
    return "" if domain == "ai.onnx" else domain


def _domain_label(domain: str) -> str:
    return "'' (ai.onnx)" if domain == "" else repr(domain)


def check_operators(model: onnx.ModelProto, path: PathLike, extra_domains: Sequence[str] = ()) -> None:
    """ModelError naming each node whose domain, opset or op onnxruntime cannot load (see
    the module docstring for the rule). ``extra_domains``: domains a caller registers
    itself (their ops are not checked)."""
    known = dict(onnxruntime_operators())
    if _onnxq_library_present():
        known[ONNXQ_DOMAIN] = {op: (1,) for op in ONNXQ_OPS}
    imports = {_canonical(o.domain): int(o.version) for o in model.opset_import}
    local = {(_canonical(f.domain), f.name) for f in model.functions}
    local_domains = {d for d, _ in local}
    extra = {_canonical(d) for d in extra_domains}
    problems = _opset_problems(imports, known)
    for node in _nodes(model.graph):
        domain = _canonical(node.domain)
        problem = _node_problem(node, domain, imports, known, local, local_domains | extra)
        if problem and problem not in problems:
            problems.append(problem)
    if problems:
        more = f"; and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
        raise ModelError(
            f"{os.fspath(path)}: onnxruntime {_ort_version()} cannot load this model: "
            + "; ".join(problems[:_SHOWN]) + more
        )


def _opset_problems(imports: Dict[str, int], known: Dict[str, Dict[str, Tuple[int, ...]]]) -> List[str]:
    problems = []
    for domain, version in imports.items():
        if domain in known and domain != ONNXQ_DOMAIN:
            newest = max(v for versions in known[domain].values() for v in versions)
            if version > newest:
                problems.append(
                    f"the model imports opset {version} of domain {_domain_label(domain)}, "
                    f"onnxruntime supports up to {newest}"
                )
    return problems


def _node_problem(
    node: onnx.NodeProto,
    domain: str,
    imports: Dict[str, int],
    known: Dict[str, Dict[str, Tuple[int, ...]]],
    local: Set[Tuple[str, str]],
    custom_domains: Set[str],
) -> Optional[str]:
    where = f"node {node.name!r} ({node.op_type})" if node.name else f"a {node.op_type} node"
    if (domain, node.op_type) in local or domain in custom_domains:
        return None
    if domain not in known:
        names = ", ".join(_domain_label(d) for d in sorted(known))
        return f"{where} has domain {_domain_label(domain)}, which onnxruntime does not know (known: {names})"
    if domain not in imports:
        return f"{where} has domain {_domain_label(domain)}, which the model's opset_import does not list"
    versions = known[domain].get(node.op_type)
    if not versions:
        return f"{where}: domain {_domain_label(domain)} has no operator {node.op_type!r}"
    if domain != ONNXQ_DOMAIN and min(versions) > imports[domain]:
        return (
            f"{where}: operator {node.op_type!r} exists from opset {min(versions)} of domain "
            f"{_domain_label(domain)}, the model imports opset {imports[domain]}"
        )
    return None


def _nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for sub in _subgraphs(node):
            yield from _nodes(sub)
