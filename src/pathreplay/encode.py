"""Encode captured residuals one SAE layer at a time into sparse per-row codes.

Each captured row keeps two summaries per feature: its value at the last prompt position
(`last`) and its mean over the row's kept generated positions (`gen`). Only non-zero entries
are written, so a 32K-feature layer costs what its active features cost. Every SAE product has
the same shape (the last chunk is padded), so a row's codes do not depend on the part or chunk
it sits in: equal states give equal codes, which the sham control relies on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from tqdm import tqdm

from .sae import SAE

log = logging.getLogger(__name__)


def part_of(path: str | Path) -> str:
    """The part a replay output belongs to, as the codes name it: the file's kind and job folder,
    results/replay/patched/s000/L3.safetensors or .../patched/s000/trials.parquet -> 'patched/s000'."""
    p = Path(path)
    return f"{p.parent.parent.name}/{p.parent.name}"


class LayerQuality(NamedTuple):
    """How well the SAE reconstructs the captured states of one layer, and how many of its
    features' on/off states fp16 storage flips (on float32 samples of the same states)."""

    layer: int
    fvu: float
    l0: float
    dead_fraction: float
    positions: int
    fp16_flips: int
    fp16_active: int  # active (position, feature) entries of the float32 samples
    fp16_positions: int


def read_states(path: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(states [rows, 1 + kept, d_model] fp16, kept generated positions per row, the float32
    sample [batches, 1 + kept, d_model]; empty where the file has none)."""
    with safe_open(path, framework="pt") as f:
        sample = f.get_tensor("sample32") if "sample32" in f.keys() else torch.zeros(0)
        return f.get_tensor("states"), f.get_tensor("n_positions"), sample


def fp16_flips(sae: SAE, sample: torch.Tensor) -> tuple[int, int, int]:
    """(entries whose active state differs between the float32 states and their fp16 copies,
    active entries in float32, positions) over the sample's non-zero positions."""
    x = sample.reshape(-1, sample.shape[-1]).to(sae.W.device)
    x = x[x.abs().sum(1) > 0]
    if not len(x):
        return 0, 0, 0
    on32, on16 = sae.encode(x) > 0, sae.encode(x.half().float()) > 0
    return int((on32 != on16).sum()), int(on32.sum()), len(x)


def _encode(sae: SAE, x: torch.Tensor, rows: int) -> torch.Tensor:
    """Codes of x [n <= rows, width, d_model], computed as a batch of exactly `rows` rows."""
    pad = rows - x.shape[0]
    full = torch.cat([x, x.new_zeros(pad, *x.shape[1:])]) if pad else x
    return sae.encode(full)[: x.shape[0]]


@torch.no_grad()
def encode_parts(sae: SAE, parts: Sequence[tuple[str, str]], layer: int, chunk: int = 8192
                 ) -> tuple[pd.DataFrame, LayerQuality]:
    """Sparse codes of every (part name, state file), and the layer's reconstruction quality on
    the unpatched parts (names starting with `baseline`): a patched state is off the SAE's
    training distribution by construction, and would say more about the patch than the SAE."""
    frames = []
    err = tot = sq = 0.0
    n_pos = n_rows = 0
    l0_sum = 0.0
    flips = [0, 0, 0]
    ever = torch.zeros(sae.meta.d_sae, dtype=torch.bool, device=sae.W.device)
    sums = torch.zeros(sae.meta.d_model, dtype=torch.float64)
    bar = tqdm(parts, desc=f"encode L{layer}", unit="part", mininterval=5)
    for part, path in bar:
        states, n_valid, sample = read_states(path)
        rows, width, _ = states.shape
        n_rows += rows
        bar.set_postfix(rows=n_rows, rows_s=f"{n_rows / max(bar.format_dict['elapsed'], 1e-9):.0f}", refresh=False)
        valid = torch.arange(width)[None, :] <= n_valid[:, None]  # position 0 is the prompt's last
        last = torch.zeros(rows, sae.meta.d_sae)
        gen = torch.zeros(rows, sae.meta.d_sae)
        per = max(1, chunk // width)
        for r0 in range(0, rows, per):
            x = states[r0: r0 + per].to(sae.W.device, torch.float32)
            v = valid[r0: r0 + x.shape[0]].to(x.device)
            f = _encode(sae, x, per)
            last[r0: r0 + x.shape[0]] = f[:, 0].cpu()
            g = (f[:, 1:] * v[:, 1:, None]).sum(1) / v[:, 1:].sum(1, keepdim=True).clamp(min=1)
            gen[r0: r0 + x.shape[0]] = g.cpu()
            if not part.startswith("baseline"):
                continue
            rec = sae.decode(f)
            xv = x[v]
            err += float((xv - rec[v]).pow(2).sum())
            sq += float(xv.pow(2).sum())
            sums += xv.double().sum(0).cpu()
            n_pos += int(v.sum())
            l0_sum += float((f[v] > 0).sum())
            ever |= (f[v] > 0).any(0)
        if part.startswith("baseline") and len(sample):
            flips = [a + b for a, b in zip(flips, fp16_flips(sae, sample))]
        nz = torch.nonzero((last != 0) | (gen != 0))
        frames.append(pd.DataFrame({
            "part": part, "row": nz[:, 0].numpy().astype(np.int32),
            "feature": nz[:, 1].numpy().astype(np.int32),
            "last": last[nz[:, 0], nz[:, 1]].numpy(), "gen": gen[nz[:, 0], nz[:, 1]].numpy()}))
    mean = sums / max(1, n_pos)
    tot = sq - n_pos * float(mean.pow(2).sum())  # total sum of squares about the mean
    codes = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["part", "row", "feature", "last", "gen"])
    codes["part"] = codes["part"].astype("category")
    quality = LayerQuality(layer, err / tot if tot > 0 else float("nan"), l0_sum / max(1, n_pos),
                           float((~ever).float().mean()), n_pos, *flips)
    log.info("layer %d: %d rows from %d parts encoded, %d non-zero codes; on the baselines' %d "
             "positions FVU %.4f, L0 %.1f, dead fraction %.4f; fp16 storage flips %d of %d active entries "
             "on %d sampled positions", layer, n_rows, len(parts), len(codes), n_pos, quality.fvu, quality.l0,
             quality.dead_fraction, *flips)
    return codes, quality
