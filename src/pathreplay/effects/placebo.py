"""The placebo as a calibration study: how often the tests call a difference where there is none.

A prompt's baseline trials and its placebo trials (the same prompt on an independent seed stream)
are 2n exchangeable draws of the unpatched model. A split shuffles them, calls the first n
`treated` and the other n `control`, and pairs them in order; every split goes through the same
code as a real contrast (dense codes, contrasts' columns, the sign-flip tests at trial and at
prompt level) over every captured layer. The distinct prompt sets of the replay (one per set of
prompts some source was replayed on) are each studied once, so no test is counted twice
however many sources share their prompts. pathways.checks.placebo_summary judges each split at
the real family's BH cutoff. The forced scope has no placebo (teacher forcing an unpatched run
on another's tokens is that run again): its null is the random control."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from ..replay.plan import PLACEBO, stable_seed
from .codes import dense
from .columns import SharedSides, contrast_columns
from .contrasts import Contrast, Pairs, _pair_rows

PLACEBO_COLUMNS = ["prompt_set", "split", "scope", "target_layer", "target_feature", "delta", "p_value", "p_prompts"]


def split_pairs(baseline: pd.DataFrame, prompts: Sequence[str], split: int, seed: int) -> Pairs:
    """One split of the exchangeable unpatched trials of `prompts` (baseline and placebo streams,
    `part` and `row` naming them in the codes) into paired halves, drawn from (seed, split, prompt)."""
    prompt, treated, control = [], [], []
    for pid in prompts:
        t = baseline[(baseline["prompt_id"] == pid) & baseline["condition"].isin(["baseline", PLACEBO])]
        t = t.sort_values(["condition", "trial"])
        order = np.random.default_rng(stable_seed(seed, "placebo split", split, pid)).permutation(len(t))
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
                  min_prompts: int) -> Iterator[pd.DataFrame]:
    """Every split's tests (PLACEBO_COLUMNS), layer by layer, for each distinct prompt set."""
    positions = dict(zip(zip(baseline["part"], baseline["row"]), baseline["n_positions"]))
    cons, labels = [], []
    for i, prompts in enumerate(prompt_sets):
        for s in range(splits):
            pairs = split_pairs(baseline, prompts, s, seed)
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
            keep = np.flatnonzero(active)
            cols = contrast_columns(c, sides, rows, keep, False, min_delta, min_prompts)
            frames.append(pd.DataFrame({"prompt_set": i, "split": s, "scope": c.scope, "target_layer": target,
                                        "target_feature": feats[keep], "delta": cols["delta"],
                                        "p_value": cols["p_value"], "p_prompts": cols["p_prompts"]}))
        del dens, passed
        yield pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=PLACEBO_COLUMNS)
