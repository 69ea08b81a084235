"""Tests on counts: the Wilson interval, Fisher's exact and chi-square tests of 2x2 tables, the
log-odds ratio with an informative prior, and the Cochran-Armitage trend test."""

from __future__ import annotations

import numpy as np
from scipy import special
from scipy import stats as sps


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
