"""Families of p-values: one Benjamini-Hochberg (controls held to the real family's size) and the
Kolmogorov-Smirnov distance of a family from uniform."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as sps


def bh(p: np.ndarray, groups: np.ndarray | None = None, m: int | None = None) -> np.ndarray:
    """Benjamini-Hochberg q-values, separately within each group label (one family when groups is
    None): over a family's n non-NaN p in ascending order, q_(i) = min over j >= i of
    p_(j) * (m / j), capped at 1, with m = n (scipy's false_discovery_control, to the bit). A
    larger `m` (one family only) scores these p as part of a family of m tests whose others are
    not discoveries: how a control is held to the thresholds of a real family of that size. NaN p
    stay NaN and are not counted as tests."""
    p = np.asarray(p, dtype=float)
    q = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    if not len(ok):
        return q
    if m is not None and (groups is not None or m < len(ok)):
        raise ValueError("a family size m needs one family of at most m tests")
    g = np.zeros(len(ok), np.int64) if groups is None else np.unique(np.asarray(groups)[ok], return_inverse=True)[1]
    order = np.lexsort((p[ok], g))
    gs, ps = g[order], p[ok][order]
    starts = np.r_[0, np.flatnonzero(gs[1:] != gs[:-1]) + 1]
    sizes = np.diff(np.r_[starts, len(gs)])
    rank = np.arange(len(gs)) - np.repeat(starts, sizes) + 1
    adj = ps * ((np.repeat(sizes, sizes) if m is None else m) / rank)
    adj = pd.Series(adj[::-1]).groupby(gs[::-1]).cummin().to_numpy()[::-1]
    q[ok[order]] = np.minimum(adj, 1.0)
    return q


def bh_with_controls(p: np.ndarray, family: np.ndarray, real: np.ndarray) -> np.ndarray:
    """BH q-values: the real tests (`real`) as one family, and the rest per `family` label, each
    control family held to the real family's size (or its own where larger), so a control
    discovers only what the real analysis would at the same p."""
    p, family, real = np.asarray(p, float), np.asarray(family), np.asarray(real, bool)
    q = np.full(len(p), np.nan)
    q[real] = bh(p[real])
    m = int((~np.isnan(p[real])).sum())
    for f in pd.unique(family[~real]):
        sel = ~real & (family == f)
        q[sel] = bh(p[sel], m=max(m, int((~np.isnan(p[sel])).sum())))
    return q


def ks_uniform(p: np.ndarray) -> tuple[float, float]:
    """Kolmogorov-Smirnov statistic and p of p-values against Uniform(0, 1) (NaN: none)."""
    p = np.asarray(p, float)
    p = p[~np.isnan(p)]
    if len(p) == 0:
        return float("nan"), float("nan")
    r = sps.kstest(p, "uniform")
    return float(r.statistic), float(r.pvalue)
