"""Small graph-editing helpers shared by the rewriting passes (SmoothQuant, AWQ): fresh
names, dropping nodes and unused initializers, restoring topological order."""
from __future__ import annotations

import heapq
from typing import Dict, Iterable, List, Optional, Set

import onnx

from .errors import ModelError

__all__ = ["all_names", "unique_name", "names_read", "remove_nodes", "prune_initializers", "topological_sort",
           "outer_refs"]


def all_names(model: onnx.ModelProto) -> set:
    """Every tensor, initializer, input, output and node name of the main graph."""
    g = model.graph
    names = {t.name for t in g.initializer} | {i.name for i in g.input} | {o.name for o in g.output}
    for n in g.node:
        names.add(n.name)
        names.update(n.input)
        names.update(n.output)
    return names


def unique_name(model: Optional[onnx.ModelProto], base: str, taken: Optional[set] = None, sep: str = "_") -> str:
    """A tensor/initializer/node name not used in the model: ``base``, else ``base{sep}1``, ...
    ``taken`` caches the model's names (then ``model`` may be None) and receives the new one."""
    if taken is None:
        taken = all_names(model)
    name, i = base, 1
    while name in taken:
        name = f"{base}{sep}{i}"
        i += 1
    taken.add(name)
    return name


def remove_nodes(model: onnx.ModelProto, names: Iterable[str]) -> None:
    """Drop the main-graph nodes with these names."""
    drop = set(names)
    keep = [n for n in model.graph.node if n.name not in drop]
    del model.graph.node[:]
    model.graph.node.extend(keep)


def names_read(nodes: Iterable[onnx.NodeProto]) -> Set[str]:
    """Every tensor name the nodes read, including reads from inside their subgraphs (node
    inputs and subgraph outputs, which may name outer-scope tensors)."""
    used: Set[str] = set()
    stack = list(nodes)
    while stack:
        node = stack.pop()
        used.update(i for i in node.input if i)
        for attr in node.attribute:
            graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else (
                list(attr.graphs) if attr.type == onnx.AttributeProto.GRAPHS else [])
            for sub in graphs:
                stack.extend(sub.node)
                used.update(o.name for o in sub.output)
    return used


def prune_initializers(model: onnx.ModelProto) -> None:
    """Drop initializers nothing reads any more (replaced float weights)."""
    g = model.graph
    used = {o.name for o in g.output} | {i.name for i in g.input} | names_read(g.node)
    keep = [t for t in g.initializer if t.name in used]
    if len(keep) != len(g.initializer):
        del g.initializer[:]
        g.initializer.extend(keep)


def topological_sort(model: onnx.ModelProto) -> None:
    """Reorder the main graph's nodes so that producers come first (stable)."""
    g = model.graph
    available = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    nodes = list(g.node)
    producers: Dict[str, int] = {}
    for i, n in enumerate(nodes):
        for o in n.output:
            producers[o] = i
    deps = []
    for i, n in enumerate(nodes):
        # subgraph inputs from the outer scope also count as dependencies
        needed = set(n.input)
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                needed |= outer_refs(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for sg in a.graphs:
                    needed |= outer_refs(sg)
        deps.append({producers[t] for t in needed if t in producers and t not in available and producers[t] != i})
    users: Dict[int, List[int]] = {i: [] for i in range(len(nodes))}
    indeg = [len(d) for d in deps]
    for i, d in enumerate(deps):
        for j in d:
            users[j].append(i)
    ready = [i for i, d in enumerate(indeg) if d == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            indeg[u] -= 1
            if indeg[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        raise ModelError("the rewritten graph has a cycle (internal error in a graph rewrite)")
    sorted_nodes = [nodes[i] for i in order]
    del g.node[:]
    g.node.extend(sorted_nodes)


def outer_refs(graph: onnx.GraphProto) -> Set[str]:
    """Names a subgraph reads (its own and outer-scope ones)."""
    return names_read(graph.node) | {o.name for o in graph.output}
