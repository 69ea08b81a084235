"""One contrast's columns at one target layer (means, delta, effect size, the paired test) over
the layer's targets.

Bits: every column is computed as `numpy` computes it over the [pairs, targets] float64 matrix of
a contrast (C order: sums over pairs run one pair after another, the same in any column subset of
2 or more, stats.signflip.take_columns), so a side shared by contrasts (the baseline trials every
condition is paired with) is reduced once, over the whole layer, and its columns taken."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..errors import fail
from ..stats.signflip import PairedTest, paired_test
from .contrasts import Contrast

MIN_PROMPTS_TESTED = 3  # below this the smallest sign-flip p across prompts is 2 / 2^2 = 0.5


class Side(NamedTuple):
    """One side's float64 codes [pairs, targets] and their column mean and variance (ddof 0)."""

    x: np.ndarray
    mean: np.ndarray
    var: np.ndarray


def _side(m: np.ndarray, rows: np.ndarray, keep: np.ndarray) -> Side:
    """m's rows `rows`, columns `keep`, as float64 (float32 codes: exact), with mean and variance."""
    x = m[np.ix_(rows, keep)].astype(float)
    mean = x.mean(0)
    return Side(x, mean, x.var(0, mean=mean[None, :]))


class SharedSides:
    """The baseline side of a layer's contrasts, reduced once per (column, rows) over every target
    and then cut to a contrast's targets (same bits: see the module's note)."""

    def __init__(self, dense_codes: dict[str, np.ndarray]) -> None:
        self.dense, self.full = dense_codes, {}

    def get(self, column: str, rows: np.ndarray, keep: np.ndarray) -> Side:
        m = self.dense[column]
        if len(keep) < 2 or m.shape[1] < 2:  # a lone column reduces pairwise: as the contrast would
            return _side(m, rows, keep)
        s = self.whole(column, rows)
        return Side(np.take(s.x, keep, axis=1), s.mean[keep], s.var[keep])

    def whole(self, column: str, rows: np.ndarray) -> Side:
        """The side over every target (computed once: call it before threads share this)."""
        key = (column, rows.tobytes())
        if key not in self.full:
            self.full[key] = _side(self.dense[column], rows, np.arange(self.dense[column].shape[1]))
        return self.full[key]


def _summary(a: Side, b: Side, delta: np.ndarray, per_prompt: np.ndarray, min_delta: float,
             min_prompts: int) -> dict[str, np.ndarray]:
    """Means, effect size (delta / sqrt((var_a + var_b) / 2), +-inf where both sides are constant
    and delta is not 0, NaN where it is) and the prompts that replicate delta's sign (|prompt
    mean| > min_delta) or oppose it; robust: >= min_prompts replicate and none opposes."""
    spread = np.sqrt((a.var + b.var) / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        es = np.where(spread > 0, delta / spread, np.sign(delta) * np.inf)
    big = np.abs(per_prompt) > min_delta
    rep = ((np.sign(per_prompt) == np.sign(delta)) & big).sum(0)
    opp = ((np.sign(per_prompt) == -np.sign(delta)) & big).sum(0)
    return {"mean_baseline": b.mean, "mean_patched": a.mean, "delta": delta, "effect_size": es,
            "robust": (rep >= min_prompts) & (opp == 0), "prompts_replicated": rep, "prompts_opposite": opp}


def _tested(scope: str, d: np.ndarray, starts: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """(test columns, delta, per-prompt means) of paired differences d [pairs, targets] (treated
    minus control), pair-aligned and grouped by prompt (a prompt's pairs from row starts[i] on;
    its mean is its rows' sum, added in row order, over their count). prompt_last: the sign-flip
    test across the prompts' means (none below MIN_PROMPTS_TESTED prompts); the trial scopes:
    stats.signflip.paired_test over the pairs."""
    m = d.shape[1]
    counts = np.diff(np.r_[starts, len(d)])
    per_prompt = np.add.reduceat(d, starts, axis=0) / counts[:, None] if len(d) else np.zeros((0, m))
    delta = d.mean(0)
    if scope == "prompt_last":
        r = _across_prompts(per_prompt)
        cols = {"p_value": r.p, "test": r.code, "n": np.full(m, len(starts)), "n_nonzero": r.k}
    else:
        r = paired_test(d)
        cols = {"p_value": r.p, "test": r.code, "n": np.full(m, len(d)), "n_nonzero": r.k}
    return cols, delta, per_prompt


def _across_prompts(per_prompt: np.ndarray) -> PairedTest:
    """The sign-flip test over the prompts' means [prompts, targets]; none below MIN_PROMPTS_TESTED
    prompts (NaN, code 0)."""
    m = per_prompt.shape[1]
    if len(per_prompt) < MIN_PROMPTS_TESTED:
        return PairedTest(np.full(m, np.nan), np.zeros(m, np.int8), (per_prompt != 0).sum(0))
    return paired_test(per_prompt)


def _unchanged(scope: str, b: Side, n_pairs: int, n_prompts: int) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """_tested's columns where the treated side equals the control side to the bit (checked): d is
    +0 everywhere, so delta and every prompt mean are 0, k = 0 and nothing is tested."""
    m = len(b.mean)
    n = n_prompts if scope == "prompt_last" else n_pairs
    cols = {"p_value": np.full(m, np.nan), "test": np.zeros(m, np.int8), "n": np.full(m, n),
            "n_nonzero": np.zeros(m, np.int64)}
    return cols, np.zeros(m), np.zeros((n_prompts, m))


def check_exact(c: Contrast, m: np.ndarray, treated: np.ndarray, control: np.ndarray, layer: int, upstream: bool,
                where: str) -> None:
    """A sham changes nothing anywhere; nothing changes upstream of a forced patch."""
    d = m[treated] - m[control]
    if np.any(d != 0):
        what = "the sham patch" if c.control == "sham" else f"{c.condition}, teacher-forced,"
        fail(where, f"{what} changed {int((d != 0).any(0).sum())} features at layer {layer} in scope {c.scope} "
             f"(max |difference| {np.abs(d).max():.3g}); the replay is not exact",
             "rerun this shard; if it recurs, the replay machinery has a bug: report it with this line")


def _decomposed(scope: str, d: np.ndarray, passed: np.ndarray | None, decomposed: bool, delta: np.ndarray,
                cols: dict[str, np.ndarray], per_prompt: np.ndarray, starts: np.ndarray) -> dict[str, np.ndarray]:
    """The total's split: delta_passthrough (the mean read-through of the patch's own step),
    delta_computed (the mean of d less it) and p_computed (the same test on d less it, over these
    trials), and p_prompts: the sign-flip test of the computed part across the prompts' means
    (the claim about prompts: none below MIN_PROMPTS_TESTED prompts). Without a read-through
    (`passed` None: upstream, placebo) the computed part is the total; where the patch is no
    multiple of one vector (`decomposed` False: reconstruct) none of these is known."""
    m = d.shape[1]
    if not decomposed:
        nan = np.full(m, np.nan)
        return {"delta_passthrough": nan, "delta_computed": nan, "p_computed": nan, "p_prompts": nan}
    if passed is None or not passed.any():
        comp, delta_c, through = cols, delta, np.zeros(m)
    else:
        comp, delta_c, per_prompt = _tested(scope, d - passed, starts)
        through = passed.mean(0)
    p_prompts = comp["p_value"] if scope == "prompt_last" else _across_prompts(per_prompt).p
    return {"delta_passthrough": through, "delta_computed": delta_c, "p_computed": comp["p_value"],
            "p_prompts": p_prompts}


def contrast_columns(c: Contrast, sides: SharedSides, rows: tuple[np.ndarray, np.ndarray, np.ndarray],
                     keep: np.ndarray, exact: bool, min_delta: float, min_prompts: int,
                     passed: np.ndarray | None = None, decomposed: bool = True) -> dict[str, np.ndarray]:
    """Every column of one contrast's rows (targets `keep`); `exact`: its treated codes are
    known (checked) to equal its control codes, so only the control side is reduced; `passed`:
    the treated trials' read-through codes [pairs, keep] (sae.passthrough; None: none)."""
    treated, control, starts = rows
    b = sides.get(c.column, control, keep)
    if exact:
        cols, delta, per_prompt = _unchanged(c.scope, b, len(treated), len(starts))
        a = b
        split = {"delta_passthrough": np.zeros(len(keep)), "delta_computed": delta, "p_computed": cols["p_value"],
                 "p_prompts": np.full(len(keep), np.nan)}
    else:
        a = _side(sides.dense[c.column], treated, keep)
        d = a.x - b.x
        cols, delta, per_prompt = _tested(c.scope, d, starts)
        split = _decomposed(c.scope, d, passed, decomposed, delta, cols, per_prompt, starts)
    return {**cols, **split, **_summary(a, b, delta, per_prompt, min_delta, min_prompts),
            "n_trials": len(treated), "n_prompts": len(starts)}
