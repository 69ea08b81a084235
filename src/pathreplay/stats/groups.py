"""Two independent groups compared per column: Cohen's d and Welch's t-test (Exp1's measure)."""

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
