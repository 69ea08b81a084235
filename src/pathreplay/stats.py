"""Small statistics used across stages."""

from __future__ import annotations

import numpy as np
from scipy import stats as sps


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


def bh(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values (NaN p stay NaN and do not count as tests)."""
    p = np.asarray(p, dtype=float)
    q = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        q[ok] = sps.false_discovery_control(p[ok], method="bh")
    return q


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for k successes out of n."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (float(mid - half), float(mid + half))
