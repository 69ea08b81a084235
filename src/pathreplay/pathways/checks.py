"""The checks that say how far to trust the edges: the controls beside the real contrasts
(null_summary), the layers upstream of each source (upstream_summary), what each patch read back
(patch_fidelity, realized_doses), how far the patched states sit off the SAEs' distribution
(patched_quality), and the edges marked with both (annotate)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..effects.placebo import LEVELS, Floors
from ..features import feature_name
from ..replay.plan import control_of
from ..stats.multiple import ks_uniform
from .edges import under_floor

NULL_COLUMNS = ["source", "contrast", "scope", "tests", "discoveries", "discoveries_within_source",
                "discoveries_computed", "min_q", "max_abs_delta", "p_below_alpha", "ks", "ks_p"]


UPSTREAM_COLUMNS = ["source", "condition", "control", "scope", "layer", "features", "differing", "max_abs_delta",
                    "tests", "min_p"]


def null_summary(effects: pd.DataFrame, alpha: float, min_delta: float, floors: Floors | None = None
                 ) -> pd.DataFrame:
    """One row per (source, contrast, scope), the real contrast beside the controls: tests,
    discoveries at the run's thresholds (the placebo floors too), within the source (BH and
    |delta| alone) and of the computed parts (q_computed, delta_computed), the smallest q, the largest
    |delta|, the share of p below alpha (a calibrated null test keeps it at or under alpha) and
    a Kolmogorov-Smirnov distance of the p-values from uniform (sign-flip p-values of few
    non-zero pairs are discrete and conservative, which this distance also counts)."""
    rows = []
    effects = effects.assign(_t=under_floor(effects, "p_value", "trials", floors),
                             _c=under_floor(effects, "p_computed", "trials", floors))
    for (layer, fid, control, scope), g in effects.groupby(["source_layer", "source_feature", "control", "scope"],
                                                           observed=True):
        p = g["p_value"].to_numpy(float)
        stat, ks_p = ks_uniform(p)
        big = g["delta"].abs() > min_delta
        rows.append({"source": feature_name(layer, fid), "contrast": control, "scope": scope,
                     "tests": int(g["p_value"].notna().sum()),
                     "discoveries": int(((g["q_value"] < alpha) & big & g["_t"]).sum()),
                     "discoveries_within_source": int(((g["q_within_source"] < alpha) & big).sum()),
                     "discoveries_computed": int(((g["q_computed"] < alpha) & (g["delta_computed"].abs() > min_delta)
                                                  & g["_c"]).sum()),
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


FIDELITY_COLUMNS = ["feature", "condition", "run", "position", "target_value", "value_read_back", "fires",
                    "abs_error", "pre_before", "dh", "dh_rel"]


def patch_fidelity(trials: pd.DataFrame) -> pd.DataFrame:
    """Per feature, condition, run (sampled or teacher-forced) and position kind: the target, the
    value the SAE reads back (the realized dose, over the patched positions) and the share of
    them where the feature fires, the largest error against the target, the feature's
    pre-activation before the patch, ||dh|| and ||dh|| / ||h|| (the random control's ||dh||
    matches its condition's by construction; its read-back is the baseline's, its direction
    being orthogonal to the feature's rows)."""
    rows = []
    for (feat, cond, run), g in (trials.groupby(["feature", "condition", "run"]) if len(trials) else []):
        for kind, suffix in (("prompt_last", "last"), ("generated", "generated")):
            v = g[f"value_after_{suffix}"].dropna()
            if v.empty:
                continue
            err = (v - g.loc[v.index, "value"]).abs()
            pre = g["pre_before_last"] if kind == "prompt_last" else pd.Series(np.nan, index=g.index)
            rows.append({"feature": feat, "condition": cond, "run": run, "position": kind,
                         "target_value": float(g["value"].mean()), "value_read_back": float(v.mean()),
                         "fires": float(g.loc[v.index, f"fires_{suffix}"].mean()),
                         "abs_error": float(err.max()), "pre_before": float(pre.mean()),
                         "dh": float(g[f"dh_{suffix}"].mean()), "dh_rel": float(g[f"dh_rel_{suffix}"].mean())})
    return pd.DataFrame(rows, columns=FIDELITY_COLUMNS)


SCOPE_READ = {"prompt_last": ("generated", "prompt_last"), "generated": ("generated", "generated"),
              "forced": ("forced", "generated")}  # scope -> (run, position) its dose is read at


def realized_doses(fidelity: pd.DataFrame) -> pd.DataFrame:
    """Per (feature, condition, scope): the dose the SAE read back where that scope measures
    (dose_realized) and the share of those positions where the source fires (fires), from
    patch_fidelity."""
    rows = []
    for scope, (run, position) in SCOPE_READ.items():
        f = fidelity[(fidelity["run"] == run) & (fidelity["position"] == position)]
        rows.append(f[["feature", "condition"]].assign(scope=scope, dose_realized=f["value_read_back"].to_numpy(),
                                                       fires=f["fires"].to_numpy()))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(
        columns=["feature", "condition", "scope", "dose_realized", "fires"])


def never_firing(fidelity: pd.DataFrame) -> list[tuple[str, str]]:
    """(feature, condition) of the real conditions whose source fires at none of its patched
    positions in any run: such a patch changed nothing the SAE can name, and makes no edge."""
    real = fidelity[np.array([control_of(c) == "real" for c in fidelity["condition"]], dtype=bool)]
    fires = real.groupby(["feature", "condition"])["fires"].max()
    return [k for k, v in fires.items() if not v > 0]


QUALITY_COLUMNS = ["feature", "condition", "run", "layer", "fvu", "l0", "positions", "fvu_baseline", "l0_baseline",
                   "fvu_ratio", "off_distribution"]


def patched_quality(parts: pd.DataFrame, baseline: pd.DataFrame, max_ratio: float) -> pd.DataFrame:
    """Every layer's SAE on the patched states per (feature, condition, run) (the encode jobs'
    tables), beside its quality on the baselines (sae_quality.tsv): FVU, L0, their ratio, and
    `off_distribution` where the patched FVU exceeds max_ratio times the baseline's."""
    b = baseline.set_index("layer")
    q = parts.assign(fvu_baseline=parts["layer"].map(b["fvu"]), l0_baseline=parts["layer"].map(b["l0"]))
    q = q.assign(fvu_ratio=q["fvu"] / q["fvu_baseline"])
    return q.assign(off_distribution=(q["fvu_ratio"] > max_ratio).to_numpy())[QUALITY_COLUMNS]


def annotate(e: pd.DataFrame, fidelity: pd.DataFrame, quality: pd.DataFrame) -> pd.DataFrame:
    """Edges with the realized dose of their (source, condition, scope) (`dose_realized`, `fires`),
    `off_distribution` where their condition's patched states at the target layer sit off the SAE's
    distribution (patched_quality, in the scope's run), and without the conditions whose source
    never fires (never_firing)."""
    src = pd.Series([feature_name(a, b) for a, b in zip(e["source_layer"], e["source_feature"])], index=e.index,
                    dtype=object)
    silent = set(never_firing(fidelity))
    e = e[np.array([(s, c) not in silent for s, c in zip(src, e["condition"])], dtype=bool)].assign(_src=src)
    doses = realized_doses(fidelity).rename(columns={"feature": "_src"})
    e = e.merge(doses, on=["_src", "condition", "scope"], how="left")
    run = e["scope"].map({k: v[0] for k, v in SCOPE_READ.items()})
    off = quality.rename(columns={"feature": "_src", "layer": "target_layer"})[
        ["_src", "condition", "run", "target_layer", "off_distribution"]]
    e = e.assign(run=run.to_numpy()).merge(off, on=["_src", "condition", "run", "target_layer"], how="left")
    return e.assign(off_distribution=e["off_distribution"].fillna(False).astype(bool)).drop(columns=["_src", "run"])


PLACEBO_SUMMARY = ["level", "splits", "p_below_alpha_median", "p_below_alpha_p95", "discoveries_p95",
                   "splits_with_discoveries", "cutoff", "floor"]


def placebo_summary(placebo: pd.DataFrame, cutoffs: dict[str, float], alpha: float, min_delta: float,
                    prompt_sets: int, floors: Floors | None = None) -> pd.DataFrame:
    """null.tsv's rows of the placebo calibration study (effects.placebo): per scope and level
    (`trials`: p_value, `prompts`: p_prompts), over the check splits, each split's distinct tests
    (every prompt set once) judged as a real claim is: a discovery where p <= the real family's BH
    cutoff of that level (`cutoff`), p < the scope's floor at that level (`floor`, set by the
    calibration splits: NaN where none) and |delta| > min_delta. Per split: tests, discoveries
    (median; 95th percentile; splits with any), the share of p below alpha (mean: `p_below_alpha`;
    median; 95th percentile). A calibrated test keeps the mean share at or under alpha."""
    def stat(fn, x: np.ndarray) -> float:
        x = x[~np.isnan(x)]
        return float(fn(x)) if len(x) else np.nan

    rows = []
    for scope, g in placebo.groupby("scope", sort=True):
        for level, col in LEVELS.items():
            floor = (floors or {}).get((scope, level), np.inf)
            per = []
            for _, s in g.groupby("split", sort=True):
                p = s[col].to_numpy(float)
                ok = ~np.isnan(p)
                claim = (p <= cutoffs[level]) & (p < floor) & ok & (s["delta"].abs() > min_delta).to_numpy()
                per.append((int(ok.sum()), int(claim.sum()), float(np.mean(p[ok] < alpha)) if ok.any() else np.nan))
            tests, disc, share = (np.array(x, float) for x in zip(*per)) if per else (np.zeros(0),) * 3
            rows.append({"source": f"every prompt set ({prompt_sets})", "contrast": "placebo", "scope": scope,
                         "tests": int(np.median(tests)) if len(tests) else 0, "discoveries": float(np.median(disc)),
                         "discoveries_within_source": np.nan, "discoveries_computed": np.nan, "min_q": np.nan,
                         "max_abs_delta": float(g["delta"].abs().max()), "p_below_alpha": stat(np.mean, share),
                         "ks": np.nan, "ks_p": np.nan, "level": level, "splits": len(per),
                         "p_below_alpha_median": stat(np.median, share),
                         "p_below_alpha_p95": stat(lambda x: np.percentile(x, 95), share),
                         "discoveries_p95": float(np.percentile(disc, 95)), "splits_with_discoveries": int((disc > 0).sum()),
                         "cutoff": cutoffs[level], "floor": floor if np.isfinite(floor) else np.nan})
    return pd.DataFrame(rows, columns=NULL_COLUMNS + PLACEBO_SUMMARY)


def with_placebo(null: pd.DataFrame, placebo_rows: pd.DataFrame) -> pd.DataFrame:
    """null.tsv: the per-source rows (trial level) and the placebo study's rows beneath."""
    return pd.concat([null.assign(level="trials"), placebo_rows], ignore_index=True)[NULL_COLUMNS + PLACEBO_SUMMARY]
