"""Shared-prompt attention (the Hydragen / cascade-attention idea).

The rows of a replay batch are trials of one prompt (or of a few), so the prompt's keys and
values are the same in every row of it. Its tokens but the last are run once per distinct prompt
(one row, no padding) into a shared cache; each row's own cache holds its last prompt token, which
a patch at the last prompt position changes per row, and its generated tokens. A query attends to
both: with s_p its scores over the shared columns and s_o over its own,

    softmax([s_p, s_o]) = [exp(s_p - m), exp(s_o - m)] / (sum exp(s_p - m) + sum exp(s_o - m)),
    m = max(s_p, s_o),

which is one softmax over the two score blocks side by side (the log-sum-exp merge of the two
parts, done by the softmax itself), and the output is w_p V_p + w_o V_o. The shared part is one
batched product per prompt: its rows' query heads of KV head j, stacked, against that prompt's
keys of head j, so the prompt's KV is read once for all its rows instead of once per row.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

Groups = tuple[tuple[int, int], ...]  # (first row, end row) of each prompt's rows, in row order


class Prefix(NamedTuple):
    """The shared prompt cache of a batch: per distinct prompt, its tokens but the last."""

    k: torch.Tensor  # [layers, G, n_kv, P, hd]
    v: torch.Tensor  # [layers, G, n_kv, P, hd]
    bias: torch.Tensor  # [G, 1, 1, P]: 0 on the prompt's columns, -inf past them
    groups: Groups


def groups_of(ids: torch.Tensor, mask: torch.Tensor) -> Groups | None:
    """Runs of consecutive rows with the same prompt (ids and mask equal); None when some
    prompt's rows are not consecutive (the engine then attends row by row, unshared)."""
    key = torch.cat([ids, mask.to(ids.dtype)], 1).cpu()  # one copy to the host, then no syncs
    starts = [0] + (torch.nonzero((key[1:] != key[:-1]).any(1)).flatten() + 1).tolist()
    if len(torch.unique(key[starts], dim=0)) < len(starts):
        return None
    return tuple(zip(starts, starts[1:] + [len(key)]))


def scores(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor, groups: Groups, n_kv: int,
           scaling: float) -> torch.Tensor:
    """Scores of q [B * n_kv, g * s, hd] (engine layout) over each row's prompt columns, one
    product per prompt with k [G, n_kv, P, hd]; [B * n_kv, g * s, P]."""
    gs, hd = q.shape[1:]
    q4 = q.view(-1, n_kv, gs, hd)
    out = []
    for j, (a, b) in enumerate(groups):
        qg = q4[a:b].transpose(0, 1).reshape(n_kv, (b - a) * gs, hd)
        sg = torch.baddbmm(bias[j, 0], qg, k[j].transpose(1, 2), alpha=scaling)
        out.append(sg.view(n_kv, b - a, gs, -1).transpose(0, 1))
    return (out[0] if len(out) == 1 else torch.cat(out)).reshape(-1, gs, k.shape[2])


def values(w: torch.Tensor, v: torch.Tensor, groups: Groups, n_kv: int) -> torch.Tensor:
    """The softmax weights w [B * n_kv, g * s, P + own] on their first P (prompt) columns times
    each row's prompt values v [G, n_kv, P, hd]; [B * n_kv, g * s, hd]."""
    gs, P = w.shape[1], v.shape[2]
    w4 = w.view(-1, n_kv, gs, w.shape[2])[..., :P]
    out = []
    for j, (a, b) in enumerate(groups):
        wg = w4[a:b].transpose(0, 1).reshape(n_kv, (b - a) * gs, P)
        out.append(torch.bmm(wg, v[j]).view(n_kv, b - a, gs, -1).transpose(0, 1))
    return (out[0] if len(out) == 1 else torch.cat(out)).reshape(-1, gs, v.shape[-1])
