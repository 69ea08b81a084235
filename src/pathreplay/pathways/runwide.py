"""The run's pathways tables streamed file by file (one effects file per source), equal to the
bit to pathways.run_wide, edges, null_summary and upstream_summary over all files at once.

Pass 1 reads `control` and the p columns (`p_value`, `p_computed`, `p_prompts`) of every file:
each BH family's non-NaN p (per column: the real tests of the run; each control label's tests),
sorted once. With p_(1) <= ... <= p_(n) and the
family's size m (real: n; a control: max(real n, its n), as stats.multiple.bh_with_controls holds it)
q_(i) = min(1, min over j >= i of p_(j) * (m / j)): a suffix minimum. Tied p share the q of the
tie's last rank (the suffix minimum is constant over a tie), so any row's q is
suffixmin[searchsorted(sorted, p, side='right') - 1]: a lookup, exact to the bit.

Pass 2 reads one file at a time: q < alpha needs p < alpha (q >= p), so only those rows are
looked up; the rows `edges` needs (significant real and random rows, the real forced and
generated rows of their keys, one row per (source, condition, scope) run) are kept and `edges`
runs once on them; null and upstream rows are computed per (source, contrast, scope) group and
put into the order the in-memory groupby gives (their key columns keep the files' dtypes).
"""

from __future__ import annotations

import io
import multiprocessing as mp
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ..effects.layers import COLUMNS
from ..effects.placebo import Floors
from ..features import feature_name
from ..io import read_table
from ..stats.multiple import ks_uniform
from .checks import NULL_COLUMNS, UPSTREAM_COLUMNS, null_summary, upstream_summary
from .edges import edges, run_wide, under_floor

NULL_KEYS = ["source_layer", "source_feature", "control", "scope"]
UP_KEYS = ["source_layer", "source_feature", "condition", "control", "scope", "target_layer"]
EDGE_COLUMNS = ["source_layer", "source_feature", "condition", "control", "scope", "target_layer",
                "target_feature", "delta", "p_value", "delta_computed", "p_computed", "p_prompts"]
PASS2_COLUMNS = EDGE_COLUMNS + ["q_within_source"]
CHUNK = 1 << 22  # bh_sorted's block
MANY_RUNS = 4096  # runs of equal keys above which (and above 1 in 16 rows) rows are sorted by key


class Family(NamedTuple):
    """One BH family: its sorted non-NaN p and the q of each."""

    p: np.ndarray
    q: np.ndarray


class RunWide(NamedTuple):
    """The run's families by control label (`real`: the real tests)."""

    families: dict[str, Family]
    files: list[str]  # the non-empty effects files

    def q(self, labels: Sequence[object], codes: np.ndarray, p: np.ndarray) -> np.ndarray:
        """q of rows given their control as codes into `labels` (-1: none) and their p."""
        q = np.full(len(p), np.nan)
        for i, lab in enumerate(labels):
            fam = self.families.get(str(lab))
            sel = np.flatnonzero((codes == i) & ~np.isnan(p))
            if fam is not None and len(sel):
                q[sel] = fam.q[np.searchsorted(fam.p, p[sel], side="right") - 1]
        return q

    def cutoff(self, alpha: float) -> float:
        """The real family's BH cutoff: its largest p whose q < alpha (0: no discovery)."""
        fam = self.families.get("real")
        hit = np.flatnonzero(fam.q < alpha) if fam is not None else np.zeros(0, np.int64)
        return float(fam.p[hit[-1]]) if len(hit) else 0.0

    @property
    def real_tests(self) -> int:
        return len(self.families["real"].p) if "real" in self.families else 0


class RunTables(NamedTuple):
    """The run's edges, null summary and upstream summary, how many real tests it made, and the
    real families' BH cutoffs at alpha (trial level: p_value; prompt level: p_prompts)."""

    edges: pd.DataFrame
    null: pd.DataFrame
    upstream: pd.DataFrame
    real_tests: int
    cutoffs: dict[str, float]


def bh_sorted(p: np.ndarray, m: int) -> np.ndarray:
    """BH q of ascending p (no NaN) in a family of m >= len(p) tests: min(1, suffix minimum of
    p_(j) * (m / j)), in blocks (one array of len(p) besides p); stats.bh's values to the bit."""
    q = np.empty(len(p))
    for a in range(0, len(p), CHUNK):
        b = min(a + CHUNK, len(p))
        q[a:b] = p[a:b] * (m / np.arange(a + 1, b + 1, dtype=np.int64))
    low = np.inf
    for b in range(len(p), 0, -CHUNK):
        block = q[max(0, b - CHUNK): b][::-1]
        np.minimum.accumulate(block, out=block)
        np.minimum(block, low, out=block)
        low = block[-1]
    return np.minimum(q, 1.0, out=q)


def codes_of(s: pd.Series) -> tuple[np.ndarray, list]:
    """A column as integer codes (-1: missing) and their labels (ints: the values, no labels)."""
    if isinstance(s.dtype, pd.CategoricalDtype):
        return s.cat.codes.to_numpy(), list(s.cat.categories)
    if s.dtype.kind in "iub":
        return s.to_numpy(), []
    c, u = pd.factorize(s)
    return c.astype(np.int64), list(u)


def families(paths: Sequence[str | Path], column: str = "p_value") -> RunWide:
    """Pass 1: every family's non-NaN p (`column`) over the files, sorted, and their BH q."""
    chunks: dict[str, list[np.ndarray]] = {}
    files = []
    for path in paths:
        f = read_table(path, ["control", column])
        if not len(f):
            continue
        files.append(str(path))
        codes, labels = codes_of(f["control"])
        p = f[column].to_numpy(float)
        ok = ~np.isnan(p)
        for i, lab in enumerate(labels):
            chunks.setdefault(str(lab), []).append(p[ok & (codes == i)])
    sizes = {k: sum(map(len, v)) for k, v in chunks.items()}
    out = {}
    for label in sorted(chunks, key=lambda k: k != "real"):
        parts, p, at = chunks.pop(label), np.empty(sizes[label]), 0
        while parts:
            c = parts.pop(0)
            p[at: at + len(c)] = c
            at += len(c)
        p.sort()
        m = len(p) if label == "real" else max(sizes.get("real", 0), len(p))
        out[label] = Family(p, bh_sorted(p, m))
    return RunWide(out, files)


class Runs(NamedTuple):
    """Rows grouped by a key: in `order` (None: as they are) the rows of a run share a key."""

    order: np.ndarray | None
    starts: np.ndarray  # each run's start in that order
    group: np.ndarray  # each run's group (numbered by first appearance)
    first: np.ndarray  # each group's first row

    def reduce(self, x: np.ndarray, ufunc: np.ufunc) -> np.ndarray:
        """ufunc over each group's x (np.add: counts of bools; np.fmin/fmax: NaN skipped, NaN
        where a group has none): per run by reduceat, then over a group's runs."""
        x = x if self.order is None else x[self.order]
        count = ufunc is np.add
        per_run = ufunc.reduceat(x, self.starts, dtype=np.int64 if count else None)
        out = np.zeros(len(self.first), np.int64) if count else np.full(len(self.first), np.nan)
        ufunc.at(out, self.group, per_run)
        return out

    def take(self, x: np.ndarray) -> list[np.ndarray]:
        """Each group's x (its runs one after another)."""
        x = x if self.order is None else x[self.order]
        ends = np.r_[self.starts[1:], len(x)]
        parts: list[list[np.ndarray]] = [[] for _ in self.first]
        for g, a, b in zip(self.group, self.starts, ends):
            parts[g].append(x[a:b])
        return [np.concatenate(ps) if len(ps) > 1 else ps[0] for ps in parts]


def runs(frame: pd.DataFrame, keys: list[str]) -> Runs:
    """The groups of the key columns (NaN a key too), from runs of equal keys (effects writes a
    contrast's rows together); a file of many short runs is put in group order first."""
    codes = [codes_of(frame[k])[0] for k in keys]
    n = len(frame)
    change = np.zeros(max(n - 1, 0), bool)
    for c in codes:
        change |= c[1:] != c[:-1]
    starts = np.flatnonzero(np.r_[True, change])
    if len(starts) > max(MANY_RUNS, n // 16):
        gid = frame.groupby(keys, observed=True, sort=False, dropna=False).ngroup().to_numpy()
        order = np.argsort(gid, kind="stable")
        starts = np.flatnonzero(np.r_[True, gid[order][1:] != gid[order][:-1]])
        return Runs(order, starts, gid[order][starts], order[starts])
    ids: dict[tuple, int] = {}
    group = np.array([ids.setdefault(k, len(ids)) for k in zip(*(c[starts].tolist() for c in codes))], np.int64)
    return Runs(None, starts, group, starts[np.unique(group, return_index=True)[1]])


def null_rows(f: pd.DataFrame, rw: RunWide, rwc: RunWide, alpha: float, min_delta: float,
              floors: Floors | None = None) -> tuple[pd.DataFrame, list[dict]]:
    """One file's null_summary rows and their keys in the file's dtypes: q < alpha only where
    p < alpha (q >= p); min q = q of the smallest p (q rises with p); counts per run, summed."""
    codes, labels = codes_of(f["control"])
    p = f["p_value"].to_numpy(float)
    big = np.abs(f["delta"].to_numpy()) > min_delta
    cand = np.flatnonzero(p < alpha)
    sig = np.zeros(len(f), bool)
    sig[cand] = rw.q(labels, codes[cand], p[cand]) < alpha
    pc = f["p_computed"].to_numpy(float)
    cand_c = np.flatnonzero(pc < alpha)
    sig_c = np.zeros(len(f), bool)
    sig_c[cand_c] = rwc.q(labels, codes[cand_c], pc[cand_c]) < alpha
    big_c = np.abs(f["delta_computed"].to_numpy()) > min_delta
    sig &= under_floor(f, "p_value", "trials", floors)
    sig_c &= under_floor(f, "p_computed", "trials", floors)
    r = runs(f, NULL_KEYS)
    tested = ~np.isnan(p)
    tests, below = r.reduce(tested, np.add), r.reduce(p < alpha, np.add)
    disc, within = r.reduce(sig & big, np.add), r.reduce((f["q_within_source"] < alpha).to_numpy() & big, np.add)
    disc_c = r.reduce(sig_c & big_c, np.add)
    low, top = r.reduce(p, np.fmin), r.reduce(np.abs(f["delta"].to_numpy()), np.fmax)
    min_q = rw.q(labels, codes[r.first], low)
    rows = []
    for g, (i, gp) in enumerate(zip(r.first, r.take(p))):
        stat, ks_p = ks_uniform(gp)
        rows.append({"source": feature_name(f["source_layer"].iat[i], f["source_feature"].iat[i]),
                     "contrast": f["control"].iat[i], "scope": f["scope"].iat[i], "tests": int(tests[g]),
                     "discoveries": int(disc[g]), "discoveries_within_source": int(within[g]),
                     "discoveries_computed": int(disc_c[g]),
                     "min_q": float(min_q[g]), "max_abs_delta": float(top[g]),
                     "p_below_alpha": float(below[g] / tests[g]) if tests[g] else np.nan, "ks": stat, "ks_p": ks_p})
    return f[NULL_KEYS].iloc[r.first].reset_index(drop=True), rows


def edge_rows(f: pd.DataFrame, rw: RunWide, rwc: RunWide, alpha: float, min_delta: float) -> np.ndarray:
    """Row numbers of one file that `edges` reads: real rows whose total is a discovery (q < alpha
    and |delta| > min_delta: the edges), random rows whose computed part is (q_computed,
    delta_computed: what makes an edge nonspecific), the real forced and generated rows of the
    edges' targets, the first real row of each (source, condition, scope) run (edges asks whether
    a side ran at all), and row 0 (the file's dtypes; any other row is inert in `edges`)."""
    codes, labels = codes_of(f["control"])
    real, rand = (codes == (labels.index(k) if k in labels else -2) for k in ("real", "random"))
    sigs = []
    for fam, p_col, d_col, which in ((rw, "p_value", "delta", real), (rwc, "p_computed", "delta_computed", rand)):
        p = f[p_col].to_numpy(float)
        cand = np.flatnonzero((p < alpha) & (np.abs(f[d_col].to_numpy()) > min_delta) & which)
        sigs.append(cand[fam.q(labels, codes[cand], p[cand]) < alpha])
    e = sigs[0]
    keep = [np.zeros(1, np.int64), e, sigs[1]]
    if len(e):
        side = real & f["scope"].isin(["forced", "generated"]).to_numpy()
        tf, tl = f["target_feature"].to_numpy(), f["target_layer"].to_numpy()
        keep.append(np.flatnonzero(side & np.isin(tf, tf[e]) & np.isin(tl, tl[e])))
        first = runs(f, EDGE_COLUMNS[:5]).first
        keep.append(first[side[first]])
    return np.unique(np.concatenate(keep).astype(np.int64))


def take_rows(path: str | Path, f: pd.DataFrame, rows: np.ndarray) -> pd.DataFrame:
    """Every column of the file at ascending `rows`, in the file's order: f's columns from f, the
    others decoded from only the row groups that hold the rows and converted as pd.read_parquet
    converts them (the taken rows go through an in-memory Parquet file)."""
    if Path(path).suffix != ".parquet":
        return read_table(path).iloc[rows].reset_index(drop=True)
    pf = pq.ParquetFile(path)
    names = [c for c in pf.schema_arrow.names if not c.startswith("__")]
    rest = [c for c in names if c not in f.columns]
    sub = f.iloc[rows].reset_index(drop=True)
    if rest:
        sizes = np.array([pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)], np.int64)
        bounds = np.r_[0, np.cumsum(sizes)]
        group = np.searchsorted(bounds, rows, side="right") - 1
        gs = np.unique(group)
        offset = np.r_[0, np.cumsum(sizes[gs])[:-1]]
        local = rows - bounds[group] + offset[np.searchsorted(gs, group)]
        buf = io.BytesIO()
        pq.write_table(pf.read_row_groups(list(gs), columns=rest).take(local), buf)
        sub = pd.concat([sub, pd.read_parquet(io.BytesIO(buf.getvalue()))], axis=1)
    return sub[[c for c in names if c in sub.columns]]


def _nunique(x: np.ndarray) -> int:
    """Distinct non-NaN values (pandas' nunique): small non-negative ints by marking."""
    if x.dtype.kind in "iu" and len(x) and 0 <= x.min() and x.max() < 1 << 26:
        mark = np.zeros(int(x.max()) + 1, bool)
        mark[x] = True
        return int(mark.sum())
    return int(pd.Series(x).nunique())


def upstream_rows(f: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
    """One upstream file's upstream_summary rows and their keys in the file's dtypes."""
    layer = runs(f, ["source_layer", "source_feature", "target_layer"])
    key = f[["source_layer", "source_feature", "target_layer"]]
    union = {tuple(key.iloc[i]): _nunique(tf) for i, tf in zip(layer.first, layer.take(f["target_feature"].to_numpy()))}
    p = f["p_value"].to_numpy(float)
    r = runs(f, UP_KEYS)
    differing, tests = r.reduce((f["n_nonzero"] > 0).to_numpy(), np.add), r.reduce(~np.isnan(p), np.add)
    top, low = r.reduce(np.abs(f["delta"].to_numpy()), np.fmax), r.reduce(p, np.fmin)
    rows = []
    for g, i in enumerate(r.first):
        sl, sf, tl = f["source_layer"].iat[i], f["source_feature"].iat[i], f["target_layer"].iat[i]
        rows.append({"source": feature_name(sl, sf), "condition": f["condition"].iat[i], "control": f["control"].iat[i],
                     "scope": f["scope"].iat[i], "layer": tl, "features": union[tuple(key.iloc[i])],
                     "differing": int(differing[g]), "max_abs_delta": float(top[g]), "tests": int(tests[g]),
                     "min_p": float(low[g])})
    return f[UP_KEYS].iloc[r.first].reset_index(drop=True), rows


def in_group_order(keys: list[pd.DataFrame], rows: list[list[dict]], columns: list[str]) -> pd.DataFrame:
    """The files' group rows in the order a groupby over all files gives (sorted keys of the
    concatenated dtypes; NaN keys dropped). A key in two files would be one group there: an error."""
    k = pd.concat(keys, ignore_index=True)
    g = k.groupby(list(k.columns), observed=True, sort=True, dropna=True).ngroup().to_numpy(float)
    ok = np.flatnonzero(~np.isnan(g) & (g >= 0))
    if len(np.unique(g[ok])) < len(ok):
        raise ValueError("a source's rows are in more than one effects file: pathways reads one source per file")
    flat = [r for rs in rows for r in rs]
    return pd.DataFrame([flat[i] for i in ok[np.argsort(g[ok], kind="stable")]], columns=columns)


_RUN: dict[str, Any] = {}  # pass 2's families and thresholds, shared with forked workers


def _source(path: str) -> tuple[pd.DataFrame, list[dict], pd.DataFrame]:
    """Pass 2 of one effects file: its null rows (keys, values) and the rows edges reads, with q."""
    rw, rwc, rwp, alpha, min_delta = _RUN["rw"], _RUN["rwc"], _RUN["rwp"], _RUN["alpha"], _RUN["min_delta"]
    f = read_table(path, PASS2_COLUMNS)
    keys, rows = null_rows(f, rw, rwc, alpha, min_delta, _RUN["floors"])
    part = take_rows(path, f, edge_rows(f, rw, rwc, alpha, min_delta))
    codes, labels = codes_of(part["control"])
    return keys, rows, part.assign(q_value=rw.q(labels, codes, part["p_value"].to_numpy(float)),
                                   q_computed=rwc.q(labels, codes, part["p_computed"].to_numpy(float)),
                                   q_prompts=rwp.q(labels, codes, part["p_prompts"].to_numpy(float)))


def _upstream(path: str) -> tuple[pd.DataFrame, list[dict]] | None:
    f = read_table(path, UP_KEYS + ["target_feature", "n_nonzero", "delta", "p_value"])
    return upstream_rows(f) if len(f) else None


def _each(fn: Callable, paths: Sequence[str], workers: int) -> Iterable:
    """fn over the paths in order, in `workers` forked processes where more than 1."""
    if workers <= 1 or len(paths) <= 1:
        return map(fn, paths)
    with mp.get_context("fork").Pool(min(workers, len(paths))) as pool:
        return pool.map(fn, paths, chunksize=1)


def run_tables(effects: Sequence[str | Path], upstream: Sequence[str | Path], alpha: float,
               min_delta: float, workers: int = 1, floors: Floors | None = None) -> RunTables:
    """pathways' run-wide edges, null_summary and upstream_summary over the files (claims held
    to the placebo `floors` too): pass 1 over the effects files (families), then pass 2 file by
    file (`workers` processes) and the upstream files."""
    rw, rwc, rwp = (families(effects, col) for col in ("p_value", "p_computed", "p_prompts"))
    _RUN.update(rw=rw, rwc=rwc, rwp=rwp, alpha=alpha, min_delta=min_delta, floors=floors)
    try:
        if rw.files:
            done = list(_each(_source, rw.files, workers))
            e = edges(pd.concat([d[2] for d in done], ignore_index=True), alpha, min_delta, floors)
            null = in_group_order([d[0] for d in done], [d[1] for d in done], NULL_COLUMNS)
        else:
            none = run_wide(pd.DataFrame(columns=COLUMNS))
            e, null = edges(none, alpha, min_delta, floors), null_summary(none, alpha, min_delta, floors)
        ups = [u for u in _each(_upstream, [str(p) for p in upstream], workers) if u is not None]
    finally:
        _RUN.clear()
    up = (in_group_order([u[0] for u in ups], [u[1] for u in ups], UPSTREAM_COLUMNS) if ups
          else upstream_summary(pd.DataFrame(columns=COLUMNS[:-1])))
    return RunTables(e, null, up, rw.real_tests, {"trials": rw.cutoff(alpha), "prompts": rwp.cutoff(alpha)})
