"""From every source's tested rows to the run's claims: run-wide q-values, edges with their
forced and generated deltas side by side and the random control's verdict, chains whose hops
agree, and the checks that say how far to trust them (controls, upstream, patch fidelity)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .effects import COLUMNS
from .features import feature_name
from .stats import bh_with_controls, ks_uniform

EDGE_KEY = ["source_layer", "source_feature", "condition", "target_layer", "target_feature"]
NULL_COLUMNS = ["source", "contrast", "scope", "tests", "discoveries", "discoveries_within_source", "min_q",
                "max_abs_delta", "p_below_alpha", "ks", "ks_p"]
CHAIN_COLUMNS = ["path", "scope", "condition", "a", "b", "c", "delta_ab", "q_ab", "delta_bc", "q_bc"]
UPSTREAM_COLUMNS = ["source", "condition", "control", "scope", "layer", "features", "differing", "max_abs_delta",
                    "tests", "min_p"]


def run_wide(effects: pd.DataFrame) -> pd.DataFrame:
    """q_value: BH over every real test of the run (all sources, scopes and layers); each
    control's tests (sham, placebo, random: over all sources) held to a family of that size."""
    kind = effects["control"].to_numpy()
    return effects.assign(q_value=bh_with_controls(effects["p_value"].to_numpy(float), kind, kind == "real"))


def significant(rows: pd.DataFrame, alpha: float, min_delta: float) -> pd.Series:
    return (rows["q_value"] < alpha) & (rows["delta"].abs() > min_delta)


def edges(effects: pd.DataFrame, alpha: float, min_delta: float) -> pd.DataFrame:
    """Real rows with run-wide q < alpha and |delta| > min_delta, each with the forced and the
    generated delta and q of its (source, condition, target) beside it, and `nonspecific` where
    the random control of its condition moves the same target the same way in its scope."""
    real = effects[effects["control"] == "real"]
    e = real[significant(real, alpha, min_delta)]
    for scope in ("forced", "generated"):
        side = real[real["scope"] == scope][EDGE_KEY + ["delta", "q_value"]]
        e = e.merge(side.rename(columns={"delta": f"delta_{scope}", "q_value": f"q_{scope}"}), on=EDGE_KEY, how="left")
        # effects leaves out a contrast's row of a target inactive in all its trials: delta 0, no q
        ran = side[EDGE_KEY[:3]].drop_duplicates().assign(_ran=True)
        ran_here = e[EDGE_KEY[:3]].merge(ran, on=EDGE_KEY[:3], how="left")["_ran"].eq(True).to_numpy()
        e[f"delta_{scope}"] = e[f"delta_{scope}"].mask(e[f"delta_{scope}"].isna().to_numpy() & ran_here, 0.0)
    rand = effects[(effects["control"] == "random") & significant(effects, alpha, min_delta)]
    rand = rand.assign(condition=rand["condition"].str.removeprefix("random:"), sign=np.sign(rand["delta"]))
    hit = e.assign(sign=np.sign(e["delta"])).merge(rand[EDGE_KEY + ["scope", "sign"]].drop_duplicates(),
                                                   on=EDGE_KEY + ["scope", "sign"], how="left", indicator=True)
    e = e.assign(nonspecific=(hit["_merge"] == "both").to_numpy())
    e = e.sort_values(["q_value", "delta"], key=lambda s: s.abs() if s.name == "delta" else s, ascending=[True, False])
    return e[[c for c in COLUMNS if c != "control"] + ["q_value", "delta_forced", "q_forced", "delta_generated",
                                                        "q_generated", "nonspecific"]].reset_index(drop=True)


def patch_signs(trials: pd.DataFrame) -> dict[tuple[str, str], float]:
    """(feature, condition) -> the sign of the patch's move of the feature itself (target minus
    its value before the patch at the last prompt position), over the feature's trials."""
    t = trials[(trials["run"] == "generated") & trials["value"].notna()]
    move = (t["value"] - t["value_before_last"]).groupby([t["feature"], t["condition"]]).mean()
    return {k: float(np.sign(v)) for k, v in move.items()}


def chains(e: pd.DataFrame, signs: dict[tuple[str, str], float]) -> pd.DataFrame:
    """Chains A -> B -> C of edges of one scope and one condition, B a source itself, whose signs
    agree: A moves B the way B's own patch in that condition moved it, so B's edge to C predicts
    the sign of A's effect through B. Candidates for mediation.mediate."""
    if e.empty:
        return pd.DataFrame(columns=CHAIN_COLUMNS)
    e = e.assign(src=[feature_name(a, b) for a, b in zip(e["source_layer"], e["source_feature"])],
                 dst=[feature_name(a, b) for a, b in zip(e["target_layer"], e["target_feature"])])
    first = e.merge(e, left_on=["dst", "scope", "condition"], right_on=["src", "scope", "condition"],
                    suffixes=("_ab", "_bc"))
    first = first[first["src_ab"] != first["dst_bc"]]
    keep = [np.sign(r.delta_ab) == signs.get((r.dst_ab, r.condition), 0) for r in first.itertuples()]
    first = first[np.array(keep, dtype=bool)] if len(first) else first
    out = pd.DataFrame({"path": first["src_ab"] + " -> " + first["dst_ab"] + " -> " + first["dst_bc"],
                        "scope": first["scope"], "condition": first["condition"], "a": first["src_ab"],
                        "b": first["dst_ab"], "c": first["dst_bc"], "delta_ab": first["delta_ab"],
                        "q_ab": first["q_value_ab"], "delta_bc": first["delta_bc"], "q_bc": first["q_value_bc"]})
    return out.sort_values(["q_ab", "q_bc", "path"]).reset_index(drop=True)[CHAIN_COLUMNS]


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
