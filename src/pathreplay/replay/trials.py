"""Replay trials: generations of the same prompts with the same seeds, patched or not, sampled or
teacher-forced on another run's tokens, capturing block outputs at the last prompt position and
at kept generated positions.

Every batch holds the trials of one prompt under one condition, cut at the same trial boundaries
(replay.plan.trial_blocks) in every job: a patched trial and the baseline trial it is compared with are
computed with the same shapes and inputs, row for row, so wherever the patch changes nothing
their states are equal to the bit (the sham control checks it)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from itertools import groupby
from typing import Any, Literal, NamedTuple

import pandas as pd
import torch
from tqdm import tqdm

from ..errors import fail
from ..io import write_table, write_tensors
from ..runtime.engine import Engine, engine_for, gpu_default, supports
from ..runtime.generate import generate
from ..runtime.patch import Interventions, Mode, Patch, Positions
from ..sae.exact import SAE, Feature
from ..task import load_task
from .plan import CaptureSpec, Job, trial_blocks

Run = Literal["generated", "forced"]


class ReplaySettings(NamedTuple):
    """How trials are generated and what is kept (config sections `replay` and `parser`; the
    screen's with its own `max_new_tokens` and no capture)."""

    max_new_tokens: int
    temperature: float
    batch_size: int
    capture_layers: Sequence[int] = ()
    capture: str = "all"  # generated positions kept: all | first:K | stride:K (replay.plan.CaptureSpec)
    task: str = "slot_machine"  # what reads the answers (task.load_task; config key `task`)
    parser: str = "first"  # which of the task's parsers
    mode: Mode = "decoder"
    positions: Positions = "exp2"
    top_logits: int = 0
    engine: Literal["auto", "hooks"] = "auto"  # auto: the static-cache engine where it is exact


class ReplayResult(NamedTuple):
    """Trial records and the captured states per layer, [rows, 1 + kept positions, d_model] fp16,
    with each batch's first row also in float32 (`sample`, to measure what fp16 storage flips)."""

    trials: pd.DataFrame
    states: dict[int, torch.Tensor]
    sample: dict[int, torch.Tensor]


class Pending(NamedTuple):
    """Captures still being copied to the host: the copies' event (None: already there), and per
    layer the counts of values that are not finite in fp16 and in the states themselves."""

    event: Any
    flags: dict[int, torch.Tensor]
    where: str


class Batch(NamedTuple):
    """One batch's trial records, captured states per layer (fp16; its first row in float32),
    and its first patch's STATS per patched step [5, rows, 1 + steps] (None without a patch).
    While `pending`, the states are still being copied: `settle` waits for them."""

    records: list[dict[str, Any]]
    states: dict[int, torch.Tensor]
    sample: dict[int, torch.Tensor]
    stats: torch.Tensor | None
    pending: Pending | None = None


class Progress:
    """Progress over batches with trials/s and tokens/s: a bar on a terminal, else (a job's log) a
    line at most every LOG_EVERY seconds and one at the end."""

    LOG_EVERY = 60.0

    def __init__(self, total: int, desc: str) -> None:
        self.bar = tqdm(total=total, desc=desc, unit="batch", mininterval=5, disable=None)
        self.desc, self.total, self.done = desc, total, 0
        self.t0, self.trials, self.tokens = time.perf_counter(), 0, 0
        self.said = self.t0

    def __call__(self, b: Batch) -> Batch:
        self.trials += len(b.records)
        self.tokens += sum(r["n_tokens"] for r in b.records)
        self.done += 1
        now = time.perf_counter()
        dt = max(now - self.t0, 1e-9)
        self.bar.set_postfix(trials_s=f"{self.trials / dt:.1f}", tokens_s=f"{self.tokens / dt:.0f}", refresh=False)
        self.bar.update(1)
        if self.bar.disable and (now - self.said >= self.LOG_EVERY or self.done == self.total):
            self.said = now
            logging.getLogger(__name__).info("%s: %d of %d batches, %.1f trials/s, %.0f tokens/s", self.desc,
                                             self.done, self.total, self.trials / dt, self.tokens / dt)
        return b

    def close(self) -> None:
        self.bar.close()


def engine(model: Any, tok: Any, jobs: Sequence[Job], s: ReplaySettings) -> Engine | None:
    """The static-cache engine for these jobs where the model allows it (None: the hook path)."""
    if s.engine != "auto" or not supports(model) or not jobs:
        return None
    longest = max(len(tok(t)["input_ids"]) for t in {j.text for j in jobs})
    return engine_for(model, min(s.batch_size, len(jobs)), longest + s.max_new_tokens)


def run_batch(model: Any, tok: Any, jobs: Sequence[Job], s: ReplaySettings, eng: Engine | None, *,
              patches: Sequence[Patch] = (), forced: torch.Tensor | None = None, run: Run = "generated",
              where: str = "replay") -> Batch:
    """Generate (or, with `forced` tokens, teacher-force) one batch; keep states and records."""
    keep = CaptureSpec.parse(s.capture).positions(s.max_new_tokens) if s.capture_layers else []
    iv = Interventions(model, patches, s.capture_layers)
    gen = generate(model, tok, [j.text for j in jobs], [j.seed for j in jobs], max_new_tokens=s.max_new_tokens,
                   temperature=s.temperature, interventions=iv, top_logits=s.top_logits, engine=eng, forced=forced)
    n_valid = torch.tensor([sum(1 for p in keep if p < int(n) - 1) for n in gen.lengths])
    kept = {b: _select(iv.states(b, host=False), keep, n_valid) for b in s.capture_layers}
    host, event = to_host([t for k in kept.values() for t in k])
    pending = Pending(event, dict(zip(kept, host[2::3])), where)
    stats = iv.step_stats(0) if patches else None
    fid = _fidelity(stats, gen.lengths, keep, n_valid) if stats is not None else {}
    records = []
    task = load_task(s.task)
    for r, j in enumerate(jobs):
        a = task.parse(gen.texts[r], j.text, s.parser)
        rec = {**j._asdict(), "run": run, "n_tokens": int(gen.lengths[r]), "n_positions": int(n_valid[r]),
               "tokens": gen.tokens[r, : int(gen.lengths[r])].tolist(), "response": gen.texts[r],
               "action": a.action, **({task.amount: a.amount} if task.amount else {}), "valid": a.valid,
               "reason": a.reason, **{k: v[r] for k, v in fid.items()}}
        if s.top_logits:
            rec["top_tokens"] = [tok.decode([t]) for t in gen.top_ids[r].tolist()]
            rec["top_logprobs"] = gen.top_logprobs[r].tolist()
        records.append(rec)
    b = Batch(records, dict(zip(kept, host[0::3])), dict(zip(kept, host[1::3])), stats, pending)
    return b if event is not None else settle(b)  # on the CPU there is nothing to overlap


def _select(st: torch.Tensor, keep: Sequence[int], n_valid: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """On the states' device: the last prompt position and the kept generated positions, zero
    past a row's own tokens, in fp16; the first row of the same in float32; and the counts of
    values that are not finite in the fp16 and in the states [2]. Only these cross to the host."""
    cols = [0] + [1 + p for p in keep]
    have = torch.tensor([c < st.shape[1] for c in cols])
    idx = torch.tensor([c if c < st.shape[1] else 0 for c in cols], device=st.device)
    valid = (have[None, :] & (torch.arange(len(cols))[None, :] <= n_valid[:, None]))[..., None].to(st.device)
    sel = st.index_select(1, idx)
    half = sel.half() * valid  # a state rounds straight to fp16 as it would through float32
    flags = torch.stack([(~torch.isfinite(half)).sum(), (~torch.isfinite(sel)).sum()])
    return half, sel[:1].float() * valid[:1], flags


def _check(flags: torch.Tensor, where: str) -> None:
    """A non-finite state, or one fp16 storage cannot hold, stops the job with one line."""
    bad, bad_states = (int(x) for x in flags)
    if bad:
        why = "the model's states are not finite" if bad_states else "states exceed fp16's range"
        fail(where, f"{bad} captured values are inf or NaN ({why})",
             "check the model and SAE weights for NaN/inf and the patch targets' size, or load the model in float32")


def _kept(st: torch.Tensor, keep: Sequence[int], n_valid: torch.Tensor, where: str
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """`_select` checked at once: (fp16 states, float32 first row)."""
    half, sample, flags = _select(st, keep, n_valid)
    _check(flags, where)
    return half, sample


_SIDE: dict[torch.device, Any] = {}  # per GPU, the stream captures are copied to the host on


def to_host(tensors: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], Any]:
    """The tensors on the host, and the event their copies complete at (None: done). From a GPU,
    where runtime.engine.gpu_default allows it, they go to pinned memory on a side stream, so the
    next batch's steps decode meanwhile; the caching allocator keeps each source alive until its
    copy has run (record_stream). Otherwise plain copies."""
    if not tensors or tensors[0].device.type != "cuda" or not gpu_default("async_copies", tensors[0].device):
        return [t.cpu() for t in tensors], None
    dev = tensors[0].device
    side = _SIDE.setdefault(dev, torch.cuda.Stream(dev))
    side.wait_stream(torch.cuda.current_stream(dev))
    out = []
    with torch.cuda.stream(side):
        for t in tensors:
            out.append(torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t, non_blocking=True))
            t.record_stream(side)
    event = torch.cuda.Event()
    event.record(side)
    return out, event


def settle(b: Batch) -> Batch:
    """The batch with its captures on the host and checked (see _check)."""
    if b.pending is None:
        return b
    if b.pending.event is not None:
        b.pending.event.synchronize()
    for block, flags in b.pending.flags.items():
        _check(flags, f"{b.pending.where}: block {block}")
    return b._replace(pending=None)


def _fidelity(stats: torch.Tensor, lengths: torch.Tensor, keep: Sequence[int], n_valid: torch.Tensor
              ) -> dict[str, list]:
    """Per row, from the first patch's STATS: at the last prompt position the feature before and
    after the patch (the dose the SAE reads back), whether it fires then, its pre-activation
    before, ||dh|| and ||dh|| / ||h||; over the row's own generated tokens the mean value after
    the patch, the share of them where it fires, ||dh|| and ||dh|| / ||h|| (NaN where the row was
    not patched there); and `step`, the signed step along the patch's vector at the positions the
    captures keep (the last prompt position, then the row's kept generated positions), so that
    encode can add the patch's own dh to the baseline's states (sae.passthrough)."""
    before, after, pre, dh, h, step = stats  # each [rows, 1 + steps]
    own = torch.arange(stats.shape[2] - 1)[None, :] < (lengths[:, None] - 1)  # steps fed the row's tokens
    own &= ~torch.isnan(after[:, 1:])
    cnt = own.sum(1)

    def mean(x: torch.Tensor) -> list[float]:
        m = (torch.nan_to_num(x) * own).sum(1) / cnt.clamp(min=1)
        return torch.where(cnt > 0, m, torch.full_like(m, math.nan)).tolist()

    rel = dh / h
    fires = (after > 0).float().masked_fill(torch.isnan(after), math.nan)
    cols = torch.tensor([0] + [1 + p for p in keep], dtype=torch.long)
    at = step.index_select(1, cols.clamp(max=step.shape[1] - 1))
    steps = [at[r, : 1 + int(n)].tolist() for r, n in enumerate(n_valid)]
    return {"value_before_last": before[:, 0].tolist(), "value_after_last": after[:, 0].tolist(),
            "fires_last": fires[:, 0].tolist(), "pre_before_last": pre[:, 0].tolist(), "dh_last": dh[:, 0].tolist(),
            "dh_rel_last": rel[:, 0].tolist(), "value_after_generated": mean(after[:, 1:]),
            "fires_generated": mean(fires[:, 1:]), "dh_generated": mean(dh[:, 1:]),
            "dh_rel_generated": mean(rel[:, 1:]), "step": steps}


def batches(jobs: Sequence[Job], batch_size: int) -> list[list[Job]]:
    """Jobs as batches: one (prompt, condition) group at a time, cut at trial_blocks, so every
    job batches the same trials of a prompt together, with the same shapes."""
    out = []
    for _, group in groupby(jobs, key=lambda j: (j.prompt_id, j.condition)):
        g = list(group)
        for block in trial_blocks(max(j.trial for j in g) + 1, batch_size):
            part = [j for j in g if j.trial in block]
            if part:
                out.append(part)
    return out


def run_jobs(model: Any, tok: Any, jobs: Sequence[Job], s: ReplaySettings, *,
             feature: Feature | None = None, block: int | None = None, sae: SAE | None = None,
             desc: str = "trials") -> ReplayResult:
    """Sample every job, in batches; all rows of a call share one patched feature (or none),
    each row patched to its job's value in the settings' mode."""
    eng = engine(model, tok, jobs, s)
    parts = batches(jobs, s.batch_size)
    progress = Progress(len(parts), desc)
    done = []
    for part in parts:
        patches = [job_patch(part, block, feature, s, sae)] if feature is not None and block is not None else []
        done.append(progress(run_batch(model, tok, part, s, eng, patches=patches, where=desc)))
    progress.close()
    return from_batches(done, s.capture_layers)


def job_patch(jobs: Sequence[Job], block: int, feature: Feature, s: ReplaySettings, sae: SAE | None = None) -> Patch:
    """The settings' patch of `feature` at `block`, each row to its job's value."""
    return Patch(block, feature, torch.tensor([j.value for j in jobs], dtype=torch.float32), s.mode, s.positions,
                 sae)


def from_batches(done: Sequence[Batch], layers: Sequence[int]) -> ReplayResult:
    """Batches as one result, `row` numbering the stacked states."""
    done = [settle(b) for b in done]
    records = [rec for b in done for rec in b.records]
    trials = pd.DataFrame(records).drop(columns=["text"]) if records else pd.DataFrame()
    if len(trials):
        trials.insert(0, "row", range(len(trials)))
    states = {b: torch.cat([x.states[b] for x in done]) if done else torch.zeros(0) for b in layers}
    sample = {b: torch.cat([x.sample[b] for x in done]) if done else torch.zeros(0) for b in layers}
    return ReplayResult(trials, states, sample)


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
                        {b: torch.cat([r.states[b] for r in results]) for b in layers},
                        {b: torch.cat([r.sample[b] for r in results]) for b in layers})


def write_result(res: ReplayResult, layers: Sequence[int], state_paths: Sequence[str], trials_path: str) -> None:
    """Each layer's captured states (a safetensors file each, with every row's count of kept
    generated positions and the float32 sample) and the trial table, each written atomically."""
    n_pos = torch.tensor(res.trials["n_positions"].to_numpy(), dtype=torch.int32)
    for b, path in zip(layers, state_paths, strict=True):
        write_tensors({"states": res.states[b], "n_positions": n_pos, "sample32": res.sample[b]}, path,
                      metadata={"layer": str(b)})
    write_table(res.trials, trials_path)
