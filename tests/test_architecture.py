"""The shape of the package, read from its source with ``ast`` (nothing is imported).

Floors (see ``onnxq/__init__.py`` and ``onnxq/README.md``): a module imports only from its
own floor or below; the two method wings never import each other; only ``cli`` may reach
``commands``; the zoo (real models) never imports evaluation; the import graph has no
cycles; no function is longer than 100 lines.
"""
from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Dict, List, Set


PKG = Path(__file__).resolve().parents[1] / "onnxq"

BASE, FLOOR, WING, TOP, CLI = range(5)
#: module (or package prefix) -> floor; the longest matching prefix decides
FLOORS = {
    "onnxq._version": BASE, "onnxq.errors": BASE, "onnxq.units": BASE, "onnxq._codecs": BASE, "onnxq.tempfiles": BASE,
    "onnxq": BASE,  # the package's lazy __init__ (it imports only _version and errors)
    "onnxq.modelio": FLOOR, "onnxq.graph_edit": FLOOR, "onnxq.sites": FLOOR, "onnxq.folding": FLOOR,
    "onnxq.calibrate": FLOOR, "onnxq.formats": FLOOR, "onnxq.plan": FLOOR, "onnxq.recipe": FLOOR,
    "onnxq.presets": FLOOR, "onnxq.passes": FLOOR, "onnxq.report": FLOOR, "onnxq.corpora": FLOOR,
    "onnxq.runtime": FLOOR, "onnxq.checks": FLOOR, "onnxq.model_inputs": FLOOR, "onnxq.text_inputs": FLOOR,
    "onnxq.norms": FLOOR, "onnxq.roles": FLOOR, "onnxq.fused_ops": FLOOR,
    "onnxq.ggml": WING, "onnxq.smoothquant": WING,
    # portable export (issue 11) lives in the GGML wing: it re-encodes GGML blocks
    "onnxq.ggml.portable": WING, "onnxq.ggml.portable_ops": WING, "onnxq.ggml.portable_rewrite": WING,
    "onnxq.pipeline": TOP, "onnxq.inspect_model": TOP, "onnxq.evaluate": TOP, "onnxq.zoo": TOP,
    "onnxq.convert": TOP, "onnxq.gguf": TOP, "onnxq.budget": TOP, "onnxq.portable": TOP,
    "onnxq.mixed_precision": TOP,
    "onnxq.cli": CLI, "onnxq.commands": CLI, "onnxq.__main__": CLI, "onnxq.commands.convert": CLI,
}
WINGS = ("onnxq.ggml", "onnxq.smoothquant")

#: functions allowed past 100 lines, with the reason (none today)
LONG_FUNCTION_EXCEPTIONS: Dict[str, str] = {}


def _modules() -> Dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()
EXTENSIONS = {"onnxq._codecs"}


def _is_module(name: str) -> bool:
    return name in MODULES or name in EXTENSIONS


def _imports(name: str, path: Path) -> Set[str]:
    """onnxq modules ``name`` imports, anywhere in the file (function-level imports count).
    ``from pkg import x`` counts as importing ``pkg.x`` when that is a module, else ``pkg``."""
    is_pkg = path.name == "__init__.py"
    found: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            subs = [f"{mod}.{a.name}" for a in node.names if _is_module(f"{mod}.{a.name}")]
            found.update(subs)
            if len(subs) < len(node.names):
                found.add(mod)
    return {m for m in found if m.startswith("onnxq") and _is_module(m) and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _floor(module: str) -> int:
    best = max((p for p in FLOORS if module == p or module.startswith(p + ".")), key=len, default=None)
    assert best is not None, f"{module} is in no floor: add it to FLOORS in tests/test_architecture.py"
    return FLOORS[best]


def _wing(module: str):
    return next((w for w in WINGS if module == w or module.startswith(w + ".")), None)


def test_every_module_has_a_floor():
    for module in MODULES:
        _floor(module)


def test_modules_import_only_their_floor_or_below():
    bad = [f"{m} ({_floor(m)}) imports {d} ({_floor(d)})" for m, deps in GRAPH.items() for d in deps
           if _floor(d) > _floor(m)]
    assert not bad, "\n".join(bad)


def test_a_wing_never_imports_the_other_wing():
    bad = [f"{m} imports {d}" for m, deps in GRAPH.items() for d in deps
           if _wing(m) and _wing(d) and _wing(m) != _wing(d)]
    assert not bad, "\n".join(bad)


def test_nothing_imports_commands():
    bad = [f"{m} imports {d}" for m, deps in GRAPH.items() for d in deps
           if d.startswith("onnxq.commands") and not m.startswith("onnxq.commands")]
    assert not bad, "\n".join(bad)


def test_zoo_does_not_import_evaluate():
    bad = [f"{m} imports {d}" for m, deps in GRAPH.items() if m.startswith("onnxq.zoo") for d in deps
           if d.startswith("onnxq.evaluate")]
    assert not bad, "\n".join(bad)


def find_cycle(graph: Dict[str, Set[str]]):
    """One import cycle of ``graph`` as [a, b, ..., a], or None."""
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(m: str):
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_import_graph_has_no_cycles():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checks_can_fail():
    """The same readings on a small fake graph find a cycle, a floor break and a wing crossing."""
    fake = {"onnxq.plan": {"onnxq.ggml.codec"}, "onnxq.ggml.codec": {"onnxq.smoothquant.apply"},
            "onnxq.smoothquant.apply": {"onnxq.plan"}}
    assert find_cycle(fake) == ["onnxq.ggml.codec", "onnxq.smoothquant.apply", "onnxq.plan", "onnxq.ggml.codec"]
    assert any(_floor(d) > _floor(m) for m, deps in fake.items() for d in deps)
    assert any(_wing(m) and _wing(d) and _wing(m) != _wing(d) for m, deps in fake.items() for d in deps)
    assert "onnxq.ggml.codec" in _imports("onnxq.ggml.step", MODULES["onnxq.ggml.step"]) or \
        "onnxq.ggml.rewrite" in _imports("onnxq.ggml.step", MODULES["onnxq.ggml.step"])


def test_no_function_longer_than_100_lines():
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                key = f"{name}.{node.name}"
                if lines > 100 and key not in LONG_FUNCTION_EXCEPTIONS:
                    long.append(f"{key}: {lines} lines ({os.path.relpath(path, PKG.parent)}:{node.lineno})")
    assert not long, "\n".join(long)
