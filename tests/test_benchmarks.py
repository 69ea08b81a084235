"""The benchmarks run end to end on the CPU and compute what they report (no test here reads the clock)."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import os
import subprocess
import sys

from conftest import ROOT


def _benchmark():
    spec = importlib.util.spec_from_file_location("replay_throughput", ROOT / "benchmarks" / "replay_throughput.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_replay_benchmark_computes_its_rates_from_its_spans(tmp_path, monkeypatch):
    # The clock is a counter that ticks one second a reading, so every span is a count of readings
    # and every rate a known number whatever the machine is doing: no wall-clock difference here.
    bench = _benchmark()
    ticks = itertools.count()
    monkeypatch.setattr(bench, "clock", lambda: float(next(ticks)))
    out = tmp_path / "b.json"
    bench.main(["--shape", "demo", "--batch", "2", "3", "--prompt", "8", "--new", "4", "--compare",
                "--json", str(out)])
    res = json.loads(out.read_text())
    assert [r["batch"] for r in res["rows"]] == [2, 3]
    for r in res["rows"]:
        rates = {k: v for k, v in r.items() if k.endswith("tok_per_s")}
        assert len(rates) == 10 and all(math.isfinite(v) and v > 0 for v in rates.values()), rates
        decoded, total = r["batch"] * (r["new"] - 1), r["batch"] * r["new"]
        # each decode span is one reading apart: timed inside the call, never a difference of two calls
        for k in ("generate_tok_per_s", "engine_tok_per_s", "engine_unshared_tok_per_s"):
            assert r[k] == decoded, (k, r[k])
        # a whole call's span: hooks read start, first decode step, end; the engine start, decode (2), end
        assert r["generate_end_to_end_tok_per_s"] == total / 2
        assert r["engine_end_to_end_tok_per_s"] == r["engine_first_call_tok_per_s"] == total / 3
        assert r["mem_bound_gb"] > 1
    assert res["encode_rows_per_s"] == 8192


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
