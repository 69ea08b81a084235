"""Which trials a contrast pairs: every condition of a source's trials against the baseline trials
of the same prompt and trial number (one seed), in each scope, and the placebo trials likewise."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from ..replay.plan import control_of

CONTROLS = ("real", "sham", "random", "placebo")
SCOPES = ("prompt_last", "generated", "forced")


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


def pairs_of(treated: pd.DataFrame, control: pd.DataFrame, condition: str, kept: bool = False) -> Pairs:
    """Pair treated and control trials that share a prompt and a trial number (one seed); rows of
    either side without a partner are dropped, and with `kept` the pairs where either trial kept
    no generated position (it stopped at its first token: its mean over kept positions is no
    number, not 0). Both tables need prompt_id, trial, part and row (and n_positions)."""
    m = treated.merge(control, on=["prompt_id", "trial"], suffixes=("_t", "_c"))
    if kept:
        m = m[(m["n_positions_t"] > 0) & (m["n_positions_c"] > 0)]
    return Pairs(condition, m["prompt_id"].to_numpy(), list(zip(m["part_t"], m["row_t"])),
                 list(zip(m["part_c"], m["row_c"])))


def contrasts(patched: pd.DataFrame, baseline: pd.DataFrame) -> list[Contrast]:
    """Every condition of one feature's trials against the baseline, in every scope: the last
    prompt position over every pair, the generated positions over the pairs whose two trials both
    kept one. (The placebo is a calibration study of its own: effects.placebo.)"""
    main = baseline[baseline["condition"] == "baseline"]
    out = []
    for cond, g in patched.groupby("condition", sort=True):
        ctl = control_of(str(cond))
        gen, frc = g[g["run"] == "generated"], g[g["run"] == "forced"]
        out += [Contrast(cond, ctl, "prompt_last", "last", pairs_of(gen, main, cond)),
                Contrast(cond, ctl, "generated", "gen", pairs_of(gen, main, cond, kept=True)),
                Contrast(cond, ctl, "forced", "gen", pairs_of(frc, main, cond, kept=True))]
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
