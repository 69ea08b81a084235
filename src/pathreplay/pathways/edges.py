"""From every source's tested rows to the run's claims: run-wide q-values, edges with their forced
and generated deltas side by side and the random control's verdict, and chains whose hops agree."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..effects.layers import COLUMNS
from ..effects.placebo import Floors
from ..features import feature_name
from ..stats.multiple import bh_with_controls

EDGE_KEY = ["source_layer", "source_feature", "condition", "target_layer", "target_feature"]


CHAIN_COLUMNS = ["path", "scope", "condition", "hops", "a", "mids", "c", "delta_first", "q_first", "delta_last",
                 "q_last"]


KINDS = ("computed", "passthrough", "total")  # what an edge is: see edges

def under_floor(rows: pd.DataFrame, column: str, level: str, floors: Floors | None) -> np.ndarray:
    """Rows whose p (`column`) is under their scope's placebo floor at `level` (`trials`,
    `prompts`); every row where its scope has none."""
    limit = {scope: v for (scope, lev), v in (floors or {}).items() if lev == level}
    if not limit:
        return np.ones(len(rows), bool)
    f = pd.Series(rows["scope"].astype(object).to_numpy()).map(limit).fillna(np.inf).to_numpy(float)
    return rows[column].to_numpy(float) < f


def run_wide(effects: pd.DataFrame) -> pd.DataFrame:
    """q_value: BH over every real test of the run (all sources, scopes and layers); each
    control's tests (sham, placebo, random: over all sources) held to a family of that size.
    q_computed and q_prompts: the same over the computed parts' trial-level tests (p_computed) and
    over their prompt-level tests (p_prompts), families of their own."""
    kind = effects["control"].to_numpy()
    real = kind == "real"
    return effects.assign(**{f"q_{name}": bh_with_controls(effects[f"p_{name}"].to_numpy(float), kind, real)
                             for name in ("value", "computed", "prompts")})


def significant(rows: pd.DataFrame, alpha: float, min_delta: float, floors: Floors | None = None) -> pd.Series:
    """The total change is a discovery: q < alpha, |delta| > min_delta and p under the floor."""
    return (rows["q_value"] < alpha) & (rows["delta"].abs() > min_delta) & under_floor(rows, "p_value", "trials",
                                                                                         floors)


def computed(rows: pd.DataFrame, alpha: float, min_delta: float, floors: Floors | None = None) -> pd.Series:
    """The computed part is a discovery: q_computed < alpha, |delta_computed| > min_delta and
    p_computed under the floor."""
    return ((rows["q_computed"] < alpha) & (rows["delta_computed"].abs() > min_delta)
            & under_floor(rows, "p_computed", "trials", floors))


def edges(effects: pd.DataFrame, alpha: float, min_delta: float, floors: Floors | None = None) -> pd.DataFrame:
    """Real rows whose total change is a discovery (run-wide q < alpha and |delta| > min_delta),
    each with the forced and the generated delta and q of its (source, condition, target) beside
    it. `kind`: `computed` where the computed part is a discovery too (q_computed < alpha and
    |delta_computed| > min_delta: the model's blocks did something with the patch), `passthrough`
    where it is not (the patch's own step read back by a later SAE), `total` where the split is
    not known (reconstruct patches).
    `nonspecific` where the random control of its condition makes a computed change of the same
    target, scope and sign: a move of the residual as large, along a line that is not the
    feature's, does the same. `general` where the computed part is a discovery across prompts
    too (q_prompts < alpha over the prompts' means): a claim about prompts like these, where
    q_value and q_computed are claims about these prompts' trials. Each claim also needs its p
    under its scope's placebo floor at its level (`floors`: effects.placebo; none where a scope
    has no placebo)."""
    real = effects[effects["control"] == "real"]
    e = real[significant(real, alpha, min_delta, floors)]
    for scope in ("forced", "generated"):
        side = real[real["scope"] == scope][EDGE_KEY + ["delta", "q_value"]]
        e = e.merge(side.rename(columns={"delta": f"delta_{scope}", "q_value": f"q_{scope}"}), on=EDGE_KEY, how="left")
        # effects leaves out a contrast's row of a target inactive in all its trials: delta 0, no q
        ran = side[EDGE_KEY[:3]].drop_duplicates().assign(_ran=True)
        ran_here = e[EDGE_KEY[:3]].merge(ran, on=EDGE_KEY[:3], how="left")["_ran"].eq(True).to_numpy()
        e[f"delta_{scope}"] = e[f"delta_{scope}"].mask(e[f"delta_{scope}"].isna().to_numpy() & ran_here, 0.0)
    rand = effects[(effects["control"] == "random") & computed(effects, alpha, min_delta, floors)]
    rand = rand.assign(condition=rand["condition"].str.removeprefix("random:"), sign=np.sign(rand["delta_computed"]))
    hit = e.assign(sign=np.sign(e["delta_computed"])).merge(rand[EDGE_KEY + ["scope", "sign"]].drop_duplicates(),
                                                            on=EDGE_KEY + ["scope", "sign"], how="left", indicator=True)
    kind = np.where(computed(e, alpha, min_delta, floors), "computed",
                    np.where(e["delta_computed"].isna(), "total", "passthrough"))
    general = ((e["q_prompts"] < alpha) & (e["delta_computed"].abs() > min_delta)
               & under_floor(e, "p_prompts", "prompts", floors))
    e = e.assign(kind=pd.Categorical(kind, categories=KINDS), nonspecific=(hit["_merge"] == "both").to_numpy(),
                 general=general.to_numpy())
    e = e.sort_values(["q_value", "delta"], key=lambda s: s.abs() if s.name == "delta" else s, ascending=[True, False])
    return e[[c for c in COLUMNS if c != "control"] + ["q_value", "q_computed", "q_prompts", "kind", "general",
                                                        "delta_forced", "q_forced", "delta_generated", "q_generated",
                                                        "nonspecific"]].reset_index(drop=True)


def headline(e: pd.DataFrame) -> pd.Series:
    """The edges the run's claims rest on: computed and specific (the graph, chains, counts)."""
    return (e["kind"] == "computed") & ~e["nonspecific"].astype(bool)


def patch_signs(trials: pd.DataFrame) -> dict[tuple[str, str], float]:
    """(feature, condition) -> the sign of the patch's move of the feature itself (target minus
    its value before the patch at the last prompt position), over the feature's trials."""
    t = trials[(trials["run"] == "generated") & trials["value"].notna()]
    move = (t["value"] - t["value_before_last"]).groupby([t["feature"], t["condition"]]).mean()
    return {k: float(np.sign(v)) for k, v in move.items()}


def chains(e: pd.DataFrame, signs: dict[tuple[str, str], float], max_hops: int = 3) -> pd.DataFrame:
    """Chains A -> M ... -> C of 2 to max_hops headline edges (computed and specific) of one scope
    and one condition, every intermediate M a source itself, whose signs agree: each hop into M
    changes M the way M's own patch in that condition moved it, so M's own edge onward predicts
    the sign of what comes through it. Each hop's delta and q are its computed part's; the chain
    keeps its first and last. Candidates for mediation.mediate (`mids`: the intermediates, by |)."""
    e = e[headline(e)] if len(e) else e
    if e.empty:
        return pd.DataFrame(columns=CHAIN_COLUMNS)
    hop = pd.DataFrame({"src": [feature_name(a, b) for a, b in zip(e["source_layer"], e["source_feature"])],
                        "dst": [feature_name(a, b) for a, b in zip(e["target_layer"], e["target_feature"])],
                        "scope": e["scope"].to_numpy(), "condition": e["condition"].to_numpy(),
                        "delta": e["delta_computed"].to_numpy(), "q": e["q_computed"].to_numpy()})
    agree = np.array([np.sign(d) == signs.get((dst, c), 0) for d, dst, c in zip(hop["delta"], hop["dst"],
                                                                                   hop["condition"])], dtype=bool)
    into = hop[agree]  # hops that may lead on: into a source, the way its own patch moves it
    grow = into.rename(columns={"src": "a", "dst": "end", "delta": "delta_first", "q": "q_first"}).assign(
        mids="", hops=1)
    out = []
    for hops in range(2, max_hops + 1):
        nxt = grow.merge(hop, left_on=["end", "scope", "condition"], right_on=["src", "scope", "condition"])
        nxt = nxt[(nxt["dst"] != nxt["a"]) & ~np.array([d in m.split("|") for d, m in zip(nxt["dst"], nxt["mids"])],
                                                         dtype=bool)]
        mids = np.where(nxt["mids"] == "", nxt["end"], nxt["mids"] + "|" + nxt["end"])
        done = nxt.assign(mids=mids, c=nxt["dst"], hops=hops, delta_last=nxt["delta"], q_last=nxt["q"])
        out.append(done)
        keep = np.array([(d, c) in {(x, y) for x, y in zip(into["dst"], into["condition"])}
                         for d, c in zip(done["dst"], done["condition"])], dtype=bool)
        grow = done[keep][["a", "scope", "condition", "delta_first", "q_first", "mids"]].assign(
            end=done.loc[keep, "dst"].to_numpy(), hops=hops)
    c = pd.concat(out, ignore_index=True) if out else pd.DataFrame()
    if c.empty:
        return pd.DataFrame(columns=CHAIN_COLUMNS)
    c = c.assign(path=c["a"] + " -> " + c["mids"].str.replace("|", " -> ", regex=False) + " -> " + c["c"])
    return c.sort_values(["hops", "q_first", "q_last", "path"]).reset_index(drop=True)[CHAIN_COLUMNS]
