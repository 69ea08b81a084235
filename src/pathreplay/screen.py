"""The Exp2 measurement redone: patch each candidate feature to each condition's value on the
screen prompts and compare decisions with the baseline trials of the same seeds. No capture."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from .behaviour import behaviour_effects
from .features import CANONICAL
from .plan import Condition, baseline_jobs, patched_jobs
from .prompts import Prompt
from .replay import ReplaySettings, run_jobs
from .sae import Feature


def screen_features(model: Any, tok: Any, candidates: pd.DataFrame, features: dict[str, tuple[int, Feature]],
                    prompts: Sequence[Prompt], conditions: Sequence[Condition], trials: int,
                    settings: ReplaySettings, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(behaviour rows, baseline trials). `features` maps name -> (block, feature slice)."""
    base = run_jobs(model, tok, baseline_jobs(prompts, trials, seed, "screen"), settings, desc="screen baseline").trials
    parts = []
    for row in candidates.itertuples():
        block, feat = features[row.feature]
        t = run_jobs(model, tok, patched_jobs(prompts, row, conditions, trials, seed, "screen"), settings,
                     feature=feat, block=block, desc=f"screen {row.feature}").trials
        parts.append(t.assign(feature=row.feature, layer=row.layer, feature_id=row.feature_id))
    patched = pd.concat(parts, ignore_index=True)
    return behaviour_effects(patched, base), base


def classify(candidates: pd.DataFrame, effects: pd.DataFrame, alpha: float, min_delta: float) -> pd.DataFrame:
    """The screen's verdict per feature in the canonical feature-table format (+ summary columns).

    A feature is `disruptive` when some (prompt, condition) moves the share of valid answers by
    more than min_delta with q < alpha: it breaks the answers, which says nothing about risk.
    Otherwise it is causal when some (prompt, condition) moves the stop rate among valid answers
    by more than min_delta with q < alpha. Its label says which way raising it pushes decisions:
    `safe` when the stop rate rises with the patch's target value (their covariance over the
    feature's rows), else `risky`; `neutral` when it is neither."""
    out = candidates.copy()
    broken = set(effects.loc[(effects["q_valid"] < alpha) & (effects["delta_valid"].abs() > min_delta), "feature"])
    sig = set(effects.loc[(effects["q_stop"] < alpha) & (effects["delta_stop"].abs() > min_delta), "feature"])
    labels, p_min, best = [], [], []
    for f in out["feature"]:
        e = effects[(effects["feature"] == f) & effects["delta_stop"].notna()]
        p_min.append(float(e["p_stop"].min()) if len(e) else np.nan)
        best.append(float(e.loc[e["delta_stop"].abs().idxmax(), "delta_stop"]) if len(e) else np.nan)
        if f in broken:
            labels.append("disruptive")
        elif f not in sig:
            labels.append("neutral")
        else:
            cov = np.cov(e["target_value"], e["delta_stop"])[0, 1] if len(e) > 1 else e["delta_stop"].iloc[0]
            labels.append("safe" if cov > 0 else "risky")
    out["label"] = labels
    out["p_value"] = p_min
    out["max_delta_stop"] = best
    out["source"] = "screen"
    return out[list(CANONICAL) + ["feature", "max_delta_stop"]]
