"""The pathway graph to explore: the static graph's layout (report.graph) as one self-contained
HTML page drawn by Bokeh (its JavaScript inline: the page works offline and inside the report):
pan and zoom, hover over an edge for its computed delta, q, kind, scope and dose, over a node for
its name, layer and page, and a click on a node opens its page (features.links)."""

from __future__ import annotations

import os

from ..io import atomic_path
from .graph import GraphLayout, title

NODES, EDGES = "nodes", "edges"  # the data sources' names, which the browser test reads back


def interactive_graph(g: GraphLayout, out: str | os.PathLike[str], source: str | None = None) -> None:
    """Write the layout as an HTML page with Bokeh's tools (module docstring)."""
    from bokeh.embed import file_html
    from bokeh.models import ColumnDataSource, HoverTool, LabelSet, OpenURL, TapTool, WheelZoomTool
    from bokeh.plotting import figure
    from bokeh.resources import INLINE

    at = {r.name: (r.x, r.y) for r in g.nodes.itertuples()}
    biggest = max(1e-9, float(g.edges["delta"].abs().max())) if len(g.edges) else 1.0
    edges = ColumnDataSource(dict(
        xs=[[at[a][0], at[b][0]] for a, b in zip(g.edges["src"], g.edges["dst"])],
        ys=[[at[a][1], at[b][1]] for a, b in zip(g.edges["src"], g.edges["dst"])],
        src=list(g.edges["src"]), dst=list(g.edges["dst"]), delta=[float(x) for x in g.edges["delta"]],
        q=[float(x) for x in g.edges["q"]], kind=list(g.edges["kind"]), scope=list(g.edges["scope"]),
        condition=list(g.edges["condition"]), dose=[float(x) for x in g.edges["dose"]],
        color=["#d62728" if d > 0 else "#1f77b4" for d in g.edges["delta"]],
        width=[(1 + 5 * abs(d) / biggest) * (2 if b else 1) for d, b in zip(g.edges["delta"], g.edges["bold"])]),
        name=EDGES)
    nodes = ColumnDataSource(dict(
        x=list(g.nodes["x"]), y=list(g.nodes["y"]), name=list(g.nodes["name"]), layer=list(g.nodes["layer"]),
        link=list(g.nodes["link"]), color=["gold" if s else "#d9d9d9" for s in g.nodes["source"]],
        size=[14 if s else 8 for s in g.nodes["source"]]), name=NODES)
    tallest = int(g.nodes.groupby("x").size().max()) if len(g.nodes) else 1
    p = figure(width=1100, height=max(420, 22 * tallest + 120), title=title(g, source),
               tools="pan,box_zoom,reset,save", toolbar_location="above", x_axis_location=None,
               y_axis_location=None, match_aspect=False)
    zoom = WheelZoomTool()
    p.add_tools(zoom)
    p.toolbar.active_scroll = zoom
    p.grid.visible = False
    lines = p.multi_line("xs", "ys", source=edges, line_color="color", line_width="width", line_alpha=0.6)
    dots = p.scatter("x", "y", source=nodes, size="size", fill_color="color", line_color="#555555")
    p.add_layout(LabelSet(x="x", y="y", text="name", source=nodes, x_offset=6, y_offset=-5, text_font_size="8pt"))
    p.add_tools(HoverTool(renderers=[lines], line_policy="interp", tooltips=[
        ("edge", "@src -> @dst"), ("delta_computed", "@delta{0.0000}"), ("q_computed", "@q{0.00e0}"),
        ("kind", "@kind"), ("scope", "@scope"), ("dose", "@condition (read back @dose{0.00})")]))
    p.add_tools(HoverTool(renderers=[dots], tooltips=[("feature", "@name"), ("layer", "@layer"), ("page", "@link")]))
    p.add_tools(TapTool(renderers=[dots], callback=OpenURL(url="@link")))
    with atomic_path(out) as tmp:
        tmp.write_text(file_html(p, INLINE, title(g, source)))
