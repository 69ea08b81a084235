"""The placebo as a calibration study: how often the tests call a difference where there is none.

A prompt's baseline trials and its placebo trials (the same prompt on an independent seed stream)
are 2n exchangeable draws of the unpatched model. A split shuffles them, calls the first n
`treated` and the other n `control`, and pairs them in order; every split goes through the same
code as a real contrast (dense codes, contrasts' columns, the sign-flip tests at trial and at
prompt level) over every captured layer. The distinct prompt sets of the replay (one per set of
prompts some source was replayed on) are each studied once, so no test is counted twice
however many sources share their prompts. pathways.checks.placebo_summary judges each split at
the real family's BH cutoff. The forced scope has no placebo (teacher forcing an unpatched run
on another's tokens is that run again): its null is the random control.

The floor. A split moves every target it touches at once (a split that puts more of a prompt's
`stop` answers on one side shifts every feature that reads what was said), so at a BH cutoff near
alpha (most real targets do change) a quarter of the splits make some discovery though each test
is calibrated. A second, disjoint set of splits (the calibration splits, their own seed label)
sets a floor per scope and level: with m_1 <= ... <= m_B each calibration split's smallest p
among its tests with |delta| > min_delta (1 where it has none) and j = floor(fwer B), a claim of
that scope and level needs p < m_(j+1): at most a share fwer of null splits would make any.
The check splits (PLACEBO_COLUMNS) never set it, so the check can fail."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from ..io import read_table
from ..replay.plan import PLACEBO, stable_seed
from .codes import dense
from .columns import SharedSides, contrast_columns
from .contrasts import Contrast, Pairs, _pair_rows

PLACEBO_COLUMNS = ["prompt_set", "split", "scope", "target_layer", "target_feature", "delta", "p_value", "p_prompts"]
FLOOR_COLUMNS = ["scope", "level", "splits", "fwer", "rank", "floor", "min_p_median"]
LEVELS = {"trials": "p_value", "prompts": "p_prompts"}  # level -> the placebo's p column
CHECK, CALIBRATION = "placebo split", "placebo calibration"  # the two sets' seed labels
Floors = Mapping[tuple[str, str], float]  # (scope, level) -> a claim there needs p < this


def split_pairs(baseline: pd.DataFrame, prompts: Sequence[str], split: int, seed: int, label: str = CHECK) -> Pairs:
    """One split of the exchangeable unpatched trials of `prompts` (baseline and placebo streams,
    `part` and `row` naming them in the codes) into paired halves, drawn from (seed, label, split,
    prompt)."""
    prompt, treated, control = [], [], []
    for pid in prompts:
        t = baseline[(baseline["prompt_id"] == pid) & baseline["condition"].isin(["baseline", PLACEBO])]
        t = t.sort_values(["condition", "trial"])
        order = np.random.default_rng(stable_seed(seed, label, split, pid)).permutation(len(t))
        half = len(t) // 2
        keys = list(zip(t["part"].iloc[order], t["row"].iloc[order]))
        prompt += [pid] * half
        treated += keys[:half]
        control += keys[half: 2 * half]
    return Pairs(PLACEBO, np.asarray(prompt, dtype=object), treated, control)


def _kept(p: Pairs, positions: Mapping[tuple[str, int], int]) -> Pairs:
    """The pairs whose two trials both kept a generated position (as contrasts.pairs_of keeps)."""
    ok = [positions[a] > 0 and positions[b] > 0 for a, b in zip(p.treated, p.control)]
    return Pairs(p.condition, p.prompt[np.asarray(ok, bool)] if len(ok) else p.prompt,
                 [a for a, k in zip(p.treated, ok) if k], [b for b, k in zip(p.control, ok) if k])


def placebo_study(baseline: pd.DataFrame, codes_by_layer: Mapping[int, pd.DataFrame],
                  prompt_sets: Sequence[Sequence[str]], splits: int, seed: int, min_delta: float,
                  min_prompts: int, label: str = CHECK, big_only: bool = False) -> Iterator[pd.DataFrame]:
    """Every split's tests (PLACEBO_COLUMNS), layer by layer, for each distinct prompt set (the
    splits of seed label `label`); `big_only`: only the targets whose |delta| could exceed
    min_delta (all a floor reads: about 1 in 90 on the demo), the rest untested."""
    positions = dict(zip(zip(baseline["part"], baseline["row"]), baseline["n_positions"]))
    cons, labels = [], []
    for i, prompts in enumerate(prompt_sets):
        for s in range(splits):
            pairs = split_pairs(baseline, prompts, s, seed, label)
            cons += [Contrast(PLACEBO, PLACEBO, "prompt_last", "last", pairs),
                     Contrast(PLACEBO, PLACEBO, "generated", "gen", _kept(pairs, positions))]
            labels += [(i, s), (i, s)]
    pos, rows_of = _pair_rows(cons)
    for target in codes_by_layer:
        feats, dens, passed = dense(codes_by_layer[target], pos)
        sides = SharedSides(dens)
        frames = []
        for c, rows, (i, s) in zip(cons, rows_of, labels):
            treated, control, _ = rows
            active = (dens["gen"][np.r_[treated, control]] != 0).any(0) | (dens["last"][np.r_[treated, control]] != 0).any(0)
            if big_only:  # a loose bound: split_minima applies the exact |delta| > min_delta
                m = dens[c.column]
                near = np.abs(m[treated].mean(0, dtype=float) - m[control].mean(0, dtype=float))
                active &= near > min_delta * (1 - 1e-6) - 1e-12
            keep = np.flatnonzero(active)
            cols = contrast_columns(c, sides, rows, keep, False, min_delta, min_prompts)
            frames.append(pd.DataFrame({"prompt_set": i, "split": s, "scope": c.scope, "target_layer": target,
                                        "target_feature": feats[keep], "delta": cols["delta"],
                                        "p_value": cols["p_value"], "p_prompts": cols["p_prompts"]}))
        del dens, passed
        yield pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=PLACEBO_COLUMNS)


def split_minima(frames: Iterable[pd.DataFrame], min_delta: float) -> pd.DataFrame:
    """Per (split, scope, level) over the study's frames (placebo_study's, reduced one at a time):
    the split's smallest p among its tests with |delta| > min_delta (every prompt set's and layer's
    together; NaN p left out; 1 where none), and how many it tested."""
    parts = []
    for study in frames:
        big = study[study["delta"].abs() > min_delta]
        for level, col in LEVELS.items():
            tests = study.groupby(["split", "scope"])[col].count()
            low = big.groupby(["split", "scope"])[col].min().reindex(tests.index)
            parts.append(pd.DataFrame({"tests": tests, "min_p": low}).reset_index().assign(level=level))
    if not parts:
        return pd.DataFrame(columns=["split", "scope", "level", "tests", "min_p"])
    m = pd.concat(parts, ignore_index=True).groupby(["split", "scope", "level"], as_index=False).agg(
        tests=("tests", "sum"), min_p=("min_p", "min"))
    return m.assign(min_p=m["min_p"].fillna(1.0))[["split", "scope", "level", "tests", "min_p"]]


def placebo_floors(minima: pd.DataFrame, splits: int, fwer: float) -> pd.DataFrame:
    """FLOOR_COLUMNS per (scope, level) with tests: `floor` = m_(j+1), j = floor(fwer * splits)
    (see the module's note; a claim needs p < floor), `rank` = j + 1, the median of the m_i."""
    rows = []
    j = int(np.floor(fwer * splits))
    for (scope, level), g in minima.groupby(["scope", "level"], sort=True):
        if not (g["tests"] > 0).any():
            continue  # nothing varies there between unpatched trials: nothing to calibrate
        m = np.sort(np.r_[g["min_p"].to_numpy(float), np.ones(splits - len(g))])
        rows.append({"scope": scope, "level": level, "splits": splits, "fwer": fwer, "rank": j + 1,
                     "floor": float(m[j]) if j < len(m) else 1.0, "min_p_median": float(np.median(m))})
    return pd.DataFrame(rows, columns=FLOOR_COLUMNS)


def read_floors(path: str) -> Floors:
    """placebo_floors' table as Floors: (scope, level) -> floor."""
    f = read_table(path)
    return dict(zip(zip(f["scope"], f["level"]), f["floor"].astype(float)))
