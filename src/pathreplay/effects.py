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
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
from tqdm import tqdm

from .errors import fail
from .features import feature_name
from .plan import PLACEBO, control_of
from .stats import bh_with_controls, paired_p, sign_flip_p

COLUMNS = ["source_layer", "source_feature", "condition", "control", "scope", "target_layer", "target_feature",
           "mean_baseline", "mean_patched", "delta", "effect_size", "p_value", "test", "n", "n_nonzero",
           "n_trials", "n_prompts", "prompts_replicated", "prompts_opposite", "robust", "q_within_source"]
MIN_PROMPTS_TESTED = 3  # below this the smallest sign-flip p across prompts is 2 / 2^2 = 0.5


class Pairs(NamedTuple):
    """Row keys of paired trials: (part, row) of the patched side and of the baseline side."""

    condition: str
    prompt: np.ndarray  # [n] prompt id per pair
    treated: list[tuple[str, int]]
    control: list[tuple[str, int]]


class Contrast(NamedTuple):
    """One condition's pairs in one scope, read from the codes' `column`."""

    condition: str
    control: str  # real | sham | random | placebo
    scope: str
    column: str  # last | gen
    pairs: Pairs


class FeatureEffects(NamedTuple):
    """One source feature's tested rows downstream, and the upstream negative control."""

    effects: pd.DataFrame
    upstream: pd.DataFrame


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


def _dense(codes: pd.DataFrame, pos: Mapping[tuple[str, int], int], feats: np.ndarray) -> dict[str, np.ndarray]:
    """{last, gen}: [len(pos), len(feats)] matrices of the codes of the rows `pos` numbers."""
    idx = np.array([pos.get(k, -1) for k in zip(codes["part"].astype(str), codes["row"])], dtype=np.int64)
    sel = idx >= 0
    col = np.searchsorted(feats, codes["feature"].to_numpy()[sel])
    out = {}
    for name in ("last", "gen"):
        m = np.zeros((len(pos), len(feats)))
        m[idx[sel], col] = codes[name].to_numpy()[sel]
        out[name] = m
    return out


def _test(c: Contrast, a: np.ndarray, b: np.ndarray, min_delta: float, min_prompts: int) -> dict[str, np.ndarray]:
    """The columns of one contrast at one layer: a, b the treated and control codes, pair-aligned."""
    d = a - b
    prompts = np.unique(c.pairs.prompt)
    per_prompt = np.stack([d[c.pairs.prompt == p].mean(0) for p in prompts])
    delta = d.mean(0)
    if c.scope == "prompt_last":
        p, exact = sign_flip_p(per_prompt) if len(prompts) >= MIN_PROMPTS_TESTED else (
            np.full(d.shape[1], np.nan), np.ones(d.shape[1], bool))  # sign_flip_p: NaN below 2 non-zero
        test = np.where(np.isnan(p), "none", np.where(exact, "sign_flip_exact", "sign_flip_mc"))
        n, nonzero = np.full(d.shape[1], len(prompts)), (per_prompt != 0).sum(0)
    else:
        p, test = paired_p(d)
        n, nonzero = np.full(d.shape[1], len(d)), (d != 0).sum(0)
    spread = np.sqrt((a.var(0) + b.var(0)) / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        es = np.where(spread > 0, delta / spread, np.sign(delta) * np.inf)
    big = np.abs(per_prompt) > min_delta
    rep = ((np.sign(per_prompt) == np.sign(delta)) & big).sum(0)
    opp = ((np.sign(per_prompt) == -np.sign(delta)) & big).sum(0)
    return {"mean_baseline": b.mean(0), "mean_patched": a.mean(0), "delta": delta, "effect_size": es,
            "p_value": p, "test": test, "n": n, "n_nonzero": nonzero, "n_trials": len(d),
            "n_prompts": len(prompts), "prompts_replicated": rep, "prompts_opposite": opp,
            "robust": (rep >= min_prompts) & (opp == 0)}


def _check_exact(c: Contrast, d: np.ndarray, layer: int, upstream: bool, where: str) -> None:
    """A sham changes nothing anywhere; nothing changes upstream of a forced patch."""
    if (c.control == "sham" or (upstream and c.scope == "forced")) and np.any(d != 0):
        what = "the sham patch" if c.control == "sham" else f"{c.condition}, teacher-forced,"
        fail(where, f"{what} changed {int((d != 0).any(0).sum())} features at layer {layer} in scope {c.scope} "
             f"(max |difference| {np.abs(d).max():.3g}); the replay is not exact",
             "rerun this shard; if it recurs, the replay machinery has a bug: report it with this line")


def feature_effects(patched: pd.DataFrame, baseline: pd.DataFrame, codes_by_layer: Mapping[int, pd.DataFrame],
                    min_delta: float, min_prompts: int, where: str = "effects") -> FeatureEffects:
    """Every contrast of one source feature at every captured layer but its own. `patched` holds
    one feature's trials; both tables carry a `part` column naming their rows in the codes.
    q_within_source: BH over the real contrasts' downstream tests; each control's tests are held
    to a family of that size (stats.bh_with_controls)."""
    layer, fid = int(patched["layer"].iloc[0]), int(patched["feature_id"].iloc[0])
    cons = contrasts(patched, baseline)
    keys = sorted({k for c in cons for k in c.pairs.treated + c.pairs.control})
    pos = {k: i for i, k in enumerate(keys)}
    rows_of = [(np.array([pos[k] for k in c.pairs.treated], dtype=np.int64),
                np.array([pos[k] for k in c.pairs.control], dtype=np.int64)) for c in cons]
    frames, tests = [], 0
    bar = tqdm(codes_by_layer.items(), desc=f"effects {feature_name(layer, fid)}", unit="layer", mininterval=5)
    for target, codes in bar:
        if target == layer:
            continue
        mine = codes[pd.MultiIndex.from_arrays([codes["part"].astype(str), codes["row"]]).isin(keys)]
        feats = np.unique(mine["feature"].to_numpy())
        if not len(feats):
            continue
        dense = _dense(mine, pos, feats)
        for c, (treated, control) in zip(cons, rows_of):
            a, b = dense[c.column][treated], dense[c.column][control]
            _check_exact(c, a - b, target, target < layer, where)
            cols = _test(c, a, b, min_delta, min_prompts)
            tests += int(np.isfinite(cols["p_value"]).sum())
            frames.append(pd.DataFrame({"condition": c.condition, "control": c.control, "scope": c.scope,
                                        "target_layer": target, "target_feature": feats, **cols}))
        bar.set_postfix(tests=tests, refresh=False)
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS[2:-1])
    out.insert(0, "source_feature", fid)
    out.insert(0, "source_layer", layer)
    up = out["target_layer"] < layer
    return FeatureEffects(within_source(out[~up].reset_index(drop=True)), out[up].reset_index(drop=True))


def within_source(rows: pd.DataFrame) -> pd.DataFrame:
    """q_within_source: BH over the real rows; each control contrast held to the real family's size."""
    q = bh_with_controls(rows["p_value"].to_numpy(float), rows["condition"].to_numpy(),
                         (rows["control"] == "real").to_numpy())
    return rows.assign(q_within_source=q)[COLUMNS]
