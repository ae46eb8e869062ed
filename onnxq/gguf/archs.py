"""The GGUF architectures onnxq imports, and how their files differ.

Every architecture here is a LLaMA-family decoder with llama.cpp's tensor names
(``token_embd``, ``blk.N.attn_q`` ... ``output_norm``, ``output``) and metadata under
``<architecture>.*``; they differ in how llama.cpp's converter stored q/k rows and in which
biases they carry. Mistral 7B and SmolLM2 GGUFs say ``llama`` (llama.cpp converts them as
LLaMA), so they are covered by that entry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Tuple

from ..errors import ModelError


@dataclass(frozen=True)
class Architecture:
    """What the importer must know about one ``general.architecture`` value."""

    name: str
    #: llama.cpp's converter permuted q/k rows for ggml's adjacent-pair ("normal") rope;
    #: False for "neox"-rope architectures, whose rows are stored as in HF
    qk_rows_permuted: bool
    #: ``blk.N.<name>.bias`` tensors the architecture requires (others may be present)
    required_biases: Tuple[str, ...] = ()
    description: str = ""


ARCHITECTURES = {
    a.name: a
    for a in (
        Architecture("llama", True, description="LLaMA 1-3, Mistral 7B, SmolLM2 and other llama-converted models"),
        Architecture("qwen2", False, ("attn_q", "attn_k", "attn_v"), description="Qwen2 / Qwen2.5 (q/k/v bias)"),
    )
}

#: the tensor names of one decoder layer (``blk.N.<name>.weight``)
LAYER_WEIGHTS = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up",
                 "ffn_down")
#: per-layer tensors the graph reads besides the weights (a bias is optional unless required)
LAYER_BIASES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def graph_tensors(n_layers: int, tied: bool) -> Tuple[set, set]:
    """(tensors the LLaMA-family graph reads, optional ones it reads when present)."""
    required = {"token_embd.weight", "output_norm.weight"} | ({"output.weight"} if not tied else set())
    optional = {"rope_freqs.weight"}
    for i in range(n_layers):
        required |= {f"blk.{i}.{n}.weight" for n in LAYER_WEIGHTS}
        optional |= {f"blk.{i}.{n}.bias" for n in LAYER_BIASES}
    return required, optional


def check_tensor_names(names: Iterable[str], arch: Architecture, n_layers: int, tied: bool, path: object) -> None:
    """Every tensor the graph needs is present and every tensor present is one it reads:
    a file with more (e.g. q/k norms, experts) is a variant onnxq does not build, refused."""
    names = set(names)
    required, optional = graph_tensors(n_layers, tied)
    required |= {f"blk.{i}.{n}.bias" for i in range(n_layers) for n in arch.required_biases}
    missing = sorted(required - names)
    if missing:
        raise ModelError(f"{path}: {arch.name} tensor(s) missing: {', '.join(missing[:8])}"
                         + (f" and {len(missing) - 8} more" if len(missing) > 8 else ""))
    extra = sorted(names - required - optional)
    if extra:
        more = f" and {len(extra) - 8} more" if len(extra) > 8 else ""
        raise ModelError(f"{path}: tensor(s) {', '.join(extra[:8])}{more}"
                         + f" are not part of the {arch.name} graph onnxq builds (a variant of the architecture "
                         "it does not support)")


def architecture(name: str, path: object) -> Architecture:
    """The entry for ``general.architecture`` = ``name``; a ModelError naming it otherwise."""
    found = ARCHITECTURES.get(name)
    if found is None:
        raise ModelError(f"{path}: general.architecture is {name!r}, which onnxq cannot import; supported: "
                         + ", ".join(f"{a.name} ({a.description})" for a in ARCHITECTURES.values()))
    return found
