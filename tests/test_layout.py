"""The package's shape: its units (subpackages and base modules) import only down a fixed order,
generic code never imports the study, no import cycle (imports inside functions included), no
module over 400 lines, one script per rule."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import ROOT

PKG = ROOT / "src" / "pathreplay"
# The units in import order: each may import only units before it (the base first, the study last).
LAYERS = ["errors", "io", "features", "schema", "gpu", "stats", "sae", "task", "runtime", "replay", "effects",
          "behaviour", "pathways", "attribution", "report", "words", "config", "workflow", "study"]


def module_name(path: Path, root: Path = PKG) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = PKG) -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere in its file (functions included)."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                # `from pkg import name` imports the submodule pkg.name when there is one
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            graph[mod] |= {t for t in targets if t in files and t != mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_import_graph_finds_imports_inside_functions(tmp_path):
    pkg = tmp_path / "pathreplay"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..a import x\n")
    (pkg / "c.py").write_text("import pathreplay.a\n")
    g = import_graph(pkg)
    assert g["pathreplay.a"] == {"pathreplay.sub.b"} and g["pathreplay.sub.b"] == {"pathreplay.a"}
    assert cycles(g) == [["pathreplay.a", "pathreplay.sub.b"]]


def test_no_import_cycles():
    g = import_graph()
    assert len(g) > 30 and "pathreplay.runtime.engine" in g["pathreplay.replay.trials"]
    assert cycles(g) == []


def unit(module: str) -> str:
    """A module's unit: its subpackage, or the base module itself (pathreplay.replay.plan -> replay)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_unit_has_its_place():
    units = {unit(m) for m in import_graph()} - {""}
    assert units == set(LAYERS)
    for sub in (p for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()):
        doc = ast.get_docstring(ast.parse((sub / "__init__.py").read_text())) or ""
        assert len(doc.split()) > 25, f"{sub.name}/__init__.py says too little of what it owns"


def test_imports_run_down_the_layers():
    g = import_graph()
    up = sorted((m, t) for m, ts in g.items() for t in ts
                if unit(m) and unit(t) != unit(m) and LAYERS.index(unit(t)) > LAYERS.index(unit(m)))
    assert up == []
    assert not [m for m, ts in g.items() if unit(m) != "study" and any(unit(t) == "study" for t in ts)]


def test_the_layer_check_catches_an_import_up(tmp_path):
    pkg = tmp_path / "pathreplay"
    for sub in ("stats", "study"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "study" / "game.py").write_text("")
    (pkg / "stats" / "bh.py").write_text("def f():\n    from ..study import game\n")
    g = import_graph(pkg)
    assert g["pathreplay.stats.bh"] == {"pathreplay.study.game"}
    assert LAYERS.index(unit("pathreplay.study.game")) > LAYERS.index(unit("pathreplay.stats.bh"))


def test_no_module_over_400_lines():
    long = {str(p.relative_to(PKG)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not long


def test_one_script_per_rule():
    rules = "".join(p.read_text() for p in (ROOT / "workflow" / "rules").glob("*.smk"))
    scripts = re.findall(r'script:\s*\n\s*"\.\./scripts/([\w.]+)"', rules)
    assert len(scripts) == len(set(scripts)) >= 14
    assert sorted(scripts) == sorted(p.name for p in (ROOT / "workflow" / "scripts").glob("*.py"))
