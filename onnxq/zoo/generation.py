"""Greedy decoding with a zoo causal LM (full-sequence or KV-cache variant) in onnxruntime."""
from __future__ import annotations

import time
from typing import Any, Mapping, Optional, Sequence

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


def prefill_feeds(session, ids: Sequence[int], past: int = 0) -> dict[str, np.ndarray]:
    """The inputs of one call of a causal LM on ``ids`` after ``past`` cached tokens:
    ``input_ids``, and where the model takes them ``attention_mask`` (ones over past and
    new), ``position_ids`` and, with no cache yet, empty ``past_key_values.*``."""
    names = {i.name for i in session.get_inputs()}
    n = len(ids)
    feeds = {"input_ids": np.array([ids], dtype=np.int64)}
    if "attention_mask" in names:
        feeds["attention_mask"] = np.ones((1, past + n), dtype=np.int64)
    if "position_ids" in names:
        feeds["position_ids"] = np.arange(past, past + n, dtype=np.int64)[None, :]
    if past == 0:
        feeds.update(empty_past(session))
    unknown = sorted(names - set(feeds) - {k for k in names if k.startswith("past_key_values.")})
    if unknown:
        raise ModelError(f"cannot fill model input(s) {', '.join(unknown)} of a causal LM "
                         "(known: input_ids, attention_mask, position_ids, past_key_values.*)")
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

    stepper = _KVStepper(session)
    logits = stepper.step(ids)
    for _ in range(max_new_tokens):
        new.append(int(np.argmax(logits)))
        if new[-1] == eos_id or len(new) == max_new_tokens:
            break
        logits = stepper.step([new[-1]])
    return new


def sample_generate(session, prompt_ids: Sequence[int], max_new_tokens: int, rng: np.random.Generator,
                    temperature: float = 1.0) -> list[int]:
    """New token ids sampled from the model's own next-token distribution, e.g. to make
    calibration text without outside data. A KV-cache session is stepped one token at a
    time; a model without a cache is re-run on the whole prefix for every token."""
    if not prompt_ids:
        raise ModelError("sample_generate needs at least one prompt token")
    if temperature <= 0:
        raise ModelError(f"temperature must be > 0, got {temperature}")
    stepper = _KVStepper(session) if _is_kv(session) else _PrefixStepper(session)
    logits = stepper.step([int(i) for i in prompt_ids])
    new: list[int] = []
    while len(new) < max_new_tokens:
        z = logits.astype(np.float64) / temperature
        p = np.exp(z - z.max())
        new.append(int(rng.choice(p.size, p=p / p.sum())))
        if len(new) < max_new_tokens:
            logits = stepper.step([new[-1]])
    return new


class _KVStepper:
    """Feeds tokens to a KV-cache session, carrying ``present.*`` over as ``past_key_values.*``;
    ``step`` returns the logits of the last fed position."""

    def __init__(self, session) -> None:
        self.session = session
        self.output_names = [o.name for o in session.get_outputs()]
        self.past = empty_past(session)
        self.total = 0

    def step(self, ids: Sequence[int]) -> np.ndarray:
        n = len(ids)
        feeds = {**prefill_feeds(self.session, ids, self.total), **self.past}
        outs = dict(zip(self.output_names, self.session.run(self.output_names, feeds)))
        self.past = {name.replace("present.", "past_key_values.", 1): value
                     for name, value in outs.items() if name.startswith("present.")}
        self.total += n
        return outs["logits"][0, -1]


class _PrefixStepper:
    """A causal LM without a cache: every step re-runs the whole sequence so far."""

    def __init__(self, session) -> None:
        self.session = session
        self.ids: list[int] = []

    def step(self, ids: Sequence[int]) -> np.ndarray:
        self.ids.extend(int(i) for i in ids)
        return self.session.run(["logits"], prefill_feeds(self.session, self.ids))[0][0, -1]


def time_greedy(sessions: Mapping[str, Any], prompt: Sequence[int], tokens: int,
                repeats: int = 3) -> tuple[dict[str, float], dict[str, list[int]]]:
    """Greedy decoding speed of several sessions on one prompt: after a short warm-up each,
    ``repeats`` rounds interleaved (so all see the same machine load), the best time each.
    Returns ({name: tokens per second}, {name: the generated ids})."""
    best: dict[str, float] = {}
    texts: dict[str, list[int]] = {}
    for sess in sessions.values():  # warm-up
        greedy_generate(sess, prompt, 4)
    for _ in range(repeats):
        for name, sess in sessions.items():
            t = time.perf_counter()
            texts[name] = greedy_generate(sess, prompt, tokens)
            dt = time.perf_counter() - t
            best[name] = min(best.get(name, dt), dt)
    return {name: tokens / seconds for name, seconds in best.items()}, texts
