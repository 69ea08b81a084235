"""How far the predictions agree with what the replay measured, per source, condition (dose),
variant, readout, part and layer gap, and pooled over sources.

The measured side is the effects' `forced` scope of the real conditions downstream of the
source (results/effects): a *tested* target has a test of the part compared (p_computed for the
computed part, p_value for the total); a target the prediction has no row for is predicted 0.
Edges: for the computed part the headline edges (computed and specific, pathways.edges.headline),
for the total every edge; both of the forced scope. Per group of tested targets, with pred the
prediction and meas the measured delta of the part:
- spearman_targets: Spearman's rho of pred and meas over every tested target; spearman_edges and
  sign_agreement (the share with sign(pred) = sign(meas)) over the edges;
- precision_at_k, recall_at_k (k = 10, 50, 200): the k targets of largest |pred| (ties in target
  order), the share of them that are edges and the share of the edges among them; auprc: the
  average precision of |pred| as a score for being an edge (ties counted as one step), beside
  edge_rate, the average precision of a random order;
- precision_at_threshold, recall_at_threshold: targets predicted as edges, |pred| > min_delta
  (the size an edge needs);
- slope: the least-squares slope of meas on pred (1: the prediction's scale is right);
- n_inactive_edges, recall_inactive: edges on targets inactive in every paired baseline trial
  (mean_baseline 0) and the share of them predicted (|pred| > min_delta);
- n_nonspecific, nonspecific_predicted (computed part): computed edges the random control also
  made, and the share of them whose random control's prediction has the edge's sign and
  |pred| > min_delta;
- split_half, reliability, ceiling: the noise ceiling (attribution.reliability), Spearman's rho
  of two halves' measured deltas over the same targets, its Spearman-Brown reliability
  2 rho / (1 + rho) and sqrt(reliability), the correlation a perfect prediction can expect;
- part `indirect_share` (mediated chains): n_targets chains, spearman_targets and slope of the
  predicted share on the measured one, share_mae the mean absolute difference.
Layer gaps: `all`, `1`, `2-4`, `5+` (target layer minus source layer); empty groups are left out."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from ..features import feature_name
from ..pathways.edges import EDGE_KEY, headline

KS = (10, 50, 200)
GAPS = {"all": (1, 10**9), "1": (1, 1), "2-4": (2, 4), "5+": (5, 10**9)}
READOUTS = {"recomputed": "", "gated": "_gated"}
AGREEMENT_COLUMNS = (["source", "condition", "dose", "variant", "readout", "part", "layer_gap", "n_targets",
                      "spearman_targets", "n_edges", "edge_rate", "spearman_edges", "sign_agreement"]
                     + [f"{m}_at_{k}" for k in KS for m in ("precision", "recall")]
                     + ["auprc", "precision_at_threshold", "recall_at_threshold", "slope", "n_inactive_edges",
                        "recall_inactive", "n_nonspecific", "nonspecific_predicted", "split_half", "reliability",
                        "ceiling", "share_mae"])
MEASURED = {"computed": ("delta_computed", "p_computed"), "total": ("delta", "p_value")}


def rho(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho (average ranks for ties); NaN below 3 points or where one side is constant."""
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def average_precision(score: np.ndarray, label: np.ndarray) -> float:
    """Average precision of `score` for `label`, every run of tied scores one step."""
    if not label.any():
        return float("nan")
    order = np.argsort(-score, kind="stable")
    s, y = score[order], label[order].astype(float)
    ends = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # the last index of each tie group
    hits = np.cumsum(y)[ends]
    precision = hits / (ends + 1)
    recall_step = np.diff(np.r_[0.0, hits]) / y.sum()
    return float((precision * recall_step).sum())


def at_k(score: np.ndarray, label: np.ndarray, k: int) -> tuple[float, float]:
    """(precision, recall) of the k largest scores (stable: ties in the given order); NaN where
    every score is 0 (no ranking) or there is no edge (recall)."""
    if not len(score) or not np.any(score):
        return float("nan"), float("nan")
    top = np.argsort(-score, kind="stable")[:k]
    hit = label[top].sum()
    return float(hit / len(top)), float(hit / label.sum()) if label.any() else float("nan")


def group_metrics(g: pd.DataFrame, min_delta: float) -> dict[str, float]:
    """The module docstring's metrics of one group: columns pred, meas, edge, inactive, and
    optionally pred_random, nonspecific, half_a, half_b."""
    pred, meas, edge = g["pred"].to_numpy(float), g["meas"].to_numpy(float), g["edge"].to_numpy(bool)
    score = np.abs(pred)
    out: dict[str, float] = {"n_targets": len(g), "spearman_targets": rho(pred, meas), "n_edges": int(edge.sum()),
                             "edge_rate": float(edge.mean()) if len(g) else np.nan,
                             "spearman_edges": rho(pred[edge], meas[edge]),
                             "sign_agreement": float((np.sign(pred[edge]) == np.sign(meas[edge])).mean())
                             if edge.any() else np.nan}
    for k in KS:
        out[f"precision_at_{k}"], out[f"recall_at_{k}"] = at_k(score, edge, k)
    out["auprc"] = average_precision(score, edge) if np.any(score) else np.nan
    said = score > min_delta
    out["precision_at_threshold"] = float((said & edge).sum() / said.sum()) if said.any() else np.nan
    out["recall_at_threshold"] = float((said & edge).sum() / edge.sum()) if edge.any() else np.nan
    var = pred.var()
    out["slope"] = float(((pred - pred.mean()) * (meas - meas.mean())).mean() / var) if var > 0 else np.nan
    quiet = edge & g["inactive"].to_numpy(bool)
    out["n_inactive_edges"] = int(quiet.sum())
    out["recall_inactive"] = float(said[quiet].mean()) if quiet.any() else np.nan
    if "nonspecific" in g:
        ns = g["nonspecific"].to_numpy(bool)
        pr = g["pred_random"].to_numpy(float)
        out["n_nonspecific"] = int(ns.sum())
        out["nonspecific_predicted"] = float(((np.sign(pr) == np.sign(meas)) & (np.abs(pr) > min_delta))[ns].mean()) \
            if ns.any() else np.nan
    if "half_a" in g:
        ok = g["half_a"].notna().to_numpy()
        r = rho(g["half_a"].to_numpy(float)[ok], g["half_b"].to_numpy(float)[ok])
        rel = 2 * r / (1 + r) if np.isfinite(r) and r > -1 else np.nan
        out.update(split_half=r, reliability=rel, ceiling=float(np.sqrt(rel)) if np.isfinite(rel) and rel > 0 else np.nan)
    return out


def measured(effects: pd.DataFrame, edges: pd.DataFrame) -> pd.DataFrame:
    """The forced, real, downstream rows of the effects with their edge flags: edge_computed (a
    headline edge), edge_total (any edge), nonspecific (a computed edge the random control made)."""
    m = effects[(effects["control"] == "real") & (effects["scope"] == "forced")
                & (effects["target_layer"] > effects["source_layer"])]
    m = m.assign(condition=m["condition"].astype(str), inactive=m["mean_baseline"] == 0).reset_index(drop=True)
    e = edges[edges["scope"] == "forced"]
    flags = e[EDGE_KEY].assign(edge_total=True, edge_computed=headline(e).to_numpy(),
                               nonspecific=((e["kind"] == "computed") & e["nonspecific"].astype(bool)).to_numpy())
    flags = flags.assign(condition=flags["condition"].astype(str))
    m = m.merge(flags, on=EDGE_KEY, how="left")
    for c in ("edge_total", "edge_computed", "nonspecific"):
        m[c] = m[c].eq(True)
    return m.assign(source=[feature_name(a, b) for a, b in zip(m["source_layer"], m["source_feature"])])


def _joined(m: pd.DataFrame, pred: pd.DataFrame, variant: str, readout: str, halves: pd.DataFrame | None
            ) -> pd.DataFrame:
    """The measured rows with this variant's and readout's predictions (0 where none) and the
    random control's, and the halves of the noise ceiling."""
    suffix = READOUTS[readout]
    cols = {f"computed{suffix}": "pred_computed", f"total{suffix}": "pred_total"}
    p = pred[pred["variant"] == variant]
    real = p[p["control"] == "real"][EDGE_KEY + list(cols)].rename(columns=cols)
    rand = p[p["control"] == "random"]
    rand = rand.assign(condition=rand["condition"].str.removeprefix("random:"))[
        EDGE_KEY + [f"computed{suffix}"]].rename(columns={f"computed{suffix}": "pred_random"})
    out = m.merge(real, on=EDGE_KEY, how="left").merge(rand, on=EDGE_KEY, how="left")
    if halves is not None and len(halves):
        out = out.merge(halves, on=EDGE_KEY, how="left")
    return out.fillna({"pred_computed": 0.0, "pred_total": 0.0, "pred_random": 0.0})


def scored(effects: pd.DataFrame, edges: pd.DataFrame, pred: pd.DataFrame, doses: Mapping[str, float],
           halves: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every tested target of every source, condition, variant, readout and part: source,
    condition, dose, variant, readout, part, target_layer, target_feature, gap, pred, meas, edge,
    inactive, and (computed part) pred_random, nonspecific, and with `halves` half_a, half_b."""
    m = measured(effects, edges)
    frames = []
    for variant in [v for v in ("virtual", "frozen", "jacobian") if v in set(pred["variant"])]:
        for readout in READOUTS:
            j = _joined(m, pred, variant, readout, halves)
            for part, (col, p) in MEASURED.items():
                t = j[j[p].notna()]
                g = pd.DataFrame({"source": t["source"], "condition": t["condition"],
                                  "dose": t["condition"].map(lambda c: doses.get(c, np.nan)), "variant": variant,
                                  "readout": readout, "part": part, "target_layer": t["target_layer"],
                                  "target_feature": t["target_feature"],
                                  "gap": t["target_layer"] - t["source_layer"], "pred": t[f"pred_{part}"],
                                  "meas": t[col], "edge": t[f"edge_{part}"], "inactive": t["inactive"]})
                if part == "computed":
                    g = g.assign(pred_random=t["pred_random"], nonspecific=t["nonspecific"])
                if halves is not None and f"{part}_a" in t:
                    g = g.assign(half_a=t[f"{part}_a"], half_b=t[f"{part}_b"])
                frames.append(g)
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return out.sort_values(["variant", "readout", "part", "source", "condition", "target_layer", "target_feature"],
                           kind="stable").reset_index(drop=True) if len(out) else out


def agreement(effects: pd.DataFrame, edges: pd.DataFrame, pred: pd.DataFrame, doses: Mapping[str, float],
              min_delta: float, halves: pd.DataFrame | None = None, shares: pd.DataFrame | None = None
              ) -> pd.DataFrame:
    """AGREEMENT_COLUMNS rows (module docstring). `halves`: attribution.reliability.halves of
    every source; `shares`: the predicted shares joined to the measured ones (share_table)."""
    t = scored(effects, edges, pred, doses, halves)
    rows = []
    if len(t):
        for (variant, readout, part), g in t.groupby(["variant", "readout", "part"], sort=False):
            if part != "computed":
                g = g.drop(columns=[c for c in ("pred_random", "nonspecific") if c in g])
            groups = list(g.groupby(["source", "condition"])) + [(("all", c), cg) for c, cg in g.groupby("condition")]
            for (source, cond), sg in groups:
                for gap, (lo, hi) in GAPS.items():
                    s = sg[(sg["gap"] >= lo) & (sg["gap"] <= hi)]
                    if len(s):
                        rows.append({"source": source, "condition": cond, "dose": doses.get(cond, np.nan),
                                     "variant": variant, "readout": readout, "part": part, "layer_gap": gap,
                                     **group_metrics(s, min_delta)})
    if shares is not None and len(shares):
        for variant in ("frozen", "jacobian"):
            for readout in READOUTS:
                rows += _share_rows(shares, variant, readout, doses)
    out = pd.DataFrame(rows).reindex(columns=AGREEMENT_COLUMNS)
    order = {"virtual": 0, "frozen": 1, "jacobian": 2}
    return out.assign(_v=out["variant"].map(order)).sort_values(
        ["_v", "readout", "part", "source", "condition"], kind="stable").drop(columns="_v").reset_index(drop=True)


def share_table(predicted: pd.DataFrame, paths: pd.DataFrame) -> pd.DataFrame:
    """Each mediated (chain, mediator) row of paths.tsv with its predicted shares: source, condition,
    mediator, c, measured (share), variant, readout, predicted (share); no rows where either has none."""
    if not len(paths) or not len(predicted):
        return pd.DataFrame(columns=["source", "condition", "mediator", "c", "measured", "variant", "readout",
                                     "predicted"])
    p = paths[paths["mediated"].astype(bool)]
    p = p.assign(source=p["path"].str.split(" -> ").str[0], c=p["path"].str.split(" -> ").str[-1])
    j = p[["source", "condition", "mediator", "c", "share"]].rename(columns={"share": "measured"}).merge(
        predicted[["source", "condition", "mediator", "c", "variant", "readout", "share"]].rename(
            columns={"share": "predicted"}), on=["source", "condition", "mediator", "c"])
    return j


def _share_rows(shares: pd.DataFrame, variant: str, readout: str, doses: Mapping[str, float]) -> list[dict]:
    out = []
    s = shares[(shares["variant"] == variant) & (shares["readout"] == readout)]
    s = s[np.isfinite(s["predicted"].to_numpy(float)) & np.isfinite(s["measured"].to_numpy(float))]
    for (source, cond), g in list(s.groupby(["source", "condition"])) + [(("all", c), g) for c, g in
                                                                          s.groupby("condition")]:
        x, y = g["predicted"].to_numpy(float), g["measured"].to_numpy(float)
        var = x.var()
        out.append({"source": source, "condition": cond, "dose": doses.get(cond, np.nan), "variant": variant,
                    "readout": readout, "part": "indirect_share", "layer_gap": "all", "n_targets": len(g),
                    "spearman_targets": rho(x, y),
                    "slope": float(((x - x.mean()) * (y - y.mean())).mean() / var) if var > 0 else np.nan,
                    "share_mae": float(np.abs(x - y).mean())})
    return out
