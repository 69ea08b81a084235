"""How long `snakemake -n` takes to resolve a full-study-shaped DAG (issue 15).

The study's shape: 112 selected features on 32 SAE layers, every feature replayed on the same 4
prompts, `select.shard_size` features a replay shard. The script builds a scratch folder with a
32-block copy of the demo model's config and tokenizer (weights linked; the dry run reads none),
32 SAE folders (the demo's L0R weights under each block's metadata), a feature table, and the two
selection checkpoints' outputs (results/features/selected.tsv, results/replay/plan.tsv) as they
would be after `snakemake select_prompts`, so the dry run resolves every replay, encode, effects
and pathway job. It times a first dry run (checks every SAE file once) and then `--repeat` more
(the weights' checks remembered), and prints a table. No assertion: a timing, not a test.

    .venv/bin/python benchmarks/dryrun_scale.py [--layers 32] [--features 112] [--prompts 4]
        [--shard-size 4] [--repeat 2] [--profile out.prof]

--profile runs the last dry run under cProfile (in-process) and writes the stats there.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "resources" / "demo"


def build(wd: Path, layers: int, features: int, prompts: int, shard_size: int) -> dict:
    model = wd / "model"
    model.mkdir(parents=True)
    for f in DEMO.joinpath("model").iterdir():
        if f.name == "config.json":
            cfg = json.loads(f.read_text())
            cfg["num_hidden_layers"] = layers
            (model / f.name).write_text(json.dumps(cfg))
        else:
            (model / f.name).symlink_to(f)
    hp = json.loads((DEMO / "saes" / "L0R" / "hyperparams.json").read_text())
    for b in range(layers):
        sae = wd / "saes" / f"L{b}R"
        (sae / "checkpoints").mkdir(parents=True)
        (sae / "checkpoints" / "final.safetensors").symlink_to(DEMO / "saes" / "L0R" / "checkpoints" / "final.safetensors")
        h = {**hp, "hook_point_in": f"blocks.{b}.hook_resid_post", "hook_point_out": f"blocks.{b}.hook_resid_post"}
        (sae / "hyperparams.json").write_text(json.dumps(h))
    ids = [json.loads(line)["id"] for line in (DEMO / "prompts.jsonl").read_text().splitlines() if line.strip()]
    contexts = {json.loads(line)["id"]: json.loads(line).get("context", "")
                for line in (DEMO / "prompts.jsonl").read_text().splitlines() if line.strip()}
    chosen = sorted(ids)[:prompts]
    # features on every layer but the last (an effect needs a layer downstream), ids spread out
    rows = [{"layer": i % (layers - 1), "feature_id": 129 + 97 * (i // (layers - 1)), "cohen_d": 1.0 - i / 1000,
             "p_value": 0.001, "safe_value": 0.5, "risky_value": 1.0, "label": "risky", "source": "bench"}
            for i in range(features)]
    table = pd.DataFrame(rows)
    table.to_parquet(wd / "features.parquet", index=False)
    sel = table.assign(feature=[f"L{r.layer}-{r.feature_id}" for r in table.itertuples()], rank=range(features),
                       shard=[f"s{i // shard_size:03d}" for i in range(features)])
    (wd / "results" / "features").mkdir(parents=True)
    (wd / "results" / "replay").mkdir(parents=True)
    time.sleep(0.01)  # the checkpoints' outputs newer than their inputs
    sel[["feature", "layer", "feature_id", "cohen_d", "p_value", "safe_value", "risky_value", "label", "source",
         "rank", "shard"]].to_csv(wd / "results" / "features" / "selected.tsv", sep="\t", index=False)
    plan = pd.DataFrame([{"feature": r.feature, "layer": r.layer, "feature_id": r.feature_id, "shard": r.shard,
                          "prompt_id": p, "context": contexts[p]} for r in sel.itertuples() for p in chosen])
    plan.to_csv(wd / "results" / "replay" / "plan.tsv", sep="\t", index=False)
    config = {
        "model": {"path": str(model)},
        "saes": {"path": str(wd / "saes" / "L{layer}R"), "layers": list(range(layers))},
        "features": {"table": str(wd / "features.parquet")},
        "screen": {"enabled": False},
        "select": {"top_n": features, "shard_size": shard_size, "labels": []},
        "prompts": {"per_feature": prompts},
        "replay": {"max_capture_gb": 100000},
    }
    (wd / "config.yaml").write_text(yaml.safe_dump(config))
    return {"shards": sel["shard"].nunique(), "prompts": len(chosen)}


def dry_run(wd: Path, profile: str | None = None) -> tuple[float, str]:
    args = ["-s", str(ROOT / "workflow" / "Snakefile"), "--directory", str(wd), "--configfile", str(wd / "config.yaml"), "-n",
            "--quiet", "rules"]
    if profile:
        code = ("import cProfile, sys; from snakemake.cli import main; sys.argv = ['snakemake'] + sys.argv[1:]; "
                f"cProfile.run('main()', {profile!r})")
        cmd = [sys.executable, "-c", code, *args]
    else:
        cmd = [sys.executable, "-m", "snakemake", *args]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    out = r.stdout + r.stderr
    if r.returncode != 0 and not (profile and "SystemExit: 0" in out):
        sys.exit(f"dry run failed ({r.returncode}):\n{out[-3000:]}")
    return wall, out


def job_counts(out: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", out, re.MULTILINE)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--features", type=int, default=112)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--shard-size", type=int,
                    default=yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["select"]["shard_size"])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--profile", help="write cProfile stats of the last dry run here")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    a = ap.parse_args()
    wd = Path(tempfile.mkdtemp(prefix="dryrun_scale."))
    try:
        shape = build(wd, a.layers, a.features, a.prompts, a.shard_size)
        times = []
        for i in range(1 + a.repeat):
            last = i == a.repeat
            wall, out = dry_run(wd, a.profile if last else None)
            times.append(wall)
        counts = job_counts(out)
        print(f"dry run of a study-shaped DAG: {a.features} features, {a.layers} layers, {shape['prompts']} prompts, "
              f"{shape['shards']} shards of {a.shard_size}; snakemake {_version()}, {os.cpu_count()} CPUs")
        print(f"{'rule':<18}{'jobs':>8}")
        for rule, n in sorted(counts.items()):
            print(f"{rule:<18}{n:>8}")
        print(f"{'run':<18}{'seconds':>8}")
        for i, t in enumerate(times):
            what = "first" if i == 0 else ("profiled" if a.profile and i == len(times) - 1 else f"again {i}")
            print(f"{what:<18}{t:>8.1f}")
        if a.profile:
            print(f"profile: {a.profile} (python -m pstats {a.profile})")
    finally:
        if a.keep:
            print(f"kept: {wd}")
        else:
            shutil.rmtree(wd, ignore_errors=True)


def _version() -> str:
    from importlib.metadata import version

    return version("snakemake")


if __name__ == "__main__":
    main()
