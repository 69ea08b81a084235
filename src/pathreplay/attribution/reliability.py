"""The noise ceiling: how well the measured deltas agree with themselves.

A source's forced pairs (each real condition's teacher-forced trials against the baseline trials
of the same prompt and trial, both keeping a generated position: the effects' `forced` scope) are
cut into two halves by trial parity, so every prompt sits in both. Per half and target, from the
codes' `gen` (the mean over kept generated positions) and the read-through codes:
    total_x    = mean over the half's pairs of gen_patched - gen_baseline
    computed_x = mean over the half's pairs of gen_patched - gen_baseline - gen_read_through
(x = a, b): the effects' delta and delta_computed of half the trials. agreement correlates the
halves over the tested targets; their rank correlation bounds what any prediction can reach."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from ..effects.codes import dense
from ..replay.plan import control_of

HALF_COLUMNS = ["source_layer", "source_feature", "condition", "target_layer", "target_feature", "total_a", "total_b",
                "computed_a", "computed_b"]


def forced_pairs(patched: pd.DataFrame, baseline: pd.DataFrame) -> pd.DataFrame:
    """Each real condition's forced trials paired with their baseline trials (part_t, row_t,
    part_c, row_c, condition, half), both keeping a generated position."""
    main = baseline[baseline["condition"] == "baseline"]
    t = patched[(patched["run"] == "forced") & patched["condition"].map(lambda c: control_of(str(c)) == "real")]
    m = t.merge(main, on=["prompt_id", "trial"], suffixes=("_t", "_c"))
    m = m[(m["n_positions_t"] > 0) & (m["n_positions_c"] > 0)]
    return pd.DataFrame({"condition": m["condition_t"].astype(str).to_numpy(), "half": m["trial"].to_numpy() % 2,
                         "part_t": m["part_t"].to_numpy(), "row_t": m["row_t"].to_numpy(),
                         "part_c": m["part_c"].to_numpy(), "row_c": m["row_c"].to_numpy()})


def halves(patched: pd.DataFrame, baseline: pd.DataFrame, codes: Mapping[int, pd.DataFrame],
           through: Mapping[int, pd.DataFrame]) -> pd.DataFrame:
    """HALF_COLUMNS of one source (`patched`: its trials with `part`; `baseline`: its prompts'
    baseline trials with `part`; codes and read-through codes per layer, read when reached) at
    every layer above the source (module docstring)."""
    layer, fid = int(patched["layer"].iloc[0]), int(patched["feature_id"].iloc[0])
    pairs = forced_pairs(patched, baseline)
    keys = sorted(set(zip(pairs["part_t"], pairs["row_t"])) | set(zip(pairs["part_c"], pairs["row_c"])))
    pos = {k: i for i, k in enumerate(keys)}
    ti = np.array([pos[k] for k in zip(pairs["part_t"], pairs["row_t"])], np.int64)
    ci = np.array([pos[k] for k in zip(pairs["part_c"], pairs["row_c"])], np.int64)
    out = []
    for target in sorted(t for t in codes if t > layer):
        feats, dens, passed = dense(codes[target], pos, through.get(target))
        if not len(feats):
            continue
        d = dens["gen"][ti].astype(float) - dens["gen"][ci].astype(float)
        c = d - passed["gen"][ti].astype(float)
        for cond in sorted(set(pairs["condition"])):
            at = (pairs["condition"] == cond).to_numpy()
            cols = {}
            for x, h in (("a", 0), ("b", 1)):
                sel = at & (pairs["half"] == h).to_numpy()
                n = max(int(sel.sum()), 1)
                cols[f"total_{x}"] = d[sel].sum(0) / n if sel.any() else np.full(len(feats), np.nan)
                cols[f"computed_{x}"] = c[sel].sum(0) / n if sel.any() else np.full(len(feats), np.nan)
            out.append(pd.DataFrame({"source_layer": layer, "source_feature": fid, "condition": cond,
                                     "target_layer": target, "target_feature": feats.astype(np.int64), **cols}))
    return pd.concat(out, ignore_index=True)[HALF_COLUMNS] if out else pd.DataFrame(columns=HALF_COLUMNS)
