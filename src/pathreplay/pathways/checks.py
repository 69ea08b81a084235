"""The checks that say how far to trust the edges: the controls beside the real contrasts
(null_summary), the layers upstream of each source (upstream_summary) and what each patch
read back (patch_fidelity)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..features import feature_name
from ..stats.multiple import ks_uniform

NULL_COLUMNS = ["source", "contrast", "scope", "tests", "discoveries", "discoveries_within_source", "min_q",
                "max_abs_delta", "p_below_alpha", "ks", "ks_p"]


UPSTREAM_COLUMNS = ["source", "condition", "control", "scope", "layer", "features", "differing", "max_abs_delta",
                    "tests", "min_p"]


def null_summary(effects: pd.DataFrame, alpha: float, min_delta: float) -> pd.DataFrame:
    """One row per (source, contrast, scope), the real contrast beside the controls: tests,
    discoveries at the run's thresholds and within the source, the smallest q, the largest
    |delta|, the share of p below alpha (a calibrated null test keeps it at or under alpha) and
    a Kolmogorov-Smirnov distance of the p-values from uniform (sign-flip p-values of few
    non-zero pairs are discrete and conservative, which this distance also counts)."""
    rows = []
    for (layer, fid, control, scope), g in effects.groupby(["source_layer", "source_feature", "control", "scope"],
                                                           observed=True):
        p = g["p_value"].to_numpy(float)
        stat, ks_p = ks_uniform(p)
        big = g["delta"].abs() > min_delta
        rows.append({"source": feature_name(layer, fid), "contrast": control, "scope": scope,
                     "tests": int(g["p_value"].notna().sum()),
                     "discoveries": int(((g["q_value"] < alpha) & big).sum()),
                     "discoveries_within_source": int(((g["q_within_source"] < alpha) & big).sum()),
                     "min_q": float(g["q_value"].min()), "max_abs_delta": float(g["delta"].abs().max()),
                     "p_below_alpha": float(np.mean(p[~np.isnan(p)] < alpha)) if (~np.isnan(p)).any() else np.nan,
                     "ks": stat, "ks_p": ks_p})
    return pd.DataFrame(rows, columns=NULL_COLUMNS)


def upstream_summary(upstream: pd.DataFrame) -> pd.DataFrame:
    """Layers upstream of each source, per (source, condition, scope, layer): features compared,
    how many differ at all, the largest |delta| and the tests' smallest p. Forced and sham rows
    are exactly 0 here (effects stops the job otherwise); generated ones show what tokens alone move."""
    rows = []
    # features compared: the layer's targets, any contrast's (effects leaves out a contrast's
    # rows of targets inactive in all its trials: 0 differences, no test)
    union = upstream.groupby(["source_layer", "source_feature", "target_layer"])["target_feature"].nunique()
    for key, g in upstream.groupby(["source_layer", "source_feature", "condition", "control", "scope", "target_layer"],
                                   observed=True):
        rows.append({"source": feature_name(key[0], key[1]), "condition": key[2], "control": key[3],
                     "scope": key[4], "layer": key[5], "features": int(union[(key[0], key[1], key[5])]),
                     "differing": int((g["n_nonzero"] > 0).sum()), "max_abs_delta": float(g["delta"].abs().max()),
                     "tests": int(g["p_value"].notna().sum()), "min_p": float(g["p_value"].min())})
    return pd.DataFrame(rows, columns=UPSTREAM_COLUMNS)


def patch_fidelity(trials: pd.DataFrame) -> pd.DataFrame:
    """Per feature, condition and position kind, over the sampled runs: the target, the value read
    back and the largest error, the feature's pre-activation before the patch, ||dh|| and
    ||dh|| / ||h|| (the random control's ||dh|| matches its condition's by construction)."""
    rows = []
    t = trials[trials["run"] == "generated"] if "run" in trials else trials
    for (feat, cond), g in (t.groupby(["feature", "condition"]) if len(t) else []):
        for kind, suffix in (("prompt_last", "last"), ("generated", "generated")):
            v = g[f"value_after_{suffix}"].dropna()
            if v.empty:
                continue
            err = (v - g.loc[v.index, "value"]).abs()
            pre = g["pre_before_last"] if kind == "prompt_last" else pd.Series(np.nan, index=g.index)
            rows.append({"feature": feat, "condition": cond, "position": kind,
                         "target_value": float(g["value"].mean()), "value_read_back": float(v.mean()),
                         "abs_error": float(err.max()), "pre_before": float(pre.mean()),
                         "dh": float(g[f"dh_{suffix}"].mean()), "dh_rel": float(g[f"dh_rel_{suffix}"].mean())})
    return pd.DataFrame(rows, columns=["feature", "condition", "position", "target_value", "value_read_back",
                                       "abs_error", "pre_before", "dh", "dh_rel"])
