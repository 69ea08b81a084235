"""The pathway graph: which edges it draws and where (one layout), drawn as a static figure.

Nodes stand in columns by layer, named every one: at most `per_column` targets a layer (the
strongest by |delta_computed|), every edge a computed, specific one (pathways.edges.headline),
per (source, target) the forced one where it exists, at most `cap` in all (each source its share).
The figure is sized so that labels one node apart never touch (a row is 0.17 in, a 6 pt label
0.09 in) and the axes reach past the last column's labels, so none is cut; the title says the
doses drawn and what was left out, and a legend under the axes gives the widths in the SAE's
activation units."""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np
import pandas as pd

from ..features import feature_name, parse_feature_name
from ..pathways.edges import headline
from .links import Links, feature_link

ROW_IN, COLUMN_IN, LABEL_ROOM = 0.17, 1.6, 0.85  # inches a row and a column take; label room past the last


class GraphLayout(NamedTuple):
    """What a pathway graph draws: nodes (name, layer, x, y, source, link), edges (src, dst,
    delta: the computed part, q, kind, scope, condition, dose, bold), the edges left out, the doses."""

    nodes: pd.DataFrame
    edges: pd.DataFrame
    left: int
    doses: list[str]


def from_source(edges: pd.DataFrame, source: str) -> pd.Series:
    """The edges whose source feature is `source` (a name such as L2-816)."""
    layer, fid = parse_feature_name(source)
    return (edges["source_layer"] == layer) & (edges["source_feature"] == fid)


def graph_edges(edges: pd.DataFrame, source: str | None = None, cap: int = 120) -> tuple[pd.DataFrame, int]:
    """The edges a graph draws: the headline ones (computed and specific), per (source, target)
    the strongest, forced scope first (the direct effect), at most `cap` of them by
    |delta_computed|; and how many were left out. Each carries its computed part as `delta`."""
    e = edges if source is None else edges[from_source(edges, source)]
    e = e[headline(e)] if len(e) else e
    if e.empty:
        return e.assign(src=[], dst=[], size=[]), 0
    e = e.assign(src=[feature_name(a, b) for a, b in zip(e["source_layer"], e["source_feature"])],
                 dst=[feature_name(a, b) for a, b in zip(e["target_layer"], e["target_feature"])],
                 first=(e["scope"] != "forced").astype(int), size=e["delta_computed"].abs(),
                 delta=e["delta_computed"])
    e = e.sort_values(["first", "size", "dst"], ascending=[True, False, True]).drop_duplicates(["src", "dst"])
    # every source gets its share of the cap, so one strong source does not crowd the others out
    share = max(1, cap // e["src"].nunique())
    kept = e.sort_values(["size", "dst"], ascending=[False, True]).groupby("src", sort=False).head(share)
    kept = kept.nlargest(cap, "size")
    return kept, len(e) - len(kept)


def graph_layout(edges: pd.DataFrame, paths: pd.DataFrame, source: str | None = None, cap: int = 120,
                 per_column: int = 30, links: Links | None = None) -> GraphLayout:
    """The layout both graphs draw (module docstring): columns by layer, rows by name within a
    column (the same graph, the same picture), mediated chains' hops bold."""
    e, left = graph_edges(edges, source, cap)
    sources = {source} if source else set(e["src"])
    strength = e.groupby("dst")["size"].max() if len(e) else pd.Series(dtype=float)
    layer_of = {n: parse_feature_name(n)[0] for n in strength.index}
    keep = set()
    for layer in sorted(set(layer_of.values())):
        col = strength[[n for n in strength.index if layer_of[n] == layer]]
        keep |= set(col.sort_values(ascending=False).index[:per_column])
    dropped = e[~e["dst"].isin(keep | sources)]
    e = e[e["dst"].isin(keep | sources)]
    names = sorted(sources | set(e["dst"]), key=lambda n: parse_feature_name(n))
    layers = sorted({parse_feature_name(n)[0] for n in names})
    rows = []
    for i, layer in enumerate(layers):
        col = [n for n in names if parse_feature_name(n)[0] == layer]
        for j, n in enumerate(col):
            rows.append((n, layer, float(i), (len(col) - 1) / 2 - j, n in sources, feature_link(links or {}, n)))
    nodes = pd.DataFrame(rows, columns=["name", "layer", "x", "y", "source", "link"])
    med = paths[paths["mediated"].astype(bool)] if len(paths) and "mediated" in paths else paths.iloc[:0]
    bold = {(a, b) for p in med.get("path", []) for a, b in zip(p.split(" -> "), p.split(" -> ")[1:])}
    dose = e["dose_realized"] if "dose_realized" in e else pd.Series(np.nan, index=e.index)
    out = pd.DataFrame({"src": e["src"].to_numpy(), "dst": e["dst"].to_numpy(), "delta": e["delta"].to_numpy(),
                        "q": e["q_computed"].to_numpy(), "kind": e["kind"].astype(str).to_numpy(),
                        "scope": e["scope"].astype(str).to_numpy(), "condition": e["condition"].astype(str).to_numpy(),
                        "dose": dose.to_numpy(), "bold": [(a, b) in bold for a, b in zip(e["src"], e["dst"])]})
    return GraphLayout(nodes, out, left + len(dropped), sorted(set(out["condition"])))


def title(g: GraphLayout, source: str | None) -> str:
    """What the graph shows, the doses drawn and what was left out."""
    who = "every source" if source is None else source
    text = f"{who}: {len(g.edges)} computed, specific edges"
    text += f" ({g.left} weaker ones left out)" if g.left else ""
    return text + f"; doses {', '.join(g.doses) if g.doses else 'none'}"


def draw_graph(g: GraphLayout, out: str | os.PathLike[str], source: str | None = None) -> None:
    """The static figure (format by suffix) of a layout: red edges raise their target, blue lower
    it, width by |delta_computed|, bold edges on a mediated chain, sources gold."""
    from matplotlib.lines import Line2D

    from .canvas import pyplot, savefig

    plt = pyplot()
    cols = max(1, g.nodes["x"].nunique()) if len(g.nodes) else 1
    tallest = int(g.nodes.groupby("x").size().max()) if len(g.nodes) else 1
    fig, ax = plt.subplots(figsize=(max(8.0, COLUMN_IN * cols + 2), max(3.5, ROW_IN * tallest + 2.4)))
    biggest = max(1e-9, float(g.edges["delta"].abs().max())) if len(g.edges) else 1.0
    width = {"min": 0.5, "span": 3.0}
    at = {r.name: (r.x, r.y) for r in g.nodes.itertuples()}
    for r in g.edges.itertuples():
        w = (width["min"] + width["span"] * abs(r.delta) / biggest) * (2.0 if r.bold else 1.0)
        ax.annotate("", xy=at[r.dst], xytext=at[r.src],
                    arrowprops=dict(arrowstyle="-|>", lw=w, color="tab:red" if r.delta > 0 else "tab:blue",
                                    alpha=0.6, shrinkA=4, shrinkB=4, connectionstyle="arc3,rad=0.08"))
    if len(g.nodes):
        src = g.nodes["source"].to_numpy(bool)
        ax.scatter(g.nodes["x"], g.nodes["y"], s=np.where(src, 120, 30), c=np.where(src, "gold", "0.85"),
                   edgecolors=np.where(src, "black", "0.4"), zorder=3)
        for r in g.nodes.itertuples():
            ax.text(r.x + 0.06, r.y, r.name, fontsize=6, va="center", ha="left", zorder=4)
        top = (tallest - 1) / 2 + 0.9
        for x, layer in g.nodes.groupby("x")["layer"].first().items():
            ax.text(x, top, f"L{layer}", ha="center", va="bottom", fontsize=9)
        ax.set_xlim(-0.3, cols - 1 + LABEL_ROOM)
        ax.set_ylim(-(tallest - 1) / 2 - 0.8, top + 0.6)
    else:
        ax.text(0.5, 0.5, "no computed, specific edge", ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()
    ax.set_title(title(g, source), fontsize=8)
    handles = [Line2D([], [], color="tab:red", lw=2, label="raises its target"),
               Line2D([], [], color="tab:blue", lw=2, label="lowers its target")]
    handles += [Line2D([], [], color="0.3", lw=width["min"] + width["span"] * f,
                       label=f"|delta_computed| {f * biggest:.3g}") for f in (1.0, 0.5, 0.1)]
    handles += [Line2D([], [], color="0.3", lw=5, label="on a mediated chain"),
                Line2D([], [], marker="o", ls="", markerfacecolor="gold", markeredgecolor="black", label="source")]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=6, frameon=False,
               title="width: |delta_computed| in the target SAE feature's activation units", title_fontsize=6)
    fig.tight_layout(rect=(0, 1.3 / fig.get_size_inches()[1], 1, 1))
    savefig(fig, out)
