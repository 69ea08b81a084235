"""The report's figures and tables: the pathway graphs (report.graph, report.interactive), each
source's decisions (report.decisions) and strongest edges, and HTML tables whose feature names
link to the features' pages."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..features import feature_name
from ..io import atomic_path
from ..pathways.edges import headline
from .decisions import behaviour_plot
from .graph import draw_graph, from_source, graph_layout
from .interactive import interactive_graph
from .links import Links, anchor


def pathway_graph(edges: pd.DataFrame, paths: pd.DataFrame, out: str | os.PathLike[str], source: str | None = None,
                  cap: int = 120, links: Links | None = None, html: str | os.PathLike[str] | None = None) -> int:
    """The static graph (and, with `html`, the interactive one) of the computed, specific edges;
    returns how many were left out."""
    g = graph_layout(edges, paths, source, cap, links=links)
    draw_graph(g, out, source)
    if html is not None:
        interactive_graph(g, html, source)
    return g.left


def top_edges(edges: pd.DataFrame, source: str, n: int = 25) -> pd.DataFrame:
    """A source's strongest edges for a table, computed and specific ones first (then by |delta|):
    the total and its computed part, forced and generated deltas side by side, the dose read back."""
    e = edges[from_source(edges, source)]
    e = e.assign(_top=~headline(e)) if len(e) else e.assign(_top=[])
    cols = ["condition", "scope", "target_layer", "target_feature", "kind", "general", "delta", "delta_computed",
            "q_computed", "q_prompts", "delta_forced", "q_forced", "delta_generated", "q_generated", "dose_realized",
            "robust", "nonspecific", "off_distribution"]
    cols = [c for c in cols if c in edges.columns]
    e = e.assign(size=e["delta"].abs()).sort_values(["_top", "size"], ascending=[True, False])
    return e[cols].drop_duplicates(["condition", "target_layer", "target_feature"]).head(n).reset_index(drop=True)


def report_figures(edges: pd.DataFrame, paths: pd.DataFrame, behaviour: pd.DataFrame, sources: Sequence[str],
                   out_dir: str | os.PathLike[str], *, rate: str, cap: int = 120, links: Links | None = None) -> None:
    """Every source's graph, decisions and top edges (SVG, SVG, HTML) into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for s in sources:
        pathway_graph(edges, paths, out / f"{s}.graph.svg", source=s, cap=cap, links=links)
        behaviour_plot(behaviour, s, out / f"{s}.decisions.svg", rate)
        t = top_edges(edges, s)
        if len(t):
            t.insert(3, "target", [anchor(links or {}, feature_name(a, b))
                                   for a, b in zip(t["target_layer"], t["target_feature"])])
            t = t.drop(columns=["target_layer", "target_feature"])
        html_table(t, out / f"{s}.edges.html", empty="no edge from this source passed the thresholds", escape=False)


STYLE = ("body{font:13px sans-serif;margin:1em} table{border-collapse:collapse} "
         "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right} th{background:#eee}")


def html_table(df: pd.DataFrame, out: str | os.PathLike[str], empty: str = "no rows", escape: bool = True) -> None:
    """A table as a small self-contained HTML page (a report shows HTML, not TSV), written
    atomically; an empty table says `empty` above its header. `escape` False keeps the links
    report.links.anchor wrote (every other cell is a number or a name of ours)."""
    body = df.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="", border=0, escape=escape)
    body = f"<p>{empty}</p>" + body if df.empty else body
    with atomic_path(out) as tmp:
        tmp.write_text(f"<!doctype html><html><head><meta charset='utf-8'><style>{STYLE}</style></head>"
                       f"<body>{body}</body></html>\n")
