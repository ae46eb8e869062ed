"""Greedy decoding with a zoo causal LM (full-sequence or KV-cache variant) in onnxruntime."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..errors import ModelError


def _is_kv(session) -> bool:
    return any(i.name.startswith("past_key_values.") for i in session.get_inputs())


def empty_past(session, batch: int = 1) -> dict[str, np.ndarray]:
    """Zero-length ``past_key_values.*`` feeds for the first (prefill) call of a KV model."""
    feeds = {}
    for inp in session.get_inputs():
        if inp.name.startswith("past_key_values."):
            _, heads, _, head_dim = inp.shape
            if not isinstance(heads, int) or not isinstance(head_dim, int):
                raise ModelError(f"input {inp.name} has shape {inp.shape}; expected fixed heads and head_dim")
            feeds[inp.name] = np.zeros((batch, heads, 0, head_dim), dtype=np.float32)
    return feeds


def greedy_generate(
    session,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    eos_id: Optional[int] = None,
) -> list[int]:
    """New token ids (argmax at each step) after ``prompt_ids``, stopping at ``eos_id``.

    ``session`` is an onnxruntime InferenceSession of a ``causal-lm`` model (the whole sequence
    is re-run each step) or a ``causal-lm-kv`` model (prefill once, then one token per step).
    """
    ids = [int(i) for i in prompt_ids]
    if not ids:
        raise ModelError("greedy_generate needs at least one prompt token")
    if max_new_tokens < 0:
        raise ModelError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    new: list[int] = []
    if not _is_kv(session):
        for _ in range(max_new_tokens):
            logits = session.run(["logits"], {"input_ids": np.array([ids + new], dtype=np.int64)})[0]
            new.append(int(np.argmax(logits[0, -1])))
            if new[-1] == eos_id:
                break
        return new

    output_names = [o.name for o in session.get_outputs()]
    past = empty_past(session)
    step = np.array([ids], dtype=np.int64)
    total = 0
    for _ in range(max_new_tokens):
        n = step.shape[1]
        feeds = {
            "input_ids": step,
            "attention_mask": np.ones((1, total + n), dtype=np.int64),
            "position_ids": np.arange(total, total + n, dtype=np.int64)[None, :],
            **past,
        }
        outs = dict(zip(output_names, session.run(output_names, feeds)))
        past = {name.replace("present.", "past_key_values.", 1): value
                for name, value in outs.items() if name.startswith("present.")}
        total += n
        new.append(int(np.argmax(outs["logits"][0, -1])))
        if new[-1] == eos_id:
            break
        step = np.array([[new[-1]]], dtype=np.int64)
    return new
