"""A source's effects layer by layer: every contrast's rows at each target layer (downstream: the
effects; upstream: the negative control), and q_within_source over the downstream rows."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import pandas as pd
from tqdm import tqdm

from ..features import feature_name
from ..stats.multiple import bh_with_controls
from ..stats.signflip import TESTS
from .codes import dense
from .columns import SharedSides, check_exact, contrast_columns
from .contrasts import CONTROLS, SCOPES, Contrast, _pair_rows, contrasts

COLUMNS = ["source_layer", "source_feature", "condition", "control", "scope", "target_layer", "target_feature",
           "mean_baseline", "mean_patched", "delta", "delta_passthrough", "delta_computed", "effect_size", "p_value",
           "p_computed", "p_prompts", "test", "n", "n_nonzero", "n_trials", "n_prompts", "prompts_replicated",
           "prompts_opposite", "robust", "q_within_source"]


THREADS = 2  # contrasts computed at once within a layer


class FeatureEffects(NamedTuple):
    """One source feature's tested rows downstream, and the upstream negative control."""

    effects: pd.DataFrame
    upstream: pd.DataFrame


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


def _active(dens: dict[str, np.ndarray], rows: np.ndarray, seen: dict[tuple[int, bytes], np.ndarray]) -> np.ndarray:
    """Targets non-zero (gen or last) in one of these trials; a side shared by contrasts once."""
    key = (id(dens), rows.tobytes())
    if key not in seen:
        seen[key] = (dens["gen"][rows] != 0).any(0) | (dens["last"][rows] != 0).any(0)
    return seen[key]


def _layer(cons: list[Contrast], rows_of: list[tuple[np.ndarray, np.ndarray, np.ndarray]], feats: np.ndarray,
           dens: dict[str, np.ndarray], passed: dict[str, np.ndarray], target: int, layer: int, min_delta: float,
           min_prompts: int, labels: dict[str, list[str]], where: str, undecomposed: frozenset[str] = frozenset()
           ) -> list[pd.DataFrame]:
    """Every contrast's rows at one target layer. A contrast writes the targets active in one of
    its pairs' trials, or read through by its patch (its scopes alike); a sham, and a forced run
    upstream of the source, must leave every code as it was (checked), and then only the baseline
    side is reduced. `passed`: the read-through codes of the trials (zero but above the source);
    `undecomposed`: conditions whose patch has no read-through to separate (reconstruct mode)."""
    sides, seen, jobs = SharedSides(dens), {}, []
    for c, rows in zip(cons, rows_of):
        treated, control, _ = rows
        through = _active(passed, treated, seen) if target > layer else np.zeros(len(feats), bool)
        keep = np.flatnonzero(_active(dens, treated, seen) | _active(dens, control, seen) | through)
        exact = c.control == "sham" or (target < layer and c.scope == "forced")
        if exact:
            check_exact(c, dens[c.column], treated, control, target, target < layer, where)
        sides.whole(c.column, control)
        own = passed[c.column][np.ix_(treated, keep)].astype(float) if through.any() else None
        jobs.append((c, sides, rows, keep, exact, min_delta, min_prompts, own, c.condition not in undecomposed))
    # 2 threads (the cores the rule has): numpy and BLAS release the GIL in the contrasts' passes
    with ThreadPoolExecutor(THREADS) as pool:
        cols = list(pool.map(lambda job: contrast_columns(*job), jobs))
    return [_frame(c, target, feats[keep], col, labels) for (c, _, _, keep, *_), col in zip(jobs, cols)]


def layer_effects(patched: pd.DataFrame, baseline: pd.DataFrame, codes_by_layer: Mapping[int, pd.DataFrame],
                  min_delta: float, min_prompts: int, where: str = "effects",
                  passthrough: Mapping[int, pd.DataFrame] | None = None, undecomposed: frozenset[str] = frozenset()
                  ) -> Iterator[tuple[int, pd.DataFrame]]:
    """(target layer, its rows: COLUMNS but q_within_source) for every captured layer but the
    source's own, in codes_by_layer's order. Each layer's codes are asked for when reached and
    its dense matrices dropped before the next (a lazy Mapping holds one layer at a time).
    `passthrough`: the patched trials' read-through codes per layer above the source
    (sae.passthrough; absent: none), which split each delta into delta_passthrough and
    delta_computed; `undecomposed`: conditions whose split is not known (NaN)."""
    layer, fid = int(patched["layer"].iloc[0]), int(patched["feature_id"].iloc[0])
    cons = contrasts(patched, baseline)
    pos, rows_of = _pair_rows(cons)
    labels = {"condition": sorted({c.condition for c in cons}), "control": list(CONTROLS), "scope": list(SCOPES)}
    tests = 0
    bar = tqdm(list(codes_by_layer), desc=f"effects {feature_name(layer, fid)}", unit="layer", mininterval=5, disable=None)
    for target in bar:
        if target == layer:
            continue
        through = passthrough[target] if passthrough is not None and target > layer and target in passthrough else None
        feats, dens, passed = dense(codes_by_layer[target], pos, through)
        if not len(feats):
            continue
        rows = pd.concat(_layer(cons, rows_of, feats, dens, passed, target, layer, min_delta, min_prompts, labels,
                                where, undecomposed), ignore_index=True)
        del dens, passed
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
                    min_delta: float, min_prompts: int, where: str = "effects",
                    passthrough: Mapping[int, pd.DataFrame] | None = None,
                    undecomposed: frozenset[str] = frozenset()) -> FeatureEffects:
    """Every contrast of one source feature at every captured layer but its own: layer_effects
    collected, the layers downstream of the source with q_within_source (within_source), those
    upstream as the negative control. `patched` holds one feature's trials; both tables carry a
    `part` column naming their rows in the codes."""
    layer, fid = int(patched["layer"].iloc[0]), int(patched["feature_id"].iloc[0])
    down, up = [], []
    for target, rows in layer_effects(patched, baseline, codes_by_layer, min_delta, min_prompts, where, passthrough,
                                      undecomposed):
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
