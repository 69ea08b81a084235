"""Downstream effects of one patched source feature, with paired tests and BH q-values.

Scopes:
- `prompt_last`: the target feature at the last prompt position. Prefill is deterministic, so
  patched minus baseline there is an exact per-prompt difference; p comes from a one-sample
  t-test of those differences across prompts (0 when they agree exactly and are non-zero).
- `generated`: the target feature's mean over a trial's generated positions; patched and
  baseline trials of one seed share their random numbers, so the test is a paired t-test over
  trial pairs.

The placebo contrast runs the same tests on baseline vs baseline trials drawn with independent
seeds; any discovery there is a false one, which measures the false-discovery rate in practice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
from scipy import stats as sps

from .stats import bh

EDGE_COLUMNS = ["source_layer", "source_feature", "condition", "target_layer", "target_feature",
                "scope", "mean_baseline", "mean_patched", "delta", "effect_size", "p_value",
                "q_value", "n_trials", "n_prompts", "prompts_replicated", "robust"]


class Pairs(NamedTuple):
    """Row keys of paired trials: (part, row) of the patched side and of the baseline side."""

    condition: str
    prompt: np.ndarray  # [n] prompt id per pair
    treated: list[tuple[str, int]]
    control: list[tuple[str, int]]


class FeatureEffects(NamedTuple):
    """One source feature's tested rows, and the same tests on placebo vs baseline trials."""

    effects: pd.DataFrame
    placebo: pd.DataFrame


def code_layer(path: str | Path) -> int:
    """The target layer of a codes file: results/encode/L<layer>.parquet -> layer."""
    return int(Path(path).stem.removeprefix("L"))


def read_codes(paths: Iterable[str | Path], parts: list[str]) -> dict[int, pd.DataFrame]:
    """Code rows of the given parts per target layer, in file order; a codes file holds every
    part's rows, so the filter keeps the read to this feature's trials."""
    return {code_layer(f): ds.dataset(str(f)).to_table(filter=ds.field("part").isin(parts)).to_pandas()
            for f in paths}


def pairs_of(treated: pd.DataFrame, control: pd.DataFrame, condition: str) -> Pairs:
    """Pair treated and control trials that share a prompt and a trial number (one seed); rows of
    either side without a partner are dropped. Both tables need prompt_id, trial, part and row."""
    m = treated.merge(control, on=["prompt_id", "trial"], suffixes=("_t", "_c"))
    return Pairs(condition, m["prompt_id"].to_numpy(), list(zip(m["part_t"], m["row_t"])),
                 list(zip(m["part_c"], m["row_c"])))


def feature_effects(patched: pd.DataFrame, baseline: pd.DataFrame, codes_by_layer: Mapping[int, pd.DataFrame],
                    min_delta: float, min_prompts: int) -> FeatureEffects:
    """Effects of one source feature: each patched condition against the baseline trials, and the
    placebo trials (if any) against the same baseline trials. `patched` holds one feature's
    trials; both tables carry a `part` column naming their rows in the codes."""
    main = baseline[baseline["condition"] == "baseline"]
    layer, fid = int(patched["layer"].iloc[0]), int(patched["feature_id"].iloc[0])
    pairs = [pairs_of(g, main, cond) for cond, g in patched.groupby("condition")]
    eff = source_effects(codes_by_layer, pairs, layer, fid, min_delta, min_prompts)
    plac = baseline[baseline["condition"] == "placebo"]
    placebo = source_effects(codes_by_layer, [pairs_of(plac, main, "placebo")] if len(plac) else [],
                             layer, fid, min_delta, min_prompts)
    return FeatureEffects(eff, placebo)


def _dense(codes: pd.DataFrame, keys: list[tuple[str, int]], column: str, feats: np.ndarray) -> np.ndarray:
    """[len(keys), len(feats)] matrix of one code column for the given rows."""
    pos = {k: i for i, k in enumerate(keys)}
    fpos = pd.Series(np.arange(len(feats)), index=feats)
    out = np.zeros((len(keys), len(feats)))
    idx = [pos.get((p, r), -1) for p, r in zip(codes["part"].astype(str), codes["row"])]
    sel = np.array(idx) >= 0
    if sel.any():
        c = codes[sel]
        out[np.array(idx)[sel], fpos.loc[c["feature"].to_numpy()].to_numpy()] = c[column].to_numpy()
    return out


def _one_sample(d: np.ndarray) -> np.ndarray:
    """Two-sided p of mean(d) = 0 per column; 0 for identical non-zero, NaN for all-zero columns."""
    n = d.shape[0]
    m = d.mean(0)
    sd = d.std(0, ddof=1) if n > 1 else np.zeros(d.shape[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        t = m / (sd / np.sqrt(n))
        p = 2 * sps.t.sf(np.abs(t), max(n - 1, 1))
    p = np.where(sd > 1e-12, p, np.where(np.abs(m) > 0, 0.0, np.nan))
    return p


def contrast(codes_by_layer: Mapping[int, pd.DataFrame], pairs: Pairs, min_delta: float,
             min_prompts: int) -> pd.DataFrame:
    """Every tested (target layer, target feature, scope) of one condition's pairs."""
    frames = []
    prompts = np.unique(pairs.prompt)
    for layer, codes in codes_by_layer.items():
        keys = pairs.treated + pairs.control
        mine = codes[pd.MultiIndex.from_arrays([codes["part"].astype(str), codes["row"]]).isin(keys)]
        feats = np.unique(mine["feature"].to_numpy())
        if len(feats) == 0:
            continue
        for scope, col in (("prompt_last", "last"), ("generated", "gen")):
            a = _dense(mine, pairs.treated, col, feats)
            b = _dense(mine, pairs.control, col, feats)
            d = a - b
            per_prompt = np.stack([d[pairs.prompt == p].mean(0) for p in prompts])
            p = _one_sample(per_prompt if scope == "prompt_last" else d)
            delta = d.mean(0)
            spread = np.sqrt((a.var(0) + b.var(0)) / 2)
            with np.errstate(divide="ignore", invalid="ignore"):
                es = np.where(spread > 0, delta / spread, np.sign(delta) * np.inf)
            same = (np.sign(per_prompt) == np.sign(delta)) & (np.abs(per_prompt) > min_delta)
            rep = same.sum(0)
            frames.append(pd.DataFrame({
                "condition": pairs.condition, "target_layer": layer, "target_feature": feats,
                "scope": scope, "mean_baseline": b.mean(0), "mean_patched": a.mean(0),
                "delta": delta, "effect_size": es, "p_value": p, "n_trials": len(d),
                "n_prompts": len(prompts), "prompts_replicated": rep,
                "robust": rep >= min_prompts}))
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return out[~out["p_value"].isna()].reset_index(drop=True) if len(out) else out


def source_effects(codes_by_layer: Mapping[int, pd.DataFrame], pairs: list[Pairs], source_layer: int,
                   source_feature: int, min_delta: float, min_prompts: int) -> pd.DataFrame:
    """All tested rows of one source feature, q-values by BH over the whole source feature."""
    frames = [contrast(codes_by_layer, p, min_delta, min_prompts) for p in pairs]
    out = pd.concat([f for f in frames if len(f)], ignore_index=True) if any(len(f) for f in frames) \
        else pd.DataFrame(columns=[c for c in EDGE_COLUMNS if c not in ("source_layer", "source_feature")])
    out.insert(0, "source_feature", source_feature)
    out.insert(0, "source_layer", source_layer)
    out["q_value"] = bh(out["p_value"].to_numpy(float)) if len(out) else []
    return out[EDGE_COLUMNS]


def edges(effects: pd.DataFrame, alpha: float, min_delta: float) -> pd.DataFrame:
    """Significant rows: q < alpha and |delta| > min_delta."""
    e = effects[(effects["q_value"] < alpha) & (effects["delta"].abs() > min_delta)]
    return e.sort_values(["q_value", "delta"], key=lambda s: s.abs() if s.name == "delta" else s,
                         ascending=[True, False]).reset_index(drop=True)
