"""Quality metrics on numpy arrays: pure functions, float64 throughout.

Every function here is checked against hand-computed values in tests/test_eval_metrics.py;
the evaluators only feed them model outputs.

Non-finite numbers are results, not zeros: a NaN or Inf in a model's output makes the
metrics it enters NaN or Inf (never silently dropped by a ``max``), :func:`nonfinite_counts`
counts them, and numpy's RuntimeWarnings about them are silenced (``quiet``), since the
report states them.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Optional, Sequence

import numpy as np

#: Rows of logits converted to float64 at a time: 32 rows x 49152 logits x 8 bytes = 12.6 MB
#: per array. Small blocks reused in place are several times faster than whole-array
#: temporaries of hundreds of MB (page faults dominate those).
_CHUNK_ROWS = 32


#: numpy floating-point warnings are off where model outputs may hold NaN / Inf
quiet = functools.partial(np.errstate, all="ignore")


def worst(a: float, b: float) -> float:
    """max(a, b) that keeps a NaN (Python's ``max`` drops it when it comes second)."""
    if math.isnan(a) or math.isnan(b):
        return float("nan")
    return max(a, b)


def count_nonfinite(values: np.ndarray) -> dict[str, int]:
    """``{"nan": n, "inf": n}`` elements of ``values`` (Inf of either sign)."""
    x = np.asarray(values)
    if x.dtype.kind not in "fc":
        return {"nan": 0, "inf": 0}
    return {"nan": int(np.count_nonzero(np.isnan(x))), "inf": int(np.count_nonzero(np.isinf(x)))}


def nonfinite_counts(ref: np.ndarray, cand: np.ndarray) -> dict[str, int]:
    """The candidate's NaN and Inf elements, and ``introduced``: how many of them sit
    where the reference's value is finite."""
    counts = count_nonfinite(cand)
    c = np.asarray(cand)
    if c.dtype.kind in "fc" and counts["nan"] + counts["inf"]:
        counts["introduced"] = int(np.count_nonzero(~np.isfinite(c) & np.isfinite(np.asarray(ref))))
    else:
        counts["introduced"] = 0
    return counts


def add_counts(total: dict[str, int], part: dict[str, int]) -> None:
    """``total[k] += part[k]`` for every key of ``part`` (in place)."""
    for key, value in part.items():
        total[key] = total.get(key, 0) + value


def log_softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """log(softmax(logits)) in float64, stable for large logits."""
    x = np.asarray(logits)
    if x.ndim == 2 and axis in (-1, 1):
        out = np.empty(x.shape, dtype=np.float64)
        for start in range(0, x.shape[0], _CHUNK_ROWS):
            _log_softmax_rows(x[start : start + _CHUNK_ROWS], out[start : start + _CHUNK_ROWS])
        return out
    x = x.astype(np.float64)
    shifted = x - np.max(x, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def _log_softmax_rows(rows: np.ndarray, out: np.ndarray) -> np.ndarray:
    """log-softmax of 2-D ``rows`` written into the float64 array ``out`` (returned)."""
    out[...] = rows
    out -= out.max(axis=-1, keepdims=True)
    out -= np.log(np.exp(out).sum(axis=-1, keepdims=True))
    return out


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Negative log-likelihood (nats) of ``targets`` [T] under ``logits`` [T, V], float64 [T]."""
    logits = np.asarray(logits)
    targets = np.asarray(targets)
    if logits.ndim != 2 or targets.shape != (logits.shape[0],):
        raise ValueError(f"token_nll: expected logits [T, V] and targets [T], got {logits.shape} and {targets.shape}")
    out = np.empty(logits.shape[0], dtype=np.float64)
    for start in range(0, logits.shape[0], _CHUNK_ROWS):
        stop = start + _CHUNK_ROWS
        lp = log_softmax(logits[start:stop])
        out[start:stop] = -lp[np.arange(lp.shape[0]), targets[start:stop]]
    return out


def perplexity(nll_sum: float, count: int) -> float:
    """exp(mean negative log-likelihood) over ``count`` predicted tokens."""
    if count <= 0:
        raise ValueError("perplexity: no predicted tokens")
    return float(np.exp(nll_sum / count))


def kl_divergence(ref_logits: np.ndarray, cand_logits: np.ndarray) -> np.ndarray:
    """KL(P_ref || P_cand) in nats for each row of two [T, V] logit arrays, float64 [T].

    Computed from log-softmax in float64: sum_v p(v) * (log p(v) - log q(v)). Clipped at 0
    because float rounding can make a true zero come out as -1e-17.
    """
    ref_logits = np.asarray(ref_logits)
    cand_logits = np.asarray(cand_logits)
    if ref_logits.shape != cand_logits.shape or ref_logits.ndim != 2:
        raise ValueError(
            f"kl_divergence: expected two [T, V] arrays of one shape, got {ref_logits.shape} and {cand_logits.shape}"
        )
    out = np.empty(ref_logits.shape[0], dtype=np.float64)
    for start in range(0, ref_logits.shape[0], _CHUNK_ROWS):
        stop = start + _CHUNK_ROWS
        lp = log_softmax(ref_logits[start:stop])
        lq = log_softmax(cand_logits[start:stop])
        out[start:stop] = np.sum(np.exp(lp) * (lp - lq), axis=-1)
    return np.maximum(out, 0.0)


def top1_matches(ref_logits: np.ndarray, cand_logits: np.ndarray) -> np.ndarray:
    """Boolean [T]: does the candidate's most likely token equal the reference's?"""
    return np.argmax(np.asarray(ref_logits), axis=-1) == np.argmax(np.asarray(cand_logits), axis=-1)


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean of ``hidden`` [B, S, D] over the positions where ``mask`` [B, S] is non-zero.

    As sentence-transformers pools: sum(h * m) / max(sum(m), 1e-9), in float64.
    """
    h = np.asarray(hidden, dtype=np.float64)
    m = np.asarray(mask, dtype=np.float64)
    if h.ndim != 3 or m.shape != h.shape[:2]:
        raise ValueError(f"mean_pool: expected hidden [B, S, D] and mask [B, S], got {h.shape} and {m.shape}")
    summed = np.einsum("bsd,bs->bd", h, m)
    counts = np.maximum(m.sum(axis=1, keepdims=True), 1e-9)
    return summed / counts


def cosine_similarity(a: np.ndarray, b: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise cosine similarity of two [N, D] arrays, float64 [N].

    A zero row against a zero row counts as identical (1.0); a zero row against a
    non-zero row as 0.0.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"cosine_similarity: expected two [N, D] arrays of one shape, got {a.shape} and {b.shape}")
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    dot = np.sum(a * b, axis=1)
    cos = dot / np.maximum(na * nb, eps)
    both_zero = (na < eps) & (nb < eps)
    return np.where(both_zero, 1.0, np.clip(cos, -1.0, 1.0))


def squared_norms(ref: np.ndarray, cand: np.ndarray) -> tuple[float, float]:
    """(||cand - ref||^2, ||ref||^2) in float64: the parts of a relative error that add up
    over several batches."""
    r = np.asarray(ref, dtype=np.float64)
    c = np.asarray(cand, dtype=np.float64)
    if r.shape != c.shape:
        raise ValueError(f"relative error: shapes differ, reference {r.shape} vs candidate {c.shape}")
    return float(np.sum((c - r) ** 2)), float(np.sum(r**2))


def relative_error(ref: np.ndarray, cand: np.ndarray) -> float:
    """||cand - ref|| / ||ref|| (Frobenius norm over all elements), float64.

    0 when both are all zeros; inf when only the reference is.
    """
    diff2, ref2 = squared_norms(ref, cand)
    return relative_error_from_sums(diff2, ref2)


def relative_error_from_sums(diff2: float, ref2: float) -> float:
    """sqrt(diff2 / ref2) with the zero-reference cases of :func:`relative_error`; NaN
    when either sum is NaN, Inf when one is infinite (non-finite outputs)."""
    if math.isnan(diff2) or math.isnan(ref2) or (math.isinf(diff2) and math.isinf(ref2)):
        return float("nan")
    if math.isinf(diff2) or math.isinf(ref2):
        return float("inf") if math.isinf(diff2) else float("nan")
    if ref2 == 0.0:
        return 0.0 if diff2 == 0.0 else float("inf")
    return float(np.sqrt(diff2 / ref2))


def max_abs_error(ref: np.ndarray, cand: np.ndarray) -> Optional[float]:
    """max |cand - ref| in float64 (None for empty arrays)."""
    r = np.asarray(ref, dtype=np.float64)
    c = np.asarray(cand, dtype=np.float64)
    if r.size == 0:
        return None
    return float(np.max(np.abs(c - r)))


def kl_from_logprobs(ref_logprobs: np.ndarray, cand_logprobs: np.ndarray) -> np.ndarray:
    """KL(P || Q) per row from float64 log-probabilities [T, V], clipped at 0."""
    lp = np.asarray(ref_logprobs, dtype=np.float64)
    lq = np.asarray(cand_logprobs, dtype=np.float64)
    return np.maximum(np.sum(np.exp(lp) * (lp - lq), axis=-1), 0.0)


def lm_window_stats(ref_logits: np.ndarray, cand_logits: Sequence[np.ndarray], targets: np.ndarray) -> dict[str, Any]:
    """Sums over the rows of one window, for the reference and each candidate.

    ``ref_logits`` and each of ``cand_logits`` are [T, V] (row t predicts ``targets[t]``).
    Returns ``{"ref": {"nll", "correct"}, "cands": [{"nll", "correct", "agree", "kl", "kl_max"}]}``
    with float64 sums; everything is computed block by block from log-softmax in float64.
    """
    targets = np.asarray(targets)
    rows = ref_logits.shape[0]
    if targets.shape != (rows,):
        raise ValueError(f"lm_window_stats: {rows} rows of logits but targets of shape {targets.shape}")
    for c in cand_logits:
        if c.shape != ref_logits.shape:
            raise ValueError(f"lm_window_stats: logits of shape {ref_logits.shape} and {c.shape}")
    ref = {"nll": 0.0, "correct": 0}
    cands = [{"nll": 0.0, "correct": 0, "agree": 0, "kl": 0.0, "kl_max": 0.0} for _ in cand_logits]
    block = min(_CHUNK_ROWS, rows)
    lp_buf = np.empty((block, ref_logits.shape[1]), dtype=np.float64)
    lq_buf = np.empty_like(lp_buf)
    for start in range(0, rows, block):
        stop = min(start + block, rows)
        n = stop - start
        index = np.arange(n)
        tgt = targets[start:stop]
        lp = _log_softmax_rows(ref_logits[start:stop], lp_buf[:n])
        ref_top = np.argmax(lp, axis=-1)
        ref["nll"] -= float(lp[index, tgt].sum())
        ref["correct"] += int(np.sum(ref_top == tgt))
        p = np.exp(lp)
        for stats, logits in zip(cands, cand_logits):
            lq = _log_softmax_rows(logits[start:stop], lq_buf[:n])
            top = np.argmax(lq, axis=-1)
            stats["nll"] -= float(lq[index, tgt].sum())
            stats["correct"] += int(np.sum(top == tgt))
            stats["agree"] += int(np.sum(top == ref_top))
            lq -= lp  # lq now holds log q - log p
            kl = np.maximum(-np.einsum("ij,ij->i", p, lq), 0.0)
            stats["kl"] += float(kl.sum())
            stats["kl_max"] = worst(stats["kl_max"], float(kl.max()))
    return {"ref": ref, "cands": cands}
