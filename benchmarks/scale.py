"""Scale rehearsal (issue 15): the effects of one source feature and the run's pathways at the
study's shape, on synthetic codes and trials written the way the workflow writes them.

Shape (defaults = the study): --layers SAE layers of --d-sae features; --sources source features,
each replayed on --prompts prompts x --trials trials under --conditions real conditions, with the
replay's controls (plan/coupled: per condition its random:<condition>, both runs; one sham pair),
every condition run sampled (`generated`) and teacher-forced (`forced`); baselines per prompt
(`baseline` and `placebo` trials of another seed stream). Codes: per trial about --l0-gen
features non-zero in the generated mean and --l0-last at the last prompt position, drawn with
Zipf-like (exponent --zipf) inclusion probabilities, so the union of active features over a
source's trials is what a heavy-tailed SAE gives. Coupling as the replay makes it: a sham trial
equals its baseline partner to the bit at every layer, a teacher-forced trial upstream of the
source too, and the last prompt position is one value per prompt (prefill is deterministic);
downstream, forced trials keep 97% of their partner's features with values moved a little,
sampled ones 70%, and a few planted targets move under the real conditions.

Layout: <root>/results/encode/{baseline/<prompt>,patched/s000}/L<layer>.parquet (row int32,
feature int32, last float32, gen float32) and results/replay/.../trials.parquet. Stages, each in
a fresh child process (peak RSS from getrusage(RUSAGE_CHILDREN)):
  generate   write the codes and trials of one source (shard of one feature) and its prompts;
  effects    read them per target layer (effects.codes.read_codes, one layer in memory at a time),
             layer_effects into write_effects (both Parquet files): what the `effects` rule does;
  sources    --sources effects and upstream files: copies of the one above (or, without it,
             of synthetic_effects: the measured row counts, columns and dtypes), each with its
             source id and p-values and deltas perturbed (same row count, same columns);
  pathways   what workflow/scripts/pathways.py does with the effects and upstream files.

    PYTHONPATH=src .venv/bin/python benchmarks/scale.py             # the study's shape
    PYTHONPATH=src .venv/bin/python benchmarks/scale.py --layers 4 --d-sae 4096 --sources 4
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scale_data import SHARD, conditions, layer_codes, planted_targets, trial_tables  # benchmarks/ is on the path


def generate(a: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Write the trials and every layer's codes; returns rows and bytes written."""
    patched, base = trial_tables(a)
    rep = root / "results" / "replay"
    (rep / "patched" / SHARD).mkdir(parents=True, exist_ok=True)
    patched.to_parquet(rep / "patched" / SHARD / "trials.parquet", index=False)
    for p, b in base.items():
        (rep / "baseline" / p).mkdir(parents=True, exist_ok=True)
        b.to_parquet(rep / "baseline" / p / "trials.parquet", index=False)
    planted = planted_targets(a)
    rows = size = 0
    for layer in range(a.layers):
        for part, table in layer_codes(a, layer, patched, planted.get(layer, np.zeros(0, np.int64))).items():
            path = root / "results" / "encode" / part / f"L{layer}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, path)
            rows += table.num_rows
            size += path.stat().st_size
    return {"rows": rows, "bytes": size, "trials": len(patched) + sum(map(len, base.values()))}


def effects_stage(a: argparse.Namespace, root: Path) -> dict[str, Any]:
    """The effects rule for the one source: read trials and codes, test, write both tables as the
    layers are done (effects.write.write_effects over effects.layers.layer_effects)."""
    from pathreplay.effects.codes import read_codes
    from pathreplay.effects.layers import layer_effects
    from pathreplay.effects.write import write_effects

    rep = root / "results" / "replay"
    patched = pd.read_parquet(rep / "patched" / SHARD / "trials.parquet").assign(part=f"patched/{SHARD}")
    base = pd.concat([pd.read_parquet(rep / "baseline" / f"p{p}" / "trials.parquet").assign(part=f"baseline/p{p}")
                      for p in range(a.prompts)], ignore_index=True)
    parts = [f"patched/{SHARD}"] + [f"baseline/p{p}" for p in range(a.prompts)]
    files = [root / "results" / "encode" / part / f"L{layer}.parquet" for layer in range(a.layers) for part in parts]
    codes = read_codes(files, parts, rows={f"patched/{SHARD}": patched["row"]})
    out = root / "results" / "effects" / str(patched["feature"].iloc[0])
    got = write_effects(layer_effects(patched, base, codes, 0.05, 2), a.source_layer, a.source_feature,
                        f"{out}.parquet", f"{out}.upstream.parquet")
    return {"rows": got["effects_rows"] + got["upstream_rows"], "bytes": sum(f.stat().st_size for f in files), **got}


def synthetic_effects(a: argparse.Namespace, down: bool) -> pa.Table:
    """One source's effects (down) or upstream rows of the measured shape, synthesised: per
    target layer and contrast --block-rows targets (the effects stage wrote 28,995 downstream and
    28,940 upstream per layer and contrast at the study's shape); about half tested (sham none, nor
    upstream forced: exactly 0 there),
    p uniform (prompt_last: the sign-flip test's multiples of 1/8), a few planted targets of the
    real contrasts with tiny p; untested rows delta 0. Columns and dtypes as effects writes them."""
    from pathreplay.effects.contrasts import CONTROLS, SCOPES
    from pathreplay.effects.layers import COLUMNS
    from pathreplay.stats.multiple import bh
    from pathreplay.stats.signflip import TESTS

    rng = np.random.default_rng([a.seed, 17, down])
    conds = conditions(a.conditions)
    con = ([(c, "real", s) for c in conds for s in SCOPES] + [("sham", "sham", s) for s in SCOPES]
           + [(f"random:{c}", "random", s) for c in conds for s in SCOPES])
    names = sorted({c for c, _, _ in con})
    layers = [x for x in range(a.layers) if (x > a.source_layer if down else x < a.source_layer)]
    K, C = a.block_rows, len(con)
    n = len(layers) * C * K
    blk = np.tile(np.repeat(np.arange(C), K), len(layers))
    cond = np.array([names.index(c) for c, _, _ in con])[blk]
    ctl = np.array([CONTROLS.index(k) for _, k, _ in con])[blk]
    scope = np.array([SCOPES.index(s) for _, _, s in con])[blk]
    feats = np.concatenate([np.sort(rng.choice(a.d_sae, K, replace=False)) for _ in layers])
    tf = np.concatenate([np.tile(feats[i * K:(i + 1) * K], C) for i in range(len(layers))]).astype(np.int32)
    tested = (rng.random(n) < 0.5) & (ctl != CONTROLS.index("sham")) & (down | (scope != SCOPES.index("forced")))
    p = np.where(scope == 0, np.ceil(rng.random(n) * 8) / 8, rng.random(n))
    p[~tested] = np.nan
    delta = np.where(tested, rng.normal(0, 0.05, n), 0.0)
    planted = tested & (ctl == 0) & (tf % 4096 == 7) if down else np.zeros(n, bool)  # ~8 targets a layer
    p[planted] = 10.0 ** -rng.uniform(10, 40, planted.sum())
    delta[planted] = rng.choice([-1.0, 1.0], planted.sum()) * rng.uniform(0.3, 1.0, planted.sum())
    base = np.repeat(rng.lognormal(-3, 1, len(feats)).reshape(len(layers), 1, K), C, 1).ravel()
    test = np.where(~tested, 0, np.where(scope == 0, 2, 1)).astype(np.int8)
    cols = {"source_layer": np.full(n, a.source_layer, np.int64), "source_feature": np.full(n, a.source_feature, np.int64),
            "condition": pd.Categorical.from_codes(cond, categories=names),
            "control": pd.Categorical.from_codes(ctl, categories=list(CONTROLS)),
            "scope": pd.Categorical.from_codes(scope, categories=list(SCOPES)),
            "target_layer": np.repeat(np.array(layers, np.int64), C * K), "target_feature": tf,
            "mean_baseline": base, "mean_patched": base + delta,
            "effect_size": np.where(tested, delta / rng.uniform(0.05, 0.5, n), 0.0), "delta": delta, "p_value": p,
            # the read-through: a third of the change above the source, none below; the computed
            # part tested as the total (its p), across 4 prompts floored at 2 / 2^4
            "delta_passthrough": np.where(tested & down, delta / 3, 0.0),
            "delta_computed": delta - np.where(tested & down, delta / 3, 0.0), "p_computed": p,
            "p_prompts": np.where(np.isnan(p), np.nan, np.maximum(p, 0.125)),
            "test": pd.Categorical.from_codes(test, categories=list(TESTS)), "n": np.where(scope == 0, 4, 200),
            "n_nonzero": np.where(tested, rng.integers(2, 200, n), 0), "n_trials": np.full(n, 200, np.int64),
            "n_prompts": np.full(n, 4, np.int64), "prompts_replicated": np.where(tested, rng.integers(0, 5, n), 0),
            "prompts_opposite": np.where(tested, rng.integers(0, 2, n), 0), "robust": tested & (rng.random(n) < 0.1)}
    df = pd.DataFrame(cols)
    if not down:
        return pa.Table.from_pandas(df[COLUMNS[:-1]], preserve_index=False)
    q = np.full(n, np.nan)  # effects.layers.within_source: per condition, controls held to the real family's size
    real = ctl == 0
    q[real] = bh(p[real])
    m = int((~np.isnan(p[real])).sum())
    for c in np.unique(cond[~real]):
        sel = ~real & (cond == c)
        q[sel] = bh(p[sel], m=max(m, int((~np.isnan(p[sel])).sum())))
    return pa.Table.from_pandas(df.assign(q_within_source=q)[COLUMNS], preserve_index=False)


_TEMPLATE: dict[str, pa.Table] = {}


def _write_copy(job: tuple[int, int, int, str]) -> tuple[int, int]:
    """One source's files: the template with its own source id and p-values and deltas moved
    a little (p * exp(N(0, 0.1)), at most 1); returns (rows, bytes)."""
    fid, seed, layer, out = job
    rng = np.random.default_rng([seed, fid])
    rows = size = 0
    for suffix, t in _TEMPLATE.items():
        jig = np.exp(rng.normal(0, 0.1, t.num_rows))
        p = np.minimum(1.0, t.column("p_value").to_numpy(zero_copy_only=False) * jig)
        delta = t.column("delta").to_numpy() * jig
        for name, v in (("source_feature", np.full(t.num_rows, fid, np.int64)), ("p_value", p), ("delta", delta)):
            t = t.set_column(t.schema.get_field_index(name), name, pa.array(v, from_pandas=True))
        path = Path(out) / f"L{layer}-{fid}{suffix}"
        pq.write_table(t, path)
        rows, size = rows + t.num_rows, size + path.stat().st_size
    return rows, size


def sources_stage(a: argparse.Namespace, root: Path) -> dict[str, Any]:
    """--sources effects (and upstream) files of the measured shape (the effects stage's
    own file as the template where it wrote one, else synthetic_effects), each copy with its own
    source id and its p-values and deltas moved a little; written by 2 processes."""
    out = root / "results" / "effects"
    name = f"L{a.source_layer}-{a.source_feature}"
    if (out / f"{name}.parquet").exists():
        _TEMPLATE.update({s: pq.read_table(out / f"{name}{s}") for s in (".parquet", ".upstream.parquet")})
    else:
        _TEMPLATE.update({".parquet": synthetic_effects(a, True), ".upstream.parquet": synthetic_effects(a, False)})
    (out / "sources").mkdir(parents=True, exist_ok=True)
    jobs = [(a.source_feature + 1 + i, a.seed + 11, a.source_layer, str(out / "sources")) for i in range(a.sources)]
    with mp.get_context("fork").Pool(2) as pool:
        done = pool.map(_write_copy, jobs, chunksize=1)
    return {"rows": sum(r for r, _ in done), "bytes": sum(s for _, s in done),
            "effects_rows": _TEMPLATE[".parquet"].num_rows, "upstream_rows": _TEMPLATE[".upstream.parquet"].num_rows}


def pathways_stage(a: argparse.Namespace, root: Path) -> dict[str, Any]:
    """What workflow/scripts/pathways.py does with the effects and upstream files: runwide's
    two passes over the effects files (families; per file edges and null rows, in
    --pathways-workers processes) and one over the upstream files (the trial tables' behaviour,
    chains and fidelity left out: small)."""
    from pathreplay.io import write_table
    from pathreplay.pathways.runwide import PASS2_COLUMNS, UP_KEYS, run_tables

    src = root / "results" / "effects" / "sources"
    eff = sorted(str(p) for p in src.glob("*.parquet") if not p.name.endswith(".upstream.parquet"))
    ups = sorted(str(p) for p in src.glob("*.upstream.parquet"))
    t = time.perf_counter()
    run = run_tables(eff, ups, 0.05, 0.05, workers=a.pathways_workers)
    seconds = time.perf_counter() - t
    out = root / "results" / "pathways"
    write_table(run.edges, out / "edges.parquet")
    write_table(run.null, out / "null.tsv")
    write_table(run.upstream, out / "upstream.tsv")
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = resource.getrusage(resource.RUSAGE_SELF)
    read = (_column_bytes(eff, ["control", "p_value"]) + _column_bytes(eff, PASS2_COLUMNS)
            + _column_bytes(ups, UP_KEYS + ["target_feature", "n_nonzero", "delta", "p_value"]))
    return {"rows": sum(pq.ParquetFile(p).metadata.num_rows for p in eff + ups), "bytes": read,
            "file_bytes": sum(Path(p).stat().st_size for p in eff + ups), "run_tables_seconds": seconds,
            "storage_read_bytes": (own.ru_inblock + kids.ru_inblock) * 512, "worker_peak_rss_mb": kids.ru_maxrss / 1024,
            "edges": len(run.edges), "real_tests": run.real_tests, "sources": len(eff)}


def _column_bytes(paths: list[str], columns: list[str]) -> int:
    """Compressed bytes of these columns in the files (Parquet metadata): what a pass reads;
    the other columns of the row groups that hold edge rows come on top (pass 2, few)."""
    total = 0
    for p in paths:
        md = pq.ParquetFile(p).metadata
        for g in range(md.num_row_groups):
            rg = md.row_group(g)
            total += sum(rg.column(i).total_compressed_size for i in range(rg.num_columns)
                         if rg.column(i).path_in_schema in columns)
    return total


def child(stage: str, a: argparse.Namespace, root: Path, q: Any) -> None:
    t = time.perf_counter()
    out = STAGES[stage](a, root)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux: this process's peak
    q.put({"seconds": time.perf_counter() - t, "peak_rss_mb": peak, **out})


def measure(stage: str, a: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Run one stage in a fresh (spawned) child process, which reports its own peak RSS
    (getrusage RUSAGE_SELF: the stage's, imports included)."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=child, args=(stage, a, root, q))
    p.start()
    res = q.get()
    p.join()
    if p.exitcode:
        raise SystemExit(f"{stage} failed ({p.exitcode})")
    return res


STAGES = {"generate": generate, "effects": effects_stage, "sources": sources_stage, "pathways": pathways_stage}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--d-sae", type=int, default=32768)
    ap.add_argument("--l0-gen", type=int, default=1000)
    ap.add_argument("--l0-last", type=int, default=150)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--conditions", type=int, default=3)
    ap.add_argument("--sources", type=int, default=112)
    ap.add_argument("--block-rows", type=int, default=28990,
                    help="synthetic sources: rows per target layer and contrast (sources stage without effects)")
    ap.add_argument("--pathways-workers", type=int, default=2, help="pathways' pass-2 processes")
    ap.add_argument("--source-layer", type=int, default=None, help="default: the middle layer")
    ap.add_argument("--source-feature", type=int, default=1234)
    ap.add_argument("--zipf", type=float, default=1.0, help="exponent of the features' activation frequencies")
    ap.add_argument("--planted", type=int, default=8, help="planted (layer, feature) targets downstream")
    ap.add_argument("--effect", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--root", type=Path, default=None, help="keep files here (default: a temp folder, removed)")
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    a = ap.parse_args(argv)
    if a.source_layer is None:
        a.source_layer = a.layers // 2
    return a


def main(argv: list[str] | None = None) -> None:
    a = parse(argv)
    root = a.root or Path(tempfile.mkdtemp(prefix="pathreplay-scale-"))
    print(f"shape: {a.layers} layers x {a.d_sae} features, L0 gen {a.l0_gen} / last {a.l0_last}, {a.prompts} prompts "
          f"x {a.trials} trials, {a.conditions} conditions, {a.sources} sources; source L{a.source_layer}; {root}")
    rows = []
    try:
        for stage in a.stages:
            r = measure(stage, a, root)
            rows.append(r | {"stage": stage})
            print(stage, {k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()}, flush=True)
    finally:
        if a.root is None:
            shutil.rmtree(root, ignore_errors=True)
    print("\n| stage | seconds | peak RSS | bytes read | rows |\n| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['stage']} | {r['seconds']:.1f} | {r['peak_rss_mb'] / 1024:.2f} GiB | "
              f"{r.get('bytes', 0) / 2**20:,.0f} MiB | {r['rows']:,} |")


if __name__ == "__main__":
    main()
