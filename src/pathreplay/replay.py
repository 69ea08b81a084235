"""Replay trials: baseline and patched generations of the same prompts with the same seeds,
capturing block outputs at the last prompt position and at kept generated positions."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

import pandas as pd
import torch
from tqdm import tqdm

from .decision import Parser, fixed_bet, parse_decision
from .io import write_table, write_tensors
from .plan import CaptureSpec, Condition, Job, baseline_jobs, patched_jobs
from .prompts import Prompt
from .runtime.engine import engine_for, supports
from .runtime.generate import generate
from .runtime.patch import Interventions, Mode, Patch, Positions
from .sae import SAE, Feature, SAESource


class ReplaySettings(NamedTuple):
    """How trials are generated and what is kept (config sections `replay` and `parser`; the
    screen's with its own `max_new_tokens` and no capture)."""

    max_new_tokens: int
    temperature: float
    batch_size: int
    capture_layers: Sequence[int] = ()
    capture: str = "all"  # generated positions kept: all | first:K | stride:K (plan.CaptureSpec)
    parser: Parser = "first"
    mode: Mode = "clamp"
    positions: Positions = "exp2"
    top_logits: int = 0
    engine: Literal["auto", "hooks"] = "auto"  # auto: the static-cache engine where it is exact


class ReplayResult(NamedTuple):
    """Trial records and the captured states per layer, [rows, 1 + kept positions, d_model] fp16."""

    trials: pd.DataFrame
    states: dict[int, torch.Tensor]


def run_jobs(model: Any, tok: Any, jobs: Sequence[Job], s: ReplaySettings, *,
             feature: Feature | None = None, block: int | None = None, sae: SAE | None = None,
             desc: str = "trials") -> ReplayResult:
    """Run jobs in batches; all rows of a call share one patched feature (or none)."""
    keep = CaptureSpec.parse(s.capture).positions(s.max_new_tokens) if s.capture_layers else []
    eng = None
    if s.engine == "auto" and supports(model) and jobs:
        longest = max(len(tok(t)["input_ids"]) for t in {j.text for j in jobs})
        eng = engine_for(model, min(s.batch_size, len(jobs)), longest + s.max_new_tokens)
    records: list[dict[str, Any]] = []
    parts: dict[int, list[torch.Tensor]] = {b: [] for b in s.capture_layers}
    for i in tqdm(range(0, len(jobs), s.batch_size), desc=desc, mininterval=5):
        batch = jobs[i: i + s.batch_size]
        patches = []
        if feature is not None and block is not None:
            values = torch.tensor([j.value for j in batch], dtype=torch.float32)
            patches = [Patch(block, feature, values, s.mode, s.positions, sae)]
        iv = Interventions(model, patches, s.capture_layers)
        gen = generate(model, tok, [j.text for j in batch], [j.seed for j in batch],
                       max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                       interventions=iv, top_logits=s.top_logits, engine=eng)
        n_valid = torch.tensor([sum(1 for p in keep if p < int(n) - 1) for n in gen.lengths])
        for b in s.capture_layers:
            st = iv.states(b)  # [B, 1 + decode steps, d]
            out = torch.zeros(len(batch), 1 + len(keep), st.shape[-1], dtype=torch.float16)
            out[:, 0] = st[:, 0].half()
            for k, p in enumerate(keep):
                if 1 + p < st.shape[1]:
                    out[:, 1 + k] = st[:, 1 + p].half()
            mask = torch.arange(len(keep))[None, :] < n_valid[:, None]
            out[:, 1:] *= mask[..., None].half()
            parts[b].append(out)
        fid = _fidelity(iv, gen.lengths)
        for r, j in enumerate(batch):
            d = parse_decision(gen.texts[r], s.parser, fixed_bet=fixed_bet(j.text))
            rec = {**j._asdict(), "row": len(records), "n_tokens": int(gen.lengths[r]),
                   "n_positions": int(n_valid[r]), "response": gen.texts[r], "action": d.action,
                   "bet": d.bet, "valid": d.valid, "reason": d.reason, **{k: v[r] for k, v in fid.items()}}
            if s.top_logits:
                rec["top_tokens"] = [tok.decode([t]) for t in gen.top_ids[r].tolist()]
                rec["top_logprobs"] = gen.top_logprobs[r].tolist()
            records.append(rec)
    trials = pd.DataFrame(records).drop(columns=["text"]) if records else pd.DataFrame()
    states = {b: torch.cat(v) if v else torch.zeros(0) for b, v in parts.items()}
    return ReplayResult(trials, states)


def run_baseline(model: Any, tok: Any, prompt: Prompt, trials: int, seed: int, s: ReplaySettings,
                 placebo: bool = False) -> ReplayResult:
    """One prompt's unpatched trials, then (with placebo) as many on an independent seed stream."""
    jobs = baseline_jobs([prompt], trials, seed)
    if placebo:
        jobs += baseline_jobs([prompt], trials, seed, stream="placebo", condition="placebo")
    res = run_jobs(model, tok, jobs, s, desc=f"baseline {prompt.id}")
    # Patched tables carry these columns too, so baseline and patched tables concatenate.
    return res._replace(trials=res.trials.assign(feature="", layer=-1, feature_id=-1))


def run_features(model: Any, tok: Any, selected: pd.DataFrame, plan: pd.DataFrame,
                 prompts: Mapping[str, Prompt], features: Mapping[str, tuple[int, Feature]],
                 conditions: Sequence[Condition], trials: int, seed: int, s: ReplaySettings, *,
                 saes: SAESource | None = None, device: str | torch.device = "cpu") -> ReplayResult:
    """Patched trials of every feature of `selected` (indexed by name, in that order) on its prompts
    in `plan` (feature, prompt_id), as one result; `features`: name -> (block, feature slice).
    `saes` is read only in reconstruct mode."""
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
        res = run_jobs(model, tok, patched_jobs(mine, row, conditions, trials, seed), s,
                       feature=feat, block=block, sae=sae, desc=f"patched {name}")
        results.append(res._replace(trials=res.trials.assign(feature=name, layer=block,
                                                             feature_id=int(row["feature_id"]))))
    return stack_results(results, s.capture_layers)


def stack_results(results: Sequence[ReplayResult], layers: Sequence[int]) -> ReplayResult:
    """Several results as one: `row` numbered on across them (it indexes the stacked states),
    trials and each layer's states concatenated in the same order."""
    if not results:
        raise ValueError("no results to stack")
    parts, offset = [], 0
    for r in results:
        parts.append(r.trials.assign(row=r.trials["row"] + offset))
        offset += len(r.trials)
    return ReplayResult(pd.concat(parts, ignore_index=True),
                        {b: torch.cat([r.states[b] for r in results]) for b in layers})


def write_result(res: ReplayResult, layers: Sequence[int], state_paths: Sequence[str], trials_path: str) -> None:
    """Each layer's captured states (a safetensors file each, with every row's count of kept
    generated positions) and the trial table, each written atomically."""
    n_pos = torch.tensor(res.trials["n_positions"].to_numpy(), dtype=torch.int32)
    for b, path in zip(layers, state_paths, strict=True):
        write_tensors({"states": res.states[b], "n_positions": n_pos}, path, metadata={"layer": str(b)})
    write_table(res.trials, trials_path)


def _fidelity(iv: Interventions, lengths: torch.Tensor) -> dict[str, list[float]]:
    """Per row: the patched feature before/after the patch at the last prompt position, and the
    mean after the patch over the row's own generated tokens (NaN where the row was not patched
    there)."""
    n = len(lengths)
    before = [math.nan] * n
    after = [math.nan] * n
    for rec in iv.readback:
        if rec["phase"] == "prefill":
            for r in torch.nonzero(rec["selected"][:, -1].cpu()).flatten().tolist():
                before[r] = float(rec["before"][r, -1])
                after[r] = float(rec["after"][r, -1])
    gen = torch.full((n,), math.nan)
    if iv.patches and iv.steps:
        vals = iv.generated(0)[1]  # [rows, steps]
        own = torch.arange(iv.steps)[None, :] < (lengths[:, None] - 1)  # steps fed the row's tokens
        own &= ~torch.isnan(iv.patches[0].values.cpu())[:, None]
        cnt = own.sum(1)
        gen = torch.where(cnt > 0, (vals * own).sum(1) / cnt.clamp(min=1), gen)
    return {"value_before_last": before, "value_after_last": after, "value_after_generated": gen.tolist()}
