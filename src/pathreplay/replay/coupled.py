"""The replay's runs, coupled trial by trial: each prompt's baseline (and placebo) trials, and
each source feature's patched trials under every condition with its controls.

For every (feature, prompt, trial block) and real condition c, four batches share the baseline
batch's shapes and seeds:
- `c`, generated: sampled with the patch (the total effect: the patch and the tokens it changes);
- `c`, forced: teacher-forced on the baseline trial's own tokens with the same patch at the same
  positions (the direct effect at matched positions: only the patch differs from the baseline);
- `random:c`, generated and forced: a patch along a fixed random unit direction (orthogonal to
  the feature's encoder and decoder rows, so it does not move the source itself) with the real
  patch's ||dh|| at every patched step;
and per block one `sham` pair (generated and forced): the decoder edit to each row's own current
value, a patch that changes nothing through every step a real one takes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch

from ..runtime.patch import Patch
from ..sae.exact import Feature, SAESource
from .plan import (
    PLACEBO,
    SHAM,
    Condition,
    Job,
    baseline_jobs,
    control_of,
    patched_jobs,
    random_condition,
    stable_seed,
    trial_seed,
)
from .prompts import Prompt
from .trials import (
    Batch,
    Progress,
    ReplayResult,
    ReplaySettings,
    batches,
    engine,
    from_batches,
    job_patch,
    run_batch,
    run_jobs,
    stack_results,
)


def run_baseline(model: Any, tok: Any, prompt: Prompt, trials: int, seed: int, s: ReplaySettings,
                 placebo: bool = False) -> ReplayResult:
    """One prompt's unpatched trials, then (with placebo) as many on an independent seed stream."""
    jobs = baseline_jobs([prompt], trials, seed)
    if placebo:
        jobs += baseline_jobs([prompt], trials, seed, stream="placebo", condition=PLACEBO)
    res = run_jobs(model, tok, jobs, s, desc=f"baseline {prompt.id}")
    # Patched tables carry these columns too, so baseline and patched tables concatenate.
    return res._replace(trials=res.trials.assign(feature="", layer=-1, feature_id=-1))


def random_direction(feature: Feature, seed: int, name: str, condition: str) -> torch.Tensor:
    """A unit direction drawn from (seed, feature, condition), orthogonal to the feature's encoder
    row w and decoder row u (Gram-Schmidt in float64): moving along it leaves the feature's own
    pre-activation where it was, so the random control moves the residual as far as the real
    patch without switching the source on or off."""
    g = torch.Generator().manual_seed(stable_seed(seed, "random", name, condition))
    r = torch.randn(feature.u.shape[-1], generator=g, dtype=torch.float64)
    basis, _ = torch.linalg.qr(torch.stack([feature.w.double().cpu(), feature.u.double().cpu()], 1))
    for _ in range(2):  # twice: what rounding leaves of the first pass goes too
        r -= basis @ (basis.T @ r)
    return (r / r.norm()).float()


def patch_vectors(trials: pd.DataFrame, features: Mapping[str, tuple[int, Feature]], mode: str, seed: int
                  ) -> dict[tuple[str, str], torch.Tensor]:
    """(feature, condition) -> the vector each of a shard's patches moved h along per unit of its
    recorded step (runtime.patch.vector): the decoder row for `decoder` and the sham, u / (w.u)
    for `clamp` and `add`, the random direction for `random:<condition>`. `reconstruct` edits are
    no multiple of one vector: they have none (their read-through is not separated)."""
    out = {}
    for name, cond in trials[["feature", "condition"]].drop_duplicates().itertuples(index=False):
        feat = features[name][1]
        kind = control_of(cond)
        if kind == "random":
            out[(name, cond)] = random_direction(feat, seed, name, cond.removeprefix("random:"))
        elif kind == "sham" or mode == "decoder":
            out[(name, cond)] = feat.u.float().cpu()
        elif mode in ("clamp", "add"):
            out[(name, cond)] = feat.direction.float().cpu()
    return out


def baseline_tokens(baseline: pd.DataFrame) -> pd.Series:
    """The baseline trials' generated tokens by (prompt_id, trial): what the forced runs are fed."""
    b = baseline[(baseline["condition"] == "baseline") & (baseline["run"] == "generated")]
    return b.set_index(["prompt_id", "trial"])["tokens"]


def forced_tokens(by_trial: pd.Series, jobs: Sequence[Job], width: int, pad: int) -> torch.Tensor:
    """[len(jobs), width]: each job's baseline trial's tokens (baseline_tokens), padded."""
    out = torch.full((len(jobs), width), pad, dtype=torch.long)
    for r, j in enumerate(jobs):
        toks = list(by_trial.loc[(j.prompt_id, j.trial)])
        out[r, : len(toks)] = torch.tensor(toks, dtype=torch.long)
    return out


def _random_values(stats: torch.Tensor, lengths: Sequence[int], steps: int) -> torch.Tensor:
    """Per-step ||dh|| of a real batch, [rows, 1 + steps]: its own steps as recorded, and past a
    row's own tokens (a random run may go on longer) the mean of its own steps."""
    dh = stats[3]
    out = torch.full((dh.shape[0], 1 + steps), float("nan"))
    out[:, : dh.shape[1]] = dh
    for r, n in enumerate(lengths):
        own = dh[r, 1: n].nan_to_num()  # decode steps fed this row's tokens: n_tokens - 1
        fill = float(own.mean()) if len(own) else float(dh[r, 0].nan_to_num())
        out[r, n:] = fill
    return out


def feature_batches(model: Any, tok: Any, name: str, block: int, feat: Feature, jobs: Sequence[Job],
                    tokens: pd.Series | None, seed: int, s: ReplaySettings, eng: Any, sae: Any = None) -> list[Batch]:
    """Every batch of one feature: per (prompt, condition, trial block) the real condition
    generated and forced, and its random control both ways; the sham's pairs. `tokens`: the
    baseline's (baseline_tokens), or None: the sampled runs alone (the behaviour replay)."""
    pad = tok.pad_token_id
    parts = batches(jobs, s.batch_size)
    runs = 1 if tokens is None else 2
    progress = Progress(sum(runs if p[0].condition == SHAM else 2 * runs for p in parts), f"patched {name}")
    done: list[Batch] = []
    directions: dict[str, torch.Tensor] = {}
    for part in parts:
        cond = part[0].condition
        forced = forced_tokens(tokens, part, s.max_new_tokens, pad) if tokens is not None else None
        where = f"{name} {cond} on {part[0].prompt_id}"
        ways = [("generated", None)] + ([("forced", forced)] if forced is not None else [])
        if cond == SHAM:
            sham = [Patch(block, feat, torch.zeros(len(part)), "sham", s.positions)]
            done += [progress(run_batch(model, tok, part, s, eng, patches=sham, forced=toks, run=run, where=where))
                     for run, toks in ways]
            continue
        real = [job_patch(part, block, feat, s, sae)]
        made = [progress(run_batch(model, tok, part, s, eng, patches=real, forced=toks, run=run, where=where))
                for run, toks in ways]
        done += made
        if cond not in directions:
            directions[cond] = random_direction(feat, seed, name, cond)
        r = directions[cond]
        rjobs = [j._replace(condition=random_condition(cond)) for j in part]
        for b, (run, toks) in zip(made, ways):
            assert b.stats is not None
            values = _random_values(b.stats, [rec["n_tokens"] for rec in b.records], s.max_new_tokens - 1)
            rand = [Patch(block, feat, values, "random", s.positions, direction=r)]
            done.append(progress(run_batch(model, tok, rjobs, s, eng, patches=rand, forced=toks, run=run, where=where)))
    progress.close()
    return done


def run_behaviour(model: Any, tok: Any, selected: pd.DataFrame, plan: pd.DataFrame, prompts: Mapping[str, Prompt],
                  features: Mapping[str, tuple[int, Feature]], conditions: Sequence[Condition], seed: int,
                  s: ReplaySettings) -> pd.DataFrame:
    """The behaviour replay: each feature of `selected` (by name) sampled under each condition and
    its random control on the behaviour prompts, as many trials as `plan` (feature, prompt_id,
    condition, trials) says, on the `behaviour` seed stream (coupled with behaviour_baseline's
    trials); decisions only, nothing captured. Returns the trials."""
    by = {c.name: c for c in conditions}
    out = []
    for name, row in selected.iterrows():
        block, feat = features[name]
        mine = plan[plan["feature"] == name]
        jobs = [Job(p.id, p.context, p.text, c, t, trial_seed(seed, p.id, t, "behaviour"),
                    by[c].scale * float(getattr(row, by[c].column)))
                for pid, c, n in zip(mine["prompt_id"], mine["condition"], mine["trials"])
                for p in [prompts[pid]] for t in range(int(n))]
        jobs.sort(key=lambda j: (j.prompt_id, j.condition, j.trial))
        done = feature_batches(model, tok, name, block, feat, jobs, None, seed, s, engine(model, tok, jobs, s))
        res = from_batches(done, ())
        out.append(res.trials.assign(feature=name, layer=block, feature_id=int(row["feature_id"])))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def behaviour_baseline(model: Any, tok: Any, plan: pd.DataFrame, prompts: Mapping[str, Prompt], seed: int,
                       s: ReplaySettings) -> pd.DataFrame:
    """The behaviour prompts' unpatched trials on the `behaviour` stream, as many per prompt as
    any feature's plan there asks for."""
    need = plan.groupby("prompt_id")["trials"].max()
    jobs = [Job(p.id, p.context, p.text, "baseline", t, trial_seed(seed, p.id, t, "behaviour"))
            for pid, n in need.items() for p in [prompts[pid]] for t in range(int(n))]
    res = run_jobs(model, tok, jobs, s, desc="behaviour baseline")
    return res.trials.assign(feature="", layer=-1, feature_id=-1)


def run_features(model: Any, tok: Any, selected: pd.DataFrame, plan: pd.DataFrame,
                 prompts: Mapping[str, Prompt], features: Mapping[str, tuple[int, Feature]],
                 conditions: Sequence[Condition], trials: int, seed: int, s: ReplaySettings,
                 baseline: pd.DataFrame, *, saes: SAESource | None = None,
                 device: str | torch.device = "cpu") -> ReplayResult:
    """Patched trials of every feature of `selected` (indexed by name, in that order) on its
    prompts in `plan` (feature, prompt_id), with the controls, as one result; `features`: name
    -> (block, feature slice); `baseline`: the baseline trials (their tokens are what the forced
    runs are fed). `saes` is read only in reconstruct mode."""
    tokens = baseline_tokens(baseline)
    results = []
    for name, row in selected.iterrows():
        block, feat = features[name]
        # One whole SAE in memory at a time: the previous feature's is let go before this one loads.
        sae = None
        if s.mode == "reconstruct":
            if saes is None:
                raise ValueError("reconstruct mode needs the SAEs (saes=)")
            sae = saes.load(block, device)
        mine = [prompts[i] for i in plan.loc[plan["feature"] == name, "prompt_id"]]
        jobs = patched_jobs(mine, row, conditions, trials, seed) + baseline_jobs(mine, trials, seed, condition=SHAM)
        eng = engine(model, tok, jobs, s)
        done = feature_batches(model, tok, name, block, feat, jobs, tokens, seed, s, eng, sae)
        res = from_batches(done, s.capture_layers)
        results.append(res._replace(trials=res.trials.assign(feature=name, layer=block,
                                                             feature_id=int(row["feature_id"]))))
    return stack_results(results, s.capture_layers)
