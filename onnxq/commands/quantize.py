"""``onnxq quantize IN.onnx -o OUT.onnx --type q6_k | --recipe FILE|PRESET ...``

GGML weight-only quantization (one type, or a recipe: a method per layer), or
``--method smoothquant`` for whole-model SmoothQuant W8A8. Prints a closing table per
method: layers, parameters, bytes, effective bits per weight, totals and the ratio to
float32, and a summary of what was skipped.
"""
from __future__ import annotations

import argparse
import json
import os
import sys


#: the options that name calibration data: (flag, metavar, help)
_DATA_OPTIONS = (
    ("--imatrix-data", "DATA", "calibration inputs (.npz, one array per model input; input_ids alone will do) to "
                               "compute an importance matrix, or an imatrix .npz saved with --save-imatrix"),
    ("--save-imatrix", "FILE.npz", "save the importance matrix for reuse"),
    ("--calib", "DATA", "calibration inputs (.npz; input_ids alone will do) for SmoothQuant (whole model or "
                        "recipe layers), --awq, mode auto and budgets"),
)


def configure(parser: argparse.ArgumentParser) -> None:
    from ..presets import preset_names
    from ..text_inputs import DEFAULT_WINDOW, DEFAULT_WINDOWS

    parser.add_argument("input", nargs="?", help="the ONNX model to quantize (never modified)")
    parser.add_argument("-o", "--output", help="where to write the quantized model")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--type", help="one GGML type for every layer: q4_0 q4_1 q5_0 q5_1 q8_0 q4_k q5_k q6_k")
    what.add_argument(
        "--recipe",
        help=f"a recipe file (.json/.yaml) or a preset: {', '.join(preset_names())} (default: q4_k_m for a language model, encoder-q6 for an encoder: the measured best of each)",
    )
    parser.add_argument("--method", choices=("ggml", "smoothquant"), default="ggml",
                        help="ggml (default): GGML blocks via --type/--recipe; smoothquant: whole-model W8A8")
    parser.add_argument("--mode", choices=("auto", "fast", "exact"),
                        help="GGML matmul mode for layers whose rule does not say: auto (the default: per layer, "
                             "fast where the measured cost of 8-bit activations is below --auto-threshold, on "
                             "--calib data or, without it, self-generated text / shipped sentences), exact (float "
                             "activations) or fast (activations quantized to 8-bit blocks, as ggml)")
    parser.add_argument("--auto-threshold", type=float, metavar="F",
                        help="mode auto: fast where it adds less than F to a layer's relative output error "
                             "||XW - X'Q(W)||^2/||XW||^2 (default: onnxq.ggml.modes.DEFAULT_THRESHOLD, "
                             "measured: docs/budget.md)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--target-bpw", type=float, metavar="B",
                        help="mixed precision within B bits per weight (every quantized weight, embeddings "
                             "included, as inspect counts): a type per layer from costs measured on --calib data "
                             "(or self-generated text / shipped sentences)")
    budget.add_argument("--target-size", metavar="SIZE",
                        help="mixed precision within a file size, e.g. 90MB or 85MiB (as --target-bpw)")
    parser.add_argument("--save-recipe", metavar="FILE.yaml",
                        help="with --target-bpw/--target-size: write the chosen mix as a recipe (.yaml or .json) "
                             "that reproduces the file byte for byte")
    for flag, metavar, text in _DATA_OPTIONS:
        parser.add_argument(flag, metavar=metavar, help=text)
    text = parser.add_argument_group(
        "calibration from text (windows of token ids; the model's other inputs, such as attention_mask, "
        "position_ids and an empty KV cache, are synthesized)")
    text.add_argument("--calib-text", metavar="FILE.txt",
                      help="UTF-8 text to calibrate SmoothQuant / --awq on (instead of --calib)")
    text.add_argument("--imatrix-text", metavar="FILE.txt",
                      help="UTF-8 text to compute the importance matrix on (instead of --imatrix-data)")
    text.add_argument("--tokenizer", metavar="tokenizer.json",
                      help="tokenizer for the text (default: the tokenizer.json beside the input model, as optimum "
                           "and onnxruntime-genai write it)")
    text.add_argument("--calib-window", type=int, metavar="TOKENS", default=DEFAULT_WINDOW,
                      help=f"tokens per calibration window (default {DEFAULT_WINDOW})")
    text.add_argument("--calib-windows", type=int, metavar="N", default=DEFAULT_WINDOWS,
                      help=f"windows spread over the text (default {DEFAULT_WINDOWS})")
    parser.add_argument("--awq", action="store_true",
                        help="activation-aware weight scaling of the GGML layers before packing (needs --calib "
                             "or --imatrix-data with model inputs); 1/s is folded into the producing norm/Mul")
    parser.add_argument("--awq-explicit-mul", action="store_true",
                        help="with --awq: where no producer can absorb 1/s (e.g. BERT post-norm blocks), insert "
                             "Mul(X, 1/s) in front of the layers (one extra elementwise op per quantized layer)")
    parser.add_argument("--keep", action="append", metavar="GLOB", default=[],
                        help="leave layers whose node or weight name matches GLOB in float (repeatable; "
                             "overrides the recipe, e.g. --keep '*layers.0/mlp/down_proj*')")
    parser.add_argument("--calib-batches", type=int, metavar="N", help="use at most N calibration batches")
    parser.add_argument("--alpha", help="SmoothQuant migration strength in [0, 1], or 'auto' (the default: per-group "
                                        "search, the measured best)")
    parser.add_argument("--format", choices=("qdq", "qoperator", "dynamic"), help="SmoothQuant output format")
    parser.add_argument("--weight-type", choices=("uint8", "int8"),
                        help="SmoothQuant int8 weight storage: uint8 with zero point 128 (default; u8u8 kernels, "
                             "never saturate) or int8 (u8s8 kernels: faster, may saturate on CPUs without VNNI)")
    add_portable_options(parser)
    parser.add_argument("--threads", type=int, metavar="N", help="threads for packing (default: all cores)")
    parser.add_argument("--report", metavar="FILE.json", help="also write the full report as JSON")
    parser.add_argument("--list-presets", action="store_true", help="list the built-in recipes and exit")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def add_portable_options(parser: argparse.ArgumentParser) -> None:
    """``--portable`` / ``--portable-ops`` (shared with ``onnxq convert``)."""
    parser.add_argument("--portable", action="store_true",
                        help="write the GGML layers in stock onnxruntime operators (the file runs with no onnxq "
                             "library: other execution providers, onnxruntime-web, apps that cannot load one); the "
                             "blocks are re-encoded on the same grid, see docs/portable.md")
    parser.add_argument("--portable-ops", choices=("matmulnbits", "qdq"),
                        help="with --portable: matmulnbits (default: com.microsoft MatMulNBits for linear layers, "
                             "GatherBlockQuantized for embeddings) or qdq (standard ONNX: opset-21 blocked "
                             "DequantizeLinear feeding MatMul / Gather)")


def portable_choice(args: argparse.Namespace):
    """The portable target the flags ask for, or None."""
    from ..errors import OnnxqError

    if args.portable_ops and not args.portable:
        raise OnnxqError("--portable-ops is an option of --portable")
    return (args.portable_ops or "matmulnbits") if args.portable else None


def _list_presets() -> int:
    from ..presets import PRESETS

    for name, spec in PRESETS.items():
        print(f"{name:<12} {spec.get('description', '')}")
    return 0


def run(args: argparse.Namespace) -> int:
    from ..errors import OnnxqError, RecipeError

    if args.list_presets:
        return _list_presets()
    if not args.input or not args.output:
        raise OnnxqError("need an input model and -o OUTPUT")
    if args.threads is not None and args.threads < 1:
        raise OnnxqError(f"--threads must be >= 1, got {args.threads}")
    if args.calib_batches is not None and args.calib_batches < 1:
        raise OnnxqError(f"--calib-batches must be >= 1, got {args.calib_batches}")
    if args.awq_explicit_mul and not args.awq:
        raise OnnxqError("--awq-explicit-mul is an option of --awq")
    portable = portable_choice(args)
    if portable and args.method == "smoothquant":
        raise OnnxqError("--portable re-encodes GGML layers; --method smoothquant already writes stock operators")
    if args.target_bpw is not None or args.target_size is not None:
        if portable:
            raise OnnxqError("--portable does not go with --target-bpw/--target-size yet: quantize to the budget, "
                             "then `onnxq convert IN -o OUT --portable`")
        return _run_budget(args)
    if args.save_recipe:
        raise OnnxqError("--save-recipe writes the mix a --target-bpw/--target-size run chose")
    smoothquant = args.method == "smoothquant"
    if smoothquant:
        if args.awq:
            raise OnnxqError("--awq applies to GGML layers, not --method smoothquant")
        if args.type or args.recipe or args.imatrix_data or args.imatrix_text or args.mode:
            raise OnnxqError("--method smoothquant takes --calib/--calib-text/--alpha/--format, not "
                             "--type/--recipe/--imatrix-data/--imatrix-text/--mode")
        if not args.calib and not args.calib_text:
            raise OnnxqError("--method smoothquant needs calibration inputs: --calib DATA.npz or --calib-text FILE.txt")
    elif args.alpha is not None or args.format is not None or args.weight_type is not None:
        if not args.recipe:
            raise RecipeError("--alpha/--format/--weight-type apply to --method smoothquant or recipes with smoothquant layers")
    from ..pipeline import quantize
    from ..smoothquant.step import smoothquant_recipe

    sq_options = {}
    if args.alpha is not None:
        sq_options["alpha"] = _alpha(args.alpha)
    if args.format is not None:
        sq_options["format"] = args.format
    if args.weight_type is not None:
        sq_options["weight_type"] = args.weight_type
    qtype, recipe = (None, smoothquant_recipe()) if smoothquant else (args.type, args.recipe)
    calib, imatrix_data = _calibration_sources(args)
    report = quantize(
        args.input,
        args.output,
        type=qtype,
        recipe=recipe,
        mode=args.mode,
        imatrix_data=imatrix_data,
        save_imatrix=None if smoothquant else args.save_imatrix,
        calibration_data=calib,
        smoothquant_options=sq_options,
        awq=({"explicit_mul": True} if args.awq_explicit_mul else True) if args.awq else None,
        threads=args.threads,
        calibration_batches=args.calib_batches,
        auto_threshold=args.auto_threshold,
        keep=args.keep,
        portable=portable,
        progress=not args.quiet,
    )
    _print_report(args, report)
    return 0


def _run_budget(args: argparse.Namespace) -> int:
    """``--target-bpw`` / ``--target-size``: measured costs -> a type per layer."""
    from ..budget import quantize_to_budget
    from ..errors import OnnxqError

    clashes = [flag for flag, given in (("--type", args.type), ("--recipe", args.recipe), ("--awq", args.awq),
                                        ("--keep", args.keep), ("--method smoothquant", args.method == "smoothquant"))
               if given]
    if clashes:
        raise OnnxqError(f"a budget chooses every layer's type: {clashes[0]} does not go with --target-bpw/--target-size")
    calib, imatrix_data = _calibration_sources(args)
    report = quantize_to_budget(
        args.input, args.output, target_bpw=args.target_bpw, target_size=args.target_size,
        calibration_data=calib if calib is not None else imatrix_data, save_recipe=args.save_recipe, mode=args.mode,
        auto_threshold=args.auto_threshold, threads=args.threads, progress=not args.quiet,
    )
    if not args.quiet:
        print(report.layer_table())
    print(report.budget.summary())
    if args.save_recipe:
        print(f"recipe: {args.save_recipe} (reproduces {args.output} byte for byte)")
    _print_report(args, report)
    return 0


def _print_report(args: argparse.Namespace, report) -> None:
    smoothquant = args.method == "smoothquant"
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if smoothquant:
        print(f"{report.input} -> {report.output}  (SmoothQuant W8A8, {report.seconds:.1f} s)")
        if report.smoothquant is not None:
            print(report.smoothquant.to_text())
    else:
        print(f"{report.input} -> {report.output}  (recipe {report.recipe.name}, {report.seconds:.1f} s"
              + (f", imatrix over {report.imatrix_tensors} inputs" if report.imatrix_tensors else "") + ")")
    if report.awq is not None and not args.quiet:
        print(report.awq.to_text())
    print(report.table())
    if args.report:
        with open(args.report, "w", encoding="utf-8") as fh:
            json.dump(report.to_dict(), fh, indent=2)


def _calibration_sources(args: argparse.Namespace):
    """(calibration data, imatrix data): the given .npz paths, or windows of token ids from
    --calib-text / --imatrix-text (one source when both name the same file)."""
    from ..errors import OnnxqError
    from ..text_inputs import resolve_text_tokenizer, text_batches

    for flag, file_flag, text_flag in (("calib", "--calib", "--calib-text"),
                                       ("imatrix_data", "--imatrix-data", "--imatrix-text")):
        text_attr = "calib_text" if flag == "calib" else "imatrix_text"
        if getattr(args, flag) and getattr(args, text_attr):
            raise OnnxqError(f"give {file_flag} or {text_flag}, not both")
    if args.calib_window < 2 or args.calib_windows < 1:
        raise OnnxqError(f"--calib-window must be >= 2 and --calib-windows >= 1, got {args.calib_window} "
                         f"and {args.calib_windows}")
    texts = [t for t in (args.calib_text, args.imatrix_text) if t]
    if not texts:
        if args.tokenizer:
            raise OnnxqError("--tokenizer applies to --calib-text / --imatrix-text")
        return args.calib, args.imatrix_data
    tokenizer = resolve_text_tokenizer(args.tokenizer, args.input)
    made = {}
    for path in texts:
        key = os.path.abspath(path)
        if key not in made:
            made[key] = text_batches(path, tokenizer, window=args.calib_window, windows=args.calib_windows)
    calib = made[os.path.abspath(args.calib_text)] if args.calib_text else args.calib
    imatrix = made[os.path.abspath(args.imatrix_text)] if args.imatrix_text else args.imatrix_data
    return calib, imatrix


def _alpha(text: str):
    from ..errors import RecipeError

    if text == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise RecipeError(f"--alpha must be a number in [0, 1] or 'auto', got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise RecipeError(f"--alpha must be in [0, 1], got {value}")
    return value
