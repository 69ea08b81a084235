"""How many trials a behaviour test needs: planned from the screen's effect sizes, before the replay.

The replay's own behaviour test compares, per (feature, prompt, condition), the task's first rate
among valid answers with the baseline trials of the same seeds (McNemar on pairs valid in both).
Its power is planned with the normal approximation for two proportions p0 (baseline) and p1
(patched), which the paired test, pairing on shared random numbers, can only beat:

    n = (z_(1 - a/2) sqrt(2 pbar (1 - pbar)) + z_power sqrt(p0 (1 - p0) + p1 (1 - p1)))^2 / (p1 - p0)^2

valid answers per arm, divided by the valid share, at a = alpha / m (m the run's real behaviour
tests: what survives BH at any rank), for the screen's |p1 - p0| or the smallest effect worth
finding (`min_effect`), whichever is larger; within [lo, hi] trials."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

PLAN_COLUMNS = ["feature", "prompt_id", "condition", "rate_baseline", "rate", "effect", "trials", "power"]


def power_of(p0: float, p1: float, n: float, a: float) -> float:
    """The normal-approximation power of the two-sided test of p1 = p0 at level a with n per arm."""
    if n <= 0 or p0 == p1:
        return float(a) if n > 0 else 0.0
    pbar = (p0 + p1) / 2
    se0, se1 = math.sqrt(2 * pbar * (1 - pbar) / n), math.sqrt((p0 * (1 - p0) + p1 * (1 - p1)) / n)
    if se1 == 0:
        return 1.0
    z = sps.norm.isf(a / 2)
    return float(sps.norm.sf((z * se0 - abs(p1 - p0)) / se1))


def trials_for(p0: float, effect: float, valid: float, a: float, power: float, lo: int, hi: int) -> int:
    """Trials per arm for `power` against a move of `effect` away from p0 (towards 0.5's side of
    the range that fits), at level a, with a share `valid` of the answers valid; within [lo, hi]."""
    p1 = p0 + effect if p0 + effect <= 1 else p0 - effect
    p1 = min(max(p1, 0.0), 1.0)
    if effect <= 0 or p1 == p0:
        return hi
    pbar = (p0 + p1) / 2
    z_a, z_b = sps.norm.isf(a / 2), sps.norm.isf(1 - power)
    n = (z_a * math.sqrt(2 * pbar * (1 - pbar)) + z_b * math.sqrt(p0 * (1 - p0) + p1 * (1 - p1))) ** 2 / effect**2
    return int(min(max(math.ceil(n / max(valid, 1e-3)), lo), hi))


def plan_behaviour(screen: pd.DataFrame | None, features: Sequence[str], conditions: Sequence[str],
                   prompts: Sequence[str], rate: str, alpha: float, power: float, min_effect: float,
                   lo: int, hi: int) -> pd.DataFrame:
    """Per (feature, prompt, real condition): the screen's baseline rate and patched rate (NaN
    where the screen did not measure them: then the effect planned for is min_effect at a rate
    of 0.5), the effect planned for, the trials that reach `power`, and the power those trials
    have at the screen's own effect (PLAN_COLUMNS)."""
    m = max(1, len(features) * len(prompts) * len(conditions))
    a = alpha / m
    seen = screen.set_index(["feature", "prompt_id", "condition"]) if screen is not None and len(screen) else None
    rows = []
    for f in features:
        for p in prompts:
            for c in conditions:
                got = seen.loc[(f, p, c)] if seen is not None and (f, p, c) in seen.index else None
                p0 = float(got[f"{rate}_rate_baseline"]) if got is not None else np.nan
                p1 = float(got[f"{rate}_rate"]) if got is not None else np.nan
                valid = float(got["valid_rate"]) if got is not None else 1.0
                base = p0 if np.isfinite(p0) else 0.5
                effect = max(abs(p1 - p0) if np.isfinite(p0) and np.isfinite(p1) else 0.0, min_effect)
                n = trials_for(base, effect, valid if np.isfinite(valid) else 1.0, a, power, lo, hi)
                achieved = power_of(base, p1, n * valid, a) if np.isfinite(p1) and np.isfinite(p0) else np.nan
                rows.append((f, p, c, p0, p1, effect, n, achieved))
    return pd.DataFrame(rows, columns=PLAN_COLUMNS)
