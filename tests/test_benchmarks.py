"""The replay benchmark runs end to end on the CPU and reports rates that can be read (no timing)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

from conftest import ROOT


def test_replay_benchmark_writes_positive_finite_rates(tmp_path):
    # Each rate divides by a measured span; a span measured wrong shows up as negative or NaN.
    out = tmp_path / "b.json"
    run = subprocess.run([sys.executable, "benchmarks/replay_throughput.py", "--shape", "demo", "--batch", "2", "3",
                          "--prompt", "8", "--new", "4", "--compare", "--json", str(out)],
                         cwd=ROOT, check=False,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    res = json.loads(out.read_text())
    assert [r["batch"] for r in res["rows"]] == [2, 3]
    for r in res["rows"]:
        rates = {k: v for k, v in r.items() if k.endswith("tok_per_s")}
        assert len(rates) == 10 and all(math.isfinite(v) and v > 0 for v in rates.values()), rates
        assert r["mem_bound_gb"] > 1
    assert res["encode_rows_per_s"] > 0


def test_scale_rehearsal_runs_every_stage_at_a_small_shape():
    # The stages call the library as the rules do; at this shape the planted targets make edges.
    run = subprocess.run([sys.executable, "benchmarks/scale.py", "--layers", "4", "--d-sae", "4096", "--sources", "4",
                          "--trials", "10", "--l0-gen", "100", "--l0-last", "20"],
                         cwd=ROOT, check=False, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert run.returncode == 0, run.stderr[-3000:]
    table = {line.split("|")[1].strip(): line for line in run.stdout.splitlines() if line.startswith("| ")}
    for stage in ("generate", "effects", "sources", "pathways"):
        assert int(table[stage].split("|")[-2].replace(",", "")) > 0, table.get(stage)
    assert "'edges': 0," not in run.stdout and "'edges':" in run.stdout
