"""Edges into pathways, and the quality checks that say how far to trust them."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .features import feature_name


def chains(edges: pd.DataFrame) -> pd.DataFrame:
    """Paths A -> B -> C (and longer) whose every hop is an edge; a hop B -> C needs B to have
    been patched itself. One row per path, with each hop's strongest delta and q."""
    if edges.empty:
        return pd.DataFrame(columns=["path", "hops", "deltas", "q_values", "robust"])
    e = edges.assign(src=[feature_name(a, b) for a, b in zip(edges["source_layer"], edges["source_feature"])],
                     dst=[feature_name(a, b) for a, b in zip(edges["target_layer"], edges["target_feature"])])
    best = (e.assign(abs_delta=e["delta"].abs()).sort_values("abs_delta", ascending=False)
            .drop_duplicates(["src", "dst"]))
    out_edges: dict[str, list[tuple[str, float, float, bool]]] = {}
    for r in best.itertuples():
        out_edges.setdefault(r.src, []).append((r.dst, float(r.delta), float(r.q_value), bool(r.robust)))
    rows = []

    def walk(path: list[str], deltas: list[float], qs: list[float], robust: bool) -> None:
        for dst, d, q, rb in out_edges.get(path[-1], []):
            if dst in path:
                continue
            p, ds, qq, r = path + [dst], deltas + [d], qs + [q], robust and rb
            if len(p) >= 3:
                rows.append({"path": " -> ".join(p), "hops": len(p) - 1,
                             "deltas": ";".join(f"{x:.4g}" for x in ds),
                             "q_values": ";".join(f"{x:.3g}" for x in qq), "robust": r})
            walk(p, ds, qq, r)

    for src in out_edges:
        walk([src], [], [], True)
    return pd.DataFrame(rows, columns=["path", "hops", "deltas", "q_values", "robust"])


def placebo_summary(placebo: pd.DataFrame, alpha: float, min_delta: float) -> pd.DataFrame:
    """One row per placebo contrast (one per source feature): tests and false discoveries."""
    rows = []
    for (layer, feat), g in (placebo.groupby(["source_layer", "source_feature"]) if len(placebo) else []):
        disc = ((g["q_value"] < alpha) & (g["delta"].abs() > min_delta)).sum()
        rows.append({"contrast": f"placebo:{feature_name(layer, feat)}", "tests": len(g),
                     "discoveries": int(disc), "min_q": float(g["q_value"].min()) if len(g) else np.nan})
    return pd.DataFrame(rows, columns=["contrast", "tests", "discoveries", "min_q"])


def patch_fidelity(trials: pd.DataFrame) -> pd.DataFrame:
    """Per feature, condition and position kind: the target, the value read back, the error."""
    rows = []
    for (feat, cond), g in (trials.groupby(["feature", "condition"]) if len(trials) else []):
        for kind, col in (("prompt_last", "value_after_last"), ("generated", "value_after_generated")):
            v = g[col].dropna()
            if v.empty:
                continue
            err = (v - g.loc[v.index, "value"]).abs()
            rows.append({"feature": feat, "condition": cond, "position": kind,
                         "target_value": float(g["value"].mean()), "value_read_back": float(v.mean()),
                         "abs_error": float(err.max())})
    return pd.DataFrame(rows, columns=["feature", "condition", "position", "target_value",
                                       "value_read_back", "abs_error"])
