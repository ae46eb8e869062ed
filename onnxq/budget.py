"""Mixed precision under a budget: ``--target-bpw B`` / ``--target-size 90MB`` from
measured costs (issue 15).

1. **Units.** Every float32 weight of a linear layer or embedding is a unit; sites that
   read one weight (a tied LM head and its embedding table) form one unit and get one
   type, so their blocks are stored once.
2. **Costs.** For each unit and candidate type (every GGML type, K-quants with tail
   blocks, and ``keep``): bytes exactly as written, and a model-level cost, the increase of
   a loss over the float model on calibration data (:mod:`onnxq.evaluate.probe`: KL of
   the next-token distributions for LMs, 1 - cosine of the pooled output for encoders).
   Measuring every (unit, type) end to end would take a model run each; instead the cost
   is ``sensitivity(unit) x error(unit, type)``: ``error`` is the unit's own relative
   output error through the real codec on sampled activation rows
   (:mod:`onnxq.ggml.sensitivity`), ``sensitivity`` is measured once per unit end to end
   (the loss with that unit alone at the reference type, divided by its error there). The
   proxy is validated against true single-unit end-to-end losses on a sample of units and
   types (the report gives the correlation and the median ratio).
3. **Allocation.** Minimum total cost at bytes <= budget, and of the mixes of that cost
   the one with the most bytes: the better of a greedy exchange along each unit's lower
   convex hull of (bytes, cost) plus a fill, and an exact multiple-choice knapsack (dynamic
   programming over bytes on a fine grid), which can downgrade small units to afford one
   big upgrade (a word-embedding table's next type, a layer's step to float32) where the
   greedy's fill stops short.
   The result is at most the budget and within 1 % of it unless every mix that close
   costs more (the budget cannot be used: spending it would lose quality). When the two
   solvers' mixes differ (and the run checks), both are measured end to end (weights
   quantized and back, on the calibration batches) and the better one is written: the
   per-layer costs add up only approximately, and two mixes of nearly equal predicted cost
   measured 12 % apart on MiniLM.
4. **Check.** The chosen mix is written (modes by the auto rule, measured per layer on
   the same rows) and its loss measured end to end on the same batches; the report shows
   it next to the sum of predicted costs. The recipe written (``save_recipe``) names
   every layer explicitly and reproduces the file byte for byte.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import RecipeError
from .ggml.sensitivity import CANDIDATES, candidate_bytes
from .plan import KEEP

__all__ = ["Unit", "CostTable", "BudgetReport", "parse_size", "find_units", "measure_costs", "allocate",
           "alternatives", "pick_measured", "plan_cost", "plan_bytes",
           "budget_recipe", "quantize_to_budget", "REFERENCE_TYPE"]

PathLike = Union[str, os.PathLike]

#: the type each unit is measured at end to end (its sensitivity); the lowest-bit type
#: gives the strongest signal over the loss's noise
REFERENCE_TYPE = "Q4_0"
#: units whose proxy is checked against a true end-to-end measurement, per other type
VALIDATION_UNITS = 8
VALIDATION_TYPES = ("Q4_K", "Q6_K")
#: calibration batches the end-to-end runs use (each unit costs one model run over them)
PROBE_BATCHES = 2
#: rows per unit input the output errors are measured on
SAMPLE_ROWS = 256

_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]?i?b?)\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}


def parse_size(text: Union[str, int, float]) -> int:
    """Bytes of ``"90MB"``, ``"90 MiB"``, ``"1.5G"`` or a number (RecipeError otherwise)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        m = _SIZE_RE.match(str(text))
        if not m or m.group(2).lower() not in _SIZE_UNITS:
            raise RecipeError(f"target size {text!r}: expected a number of bytes with an optional unit "
                              "(e.g. 90MB, 90MiB, 1.5GB)")
        value, unit = float(m.group(1)), m.group(2).lower()
    size = int(value * _SIZE_UNITS[unit])
    if size <= 0:
        raise RecipeError(f"target size {text!r} must be positive")
    return size


@dataclass
class Unit:
    """One stored weight and the sites that read it."""

    weight: str
    sites: List[str]
    K: int
    N: int
    rows_stored: bool  # stored [N, K] (a table, a transposed weight) rather than [K, N]
    input: Optional[str] = None  # the activation of its (first) linear site; None: table only
    error: Dict[str, float] = field(default_factory=dict)  # candidate -> relative output error
    sensitivity: float = 0.0  # model-level loss per unit of relative error

    @property
    def params(self) -> int:
        return self.K * self.N

    def nbytes(self, candidate: str) -> int:
        return 4 * self.params if candidate == KEEP else candidate_bytes(candidate, self.K, self.N)

    def cost(self, candidate: str) -> float:
        return 0.0 if candidate == KEEP else self.sensitivity * self.error[candidate]


@dataclass
class CostTable:
    """Measured costs of every unit and candidate, and how well the proxy held."""

    units: List[Unit]
    candidates: Tuple[str, ...]
    loss: str  # "kl" | "cosine" | "relative-error"
    data: str  # where the calibration data came from
    fixed_bytes: int  # bytes of the file that are not unit weights (other initializers, graph)
    #: (unit weight, type, proxy cost, measured end-to-end cost)
    validation: List[Tuple[str, str, float, float]] = field(default_factory=list)

    @property
    def params(self) -> int:
        return sum(u.params for u in self.units)

    def proxy_correlation(self) -> Optional[float]:
        """Pearson correlation of log proxy vs log measured cost over the validation sample."""
        pairs = [(p, a) for _, _, p, a in self.validation if p > 0 and a > 0]
        if len(pairs) < 3:
            return None
        lp, la = np.log([p for p, _ in pairs]), np.log([a for _, a in pairs])
        return float(np.corrcoef(lp, la)[0, 1])

    def proxy_ratio(self) -> Optional[float]:
        """Median of measured / proxy cost over the validation sample."""
        ratios = [a / p for _, _, p, a in self.validation if p > 0]
        return float(np.median(ratios)) if ratios else None

    def bounds(self) -> Tuple[int, int]:
        """(smallest, largest) total unit bytes a plan can have (keep everywhere: float)."""
        return (sum(min(u.nbytes(c) for c in self.candidates) for u in self.units),
                sum(max(u.nbytes(c) for c in self.candidates) for u in self.units))


# ----------------------------------------------------------------------------- units and costs


def find_units(model, analysis) -> List[Unit]:
    """The float32 weights of ``analysis``'s sites, one :class:`Unit` per stored weight."""
    from onnx import TensorProto

    from .sites import ModelGraph

    graph = ModelGraph(model)
    units: Dict[str, Unit] = {}
    for site in analysis.linear:
        if graph.constant_dtype(site.weight) != TensorProto.FLOAT or site.gemm_alpha != 1.0:
            continue
        unit = units.setdefault(site.weight, Unit(site.weight, [], site.K, site.N, site.weight_transposed))
        unit.sites.append(site.name)
        unit.input = unit.input or site.input
    for site in analysis.embeddings:
        if graph.constant_dtype(site.table) != TensorProto.FLOAT:
            continue
        unit = units.setdefault(site.table, Unit(site.table, [], site.K, site.N, True))
        unit.sites.append(site.name)
    return list(units.values())


def _token_counts(batches, table_rows: int) -> np.ndarray:
    counts = np.zeros(table_rows)
    for b in batches:
        ids = np.asarray(b.get("input_ids", np.zeros(0, np.int64))).ravel()
        ids = ids[(ids >= 0) & (ids < table_rows)]
        counts += np.bincount(ids, minlength=table_rows)
    return counts if counts.sum() > 0 else np.ones(table_rows)


def _unit_errors(units: List[Unit], stats, probe, batches, candidates, progress: bool) -> None:
    from tqdm.auto import tqdm

    from .ggml.sensitivity import linear_errors, table_errors

    for unit in tqdm(units, desc="output errors", unit="weight", disable=not progress, leave=False):
        w = probe.float[unit.weight]
        if unit.input is not None:
            kn = w.T if unit.rows_stored else w
            unit.error = linear_errors(kn, stats[unit.input].samples, candidates)
        else:
            unit.error = table_errors(w, _token_counts(batches, w.shape[0]), candidates)


def _sensitivities(units: List[Unit], probe, progress: bool) -> None:
    from tqdm.auto import tqdm

    from .ggml.sensitivity import dequantized

    for unit in tqdm(units, desc="sensitivity", unit="weight", disable=not progress, leave=False):
        loss = probe.loss({unit.weight: dequantized(probe.float[unit.weight], REFERENCE_TYPE, unit.rows_stored)})
        err = unit.error[REFERENCE_TYPE]
        unit.sensitivity = max(loss, 0.0) / err if err > 0 else 0.0


def _validate(units: List[Unit], probe, count: int, types: Sequence[str], progress: bool) -> List[Tuple]:
    """True single-unit end-to-end costs of ``types`` on ``count`` units spread over the model."""
    from tqdm.auto import tqdm

    from .ggml.sensitivity import dequantized

    if count <= 0 or not units:
        return []
    picks = sorted(set(np.linspace(0, len(units) - 1, min(count, len(units))).round().astype(int)))
    out = []
    jobs = [(units[i], t) for i in picks for t in types]
    for unit, t in tqdm(jobs, desc="proxy check", unit="run", disable=not progress, leave=False):
        actual = probe.loss({unit.weight: dequantized(probe.float[unit.weight], t, unit.rows_stored)})
        out.append((unit.weight, t, unit.cost(t), actual))
    return out


def _data(path: str, data: Any, source: str, progress: bool) -> Tuple[Any, str]:
    """``data``, or the model's default calibration source when it is None."""
    from .errors import CalibrationError

    if data is not None:
        return data, source
    from .zoo.calibration import default_batches

    data, source = default_batches(path, progress=progress)
    if data is None:
        raise CalibrationError(f"{path}: a budget needs calibration data to measure costs on ({source}): "
                               "pass --calib DATA")
    return data, source


def measure_costs(model: PathLike, data: Any = None, *, candidates: Sequence[str] = (*CANDIDATES, KEEP),
                  validate: int = VALIDATION_UNITS, probe_batches: int = PROBE_BATCHES, threads: int = 0,
                  data_source: str = "the given calibration inputs", progress: bool = True) -> CostTable:
    """Measure every unit's cost of every candidate on calibration ``data`` (model inputs:
    .npz, dict, iterable of input dicts, reader; None: the model's default source,
    :func:`onnxq.zoo.calibration.default_batches`), described by ``data_source``."""
    from .calibrate import CalibrationCache, calibrate
    from .checks import check_input_model
    from .evaluate.probe import LossProbe
    from .modelio import file_bytes, load_model, model_dir, tensor_nbytes
    from .sites import find_sites

    path = os.fspath(model)
    proto = load_model(path)
    check_input_model(proto, path)  # before minutes of measuring
    data, source = _data(path, data, data_source, progress)
    bad = [c for c in candidates if c != KEEP and c not in CANDIDATES]
    if bad:
        raise RecipeError(f"unknown budget candidate {bad[0]!r} (expected {', '.join(CANDIDATES)} or keep)")
    cache = CalibrationCache(data, proto, batch_size=1)
    units = find_units(proto, find_sites(proto))
    if not units:
        raise RecipeError(f"{path}: no float32 linear or embedding weight to give a type")
    stats = calibrate(proto, list(dict.fromkeys(u.input for u in units if u.input)), cache, bins=16,
                      sample_rows=SAMPLE_ROWS, base_dir=model_dir(path), progress=progress)
    probe = LossProbe(proto, [u.weight for u in units], cache.batches[:probe_batches], model_dir(path), threads)
    quantized = tuple(c for c in candidates if c != KEEP)
    _unit_errors(units, stats, probe, cache.batches, tuple(dict.fromkeys((*quantized, REFERENCE_TYPE))), progress)
    _sensitivities(units, probe, progress)
    sizes = {t.name: tensor_nbytes(t) for t in proto.graph.initializer}
    fixed = file_bytes(path, proto) - sum(sizes.get(u.weight, 0) for u in units)
    table = CostTable(units, tuple(candidates), probe.kind, source, fixed)
    table.validation = _validate(units, probe, validate, [t for t in VALIDATION_TYPES if t in quantized], progress)
    return table


# ----------------------------------------------------------------------------- allocation


def _hull(unit: Unit, candidates: Sequence[str]) -> List[str]:
    """The unit's candidates on the lower convex hull of (bytes, cost), by bytes: the only
    ones a cost-per-byte greedy needs (the others are dominated or never the best step)."""
    by_bytes: Dict[int, str] = {}
    for c in sorted(candidates, key=lambda c: (unit.nbytes(c), unit.cost(c))):
        by_bytes.setdefault(unit.nbytes(c), c)
    hull: List[str] = []
    for c in by_bytes.values():
        if hull and unit.cost(c) >= unit.cost(hull[-1]):
            continue  # more bytes, no lower cost: dominated
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # drop b when the step a -> c saves at least as much per byte as a -> b
            if (unit.cost(a) - unit.cost(b)) * (unit.nbytes(c) - unit.nbytes(a)) <= \
                    (unit.cost(a) - unit.cost(c)) * (unit.nbytes(b) - unit.nbytes(a)):
                hull.pop()
            else:
                break
        hull.append(c)
    return hull


def allocate(table: CostTable, budget_bytes: int) -> Dict[str, str]:
    """``{unit weight: candidate}`` of least total cost with total unit bytes <= ``budget_bytes``;
    among mixes of that cost, the one using the most bytes (so the budget is used within
    1 % whenever a mix of least cost does).

    Two solvers, the better result taken (lower cost, then more bytes): the greedy
    exchange on each unit's lower convex hull plus a fill (fast, but it stops short when the
    next hull step of a big unit, e.g. a word-embedding table, does not fit in what is
    left), and a multiple-choice knapsack solved exactly by dynamic programming over bytes
    rounded up to a grid (:func:`_knapsack`), which trades: it downgrades small units to
    afford one large upgrade when that lowers the total cost."""
    return next(iter(alternatives(table, budget_bytes).values()))


def alternatives(table: CostTable, budget_bytes: int) -> Dict[str, Dict[str, str]]:
    """Both solvers' mixes, ``{"greedy": mix, "knapsack": mix}`` (one entry when they agree),
    the one :func:`allocate` returns first."""
    low, _ = table.bounds()
    if budget_bytes < low:
        raise RecipeError(f"budget of {budget_bytes:,} bytes for the weights is below the smallest plan "
                          f"({low:,} bytes: every weight in its smallest type)")
    greedy, exact = _greedy(table, budget_bytes), _knapsack(table, budget_bytes)
    if greedy == exact:
        return {"greedy": greedy}
    return {"knapsack": exact, "greedy": greedy} if _better(table, exact, greedy) else {"greedy": greedy, "knapsack": exact}


def pick_measured(table: CostTable, mixes: Dict[str, Dict[str, str]], budget_bytes: int,
                  loss) -> Tuple[str, Dict[str, float]]:
    """The mix to write: of ``mixes`` that use the budget within 1 % (all of them when none
    does), the one of least ``loss(mix)`` measured end to end; ``(name, {name: loss})``.

    The per-layer costs add up only approximately (layers interact): two mixes of nearly the
    same predicted cost can measure 10 % apart, either way (MiniLM at 5.5 bpw: the knapsack's
    mix predicted 5.5 % cheaper than the greedy's, measured 12 % dearer)."""
    within = [n for n in mixes if plan_bytes(table, mixes[n]) >= 0.99 * budget_bytes]
    pool = within or list(mixes)
    if len(pool) == 1:
        return pool[0], {}
    measured = {n: float(loss(mixes[n])) for n in pool}
    return min(pool, key=lambda n: (measured[n], pool.index(n))), measured


def plan_cost(table: CostTable, choice: Dict[str, str]) -> float:
    """Sum of the chosen candidates' costs."""
    return float(sum(u.cost(choice[u.weight]) for u in table.units))


def plan_bytes(table: CostTable, choice: Dict[str, str]) -> int:
    """Total bytes of the unit weights in the chosen candidates."""
    return sum(u.nbytes(choice[u.weight]) for u in table.units)


#: costs this close (relative) are the same cost: sums in another order differ by rounding
_COST_TIE = 1e-9


def _better(table: CostTable, a: Dict[str, str], b: Dict[str, str]) -> bool:
    """Whether mix ``a`` is better than ``b``: lower cost, or the same cost in more bytes."""
    ca, cb = plan_cost(table, a), plan_cost(table, b)
    if abs(ca - cb) <= _COST_TIE * max(abs(ca), abs(cb)):
        return plan_bytes(table, a) > plan_bytes(table, b)
    return ca < cb


def _greedy(table: CostTable, budget_bytes: int) -> Dict[str, str]:
    """Greedy exchange along each unit's lower convex hull, best cost saved per byte first,
    then :func:`_fill` of what is left."""
    import heapq

    hulls = {u.weight: _hull(u, table.candidates) for u in table.units}
    units = {u.weight: u for u in table.units}
    pos = {w: 0 for w in hulls}
    total = sum(units[w].nbytes(h[0]) for w, h in hulls.items())
    heap: List[Tuple[float, str]] = []

    def push(w: str) -> None:
        h, i = hulls[w], pos[w]
        if i + 1 < len(h):
            u = units[w]
            gain = (u.cost(h[i]) - u.cost(h[i + 1])) / (u.nbytes(h[i + 1]) - u.nbytes(h[i]))
            heapq.heappush(heap, (-gain, w))

    for w in hulls:
        push(w)
    while heap:
        _, w = heapq.heappop(heap)
        u, h, i = units[w], hulls[w], pos[w]
        step = u.nbytes(h[i + 1]) - u.nbytes(h[i])
        if total + step <= budget_bytes:
            total += step
            pos[w] = i + 1
            push(w)
    choice = {w: hulls[w][pos[w]] for w in hulls}
    _fill(table, choice, budget_bytes - total)
    return choice


def _fill(table: CostTable, choice: Dict[str, str], slack: int) -> None:
    """Spend what the greedy left: repeatedly the single change of one unit to any
    candidate that fits in the slack and saves the most cost."""
    while True:
        best = None
        for u in table.units:
            cur = choice[u.weight]
            for c in table.candidates:
                extra = u.nbytes(c) - u.nbytes(cur)
                saved = u.cost(cur) - u.cost(c)
                if extra <= slack and saved > 0 and (best is None or saved > best[0]):
                    best = (saved, u.weight, c, extra)
        if best is None:
            return
        _, w, c, extra = best
        choice[w] = c
        slack -= extra


#: grid of the knapsack: the smallest mix's bytes / GRID_STEPS. Bytes are rounded up to it, so
#: a knapsack mix is never over the budget and loses at most (units x step) bytes against an
#: exact solver (SmolLM2's 211 units: 0.16 % of the smallest mix; the fill spends what is left);
#: the grid depends on the table only, so a larger budget sees every mix a smaller one does
GRID_STEPS = 1 << 17


def _pareto(unit: Unit, candidates: Sequence[str]) -> List[str]:
    """The unit's candidates, by bytes, without those another beats on both bytes and cost; one
    of more bytes at the same cost stays (it can take up budget that buys nothing else)."""
    out: List[str] = []
    for c in sorted(candidates, key=lambda c: (unit.nbytes(c), unit.cost(c))):
        if not out or (unit.cost(c) <= unit.cost(out[-1]) and unit.nbytes(c) > unit.nbytes(out[-1])):
            out.append(c)
    return out


def _knapsack(table: CostTable, budget_bytes: int) -> Dict[str, str]:
    """Least total cost at (grid-rounded) bytes <= ``budget_bytes`` by dynamic programming over
    the bytes each unit takes beyond its smallest candidate; of equal costs, the most bytes."""
    step = max(1, table.bounds()[0] // GRID_STEPS)
    options = [_pareto(u, table.candidates) for u in table.units]
    ticks = [[-(-u.nbytes(c) // step) for c in opts] for u, opts in zip(table.units, options)]
    states = budget_bytes // step - sum(t[0] for t in ticks) + 1
    if states <= 0:  # the rounding left no room: the greedy's mix stands
        return {u.weight: opts[0] for u, opts in zip(table.units, options)}
    cost = np.full(states, np.inf)
    cost[0] = 0.0
    picks = np.zeros((len(options), states), dtype=np.int8)
    for i, (u, opts, t) in enumerate(zip(table.units, options, ticks)):
        new = np.full(states, np.inf)
        for j, c in enumerate(opts):
            extra = t[j] - t[0]
            if extra >= states:
                break
            moved = cost[:states - extra] + u.cost(c)
            better = moved < new[extra:]
            new[extra:][better] = moved[better]
            picks[i, extra:][better] = j
        cost = new
    least = cost.min()
    state = int(np.nonzero(cost <= least + _COST_TIE * abs(least))[0].max())
    choice = {}
    for i in range(len(options) - 1, -1, -1):
        j = int(picks[i, state])
        choice[table.units[i].weight] = options[i][j]
        state -= ticks[i][j] - ticks[i][0]
    _fill(table, choice, budget_bytes - plan_bytes(table, choice))  # what the rounding up left
    return choice


# ----------------------------------------------------------------------------- recipe and run


def budget_recipe(table: CostTable, choice: Dict[str, str], modes: Dict[str, str], name: str):
    """A recipe naming every layer: its type, its mode, and in a comment its measured cost."""
    from .recipe import recipe_from_dict

    rules = []
    for u in table.units:
        c = choice[u.weight]
        for site in u.sites:
            rule: Dict[str, Any] = {"regex": f"^{re.escape(site)}$", "method": c.lower() if c != KEEP else KEEP,
                                    "comment": f"cost {u.cost(c):.3e}"}
            if site in modes:
                rule["mode"] = modes[site]
            rules.append(rule)
    return recipe_from_dict({"name": name, "default": KEEP, "mode": "exact", "rules": rules})


@dataclass
class BudgetReport:
    """What a budget run chose and how close its predictions were."""

    target: str
    budget_bytes: int
    table: CostTable
    choice: Dict[str, str]
    predicted: float = 0.0  # sum of the chosen costs
    measured: Optional[float] = None  # the written model's loss on the same batches
    unit_bytes: int = 0
    #: when the two solvers disagreed: {solver: (predicted, measured loss or None)}
    compared: Dict[str, Tuple[float, Optional[float]]] = field(default_factory=dict)
    solver: str = ""  # which solver's mix was written

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.unit_bytes / self.table.params

    def summary(self) -> str:
        t = self.table
        corr, ratio = t.proxy_correlation(), t.proxy_ratio()
        lines = [f"budget {self.target}: weights {self.unit_bytes:,} of {self.budget_bytes:,} bytes "
                 f"({100 * self.unit_bytes / self.budget_bytes:.2f} %), {self.bits_per_weight:.3f} bits per weight",
                 f"loss ({t.loss}, on {t.data}): predicted {self.predicted:.4g} (sum of per-layer costs), "
                 + (f"measured {self.measured:.4g} end to end" if self.measured is not None else "not measured")]
        if self.compared:
            lines.append("solvers' mixes (predicted / measured loss): " + ", ".join(
                f"{n} {p:.4g} / " + (f"{m:.4g}" if m is not None else "not measured (over 1 % under the budget)")
                for n, (p, m) in self.compared.items()) + f"; written: the {self.solver}'s")
        if corr is not None:
            lines.append(f"proxy check: {len(t.validation)} single-layer runs, correlation of log costs {corr:.3f}, "
                         f"measured/proxy median {ratio:.2f}")
        counts: Dict[str, int] = {}
        for c in self.choice.values():
            counts[c] = counts.get(c, 0) + 1
        lines.append("types: " + ", ".join(f"{c} x{n}" for c, n in sorted(counts.items())))
        return "\n".join(lines)

    def to_dict(self) -> Dict[str, Any]:
        return {"target": self.target, "budget_bytes": self.budget_bytes, "unit_bytes": self.unit_bytes,
                "solver": self.solver,
                "compared": {n: {"predicted": p, "measured": m} for n, (p, m) in self.compared.items()},
                "bits_per_weight": self.bits_per_weight, "loss": self.table.loss, "data": self.table.data,
                "predicted": self.predicted, "measured": self.measured,
                "proxy_correlation": self.table.proxy_correlation(), "proxy_ratio": self.table.proxy_ratio(),
                "validation": [list(v) for v in self.table.validation],
                "units": [{"weight": u.weight, "sites": u.sites, "type": self.choice[u.weight],
                           "bytes": u.nbytes(self.choice[u.weight]), "cost": u.cost(self.choice[u.weight]),
                           "sensitivity": u.sensitivity} for u in self.table.units]}


def budget_bytes(table: CostTable, target_bpw: Optional[float] = None, target_size: Any = None) -> Tuple[int, str]:
    """(bytes the unit weights may take, the target as text) for exactly one of the targets."""
    if (target_bpw is None) == (target_size is None):
        raise RecipeError("give exactly one of a target in bits per weight or a target file size")
    if target_bpw is not None:
        bpw = float(target_bpw)
        if not math.isfinite(bpw) or bpw <= 0:
            raise RecipeError(f"target bits per weight must be a positive number, got {target_bpw!r}")
        if bpw >= 32:
            raise RecipeError(f"target of {bpw:g} bits per weight is at or above float32 (32): nothing to quantize")
        low = table.bounds()[0]
        if bpw * table.params / 8 < low:
            raise RecipeError(f"target of {bpw:g} bits per weight is below the smallest type mix "
                              f"({8 * low / table.params:.3f} bits per weight)")
        return int(bpw * table.params / 8), f"{bpw:g} bpw"
    size = parse_size(target_size)
    low, high = table.bounds()
    if size >= table.fixed_bytes + high:
        raise RecipeError(f"target size {size:,} bytes is at or above the float32 model ({table.fixed_bytes + high:,} "
                          "bytes): nothing to quantize")
    if size - table.fixed_bytes < low:
        raise RecipeError(f"target size {size:,} bytes is below the smallest type mix "
                          f"({table.fixed_bytes + low:,} bytes with the rest of the model)")
    return size - table.fixed_bytes, f"{size:,} bytes"


def quantize_to_budget(input: PathLike, output: PathLike, *, target_bpw: Optional[float] = None,
                       target_size: Any = None, calibration_data: Any = None, costs: Optional[CostTable] = None,
                       save_recipe: Optional[PathLike] = None, mode: Optional[str] = None,
                       auto_threshold: Optional[float] = None, check: bool = True, progress: bool = True,
                       **quantize_options: Any):
    """Quantize ``input`` into ``output`` within a budget (see the module docstring);
    returns the :class:`~onnxq.report.QuantizeReport` with ``.budget`` filled in.
    ``costs``: a :class:`CostTable` measured before (e.g. for several budgets); ``mode``:
    ``auto`` (default: per layer, measured on the same data), ``exact`` or ``fast``."""
    from .pipeline import quantize

    data, source = calibration_data, "the given calibration inputs"
    if costs is None or check or data is None:
        data, source = _data(os.fspath(input), data, source, progress)
    table = costs or measure_costs(input, data, data_source=source, progress=progress)
    limit, target = budget_bytes(table, target_bpw, target_size)
    choice, solver, compared = _allocate_checked(input, table, limit, data, check)
    modes, reasons = _modes(input, table, choice, data, mode, auto_threshold, progress)
    recipe = budget_recipe(table, choice, modes, f"budget-{target.replace(' ', '')}")
    report = quantize(input, output, recipe=recipe, progress=progress, **quantize_options)
    if target_size is not None and report.output_bytes > parse_size(target_size):
        # the graph around the weights grew (op nodes, names): take the excess off the weights once
        choice, solver, compared = _allocate_checked(
            input, table, limit - (report.output_bytes - parse_size(target_size)), data, check)
        recipe = budget_recipe(table, choice, modes, recipe.name)
        report = quantize(input, output, recipe=recipe, progress=progress, **quantize_options)
    result = BudgetReport(target, limit, table, choice, plan_cost(table, choice), unit_bytes=plan_bytes(table, choice),
                          compared=compared, solver=solver)
    if check:
        result.measured = _measured_loss(input, os.fspath(output), data)
    _annotate(report, table, choice, reasons)
    report.budget = result
    if save_recipe is not None:
        save_recipe_file(recipe, save_recipe)
    return report


def _modes(input, table: CostTable, choice, data, mode, threshold, progress) -> Tuple[Dict[str, str], Dict[str, str]]:
    """The mode of every quantized linear layer ({site: mode}, {site: reason}): ``mode``
    for all, or with ``auto`` (None) the auto rule on the chosen types."""
    from .calibrate import calibrate
    from .ggml.modes import DEFAULT_THRESHOLD, choose_mode, measure_mode_errors, role_weight
    from .ggml.sensitivity import candidate_tail
    from .modelio import load_model, model_dir
    from .sites import ModelGraph, find_sites, weight_matrix_kn

    path = os.fspath(input)
    proto = load_model(path)
    analysis = find_sites(proto)
    linear = {s.name: s for s in analysis.linear}
    chosen = {s: choice[u.weight] for u in table.units for s in u.sites if s in linear and choice[u.weight] != KEEP}
    if not chosen:
        return {}, {}
    if mode not in (None, "auto"):
        if mode not in ("exact", "fast"):
            raise RecipeError(f"mode {mode!r} must be one of auto, exact, fast")
        return {s: mode for s in chosen}, {s: f"--mode {mode}" for s in chosen}
    stats = calibrate(proto, list(dict.fromkeys(linear[s].input for s in chosen)), data, batch_size=1, bins=16,
                      sample_rows=SAMPLE_ROWS, base_dir=model_dir(path), progress=progress)
    graph = ModelGraph(proto)
    modes, reasons = {}, {}
    t = DEFAULT_THRESHOLD if threshold is None else threshold
    for name, qtype in chosen.items():
        site = linear[name]
        exact, fast = measure_mode_errors(weight_matrix_kn(graph, site, model_dir(path)), qtype,
                                          candidate_tail(qtype, site.K), stats[site.input].samples)
        c = choose_mode(name, exact, fast, t, role_weight(site.role))
        modes[name], reasons[name] = c.mode, c.reason
    return modes, reasons


def _allocate_checked(input, table: CostTable, limit: int, data, check: bool):
    """``(mix, solver, {solver: (predicted, measured loss)})``: :func:`allocate`'s mix, or with
    ``check`` and two solvers disagreeing, the better one measured end to end
    (:func:`pick_measured`: every unit weight quantized and back, exact mode, on the
    batches the costs were measured on)."""
    mixes = alternatives(table, limit)
    if not check or len(mixes) == 1:
        name, mix = next(iter(mixes.items()))
        return mix, name, {}
    from .calibrate import CalibrationCache
    from .evaluate.probe import LossProbe
    from .ggml.sensitivity import dequantized
    from .modelio import load_model, model_dir

    path = os.fspath(input)
    proto = load_model(path)
    probe = LossProbe(proto, [u.weight for u in table.units],
                      CalibrationCache(data, proto, batch_size=1).batches[:PROBE_BATCHES], model_dir(path))

    def loss(mix: Dict[str, str]) -> float:
        return probe.loss({u.weight: dequantized(probe.float[u.weight], mix[u.weight], u.rows_stored)
                           for u in table.units if mix[u.weight] != KEEP})

    name, measured = pick_measured(table, mixes, limit, loss)
    if not measured:  # only one mix used the budget within 1 %: nothing to compare
        return mixes[name], name, {}
    return mixes[name], name, {n: (plan_cost(table, mixes[n]), measured.get(n)) for n in mixes}


def _measured_loss(input, output: str, data) -> float:
    """The loss of the written model on the batches the costs were measured on."""
    from .calibrate import CalibrationCache
    from .evaluate.probe import LossProbe
    from .modelio import load_model, model_dir

    path = os.fspath(input)
    proto = load_model(path)
    cache = CalibrationCache(data, proto, batch_size=1)
    probe = LossProbe(proto, [], cache.batches[:PROBE_BATCHES], model_dir(path))
    return probe.loss_of_model(output)


def _annotate(report, table: CostTable, choice, reasons) -> None:
    site_cost = {s: u.cost(choice[u.weight]) for u in table.units for s in u.sites}
    for layer in report.layers:
        layer.cost = site_cost.get(layer.name)
        if layer.name in reasons:
            layer.mode_reason = reasons[layer.name]


def save_recipe_file(recipe, path: PathLike) -> str:
    """Write ``recipe`` as YAML (``.yaml``/``.yml``, needs PyYAML) or JSON, atomically."""
    from .modelio import atomic_write

    path = os.path.abspath(os.fspath(path))
    data = recipe.to_dict()
    if path.lower().endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError:
            raise RecipeError(f"{path}: writing a YAML recipe needs PyYAML; use a .json name") from None
        text = yaml.safe_dump(data, sort_keys=False, width=200)
    else:
        text = json.dumps(data, indent=1)
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))
