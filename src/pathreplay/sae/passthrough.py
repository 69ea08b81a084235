"""What a patch's own step reads as downstream when no block computes anything (the read-through).

A patch at layer L adds dh = s v to the residual (s the signed step the replay recorded, v the
patch's vector: the decoder row u, u / (w.u), or the random direction), and the residual carries
dh unchanged to every later layer: an SAE at l' > L reads w_t . dh whether or not a block did
anything with it. Per patched trial, target layer l' > L and kept position p (the positions
both the trial and its baseline partner keep: the last prompt position, then generated ones):

    passthrough_t(p) = f_t(h_base,l'(p) + dh(p)) - f_t(h_base,l'(p))
    computed_t(p)    = f_t(h_patched,l'(p)) - f_t(h_base,l'(p) + dh(p))

and they add up to the total change exactly. This module encodes the first, summarised as the
codes are (`last`: position 0; `gen`: the mean over the common kept generated positions); effects
takes the computed part as the total less it. In the `forced` scope the patched run's layer-L
state is the baseline's (upstream of the patch nothing changed), so dh is the step the patch
took there; in `generated` the runs' tokens part ways, dh is still the step the replay took, and
the computed part includes what the changed tokens do.

At the source's own layer a teacher-forced patched state is the baseline's plus dh, to the
storage's rounding: `check_patched_layer` stops the job where it is not (a patch that did not
act, or acted elsewhere), which the sham control cannot see.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from ..errors import fail
from .encode import _encode, read_states
from .exact import SAE

# ||patched - (baseline + dh)|| / (||baseline|| + ||dh||) allowed at the patched layer: the two
# roundings to the storage's and the model's dtype (half an ulp each, relative), and room for
# the model's float arithmetic.
TOLERANCE = {"float32": 2.0**-9, "float16": 2.0**-9, "bfloat16": 2.0**-6}


class Partner(NamedTuple):
    """Patched trials (rows of a shard's states) with their baseline partners and their steps."""

    rows: np.ndarray  # the patched trials' rows in the shard's states
    base_part: np.ndarray  # each partner's part (baseline/<prompt>)
    base_row: np.ndarray  # and row there
    n_common: np.ndarray  # kept generated positions both have
    steps: torch.Tensor  # [trials, 1 + kept] the step at each kept position (0 where none)
    vectors: torch.Tensor  # [trials, d_model] the patch's vector of each trial


def partners(patched: pd.DataFrame, baseline: pd.DataFrame, vectors: Mapping[tuple[str, str], torch.Tensor],
             width: int) -> Partner:
    """Pair patched trials (feature, condition, prompt_id, trial, row, n_positions, step) with the
    baseline trial of the same prompt and trial number (`part`, `row`, `n_positions`); `vectors`
    maps (feature, condition) to the patch's vector; `width` = 1 + kept positions."""
    base = baseline[baseline["condition"] == "baseline"].set_index(["prompt_id", "trial"])
    b = base.loc[list(zip(patched["prompt_id"], patched["trial"]))]
    n_p, n_b = patched["n_positions"].to_numpy(np.int64), b["n_positions"].to_numpy(np.int64)
    steps = torch.zeros(len(patched), width)
    for i, s in enumerate(patched["step"]):
        s = torch.as_tensor(np.asarray(s, dtype=np.float32))[:width]
        steps[i, : len(s)] = torch.nan_to_num(s)  # NaN: not patched there
    vec = torch.stack([vectors[(f, c)] for f, c in zip(patched["feature"], patched["condition"])]) if len(patched) \
        else torch.zeros(0, 0)
    return Partner(np.array(patched["row"], np.int64), b["part"].to_numpy(), np.array(b["row"], np.int64),
                   np.minimum(n_p, n_b), steps, vec.float())


def _baseline_states(p: Partner, files: Mapping[str, str]) -> torch.Tensor:
    """The partners' states [trials, 1 + kept, d_model] (fp16), read once per baseline part."""
    out = None
    for part in sorted(set(p.base_part)):
        states, _, _ = read_states(files[part])
        at = np.flatnonzero(p.base_part == part)
        if out is None:
            out = torch.zeros(len(p.rows), *states.shape[1:], dtype=states.dtype)
        out[torch.as_tensor(at)] = states[torch.as_tensor(p.base_row[at])]
    return out if out is not None else torch.zeros(0)


def _shifted(base: torch.Tensor, p: Partner, sel: slice) -> torch.Tensor:
    """h_base + s v at every kept position of the trials `sel`, float32."""
    return base[sel].float() + p.steps[sel, : base.shape[1], None] * p.vectors[sel, None, :]


@torch.no_grad()
def passthrough_codes(sae: SAE, part: str, p: Partner, files: Mapping[str, str], chunk: int = 8192) -> pd.DataFrame:
    """The read-through codes of trials `p` at this SAE's layer, non-zero entries only: part,
    row (the patched trial's), feature, `last` and `gen` (module docstring). Shifted and
    unshifted states go through the same padded products (sae.encode._encode), so a step of 0
    reads exactly 0."""
    if not len(p.rows):
        return pd.DataFrame({"part": pd.Categorical([], categories=[part]), "row": np.zeros(0, np.int32),
                             "feature": np.zeros(0, np.int32), "last": np.zeros(0, np.float32),
                             "gen": np.zeros(0, np.float32)})
    base = _baseline_states(p, files)
    rows, width, _ = base.shape
    dev = sae.W.device
    last = torch.zeros(rows, sae.meta.d_sae)
    gen = torch.zeros(rows, sae.meta.d_sae)
    n = torch.as_tensor(p.n_common)
    per = max(1, chunk // width)
    for r0 in range(0, rows, per):
        sel = slice(r0, min(r0 + per, rows))
        shifted = _shifted(base, p, sel).to(dev)
        diff = _encode(sae, shifted, per) - _encode(sae, base[sel].to(dev, torch.float32), per)
        keep = (torch.arange(1, width)[None, :] <= n[sel, None]).to(dev)
        last[sel] = diff[:, 0].cpu()
        gen[sel] = ((diff[:, 1:] * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp(min=1)).cpu()
    nz = torch.nonzero((last != 0) | (gen != 0))
    return pd.DataFrame({
        "part": pd.Categorical.from_codes(np.zeros(len(nz), np.int8), categories=[part]),
        "row": p.rows[nz[:, 0].numpy()].astype(np.int32), "feature": nz[:, 1].numpy().astype(np.int32),
        "last": last[nz[:, 0], nz[:, 1]].numpy(), "gen": gen[nz[:, 0], nz[:, 1]].numpy()})


def check_patched_layer(patched_states: torch.Tensor, p: Partner, files: Mapping[str, str], dtype: str,
                        where: str) -> float:
    """At the source's own layer, teacher-forced patched states equal their partners' plus dh at
    every kept position, within TOLERANCE[dtype] relative to ||h_base|| + ||dh||; otherwise one
    line that names `where`. Returns the largest relative difference."""
    if not len(p.rows):
        return 0.0
    base = _baseline_states(p, files)
    want = _shifted(base, p, slice(None))
    got = patched_states[torch.as_tensor(p.rows)].float()
    keep = torch.arange(base.shape[1])[None, :] <= torch.as_tensor(p.n_common)[:, None]
    dh = (p.steps[:, : base.shape[1], None] * p.vectors[:, None, :]).norm(dim=-1)
    rel = (got - want).norm(dim=-1) / (base.float().norm(dim=-1) + dh).clamp(min=1e-12)
    worst = float(torch.where(keep, rel, torch.zeros_like(rel)).max())
    if worst > TOLERANCE[dtype]:
        fail(where, f"a teacher-forced patched state is not its baseline plus the patch's step at the patched layer "
             f"(largest ||difference|| / (||h|| + ||dh||) {worst:.3g}, allowed {TOLERANCE[dtype]:.3g} for {dtype}); "
             "the patch did not act as recorded", "rerun this shard; if it recurs, the replay machinery has a bug: "
             "report it with this line")
    return worst


def trial_groups(trials: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    """A group number per trial row (its feature, condition and run) and the groups' keys, for the
    patched quality of encode.encode_part. Rows are numbered as the states' rows."""
    keys = ["feature", "condition", "run"]
    t = trials.sort_values("row")
    gid = t.groupby(keys, sort=False, observed=True).ngroup().to_numpy(np.int64)
    first = t.iloc[np.unique(gid, return_index=True)[1]][keys].reset_index(drop=True)
    return gid, first


class ShardLayer(NamedTuple):
    """One layer of a patched shard's encode: its codes, its read-through codes and the SAE's
    quality per (feature, condition, run) on the patched states."""

    codes: pd.DataFrame
    passthrough: pd.DataFrame
    quality: pd.DataFrame


def shard_layer(sae: SAE, layer: int, part: str, states: str, trials: pd.DataFrame, baseline: pd.DataFrame,
                vectors: Mapping[tuple[str, str], torch.Tensor], baseline_files: Mapping[str, str], dtype: str,
                chunk: int = 8192) -> ShardLayer:
    """Encode one layer of a patched shard (`trials`: its trials; `baseline`: its prompts' baseline
    trials with `part`; `baseline_files`: baseline part -> its states at this layer): the codes,
    the read-through codes of every patched trial whose source sits below this layer, the quality
    per group, and, for the sources at this layer, check_patched_layer on their teacher-forced runs."""
    from .encode import encode_part

    gid, keys = trial_groups(trials)
    codes, quality = encode_part(sae, part, states, chunk, groups=gid)
    assert isinstance(quality, pd.DataFrame)
    quality = keys.join(quality.set_index("group"), how="left").assign(layer=layer)
    full, _, _ = read_states(states)
    width = full.shape[1]
    moved = trials[np.array([(f, c) in vectors for f, c in zip(trials["feature"], trials["condition"])], dtype=bool)]
    moved = moved[moved["condition"] != "sham"]  # a sham's step is 0: its read-through is 0
    down = partners(moved[moved["layer"] < layer], baseline, vectors, width)
    passthrough = passthrough_codes(sae, part, down, baseline_files, chunk)
    at = moved[(moved["layer"] == layer) & (moved["run"] == "forced")]
    if len(at):
        check_patched_layer(full, partners(at, baseline, vectors, width), baseline_files, dtype,
                            f"encode of {part} at layer {layer}")
    return ShardLayer(codes, passthrough, quality[["feature", "condition", "run", "layer", "fvu", "l0", "positions"]])
