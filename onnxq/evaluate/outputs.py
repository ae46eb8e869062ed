"""Any model: relative error ||cand - ref|| / ||ref|| of every output on the same inputs.

Inputs come from an .npz file (one array per model input, named as the input), from
arrays the caller passes, or are generated: a fixed seed, shapes from the reference model
with symbolic dims set by the caller, float inputs standard normal, bool inputs fair
coins, and integer inputs in a range that is valid for the model:

* names containing ``mask``: all ones (every position attended);
* ids: uniform in [0, vocab_size) with ``vocab_size`` given by the caller, otherwise the
  row count of the embedding table the input indexes (a Gather on an initializer, followed
  through Cast/Reshape/Unsqueeze/Squeeze/Flatten/Identity), so every id is a valid row;
* any other integer input is an error that says to pass --vocab-size or --inputs.
"""
from __future__ import annotations

import os
import zipfile
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from ..errors import DataError, ModelError
from ..model_inputs import indexed_rows
from ..sites import ModelGraph
from . import metrics
from .models import TensorSpec, TimedModel, name_problems
from .progress import progress_bar

PathLike = Union[str, os.PathLike]
InputSets = Union[PathLike, Mapping[str, np.ndarray], Sequence[Mapping[str, np.ndarray]], None]

DEFAULT_REPEAT = 3


def parse_dims(items: Iterable[str]) -> dict[str, int]:
    """``["batch=2", "seq=16"]`` -> ``{"batch": 2, "seq": 16}`` (also ``input:axis=value``)."""
    dims: dict[str, int] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        try:
            number = int(value)
        except ValueError:
            number = -1
        if not sep or not name or number < 0:
            raise ModelError(f"bad --dim {item!r}: expected NAME=VALUE with a non-negative integer value")
        dims[name] = number
    return dims


def load_npz(path: PathLike) -> dict[str, np.ndarray]:
    """Arrays of an .npz file, by name."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"inputs {path}: no such file (expected an .npz with one array per model input)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise DataError(f"inputs {path}: not an .npz file ({exc})") from None
    if not arrays:
        raise DataError(f"inputs {path}: holds no arrays")
    return arrays


def check_inputs(model: TimedModel, feeds: Mapping[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    """Raise DataError naming every missing, extra, mistyped or misshaped input."""
    specs = {s.name: s for s in model.inputs}
    problems = name_problems(list(specs), list(feeds), "missing", "not model inputs:")
    out = {}
    for name, spec in specs.items():
        if name not in feeds:
            continue
        array = np.asarray(feeds[name])
        if array.dtype != np.dtype(spec.dtype):
            problems.append(f"{name} is {array.dtype}, the model takes {np.dtype(spec.dtype)}")
        elif array.ndim != len(spec.shape) or any(
            isinstance(d, int) and d >= 0 and d != a for d, a in zip(spec.shape, array.shape)
        ):
            problems.append(f"{name} has shape {list(array.shape)}, the model takes {list(spec.shape)}")
        out[name] = array
    if problems:
        raise DataError(f"{source} do not fit {model.path}: " + "; ".join(problems))
    return out


def index_range(model: TimedModel, input_name: str) -> Optional[int]:
    """Rows of the smallest table ``input_name`` indexes (see :func:`onnxq.model_inputs.indexed_rows`), or None."""
    return indexed_rows(ModelGraph(model.proto), input_name)


def _resolve_shape(spec: TensorSpec, dims: Mapping[str, int], unresolved: list[str]) -> tuple[int, ...]:
    shape = []
    for axis, dim in enumerate(spec.shape):
        if isinstance(dim, int) and dim >= 0:
            shape.append(dim)
            continue
        keys = [f"{spec.name}:{axis}"] + ([dim] if isinstance(dim, str) else [])
        value = next((dims[k] for k in keys if k in dims), None)
        if value is None:
            label = f"dim {dim!r} of input {spec.name!r}" if isinstance(dim, str) else f"axis {axis} of input {spec.name!r}"
            unresolved.append(f"{label} (--dim {keys[-1]}=N)")
            shape.append(1)
        else:
            shape.append(value)
    return tuple(shape)


def generate_inputs(
    model: TimedModel, dims: Optional[Mapping[str, int]] = None, vocab_size: Optional[int] = None, seed: int = 0
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Deterministic inputs for ``model`` and, per input, how its values were chosen."""
    dims = dict(dims or {})
    rng = np.random.default_rng(seed)
    unresolved: list[str] = []
    shapes = {spec.name: _resolve_shape(spec, dims, unresolved) for spec in model.inputs}
    if unresolved:
        raise ModelError(
            f"{model.path}: cannot generate inputs, symbolic sizes have no value: {'; '.join(unresolved)}"
        )
    feeds: dict[str, np.ndarray] = {}
    how: dict[str, str] = {}
    for spec in model.inputs:
        shape, dtype = shapes[spec.name], np.dtype(spec.dtype)
        if dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
            how[spec.name] = "standard normal"
        elif dtype.kind == "b":
            feeds[spec.name] = rng.random(shape) < 0.5
            how[spec.name] = "random bool"
        elif "mask" in spec.name.lower():
            feeds[spec.name] = np.ones(shape, dtype=dtype)
            how[spec.name] = "ones (mask)"
        else:
            high = vocab_size if vocab_size is not None else index_range(model, spec.name)
            source = "--vocab-size" if vocab_size is not None else "rows of the table it indexes"
            if high is None:
                raise ModelError(
                    f"{model.path}: cannot choose values for integer input {spec.name!r} (it indexes no "
                    "embedding table evaluation can find): pass --vocab-size N (values drawn from [0, N)) "
                    "or --inputs FILE.npz"
                )
            if high < 1:
                raise ModelError(f"vocab size must be >= 1, got {high}")
            info = np.iinfo(dtype)
            high = min(high, int(info.max) + 1)
            feeds[spec.name] = rng.integers(0, high, size=shape, dtype=dtype)
            how[spec.name] = f"uniform in [0, {high}) ({source})"
    return feeds, how


def input_sets(
    model: TimedModel,
    inputs: InputSets,
    dims: Optional[Mapping[str, int]],
    vocab_size: Optional[int],
    seed: int,
) -> tuple[list[dict[str, np.ndarray]], dict[str, Any]]:
    """The input sets to run and a description of where they came from."""
    if inputs is None:
        feeds, how = generate_inputs(model, dims, vocab_size, seed)
        return [feeds], {"inputs": f"generated (seed {seed})", "seed": seed, "dims": dict(dims or {}), "values": how}
    if isinstance(inputs, (str, os.PathLike)):
        feeds = check_inputs(model, load_npz(inputs), f"inputs {os.fspath(inputs)}")
        return [feeds], {"inputs": os.fspath(inputs)}
    if isinstance(inputs, Mapping):
        return [check_inputs(model, inputs, "given inputs")], {"inputs": "given (1 set)"}
    sets = [check_inputs(model, item, f"given input set {i}") for i, item in enumerate(inputs)]
    if not sets:
        raise DataError("given inputs: the list of input sets is empty")
    return sets, {"inputs": f"given ({len(sets)} sets)"}


def evaluate_outputs(
    reference: TimedModel,
    candidates: Sequence[TimedModel],
    inputs: InputSets = None,
    dims: Optional[Mapping[str, int]] = None,
    vocab_size: Optional[int] = None,
    seed: int = 0,
    repeat: int = DEFAULT_REPEAT,
    progress: bool = True,
) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """Run every model ``repeat`` times on the same input sets (after one untimed warm-up);
    compare the outputs of the first pass. Returns (data description, reference metrics,
    metrics of each candidate)."""
    if repeat < 1:
        raise ModelError(f"repeat must be >= 1, got {repeat}")
    sets, data = input_sets(reference, inputs, dims, vocab_size, seed)
    names = reference.output_names
    for model in (reference, *candidates):
        model.warm_up(names, sets[0])

    sums = [{n: [0.0, 0.0] for n in names} for _ in candidates]
    max_abs = [{n: 0.0 for n in names} for _ in candidates]
    work = [(r, feeds) for r in range(repeat) for feeds in sets]
    for rep, feeds in progress_bar(work, "outputs", "run", progress):
        ref_out = reference.run(names, feeds)
        for index, cand in enumerate(candidates):
            cand_out = cand.run(names, feeds)
            if rep:
                continue  # later passes only time the models
            for name, r, c in zip(names, ref_out, cand_out):
                if r.shape != c.shape:
                    raise ModelError(
                        f"models do not match: output {name!r} has shape {list(r.shape)} in {reference.path} "
                        f"but {list(c.shape)} in {cand.path}"
                    )
                diff2, ref2 = metrics.squared_norms(r, c)
                sums[index][name][0] += diff2
                sums[index][name][1] += ref2
                err = metrics.max_abs_error(r, c)
                if err is not None:
                    max_abs[index][name] = max(max_abs[index][name], err)

    results = []
    for index in range(len(candidates)):
        rel = {n: metrics.relative_error_from_sums(*sums[index][n]) for n in names}
        results.append(
            {
                "relative_error": max(rel.values()),
                "relative_errors": rel,
                "max_abs_errors": max_abs[index],
            }
        )
    data.update(
        {
            "input_sets": len(sets),
            "input_shapes": {n: list(a.shape) for n, a in sets[0].items()},
            "outputs": names,
            "repeat": repeat,
        }
    )
    return data, {}, results
