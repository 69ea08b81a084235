"""Statistics against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from pathreplay.stats.groups import cohen_d
from pathreplay.stats.multiple import bh, ks_uniform
from pathreplay.stats.signflip import paired_p, paired_test, sign_flip_p
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
    # [1, -1, 0, 2]: the zero flips to itself; the patterns of (1, -1, 2) that reach |2|
    d = np.array([[1.0, 1.0], [2.0, -1.0], [3.0, 0.0], [0.0, 2.0]])
    p, exact = sign_flip_p(d)
    assert p[0] == pytest.approx(2 / 8) and exact.all()
    sums = [abs(a + b + c) for a in (1, -1) for b in (-1, 1) for c in (2, -2)]
    assert p[1] == pytest.approx(sum(x >= 2 for x in sums) / 8)
    lone = np.zeros((5, 1))
    lone[0] = 1.0  # one non-zero difference: nothing to test
    assert np.isnan(sign_flip_p(lone)[0][0]) and paired_p(lone)[1][0] == "none"


def _enumerated(v):
    """The sign-flip p of one column by brute force: every one of the 2^k patterns, no shortcut."""
    v = v[v != 0]
    k = len(v)
    signs = 1 - 2 * ((np.arange(2**k)[:, None] >> np.arange(k)[None, :]) & 1)
    return float(np.mean(np.abs(signs @ v) >= abs(v.sum()) * (1 - 1e-12)))


def _columns(rng, k, width):
    """Columns of k differences of every kind the codes make: continuous, ties of a few sizes,
    mostly one sign, float32-born."""
    out = np.zeros((k + 3, width))
    for j in range(width):
        kind = j % 3
        if kind == 0:
            v = rng.normal(0.4, 1.0, k)
        elif kind == 1:
            v = rng.choice([0.25, 0.5, 1.0], k) * rng.choice([-1.0, 1.0], k, p=[0.3, 0.7])
        else:
            v = (rng.lognormal(-1, 1, k) - 0.3).astype(np.float32).astype(float)
        out[rng.choice(k + 3, k, replace=False), j] = np.where(v == 0, 0.5, v)
    return out


@pytest.mark.parametrize("k", [2, 3, 5, 8, 12, 13, 16, 20])
def test_sign_flip_equals_enumeration_up_to_16_and_beyond(k):
    d = _columns(np.random.default_rng(k), k, 9)
    p, exact = sign_flip_p(d)
    assert exact.all()
    np.testing.assert_allclose(p, [_enumerated(d[:, j]) for j in range(d.shape[1])], rtol=1e-12)


def test_sign_flip_p_is_monotone_in_the_evidence_with_the_exact_floor_and_no_jump():
    # k equal differences: the pattern and its negative alone reach the sum, whichever test counts
    ks = np.arange(2, 60)
    p = np.array([paired_test(np.full((k, 1), 0.125)).p[0] for k in ks])
    np.testing.assert_array_equal(p, 2.0 ** (1 - ks.astype(float)))
    assert (np.diff(p) < 0).all() and (p > 0).all()
    # one of the k against the others: as k grows past the exact limit, p keeps falling smoothly
    q = np.array([paired_test(np.r_[np.full(k - 1, 1.0), -1.0][:, None]).p[0] for k in range(10, 40)])
    assert (np.diff(q) < 0).all() and (np.abs(np.diff(np.log(q))) < 1.2).all()


def _enumerated_big(d):
    """Exact p per column for k up to ~32: meet in the middle (itself checked against brute force)."""
    from pathreplay.stats.signflip import _met_in_the_middle

    return np.array([_met_in_the_middle(d[d[:, j] != 0, j][None, :])[0] / 2 ** int((d[:, j] != 0).sum())
                     for j in range(d.shape[1])])


def test_meeting_in_the_middle_is_brute_force():
    d = _columns(np.random.default_rng(5), 14, 6)
    np.testing.assert_allclose(_enumerated_big(d), [_enumerated(d[:, j]) for j in range(6)], rtol=1e-12)


@pytest.mark.parametrize("k", [25, 28, 32])
def test_the_saddlepoint_tail_against_enumeration(k):
    # past the exact limit: within 10% where 1e-5 <= p < 0.05 for continuous sizes and for a few
    # repeated sizes (a lattice), within 30% further out (where a few dozen patterns alone reach
    # the statistic); for one size alone, never more than 10% below the exact p
    rng = np.random.default_rng(100 + k)
    mus = np.linspace(0.0, 1.2, 24)
    cont = np.stack([rng.normal(mu, 1.0, k) for mu in mus], 1)
    ties = np.stack([rng.choice([0.25, 0.5, 1.0], k) * np.where(rng.random(k) < 0.3 + 0.5 * mu / 1.2, 1, -1)
                     for mu in mus], 1)
    one = np.stack([np.where(rng.random(k) < 0.45 + 0.5 * mu / 1.2, 0.125, -0.125) for mu in mus], 1)
    for d in (cont, ties):
        want, got = _enumerated_big(d), paired_test(d).p
        rel, tail = np.abs(got - want) / want, want < 0.05
        assert tail.sum() >= 4 and rel[tail & (want >= 1e-5)].max() < 0.1 and rel[tail].max() < 0.3
    want, got = _enumerated_big(one), paired_test(one).p
    assert (got >= 0.9 * want).all() and (got >= 2.0 ** (1 - k)).all()


def test_paired_p_names_its_test_and_never_returns_zero():
    rng = np.random.default_rng(1)
    dense = rng.normal(0.5, 1.0, size=(60, 1))
    sparse = np.zeros((60, 1))
    sparse[:5] = 3.0  # mostly zeros, a few large: diverged tokens
    const = np.full((60, 1), 0.25)
    p, test = paired_p(np.hstack([dense, sparse, const]))
    assert list(test) == ["sign_flip_saddlepoint", "sign_flip_exact", "sign_flip_saddlepoint"]
    assert p[1] == pytest.approx(2 / 2**5) and p[2] == 2.0 ** (1 - 60) and (p > 0).all()
    assert p[0] < 1e-3 and p[0] > 2.0 ** (1 - 60)


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
