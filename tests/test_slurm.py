"""The workflow on a real one-node SLURM (tests/slurm/cluster.sh, started by .ci/run).

Skipped unless SLURM_CONF points at a running cluster: `.ci/run` installs and starts it, then
runs `pytest -m slurm`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT
from test_workflow import SMALL, job_counts, rewind_to_shard

pytestmark = pytest.mark.slurm


def _cluster_up() -> bool:
    if not (os.environ.get("SLURM_CONF") and shutil.which("sinfo")):
        return False
    r = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return r.returncode == 0 and bool(re.search(r"idle|mixed|alloc", r.stdout))


if not _cluster_up():
    pytest.skip("no running SLURM (SLURM_CONF unset or sinfo fails); .ci/run starts one",
                allow_module_level=True)

PROFILE = ROOT / "profiles" / "slurm-test"
CONFIG = {**SMALL, "device": "auto"}  # auto: GPU rules ask for a device slot, SLURM's is kept


def run_snakemake(wd: Path, *args: str, slurm: bool = True, timeout: int = 1500):
    (wd / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "workflow" / "Snakefile"), "--directory", str(wd),
           "--configfile", str(wd / "config.yaml")]
    cmd += ["--profile", str(PROFILE)] if slurm else ["--cores", "2"]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout)


def submitted(out: str) -> list[str]:
    """SLURM job ids the executor reported submitting."""
    return re.findall(r"submitted with SLURM jobid (\d+)", out)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    slurm_wd = tmp_path_factory.mktemp("slurm_run")
    t0 = time.time()
    r = run_snakemake(slurm_wd)
    wall = time.time() - t0
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    print(f"SLURM run: {wall:.0f} s, {len(submitted(r.stdout + r.stderr))} jobs submitted")
    local_wd = tmp_path_factory.mktemp("local_run")
    r2 = run_snakemake(local_wd, slurm=False)
    assert r2.returncode == 0, r2.stderr[-3000:]
    return slurm_wd, local_wd, r.stdout + r.stderr


def test_gpu_rules_ran_on_slurms_device(runs):
    slurm_wd, _, out = runs
    assert len(submitted(out)) >= 10
    logs = [p for rule in ("exp1", "screen", "replay_baseline", "replay_patched", "encode")
            for p in (slurm_wd / "results" / "logs").rglob("*.log") if rule in str(p)]
    assert logs
    for log in logs:
        text = log.read_text()
        m = re.search(r"SLURM job (\d+): keeping CUDA_VISIBLE_DEVICES=(\S+)", text)
        assert m, f"{log} shows no SLURM device"
        assert m.group(2) in ("0", "1")
        assert "took GPU slot" not in text


def test_results_equal_local_run(runs):
    slurm_wd, local_wd, _ = runs
    for rel in ("results/features/selected.tsv", "results/replay/plan.tsv"):
        assert (slurm_wd / rel).read_text() == (local_wd / rel).read_text()
    for trials in sorted((local_wd / "results/replay").rglob("trials.parquet")):
        a = pd.read_parquet(trials)
        b = pd.read_parquet(slurm_wd / trials.relative_to(local_wd))
        pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(pd.read_parquet(local_wd / "results/pathways/edges.parquet"),
                                  pd.read_parquet(slurm_wd / "results/pathways/edges.parquet"))


def test_scancel_fails_only_its_shard_and_rerun_resubmits_it(runs, tmp_path):
    slurm_wd, _, _ = runs
    wd = tmp_path / "scancel"
    shutil.copytree(slurm_wd, wd, ignore=shutil.ignore_patterns(".snakemake"))
    target = "results/replay/patched/s001/trials.parquet"
    rewind_to_shard(wd, "s001")
    proc = subprocess.Popen(
        [sys.executable, "-m", "snakemake", "-s", str(ROOT / "workflow" / "Snakefile"), "--directory", str(wd),
         "--configfile", str(wd / "config.yaml"), "--profile", str(PROFILE), "--keep-going"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = None
    deadline = time.time() + 1500  # a bound, not a timing: as long as the run itself may take
    while killed is None and time.time() < deadline and proc.poll() is None:
        q = subprocess.run(["squeue", "-h", "-o", "%i %T %k"], capture_output=True, text=True).stdout
        for line in q.splitlines():
            jid, state, comment = (line.split(None, 2) + ["", ""])[:3]
            if "replay_patched" in comment and state == "RUNNING":
                subprocess.run(["scancel", jid], check=True)
                killed = jid
        time.sleep(0.5)
    out = proc.communicate(timeout=900)[0]
    assert killed, "the shard's job was never seen running:\n" + out[-3000:]
    assert proc.returncode != 0
    assert not (wd / target).exists()
    r = run_snakemake(wd, "-n")
    counts = job_counts(r.stdout)
    assert counts.get("replay_patched") == 1 and "replay_baseline" not in counts
    r = run_snakemake(wd)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert (wd / target).exists()
    print(f"scancel rerun: {len(submitted(r.stdout + r.stderr))} jobs resubmitted")
