"""figures: which edges a graph draws, the top-edges table, and figures on empty results."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pathreplay.report.figures import html_table, pathway_graph, report_figures, top_edges
from pathreplay.report.graph import graph_edges


def edge(src: tuple[int, int], dst: tuple[int, int], delta: float, scope: str = "forced",
         condition: str = "c") -> dict:
    return {"source_layer": src[0], "source_feature": src[1], "condition": condition, "scope": scope,
            "target_layer": dst[0], "target_feature": dst[1], "delta": delta, "q_value": 0.01,
            "delta_forced": delta if scope == "forced" else None, "q_forced": 0.01,
            "delta_generated": delta if scope == "generated" else None, "q_generated": 0.01,
            "robust": True, "nonspecific": False, "kind": "computed", "delta_computed": delta, "q_computed": 0.01}


EDGES = pd.DataFrame([
    edge((0, 1), (1, 2), 0.5), edge((0, 1), (1, 2), 2.0, scope="generated"),  # one pair, two scopes
    edge((0, 1), (1, 3), -1.0), edge((0, 1), (2, 4), 0.1),
    edge((1, 7), (2, 4), 3.0), edge((1, 7), (2, 5), 0.2),
])
EMPTY = EDGES.iloc[:0]
PATHS = pd.DataFrame({"path": ["L0-1 -> L1-2 -> L2-4"], "mediated": [True]})


def test_a_pair_is_drawn_once_and_forced_first() -> None:
    e, left = graph_edges(EDGES, source="L0-1")
    assert left == 0
    assert sorted(zip(e["dst"], e["delta"])) == [("L1-2", 0.5), ("L1-3", -1.0), ("L2-4", 0.1)]


def test_the_cap_is_shared_between_sources_and_says_what_it_left_out() -> None:
    e, left = graph_edges(EDGES, cap=2)
    # five pairs, one per source kept: each source's strongest (|-1.0| and 3.0)
    assert left == 3
    assert sorted(zip(e["src"], e["dst"])) == [("L0-1", "L1-3"), ("L1-7", "L2-4")]


def test_top_edges_keep_one_row_per_target_strongest_first() -> None:
    t = top_edges(EDGES, "L0-1")
    assert list(zip(t["target_layer"], t["target_feature"], t["scope"])) == [
        (1, 2, "generated"), (1, 3, "forced"), (2, 4, "forced")]
    assert "delta_forced" in t and "delta_generated" in t


@pytest.mark.parametrize("edges", [EMPTY, EDGES], ids=["no edges", "other source"])
def test_a_source_without_edges_gets_an_empty_table_with_its_columns(edges: pd.DataFrame) -> None:
    t = top_edges(edges, "L3-9")
    assert t.empty and list(t.columns)[:2] == ["condition", "scope"]


def test_figures_are_written_when_nothing_passed(tmp_path) -> None:
    behaviour = pd.DataFrame({"feature": ["L3-9"], "prompt_id": ["p"], "condition": ["c"], "context": ["safe"],
                              "stop_rate": [0.5], "stop_rate_lo": [0.2], "stop_rate_hi": [0.8],
                              "stop_rate_baseline": [0.4], "stop_rate_baseline_lo": [0.1],
                              "stop_rate_baseline_hi": [0.7], "valid_rate": [1.0], "valid_rate_baseline": [1.0],
                              "q_stop": [0.2], "q_vs_random": [np.nan], "n_trials": [40]})
    report_figures(EMPTY, PATHS.iloc[:0], behaviour, ["L3-9"], tmp_path, rate="stop")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["L3-9.decisions.svg", "L3-9.edges.html",
                                                          "L3-9.graph.svg"]
    assert "no edge from this source" in (tmp_path / "L3-9.edges.html").read_text()
    assert "L3-9: 0 computed, specific edges" in (tmp_path / "L3-9.graph.svg").read_text()


def test_the_graph_names_its_edges_and_what_the_cap_left_out(tmp_path) -> None:
    left = pathway_graph(EDGES, PATHS, tmp_path / "g.svg", cap=2)
    svg = (tmp_path / "g.svg").read_text()
    assert left == 3 and "2 computed, specific edges (3 weaker ones left out); doses c" in svg


def test_html_tables_are_whole_pages(tmp_path) -> None:
    html_table(pd.DataFrame({"a": [1.234567]}), tmp_path / "t.html")
    text = (tmp_path / "t.html").read_text()
    assert text.startswith("<!doctype html>") and "1.235" in text and "no rows" not in text


def test_the_same_graph_is_the_same_file_in_any_process(tmp_path) -> None:
    # networkx groups layers into sets and matplotlib salts its ids at random: with both pinned,
    # two processes with different string hash seeds write the same bytes
    import os
    import subprocess
    import sys

    EDGES.to_parquet(tmp_path / "e.parquet")
    code = ("import pandas as pd, sys; from pathreplay.report.figures import pathway_graph; "
            "pathway_graph(pd.read_parquet(sys.argv[1]), pd.DataFrame(columns=['path', 'mediated']), sys.argv[2])")
    for seed in ("1", "2"):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / "e.parquet"), str(tmp_path / f"g{seed}.svg")],
                       check=True, env={**os.environ, "PYTHONHASHSEED": seed})
    assert (tmp_path / "g1.svg").read_bytes() == (tmp_path / "g2.svg").read_bytes()


def test_the_graph_draws_only_computed_specific_edges() -> None:
    mixed = EDGES.assign(kind=["computed", "computed", "passthrough", "computed", "computed", "computed"],
                         nonspecific=[False, False, False, False, True, False])
    e, left = graph_edges(mixed)
    assert left == 0 and sorted(zip(e["src"], e["dst"])) == [("L0-1", "L1-2"), ("L0-1", "L2-4"), ("L1-7", "L2-5")]


def _labels(svg: str) -> tuple[list[tuple[float, float, float, float, str]], float, float]:
    """Every text of an SVG that matplotlib wrote with its text kept (svg.fonttype none) as a box
    (x0, y0, x1, y1, text), from its anchor, its font size and its length, and the canvas size."""
    import re

    w, h = (float(x) for x in re.search(r'<svg[^>]*width="([\d.]+)pt" height="([\d.]+)pt"', svg).groups())
    boxes = []
    for m in re.finditer(r'<text[^>]*?style="([^"]*)"[^>]*?x="([\d.-]+)" y="([\d.-]+)"[^>]*>([^<]*)</text>', svg):
        style, x, y, text = m.group(1), float(m.group(2)), float(m.group(3)), m.group(4)
        size = float(re.search(r"font-size: ([\d.]+)px|font: ([\d.]+)px", style).group(1) or 0) if "font" in style else 10
        anchor = re.search(r"text-anchor: (\w+)", style)
        width = 0.6 * size * len(text)
        x0 = {"middle": x - width / 2, "end": x - width}.get(anchor.group(1) if anchor else "start", x)
        boxes.append((x0, y - 0.8 * size, x0 + width, y + 0.2 * size, text))
    return boxes, w, h


def test_the_graphs_labels_never_overlap_and_never_leave_the_canvas(tmp_path) -> None:
    # a crowded layer: 30 targets of one source at layer 2, 12 at layer 3, every one named
    rows = [edge((0, 1), (2, t), 0.1 + t / 100) for t in range(30)] + [edge((0, 1), (3, t), -0.2) for t in range(12)]
    pathway_graph(pd.DataFrame(rows), PATHS.iloc[:0], tmp_path / "g.svg")
    boxes, w, h = _labels((tmp_path / "g.svg").read_text())
    names = [b for b in boxes if b[4].startswith("L2-") or b[4].startswith("L3-")]
    assert len(names) >= 42  # every drawn node named (the column titles L2, L3 too)
    for x0, y0, x1, y1, text in boxes:
        assert 0 <= x0 and x1 <= w and 0 <= y0 and y1 <= h, (text, x0, x1, w)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
