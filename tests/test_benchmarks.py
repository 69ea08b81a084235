"""The replay benchmark runs end to end on the CPU and reports rates that can be read (no timing)."""

from __future__ import annotations

import json
import math
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
