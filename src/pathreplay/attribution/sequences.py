"""Baseline trials as teacher-forced sequences: one forward pass computes, at every position, the
state the replay's forced run computed step by step.

A trial of a prompt with P tokens (BOS included) whose baseline generated n tokens t_0 .. t_{n-1}
is fed prompt + t_0 .. t_{n-2} (the last token is never fed back). Rows are left-padded to the
batch's longest, so a row with offset o has its last prompt position at o + P - 1 and the state
that feeds t_s (decode step s, what the replay's capture column 1 + s holds) at o + P + s;
positions count from each row's first real token (runtime.model.positions). Causal attention
lets no position see a later one, so the states at these positions are the forced run's, step
for step, up to float rounding.

Patched positions (the replay's `positions`): `exp2` the last prompt position and every fed
generated token, `generated` the fed generated tokens, `all` every prompt token and every fed
generated token. Kept positions: the fed generated tokens s that replay.plan.CaptureSpec keeps
(s < n - 1), as many as the trial table's n_positions (checked)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from ..errors import fail
from ..runtime.model import positions as position_ids


class Forced(NamedTuple):
    """A batch of forced sequences: ids and mask [B, S], position ids, and the positions the
    patch touches and the effects keep, [B, S] bool."""

    ids: torch.Tensor
    mask: torch.Tensor
    pos: torch.Tensor
    patched: torch.Tensor
    kept: torch.Tensor

    def to(self, device: torch.device | str) -> "Forced":
        return Forced(*(t.to(device) for t in self))


def forced_batch(prompts: Sequence[Sequence[int]], tokens: Sequence[Sequence[int]], where: str, keep: Sequence[int],
                 n_positions: Sequence[int], pad: int) -> Forced:
    """The rows (prompt token ids, the baseline's generated tokens) as one left-padded batch, with
    the patched positions of `where` (exp2 | generated | all) and the kept ones (`keep`: the
    kept generated-token indices); n_positions: each row's count in its trial table."""
    seqs = [list(p) + list(t[: max(len(t) - 1, 0)]) for p, t in zip(prompts, tokens)]
    width = max(len(s) for s in seqs)
    B = len(seqs)
    ids = torch.full((B, width), pad, dtype=torch.long)
    mask = torch.zeros(B, width, dtype=torch.long)
    patched = torch.zeros(B, width, dtype=torch.bool)
    kept = torch.zeros(B, width, dtype=torch.bool)
    for r, (p, t, s) in enumerate(zip(prompts, tokens, seqs)):
        o, P, fed = width - len(s), len(p), len(s) - len(p)
        ids[r, o:] = torch.tensor(s, dtype=torch.long)
        mask[r, o:] = 1
        gen = torch.arange(o + P, o + P + fed)
        patched[r, gen] = True
        if where == "exp2":
            patched[r, o + P - 1] = True
        elif where == "all":
            patched[r, o: o + P] = True
        at = [o + P + k for k in keep if k < fed]
        kept[r, at] = True
        if len(at) != int(n_positions[r]):
            fail("attribute", f"a baseline trial keeps {n_positions[r]} generated positions but its tokens give "
                 f"{len(at)}", "rerun the baseline replay of this prompt with the same replay.capture settings")
    return Forced(ids, mask, position_ids(mask), patched, kept)


def prompt_ids(tok: Any, texts: Sequence[str]) -> dict[str, list[int]]:
    """Each distinct prompt text's token ids as the replay encodes it (BOS included)."""
    return {t: list(tok(t)["input_ids"]) for t in sorted(set(texts))}
