"""What the model decided: per feature, condition and prompt, the share of valid answers, the
stop rate among valid answers and the bet, each against the baseline trials of the same seeds.

A response that chose no option is invalid: it is never a stop or a bet, and the invalid share
stands beside the rates; a patch that changes it is tested on its own (`p_valid`), since a patch
that breaks the model's answers says nothing about its risk taking. With coupled sampling a
patched trial and its baseline trial share their random numbers, so the tests are paired:
McNemar's exact test on valid/invalid pairs, and on stop/continue among pairs valid in both arms
(only pairs whose outcome the patch changed carry information); Wilcoxon's signed-rank test on
the bets of pairs that bet a known amount in both."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as sps

from .plan import control_of
from .stats import bh_with_controls, wilson

KEYS = ["feature", "layer", "feature_id", "condition", "prompt_id", "context"]
COLUMNS = KEYS + [
    "target_value", "n_trials", "valid_rate_baseline", "valid_rate", "delta_valid", "p_valid",
    "n_valid_baseline", "n_valid", "stop_rate_baseline", "stop_rate_baseline_lo", "stop_rate_baseline_hi",
    "stop_rate", "stop_rate_lo", "stop_rate_hi", "delta_stop", "n_pairs_valid", "p_stop",
    "mean_bet_baseline", "mean_bet", "delta_bet", "p_bet", "q_valid", "q_stop", "q_bet"]


def mcnemar_p(base: np.ndarray, patched: np.ndarray) -> float:
    """Exact two-sided McNemar p for paired binary outcomes."""
    b = int(np.sum(base & ~patched))
    c = int(np.sum(~base & patched))
    return 1.0 if b + c == 0 else float(sps.binomtest(min(b, c), b + c, 0.5).pvalue)


def paired_bet_p(base: np.ndarray, patched: np.ndarray) -> float:
    """Wilcoxon signed-rank p of paired bets (1 when no pair differs)."""
    d = patched - base
    if len(d) == 0 or np.all(d == 0):
        return 1.0
    return float(sps.wilcoxon(d, zero_method="zsplit").pvalue)


def _rate(k: int, n: int) -> tuple[float, float, float]:
    """k / n with its Wilson interval; NaN where n is 0."""
    lo, hi = wilson(k, n)
    return (k / n if n else np.nan), lo, hi


def _row(g: pd.DataFrame, b: pd.DataFrame) -> dict[str, float | int]:
    """The behaviour columns of one (feature, condition, prompt): patched trials g, their
    baseline partners b (row for row)."""
    pv, bv = g["valid"].to_numpy(bool), b["valid"].to_numpy(bool)
    ps = (g["action"] == "stop").to_numpy() & pv
    bs = (b["action"] == "stop").to_numpy() & bv
    pb, bb = g["bet"].to_numpy(float), b["bet"].to_numpy(float)
    p_bets = (g["action"] == "bet").to_numpy() & np.isfinite(pb)  # bets of a known amount
    b_bets = (b["action"] == "bet").to_numpy() & np.isfinite(bb)
    both = pv & bv
    both_bet = p_bets & b_bets
    stop, lo, hi = _rate(int(ps.sum()), int(pv.sum()))
    bstop, blo, bhi = _rate(int(bs.sum()), int(bv.sum()))
    return {"target_value": float(g["value"].mean()), "n_trials": len(g),
            "valid_rate_baseline": bv.mean(), "valid_rate": pv.mean(), "delta_valid": pv.mean() - bv.mean(),
            "p_valid": mcnemar_p(bv, pv), "n_valid_baseline": int(bv.sum()), "n_valid": int(pv.sum()),
            "stop_rate_baseline": bstop, "stop_rate_baseline_lo": blo, "stop_rate_baseline_hi": bhi,
            "stop_rate": stop, "stop_rate_lo": lo, "stop_rate_hi": hi, "delta_stop": stop - bstop,
            "n_pairs_valid": int(both.sum()), "p_stop": mcnemar_p(bs[both], ps[both]),
            "mean_bet_baseline": bb[b_bets].mean() if b_bets.any() else np.nan,
            "mean_bet": pb[p_bets].mean() if p_bets.any() else np.nan,
            "delta_bet": (pb[both_bet] - bb[both_bet]).mean() if both_bet.any() else np.nan,
            "p_bet": paired_bet_p(bb[both_bet], pb[both_bet])}


def behaviour_effects(patched: pd.DataFrame, baseline: pd.DataFrame) -> pd.DataFrame:
    """One row per (feature, condition, prompt): valid share, stop rate among valid answers (with
    Wilson CIs) and mean bet in both arms, paired p-values, and BH q-values over the valid, stop
    and bet p-values of the real conditions' rows together (one family, since a feature is judged
    on any); the controls' rows (sham, random) held to a family of that size."""
    base = baseline.set_index(["prompt_id", "trial"])
    rows = [{**dict(zip(KEYS, key)), **_row(g, base.loc[list(zip(g["prompt_id"], g["trial"]))])}
            for key, g in (patched.groupby(KEYS, sort=True) if len(patched) else [])]
    out = pd.DataFrame(rows, columns=COLUMNS[:-3])
    real = np.array([control_of(c) == "real" for c in out["condition"]], dtype=bool)
    p = out[["p_valid", "p_stop", "p_bet"]].to_numpy(float).ravel()  # row by row, three tests each
    q = bh_with_controls(p, np.repeat(out["condition"].to_numpy(), 3), np.repeat(real, 3)).reshape(-1, 3)
    out["q_valid"], out["q_stop"], out["q_bet"] = q.T
    return out
