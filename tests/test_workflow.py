"""Snakemake on the embedded demo: the whole DAG, dry runs, faults and bad input."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import ROOT
from pathreplay.words.effects import run_shard
from pathreplay.words.settings import words_config
from words_data import CUT, REAL_MAPPING, real_path
from workflow_run import SMALL, SNAKEMAKE, job_counts, snakemake  # noqa: F401 - other tests import them from here

pytestmark = pytest.mark.workflow
def test_dry_run_lists_jobs_and_capture_bytes(tmp_path):
    r = snakemake(tmp_path, "-n", config=SMALL)
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    for rule in ("exp1", "screen", "select_features", "select_prompts", "demo_figures", "all"):
        assert rule in out
    assert re.search(r"replay captures will write at most [\d,.]+ MiB", out)
    assert not (tmp_path / "results").exists()


def test_capture_plan_over_limit_is_refused(tmp_path):
    cfg = {**SMALL, "replay": {**SMALL["replay"], "max_capture_gb": 0.0001}}
    r = snakemake(tmp_path, "-n", config=cfg)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if "replay.max_capture_gb" in ln]
    assert len(lines) == 1 and "GiB" in lines[0] and "Traceback" not in r.stderr


def test_rulegraph_renders(tmp_path):
    r = snakemake(tmp_path, "--rulegraph", config=SMALL)
    assert r.returncode == 0 and r.stdout.lstrip().startswith("digraph")
    # before the selection checkpoints run, the graph ends at them and at what reads their plan
    for rule in ("exp1", "screen", "select_features", "select_prompts", "sae_quality", "pathways"):
        assert f'label = "{rule}"' in r.stdout


def test_slurm_profile_dry_run(tmp_path):
    r = snakemake(tmp_path, "-n", "--profile", str(ROOT / "profiles" / "slurm"), config=SMALL)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "exp1" in r.stdout + r.stderr


def test_replay_jobs_listed_once_selection_ran(run):
    r = snakemake(run, "-n", "--forcerun", "replay_baseline", "replay_patched", config=yaml.safe_load((run / "config.yaml").read_text()))
    counts = job_counts(r.stdout)
    assert counts["replay_patched"] == 2 and counts["replay_baseline"] == 3 and counts["effects"] == 4


def test_whole_dag_outputs(run):
    feats = pd.read_parquet(run / "results/exp1/features.parquet")
    assert list(feats.columns) == ["layer", "feature_id", "cohen_d", "p_value", "safe_value",
                                   "risky_value", "label", "source"]
    assert set(feats["layer"]) == {0, 1, 2, 3} and feats["cohen_d"].notna().all()
    screen = pd.read_parquet(run / "results/screen/features.parquet")
    assert len(screen) == 8 and set(screen["label"]) <= {"safe", "risky", "neutral", "disruptive"}
    sel = pd.read_csv(run / "results/features/selected.tsv", sep="\t")
    assert len(sel) == 4 and sorted(sel["shard"].unique()) == ["s000", "s001"]
    edges = pd.read_parquet(run / "results/pathways/edges.parquet")
    assert (edges["q_value"] < 0.05).all() and (edges["delta"].abs() > 0.05).all()
    assert (edges["target_layer"] > edges["source_layer"]).all()
    assert set(edges["scope"]) <= {"prompt_last", "generated", "forced"} and edges["delta_forced"].notna().any()
    assert {"delta_passthrough", "delta_computed", "kind", "general", "dose_realized", "off_distribution"} <= set(
        edges.columns)
    split = edges["delta_passthrough"] + edges["delta_computed"] - edges["delta"]
    assert (split.abs() <= 1e-5 * edges["delta"].abs().clip(lower=1)).all()  # the split adds up
    beh = pd.read_parquet(run / "results/behavior/effects.parquet")
    real = ["risky_value", "20*risky_value"]
    assert set(beh["condition"]) == {*real, *(f"random:{c}" for c in real)}  # the powered replay: no sham
    assert set(beh["prompt_id"]) == {"exp2_safe", "exp2_risky"} and (beh["n_trials"] >= 40).all()
    assert beh["stop_rate"].dropna().between(0, 1).all() and beh["valid_rate"].between(0, 1).all()
    assert beh.loc[beh["condition"].isin(real), "p_vs_random"].notna().all()
    gates = pd.read_csv(run / "results/qc/gates.tsv", sep="\t")
    assert gates["passed"].all() and set(gates["gate"]) == {"sae_fvu", "sae_dead", "valid_answers"}
    fid = pd.read_csv(run / "results/qc/patch_fidelity.tsv", sep="\t")
    assert {"pre_before", "dh", "dh_rel"} <= set(fid.columns)
    assert (fid.loc[fid["condition"] == "sham", "dh"] == 0).all()
    assert (fid.loc[fid["condition"].isin(real), "dh"] > 0).all()
    q = pd.read_csv(run / "results/qc/sae_quality.tsv", sep="\t")
    assert list(q["layer"]) == [0, 1, 2, 3] and (q["fvu"] < 0.3).all() and (q["fp16_positions"] > 0).all()
    paths = pd.read_csv(run / "results/pathways/paths.tsv", sep="\t")
    assert list(paths.columns[:5]) == ["path", "scope", "condition", "hops", "mediator"]
    layers = pd.read_csv(run / "results/pathways/layers.tsv", sep="\t")
    assert list(layers.columns[:5]) == ["source", "condition", "target", "layer", "mediators"]
    assert not list((run / "results").rglob("*.partial"))


def test_controls_sham_exact_placebo_calibrated(run):
    null = pd.read_csv(run / "results/qc/null.tsv", sep="\t")
    assert set(null["contrast"]) == {"real", "sham", "placebo", "random"}
    assert (null.loc[null["contrast"] == "sham", "tests"] == 0).all()  # every difference exactly 0
    plac = null[null["contrast"] == "placebo"]
    assert len(plac) == 2 * 2 and (plac["splits"] == 20).all()  # prompt_last and generated, trial and prompt level
    gen = plac[plac["scope"] == "generated"].set_index("level")
    assert gen.loc["trials", "p_below_alpha"] <= 1.5 * 0.05 and gen.loc["trials", "tests"] > 0
    floors = pd.read_csv(run / "results/qc/placebo_floors.tsv", sep="\t").set_index(["scope", "level"])
    assert set(floors.index) == {("generated", "trials"), ("generated", "prompts")}  # prompt_last: nothing varies
    assert (floors["splits"] == 200).all() and (floors["rank"] == 6).all()  # floor(0.025 * 200) + 1
    assert np.allclose(gen["floor"], floors.loc["generated"].reindex(gen.index)["floor"])
    edges = pd.read_parquet(run / "results/pathways/edges.parquet")
    e = edges[edges["scope"] == "generated"]
    assert (e["p_value"] < floors.loc[("generated", "trials"), "floor"]).all()
    assert (e.loc[e["general"], "p_prompts"] < floors.loc[("generated", "prompts"), "floor"]).all()
    up = pd.read_csv(run / "results/qc/upstream.tsv", sep="\t")
    assert (up.loc[up["scope"] == "forced", "differing"] == 0).all() and len(up)


def test_trial_tables_are_coupled(run):
    base = pd.read_parquet(next((run / "results/replay/baseline").glob("*/trials.parquet")))
    main = base[base["condition"] == "baseline"]
    plac = base[base["condition"] == "placebo"]
    assert len(main) == len(plac) == 6
    assert set(main["seed"]).isdisjoint(plac["seed"])
    patched = pd.read_parquet(run / "results/replay/patched/s000/trials.parquet")
    mine = patched[patched["prompt_id"] == main["prompt_id"].iloc[0]]
    assert set(mine["seed"]) == set(main["seed"])  # same seeds: coupled sampling


def test_a_key_reruns_only_the_jobs_that_read_it(run, tmp_path):
    """Rule params carry only what a job reads: other SAEs rerun what reads SAEs (Exp1 and
    what follows from it, the patched replay, encode) but no baseline; the capture limit, read by
    no job, reruns nothing."""
    base = yaml.safe_load((run / "config.yaml").read_text())
    shutil.copytree(ROOT / "resources" / "demo" / "saes", tmp_path / "saes")

    def dry(change: dict, *args: str) -> subprocess.CompletedProcess:
        cfg = tmp_path / "changed.yaml"
        cfg.write_text(yaml.safe_dump({**base, **change}))
        return subprocess.run(SNAKEMAKE + ["--directory", str(run), "--configfile", str(cfg), "-n", *args],
                              capture_output=True, text=True, timeout=600)

    saes = {"saes": {"path": str(tmp_path / "saes" / "L{layer}R")}}
    r = dry(saes)
    counts = job_counts(r.stdout)
    assert r.returncode == 0 and counts.get("exp1") == 1, r.stdout[-2000:]
    # the selection reruns; what follows it joins the DAG once it has (checkpoints)
    assert counts.get("select_prompts") == 1 and "replay_baseline" not in counts
    # past the selection (its outputs kept): the patched replay and every part's encode
    after = ["replay_baseline", "replay_patched", "encode_baseline", "encode_patched", "sae_quality", "effects",
             "pathways", "mediate", "report_figures", "report_checks", "demo_figures", "all"]
    r = dry(saes, "--allowed-rules", *after)
    counts = job_counts(r.stdout)
    plan = pd.read_csv(run / "results/replay/plan.tsv", sep="\t")
    assert r.returncode == 0 and counts.get("replay_patched") == plan["shard"].nunique(), r.stdout[-2000:]
    assert counts.get("encode_baseline") == plan["prompt_id"].nunique()
    assert counts.get("encode_patched") == plan["shard"].nunique() and "replay_baseline" not in counts
    r = dry({"replay": {**base["replay"], "max_capture_gb": 49}})
    assert r.returncode == 0 and "Nothing to be done" in r.stdout + r.stderr, r.stdout[-2000:]


def rewind_to_shard(run: Path, shard: str) -> None:
    """Back to the middle of a first run: the shard (its replay and encode) and everything after
    the encode not yet made. (Snakemake does not remake a missing intermediate whose consumers are all up to date.)"""
    for rel in (f"results/replay/patched/{shard}", f"results/encode/patched/{shard}", "results/effects",
                "results/pathways", "results/behavior", "results/qc/null.tsv", "results/qc/upstream.tsv",
                "results/qc/patch_fidelity.tsv", f"results/logs/replay_patched/{shard}.log"):
        p = run / rel
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def test_lost_shard_reencodes_that_shard_alone(run, tmp_path):
    """Encode is one job per part: with one replay shard's outputs gone, the plan is that shard's
    replay and its encode job (every layer of it), no other part's encode."""
    wd = tmp_path / "lost"
    shutil.copytree(run, wd, ignore=shutil.ignore_patterns("locks", "incomplete"))  # mtimes and records kept
    rewind_to_shard(wd, "s001")
    r = snakemake(wd, "-n", config=yaml.safe_load((run / "config.yaml").read_text()))
    assert r.returncode == 0, r.stderr[-3000:]
    counts = job_counts(r.stdout)
    assert counts.get("replay_patched") == 1 and counts.get("encode_patched") == 1, r.stdout[-3000:]
    assert "encode_baseline" not in counts and "replay_baseline" not in counts
    made = [p for line in re.findall(r"^\s*output: (.*)$", r.stdout, re.M) for p in line.split(", ")]
    encoded = sorted(p for p in made if p.startswith("results/encode/"))
    assert encoded == sorted(f"results/encode/{kind}/s001/L{b}.parquet" for kind in ("patched", "passthrough")
                             for b in range(4))
    assert "results/replay/patched/s001/trials.parquet" in made
    assert not any(p.startswith("results/replay/") and "/s001/" not in p for p in made)


def _job_pids(session: int, needle: str) -> list[int]:
    """Processes of a session whose command line holds needle (the rule's script)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.getsid(int(d.name)) == session and needle in (d / "cmdline").read_text():
                    pids.append(int(d.name))
            except (OSError, ProcessLookupError):
                continue
    return pids


def test_killed_shard_alone_reruns(run):
    target = "results/replay/patched/s001/trials.parquet"
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    rewind_to_shard(run, "s001")
    cmd = SNAKEMAKE + ["--directory", str(run), "--configfile", str(run / "config.yaml"), "--cores", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    # The job's log (rewind_to_shard removed it) is opened once its imports are done; from there
    # to its outputs lie the model's loading and the whole replay, so the kill lands mid-run
    # however busy the machine: no wait here is a timing.
    log = run / "results/logs/replay_patched/s001.log"
    deadline = time.time() + 1200  # a generous bound: a busy machine only makes the job start later
    victims: list[int] = []
    while time.time() < deadline and not (victims and log.exists()) and proc.poll() is None:
        time.sleep(0.05)
        victims = _job_pids(proc.pid, "replay_patched.py")
    assert victims, "the replay job's process was not found"
    for pid in victims:  # the job dies mid-run, as on an out-of-memory kill; Snakemake lives on
        os.kill(pid, signal.SIGKILL)
    assert proc.wait(timeout=900) != 0
    assert not (run / target).exists()
    r = snakemake(run, "-n", config=cfg)
    counts = job_counts(r.stdout)
    assert counts.get("replay_patched") == 1
    assert "replay_baseline" not in counts and "exp1" not in counts and "screen" not in counts
    assert counts.get("encode_patched") == 1 and "encode_baseline" not in counts
    r = snakemake(run, "--cores", "2", config=cfg)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (run / target).exists() and not list((run / "results").rglob("*.partial"))


def test_bad_config_gets_one_line_before_any_job(tmp_path):
    r = snakemake(tmp_path, "-n", config={"saes": {"layers": [0, 7]}})
    assert r.returncode != 0
    err = [ln for ln in r.stderr.splitlines() if "no SAE folder for layer 7" in ln]
    assert len(err) == 1 and "saes.layers" in err[0]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("config, says", [
    ({"model": {"dtype": "float8"}}, "config model.dtype: 'float8' is not one of"),
    ({"screen": {"prompts": ["nope"]}}, "screen.prompts: ids ['nope'] are not in"),
    ({"words": {"logs": ["no/such/*.jsonl"]}}, "words.logs: 'no/such/*.jsonl': matches no file"),
    ({"exp1": {"games": "many"}}, "config exp1.games: 'many' is not of type 'integer'"),
])
def test_bad_config_is_one_line_at_the_start(tmp_path, config, says):
    # Each of these was once caught only by a job, after hours of GPU work, or as a traceback.
    r = snakemake(tmp_path, "-n", config=config)
    assert r.returncode != 0
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("pathreplay: error:")]
    assert len(errors) == 1 and says in errors[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr and not (tmp_path / "results").exists()


def test_unknown_condition_refused_up_front(tmp_path):
    r = snakemake(tmp_path, "-n", config={"replay": {"conditions": ["bankrupt_mean"]}})
    assert r.returncode != 0
    assert "replay.conditions: unknown condition 'bankrupt_mean'" in r.stderr


def test_words_rule_end_to_end(tmp_path):
    """`snakemake words` with only `words.*` configured: the logs' words, no model or GPU work."""
    real = real_path()
    (tmp_path / "logs").mkdir()
    df = pd.read_json(real, lines=True)
    for i, (_, part) in enumerate(df.groupby("feature_id")):
        part.to_json(tmp_path / "logs" / f"part{i}.jsonl", orient="records", lines=True)
    words = {**REAL_MAPPING, "logs": ["logs/*.jsonl"], "shards": 3, "top_features_plot": 2}
    run = snakemake(tmp_path, "--cores", "2", "words", config={"words": words})
    assert run.returncode == 0, run.stderr[-3000:]
    e = pd.read_parquet(tmp_path / "results" / "words" / "word_effects.parquet")
    direct = run_shard([str(real)], words_config(REAL_MAPPING), CUT)
    assert len(e) == len(direct)
    assert set(zip(e.layer, e.feature_id, e.contrast, e.text, e.stem)) == \
        set(zip(direct.layer, direct.feature_id, direct.contrast, direct.text, direct.stem))
    assert len(json.loads((tmp_path / "results" / "words" / "causal_word_effects.json").read_text())) == 5
    assert len(list((tmp_path / "results" / "words" / "volcano").glob("*.png"))) == 2
    assert not (tmp_path / "results" / "exp1").exists()  # words alone: no model job ran
    # a changed words setting reruns the words rules (they read it through params)
    dry = snakemake(tmp_path, "-n", "words", config={"words": {**words, "min_count": 6}})
    assert dry.returncode == 0 and "words_merge" in dry.stdout and "words_shard" in dry.stdout, dry.stderr[-2000:]
    # a user error in the logs surfaces as one line, no traceback
    (tmp_path / "logs" / "part0.jsonl").write_text('{"layer": 1}\n')
    (tmp_path / "results").rename(tmp_path / "old_results")
    run = snakemake(tmp_path, "--cores", "1", "words", config={"words": words})
    assert run.returncode != 0
    assert "pathreplay: error:" in run.stderr and "part0.jsonl" in run.stderr


def test_one_prompt_per_feature_gives_no_prompt_last_p_values(run, tmp_path):
    wd = tmp_path / "one"
    shutil.copytree(run, wd, ignore=shutil.ignore_patterns("locks", "incomplete"))  # with its records of params
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    r = snakemake(wd, "--cores", "2", config={**cfg, "prompts": {"per_feature": 1}})
    assert r.returncode == 0, r.stderr[-3000:]
    e = pd.concat([pd.read_parquet(f) for f in (wd / "results/effects").glob("L*-*[0-9].parquet")])
    pl = e[e["scope"] == "prompt_last"]
    assert len(pl) and pl["p_value"].isna().all() and (pl["n"] == 1).all()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
HEADLESS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.mark.browser
def test_report_renders_in_a_browser(run, tmp_path):
    """`snakemake --report` after the run; Debian's Chromium renders it: the page is not blank, its
    first page opens with the findings, and the pathway graph, the sources' figures and the
    checks' tables are in it. With PATHREPLAY_DOCS=1 the screenshot becomes docs/report.png."""
    if not CHROMIUM:
        pytest.skip("needs Debian's chromium (.ci/run installs it)")
    from matplotlib.image import imread

    html = tmp_path / "report.html"
    r = snakemake(run, "--report", str(html), config=yaml.safe_load((run / "config.yaml").read_text()))
    assert r.returncode == 0 and html.stat().st_size > 100_000, r.stderr[-2000:]
    shot = tmp_path / "report.png"
    flags = HEADLESS + [f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=8000"]
    subprocess.run([CHROMIUM, *flags, "--window-size=1400,1000", f"--screenshot={shot}", html.as_uri()],
                   capture_output=True, timeout=120, check=False)
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", html.as_uri()], capture_output=True, text=True,
                         timeout=120, check=False).stdout
    img = imread(shot)
    assert img.shape[:2] == (1000, 1400) and img.std() > 0.05  # not a blank page
    assert len({tuple(px) for px in img[::10, ::10, :3].reshape(-1, 3).round(2)}) > 30
    for shown in ("What this run found", "edges at", "computed and specific", "mediation", "behaviour (stop rate)",
                  "quality gates", "placebo (trials level)", "random control", "1. Pathways", "2. Sources",
                  "3. Checks", "pathways.svg", "pathways.html", "graph.svg", "decisions.svg", "controls.html",
                  "gates.html", "sae_quality.html"):
        assert shown in dom, shown
    assert dom.index("What this run found") < dom.index("How to read it")  # the findings first
    if os.environ.get("PATHREPLAY_DOCS"):
        shutil.copy(shot, ROOT / "docs" / "report.png")


def test_the_graph_to_explore_works_in_a_browser(run):
    """The interactive graph in Chromium, after its scripts ran: every node named, the hover data
    of every edge there, the nodes' pages formed from features.links."""
    if not CHROMIUM:
        pytest.skip("needs Debian's chromium (.ci/run installs it)")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    page_html = run / "results" / "report" / "pathways.html"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=HEADLESS)
        try:
            page = browser.new_page()
            page.goto(page_html.as_uri())
            page.wait_for_function("window.Bokeh && Bokeh.documents.length > 0", timeout=60_000)
            got = page.evaluate("""() => {
                const doc = Bokeh.documents[0];
                const nodes = doc.get_model_by_name('nodes').data, edges = doc.get_model_by_name('edges').data;
                const tips = [...doc.all_models].filter(m => m.type === 'HoverTool' || (m.constructor &&
                    m.constructor.__name__ === 'HoverTool')).map(m => JSON.stringify(m.tooltips));
                return {names: Array.from(nodes.name), links: Array.from(nodes.link), layers: Array.from(nodes.layer),
                        delta: Array.from(edges.delta), q: Array.from(edges.q), kind: Array.from(edges.kind),
                        dose: Array.from(edges.dose), tips: tips};
            }""")
        finally:
            browser.close()
    assert got["names"] and all(re.fullmatch(r"L\d+-\d+", n) for n in got["names"])
    assert all(link == f"https://example.org/demo/{n.split('-')[0][1:]}/{n.split('-')[1]}"
               for n, link in zip(got["names"], got["links"]))
    assert got["delta"] and len(got["delta"]) == len(got["q"]) == len(got["kind"]) == len(got["dose"])
    assert set(got["kind"]) == {"computed"}
    assert any("delta_computed" in t and "q_computed" in t for t in got["tips"]), got["tips"]
