"""The report's figures: the pathway graph (features by layer, significant edges by sign and
size, mediated chains bold, sources marked), and each source's decisions against the baseline."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..features import feature_name, parse_feature_name
from ..io import atomic_path
from ..pathways.edges import headline
from ..replay.plan import control_of


def pyplot() -> Any:  # pragma: no cover - trivial
    """matplotlib's pyplot on the Agg backend (no display), chosen before pyplot first loads."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "pathreplay"  # the same figure, the same file: no random ids
    import matplotlib.pyplot as plt

    return plt


def savefig(fig: Any, out: str | os.PathLike[str], **kw: Any) -> None:
    """Save and close a figure atomically, in the format its suffix names, without a date (the same
    figure makes the same file)."""
    fmt = Path(out).suffix.lstrip(".")
    meta = {"Date": None} if fmt in ("svg", "pdf") else {}
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format=fmt, metadata=meta, **kw)
    pyplot().close(fig)


def from_source(edges: pd.DataFrame, source: str) -> pd.Series:
    """The edges whose source feature is `source` (a name such as L2-816)."""
    layer, fid = parse_feature_name(source)
    return (edges["source_layer"] == layer) & (edges["source_feature"] == fid)


def graph_edges(edges: pd.DataFrame, source: str | None = None, cap: int = 120) -> tuple[pd.DataFrame, int]:
    """The edges a graph draws: the headline ones (computed and specific, pathways.edges.headline),
    per (source, target) the strongest, forced scope first (the direct effect), at most `cap` of
    them by |delta_computed|; and how many were left out. Each carries its computed part as
    `delta`, what the graph draws."""
    e = edges if source is None else edges[from_source(edges, source)]
    e = e[headline(e)] if len(e) else e
    if e.empty:
        return e.assign(src=[], dst=[]), 0
    e = e.assign(src=[feature_name(a, b) for a, b in zip(e["source_layer"], e["source_feature"])],
                 dst=[feature_name(a, b) for a, b in zip(e["target_layer"], e["target_feature"])],
                 first=(e["scope"] != "forced").astype(int), size=e["delta_computed"].abs(),
                 delta=e["delta_computed"])
    e = e.sort_values(["first", "size"], ascending=[True, False]).drop_duplicates(["src", "dst"])
    # every source gets its share of the cap, so one strong source does not crowd the others out
    share = max(1, cap // e["src"].nunique())
    kept = e.sort_values("size", ascending=False).groupby("src", sort=False).head(share).nlargest(cap, "size")
    return kept, len(e) - len(kept)


def pathway_graph(edges: pd.DataFrame, paths: pd.DataFrame, out: str | os.PathLike[str], source: str | None = None,
                  cap: int = 120) -> int:
    """Draw the graph (format by suffix): features as nodes in columns by layer (networkx's
    multipartite layout), edges coloured by sign (red up, blue down) and as wide as |delta|,
    mediated chains bold, source features ringed. Returns how many edges were left out by the
    cap (said in the figure too)."""
    import networkx as nx

    plt = pyplot()
    e, left = graph_edges(edges, source, cap)
    med = paths[paths["mediated"].astype(bool)] if len(paths) and "mediated" in paths else paths.iloc[:0]
    bold = {(a, b) for p in med["path"] for a, b in zip(p.split(" -> "), p.split(" -> ")[1:])}
    sources = {source} if source else set(e["src"])
    g = nx.DiGraph()
    for n in sorted(sources | set(e["dst"])):  # sorted: the same layout on every run
        g.add_node(n, layer=parse_feature_name(n)[0])
    for r in e.itertuples():
        g.add_edge(r.src, r.dst, delta=float(r.delta))
    per_layer = Counter(nx.get_node_attributes(g, "layer").values())
    fig, ax = plt.subplots(figsize=(10, max(4.0, 0.22 * max(per_layer.values(), default=1))))
    if per_layer:
        # layers as sorted lists: networkx groups a node attribute into sets, whose order follows
        # the string hash seed, so the same graph would be laid out anew in every process
        layers: dict[int, list[str]] = {}
        for n in g.nodes():
            layers.setdefault(g.nodes[n]["layer"], []).append(n)
        pos = nx.multipartite_layout(g, subset_key={k: sorted(v) for k, v in sorted(layers.items())})
        biggest = max(1e-9, e["size"].max()) if len(e) else 1.0
        widths, colors = [], []
        for u, v, d in g.edges(data=True):
            widths.append((0.5 + 3 * abs(d["delta"]) / biggest) * (2.5 if (u, v) in bold else 1))
            colors.append("tab:red" if d["delta"] > 0 else "tab:blue")
        nx.draw_networkx_edges(g, pos, ax=ax, width=widths, edge_color=colors, alpha=0.6, arrowsize=8,
                               connectionstyle="arc3,rad=0.08")
        nx.draw_networkx_nodes(g, pos, ax=ax, node_size=[260 if n in sources else 70 for n in g.nodes()],
                               node_color=["gold" if n in sources else "0.85" for n in g.nodes()],
                               edgecolors=["black" if n in sources else "0.5" for n in g.nodes()])
        labels = {n: n for n in g.nodes() if n in sources or g.degree(n) > 1 or g.number_of_nodes() <= 40}
        nx.draw_networkx_labels(g, pos, labels=labels, ax=ax, font_size=6)
        for layer in sorted(per_layer):  # each column named by its layer
            xs = [pos[n][0] for n, d in g.nodes(data=True) if d["layer"] == layer]
            ax.text(float(np.mean(xs)), 0.0, f"L{layer}", transform=ax.get_xaxis_transform(), ha="center",
                    va="top", fontsize=9)
        ax.set_yticks([])
    else:
        ax.set_xlabel("no edge", fontsize=8)
        ax.set_axis_off()
    doses = ", ".join(sorted(set(e["condition"]))) if len(e) else "none"
    title = f"{'every source' if source is None else source}: {g.number_of_edges()} computed, specific edges"
    title += f" ({left} weaker ones left out)" if left else ""
    ax.set_title(title + f"; doses {doses}\nred: up, blue: down, width: |delta_computed|, bold: mediated chain, "
                 "gold: source", fontsize=8)
    for side in ("top", "right", "left", "bottom"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    savefig(fig, out)
    return left


def behaviour_plot(behaviour: pd.DataFrame, feature: str, out: str | os.PathLike[str], rate: str) -> None:
    """A source's rate (the task's first: `{rate}_rate`) among valid answers with Wilson
    intervals, per condition (controls included) and prompt, beside the baseline's; the valid
    share under each bar."""
    plt = pyplot()
    b = behaviour[behaviour["feature"] == feature]
    prompts = sorted(b["prompt_id"].unique())
    conds = sorted(b["condition"].unique(), key=lambda c: (control_of(c) != "real", c))
    fig, axes = plt.subplots(1, max(1, len(prompts)), figsize=(3.2 * max(1, len(prompts)), 3.4), sharey=True,
                             squeeze=False)
    for ax, p in zip(axes[0], prompts):
        rows = b[b["prompt_id"] == p].set_index("condition").reindex(conds)
        base = rows.iloc[0]
        xs = np.arange(len(conds) + 1)
        rates = [base[f"{rate}_rate_baseline"], *rows[f"{rate}_rate"]]
        lo = [base[f"{rate}_rate_baseline_lo"], *rows[f"{rate}_rate_lo"]]
        hi = [base[f"{rate}_rate_baseline_hi"], *rows[f"{rate}_rate_hi"]]
        err = np.abs(np.array([np.subtract(rates, lo), np.subtract(hi, rates)], dtype=float))
        ax.bar(xs, np.nan_to_num(rates), color=["0.6"] + ["tab:orange" if control_of(c) != "real"
                                                          else "tab:purple" for c in conds])
        ax.errorbar(xs, np.nan_to_num(rates), yerr=np.nan_to_num(err), fmt="none", ecolor="black", capsize=2)
        valid = [base["valid_rate_baseline"], *rows["valid_rate"]]
        for x, v in zip(xs, valid):
            ax.text(x, 0.97, f"{v:.2f}", ha="center", va="top", fontsize=6, color="0.3")
        ax.set_xticks(xs, ["baseline", *conds], rotation=60, ha="right", fontsize=6)
        ax.set_title(f"{p} ({rows['context'].iloc[0]})", fontsize=8)
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel(f"{rate} rate among valid answers\n(95% Wilson; valid share on top)", fontsize=7)
    fig.suptitle(f"{feature}: decisions under each condition against the same seeds unpatched", fontsize=9)
    fig.tight_layout()
    savefig(fig, out)


def top_edges(edges: pd.DataFrame, source: str, n: int = 25) -> pd.DataFrame:
    """A source's strongest edges for a table, computed and specific ones first (then by |delta|):
    the total and its computed part, forced and generated deltas side by side, the dose read back."""
    e = edges[from_source(edges, source)]
    e = e.assign(_top=~headline(e)) if len(e) else e.assign(_top=[])
    cols = ["condition", "scope", "target_layer", "target_feature", "kind", "delta", "delta_computed", "q_computed",
            "delta_forced", "q_forced", "delta_generated", "q_generated", "dose_realized", "robust", "nonspecific",
            "off_distribution"]
    cols = [c for c in cols if c in edges.columns]
    e = e.assign(size=e["delta"].abs()).sort_values(["_top", "size"], ascending=[True, False])
    return e[cols].drop_duplicates(["condition", "target_layer", "target_feature"]).head(n).reset_index(drop=True)


def report_figures(edges: pd.DataFrame, paths: pd.DataFrame, behaviour: pd.DataFrame, sources: list[str],
                   out_dir: str | os.PathLike[str], *, rate: str, cap: int = 120) -> None:
    """Every source's graph, decisions and top edges (SVG, SVG, HTML) into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for s in sources:
        pathway_graph(edges, paths, out / f"{s}.graph.svg", source=s, cap=cap)
        behaviour_plot(behaviour, s, out / f"{s}.decisions.svg", rate)
        html_table(top_edges(edges, s), out / f"{s}.edges.html",
                   empty="no edge from this source passed the thresholds")


STYLE = ("body{font:13px sans-serif;margin:1em} table{border-collapse:collapse} "
         "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right} th{background:#eee}")


def html_table(df: pd.DataFrame, out: str | os.PathLike[str], empty: str = "no rows") -> None:
    """A table as a small self-contained HTML page (a report shows HTML, not TSV), written
    atomically; an empty table says `empty` above its header."""
    body = df.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="", border=0)
    body = f"<p>{empty}</p>" + body if df.empty else body
    with atomic_path(out) as tmp:
        tmp.write_text(f"<!doctype html><html><head><meta charset='utf-8'><style>{STYLE}</style></head>"
                       f"<body>{body}</body></html>\n")
