"""Snakemake on the embedded demo, as the workflow tests run it: the command, the small config,
the job table."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "workflow" / "Snakefile")]

# The demo config, shrunk so the whole DAG runs in a couple of minutes on 2 CPUs.
SMALL = {
    "exp1": {"games": 120, "max_rounds": 20, "batch_size": 120},
    "screen": {"top_n": 8, "trials": 16},
    "select": {"top_n": 4, "shard_size": 2, "labels": []},
    "stats": {"max_chains": 10},
    "prompts": {"per_feature": 3},
    "replay": {"trials": 6, "max_new_tokens": 8},
    "features": {"links": "https://example.org/demo/{layer}/{index}"},  # the report's feature pages
}


def snakemake(workdir: Path, *args: str, config: dict | None = None, env: dict | None = None,
              timeout: int = 1200) -> subprocess.CompletedProcess:
    cmd = SNAKEMAKE + ["--directory", str(workdir)]
    if config is not None:
        cfg = workdir / "config.yaml"
        cfg.write_text(yaml.safe_dump(config))
        cmd += ["--configfile", str(cfg)]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def job_counts(out: str) -> dict[str, int]:
    """Snakemake's job stats table: rule -> count."""
    counts = {}
    for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", out, re.M):
        counts[m.group(1)] = int(m.group(2))
    return counts
