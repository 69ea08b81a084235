"""The screen (the study's Exp2 measurement, redone for any task): patch each candidate feature to
each condition's value on the screen prompts and compare the task's measures with the baseline
trials of the same seeds. No capture."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..features import CANONICAL
from ..replay.plan import Condition, baseline_jobs, patched_jobs
from ..replay.prompts import Prompt
from ..replay.trials import ReplaySettings, run_jobs
from ..sae.exact import Feature
from ..task import Task, load_task
from .measures import behaviour_effects


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
    return behaviour_effects(patched, base, load_task(settings.task)), base


def classify(candidates: pd.DataFrame, effects: pd.DataFrame, alpha: float, min_delta: float, task: Task
             ) -> pd.DataFrame:
    """The screen's verdict per feature in the canonical feature-table format (+ summary columns).

    A feature is `disruptive` when some (prompt, condition) moves the share of valid answers by
    more than min_delta with q < alpha: it breaks the answers, which says nothing about choices.
    Otherwise it is causal when some (prompt, condition) moves the task's first rate (the slot
    machine's: the stop rate among valid answers) by more than min_delta with q < alpha. Its label
    says which way raising it pushes that rate: task.labels[0] when the rate rises with the
    patch's target value (their covariance over the feature's rows), else task.labels[1];
    `neutral` when it is neither. `max_delta_{rate}` is the rate's largest move."""
    rate = task.primary.name
    out = candidates.copy()
    broken = set(effects.loc[(effects["q_valid"] < alpha) & (effects["delta_valid"].abs() > min_delta), "feature"])
    sig = set(effects.loc[(effects[f"q_{rate}"] < alpha) & (effects[f"delta_{rate}"].abs() > min_delta), "feature"])
    labels, p_min, best = [], [], []
    for f in out["feature"]:
        e = effects[(effects["feature"] == f) & effects[f"delta_{rate}"].notna()]
        p_min.append(float(e[f"p_{rate}"].min()) if len(e) else np.nan)
        best.append(float(e.loc[e[f"delta_{rate}"].abs().idxmax(), f"delta_{rate}"]) if len(e) else np.nan)
        if f in broken:
            labels.append("disruptive")
        elif f not in sig:
            labels.append("neutral")
        else:
            cov = np.cov(e["target_value"], e[f"delta_{rate}"])[0, 1] if len(e) > 1 else e[f"delta_{rate}"].iloc[0]
            labels.append(task.labels[0] if cov > 0 else task.labels[1])
    out["label"] = labels
    out["p_value"] = p_min
    out[f"max_delta_{rate}"] = best
    out["source"] = "screen"
    return out[list(CANONICAL) + ["feature", f"max_delta_{rate}"]]
