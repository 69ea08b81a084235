"""Nothing lost: a deleted or cut-short intermediate of any kind is re-made by a plain rerun, and
nothing else is (the default target names every file the run is made from; the plan reaches the
jobs past it as params)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from workflow_run import job_counts, snakemake

pytestmark = pytest.mark.workflow

# what every case below leaves alone: the replays and encodes of the parts it did not touch
REPLAY = ("replay_baseline", "replay_patched", "encode_baseline", "encode_patched", "exp1", "screen")


@pytest.fixture(scope="module")
def whole(run, tmp_path_factory):
    """A copy of the whole run (times and records kept), its config beside it."""
    wd = tmp_path_factory.mktemp("recovery") / "run"
    shutil.copytree(run, wd, ignore=shutil.ignore_patterns("locks", "incomplete"))
    return wd, yaml.safe_load((run / "config.yaml").read_text())


def _made(out: str) -> list[str]:
    return [p for line in re.findall(r"^\s*output: (.*)$", out, re.M) for p in line.split(", ")]


def _cases(wd: Path) -> list[tuple[str, str, int, set[str]]]:
    """(a file of each kind, the rule that makes it, how many of that rule's jobs then run, the
    replay and encode rules that read what that job re-makes and so run again)."""
    plan = pd.read_csv(wd / "results/replay/plan.tsv", sep="\t")
    p = sorted(plan["prompt_id"].unique())[0]
    f = sorted(plan["feature"].unique())[0]
    # a baseline replay's trials seed every patched replay of its prompt, and its states are encoded
    baseline = {"encode_baseline", "replay_patched", "encode_patched"}
    return [
        ("results/replay/plan.tsv", "select_prompts", 1, set()),
        ("results/features/selected.tsv", "select_features", 1, set()),
        (f"results/replay/baseline/{p}/trials.parquet", "replay_baseline", 1, baseline),
        (f"results/replay/baseline/{p}/L1.safetensors", "replay_baseline", 1, baseline),
        ("results/replay/patched/s001/L2.safetensors", "replay_patched", 1, {"encode_patched"}),
        ("results/replay/patched/s001/trials.parquet", "replay_patched", 1, {"encode_patched"}),
        (f"results/encode/baseline/{p}/L2.parquet", "encode_baseline", 1, set()),
        (f"results/qc/sae_quality/{p}/L0.safetensors", "encode_baseline", 1, set()),
        ("results/encode/patched/s000/L2.parquet", "encode_patched", 1, set()),
        ("results/encode/passthrough/s000/L3.parquet", "encode_patched", 1, set()),
        ("results/qc/patched_quality/s000.tsv", "encode_patched", 1, set()),
        (f"results/effects/{f}.parquet", "effects", 1, set()),
        (f"results/effects/{f}.upstream.parquet", "effects", 1, set()),
        (f"results/attribution/{f}.parquet", "attribute", 1, set()),
        ("results/qc/placebo.parquet", "placebo", 1, set()),
        ("results/qc/placebo_floors.tsv", "placebo", 1, set()),
        ("results/behavior/plan.tsv", "behaviour_plan", 1, set()),
        ("results/behavior/trials/s000.parquet", "behaviour_patched", 1, set()),
        ("results/screen/features.parquet", "screen", 1, set()),
    ]


def test_a_deleted_file_of_each_kind_is_remade_alone(whole):
    """The dry run after each deletion: the job that makes the file runs, once; no replay or encode
    runs but those that read what it re-makes, and only for the parts that read it; a deleted plan
    reruns its checkpoint and nothing else."""
    wd, cfg = whole
    r = snakemake(wd, "-n", config=cfg)
    assert r.returncode == 0 and "Nothing to be done" in r.stdout + r.stderr, r.stdout[-3000:]
    for rel, rule, n, also in _cases(wd):
        kept = wd.parent / "kept"
        shutil.copy2(wd / rel, kept)
        (wd / rel).unlink()
        try:
            r = snakemake(wd, "-n", config=cfg)
        finally:
            shutil.copy2(kept, wd / rel)  # times kept: the next case starts from the whole run
        counts = job_counts(r.stdout)
        assert r.returncode == 0 and counts.get(rule) == n, (rel, r.stdout[-3000:])
        assert rel in _made(r.stdout), rel
        others = {k: v for k, v in counts.items() if k in REPLAY and k != rule and k not in also}
        assert not others, (rel, others)
        if "encode_patched" in also and "replay_patched" not in also:  # that shard's encode only
            assert counts.get("encode_patched") == 1, (rel, counts)
        if rule.startswith("select_"):  # the dry run cannot know the plan comes back the same: it lists
            # the cheap jobs that read it, never a GPU one (the real run reruns none: the test below)
            assert not {"effects", "attribute", "behaviour_patched", "behaviour_baseline"} & set(counts), (rel, counts)


def test_a_deleted_plan_still_reruns_what_a_changed_key_reads(whole, tmp_path):
    """With the plan gone, a plain run re-makes it and nothing else; gone again and stats.alpha
    changed, it re-makes the plan and reruns what reads alpha (pathways, mediation, the reports,
    the behaviour plan), no replay or encode."""
    wd, cfg = whole
    work = tmp_path / "run"
    shutil.copytree(wd, work)
    (work / "results/replay/plan.tsv").unlink()
    r = snakemake(work, "--cores", "2", config=cfg)
    assert r.returncode == 0, r.stderr[-3000:]
    ran = set(re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):", r.stderr, re.M))
    # the same plan again: nothing past it computes anew (Snakemake may redo a report page, seconds)
    computes = {*REPLAY, "effects", "pathways", "mediate", "placebo", "attribute", "behaviour_plan",
                "behaviour_baseline", "behaviour_patched", "behaviour"}
    assert "select_prompts" in ran and not ran & computes, ran
    (work / "results/replay/plan.tsv").unlink()
    changed = {**cfg, "stats": {**cfg.get("stats", {}), "alpha": 0.02}}
    r = snakemake(work, "--cores", "2", config=changed)
    assert r.returncode == 0, r.stderr[-3000:]
    ran = set(re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):", r.stderr, re.M))
    assert {"select_prompts", "pathways", "mediate", "report_overview"} <= ran, ran
    assert not ran & set(REPLAY) and "effects" not in ran, ran
    assert (work / "results/replay/plan.tsv").exists()


def test_cut_short_files_are_named_removed_and_remade(whole, tmp_path):
    """A cut-short codes file (Parquet) and state file (safetensors): the jobs that read them stop
    with one line naming each; the next plain run re-makes both, and the run is whole."""
    wd, cfg = whole
    work = tmp_path / "run"
    shutil.copytree(wd, work)
    cut = ["results/encode/patched/s000/L2.parquet", "results/replay/patched/s001/L1.safetensors"]
    for rel in cut:
        data = (work / rel).read_bytes()
        (work / rel).write_bytes(data[: len(data) // 2])
    r = snakemake(work, "--cores", "2", "--keep-going", config=cfg)
    assert r.returncode != 0
    said = "\n".join(line for line in r.stderr.splitlines() if line.startswith("pathreplay: error:"))
    for rel in cut:
        assert f"{rel}: " in said and "removed it" in said, said or r.stderr[-3000:]
        assert not (work / rel).exists()
    r = snakemake(work, "--cores", "2", config=cfg)
    assert r.returncode == 0, r.stderr[-3000:]
    ran = re.findall(r"^(?:local)?rule (\w+):", r.stderr, re.M)
    assert ran.count("replay_patched") == 1 and "replay_baseline" not in ran, ran
    assert all((work / rel).exists() for rel in cut)
    r = snakemake(work, "-n", config=cfg)
    assert "Nothing to be done" in r.stdout + r.stderr, r.stdout[-2000:]
