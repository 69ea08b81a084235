"""Encode captured residuals one SAE layer at a time into sparse per-row codes.

Each captured row keeps two summaries per feature: its value at the last prompt position
(`last`) and its mean over the row's kept generated positions (`gen`). Only non-zero entries
are written, so a 32K-feature layer costs what its active features cost. Every SAE product has
the same shape (the last chunk is padded), so a row's codes do not depend on the part or chunk
it sits in: equal states give equal codes, which the sham control relies on.

The workflow encodes one part (a baseline prompt's or a patched shard's captures) of one layer
a job (`encode_part`: results/encode/{baseline/<prompt>,patched/<shard>}/L<layer>.parquet) and
keeps each baseline part's share of the layer's quality sums (`PartialQuality`); `merge_quality`
adds them into the layer's numbers, exactly those of one pass over every part (`encode_parts`).
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

from ..io import write_tensors
from .exact import SAE

log = logging.getLogger(__name__)
CODE_COLUMNS = ["part", "row", "feature", "last", "gen"]


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


class PartialQuality(NamedTuple):
    """One baseline part's share of its layer's quality sums. The float sums are kept per chunk
    (float64), in order, so that merge_quality adds them in exactly the order one pass over every
    part did: the merged numbers are bit for bit those of a single job over the layer."""

    err: torch.Tensor  # [chunks] float64: squared reconstruction error of the kept positions
    sq: torch.Tensor  # [chunks] float64: squared norm of the kept positions
    l0: torch.Tensor  # [chunks] float64: active (position, feature) entries
    n_pos: torch.Tensor  # [chunks] int64: kept positions
    sums: torch.Tensor  # [chunks, d_model] float64: per-dimension sums of the kept positions
    ever: torch.Tensor  # [d_sae] bool: features active at any kept position
    flips: torch.Tensor  # [3] int64: fp16_flips' (flips, active, positions) on the part's sample


def save_partial(q: PartialQuality, path: str | Path) -> None:
    write_tensors(q._asdict(), path)


def load_partial(path: str | Path) -> PartialQuality:
    from safetensors.torch import load_file

    return PartialQuality(**load_file(str(path)))


GROUP_QUALITY = ["group", "fvu", "l0", "positions"]


class _GroupSums:
    """Per group of rows, the sums FVU and L0 are made of (float64): squared error, squared norm,
    per-dimension sums, active entries, positions."""

    def __init__(self, groups: np.ndarray, d_model: int) -> None:
        self.groups = torch.as_tensor(np.array(groups, np.int64))
        n = int(self.groups.max()) + 1 if len(groups) else 0
        self.err, self.sq, self.l0, self.n = (torch.zeros(n, dtype=torch.float64) for _ in range(4))
        self.sums = torch.zeros(n, d_model, dtype=torch.float64)

    def add(self, r0: int, x: torch.Tensor, rec: torch.Tensor, f: torch.Tensor, v: torch.Tensor) -> None:
        g = self.groups[r0: r0 + x.shape[0]]
        vv = v[..., None].to(x.dtype)
        self.err.index_add_(0, g, ((x - rec).pow(2) * vv).sum((1, 2)).double().cpu())
        self.sq.index_add_(0, g, (x.pow(2) * vv).sum((1, 2)).double().cpu())
        self.sums.index_add_(0, g, (x.double() * vv.double()).sum(1).cpu())
        self.l0.index_add_(0, g, ((f > 0) & v[..., None]).sum((1, 2)).double().cpu())
        self.n.index_add_(0, g, v.sum(1).double().cpu())

    def table(self) -> pd.DataFrame:
        """FVU (error over the sum of squares about the group's mean), L0 and positions per group."""
        mean = self.sums / self.n.clamp(min=1)[:, None]
        tot = self.sq - self.n * mean.pow(2).sum(1)
        fvu = torch.where(tot > 0, self.err / tot.clamp(min=1e-300), torch.full_like(tot, float("nan")))
        return pd.DataFrame({"group": np.arange(len(self.n)), "fvu": fvu.numpy(),
                             "l0": (self.l0 / self.n.clamp(min=1)).numpy(), "positions": self.n.numpy().astype(np.int64)})


@torch.no_grad()
def encode_part(sae: SAE, part: str, path: str | Path, chunk: int = 8192, groups: np.ndarray | None = None
                ) -> tuple[pd.DataFrame, PartialQuality | pd.DataFrame | None]:
    """Sparse codes of one part's state file (columns part, row, feature, last, gen) and its
    quality on the SAE: for an unpatched part (name starting with `baseline`) its share of the
    layer's quality sums (PartialQuality, merged by merge_quality); for a patched part given
    `groups` (a group number per row: feature, condition, run), the SAE's FVU, L0 and positions
    per group (GROUP_QUALITY), how far the patch pushed the states off the SAE's distribution.
    Every SAE product has `max(1, chunk // width)` rows (the last padded), so a row's codes do
    not depend on its part or its place in a chunk."""
    states, n_valid, sample = read_states(str(path))
    rows, width, _ = states.shape
    quality = part.startswith("baseline")
    by_group = _GroupSums(groups, states.shape[2]) if groups is not None and not quality else None
    dev = sae.W.device
    valid = torch.arange(width)[None, :] <= n_valid[:, None]  # position 0 is the prompt's last
    last = torch.zeros(rows, sae.meta.d_sae)
    gen = torch.zeros(rows, sae.meta.d_sae)
    err, sq, l0, n_pos, sums = [], [], [], [], []
    ever = torch.zeros(sae.meta.d_sae, dtype=torch.bool, device=dev)
    per = max(1, chunk // width)
    for r0 in range(0, rows, per):
        x = states[r0: r0 + per].to(dev, torch.float32)
        v = valid[r0: r0 + x.shape[0]].to(x.device)
        f = _encode(sae, x, per)
        last[r0: r0 + x.shape[0]] = f[:, 0].cpu()
        g = (f[:, 1:] * v[:, 1:, None]).sum(1) / v[:, 1:].sum(1, keepdim=True).clamp(min=1)
        gen[r0: r0 + x.shape[0]] = g.cpu()
        if by_group is not None:
            by_group.add(r0, x, sae.decode(f), f, v)
        if not quality:
            continue
        rec = sae.decode(f)
        xv = x[v]
        err.append(float((xv - rec[v]).pow(2).sum()))
        sq.append(float(xv.pow(2).sum()))
        sums.append(xv.double().sum(0).cpu())
        n_pos.append(int(v.sum()))
        l0.append(float((f[v] > 0).sum()))
        ever |= (f[v] > 0).any(0)
    nz = torch.nonzero((last != 0) | (gen != 0))
    codes = pd.DataFrame({
        "part": pd.Categorical.from_codes(np.zeros(len(nz), np.int8), categories=[part]),
        "row": nz[:, 0].numpy().astype(np.int32),
        "feature": nz[:, 1].numpy().astype(np.int32),
        "last": last[nz[:, 0], nz[:, 1]].numpy(), "gen": gen[nz[:, 0], nz[:, 1]].numpy()})
    log.info("%s: %d rows encoded, %d non-zero codes", part, rows, len(codes))
    if not quality:
        return codes, by_group.table() if by_group is not None else None
    flips = fp16_flips(sae, sample) if len(sample) else (0, 0, 0)
    f64 = torch.float64
    partial = PartialQuality(
        torch.tensor(err, dtype=f64), torch.tensor(sq, dtype=f64), torch.tensor(l0, dtype=f64),
        torch.tensor(n_pos, dtype=torch.int64),
        torch.stack(sums) if sums else torch.zeros(0, sae.meta.d_model, dtype=f64),
        ever.cpu(), torch.tensor(flips, dtype=torch.int64))
    return codes, partial


def merge_quality(layer: int, partials: Sequence[PartialQuality]) -> LayerQuality:
    """A layer's quality from its baseline parts' partial sums, in the parts' order (the
    workflow's: baseline prompts sorted): float64 sums added chunk by chunk as one pass over the
    parts adds them, the dead fraction from the OR of the parts' active masks."""
    err = sq = l0_sum = 0.0
    n_pos = 0
    flips = [0, 0, 0]
    d_model = partials[0].sums.shape[1] if partials else 0
    d_sae = partials[0].ever.shape[0] if partials else 0
    sums = torch.zeros(d_model, dtype=torch.float64)
    ever = torch.zeros(d_sae, dtype=torch.bool)
    for q in partials:
        for c in range(len(q.err)):
            err += float(q.err[c])
            sq += float(q.sq[c])
            sums += q.sums[c]
            n_pos += int(q.n_pos[c])
            l0_sum += float(q.l0[c])
        ever |= q.ever
        flips = [a + int(b) for a, b in zip(flips, q.flips)]
    mean = sums / max(1, n_pos)
    tot = sq - n_pos * float(mean.pow(2).sum())  # total sum of squares about the mean
    return LayerQuality(layer, err / tot if tot > 0 else float("nan"), l0_sum / max(1, n_pos),
                        float((~ever).float().mean()), n_pos, *flips)


def encode_parts(sae: SAE, parts: Sequence[tuple[str, str]], layer: int, chunk: int = 8192
                 ) -> tuple[pd.DataFrame, LayerQuality]:
    """Every (part name, state file) of one layer in one process: the codes of all parts and the
    layer's quality, what the workflow's per-part jobs and the sae_quality merge give."""
    frames, partials = [], []
    for part, path in tqdm(parts, desc=f"encode L{layer}", unit="part", mininterval=5, disable=None):
        codes, q = encode_part(sae, part, path, chunk)
        frames.append(codes)
        if q is not None:
            partials.append(q)
    codes = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=CODE_COLUMNS)
    codes["part"] = codes["part"].astype(str).astype("category")
    quality = merge_quality(layer, partials)
    log_quality(quality, len(codes))
    return codes, quality


def log_quality(q: LayerQuality, n_codes: int | None = None) -> None:
    log.info("layer %d:%s on the baselines' %d positions FVU %.4f, L0 %.1f, dead fraction %.4f; fp16 "
             "storage flips %d of %d active entries on %d sampled positions", q.layer,
             f" {n_codes} non-zero codes;" if n_codes is not None else "", q.positions, q.fvu, q.l0,
             q.dead_fraction, q.fp16_flips, q.fp16_active, q.fp16_positions)
