"""From every source's tested rows to the run's claims: run-wide q-values, edges with their forced
and generated deltas side by side and the random control's verdict, and chains whose hops agree."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..effects.layers import COLUMNS
from ..features import feature_name
from ..stats.multiple import bh_with_controls

EDGE_KEY = ["source_layer", "source_feature", "condition", "target_layer", "target_feature"]


CHAIN_COLUMNS = ["path", "scope", "condition", "a", "b", "c", "delta_ab", "q_ab", "delta_bc", "q_bc"]


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
