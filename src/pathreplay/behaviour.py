"""What the model decided: stop rate and bet per feature, condition and prompt, against the
baseline trials with the same seeds.

With coupled sampling a patched trial and its baseline trial share their random numbers, so the
natural tests are paired: McNemar's exact test on stop/continue pairs (only pairs whose decision
the patch changed carry information) and Wilcoxon's signed-rank test on the bets of pairs that
bet both times."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as sps

from .stats import bh, wilson

KEYS = ["feature", "layer", "feature_id", "condition", "prompt_id", "context"]
COLUMNS = KEYS + ["target_value", "n_trials", "stop_rate_baseline", "stop_rate_baseline_lo", "stop_rate_baseline_hi",
                  "stop_rate", "stop_rate_lo", "stop_rate_hi", "delta_stop", "p_stop",
                  "mean_bet_baseline", "mean_bet", "delta_bet", "p_bet", "valid_rate", "q_stop", "q_bet"]


def mcnemar_p(base_stop: np.ndarray, patched_stop: np.ndarray) -> float:
    """Exact two-sided McNemar p for paired binary outcomes."""
    b = int(np.sum(base_stop & ~patched_stop))
    c = int(np.sum(~base_stop & patched_stop))
    return 1.0 if b + c == 0 else float(sps.binomtest(min(b, c), b + c, 0.5).pvalue)


def paired_bet_p(base: np.ndarray, patched: np.ndarray) -> float:
    d = patched - base
    if len(d) == 0 or np.all(d == 0):
        return 1.0
    return float(sps.wilcoxon(d, zero_method="zsplit").pvalue)


def behaviour_effects(patched: pd.DataFrame, baseline: pd.DataFrame) -> pd.DataFrame:
    """One row per (feature, condition, prompt): stop rates with Wilson CIs, mean bets, paired
    p-values (McNemar for stops, Wilcoxon for bets), and BH q-values over the stop and bet
    p-values of all rows together: one family, since a feature is judged on either."""
    base = baseline.set_index(["prompt_id", "trial"])
    rows = []
    for key, g in (patched.groupby(KEYS, sort=True) if len(patched) else []):
        b = base.loc[list(zip(g["prompt_id"], g["trial"]))]
        ps, bs = (g["action"] == "stop").to_numpy(), (b["action"] == "stop").to_numpy()
        both_bet = ~ps & ~bs
        pb, bb = g["bet"].to_numpy(float), b["bet"].to_numpy(float)
        n = len(g)
        lo, hi = wilson(int(ps.sum()), n)
        blo, bhi = wilson(int(bs.sum()), n)
        rows.append({**dict(zip(KEYS, key)), "target_value": float(g["value"].mean()), "n_trials": n,
                     "stop_rate_baseline": bs.mean(), "stop_rate_baseline_lo": blo,
                     "stop_rate_baseline_hi": bhi, "stop_rate": ps.mean(), "stop_rate_lo": lo,
                     "stop_rate_hi": hi, "delta_stop": ps.mean() - bs.mean(),
                     "p_stop": mcnemar_p(bs, ps),
                     "mean_bet_baseline": bb[~bs].mean() if (~bs).any() else np.nan,
                     "mean_bet": pb[~ps].mean() if (~ps).any() else np.nan,
                     "delta_bet": (pb[both_bet] - bb[both_bet]).mean() if both_bet.any() else np.nan,
                     "p_bet": paired_bet_p(bb[both_bet], pb[both_bet]),
                     "valid_rate": g["valid"].mean()})
    out = pd.DataFrame(rows, columns=COLUMNS[:-2])
    q = bh(np.concatenate([out["p_stop"], out["p_bet"]]))
    out["q_stop"], out["q_bet"] = q[: len(out)], q[len(out):]
    return out
