"""Effects of one patched source feature on every feature of every other captured layer, with
paired tests, for the real conditions and the controls alike.

Scopes (each row says which):
- `prompt_last`: the target feature at the last prompt position. Prefill is deterministic, so the
  patched minus baseline difference there is one number per prompt; the test is a sign-flip
  test across prompts (n = prompts; exact up to 12 non-zero prompts), none with fewer than 3
  prompts. Its smallest p is 2 / 2^prompts: 4 prompts cannot reach p < 0.125.
- `generated`: the target feature's mean over a trial's kept generated positions, sampled with
  the patch against the baseline trial of the same seed (shared random numbers): the total
  effect, the patch's own and that of the tokens it changed.
- `forced`: the same mean in the patched run teacher-forced on the baseline trial's own tokens:
  the direct effect at matched positions.
Trial scopes use stats.paired_p over trial pairs. Contrasts (`control`): `real` (the replay's
conditions), `sham`, `random` (random:<condition>) and `placebo` (baseline trials of another seed
stream, prompt_last and generated scopes), all through the same tests. Downstream layers make the effects;
upstream layers are a negative control: forced differences there must be exactly 0, and a sham's
everywhere, or the job stops.

Rows: a layer's targets are the features any of the source's trials has; a contrast writes the
row of a target active (last or gen) in one of its pairs' trials at least. A row left out would
say means 0, delta 0, n_nonzero 0, no test: it is in no BH family, and pathways reads its absence
so (upstream `features` counts the layer's targets; an edge's missing side delta is 0). At the
study's shape (32 x 32,768 features, heavy-tailed activity) the union is nearly the whole
dictionary: about 23 contrasts x 31 layers x ~29,000 rows per source (benchmarks/scale.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
from tqdm import tqdm

from .effects_layer import (CONTROLS, MIN_PROMPTS_TESTED, SCOPES, Contrast, Pairs, SharedSides, check_exact,  # noqa: F401
                            contrast_columns, dense)
from .features import feature_name
from .plan import PLACEBO, control_of
from .signflip import TESTS
from .stats import bh_with_controls

COLUMNS = ["source_layer", "source_feature", "condition", "control", "scope", "target_layer", "target_feature",
           "mean_baseline", "mean_patched", "delta", "effect_size", "p_value", "test", "n", "n_nonzero",
           "n_trials", "n_prompts", "prompts_replicated", "prompts_opposite", "robust", "q_within_source"]


THREADS = 2  # contrasts computed at once within a layer


class FeatureEffects(NamedTuple):
    """One source feature's tested rows downstream, and the upstream negative control."""

    effects: pd.DataFrame
    upstream: pd.DataFrame


def code_layer(path: str | Path) -> int:
    """The target layer of a codes file: results/encode/patched/s000/L<layer>.parquet -> layer."""
    return int(Path(path).stem.removeprefix("L"))


class Codes(Mapping[int, pd.DataFrame]):
    """Target layer -> code rows (part, row, feature, last, gen) of the given parts, read from the
    layer's files when asked for, so effects hold one layer's codes at a time. The workflow's
    files (results/encode/<kind>/<job>/L<layer>.parquet) hold their `part` column (one
    dictionary entry on disk) and are read through one filter: the given parts, and of a part
    named in `rows` only those rows (a shard holds every trial of its features; a feature reads
    its own). A file without the column is the part its path names."""

    def __init__(self, paths: Iterable[str | Path], parts: list[str],
                 rows: Mapping[str, Iterable[int]] | None = None) -> None:
        self.files: dict[int, list[Path]] = {}
        for f in paths:
            self.files.setdefault(code_layer(f), []).append(Path(f))
        self.parts = parts
        self.rows = {p: sorted(set(map(int, r))) for p, r in (rows or {}).items()}
        self.keep = self._filter()  # built once: every file with a `part` column reads through it

    def _rows(self, part: str) -> ds.Expression | None:
        return ds.field("row").isin(self.rows[part]) if part in self.rows else None

    def _filter(self) -> ds.Expression | None:
        keep = None
        for p in self.parts:
            one = ds.field("part") == p
            extra = self._rows(p)
            one = one if extra is None else one & extra
            keep = one if keep is None else keep | one
        return keep

    def _read(self, f: Path) -> pd.DataFrame | None:
        # `part` as one categorical over self.parts in every frame, so the layer's frames
        # concatenate as codes, not as millions of strings.
        kind = pd.CategoricalDtype(self.parts)
        data = ds.dataset(str(f))
        if "part" in data.schema.names:
            keep = self.keep
            df = (data.to_table(filter=keep) if keep is not None else data.schema.empty_table()).to_pandas()
            col = df["part"]
            return df.assign(part=col.cat.set_categories(self.parts) if isinstance(col.dtype, pd.CategoricalDtype)
                             else col.astype(kind))
        part = f"{f.parent.parent.name}/{f.parent.name}"
        if part not in self.parts:
            return None
        df = data.to_table(filter=self._rows(part)).to_pandas()
        df.insert(0, "part", pd.Categorical.from_codes(np.full(len(df), self.parts.index(part), np.int32), dtype=kind))
        return df

    def __getitem__(self, layer: int) -> pd.DataFrame:
        fs = [df for df in map(self._read, self.files[layer]) if df is not None]
        if not fs:
            return pd.DataFrame(columns=["part", "row", "feature", "last", "gen"])
        return fs[0] if len(fs) == 1 else pd.concat(fs, ignore_index=True)

    def __iter__(self) -> Iterator[int]:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)


def read_codes(paths: Iterable[str | Path], parts: list[str],
               rows: Mapping[str, Iterable[int]] | None = None) -> Codes:
    """The codes of the given parts per target layer, layers in file order (Codes)."""
    return Codes(paths, parts, rows)


def pairs_of(treated: pd.DataFrame, control: pd.DataFrame, condition: str) -> Pairs:
    """Pair treated and control trials that share a prompt and a trial number (one seed); rows of
    either side without a partner are dropped. Both tables need prompt_id, trial, part and row."""
    m = treated.merge(control, on=["prompt_id", "trial"], suffixes=("_t", "_c"))
    return Pairs(condition, m["prompt_id"].to_numpy(), list(zip(m["part_t"], m["row_t"])),
                 list(zip(m["part_c"], m["row_c"])))


def contrasts(patched: pd.DataFrame, baseline: pd.DataFrame) -> list[Contrast]:
    """Every condition of one feature's trials against the baseline, in every scope, and the
    placebo trials against the same baseline."""
    main = baseline[baseline["condition"] == "baseline"]
    out = []
    for cond, g in patched.groupby("condition", sort=True):
        gen = pairs_of(g[g["run"] == "generated"], main, cond)
        frc = pairs_of(g[g["run"] == "forced"], main, cond)
        ctl = control_of(str(cond))
        out += [Contrast(cond, ctl, "prompt_last", "last", gen), Contrast(cond, ctl, "generated", "gen", gen),
                Contrast(cond, ctl, "forced", "gen", frc)]
    plac = baseline[baseline["condition"] == PLACEBO]
    if len(plac):
        p = pairs_of(plac, main, PLACEBO)
        out += [Contrast(PLACEBO, PLACEBO, "prompt_last", "last", p), Contrast(PLACEBO, PLACEBO, "generated", "gen", p)]
    return out


def _pair_rows(cons: list[Contrast]) -> tuple[dict[tuple[str, int], int], list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """The trials' numbers (every pair's two rows) and, per contrast, the treated and control
    numbers with its pairs grouped by prompt (a stable sort: pair order kept within a prompt),
    and where each prompt's pairs start."""
    keys = sorted({k for c in cons for k in c.pairs.treated + c.pairs.control})
    pos = {k: i for i, k in enumerate(keys)}
    rows_of = []
    for c in cons:
        order = np.argsort(pd.factorize(c.pairs.prompt, sort=True)[0], kind="stable")
        prompt = np.asarray(c.pairs.prompt)[order]
        starts = np.flatnonzero(np.r_[True, prompt[1:] != prompt[:-1]]) if len(prompt) else np.zeros(0, np.int64)
        rows_of.append((np.array([pos[k] for k in c.pairs.treated], dtype=np.int64)[order],
                        np.array([pos[k] for k in c.pairs.control], dtype=np.int64)[order], starts))
    return pos, rows_of


def _frame(c: Contrast, target: int, feats: np.ndarray, cols: dict[str, np.ndarray],
           labels: dict[str, list[str]]) -> pd.DataFrame:
    """One contrast's rows at one layer; labels as categoricals of fixed categories, so the
    frames concatenate (and stream) without turning them into objects."""
    n = len(feats)
    cat = {k: pd.Categorical.from_codes(np.full(n, labels[k].index(v), np.int8), categories=labels[k])
           for k, v in (("condition", c.condition), ("control", c.control), ("scope", c.scope))}
    cols = {**cols, "test": pd.Categorical.from_codes(cols["test"], categories=TESTS)}
    return pd.DataFrame({**cat, "target_layer": np.full(n, target, np.int64), "target_feature": feats,
                         **{k: (cols[k] if np.ndim(cols[k]) else np.full(n, cols[k])) for k in COLUMNS[7:-1]}})


def _active(dens: dict[str, np.ndarray], rows: np.ndarray, seen: dict[bytes, np.ndarray]) -> np.ndarray:
    """Targets non-zero (gen or last) in one of these trials; a side shared by contrasts once."""
    key = rows.tobytes()
    if key not in seen:
        seen[key] = (dens["gen"][rows] != 0).any(0) | (dens["last"][rows] != 0).any(0)
    return seen[key]


def _layer(cons: list[Contrast], rows_of: list[tuple[np.ndarray, np.ndarray, np.ndarray]], feats: np.ndarray,
           dens: dict[str, np.ndarray], target: int, layer: int, min_delta: float, min_prompts: int,
           labels: dict[str, list[str]], where: str) -> list[pd.DataFrame]:
    """Every contrast's rows at one target layer. A contrast writes the targets active in one of
    its pairs' trials (its scopes alike); a sham, and a forced run upstream of the source, must
    leave every code as it was (checked), and then only the baseline side is reduced."""
    sides, seen, jobs = SharedSides(dens), {}, []
    for c, rows in zip(cons, rows_of):
        treated, control, _ = rows
        keep = np.flatnonzero(_active(dens, treated, seen) | _active(dens, control, seen))
        exact = c.control == "sham" or (target < layer and c.scope == "forced")
        if exact:
            check_exact(c, dens[c.column], treated, control, target, target < layer, where)
        sides.whole(c.column, control)
        jobs.append((c, sides, rows, keep, exact, min_delta, min_prompts))
    # 2 threads (the cores the rule has): numpy and BLAS release the GIL in the contrasts' passes
    with ThreadPoolExecutor(THREADS) as pool:
        cols = list(pool.map(lambda job: contrast_columns(*job), jobs))
    return [_frame(c, target, feats[keep], col, labels) for (c, _, _, keep, *_), col in zip(jobs, cols)]


def layer_effects(patched: pd.DataFrame, baseline: pd.DataFrame, codes_by_layer: Mapping[int, pd.DataFrame],
                  min_delta: float, min_prompts: int, where: str = "effects") -> Iterator[tuple[int, pd.DataFrame]]:
    """(target layer, its rows: COLUMNS but q_within_source) for every captured layer but the
    source's own, in codes_by_layer's order. Each layer's codes are asked for when reached and
    its dense matrices dropped before the next (a lazy Mapping holds one layer at a time)."""
    layer, fid = int(patched["layer"].iloc[0]), int(patched["feature_id"].iloc[0])
    cons = contrasts(patched, baseline)
    pos, rows_of = _pair_rows(cons)
    labels = {"condition": sorted({c.condition for c in cons}), "control": list(CONTROLS), "scope": list(SCOPES)}
    tests = 0
    bar = tqdm(list(codes_by_layer), desc=f"effects {feature_name(layer, fid)}", unit="layer", mininterval=5)
    for target in bar:
        if target == layer:
            continue
        feats, dens = dense(codes_by_layer[target], pos)
        if not len(feats):
            continue
        rows = pd.concat(_layer(cons, rows_of, feats, dens, target, layer, min_delta, min_prompts, labels, where),
                         ignore_index=True)
        del dens
        rows.insert(0, "source_feature", fid)
        rows.insert(0, "source_layer", layer)
        tests += int(np.isfinite(rows["p_value"].to_numpy()).sum())
        bar.set_postfix(tests=tests, refresh=False)
        yield target, rows


def empty_rows(layer: int, fid: int) -> pd.DataFrame:
    """A source's rows when it has none: COLUMNS but q_within_source."""
    out = pd.DataFrame(columns=COLUMNS[2:-1])
    out.insert(0, "source_feature", fid)
    out.insert(0, "source_layer", layer)
    return out


def feature_effects(patched: pd.DataFrame, baseline: pd.DataFrame, codes_by_layer: Mapping[int, pd.DataFrame],
                    min_delta: float, min_prompts: int, where: str = "effects") -> FeatureEffects:
    """Every contrast of one source feature at every captured layer but its own: layer_effects
    collected, the layers downstream of the source with q_within_source (within_source), those
    upstream as the negative control. `patched` holds one feature's trials; both tables carry a
    `part` column naming their rows in the codes."""
    layer, fid = int(patched["layer"].iloc[0]), int(patched["feature_id"].iloc[0])
    down, up = [], []
    for target, rows in layer_effects(patched, baseline, codes_by_layer, min_delta, min_prompts, where):
        (up if target < layer else down).append(rows)
    like = (down + up)[0].iloc[:0] if down or up else empty_rows(layer, fid)

    def cat(frames: list[pd.DataFrame]) -> pd.DataFrame:
        return pd.concat(frames, ignore_index=True) if frames else like.copy()
    return FeatureEffects(within_source(cat(down)), cat(up))


def q_within_source(p: np.ndarray, condition: np.ndarray, real: np.ndarray) -> np.ndarray:
    """q_within_source of a source's downstream rows from their p alone: BH over the real rows;
    each control contrast (by `condition`: labels or their codes) held to the real family's size."""
    return bh_with_controls(p, condition, real)


def within_source(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows with q_within_source (q_within_source), in COLUMNS' order."""
    q = q_within_source(rows["p_value"].to_numpy(float), rows["condition"].to_numpy(),
                        (rows["control"] == "real").to_numpy())
    return rows.assign(q_within_source=q)[COLUMNS]
