"""What the model decided: per feature, condition and prompt, the share of valid answers and the
task's measures (task.Rate, task.Mean), each against the baseline trials of the same seeds.

A response that chose no option is invalid: it counts for no option and no amount, and the
invalid share stands beside the measures; a patch that changes it is tested on its own
(`p_valid`), since a patch that breaks the model's answers says nothing about its choices. With
coupled sampling a patched trial and its baseline trial share their random numbers, so the tests
are paired: McNemar's exact test on valid/invalid pairs, and on a rate's action/not among pairs
valid in both arms (only pairs whose outcome the patch changed carry information); Wilcoxon's
signed-rank test on the amounts of pairs with a known amount in both."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as sps

from ..replay.plan import control_of
from ..stats.multiple import bh, bh_with_controls
from ..stats.tables import wilson
from ..task import Measure, Rate, Task

KEYS = ["feature", "layer", "feature_id", "condition", "prompt_id", "context"]
VALID = ["target_value", "dose_realized", "n_trials", "valid_rate_baseline", "valid_rate", "delta_valid", "p_valid",
         "n_valid_baseline", "n_valid"]


def measure_columns(m: Measure, first_rate: bool) -> list[str]:
    """One measure's columns in order; the first rate also carries the count of pairs valid in both."""
    n = m.name
    if isinstance(m, Rate):
        return [f"{n}_rate_baseline", f"{n}_rate_baseline_lo", f"{n}_rate_baseline_hi", f"{n}_rate",
                f"{n}_rate_lo", f"{n}_rate_hi", f"delta_{n}"] + (["n_pairs_valid"] if first_rate else []) + [f"p_{n}"]
    return [f"mean_{n}_baseline", f"mean_{n}", f"delta_{n}", f"p_{n}"]


def columns(task: Task) -> list[str]:
    """behaviour_effects' columns for a task's measures."""
    out = KEYS + VALID
    for m in task.measures:
        out += measure_columns(m, m is task.primary)
    return out + ["q_valid"] + [f"q_{m.name}" for m in task.measures]


def mcnemar_p(base: np.ndarray, patched: np.ndarray) -> float:
    """Exact two-sided McNemar p for paired binary outcomes."""
    b = int(np.sum(base & ~patched))
    c = int(np.sum(~base & patched))
    return 1.0 if b + c == 0 else float(sps.binomtest(min(b, c), b + c, 0.5).pvalue)


def paired_amount_p(base: np.ndarray, patched: np.ndarray) -> float:
    """Wilcoxon signed-rank p of paired amounts (1 when no pair differs)."""
    d = patched - base
    if len(d) == 0 or np.all(d == 0):
        return 1.0
    return float(sps.wilcoxon(d, zero_method="zsplit").pvalue)


def _rate(k: int, n: int) -> tuple[float, float, float]:
    """k / n with its Wilson interval; NaN where n is 0."""
    lo, hi = wilson(k, n)
    return (k / n if n else np.nan), lo, hi


def _measure(m: Measure, g: pd.DataFrame, b: pd.DataFrame, pv: np.ndarray, bv: np.ndarray,
             amount: str | None) -> list[float | int]:
    """One measure's values, in measure_columns' order (the pair count included)."""
    both = pv & bv
    if isinstance(m, Rate):
        ps = (g["action"] == m.action).to_numpy() & pv
        bs = (b["action"] == m.action).to_numpy() & bv
        rate, lo, hi = _rate(int(ps.sum()), int(pv.sum()))
        brate, blo, bhi = _rate(int(bs.sum()), int(bv.sum()))
        return [brate, blo, bhi, rate, lo, hi, rate - brate, int(both.sum()), mcnemar_p(bs[both], ps[both])]
    assert amount is not None, "a Mean measure needs the task's amount column"
    pa, ba = g[amount].to_numpy(float), b[amount].to_numpy(float)
    pk = (g["action"] == m.action).to_numpy() & np.isfinite(pa)  # answers of a known amount
    bk = (b["action"] == m.action).to_numpy() & np.isfinite(ba)
    k = pk & bk
    return [ba[bk].mean() if bk.any() else np.nan, pa[pk].mean() if pk.any() else np.nan,
            (pa[k] - ba[k]).mean() if k.any() else np.nan, paired_amount_p(ba[k], pa[k])]


def _row(g: pd.DataFrame, b: pd.DataFrame, task: Task) -> list[float | int]:
    """The behaviour values of one (feature, condition, prompt): patched trials g, their baseline
    partners b (row for row), in columns' order after KEYS."""
    pv, bv = g["valid"].to_numpy(bool), b["valid"].to_numpy(bool)
    dose = float(g["value_after_last"].mean()) if "value_after_last" in g else np.nan
    out: list[float | int] = [float(g["value"].mean()), dose, len(g), bv.mean(), pv.mean(), pv.mean() - bv.mean(),
                              mcnemar_p(bv, pv), int(bv.sum()), int(pv.sum())]
    for m in task.measures:
        vals = _measure(m, g, b, pv, bv, task.amount)
        if isinstance(m, Rate) and m is not task.primary:
            del vals[7]  # the pair count stands once, with the first rate
        out += vals
    return out


def behaviour_effects(patched: pd.DataFrame, baseline: pd.DataFrame, task: Task) -> pd.DataFrame:
    """One row per (feature, condition, prompt): the asked dose (target_value) and the one the SAE
    read back at the last prompt position, where the answer's first token is drawn
    (dose_realized), the valid share and each of the task's measures in both arms (rates with
    Wilson CIs), paired p-values, and BH q-values over the valid and the
    measures' p-values of the real conditions' rows together (one family, since a feature is
    judged on any); the controls' rows (sham, random) held to a family of that size."""
    cols = columns(task)
    base = baseline.set_index(["prompt_id", "trial"])
    rows = [[*key, *_row(g, base.loc[list(zip(g["prompt_id"], g["trial"]))], task)]
            for key, g in (patched.groupby(KEYS, sort=True) if len(patched) else [])]
    tests = ["p_valid"] + [f"p_{m.name}" for m in task.measures]
    out = pd.DataFrame(rows, columns=cols[: -len(tests)])
    real = np.array([control_of(c) == "real" for c in out["condition"]], dtype=bool)
    p = out[tests].to_numpy(float).ravel()  # row by row, every test of a row in turn
    q = bh_with_controls(p, np.repeat(out["condition"].to_numpy(), len(tests)),
                         np.repeat(real, len(tests))).reshape(-1, len(tests))
    for i, t in enumerate(tests):
        out["q" + t[1:]] = q[:, i]
    return versus_random(out, patched, task)


VERSUS = ["rate_random", "delta_vs_random", "n_pairs_vs_random", "p_vs_random", "q_vs_random"]


def versus_random(out: pd.DataFrame, patched: pd.DataFrame, task: Task) -> pd.DataFrame:
    """The real conditions' rows with their random control beside them, on the task's first rate:
    the random arm's rate among its valid answers (`rate_random`), the real arm's less it, and
    McNemar's exact test on the trials valid in both arms (the two share their seeds: paired),
    with BH over the real rows (`q_vs_random`). Is it this feature, or any move of the residual
    as large?"""
    rate = task.primary
    groups = {k: g.set_index("trial") for k, g in patched.groupby(["feature", "condition", "prompt_id"])} \
        if len(patched) else {}
    cols = {k: np.full(len(out), np.nan) for k in VERSUS}
    for i, r in enumerate(out.itertuples()):
        rand = groups.get((r.feature, f"random:{r.condition}", r.prompt_id))
        if control_of(r.condition) != "real" or rand is None:
            continue
        real = groups[(r.feature, r.condition, r.prompt_id)]
        both = real.index.intersection(rand.index)
        a, b = real.loc[both], rand.loc[both]
        valid = a["valid"].to_numpy(bool) & b["valid"].to_numpy(bool)
        ra, rb = ((x["action"] == rate.action).to_numpy() & valid for x in (a, b))
        rv = rand["valid"].to_numpy(bool)
        cols["rate_random"][i] = float(((rand["action"] == rate.action).to_numpy() & rv).sum() / rv.sum()) \
            if rv.any() else np.nan
        cols["delta_vs_random"][i] = getattr(r, f"{rate.name}_rate") - cols["rate_random"][i]
        cols["n_pairs_vs_random"][i] = int(valid.sum())
        cols["p_vs_random"][i] = mcnemar_p(rb[valid], ra[valid])
    real = np.array([control_of(c) == "real" for c in out["condition"]], dtype=bool)
    cols["q_vs_random"][real] = bh(cols["p_vs_random"][real])
    return out.assign(**cols)
