"""Metric functions against values computed by hand."""
import math

import numpy as np
import pytest

from onnxq.evaluate import metrics


def test_log_softmax_known_values_and_stability():
    out = metrics.log_softmax(np.array([[0.0, math.log(3.0)]]))
    np.testing.assert_allclose(out, [[math.log(0.25), math.log(0.75)]], rtol=1e-15)
    # huge logits do not overflow: softmax of [1000, 1000] is [0.5, 0.5]
    np.testing.assert_allclose(metrics.log_softmax(np.array([1000.0, 1000.0], dtype=np.float32)), [math.log(0.5)] * 2)


def test_perplexity_of_a_uniform_distribution_is_the_vocabulary_size():
    logits = np.zeros((10, 8), dtype=np.float32)
    nll = metrics.token_nll(logits, np.arange(10) % 8)
    assert metrics.perplexity(nll.sum(), len(nll)) == pytest.approx(8.0, rel=1e-12)


def test_perplexity_of_a_known_distribution():
    # p = [1/2, 1/4, 1/4] at every position; targets 0, 1, 2, 0:
    # mean NLL = (ln 2 + ln 4 + ln 4 + ln 2) / 4 = 1.5 ln 2, perplexity = 2 ** 1.5
    logits = np.log(np.tile([0.5, 0.25, 0.25], (4, 1))) + 7.0  # shifting logits changes nothing
    nll = metrics.token_nll(logits, np.array([0, 1, 2, 0]))
    np.testing.assert_allclose(nll, [math.log(2), math.log(4), math.log(4), math.log(2)], rtol=1e-12)
    assert metrics.perplexity(nll.sum(), 4) == pytest.approx(2**1.5, rel=1e-12)
    with pytest.raises(ValueError):
        metrics.perplexity(0.0, 0)


def test_token_nll_chunks_agree_with_direct_formula():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((700, 50)).astype(np.float32)  # > one chunk of 256 rows
    targets = rng.integers(0, 50, 700)
    x = logits.astype(np.float64)
    direct = np.log(np.exp(x).sum(axis=1)) - x[np.arange(700), targets]
    np.testing.assert_allclose(metrics.token_nll(logits, targets), direct, rtol=1e-12)


def test_kl_of_known_distributions():
    # KL([.5, .5] || [.25, .75]) = .5 ln(.5/.25) + .5 ln(.5/.75) = .5 ln(4/3)
    p = np.log(np.array([[0.5, 0.5]]))
    q = np.log(np.array([[0.25, 0.75]]))
    assert metrics.kl_divergence(p, q)[0] == pytest.approx(0.5 * math.log(4 / 3), rel=1e-12)
    # not symmetric: KL(q || p) = .25 ln(.25/.5) + .75 ln(.75/.5)
    assert metrics.kl_divergence(q, p)[0] == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5), rel=1e-12)
    # identical distributions (even with shifted logits): exactly zero
    assert metrics.kl_divergence(p, p + 3.0)[0] == pytest.approx(0.0, abs=1e-15)
    assert metrics.kl_divergence(p, p)[0] == 0.0
    np.testing.assert_allclose(metrics.kl_from_logprobs(p, q), [0.5 * math.log(4 / 3)], rtol=1e-12)


def test_kl_chunks_and_shape_errors():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((2, 600, 20))
    lp, lq = metrics.log_softmax(a), metrics.log_softmax(b)
    np.testing.assert_allclose(metrics.kl_divergence(a, b), np.sum(np.exp(lp) * (lp - lq), axis=1), rtol=1e-12)
    with pytest.raises(ValueError, match="shape"):
        metrics.kl_divergence(a, b[:, :10])


def test_top1_matches():
    ref = np.array([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3], [0.0, 0.0, 1.0]])
    cand = np.array([[0.0, 2.0, 1.0], [0.1, 0.2, 0.3], [0.0, 0.0, 5.0]])
    assert metrics.top1_matches(ref, cand).tolist() == [True, False, True]


def test_mean_pool_ignores_masked_positions():
    hidden = np.array([[[1.0, 2.0], [3.0, 4.0], [100.0, -100.0]], [[5.0, 5.0], [9.0, 9.0], [9.0, 9.0]]])
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    np.testing.assert_allclose(metrics.mean_pool(hidden, mask), [[2.0, 3.0], [5.0, 5.0]])
    # all-masked row: zeros, not NaN (sentence-transformers clamps the count at 1e-9)
    np.testing.assert_allclose(metrics.mean_pool(hidden[:1], np.zeros((1, 3))), [[0.0, 0.0]])


def test_cosine_similarity_known_values():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0], [3.0, 4.0], [0.0, 0.0], [0.0, 0.0]])
    b = np.array([[0.0, 1.0], [2.0, 2.0], [-1.0, 0.0], [4.0, 3.0], [0.0, 0.0], [1.0, 0.0]])
    np.testing.assert_allclose(metrics.cosine_similarity(a, b), [0.0, 1.0, -1.0, 24 / 25, 1.0, 0.0], atol=1e-15)


def test_relative_error_known_values():
    assert metrics.relative_error(np.array([3.0, 4.0]), np.array([3.0, 5.0])) == pytest.approx(0.2)
    assert metrics.relative_error(np.array([3.0, 4.0]), np.array([3.0, 4.0])) == 0.0
    assert metrics.relative_error(np.zeros(3), np.zeros(3)) == 0.0
    assert metrics.relative_error(np.zeros(3), np.ones(3)) == float("inf")
    assert metrics.max_abs_error(np.array([1.0, 2.0]), np.array([1.5, 1.0])) == 1.0
    # sums over two batches give the relative error of the concatenation
    d1, r1 = metrics.squared_norms(np.array([3.0]), np.array([3.0]))
    d2, r2 = metrics.squared_norms(np.array([4.0]), np.array([5.0]))
    assert metrics.relative_error_from_sums(d1 + d2, r1 + r2) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.relative_error(np.zeros(2), np.zeros(3))


def test_window_stats_agree_with_the_simple_functions():
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((70, 40)).astype(np.float32) * 3  # 70 rows: several blocks of 32
    cands = [ref + 0.05 * rng.standard_normal(ref.shape).astype(np.float32), ref.copy()]
    targets = rng.integers(0, 40, 70)
    sums = metrics.lm_window_stats(ref, cands, targets)
    assert sums["ref"]["nll"] == pytest.approx(metrics.token_nll(ref, targets).sum(), rel=1e-12)
    assert sums["ref"]["correct"] == int(np.sum(ref.argmax(1) == targets))
    noisy, same = sums["cands"]
    kl = metrics.kl_divergence(ref, cands[0])
    assert noisy["kl"] == pytest.approx(kl.sum(), rel=1e-10) and noisy["kl_max"] == pytest.approx(kl.max(), rel=1e-10)
    assert noisy["agree"] == int(metrics.top1_matches(ref, cands[0]).sum())
    assert noisy["nll"] == pytest.approx(metrics.token_nll(cands[0], targets).sum(), rel=1e-12)
    assert 0 < noisy["kl"] and noisy["agree"] < 70
    assert same["kl"] == 0.0 and same["agree"] == 70 and same["nll"] == sums["ref"]["nll"]
