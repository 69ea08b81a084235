"""Statistics against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pathreplay.stats import bh, cohen_d, wilson


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
