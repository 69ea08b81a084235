"""Mediation: how much of A's effect on C passes through what lies between them.

Every run is teacher-forced on the baseline trials' own tokens, in the baseline's batch shapes
(replay.trials.batches), so only the patches differ: the reference (no patch), A patched to its
condition's value (the total effect on C), and A patched while mediators are held at the values
they have in the reference, at every position A's patch touches, in the patch's own terms: a
decoder patch's hold is the decoder edit h += (ref - f_M(h)) u_M, any other mode's the clamp
h += (ref - pre_M(h)) d_M. Several mediators at one layer are held at once by three sweeps of
their holds in turn (Gauss-Seidel: each sweep puts every mediator back where the one before moved
it, so latents sharing a direction are held once, not twice). Per trial, C's measure is its mean
over the kept generated positions (the `forced` scope); total_i = C(A) - C(ref), direct_i =
C(A, held) - C(ref), indirect_i = total_i - direct_i; share = 1 - mean(direct) / mean(total).

Two tables:
- paths.tsv: per chain of headline edges (pathways.edges.chains: A -> M ... -> C, `hops` edges)
  and per intermediate M of it, M held alone: the share of A's effect on C that passes through M.
- layers.tsv: per (A, condition, C) and layer l between them, every latent at l with a forced
  headline edge from A held at once (`layer_share`): how much of the effect crosses layer l in
  the SAE's latents there, where one latent's share can double count what others carry.
Intervals: bootstrap resamples of prompts, then of trials within each (the prompts are the unit
that generalises). p: the sign-flip test of the indirect effects over trials (stats.signflip);
q: BH over each table; `mediated`: q < alpha, |indirect| > min_delta, and the sign of the total."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

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

EFFECT_COLUMNS = ["n_trials", "n_prompts", "total", "direct", "indirect", "share", "share_lo", "share_hi",
                  "p_indirect", "test", "q_indirect", "mediated"]
PATH_COLUMNS = ["path", "scope", "condition", "hops", "mediator", "delta_first", "q_first", "delta_last",
                "q_last"] + EFFECT_COLUMNS
LAYER_COLUMNS = ["source", "condition", "target", "layer", "mediators"] + EFFECT_COLUMNS
BOOT = 2000
SWEEPS = 3


class Slice(NamedTuple):
    """A feature at a block: its name and slice."""

    name: str
    block: int
    feature: Feature


class Hold(NamedTuple):
    """What one run holds: a key naming it (a mediator's name, or `L<layer>`) and the latents."""

    key: str
    latents: tuple[Slice, ...]


def _forced_means(model, tok, jobs: Sequence[Job], s: ReplaySettings, eng, patches: list[Patch],
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


def hold_patches(hold: Hold, ref: Mapping[str, tuple[torch.Tensor, torch.Tensor]], s: ReplaySettings) -> list[Patch]:
    """Patches that hold the latents at their reference values in the patch's own terms (module
    docstring), one latent alone once, several in SWEEPS sweeps."""
    mode = "decoder" if s.mode == "decoder" else "clamp"
    one = [Patch(m.block, m.feature, ref[m.name][0], mode, s.positions) for m in hold.latents]
    return one if len(one) == 1 else one * SWEEPS


def hold_trials(model, tok, a: Slice, holds: Sequence[Hold], ends: Sequence[Slice], jobs: Sequence[Job],
                tokens: pd.Series, s: ReplaySettings) -> pd.DataFrame:
    """Per trial of A's jobs (one condition), each end C's total and, per hold, direct effect (long
    format: hold, c, prompt_id, trial, total, direct); `tokens`: the baseline's."""
    eng = engine(model, tok, jobs, s)
    held = sorted({m for h in holds for m in h.latents}, key=lambda m: m.name)
    rows = []
    for part in batches(jobs, s.batch_size):
        forced = forced_tokens(tokens, part, s.max_new_tokens, tok.pad_token_id)
        pa = job_patch(part, a.block, a.feature, s)
        ref = _forced_means(model, tok, part, s, eng, [], forced, [*held, *ends])
        tot = _forced_means(model, tok, part, s, eng, [pa], forced, ends)
        for h in holds:
            direct = _forced_means(model, tok, part, s, eng, [pa, *hold_patches(h, ref, s)], forced, ends)
            for c in ends:
                if c.block <= min(m.block for m in h.latents):
                    continue  # a hold at or above C cannot mediate it
                for r, j in enumerate(part):
                    rows.append({"hold": h.key, "c": c.name, "prompt_id": j.prompt_id, "trial": j.trial,
                                 "total": float(tot[c.name][1][r] - ref[c.name][1][r]),
                                 "direct": float(direct[c.name][1][r] - ref[c.name][1][r])})
    return pd.DataFrame(rows, columns=["hold", "c", "prompt_id", "trial", "total", "direct"])


def share_interval(total: np.ndarray, direct: np.ndarray, prompts: np.ndarray | None = None,
                   seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of 1 - mean(direct) / mean(total): per resample the prompts drawn with
    replacement, then each drawn prompt's trials drawn anew (all one prompt when `prompts` is
    None); from the resamples whose mean total is not 0 (NaN when none is)."""
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(prompts == p) for p in pd.unique(prompts)] if prompts is not None \
        else [np.arange(len(total))]
    k = len(groups)
    pick = rng.integers(0, k, (BOOT, k))  # the prompts each resample draws
    tot, dirs, cnt = np.zeros(BOOT), np.zeros(BOOT), np.zeros(BOOT)
    for g, rows in enumerate(groups):  # every draw of prompt g gets trials drawn of its own
        draws = rng.integers(0, len(rows), (BOOT, k, len(rows)))
        at = (pick == g)[..., None]
        tot += (total[rows][draws] * at).sum((1, 2))
        dirs += (direct[rows][draws] * at).sum((1, 2))
        cnt += at.sum((1, 2)) * len(rows)
    with np.errstate(divide="ignore", invalid="ignore"):
        shares = 1 - (dirs / cnt) / (tot / cnt)
    shares = shares[np.isfinite(shares)]
    return (float(np.quantile(shares, 0.025)), float(np.quantile(shares, 0.975))) if len(shares) else (np.nan, np.nan)


def effect(t: pd.DataFrame) -> dict[str, float | int | str]:
    """One mediation's EFFECT_COLUMNS but q and mediated, from its trials (total, direct, prompt_id)."""
    if t.empty:
        return {"n_trials": 0, "n_prompts": 0, "total": np.nan, "direct": np.nan, "indirect": np.nan,
                "share": np.nan, "share_lo": np.nan, "share_hi": np.nan, "p_indirect": np.nan, "test": "none"}
    total, direct = t["total"].to_numpy(), t["direct"].to_numpy()
    p, test = paired_p((total - direct)[:, None])
    tm, dm = total.mean(), direct.mean()
    lo, hi = share_interval(total, direct, t["prompt_id"].to_numpy())
    return {"n_trials": len(t), "n_prompts": int(t["prompt_id"].nunique()), "total": tm, "direct": dm,
            "indirect": tm - dm, "share": 1 - dm / tm if tm else np.nan, "share_lo": lo, "share_hi": hi,
            "p_indirect": float(p[0]), "test": str(test[0])}


def judged(out: pd.DataFrame, alpha: float, min_delta: float) -> pd.DataFrame:
    """q_indirect (BH over the table) and mediated: q < alpha, |indirect| > min_delta, the total's sign."""
    q = bh(out["p_indirect"].to_numpy(float))
    return out.assign(q_indirect=q, mediated=(q < alpha) & (out["indirect"].abs() > min_delta)
                      & (np.sign(out["indirect"]) == np.sign(out["total"])))


def to_mediate(chains: pd.DataFrame, n: int) -> pd.DataFrame:
    """The `n` best distinct chains in chains.tsv's order. A chain found in both scopes is one
    chain here (its forced row): mediation measures the forced scope whichever found it."""
    later = chains["scope"] != "forced"
    first = chains.assign(_later=later).sort_values("_later", kind="stable")
    return first.drop_duplicates(["a", "mids", "c", "condition"]).sort_index().drop(columns="_later").head(n)


class Mediation(NamedTuple):
    """paths.tsv and layers.tsv."""

    paths: pd.DataFrame
    layers: pd.DataFrame


def mediate(model, tok, chains: pd.DataFrame, candidates: Mapping[tuple[str, str], Sequence[Slice]],
            slices: Mapping[str, Slice], jobs_of: Mapping[tuple[str, str], Sequence[Job]], base: pd.DataFrame,
            s: ReplaySettings, alpha: float, min_delta: float) -> Mediation:
    """Both tables for `chains` (pathways.edges.chains): per (A, condition), one run of A's jobs per
    intermediate of its chains and per layer between A and its chains' ends, holding there every
    latent of candidates[(A, condition)] (A's forced headline targets). `slices` name every
    feature; `jobs_of[(A, condition)]` are A's jobs."""
    tokens = baseline_tokens(base)
    paths, layers = [], []
    for (a, cond), g in chains.groupby(["a", "condition"], sort=False):
        src = slices[a]
        ends = [slices[c] for c in sorted(set(g["c"]))]
        mids = sorted({m for ms in g["mids"] for m in ms.split("|")})
        top = max(c.block for c in ends)
        by_layer: dict[int, list[Slice]] = {}
        for m in candidates.get((a, cond), []):
            if src.block < m.block < top:
                by_layer.setdefault(m.block, []).append(m)
        holds = [Hold(m, (slices[m],)) for m in mids] + [Hold(f"L{b}", tuple(ms)) for b, ms in sorted(by_layer.items())]
        t = hold_trials(model, tok, src, holds, ends, jobs_of[(a, cond)], tokens, s)
        by = {k: x for k, x in t.groupby(["hold", "c"])}
        for ch in g.itertuples():
            for m in ch.mids.split("|"):
                paths.append({"path": ch.path, "scope": ch.scope, "condition": cond, "hops": ch.hops, "mediator": m,
                              "delta_first": ch.delta_first, "q_first": ch.q_first, "delta_last": ch.delta_last,
                              "q_last": ch.q_last, **effect(by.get((m, ch.c), t.iloc[:0]))})
        for c in ends:
            for b, ms in sorted(by_layer.items()):
                if b < c.block:
                    layers.append({"source": a, "condition": cond, "target": c.name, "layer": b,
                                   "mediators": len(ms), **effect(by.get((f"L{b}", c.name), t.iloc[:0]))})
    p = pd.DataFrame(paths, columns=PATH_COLUMNS[:-2])
    lay = pd.DataFrame(layers, columns=LAYER_COLUMNS[:-2])
    return Mediation(judged(p, alpha, min_delta)[PATH_COLUMNS], judged(lay, alpha, min_delta)[LAYER_COLUMNS])
