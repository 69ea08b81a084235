"""Statistics against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from pathreplay.stats.groups import cohen_d
from pathreplay.stats.multiple import bh, ks_uniform
from pathreplay.stats.signflip import paired_p, sign_flip_p
from pathreplay.stats.tables import chi2_2x2, cochran_armitage, fisher_exact_2x2, log_odds_prior, wilson


def test_cohen_d_by_hand():
    a = np.array([[1.0], [2.0], [3.0]])  # mean 2, var 1
    b = np.array([[0.0], [0.0], [3.0]])  # mean 1, var 3
    # pooled sd = sqrt((2*1 + 2*3) / 4) = sqrt(2)
    assert cohen_d(a, b)[0] == pytest.approx(1 / math.sqrt(2))
    assert np.isnan(cohen_d(np.ones((3, 1)), np.ones((2, 1)))[0])


def test_bh_by_hand():
    q = bh(np.array([0.01, 0.04, 0.03, np.nan, 0.5]))
    # sorted p: .01 .03 .04 .5 with m=4 -> .04, .04, .0533, .5 after monotone step-up
    assert q[0] == pytest.approx(0.04)
    assert q[2] == pytest.approx(0.04 * 4 / 3)
    assert q[1] == pytest.approx(0.04 * 4 / 3)
    assert np.isnan(q[3]) and q[4] == pytest.approx(0.5)


def test_wilson_by_hand():
    lo, hi = wilson(5, 10)
    assert (lo, hi) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert all(math.isnan(v) for v in wilson(0, 0))


def test_fisher_matches_scipy_on_random_tables() -> None:
    rng = np.random.default_rng(3)
    tabs = rng.integers(0, 40, size=(300, 4))
    tabs[:20] = [[0, 10, 0, 10]] * 20  # word said by nobody: p = 1
    ours = fisher_exact_2x2(*tabs.T)
    ref = [sps.fisher_exact([[a, b], [c, d]])[1] for a, b, c, d in tabs]
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-12)


def test_chi2_matches_scipy() -> None:
    rng = np.random.default_rng(4)
    tabs = rng.integers(1, 60, size=(100, 4))
    ours = chi2_2x2(*tabs.T)
    ref = [sps.chi2_contingency([[a, b], [c, d]])[1] for a, b, c, d in tabs]
    np.testing.assert_allclose(ours, ref, rtol=1e-9)


def test_bh_within_groups_matches_scipy() -> None:
    rng = np.random.default_rng(5)
    p = rng.uniform(size=200) ** 3
    group = rng.integers(0, 4, size=200)
    q = bh(p, group)
    for g in range(4):
        np.testing.assert_allclose(q[group == g], sps.false_discovery_control(p[group == g]), rtol=1e-12)


def test_bh_equals_scipy_to_the_bit_and_skips_nan():
    rng = np.random.default_rng(9)
    p = rng.uniform(size=500) ** 4
    p[::7] = np.nan
    p[1:40:3] = p[2]  # ties
    q = bh(p)
    ok = ~np.isnan(p)
    np.testing.assert_array_equal(q[ok], sps.false_discovery_control(p[ok]))
    assert np.isnan(q[~ok]).all()
    assert np.isnan(bh(np.array([np.nan]))).all() and bh(np.zeros(0)).shape == (0,)


def test_cochran_armitage_by_hand():
    # levels 0, 1, 2 with 10 each; 1, 3, 6 say it: pbar = 1/3, T = (3 + 12) - (1/3)(30) = 5,
    # Sxx = 10 * 5 - 30^2 / 30 = 20, z = 5 / sqrt(2/9 * 20), slope = 5 / 20
    d, n, x = np.array([[1, 3, 6, 0]]), np.array([[10, 10, 10, 0]]), np.array([[0.0, 1.0, 2.0, 0.0]])
    z, slope, p = cochran_armitage(d, n, x)
    assert z[0] == pytest.approx(5 / math.sqrt(2 / 9 * 20)) and slope[0] == pytest.approx(0.25)
    assert p[0] == pytest.approx(2 * sps.norm.sf(z[0]))
    flat = cochran_armitage(np.array([[0, 0]]), np.array([[5, 5]]), np.array([[1.0, 2.0]]))
    assert (flat[0][0], flat[1][0], flat[2][0]) == (0.0, 0.0, 1.0)


def test_log_odds_prior_by_hand():
    # 14 of 20 vs 4 of 20 with a prior of 10 pseudo-observations at the pooled 18/40
    delta, z = log_odds_prior(np.array([14]), np.array([20]), np.array([4]), np.array([20]), np.array([0.45]), 10)
    want = math.log(18.5 / 11.5) - math.log(8.5 / 21.5)
    assert delta[0] == pytest.approx(want)
    assert z[0] == pytest.approx(want / math.sqrt(1 / 18.5 + 1 / 11.5 + 1 / 8.5 + 1 / 21.5))


def test_sign_flip_exact_by_hand_and_never_zero():
    # one column [1, 2, 3]: of the 8 sign patterns, |sum| >= 6 only for +++ and ---: p = 2/8;
    # [1, -1, 0, 2]: the zero flips to itself; patterns of (1, -1, 2) reaching |2|: +-+, -+-, ++-?
    d = np.array([[1.0, 1.0], [2.0, -1.0], [3.0, 0.0], [0.0, 2.0]])
    p, exact = sign_flip_p(d)
    assert p[0] == pytest.approx(2 / 8) and exact.all()
    sums = [abs(a + b + c) for a in (1, -1) for b in (-1, 1) for c in (2, -2)]
    assert p[1] == pytest.approx(sum(x >= 2 for x in sums) / 8)
    # more non-zero pairs than the exact limit: random patterns, p >= 1 / (1 + draws)
    big = np.ones((40, 1))
    pm, ex = sign_flip_p(big[:20])
    assert not ex[0] and pm[0] == pytest.approx(1 / (1 + 4095))


def test_paired_p_picks_its_test_and_never_returns_zero():
    rng = np.random.default_rng(1)
    dense = rng.normal(0.5, 1.0, size=(60, 1))
    sparse = np.zeros((60, 1))
    sparse[:5] = 3.0  # mostly zeros, a few large: diverged tokens
    const = np.full((60, 1), 0.25)  # t undefined
    lone = np.zeros((60, 1))
    lone[0] = 1.0  # one non-zero difference: nothing to test
    p, test = paired_p(np.hstack([dense, sparse, const, lone]))
    assert list(test) == ["t", "sign_flip_exact", "t", "none"]
    assert p[0] == pytest.approx(sps.ttest_1samp(dense[:, 0], 0).pvalue)
    assert p[1] == pytest.approx(2 / 2**5)
    assert p[2] == pytest.approx(2.0 ** (1 - 60)) and p[2] > 0
    assert np.isnan(p[3])


def test_bh_with_a_larger_family_pads_with_non_discoveries():
    p = np.array([0.001, 0.02, 0.04])
    np.testing.assert_allclose(bh(p, m=10), bh(np.r_[p, np.ones(7)])[:3])
    with pytest.raises(ValueError):
        bh(p, m=2)


def test_ks_uniform():
    stat, pv = ks_uniform(np.linspace(0.005, 0.995, 100))
    assert stat < 0.02 and pv > 0.9
    stat, pv = ks_uniform(np.full(50, 0.01))
    assert stat > 0.9 and pv < 1e-6


def _frozen_sign_flip_p(d, draws=4095, seed=0):
    """sign_flip_p as it was before signflip.py (2026-11-30), frozen: the reference for the bits."""
    _, F = d.shape
    k = (d != 0).sum(0)
    p = np.full(F, np.nan)
    exact = k <= 12
    rng = np.random.default_rng(seed)
    cols = np.flatnonzero(k >= 2)
    cols = cols[np.argsort(k[cols], kind="stable")]
    sub = np.ascontiguousarray(d[:, cols].T)
    flat = sub[sub != 0]
    ks = k[cols]
    bounds = np.r_[0, np.cumsum(ks)]
    for kk in np.unique(ks):
        first, last = np.searchsorted(ks, kk), np.searchsorted(ks, kk, side="right")
        vals_all = flat[bounds[first]: bounds[last]].reshape(last - first, kk)
        if kk <= 12:
            half = np.arange(2 ** (kk - 1))
            signs = 1 - 2 * ((half[:, None] >> np.arange(kk)[None, :]) & 1).astype(float)
        else:
            signs = rng.choice([-1.0, 1.0], size=(draws, kk))
        step = max(1, 2**22 // len(signs))
        for c0 in range(0, last - first, step):
            vals = vals_all[c0: c0 + step]
            obs = np.abs(vals.sum(1))
            hits = (np.abs(vals @ signs.T) >= obs[:, None] * (1 - 1e-12)).sum(1)
            c = cols[first + c0: first + c0 + len(vals)]
            p[c] = 2 * hits / 2**kk if kk <= 12 else (1 + hits) / (1 + draws)
    return p, exact


def _frozen_paired_p(d):
    """paired_p as it was before signflip.py, frozen."""
    n = d.shape[0]
    k = (d != 0).sum(0)
    small = k < 30
    flip, exact = np.full(d.shape[1], np.nan), k <= 12
    if small.any():
        flip[small] = _frozen_sign_flip_p(d[:, small])[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        sd = d.std(0, ddof=1) if n > 1 else np.zeros(d.shape[1])
        t = d.mean(0) / (sd / np.sqrt(n))
        tp = 2 * sps.t.sf(np.abs(t), max(n - 1, 1))
    tp = np.where(sd > 0, tp, 2.0 ** (1 - k.astype(float)))
    use_t = k >= 30
    p = np.where(use_t, tp, flip)
    test = np.where(k < 2, "none", np.where(use_t, "t", np.where(exact, "sign_flip_exact", "sign_flip_mc")))
    return np.where(k < 2, np.nan, p), test


def _differences(rng, n, width):
    """Paired differences with every k from 0 to n, zeros, ties (repeated |values|, both signs),
    equal columns, float32-born values (as the codes are) and a few float64 ones."""
    d = np.zeros((n, width))
    k = rng.integers(0, n + 1, width)
    k[: min(width, n + 1)] = n - np.arange(min(width, n + 1))  # every k once, from n down
    for j in range(width):
        rows = rng.choice(n, k[j], replace=False)
        kind = j % 4
        if kind == 0:
            v = rng.lognormal(-1, 1, k[j]).astype(np.float32).astype(float) - rng.lognormal(-1, 1, k[j]).astype(np.float32)
        elif kind == 1:  # ties: a few magnitudes, random signs
            v = rng.choice([0.25, 0.5, 1.0], k[j]) * rng.choice([-1.0, 1.0], k[j])
        elif kind == 2:  # all equal: t undefined, the sign-flip p 2 / 2^k
            v = np.full(k[j], 0.125)
        else:
            v = rng.normal(0.3, 1.0, k[j])
        d[rows, j] = np.where(v == 0, 0.5, v)
    return d


@pytest.mark.parametrize("n, width", [(200, 400), (60, 97), (40, 2), (35, 1), (4, 50), (31, 3), (8, 1), (30, 20)])
def test_sign_flips_and_paired_p_are_the_frozen_bits(n, width):
    rng = np.random.default_rng(n * 1000 + width)
    d = _differences(rng, n, width)
    p, test = paired_p(d)
    fp, ftest = _frozen_paired_p(d)
    np.testing.assert_array_equal(p, fp)  # NaN where NaN, every other p to the bit
    np.testing.assert_array_equal(test, ftest)
    for sub in (d, d[: min(n, 12)], d[:, ::2]):  # exact only; the Monte Carlo draws of other k
        s, ex = sign_flip_p(sub)
        fs, fex = _frozen_sign_flip_p(sub)
        np.testing.assert_array_equal(s, fs)
        np.testing.assert_array_equal(ex, fex)
    if width > n >= 30:  # every regime: none, exact, Monte Carlo, t
        assert set(test) == {"none", "sign_flip_exact", "sign_flip_mc", "t"}
