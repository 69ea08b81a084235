"""Mediation of a chain A -> B -> C: how much of A's effect on C passes through B.

Every run is teacher-forced on the baseline trials' own tokens, in the baseline's batch shapes
(replay.trials.batches), so only the patches differ: the reference (no patch), A patched to its
condition's value (the total effect on C), and A patched while B is clamped, at every position
A's patch touches, to the value B has there in the reference (the direct effect, B held). Per
trial, C's measure is its mean over the kept generated positions (the `forced` scope);
total_i = C(A) - C(ref), direct_i = C(A, B held) - C(ref), indirect_i = total_i - direct_i.
Over trials: indirect_share = 1 - mean(direct) / mean(total) with a bootstrap interval over
trials, and the indirect effect's paired test (stats.signflip.paired_p)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch

from ..replay.coupled import baseline_tokens, forced_tokens
from ..replay.plan import CaptureSpec, Job
from ..replay.trials import ReplaySettings, batches, engine, job_patch
from ..runtime.generate import generate
from ..runtime.patch import Interventions, Patch
from ..sae.exact import Feature
from ..stats.multiple import bh
from ..stats.signflip import paired_p

PATH_COLUMNS = ["path", "scope", "condition", "delta_ab", "q_ab", "delta_bc", "q_bc", "n_trials", "total", "direct",
                "indirect", "indirect_share", "share_lo", "share_hi", "p_indirect", "test", "q_indirect", "mediated"]
BOOT = 2000


class Slice(NamedTuple):
    """A feature at a block: its name and slice."""

    name: str
    block: int
    feature: Feature


def _forced_means(model: Any, tok: Any, jobs: Sequence[Job], s: ReplaySettings, eng: Any, patches: list[Patch],
                  forced: torch.Tensor, read: Sequence[Slice]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """One teacher-forced batch: per read feature, its value at every patched step, [rows,
    max_new_tokens] (column 0 the prompt's last position, NaN past the batch's last step), and
    its mean over each row's kept generated positions [rows]."""
    iv = Interventions(model, patches, sorted({r.block for r in read}))
    gen = generate(model, tok, [j.text for j in jobs], [j.seed for j in jobs], max_new_tokens=s.max_new_tokens,
                   temperature=s.temperature, interventions=iv, engine=eng, forced=forced)
    keep = torch.tensor(CaptureSpec.parse(s.capture).positions(s.max_new_tokens), dtype=torch.long)
    states = {b: iv.states(b).float() for b in {r.block for r in read}}
    out = {}
    for r in read:
        vals = r.feature.value(states[r.block])  # [rows, 1 + steps]
        steps = vals.shape[1] - 1
        k = keep[keep < steps]
        own = k[None, :] < (gen.lengths[:, None] - 1)
        mean = (vals[:, 1 + k] * own).sum(1) / own.sum(1).clamp(min=1)
        full = torch.full((len(jobs), s.max_new_tokens), float("nan"))
        full[:, : vals.shape[1]] = vals
        out[r.name] = (full, mean)
    return out


def chain_trials(model: Any, tok: Any, a: Slice, mids: Sequence[Slice], ends: Sequence[Slice], jobs: Sequence[Job],
                 tokens: pd.Series, s: ReplaySettings) -> pd.DataFrame:
    """Per trial of A's jobs (one condition): C's reference, total and, per B, direct measure,
    for every C of `ends` (long format: b, c, trial, prompt_id, total, direct); `tokens`: the
    baseline's (replay.coupled.baseline_tokens)."""
    eng = engine(model, tok, jobs, s)
    rows = []
    for part in batches(jobs, s.batch_size):
        forced = forced_tokens(tokens, part, s.max_new_tokens, tok.pad_token_id)
        pa = job_patch(part, a.block, a.feature, s)
        ref = _forced_means(model, tok, part, s, eng, [], forced, [*mids, *ends])
        tot = _forced_means(model, tok, part, s, eng, [pa], forced, ends)
        for b in mids:
            held = Patch(b.block, b.feature, ref[b.name][0], "clamp", s.positions)
            direct = _forced_means(model, tok, part, s, eng, [pa, held], forced, ends)
            for c in ends:
                for r, j in enumerate(part):
                    rows.append({"b": b.name, "c": c.name, "prompt_id": j.prompt_id, "trial": j.trial,
                                 "total": float(tot[c.name][1][r] - ref[c.name][1][r]),
                                 "direct": float(direct[c.name][1][r] - ref[c.name][1][r])})
    return pd.DataFrame(rows, columns=["b", "c", "prompt_id", "trial", "total", "direct"])


def share_interval(total: np.ndarray, direct: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of 1 - mean(direct) / mean(total) over trials, from the resamples
    whose mean total is not 0 (NaN when none is)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(total), size=(BOOT, len(total)))
    with np.errstate(divide="ignore", invalid="ignore"):
        shares = 1 - direct[idx].mean(1) / total[idx].mean(1)
    shares = shares[np.isfinite(shares)]
    return (float(np.quantile(shares, 0.025)), float(np.quantile(shares, 0.975))) if len(shares) else (np.nan, np.nan)


def summarise(chains: pd.DataFrame, per_trial: pd.DataFrame, alpha: float, min_delta: float) -> pd.DataFrame:
    """paths.tsv: each chain's hops with its total, direct and indirect effect on C, the indirect
    share with its interval, the indirect effect's p and q (BH over the chains) and `mediated`:
    q < alpha, |indirect| > min_delta, and the indirect effect of the total's sign."""
    rows = []
    by_chain = dict(list(per_trial.groupby(["a", "b", "c", "condition"])))
    for ch in chains.itertuples():
        t = by_chain.get((ch.a, ch.b, ch.c, ch.condition), per_trial.iloc[:0])
        total, direct = t["total"].to_numpy(), t["direct"].to_numpy()
        indirect = total - direct
        p, test = paired_p(indirect[:, None]) if len(t) else (np.array([np.nan]), np.array(["none"]))
        tm, dm = (total.mean(), direct.mean()) if len(t) else (np.nan, np.nan)
        share = 1 - dm / tm if tm else np.nan
        lo, hi = share_interval(total, direct) if len(t) else (np.nan, np.nan)
        rows.append({"path": ch.path, "scope": ch.scope, "condition": ch.condition, "delta_ab": ch.delta_ab,
                     "q_ab": ch.q_ab, "delta_bc": ch.delta_bc, "q_bc": ch.q_bc, "n_trials": len(t), "total": tm,
                     "direct": dm, "indirect": tm - dm, "indirect_share": share, "share_lo": lo, "share_hi": hi,
                     "p_indirect": float(p[0]), "test": str(test[0])})
    out = pd.DataFrame(rows, columns=PATH_COLUMNS[:-2])
    out["q_indirect"] = bh(out["p_indirect"].to_numpy(float))
    out["mediated"] = ((out["q_indirect"] < alpha) & (out["indirect"].abs() > min_delta)
                       & (np.sign(out["indirect"]) == np.sign(out["total"])))
    return out[PATH_COLUMNS]


def to_mediate(chains: pd.DataFrame, n: int) -> pd.DataFrame:
    """The `n` best distinct chains in chains.tsv's order. A chain found in both scopes is one
    chain here (its forced row): mediation measures the forced scope whichever found it."""
    later = chains["scope"] != "forced"
    first = chains.assign(_later=later).sort_values("_later", kind="stable")
    return first.drop_duplicates(["a", "b", "c", "condition"]).sort_index().drop(columns="_later").head(n)


def mediate(model: Any, tok: Any, chains: pd.DataFrame, slices: Mapping[str, Slice],
            jobs_of: Mapping[tuple[str, str], Sequence[Job]], base: pd.DataFrame, s: ReplaySettings,
            alpha: float, min_delta: float) -> pd.DataFrame:
    """paths.tsv for `chains` (pathways.edges.chains): per (A, condition), the forced runs of every B
    and C of A's chains; `slices` name every A, B and C; `jobs_of[(A, condition)]` are A's jobs."""
    tokens = baseline_tokens(base)
    parts = []
    for (a, cond), g in chains.groupby(["a", "condition"], sort=False):
        mids = [slices[b] for b in sorted(set(g["b"]))]
        ends = [slices[c] for c in sorted(set(g["c"]))]
        t = chain_trials(model, tok, slices[a], mids, ends, jobs_of[(a, cond)], tokens, s)
        parts.append(t.assign(a=a, condition=cond))
    per_trial = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["a", "b", "c", "condition", "total", "direct"])
    return summarise(chains, per_trial, alpha, min_delta)
