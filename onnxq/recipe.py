"""Recipes: the language that says which method each layer gets, and :func:`plan`, which
applies one to a model's sites (the plan itself is data: :mod:`onnxq.plan`).

A recipe is a default method plus an ordered list of rules; for every site the *last*
rule that matches wins, and sites no rule matches get the default. A rule selects sites
by any combination of

* ``match``: glob(s) on the node name or the weight / table name (``*v_proj*``);
* ``regex``: regular expression(s) searched in the same names;
* ``role``: ``q k v o qkv gate up down head other`` (linear layers) or ``embedding``;
* ``layers``: transformer-block indices, Python-slice-like (``"0:4"``, ``"-4:"``,
  ``"::3"``, ``7``), fractions of the depth (``"0:1/8"``, ``"7/8:"``, ``"first 1/8"``,
  ``"last 1/4"``), ``"use_more_bits"`` (llama.cpp's rule: first and last eighth plus every
  third layer between) or a list of these (their union).

A method is ``keep`` (float), ``smoothquant`` (W8A8, delegated to
:mod:`onnxq.smoothquant`) or a GGML type (``q4_0`` ... ``q6_k``) with an optional
``tail_type`` (the 32-element type for the last ``K mod 256`` columns of a K-quant row;
``none`` pads to 256 instead) and ``mode`` (``exact``: float activations; ``fast``:
activations quantized to 8-bit blocks as ggml does; ``auto``, the default: per layer,
whichever the measured cost of fast mode allows, :mod:`onnxq.ggml.modes`).

A recipe may also ask for activation-aware weight scaling of its GGML layers before
packing (``"awq": true`` or a mapping of :class:`onnxq.ggml.awq.AWQConfig` fields); it
runs when calibration data is given.

Recipes come from a dict, a JSON or YAML file, or a built-in preset name
(:mod:`onnxq.presets`). Everything is validated up front: bad input raises
:class:`~onnxq.errors.RecipeError` naming the rule and the field.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

from . import presets
from .errors import RecipeError
from .formats import K_QUANTS, TAIL_TYPES, WEIGHT_TYPES, default_tail_type
from .plan import DEFAULT_MODE, GGML, KEEP, MODES, SMOOTHQUANT, Decision, Method, Plan, parse_alpha
from .sites import EMBEDDING_ROLE, ROLES, Analysis, EmbeddingSite, LinearSite

_RULE_KEYS = ("match", "regex", "role", "layers", "method", "tail_type", "mode", "alpha", "comment")
_TOP_KEYS = ("name", "description", "default", "mode", "rules", "awq")
_METHOD_KEYS = ("method", "tail_type", "mode", "alpha")

# ----------------------------------------------------------------------------- methods


def parse_method(spec: Any, where: str) -> Method:
    """A :class:`Method` from ``"q4_k"`` / ``"keep"`` / ``{"method": ..., "tail_type": ...}``."""
    if isinstance(spec, Mapping):
        unknown = [k for k in spec if k not in _METHOD_KEYS]
        if unknown:
            raise RecipeError(f"{where}: unknown key {unknown[0]!r} (expected {', '.join(_METHOD_KEYS)})")
        if "method" not in spec:
            raise RecipeError(f"{where}: missing 'method'")
        return _method(spec["method"], spec.get("tail_type"), spec.get("mode"), spec.get("alpha"), where)
    return _method(spec, None, None, None, where)


def _method(name: Any, tail: Any, mode: Any, alpha: Any, where: str) -> Method:
    if not isinstance(name, str) or not name.strip():
        raise RecipeError(f"{where}: method must be a string (keep, smoothquant or a GGML type), got {name!r}")
    key = name.strip().lower()
    if mode is not None and mode not in MODES:
        raise RecipeError(f"{where}: mode {mode!r} must be one of {', '.join(MODES)}")
    if key in (KEEP, "float", "none"):
        kind, qtype = KEEP, None
    elif key == SMOOTHQUANT:
        kind, qtype = SMOOTHQUANT, None
    elif key.upper() in WEIGHT_TYPES:
        kind, qtype = GGML, key.upper()
    else:
        raise RecipeError(
            f"{where}: unknown method {name!r} (expected keep, smoothquant or one of "
            f"{', '.join(t.lower() for t in WEIGHT_TYPES)})"
        )
    tail_type: Optional[str] = None
    if tail is not None:
        if kind != GGML:
            raise RecipeError(f"{where}: tail_type is only valid with a GGML type, not {key}")
        t = str(tail).strip().upper()
        if qtype not in K_QUANTS:
            raise RecipeError(f"{where}: tail_type applies to K-quants (q4_k, q5_k, q6_k), not {key}")
        if t not in TAIL_TYPES and t != "NONE":
            raise RecipeError(
                f"{where}: tail_type {tail!r} must be a 32-element type "
                f"({', '.join(x.lower() for x in TAIL_TYPES)}) or none"
            )
        tail_type = t
    if mode is not None and kind != GGML:
        raise RecipeError(f"{where}: mode applies to GGML types only, not {key}")
    if alpha is not None:
        if kind != SMOOTHQUANT:
            raise RecipeError(f"{where}: alpha applies to smoothquant only, not {key}")
        alpha = parse_alpha(alpha, f"{where}: alpha")
    return Method(kind, qtype, tail_type, mode, alpha)


# ----------------------------------------------------------------------------- layer selectors

_MORE_BITS = ("use_more_bits", "more_bits")
_FRACTION_RE = re.compile(r"^-?\d+/\d+$")
_INT_RE = re.compile(r"^-?\d+$")


def use_more_bits(i: int, n: int) -> bool:
    """llama.cpp's ``use_more_bits(i, n)`` (integer division, as in its C++)."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


Bound = Union[int, Fraction, None]


@dataclass(frozen=True)
class _Part:
    kind: str  # "slice" | "more_bits"
    start: Bound = None
    stop: Bound = None
    step: Optional[int] = None
    text: str = ""


def _bound(token: str, where: str) -> Bound:
    token = token.strip()
    if token == "":
        return None
    if _INT_RE.match(token):
        return int(token)
    if _FRACTION_RE.match(token):
        num, den = token.split("/")
        if int(den) == 0:
            raise RecipeError(f"{where}: layer fraction {token!r} divides by zero")
        value = Fraction(int(num), int(den))
        if not -1 <= value <= 1:
            raise RecipeError(f"{where}: layer fraction {token!r} must be between -1 and 1")
        return value
    raise RecipeError(f"{where}: bad layer bound {token!r} (an integer or a fraction like 1/8)")


def _resolve(bound: Bound, n: int) -> Optional[int]:
    if isinstance(bound, Fraction):
        # floor like llama.cpp's integer n/8 and 7*n/8; a negative fraction counts from the end
        f = bound if bound >= 0 else 1 + bound
        return (f.numerator * n) // f.denominator
    return bound


def _parse_part(spec: Any, where: str) -> _Part:
    if isinstance(spec, bool):
        raise RecipeError(f"{where}: bad layer selector {spec!r}")
    if isinstance(spec, int):
        return _Part("slice", spec, None if spec == -1 else spec + 1, None, str(spec))
    if not isinstance(spec, str):
        raise RecipeError(f"{where}: bad layer selector {spec!r} (a string like '0:4', '7/8:' or an integer)")
    text = spec.strip().lower()
    if text in _MORE_BITS:
        return _Part("more_bits", text="use_more_bits")
    words = text.split()
    if len(words) == 2 and words[0] in ("first", "last"):
        amount = _bound(words[1], where)
        if amount is None or (isinstance(amount, int) and amount < 0) or (isinstance(amount, Fraction) and amount < 0):
            raise RecipeError(f"{where}: bad layer selector {spec!r} ('first N', 'last N' or fractions like 'last 1/8')")
        if words[0] == "first":
            return _Part("slice", 0, amount, None, text)
        start = -amount if amount != 0 else None
        if start is None:
            return _Part("slice", 0, 0, None, text)  # "last 0": nothing
        return _Part("slice", start, None, None, text)
    if ":" in text:
        pieces = text.split(":")
        if len(pieces) > 3:
            raise RecipeError(f"{where}: bad layer range {spec!r} (start:stop[:step])")
        start = _bound(pieces[0], where)
        stop = _bound(pieces[1], where)
        step: Optional[int] = None
        if len(pieces) == 3 and pieces[2].strip():
            if not _INT_RE.match(pieces[2].strip()):
                raise RecipeError(f"{where}: layer step in {spec!r} must be an integer")
            step = int(pieces[2])
            if step <= 0:
                raise RecipeError(f"{where}: layer step in {spec!r} must be positive")
        return _Part("slice", start, stop, step, text)
    value = _bound(text, where)
    if isinstance(value, Fraction):
        raise RecipeError(f"{where}: a single fraction {spec!r} is not a layer; use a range like '0:1/8'")
    return _parse_part(value, where)


@dataclass(frozen=True)
class LayerSelector:
    """A union of layer ranges; resolved against the model's depth when matching."""

    parts: Tuple[_Part, ...]
    spec: Any = None

    def layers(self, n: int) -> frozenset:
        """The selected block indices of a model with ``n`` blocks."""
        chosen = set()
        for part in self.parts:
            if part.kind == "more_bits":
                chosen.update(i for i in range(n) if use_more_bits(i, n))
                continue
            start, stop = _resolve(part.start, n), _resolve(part.stop, n)
            chosen.update(range(n)[slice(start, stop, part.step)])
        return frozenset(chosen)


def parse_layers(spec: Any, where: str) -> LayerSelector:
    items = spec if isinstance(spec, (list, tuple)) else [spec]
    if not items:
        raise RecipeError(f"{where}: empty layer list")
    return LayerSelector(tuple(_parse_part(item, where) for item in items), spec)


# ----------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class SiteInfo:
    """What rules look at: the names, role and block index of a linear or embedding site."""

    name: str
    weight: str
    kind: str  # "linear" | "embedding"
    role: str
    layer: Optional[int]

    @classmethod
    def of(cls, site: Union[LinearSite, EmbeddingSite]) -> "SiteInfo":
        if isinstance(site, EmbeddingSite):
            return cls(site.name, site.table, "embedding", EMBEDDING_ROLE, site.layer)
        return cls(site.name, site.weight, "linear", site.role, site.layer)


def _str_list(value: Any, key: str, where: str) -> Tuple[str, ...]:
    items = value if isinstance(value, (list, tuple)) else [value]
    if not items or not all(isinstance(v, str) and v for v in items):
        raise RecipeError(f"{where}: {key} must be a non-empty string or list of strings, got {value!r}")
    return tuple(items)


@dataclass(frozen=True)
class Rule:
    """Select sites (every given criterion must hold) and give them ``method``."""

    method: Method
    match: Tuple[str, ...] = ()
    regex: Tuple[str, ...] = ()
    roles: Tuple[str, ...] = ()
    layers: Optional[LayerSelector] = None
    comment: Optional[str] = None
    index: int = 0

    @property
    def label(self) -> str:
        return f"rule {self.index + 1}"

    def describe(self) -> str:
        parts = []
        if self.match:
            parts.append("match=" + ",".join(self.match))
        if self.regex:
            parts.append("regex=" + ",".join(self.regex))
        if self.roles:
            parts.append("role=" + ",".join(self.roles))
        if self.layers is not None:
            parts.append(f"layers={self.layers.spec}")
        return f"{self.label} ({' '.join(parts) or 'all'} -> {self.method.to_dict()['method']})"

    def matches(self, info: SiteInfo, num_layers: Optional[int]) -> bool:
        names = (info.name, info.weight)
        if self.match and not any(fnmatch.fnmatchcase(n, p) for p in self.match for n in names):
            return False
        if self.regex and not any(re.search(p, n) for p in self.regex for n in names):
            return False
        if self.roles and info.role not in self.roles:
            return False
        if self.layers is not None:
            if info.layer is None or num_layers is None:
                return False
            if info.layer not in self.layers.layers(num_layers):
                return False
        return True

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        if self.match:
            out["match"] = list(self.match)
        if self.regex:
            out["regex"] = list(self.regex)
        if self.roles:
            out["role"] = list(self.roles)
        if self.layers is not None:
            out["layers"] = self.layers.spec
        out.update(self.method.to_dict())
        if self.comment:
            out["comment"] = self.comment
        return out


def parse_rule(spec: Any, index: int) -> Rule:
    where = f"recipe rule {index + 1}"
    if not isinstance(spec, Mapping):
        raise RecipeError(f"{where}: expected a mapping with 'method' and selectors, got {type(spec).__name__}")
    unknown = [k for k in spec if k not in _RULE_KEYS]
    if unknown:
        raise RecipeError(f"{where}: unknown key {unknown[0]!r} (expected {', '.join(_RULE_KEYS)})")
    if "method" not in spec:
        raise RecipeError(f"{where}: missing 'method'")
    method = _method(spec["method"], spec.get("tail_type"), spec.get("mode"), spec.get("alpha"), where)
    match = _str_list(spec["match"], "match", where) if "match" in spec else ()
    regex = _str_list(spec["regex"], "regex", where) if "regex" in spec else ()
    for pattern in regex:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise RecipeError(f"{where}: bad regex {pattern!r}: {exc}") from None
    roles: Tuple[str, ...] = ()
    if "role" in spec:
        roles = tuple(r.lower() for r in _str_list(spec["role"], "role", where))
        bad = [r for r in roles if r not in ROLES]
        if bad:
            raise RecipeError(f"{where}: unknown role {bad[0]!r} (expected one of {', '.join(ROLES)})")
    layers = parse_layers(spec["layers"], where) if "layers" in spec else None
    comment = spec.get("comment")
    return Rule(method, match, regex, roles, layers, str(comment) if comment is not None else None, index)


# ----------------------------------------------------------------------------- recipes


@dataclass(frozen=True)
class Recipe:
    """A default method, a global mode, and rules (later rules override earlier ones)."""

    name: str = "custom"
    default: Method = Method(KEEP)
    rules: Tuple[Rule, ...] = ()
    mode: str = DEFAULT_MODE
    description: Optional[str] = None
    #: a built-in preset: its generic rules (e.g. a fused qkv) may match nothing without a warning
    builtin: bool = False
    #: AWQ before packing: False, True, or AWQConfig fields as sorted (key, value) pairs
    awq: Any = False

    @property
    def awq_options(self) -> Any:
        """False, True or a dict of AWQ settings."""
        return dict(self.awq) if isinstance(self.awq, tuple) else bool(self.awq)

    def with_mode(self, mode: Optional[str]) -> "Recipe":
        """The recipe with its global mode replaced (rules that name a mode keep it)."""
        if mode is None:
            return self
        if mode not in MODES:
            raise RecipeError(f"mode {mode!r} must be one of {', '.join(MODES)}")
        return Recipe(self.name, self.default, self.rules, mode, self.description, self.builtin, self.awq)

    def to_dict(self) -> Dict[str, Any]:
        """The canonical JSON-able form (what ``onnxq.recipe`` metadata records)."""
        out: Dict[str, Any] = {"name": self.name, "mode": self.mode, "default": self.default.to_dict()}
        if self.description:
            out["description"] = self.description
        out["rules"] = [r.to_dict() for r in self.rules]
        if self.awq:
            out["awq"] = self.awq_options
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))


def recipe_from_dict(spec: Mapping[str, Any], name: Optional[str] = None) -> Recipe:
    """Validate a recipe dict (the structure of a JSON / YAML recipe file)."""
    if not isinstance(spec, Mapping):
        raise RecipeError(f"a recipe must be a mapping with 'default' and/or 'rules', got {type(spec).__name__}")
    unknown = [k for k in spec if k not in _TOP_KEYS]
    if unknown:
        raise RecipeError(f"recipe: unknown key {unknown[0]!r} (expected {', '.join(_TOP_KEYS)})")
    if "default" not in spec and not spec.get("rules"):
        raise RecipeError("recipe: needs a 'default' method or at least one rule")
    default = parse_method(spec.get("default", KEEP), "recipe default")
    mode = spec.get("mode", DEFAULT_MODE)
    if mode not in MODES:
        raise RecipeError(f"recipe: mode {mode!r} must be one of {', '.join(MODES)}")
    rules_spec = spec.get("rules") or []
    if not isinstance(rules_spec, (list, tuple)):
        raise RecipeError(f"recipe: 'rules' must be a list, got {type(rules_spec).__name__}")
    rules = tuple(parse_rule(r, i) for i, r in enumerate(rules_spec))
    recipe_name = name or spec.get("name") or "custom"
    return Recipe(str(recipe_name), default, rules, mode, spec.get("description"), awq=_parse_awq(spec.get("awq", False)))


def _parse_awq(value: Any) -> Any:
    """A recipe's ``awq``: a bool or a mapping of AWQ settings, stored hashable. The
    settings themselves belong to the GGML wing, which checks them when the recipe is
    resolved for a run (:func:`onnxq.pipeline.resolve_recipe`), before any work."""
    if isinstance(value, bool):
        return value
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise RecipeError(f"recipe: awq must be true, false or a mapping of AWQ settings, got {value!r}")
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in value.items()))


def single_type_recipe(qtype: str, mode: Optional[str] = None) -> Recipe:
    """Every linear layer and embedding in one GGML type (tails for K-quants)."""
    method = parse_method(qtype, "--type")
    if method.kind != GGML:
        raise RecipeError(f"--type {qtype!r}: expected a GGML type")
    return Recipe(method.qtype.lower(), method, (), mode or DEFAULT_MODE)


#: the comment of the rules :func:`with_keep_rules` adds (the user's, even on a built-in recipe)
KEEP_COMMENT = "--keep"


def with_keep_rules(recipe: Recipe, patterns: Iterable[str]) -> Recipe:
    """``recipe`` plus one last rule per glob: sites whose node or weight name matches stay
    float (``onnxq quantize --keep``). Being last, these rules override the recipe's own."""
    rules = list(recipe.rules)
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern:
            raise RecipeError(f"a keep pattern must be a non-empty glob, got {pattern!r}")
        rules.append(parse_rule({"match": pattern, "method": KEEP, "comment": KEEP_COMMENT}, len(rules)))
    return dataclasses.replace(recipe, rules=tuple(rules))


def load_recipe(source: Union[str, os.PathLike, Mapping[str, Any], Recipe]) -> Recipe:
    """A recipe from a :class:`Recipe`, a dict, a .json / .yaml file, or a preset name."""
    if isinstance(source, Recipe):
        return source
    if isinstance(source, Mapping):
        return recipe_from_dict(source)
    path = os.fspath(source)
    if os.path.isfile(path):
        return _load_file(path)
    preset = get_preset(path)
    if preset is not None:
        return preset
    if path.lower().endswith((".json", ".yaml", ".yml")) or os.sep in path:
        raise RecipeError(f"recipe file {path} does not exist")
    raise RecipeError(
        f"unknown recipe {path!r}: not a file and not a preset (presets: {', '.join(presets.preset_names())})")


def get_preset(name: str) -> Optional[Recipe]:
    """The built-in recipe called ``name`` (case-insensitive, ``-`` and ``_`` alike), or None."""
    found = presets.preset_spec(name)
    if found is None:
        return None
    key, spec = found
    return dataclasses.replace(recipe_from_dict(spec, name=key), builtin=True)


def _load_file(path: str) -> Recipe:
    try:
        with open(path, "r", encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"recipe file {path}: cannot read ({exc})") from None
    if path.lower().endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecipeError(f"recipe file {path}: invalid JSON ({exc})") from None
    else:
        try:
            import yaml
        except ImportError:  # pragma: no cover - pyyaml is a dev extra
            raise RecipeError(f"recipe file {path}: YAML recipes need PyYAML (pip install pyyaml), or use JSON") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise RecipeError(f"recipe file {path}: invalid YAML ({first})") from None
    try:
        return recipe_from_dict(data, name=None)
    except RecipeError as exc:
        raise RecipeError(f"recipe file {path}: {exc}") from None


# ----------------------------------------------------------------------------- planning


def _resolve_method(method: Method, recipe: Recipe, K: int) -> Method:
    if method.kind != GGML:
        return method
    tail = method.tail_type
    if method.qtype.endswith("_K"):
        if K % 256 == 0 or tail == "NONE":
            # no tail: exact super-blocks, or the last block zero-padded to 256 columns
            tail = None
        elif tail is None:
            tail = default_tail_type(method.qtype)
    return Method(GGML, method.qtype, tail, method.mode or recipe.mode, None)


def plan(analysis: Analysis, recipe: Recipe) -> Plan:
    """Choose a method for every linear and embedding site of ``analysis``.

    The last matching rule wins, else the default. SmoothQuant on an embedding, or on a
    weight another node also reads, is not possible: the site is kept (noted).
    """
    result = Plan(recipe)
    used = [False] * len(recipe.rules)
    sites: List[Union[LinearSite, EmbeddingSite]] = [*analysis.linear, *analysis.embeddings]
    for site in sites:
        info = SiteInfo.of(site)
        method, source = recipe.default, "default"
        for i, rule in enumerate(recipe.rules):
            if rule.matches(info, analysis.num_layers):
                used[i] = True
                method, source = rule.method, rule.label
        note = None
        if method.kind == SMOOTHQUANT and info.kind == "embedding":
            method, note = Method(KEEP), "smoothquant does not apply to an embedding lookup: kept"
        elif method.kind == SMOOTHQUANT and getattr(site, "weight_shared", False):
            method, note = Method(KEEP), "smoothquant would change a weight another node also reads: kept"
        result.decisions.append(Decision(site.name, info.kind, _resolve_method(method, recipe, site.K), source, note))
    for rule, hit in zip(recipe.rules, used):
        if not hit and (not recipe.builtin or rule.comment == KEEP_COMMENT):
            result.warnings.append(f"{rule.describe()} matches no layer")
    return result
