"""Statistics against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from pathreplay.stats import (bh, chi2_2x2, cochran_armitage, cohen_d, fisher_exact_2x2, ks_uniform, log_odds_prior,
                              paired_p, sign_flip_p, wilson)


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
