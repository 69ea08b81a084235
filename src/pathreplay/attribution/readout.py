"""Tangents read as SAE features: the predicted change of every target at one layer, the patch's
carried step and the blocks' computed rest apart, per trial as the effects average them.

At a kept position p of a trial, with h the baseline state at target layer l', dh the patch's
step at the source's layer (the residual carries it to l' unchanged) and tau the tangent at l'
(dh plus what the blocks made of it, to first order), a target t with pre_t = w_t . x + b_t and
f_t its value (sae.exact: every format's encoder conventions included):
- recomputed (switches on and off counted):
      passthrough_t = f_t(h + dh) - f_t(h)      (what encode's read-through computes)
      computed_t    = f_t(h + tau) - f_t(h + dh)
- gated (the linear read of an active target, 0 for an inactive one):
      passthrough_gated_t = 1[f_t(h) != 0] w_t . dh
      computed_gated_t    = 1[f_t(h) != 0] w_t . (tau - dh)
and `active`, 1[f_t(h) != 0]. Each is averaged over the trial's kept generated positions, as the
codes' `gen` is (the effects' `forced` scope); `virtual` (no block run: tau = dh) is the
passthrough with a computed part of exactly 0."""

from __future__ import annotations

import torch

from ..sae.exact import SAE

PARTS = ("passthrough", "computed", "passthrough_gated", "computed_gated", "active")


@torch.no_grad()
def read_layer(sae: SAE, h: torch.Tensor, tau: torch.Tensor, dh: torch.Tensor, kept: torch.Tensor
               ) -> dict[str, torch.Tensor]:
    """PARTS -> [B, d_sae] float64: each row's mean over its kept positions (kept [B, S]) of the
    module docstring's quantities, from states h, tangents tau and steps dh [B, S, d_model]."""
    at = kept.nonzero()
    row = at[:, 0]
    x, t, d = (v[at[:, 0], at[:, 1]].float() for v in (h, tau, dh))
    f0 = sae.encode(x)
    f1 = sae.encode(x + d)
    f2 = sae.encode(x + t)
    on = (f0 != 0).float()
    w = sae.W
    per = {"passthrough": f1 - f0, "computed": f2 - f1, "passthrough_gated": on * (d @ w.T),
           "computed_gated": on * ((t - d) @ w.T), "active": on}
    count = kept.sum(1).clamp(min=1).to(torch.float64)
    out = {}
    for k, v in per.items():
        s = torch.zeros(kept.shape[0], v.shape[1], dtype=torch.float64, device=v.device)
        s.index_add_(0, row, v.double())
        out[k] = s / count[:, None]
    return out
