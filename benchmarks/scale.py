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
  effects    read them per target layer (effects.read_codes, one layer in memory at a time),
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
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

SHARD = "s000"


def conditions(n: int) -> list[str]:
    """n real condition names as config's replay.conditions spells them."""
    base = ["risky_value", "safe_value", "2*risky_value", "2*safe_value", "3*risky_value", "3*safe_value"]
    return base[:n] if n <= len(base) else base + [f"{k}*risky_value" for k in range(4, n - len(base) + 4)]


def inclusion(d_sae: int, l0: int, zipf: float, rng: np.random.Generator) -> np.ndarray:
    """Per-feature activation probabilities, Zipf-like over a random feature order, summing to l0."""
    w = 1.0 / np.arange(1, d_sae + 1) ** zipf
    lo, hi = 0.0, 1e9
    for _ in range(100):  # bisection on the scale c of min(1, c w)
        c = (lo + hi) / 2
        lo, hi = (c, hi) if np.minimum(1, c * w).sum() < l0 else (lo, c)
    return np.minimum(1, hi * w)[rng.permutation(d_sae)]


def draw(n: int, prob: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n independent active sets: (trial index, feature) of every active entry, Bernoulli(prob)."""
    rows, feats = [], []
    step = max(1, 2**24 // len(prob))
    for a in range(0, n, step):
        hit = np.nonzero(rng.random((min(step, n - a), len(prob)), dtype=np.float32) < prob)
        rows.append(hit[0] + a)
        feats.append(hit[1])
    return np.concatenate(rows), np.concatenate(feats)


def values(k: int, rng: np.random.Generator) -> np.ndarray:
    return rng.lognormal(-1.0, 1.0, k).astype(np.float32)


class Sparse:
    """Entries (trial, feature, value) of a set of trials, trial-major."""

    def __init__(self, t: np.ndarray, f: np.ndarray, v: np.ndarray) -> None:
        self.t, self.f, self.v = t.astype(np.int64), f.astype(np.int64), v.astype(np.float32)

    def take(self, trials: np.ndarray) -> Sparse:
        """The entries of `trials` (indices into this set), renumbered 0..len(trials) - 1."""
        order = np.argsort(self.t, kind="stable")
        t = self.t[order]
        starts, ends = np.searchsorted(t, trials), np.searchsorted(t, trials, side="right")
        lens = ends - starts
        idx = np.repeat(starts - np.r_[0, np.cumsum(lens)[:-1]], lens) + np.arange(lens.sum())
        return Sparse(np.repeat(np.arange(len(trials)), lens), self.f[order][idx], self.v[order][idx])


def perturb(s: Sparse, keep: float, noise: float, prob: np.ndarray, rng: np.random.Generator,
            n: int) -> Sparse:
    """Partners of s's n trials: each entry kept with probability `keep`, its value moved by a
    log-normal factor; new entries (Bernoulli(prob * (1 - keep))) replace what was dropped."""
    k = rng.random(len(s.t)) < keep
    t, f = s.t[k], s.f[k]
    v = s.v[k] * np.exp(rng.normal(0, noise, k.sum())).astype(np.float32)
    nt, nf = draw(n, prob * (1 - keep), rng)
    return dedupe(Sparse(np.r_[t, nt], np.r_[f, nf], np.r_[v, values(len(nt), rng)]))


def dedupe(s: Sparse) -> Sparse:
    key = s.t * (1 << 20) + s.f
    _, first = np.unique(key, return_index=True)
    return Sparse(s.t[first], s.f[first], s.v[first])


def plant(s: Sparse, n: int, targets: np.ndarray, effect: float) -> Sparse:
    """Add `effect` to the planted target features of every trial (activating them)."""
    t = np.repeat(np.arange(n), len(targets))
    f = np.tile(targets, n)
    e = Sparse(np.r_[s.t, t], np.r_[s.f, f], np.r_[s.v, np.full(len(t), effect, np.float32)])
    key = e.t * (1 << 20) + e.f
    u, inv = np.unique(key, return_inverse=True)
    return Sparse(u >> 20, u & ((1 << 20) - 1), np.bincount(inv, e.v).astype(np.float32))


def codes_table(gen: Sparse, last: Sparse) -> pa.Table:
    """One file's code rows: the union of each trial's generated-mean and last-position entries."""
    t = np.r_[gen.t, last.t]
    key = t * (1 << 20) + np.r_[gen.f, last.f]
    u, inv = np.unique(key, return_inverse=True)
    g = np.bincount(inv, np.r_[gen.v, np.zeros(len(last.t), np.float32)], len(u))
    la = np.bincount(inv, np.r_[np.zeros(len(gen.t), np.float32), last.v], len(u))
    return pa.table({"row": (u >> 20).astype(np.int32), "feature": (u & ((1 << 20) - 1)).astype(np.int32),
                     "last": la.astype(np.float32), "gen": g.astype(np.float32)})


def trial_tables(a: argparse.Namespace) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """The source's patched trials (one shard) and each prompt's baseline trials, with `row`:
    blocks of (condition, run), each prompt x trial."""
    conds = conditions(a.conditions)
    blocks = [(c, r) for c in conds + ["sham"] + [f"random:{c}" for c in conds] for r in ("generated", "forced")]
    pt = [(f"p{p}", t) for p in range(a.prompts) for t in range(a.trials)]
    rows = [(c, r, p, t) for c, r in blocks for p, t in pt]
    patched = pd.DataFrame(rows, columns=["condition", "run", "prompt_id", "trial"]).assign(
        feature=f"L{a.source_layer}-{a.source_feature}", layer=a.source_layer, feature_id=a.source_feature)
    patched["row"] = np.arange(len(patched))
    base = {}
    for p in range(a.prompts):
        b = pd.DataFrame({"condition": ["baseline"] * a.trials + ["placebo"] * a.trials, "run": "generated",
                          "prompt_id": f"p{p}", "trial": list(range(a.trials)) * 2})
        base[f"p{p}"] = b.assign(row=np.arange(len(b)))
    return patched, base


def planted_targets(a: argparse.Namespace) -> dict[int, np.ndarray]:
    """A handful of (layer, feature) targets downstream of the source that the real conditions move."""
    rng = np.random.default_rng(a.seed + 7)
    down = list(range(a.source_layer + 1, a.layers))
    out: dict[int, list[int]] = {}
    for _ in range(a.planted if down else 0):
        out.setdefault(int(rng.choice(down)), []).append(int(rng.integers(a.d_sae)))
    return {k: np.unique(v) for k, v in out.items()}


def layer_codes(a: argparse.Namespace, layer: int, patched: pd.DataFrame, planted: np.ndarray
                ) -> dict[str, pa.Table]:
    """Every part's code rows at one layer."""
    rng = np.random.default_rng([a.seed, layer])
    pg, pl = inclusion(a.d_sae, a.l0_gen, a.zipf, rng), inclusion(a.d_sae, a.l0_last, a.zipf, rng)
    P, T = a.prompts, a.trials
    bt, bf = draw(P * T, pg, rng)
    base = Sparse(bt, bf, values(len(bt), rng))
    qt, qf = draw(P * T, pg, rng)
    placebo = Sparse(qt, qf, values(len(qt), rng))
    lt, lf = draw(P, pl, rng)
    blast = Sparse(lt, lf, values(len(lt), rng))
    out = {}
    for p in range(P):
        own = np.arange(p * T, (p + 1) * T)
        g = base.take(own)
        q = placebo.take(own)
        gen = Sparse(np.r_[g.t, q.t + T], np.r_[g.f, q.f], np.r_[g.v, q.v])
        out[f"baseline/p{p}"] = codes_table(gen, blast.take(np.full(2 * T, p)))
    gens, lasts, offset = [], [], 0
    partner = np.arange(P * T)
    prompt_of = np.repeat(np.arange(P), T)
    down = layer >= a.source_layer
    for (cond, run), _ in patched.groupby(["condition", "run"], sort=False):
        n = P * T
        real = cond not in ("sham",) and not cond.startswith("random:")
        if cond == "sham" or (not down and run == "forced"):
            g, la = base.take(partner), blast.take(prompt_of)
        else:
            keep, noise = (0.97, 0.05) if run == "forced" else (0.7, 0.3)
            g = perturb(base.take(partner), keep, noise, pg, rng, n)
            cl = blast if not down else perturb(blast, 0.9, 0.1, pl, np.random.default_rng([a.seed, layer, zlib.crc32(cond.encode())]), P)
            la = cl.take(prompt_of)
            if real and len(planted):
                g, la = plant(g, n, planted, a.effect), plant(la, n, planted, a.effect)
        gens.append(Sparse(g.t + offset, g.f, g.v))
        lasts.append(Sparse(la.t + offset, la.f, la.v))
        offset += n
    cat = lambda xs: Sparse(*(np.concatenate([getattr(x, k) for x in xs]) for k in "tfv"))
    out[f"patched/{SHARD}"] = codes_table(cat(gens), cat(lasts))
    return out


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
    layers are done (effects_write.write_effects over effects.layer_effects)."""
    from pathreplay.effects import layer_effects, read_codes
    from pathreplay.effects_write import write_effects

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
    from pathreplay.effects import COLUMNS, CONTROLS, SCOPES, TESTS
    from pathreplay.stats import bh

    rng = np.random.default_rng([a.seed, 17, down])
    conds = conditions(a.conditions)
    con = ([(c, "real", s) for c in conds for s in SCOPES] + [("sham", "sham", s) for s in SCOPES]
           + [(f"random:{c}", "random", s) for c in conds for s in SCOPES]
           + [("placebo", "placebo", s) for s in ("prompt_last", "generated")])
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
            "test": pd.Categorical.from_codes(test, categories=list(TESTS)), "n": np.where(scope == 0, 4, 200),
            "n_nonzero": np.where(tested, rng.integers(2, 200, n), 0), "n_trials": np.full(n, 200, np.int64),
            "n_prompts": np.full(n, 4, np.int64), "prompts_replicated": np.where(tested, rng.integers(0, 5, n), 0),
            "prompts_opposite": np.where(tested, rng.integers(0, 2, n), 0), "robust": tested & (rng.random(n) < 0.1)}
    df = pd.DataFrame(cols)
    if not down:
        return pa.Table.from_pandas(df[COLUMNS[:-1]], preserve_index=False)
    q = np.full(n, np.nan)  # effects.within_source: per condition, controls held to the real family's size
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
    from pathreplay.runwide import PASS2_COLUMNS, UP_KEYS, run_tables

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
