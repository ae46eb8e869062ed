"""``onnxq models``: list, build and locate the real models of onnxq.zoo.

    onnxq models list
    onnxq models build smollm2-135m [-o model.onnx] [--kv-cache]
    onnxq models path all-minilm-l6-v2 [--no-build]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..errors import ModelError


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="models_command", metavar="ACTION")
    sub.required = True
    sub.add_parser("list", help="the models the zoo can build, their checkpoints and cached builds")
    p_build = sub.add_parser("build", help="build a model (into the cache, or to -o PATH)")
    p_build.add_argument("name", help="model name (see 'onnxq models list')")
    p_build.add_argument("-o", "--output", type=Path, help="write the model here instead of the cache")
    p_build.add_argument("--kv-cache", action="store_true",
                         help="the KV-cache variant of a causal LM (same as NAME-kv)")
    p_build.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p_path = sub.add_parser("path", help="print the cached model's path (building it if missing)")
    p_path.add_argument("name", help="model name")
    p_path.add_argument("--no-build", action="store_true", help="exit 1 instead of building a missing model")


def _resolve(name: str, kv_cache: bool) -> str:
    from .. import zoo

    if not kv_cache or name.endswith("-kv"):
        return zoo.spec(name).name
    kind = zoo.spec(name).kind
    if kind != "causal-lm":
        raise ModelError(f"--kv-cache applies to causal language models; {name!r} is of kind {kind!r}")
    return zoo.spec(f"{name}-kv").name


def _human(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _list() -> int:
    from .. import zoo

    rows = []
    for name in zoo.available():
        s = zoo.spec(name)
        try:
            path = zoo.cached(name)
            state = f"built: {path} ({_human(path.stat().st_size)})" if path else "not built"
        except zoo.CheckpointNotFoundError as exc:
            state = f"checkpoint missing: {exc}"
        rows.append((name, s.kind, s.description, state))
    width = max(len(r[0]) for r in rows)
    kind_width = max(len(r[1]) for r in rows)
    for name, kind, desc, state in rows:
        print(f"{name:<{width}}  {kind:<{kind_width}}  {desc}")
        print(f"{'':<{width}}  {'':<{kind_width}}  {state}")
    print(f"cache: {zoo.cache_dir()} (set ONNXQ_CACHE_DIR to change)")
    return 0


def _build(args: argparse.Namespace) -> int:
    from .. import zoo

    name = _resolve(args.name, args.kv_cache)
    start = time.perf_counter()
    if args.output is not None:
        if args.output.is_dir():
            args.output = args.output / f"{name}.onnx"
        path = zoo.build(name, args.output, progress=not args.quiet)
    else:
        path = zoo.ensure(name, progress=not args.quiet)
    elapsed = time.perf_counter() - start
    print(f"{name}: {path} ({_human(path.stat().st_size)}, {elapsed:.1f} s)", file=sys.stderr)
    print(path)
    return 0


def _path(args: argparse.Namespace) -> int:
    from .. import zoo

    name = zoo.spec(args.name).name
    if args.no_build:
        path = zoo.cached(name)
        if path is None:
            print(f"onnxq models path: {name} is not built (expected at {zoo.cache_path(name)}); "
                  f"run: onnxq models build {name}", file=sys.stderr)
            return 1
    else:
        path = zoo.ensure(name)
    print(path)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.models_command == "list":
        return _list()
    if args.models_command == "build":
        return _build(args)
    return _path(args)
