"""The source patch's own step dh at the baseline's states, as the replay applies it, and the
mediation's holds in tangent terms.

Teacher-forced on the baseline's tokens, a patched run's state at the source's block L is the
baseline's (nothing upstream changed), so the step the patch takes there is a function of the
baseline state h alone. It is computed by the replay's own arithmetic (runtime.patch._apply),
per row and position p where the patch acts:
- a real condition, in the replay's mode: decoder dh = (v - f(h)) u, clamp dh = (v - pre(h)) d
  (0 where v <= 0 and f(h) = 0), add dh = v d;
- `random:<c>`: dh = ||dh_c(p)|| r, the real patch's norm at that position along the control's
  fixed random direction r (replay.coupled.random_direction);
- `sham`: dh = (f(h) - f(h)) u = 0 exactly;
each as dh = s v, the signed step the replay records (its trial tables' `step`, 0 where the patch
does not act) times the patch's vector v (runtime.patch.vector), in float32: what encode's
read-through adds to the baseline's states.

A hold of mediator M (pathways.mediation.hold_patches, one latent) puts M back at its reference
value at every position the source's patch touches, in the patch's own terms: decoder
h += (ref - f_M(h)) u_M, otherwise h += (ref - pre_M(h)) d_M, ref being M's value (pre-activation)
at the unpatched state. At the baseline it moves nothing; on a tangent tau it is
tau -> tau - 1[pre_M > t_M] (w_M . tau) u_M (decoder) or tau - (w_M . tau) d_M."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from ..runtime.patch import Mode, Patch, _apply, vector
from ..sae.exact import Feature


class Seed(NamedTuple):
    """One row's patch: its condition, what it is (real | random | sham), the real condition's
    target v (a random control's: its real partner's) and, for random, the direction."""

    condition: str
    control: str
    value: float
    direction: torch.Tensor | None = None


def patch_steps(feature: Feature, block: int, mode: Mode, h: torch.Tensor, seeds: Sequence[Seed],
                sel: torch.Tensor) -> torch.Tensor:
    """dh [B, S, d_model] in h's dtype for rows `seeds` at baseline states h [B, S, d_model],
    acting where sel [B, S] (module docstring). Rows of one kind and condition share one call."""
    feat = feature._replace(w=feature.w.to(h.device, torch.float32), u=feature.u.to(h.device, torch.float32))
    dh = torch.zeros_like(h)
    v = torch.tensor([s.value for s in seeds], dtype=torch.float32, device=h.device)
    moving = [i for i, s in enumerate(seeds) if s.control != "sham"]
    if moving:  # the real step of every real and random row: a random row's norms are its real partner's
        at = torch.tensor(moving, device=h.device)
        real = Patch(block, feat, v[at], mode)
        d = vector(real).to(h.device, torch.float32)
        _, stats = _apply(real, d, h[at], v[at, None], sel[at])
        dh[at] = (stats[5][..., None] * d).to(h.dtype)
        norms = torch.zeros(h.shape[:2], device=h.device)
        norms[at] = stats[3]
    groups: dict[tuple[str, str], list[int]] = {}
    for i, s in enumerate(seeds):
        groups.setdefault((s.control, s.condition), []).append(i)
    for (control, _), rows in groups.items():
        at = torch.tensor(rows, device=h.device)
        if control == "random":
            direction = seeds[rows[0]].direction
            assert direction is not None, "a random seed needs its direction"
            p = Patch(block, feat, norms[at], "random", direction=direction.to(h.device, torch.float32))
            _, stats = _apply(p, vector(p), h[at], norms[at], sel[at])
            dh[at] = (stats[5][..., None] * vector(p)).to(h.dtype)
        elif control == "sham":
            p = Patch(block, feat, torch.zeros(len(rows), device=h.device), "sham")
            _, stats = _apply(p, vector(p), h[at], torch.zeros(len(rows), 1, device=h.device), sel[at])
            dh[at] = (stats[5][..., None] * vector(p)).to(h.dtype)
    return dh


def hold(feature: Feature, mode: Mode, h: torch.Tensor, primal: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
    """M held at its reference value where sel [B, S] (module docstring): h (a dual tensor, or a
    perturbed state) with its reference taken at `primal`, the unperturbed state."""
    feat = feature._replace(w=feature.w.to(h.device, torch.float32), u=feature.u.to(h.device, torch.float32))
    if mode == "decoder":
        ref, cur, vec = feat.value(primal), feat.value(h), feat.u
    else:
        ref, cur, vec = feat.pre(primal), feat.pre(h), feat.direction
    return h + ((ref - cur) * sel)[..., None].to(h.dtype) * vec.to(h.dtype)
