"""The statistics every stage shares: effect sizes, the tests on 2x2 tables and dose trends, and
one Benjamini-Hochberg."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import special
from scipy import stats as sps

from .signflip import DRAWS, EXACT_FLIPS, T_FROM, paired_p, sign_flip_p  # noqa: F401  (the paired tests live there)


def cohen_d(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cohen's d of a vs b per column (pooled SD); NaN where both groups are constant."""
    na, nb = a.shape[0], b.shape[0]
    va, vb = a.var(0, ddof=1), b.var(0, ddof=1)
    pooled = np.sqrt(((na - 1) * va + (nb - 1) * vb) / (na + nb - 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(pooled > 0, (a.mean(0) - b.mean(0)) / pooled, np.nan)


def welch_p(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two-sided Welch t-test p per column; NaN where both groups are constant."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(sps.ttest_ind(a, b, axis=0, equal_var=False).pvalue, dtype=float)


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


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for k successes out of n."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (float(mid - half), float(mid + half))


def _log_choose(n: np.ndarray, k: np.ndarray) -> np.ndarray:
    return special.gammaln(n + 1) - special.gammaln(k + 1) - special.gammaln(n - k + 1)


def fisher_exact_2x2(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Two-sided Fisher exact p of [[a, b], [c, d]] per row: the probability, given the
    margins, of tables no more likely than the observed one (scipy's definition)."""
    tab = np.stack([a, b, c, d], 1).astype(np.int64)
    if len(tab) == 0:
        return np.zeros(0)
    uniq, inv = np.unique(tab, axis=0, return_inverse=True)
    p = np.empty(len(uniq))
    r1, r2, c1 = uniq[:, 0] + uniq[:, 1], uniq[:, 2] + uniq[:, 3], uniq[:, 0] + uniq[:, 2]
    N = r1 + r2
    lo, hi = np.maximum(0, c1 - r2), np.minimum(r1, c1)

    def logpmf(k: np.ndarray, r1: np.ndarray, r2: np.ndarray, c1: np.ndarray, N: np.ndarray) -> np.ndarray:
        return _log_choose(r1, k) + _log_choose(r2, c1 - k) - _log_choose(N, c1)

    step = max(1, 4_000_000 // int((hi - lo).max() + 1))  # bounded block memory
    for s in range(0, len(uniq), step):
        e = min(s + step, len(uniq))
        width = int((hi[s:e] - lo[s:e]).max()) + 1
        k = lo[s:e, None] + np.arange(width)[None, :]
        ok = k <= hi[s:e, None]
        args = (r1[s:e, None], r2[s:e, None], c1[s:e, None], N[s:e, None])
        lp = logpmf(np.where(ok, k, lo[s:e, None]), *args)
        obs = logpmf(uniq[s:e, 0:1], *args)
        keep = ok & (lp <= obs + 1e-7)
        p[s:e] = np.where(keep, np.exp(lp), 0.0).sum(1)
    return np.minimum(p, 1.0)[inv.ravel()]


def chi2_2x2(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Pearson chi-square p of [[a, b], [c, d]] with Yates' correction (scipy's 2x2 default)."""
    a, b, c, d = (np.asarray(x, float) for x in (a, b, c, d))
    n = a + b + c + d
    r1, r2, c1, c2 = a + b, c + d, a + c, b + d
    den = r1 * r2 * c1 * c2
    diff = np.maximum(np.abs(a * d - b * c) - n / 2, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        stat = np.where(den > 0, n * diff**2 / den, 0.0)
    return sps.chi2.sf(stat, 1)


def log_odds_prior(a: np.ndarray, n1: np.ndarray, c: np.ndarray, n0: np.ndarray, pooled: np.ndarray,
                   strength: float) -> tuple[np.ndarray, np.ndarray]:
    """Log-odds ratio of an outcome (a of n1 treated vs c of n0 control) with an informative Beta
    prior of `strength` pseudo-observations centred on the pooled rate, and its z-score
    (Monroe, Colaresi & Quinn 2008, "Fightin' Words", two categories)."""
    pi = np.clip(pooled, 1e-6, 1 - 1e-6)
    al, be = strength * pi, strength * (1 - pi)
    delta = np.log((a + al) / (n1 - a + be)) - np.log((c + al) / (n0 - c + be))
    var = 1 / (a + al) + 1 / (n1 - a + be) + 1 / (c + al) + 1 / (n0 - c + be)
    return delta, delta / np.sqrt(var)


def cochran_armitage(d: np.ndarray, n: np.ndarray, x: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cochran-Armitage trend test per row: d[r, k] of n[r, k] observations at level x[r, k] have
    the outcome (unused columns: n = 0). With D = sum d, N = sum n, pbar = D / N,
    T = sum d x - pbar sum n x and Sxx = sum n x^2 - (sum n x)^2 / N: z = T / sqrt(pbar (1 - pbar)
    Sxx), the least-squares slope of the rate on the level T / Sxx (0 where undefined), and the
    two-sided normal p. Returns (z, slope, p)."""
    D, N = d.sum(1), n.sum(1)
    pbar = D / N
    sx, sxx = (n * x).sum(1), (n * x * x).sum(1)
    T = (d * x).sum(1) - pbar * sx
    sxx_c = sxx - sx * sx / N
    var = pbar * (1 - pbar) * sxx_c
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(var > 0, T / np.sqrt(var), 0.0)
        slope = np.where(sxx_c > 0, T / sxx_c, 0.0)
    return z, slope, 2 * sps.norm.sf(np.abs(z))
